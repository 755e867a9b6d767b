//! PNG charts of a bench summary: the latency distribution of the runs at
//! a fixed offered rate, and throughput against connections of the flat-out
//! runs. Drawn with plotters' bitmap backend and a font read from a file
//! (ab_glyph), so no font service is needed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

/// Draws `latency.png` and `throughput.png` into `out`.
pub(crate) fn draw(summary: &Path, out: &Path, font: &Path) -> Result<()> {
    let bytes = std::fs::read(font).with_context(|| format!("font {}", font.display()))?;
    // plotters keeps registered fonts for the process's life.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable font", font.display()))?;
    let text = std::fs::read_to_string(summary)?;
    let results: Vec<Value> = serde_json::from_str(&text)?;
    std::fs::create_dir_all(out)?;
    latency(&results, &out.join("latency.png"))?;
    throughput(&results, &out.join("throughput.png"))?;
    Ok(())
}

fn is_chat(r: &Value) -> bool {
    matches!(r["scenario"].as_str(), Some("chat" | "echo"))
}

/// "Nines" of a quantile: 0.9 → 1, 0.99 → 2.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-6).log10()
}

fn latency(results: &[Value], path: &Path) -> Result<()> {
    let runs: Vec<&Value> = results
        .iter()
        .filter(|r| is_chat(r) && r["offered_rate"].as_f64().unwrap_or(0.0) > 0.0)
        .collect();
    let mut series = Vec::new();
    let mut top: f64 = 1.0;
    for r in &runs {
        let points: Vec<(f64, f64)> = r["latency"]["quantiles_ms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                    .filter(|(q, _)| *q < 1.0)
                    .map(|(q, ms)| (nines(q), ms.max(0.01)))
                    .collect()
            })
            .unwrap_or_default();
        top = points.iter().fold(top, |t, p| t.max(p.1));
        let label = format!(
            "{} ({} conns, {:.0} msg/s offered)",
            r["system"].as_str().unwrap_or("?"),
            r["connections"],
            r["offered_rate"].as_f64().unwrap_or(0.0)
        );
        series.push((label, points));
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "send → deliver latency at a fixed offered rate",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..4.0, (0.01..top * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(5)
        .x_label_formatter(&|x: &f64| {
            let p = 100.0 * (1.0 - 10f64.powf(-*x));
            format!("p{}", trim(p))
        })
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn trim(p: f64) -> String {
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn throughput(results: &[Value], path: &Path) -> Result<()> {
    let mut by_system: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in results
        .iter()
        .filter(|r| is_chat(r) && r["offered_rate"].as_f64().unwrap_or(0.0) == 0.0)
    {
        let (Some(system), Some(conns), Some(rate)) = (
            r["system"].as_str(),
            r["connections"].as_f64(),
            r["msgs_per_s"].as_f64(),
        ) else {
            continue;
        };
        by_system
            .entry(system.to_owned())
            .or_default()
            .push((conns, rate));
    }
    let (mut max_conns, mut max_rate) = (2.0f64, 2000.0f64);
    for points in by_system.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (c, r) in points.iter() {
            max_conns = max_conns.max(*c);
            max_rate = max_rate.max(*r);
        }
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "delivered messages/s (echo: round trips/s), flat out",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (1.0..max_conns * 1.5).log_scale(),
            (1000.0..max_rate * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("messages per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y: &f64| format!("{:.0}k", y / 1000.0))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (system, points)) in by_system.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(system)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
