//! `cargo xtask heap`: what an idle connection costs the gateway's heap,
//! and where it is allocated.
//!
//! Builds the gateway with the system allocator (mimalloc's own pages
//! would hide the allocations; `--no-default-features`, in a target
//! directory of its own so the usual release build is left alone), runs
//! it under heaptrack, holds `--connections` idle clients
//! (`qim-loadgen connections`), stops it, and gives each allocation still
//! live at the heap's peak to the innermost frame of its backtrace that is
//! neither the standard library, tokio nor a container crate: qim's own
//! code (`gateway/`, `proto/`, `storage/`), or a dependency (quinn,
//! rustls, ...). Prints KiB per connection, by owner and by qim's frames.
//! The figures include what the gateway holds with no connection at all,
//! spread over the connections: hold enough of them (5,000) for that to
//! be small.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::loadtest::{RunningGateway, build, loadgen};

/// Arguments of `cargo xtask heap`.
#[derive(clap::Args, Debug)]
pub(crate) struct HeapArgs {
    /// Idle connections to hold.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Seconds to hold them.
    #[arg(long, default_value_t = 30.0)]
    hold_seconds: f64,
    /// Use `qim-gateway` (built with `--no-default-features`) and
    /// `qim-loadgen` from this directory instead of building them.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Attribute this heaptrack trace instead of making one.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// qim frames to list.
    #[arg(long, default_value_t = 25)]
    top: usize,
}

/// `cargo xtask heap`.
pub(crate) fn heap(root: &Path, a: HeapArgs) -> Result<()> {
    for tool in ["heaptrack", "heaptrack_print"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} not found: install heaptrack (e.g. `apt-get install heaptrack`)");
        }
    }
    let trace = match a.trace {
        Some(trace) => trace,
        None => record(root, &a)?,
    };
    let report = attribute(&trace)?;
    let n = a.connections as f64;
    let kib = |bytes: f64| bytes / n / 1024.0;
    println!(
        "peak heap {:.2} KiB per connection ({:.1} MB over {} connections), trace {}",
        kib(report.total),
        report.total / 1e6,
        a.connections,
        trace.display()
    );
    let mut owners: Vec<_> = report.by_owner.iter().collect();
    owners.sort_by(|x, y| y.1.total_cmp(x.1));
    for (owner, bytes) in owners.iter().take(12) {
        println!("  {:8.2}  {owner}", kib(**bytes));
    }
    println!("qim, by innermost qim frame:");
    let mut frames: Vec<_> = report.qim_frames.iter().collect();
    frames.sort_by(|x, y| y.1.total_cmp(x.1));
    for (frame, bytes) in frames.iter().take(a.top) {
        println!("  {:8.3}  {frame}", kib(**bytes));
    }
    Ok(())
}

/// Runs the gateway under heaptrack with the connections held; returns the
/// trace's path.
fn record(root: &Path, a: &HeapArgs) -> Result<PathBuf> {
    let (gateway, loadgen_bin) = match &a.bin_dir {
        Some(dir) => (dir.join("qim-gateway"), dir.join("qim-loadgen")),
        None => {
            let loadgen_bin = build(root, true)?.loadgen;
            (system_allocator_gateway(root)?, loadgen_bin)
        }
    };
    let dir = root.join("target/heap");
    let data = dir.join("gateway");
    let trace = dir.join("heaptrack.qim-gateway");
    for old in [
        trace.with_extension("qim-gateway.zst"),
        trace.with_extension("qim-gateway.gz"),
    ] {
        let _ = std::fs::remove_file(old);
    }
    let gw = RunningGateway::start_under(
        &["heaptrack", "-o", &trace.display().to_string()],
        &gateway,
        &data,
        &[],
    )?;
    let mut args = vec!["connections".to_owned()];
    args.extend(gw.loadgen_args());
    args.extend([
        "--n".into(),
        a.connections.to_string(),
        "--hold-seconds".into(),
        a.hold_seconds.to_string(),
    ]);
    let result = loadgen(&loadgen_bin, &args)?;
    if result["ok"].as_bool() != Some(true) {
        bail!("the connections did not all come up: {}", result["errors"]);
    }
    stop(gw, &gateway, &data)?;
    ["zst", "gz"]
        .iter()
        .map(|ext| dir.join(format!("heaptrack.qim-gateway.{ext}")))
        .find(|p| p.exists())
        .context("heaptrack wrote no trace")
}

/// The release gateway with the system allocator, built in a target
/// directory of its own (`<target>/heap`).
fn system_allocator_gateway(root: &Path) -> Result<PathBuf> {
    let target = crate::bindings::target_dir(root).join("heap");
    crate::run(
        Command::new(crate::cargo())
            .current_dir(root)
            .args(["build", "--release", "-p", "qim-gateway"])
            .arg("--no-default-features")
            .arg("--target-dir")
            .arg(&target),
    )?;
    Ok(target.join("release/qim-gateway"))
}

/// Stops the gateway with SIGINT (heaptrack writes its trace once the
/// program exits) and waits for heaptrack to finish.
fn stop(mut gw: RunningGateway, binary: &Path, data: &Path) -> Result<()> {
    let binary = binary.canonicalize()?;
    let data = data.display().to_string();
    let pid = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe.is_ok_and(|e| e == binary) && String::from_utf8_lossy(&cmdline).contains(&data)
        })
        .context("the gateway's process under heaptrack")?;
    crate::run(Command::new("kill").args(["-INT", &pid.to_string()]))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if gw.try_wait()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("heaptrack did not finish within two minutes")
}

/// Peak heap by owner.
#[derive(Default)]
struct Report {
    total: f64,
    by_owner: HashMap<String, f64>,
    qim_frames: HashMap<String, f64>,
}

/// Attributes the allocations live at the peak of `trace`.
fn attribute(trace: &Path) -> Result<Report> {
    let out = Command::new("heaptrack_print")
        .arg("-f")
        .arg(trace)
        .args([
            "-p", "1", "-a", "0", "-T", "0", "-m", "0", "-n", "1000000", "-s", "0",
        ])
        .output()
        .context("heaptrack_print")?;
    if !out.status.success() {
        bail!(
            "heaptrack_print failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(attribute_text(&String::from_utf8_lossy(&out.stdout)))
}

/// One backtrace of `heaptrack_print`'s peak listing: its bytes and its
/// frames, innermost first, as (function, file, line).
type Trace = (f64, Vec<(String, String, String)>);

fn parse(text: &str) -> Vec<Trace> {
    let mut traces: Vec<Trace> = Vec::new();
    let mut function = String::new();
    for line in text.lines() {
        if let Some((size, _)) = line.split_once(" peak memory consumed over ")
            && !line.starts_with(' ')
        {
            traces.push((bytes(size), Vec::new()));
            continue;
        }
        let Some((_, frames)) = traces.last_mut() else {
            continue;
        };
        let trimmed = line.trim_start();
        if let Some(at) = trimmed.strip_prefix("at ") {
            if let Some((file, number)) = at.rsplit_once(':') {
                frames.push((function.clone(), file.to_owned(), number.to_owned()));
            }
        } else if line.starts_with("  ") && !trimmed.starts_with("in ") {
            function = trimmed.to_owned();
        }
    }
    traces
}

/// `12.34K` and the like, in bytes.
fn bytes(size: &str) -> f64 {
    let size = size.trim().trim_end_matches('B');
    let (number, scale) = match size.chars().last() {
        Some('K') => (&size[..size.len() - 1], 1e3),
        Some('M') => (&size[..size.len() - 1], 1e6),
        Some('G') => (&size[..size.len() - 1], 1e9),
        _ => (size, 1.0),
    };
    number.parse::<f64>().unwrap_or(0.0) * scale
}

/// Crates whose frames are passed over: the allocation belongs to their
/// caller.
const CONTAINERS: [&str; 14] = [
    "tokio",
    "hashbrown",
    "bytes",
    "slab",
    "smallvec",
    "indexmap",
    "flume",
    "futures-util",
    "futures-core",
    "lock_api",
    "parking_lot",
    "spin",
    "arrayvec",
    "tinyvec",
];

/// The owner of allocations made in a dependency whose frames do not
/// name it.
const UNNAMED: &str = "dependencies (quinn, rustls, ...)";

/// Modules of tokio and of the container crates, as their relative paths
/// start (`src/runtime/...`, hashbrown's `src/raw/...`).
const RELATIVE_PASSED: [&str; 16] = [
    "runtime", "sync", "task", "loom", "util", "time", "io", "net", "macros", "signal", "fs",
    "process", "raw", "map.rs", "set.rs", "bytes",
];

/// The crate a registry path is in (`.../registry/src/<index>/quinn-0.11.9/...`).
fn registry_crate(file: &str) -> Option<&str> {
    let rest = file.split("/registry/src/").nth(1)?;
    let dir = rest.split('/').nth(1)?;
    let cut = dir
        .char_indices()
        .find(|&(i, c)| c == '-' && dir[i + 1..].starts_with(|d: char| d.is_ascii_digit()))?;
    Some(&dir[..cut.0])
}

/// A qim source path (`gateway/src/...`, possibly under a checkout).
fn qim_path(file: &str) -> Option<String> {
    ["gateway/src/", "proto/src/", "storage/src/", "sdk/src/"]
        .iter()
        .find_map(|p| file.find(p).map(|i| file[i..].to_owned()))
}

fn attribute_text(text: &str) -> Report {
    let mut report = Report::default();
    for (size, frames) in parse(text) {
        report.total += size;
        // Frames of dependencies built in release carry paths relative
        // to their crate, with no crate name: quinn's and rustls's most.
        let mut owner = UNNAMED.to_owned();
        for (function, file, number) in &frames {
            if file.starts_with("/rustc/") {
                continue;
            }
            if let Some(name) = registry_crate(file) {
                if CONTAINERS.contains(&name) {
                    continue;
                }
                owner = name.to_owned();
                break;
            }
            if let Some(rest) = file.strip_prefix("src/") {
                // A dependency's path as the release build records it,
                // relative to its crate: tokio's and the containers'
                // modules are passed over, anything else is the owner.
                if RELATIVE_PASSED.iter().any(|m| rest.starts_with(m)) {
                    continue;
                }
                owner = UNNAMED.to_owned();
                break;
            }
            if let Some(path) = qim_path(file) {
                owner = "qim".to_owned();
                *report
                    .qim_frames
                    .entry(format!("{path}:{number} {function}"))
                    .or_default() += size;
            }
            break;
        }
        *report.by_owner.entry(owner).or_default() += size;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As heaptrack_print lists a peak (its frames abridged).
    const SAMPLE: &str = "\
reading file \"x\" - please wait, this might take some time...
PEAK MEMORY CONSUMERS
2.00M peak memory consumed over 10 calls from
  alloc
    at /rustc/abc/library/alloc/src/alloc.rs:94
    in /bin/qim-gateway
  reserve_rehash<>
    at src/raw/mod.rs:10
  reserve
    at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hashbrown-0.15.2/src/map.rs:10
  attach
    at gateway/src/push.rs:225
    in /bin/qim-gateway
  {async_fn#0}
    at gateway/src/session.rs:100
1.00M peak memory consumed over 3 calls from
  new<>
    at /rustc/abc/library/alloc/src/sync.rs:422
  new
    at src/connection.rs:908
  {async_fn#0}
    at gateway/src/handshake.rs:148
0.50M peak memory consumed over 3 calls from
  new
    at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustls-0.23.46/src/conn.rs:5
";

    #[test]
    fn each_peak_allocation_goes_to_its_innermost_owner_past_containers() {
        let report = attribute_text(SAMPLE);
        assert_eq!(report.total, 3.5e6);
        assert_eq!(report.by_owner["qim"], 2e6);
        assert_eq!(report.by_owner[UNNAMED], 1e6);
        assert_eq!(report.by_owner["rustls"], 0.5e6);
        let frames: Vec<_> = report.qim_frames.keys().collect();
        assert_eq!(frames, vec!["gateway/src/push.rs:225 attach"]);
    }
}
