//! Measurements: process memory and CPU from `/proc`, the machine's
//! available memory, latency histograms and the timestamps carried in
//! message bodies.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The instant all body timestamps count from (one process sends and
/// receives, so no clock sync is needed).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The wall-clock time of the process epoch, in nanoseconds since the Unix
/// epoch: turns a server's timestamp into this process's clock.
fn epoch_wall_ns() -> i128 {
    static WALL: OnceLock<i128> = OnceLock::new();
    *WALL.get_or_init(|| {
        let since_epoch = epoch().elapsed().as_nanos() as i128;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        wall - since_epoch
    })
}

/// The process-epoch nanoseconds of a wall-clock time in milliseconds (a
/// server's stamp; the server runs on this machine, so on this clock).
pub(crate) fn ns_of_wall_ms(ms: i64) -> u64 {
    (i128::from(ms) * 1_000_000 - epoch_wall_ns()).max(0) as u64
}

/// Records `to_ns - from_ns` (clamped at 1 µs).
pub(crate) fn record_between(h: &mut Histogram<u64>, from_ns: u64, to_ns: u64) {
    h.saturating_record((to_ns.saturating_sub(from_ns) / 1_000).max(1));
}

/// Nanoseconds since the process epoch.
pub(crate) fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The nanosecond timestamp of `at`.
pub(crate) fn ns_of(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// A message body: its index in the sender's sequence, the time it was
/// (meant to be) sent, then padding up to `len` bytes (at least 16).
pub(crate) fn body(index: u64, sent_ns: u64, len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(len.max(16));
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&sent_ns.to_le_bytes());
    b.resize(len.max(16), b'x');
    b
}

/// The index and send time in a body made by [`body`].
pub(crate) fn parse_body(b: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((index, sent))
}

/// A latency histogram in microseconds, 1 µs to 10 minutes.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// Records the latency of a message sent at `sent_ns`.
pub(crate) fn record(h: &mut Histogram<u64>, sent_ns: u64) {
    record_between(h, sent_ns, now_ns());
}

/// Percentiles in milliseconds plus a distribution for charts.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let curve: Vec<Value> = [
        0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
    ]
    .iter()
    .map(|q| json!([q, ms(*q)]))
    .collect();
    json!({
        "count": h.len(),
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": h.max() as f64 / 1000.0,
        "mean_ms": h.mean() / 1000.0,
        "quantiles_ms": curve,
    })
}

/// A field of `/proc/<pid>/status` in KiB (e.g. `VmRSS`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, field)
}

/// `MemAvailable` of `/proc/meminfo` in KiB.
pub(crate) fn mem_available_kib() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable",
    )
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User plus system CPU time of a process.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state field that follows ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Clock ticks are 100 per second on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// This process's id.
pub(crate) fn own_pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_proc_is_readable() {
        let b = body(42, 7, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_body(&b), Some((42, 7)));
        assert_eq!(parse_body(&b[..10]), None);
        assert!(status_kib(own_pid(), "VmRSS").is_some_and(|k| k > 0));
        assert!(mem_available_kib().is_some_and(|k| k > 0));
        assert!(cpu_time(own_pid()).is_some());
    }
}
