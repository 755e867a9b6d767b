//! The connections scenario: ramp to N logged-in clients that ping on
//! their heartbeat stream, hold them, and measure what each costs the
//! gateway (RSS, CPU while idle) and the machine (MemAvailable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::qim::{Endpoints, Target, login};
use crate::stats;

/// Parameters of the connections scenario.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ConnArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub(crate) n: usize,
    /// Seconds to hold them once all are up.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) hold_seconds: f64,
    /// Heartbeat interval announced and used, in ms (0: the server's).
    #[arg(long, default_value_t = 0)]
    pub(crate) heartbeat_ms: u64,
    /// Process ids of the server (a cluster's nodes comma separated), to
    /// read their memory and CPU (summed).
    #[arg(long, value_delimiter = ',')]
    pub(crate) pid: Vec<u32>,
}

/// Memory and CPU readings at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    server_rss_kib: u64,
    own_rss_kib: u64,
    available_kib: u64,
    server_cpu: Duration,
    own_cpu: Duration,
    at: Instant,
}

impl Snapshot {
    /// Reads `/proc` now.
    pub(crate) fn take(pids: &[u32]) -> Self {
        let me = stats::own_pid();
        Self {
            server_rss_kib: pids
                .iter()
                .filter_map(|&p| stats::status_kib(p, "VmRSS"))
                .sum(),
            own_rss_kib: stats::status_kib(me, "VmRSS").unwrap_or(0),
            available_kib: stats::mem_available_kib().unwrap_or(0),
            server_cpu: pids.iter().filter_map(|&p| stats::cpu_time(p)).sum(),
            own_cpu: stats::cpu_time(me).unwrap_or_default(),
            at: Instant::now(),
        }
    }
}

/// What N connections cost between two snapshots, as JSON fields.
pub(crate) fn costs(n: usize, before: &Snapshot, up: &Snapshot, after: &Snapshot) -> Value {
    let per = |kib: i64| kib as f64 / n.max(1) as f64;
    let server = up.server_rss_kib as i64 - before.server_rss_kib as i64;
    let own = up.own_rss_kib as i64 - before.own_rss_kib as i64;
    let machine = before.available_kib as i64 - up.available_kib as i64;
    let hold = after.at.duration_since(up.at).as_secs_f64().max(1e-9);
    json!({
        "server_rss_kib_before": before.server_rss_kib,
        "server_rss_kib_up": up.server_rss_kib,
        "server_rss_kib_per_conn": per(server),
        "loadgen_rss_kib_per_conn": per(own),
        "machine_kib_per_conn": per(machine),
        // The machine's drop less the load generator's own growth: the
        // server and the kernel (socket buffers, page tables).
        "machine_minus_loadgen_kib_per_conn": per(machine - own),
        "server_idle_cpu_cores": (after.server_cpu.saturating_sub(up.server_cpu)).as_secs_f64() / hold,
        "loadgen_idle_cpu_cores": (after.own_cpu.saturating_sub(up.own_cpu)).as_secs_f64() / hold,
        "hold_s": hold,
    })
}

/// Runs the qim connections scenario.
pub(crate) async fn run(
    target: Target,
    endpoints: Arc<Endpoints>,
    args: ConnArgs,
    run_id: &str,
    connect_concurrency: usize,
) -> Result<Value> {
    let before = Snapshot::take(&args.pid);
    let logins = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let up = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.n {
        let (target, endpoints, logins) =
            (target.clone(), Arc::clone(&endpoints), Arc::clone(&logins));
        let (mut stop, ready, lost) = (stop_rx.clone(), ready_tx.clone(), Arc::clone(&lost));
        let user = format!("{run_id}-c{i}");
        let heartbeat_ms = args.heartbeat_ms;
        tasks.spawn(async move {
            let permit = logins.acquire_owned().await;
            let session = match login(endpoints.pick(), &target, &user, "d", 0).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}"))).await;
                    return;
                }
            };
            drop(permit);
            let _ = ready.send(Ok(())).await;
            drop(ready);
            let interval = if heartbeat_ms == 0 {
                session.heartbeat_interval()
            } else {
                Duration::from_millis(heartbeat_ms)
            };
            // Spread the pings over the interval.
            let first = interval.mul_f64(rand::random::<f64>());
            tokio::select! {
                r = session.heartbeat(interval, first) => {
                    if r.is_err() {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = stop.wait_for(|s| *s) => {
                    session.conn.close(qim_proto::v1::ErrorCode::NoError, b"done");
                }
            }
        });
    }
    drop(ready_tx);
    let mut errors = Vec::new();
    let mut failed = 0u64;
    let mut next_report = Instant::now() + Duration::from_secs(5);
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => {
                up.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
        if Instant::now() >= next_report {
            eprintln!(
                "connections: {} up, {failed} failed after {:.1?}",
                up.load(Ordering::Relaxed),
                started.elapsed()
            );
            next_report += Duration::from_secs(5);
        }
    }
    let ramp = started.elapsed();
    let connected = up.load(Ordering::Relaxed);
    eprintln!("connections: {connected} up in {ramp:.1?}, {failed} failed; holding");
    // Let the last handshakes' transient buffers go before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_up = Snapshot::take(&args.pid);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = Snapshot::take(&args.pid);
    let dropped = lost.load(Ordering::Relaxed);
    if dropped > 0 {
        errors.push(format!("{dropped} connections lost while held"));
    }
    if failed > 0 {
        errors.push(format!("{failed} logins failed"));
    }
    stop_tx.send_replace(true);
    let closing = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    });
    let _ = closing.await;
    let mut v = json!({
        "system": "qim",
        "scenario": "connections",
        "connections": args.n,
        "connected": connected,
        "failed": failed,
        "lost_while_held": dropped,
        "ramp_s": ramp.as_secs_f64(),
        "connects_per_s": connected as f64 / ramp.as_secs_f64().max(1e-9),
        "ok": errors.is_empty(),
        "errors": errors,
    });
    crate::chat::merge(&mut v, costs(args.n, &before, &at_up, &after));
    Ok(v)
}
