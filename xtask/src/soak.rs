//! `cargo xtask loadtest chat --minutes N --rate R`: the chat scenario held
//! at a fixed offered rate for minutes on a fresh release gateway (embedded
//! store), reporting what a long-running node would show:
//!
//! - p50/p99/p99.9 send → deliver per window (`--window-seconds`, default
//!   30), by the time each message was due, with the gateway's disk
//!   writes, CPU and RSS over the same window;
//! - the data directory's and the store's disk use at the end (allocated
//!   blocks, as `du` counts them);
//! - write amplification: bytes the gateway process wrote to disk
//!   (`write_bytes` of `/proc/<pid>/io`, compactions included) over the
//!   message payload bytes delivered;
//! - rows and key + value bytes the store holds per delivered message, per
//!   table (counted by opening the store after the gateway stopped).
//!
//! The run fails on any lost, doubled or out-of-order message (the load
//! generator checks every delivery). Prints a table, the JSON, and writes
//! the JSON to `target/loadtest/soak.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::loadtest::{Binaries, RunningGateway, loadgen};

/// What a soak run is asked for.
pub(crate) struct Soak<'a> {
    pub(crate) minutes: f64,
    pub(crate) rate: f64,
    pub(crate) window_seconds: f64,
    /// Gateway settings (`--set`).
    pub(crate) set: &'a [String],
    /// Further load generator options (e.g. `--pairs 64`).
    pub(crate) extra: &'a [String],
}

/// Runs the soak and reports; fails on any loss or duplicate.
pub(crate) fn run(root: &Path, bins: &Binaries, s: &Soak<'_>) -> Result<()> {
    if !(s.minutes > 0.0 && s.rate > 0.0 && s.window_seconds > 0.0) {
        bail!("a soak needs --minutes, --rate and --window-seconds above 0");
    }
    let dir = root.join("target/loadtest/soak");
    let gw = RunningGateway::start(&bins.gateway, &dir, s.set)?;
    let pid = gw.pid();
    eprintln!(
        "soak: gateway {} (pid {pid}) data {}; {} min at {} msgs/s",
        gw.addr,
        dir.display(),
        s.minutes,
        s.rate
    );
    let mut args = vec!["chat".to_owned()];
    args.extend(gw.loadgen_args());
    args.extend([
        "--seconds".into(),
        (s.minutes * 60.0).to_string(),
        "--rate".into(),
        s.rate.to_string(),
        "--window-seconds".into(),
        s.window_seconds.to_string(),
        "--pid".into(),
        pid.to_string(),
    ]);
    args.extend(s.extra.iter().cloned());
    let written_before = write_bytes(pid);
    let mut result = loadgen(&bins.loadgen, &args)?;
    let written = write_bytes(pid)
        .zip(written_before)
        .map(|(after, before)| after.saturating_sub(before));
    // Stopped before its store is counted (the store takes one process).
    drop(gw);
    let store = dir.join("store");
    let rows = match loadgen(
        &bins.loadgen,
        &[
            "store-rows".into(),
            "--dir".into(),
            store.display().to_string(),
        ],
    ) {
        Ok(rows) => rows,
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    let delivered = result["delivered"].as_u64().unwrap_or(0);
    let payload = delivered * result["body_bytes"].as_u64().unwrap_or(0);
    let per_msg = |v: &Value| {
        v.as_u64()
            .filter(|_| delivered > 0)
            .map(|n| n as f64 / delivered as f64)
    };
    let mut tables = serde_json::Map::new();
    if let Some(t) = rows["tables"].as_object() {
        for (name, t) in t {
            tables.insert(
                name.clone(),
                json!({
                    "rows": t["rows"],
                    "bytes": t["bytes"],
                    "rows_per_msg": per_msg(&t["rows"]),
                    "bytes_per_msg": per_msg(&t["bytes"]),
                }),
            );
        }
    }
    let soak = json!({
        "minutes": s.minutes,
        "gateway_write_bytes": written,
        "payload_bytes_delivered": payload,
        "write_amplification": written.filter(|_| payload > 0).map(|w| w as f64 / payload as f64),
        "data_dir_bytes": du(&dir),
        "store_bytes": du(&store),
        "store_bytes_per_msg": per_msg(&json!(du(&store))),
        "store_rows": rows["rows"],
        "store_row_bytes": rows["bytes"],
        "store_rows_per_msg": per_msg(&rows["rows"]),
        "store_row_bytes_per_msg": per_msg(&rows["bytes"]),
        "store_tables": tables,
        "store_count_error": rows["error"],
        "load_average_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    if let Some(r) = result.as_object_mut() {
        r.insert("soak".into(), soak);
    }
    let json = serde_json::to_string_pretty(&result)?;
    println!("{json}");
    println!("{}", table(&result));
    let out = root.join("target/loadtest/soak.json");
    std::fs::write(&out, &json)?;
    println!("soak result: {}", out.display());
    let (lost, duplicates) = (
        result["lost"].as_u64().unwrap_or(u64::MAX),
        result["duplicates"].as_u64().unwrap_or(u64::MAX),
    );
    if result["ok"].as_bool() != Some(true) || lost != 0 || duplicates != 0 {
        bail!(
            "soak failed: {lost} lost, {duplicates} doubled; {}",
            result["errors"]
        );
    }
    Ok(())
}

/// `write_bytes` of `/proc/<pid>/io`.
fn write_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Allocated bytes under `path`, as `du` counts them.
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0);
    own + children
}

/// "p50 … / p99 … / p99.9 … ms" of a latency summary.
fn percentiles(l: &Value) -> String {
    let ms = |q: &str| l[q].as_f64().unwrap_or(f64::NAN);
    format!(
        "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
        ms("p50_ms"),
        ms("p99_ms"),
        ms("p999_ms"),
    )
}

/// The per-window table, the totals and the targets (reported,
/// not enforced: they are goals, the run fails only on loss).
fn table(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut md = String::from(
        "| window s | delivered msg/s | p50 ms | p99 ms | p99.9 ms | max ms | gateway writes MiB/s | gateway CPU cores | gateway RSS MiB |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let windows = r["windows"].as_array().cloned().unwrap_or_default();
    let width = f(&r["window_seconds"]);
    for w in &windows {
        let _ = writeln!(
            md,
            "| {:.0}–{:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.0} |",
            f(&w["from_s"]),
            f(&w["to_s"]),
            f(&w["msgs_per_s"]),
            f(&w["p50_ms"]),
            f(&w["p99_ms"]),
            f(&w["p999_ms"]),
            f(&w["max_ms"]),
            f(&w["server_write_mib"]) / width,
            f(&w["server_cpu_cores"]),
            f(&w["server_rss_mib"]),
        );
    }
    let s = &r["soak"];
    let l = &r["latency"];
    let _ = writeln!(
        md,
        "\nwhole run: {} delivered ({:.0} msg/s), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; lost {}, duplicates {}",
        r["delivered"],
        f(&r["msgs_per_s"]),
        f(&l["p50_ms"]),
        f(&l["p99_ms"]),
        f(&l["p999_ms"]),
        f(&l["max_ms"]),
        r["lost"],
        r["duplicates"],
    );
    let split = &r["latency_split"];
    if split.is_object() {
        let _ = writeln!(
            md,
            "split at the gateway's receive stamp (ms precision): due → stamp {}; stamp → delivered {}",
            percentiles(&split["due_to_server_stamp"]),
            percentiles(&split["server_stamp_to_delivered"]),
        );
        let late = &split["due_to_queued"];
        if late.is_object() {
            let _ = writeln!(
                md,
                "of which the load generator queued the message after it was due (its own delay, and waiting for an in-flight place) by {}",
                percentiles(late),
            );
        }
    }
    let mib = |v: &Value| f(v) / 1048576.0;
    let _ = writeln!(
        md,
        "disk: data dir {:.1} MiB, store {:.1} MiB ({:.0} B per message); gateway wrote {:.1} MiB for {:.1} MiB of payload: write amplification {:.1}",
        mib(&s["data_dir_bytes"]),
        mib(&s["store_bytes"]),
        f(&s["store_bytes_per_msg"]),
        mib(&s["gateway_write_bytes"]),
        mib(&s["payload_bytes_delivered"]),
        f(&s["write_amplification"]),
    );
    let _ = writeln!(
        md,
        "store rows held: {:.2} rows and {:.0} key + value bytes per delivered message",
        f(&s["store_rows_per_msg"]),
        f(&s["store_row_bytes_per_msg"]),
    );
    if let Some(tables) = s["store_tables"].as_object() {
        let parts: Vec<String> = tables
            .iter()
            .map(|(name, t)| {
                format!(
                    "{name} {} rows ({:.3}/msg, {:.0} B/msg)",
                    t["rows"],
                    f(&t["rows_per_msg"]),
                    f(&t["bytes_per_msg"])
                )
            })
            .collect();
        let _ = writeln!(md, "per table: {}", parts.join("; "));
    }
    let p99s: Vec<f64> = windows.iter().map(|w| f(&w["p99_ms"])).collect();
    // The last window holds the messages due in its remainder only when
    // the run is not a whole number of windows; it still counts.
    if let (Some(first), Some(last)) = (p99s.first(), p99s.last()) {
        let worst = p99s.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "targets (reported, not enforced): worst window p99 {worst:.2} ms (≤ 15), p99.9 {:.2} ms (≤ 50), last / first window p99 {:.2} (≤ 1.5)",
            f(&l["p999_ms"]),
            last / first,
        );
    }
    md
}
