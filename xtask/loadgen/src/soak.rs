//! Soak measurements: latency per time window (messages fall in the window
//! they were due in), the server's disk writes, CPU and memory sampled at
//! each window boundary, and a count of the rows and bytes an embedded
//! store holds per table (read after the gateway stopped).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::stats;

/// Latency histograms per window of due time.
pub(crate) struct Windows {
    start_ns: u64,
    width_ns: u64,
    /// The index of the run's last window: a message due after the run's
    /// end counts in it.
    last: usize,
    hists: Vec<Histogram<u64>>,
}

impl Windows {
    /// Windows of `width_s` seconds from `start` over a run of `run_s`
    /// seconds (the last window is shorter when the run is not a whole
    /// number of them); `None` when `width_s` is not positive (no windows
    /// asked for). Each sender's schedule starts up to one interval after
    /// `start` (`ChatArgs::phased`), so its last message can fall due a
    /// moment after the run's end; it counts in the last window rather than
    /// opening one of its own, which would hold a few messages and stand for
    /// the run's last window p99.
    pub(crate) fn new(start: Instant, width_s: f64, run_s: f64) -> Option<Self> {
        (width_s > 0.0).then(|| Self {
            start_ns: stats::ns_of(start),
            width_ns: (width_s * 1e9) as u64,
            last: if run_s > 0.0 {
                ((run_s / width_s).ceil() as usize).saturating_sub(1)
            } else {
                usize::MAX
            },
            hists: Vec::new(),
        })
    }

    /// Records the latency of a message due at `sent_ns` in its window.
    pub(crate) fn record(&mut self, sent_ns: u64) {
        let i = (sent_ns.saturating_sub(self.start_ns) / self.width_ns.max(1)) as usize;
        let i = i.min(self.last);
        while self.hists.len() <= i {
            self.hists.push(stats::histogram());
        }
        stats::record(&mut self.hists[i], sent_ns);
    }

    /// Adds `other`'s counts (same windows) to these.
    pub(crate) fn merge(&mut self, other: &Windows) {
        while self.hists.len() < other.hists.len() {
            self.hists.push(stats::histogram());
        }
        for (mine, theirs) in self.hists.iter_mut().zip(&other.hists) {
            let _ = mine.add(theirs);
        }
    }

    /// One object per window: its span, delivered count and rate,
    /// percentiles.
    pub(crate) fn json(&self) -> Value {
        let width = self.width_ns as f64 / 1e9;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let windows: Vec<Value> = self
            .hists
            .iter()
            .enumerate()
            .map(|(i, h)| {
                json!({
                    "window": i,
                    "from_s": i as f64 * width,
                    "to_s": (i + 1) as f64 * width,
                    "delivered": h.len(),
                    "msgs_per_s": h.len() as f64 / width,
                    "p50_ms": ms(h, 0.5),
                    "p99_ms": ms(h, 0.99),
                    "p999_ms": ms(h, 0.999),
                    "max_ms": h.max() as f64 / 1000.0,
                })
            })
            .collect();
        Value::Array(windows)
    }
}

/// What the server process had done at one window boundary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    write_bytes: u64,
    cpu: Duration,
    rss_kib: u64,
}

/// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be
/// written to storage.
pub(crate) fn write_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn sample_now(pid: u32) -> Option<Sample> {
    Some(Sample {
        write_bytes: write_bytes(pid)?,
        cpu: stats::cpu_time(pid)?,
        rss_kib: stats::status_kib(pid, "VmRSS")?,
    })
}

/// Samples process `pid` at `start` and at every `width` after it until
/// `stop` turns true (and once more then).
pub(crate) async fn sample(
    pid: u32,
    start: Instant,
    width: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = start;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.wait_for(|s| *s) => {
                samples.extend(sample_now(pid));
                return samples;
            }
        }
        match sample_now(pid) {
            Some(s) => samples.push(s),
            None => return samples,
        }
        next += width;
    }
}

/// Adds the server's disk writes, CPU and RSS to each window of
/// `result["windows"]` (the deltas between the samples around it).
pub(crate) fn attach(result: &mut Value, samples: &[Sample], width: Duration) {
    let Some(windows) = result["windows"].as_array_mut() else {
        return;
    };
    for (w, pair) in windows.iter_mut().zip(samples.windows(2)) {
        let [a, b] = pair else { continue };
        crate::chat::merge(
            w,
            json!({
                "server_write_mib": b.write_bytes.saturating_sub(a.write_bytes) as f64 / 1048576.0,
                "server_cpu_cores": b.cpu.saturating_sub(a.cpu).as_secs_f64() / width.as_secs_f64(),
                "server_rss_mib": b.rss_kib as f64 / 1024.0,
            }),
        );
    }
}

/// Rows and key + value bytes in each table of the embedded store in
/// `dir`, on the engine that wrote it (nothing is written), one object per
/// table with rows.
pub(crate) fn store_rows(dir: &Path) -> Result<Value> {
    let counted = qim_storage::embedded::table_rows(dir)
        .with_context(|| format!("counting the store in {}", dir.display()))?;
    let mut tables = serde_json::Map::new();
    let (mut all_rows, mut all_bytes) = (0u64, 0u64);
    for (name, rows, bytes) in counted {
        tables.insert(name.to_owned(), json!({ "rows": rows, "bytes": bytes }));
        all_rows += rows;
        all_bytes += bytes;
    }
    Ok(json!({ "rows": all_rows, "bytes": all_bytes, "tables": tables }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(w: &Windows) -> Vec<u64> {
        w.json()
            .as_array()
            .map(|a| a.iter().filter_map(|w| w["delivered"].as_u64()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_message_due_after_the_run_counts_in_its_last_window() {
        // Times are counted from the process's epoch: set it first.
        let _ = stats::now_ns();
        let start = Instant::now();
        let at = |s: f64| stats::ns_of(start + Duration::from_secs_f64(s));
        // 180 s in windows of 30: six windows, the last message of a late
        // phased sender (due 10 ms after the end) in the sixth.
        let mut w = Windows::new(start, 30.0, 180.0).expect("windows");
        for s in [0.0, 29.9, 30.0, 179.9, 180.01] {
            w.record(at(s));
        }
        assert_eq!(delivered(&w), vec![2, 1, 0, 0, 0, 2]);
        // A run that is not a whole number of windows keeps its short last
        // window.
        let mut w = Windows::new(start, 30.0, 45.0).expect("windows");
        for s in [10.0, 40.0, 45.2] {
            w.record(at(s));
        }
        assert_eq!(delivered(&w), vec![1, 2]);
        // No run length (a message budget): windows as they come.
        let mut w = Windows::new(start, 30.0, 0.0).expect("windows");
        w.record(at(95.0));
        assert_eq!(delivered(&w), vec![0, 0, 0, 1]);
        assert!(Windows::new(start, 0.0, 180.0).is_none());
    }
}
