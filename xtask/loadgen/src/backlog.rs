//! The backlog download (`chat --backlog`): what a phone back from a
//! flight does. Each sender stores `--messages` messages for its receiver
//! while the receiver is offline; once all are acknowledged, every
//! receiver logs in at once and takes its backlog from the first message
//! (the gateway reads it back from the store and sends it in full delivery
//! windows). Reports the download's messages/s and payload MiB/s, and,
//! with `--pid`, the gateway's CPU over the download. Fails on any message
//! lost, doubled or out of order.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::chat::{ChatArgs, merge, receive, send};
use crate::qim::{Endpoints, Target, login};
use crate::stats;

/// Runs the backlog download.
pub(crate) async fn run(
    target: Target,
    endpoints: Arc<Endpoints>,
    args: ChatArgs,
    run_id: &str,
) -> Result<Value> {
    if args.messages == 0 {
        bail!("--backlog needs --messages: each sender's backlog");
    }
    let mut storing = tokio::task::JoinSet::new();
    for p in 0..args.pairs {
        let (target, endpoints, args) = (target.clone(), Arc::clone(&endpoints), args.clone());
        let (user, to) = (format!("{run_id}-s{p}"), format!("{run_id}-r{p}"));
        storing.spawn(async move {
            let session = login(endpoints.pick(), &target, &user, "d", 0).await?;
            let (_, acked, _) = send(&session, &args, &to, Instant::now()).await?;
            anyhow::Ok((p, acked))
        });
    }
    let mut acked = vec![0u64; args.pairs];
    while let Some(done) = storing.join_next().await {
        let (p, a) = done??;
        acked[p] = a;
    }
    let stored: u64 = acked.iter().sum();
    eprintln!("backlog: {stored} messages stored; the receivers log in");

    let cpu_before = args.pid.and_then(stats::cpu_time);
    let start = Instant::now();
    let mut taking = tokio::task::JoinSet::new();
    for (p, want) in acked.into_iter().enumerate() {
        let (target, endpoints) = (target.clone(), Arc::clone(&endpoints));
        let user = format!("{run_id}-r{p}");
        taking.spawn(async move {
            let session = login(endpoints.pick(), &target, &user, "d", 0).await?;
            let (_keep, expect) = watch::channel(Some(want));
            anyhow::Ok(receive(session, expect, None, Some(0)).await)
        });
    }
    let (mut delivered, mut duplicates, mut errors, mut last) = (0, 0, Vec::new(), start);
    while let Some(done) = taking.join_next().await {
        match done? {
            Ok(r) => {
                delivered += r.delivered;
                duplicates += r.duplicates;
                errors.extend(r.errors);
                last = last.max(r.last.unwrap_or(start));
            }
            Err(e) => errors.push(format!("receiver: {e:#}")),
        }
    }
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    let cpu = cpu_before
        .zip(args.pid.and_then(stats::cpu_time))
        .map(|(before, after)| after.saturating_sub(before).as_secs_f64() / seconds);
    let lost = stored.saturating_sub(delivered);
    if lost > 0 {
        errors.push(format!("{lost} stored messages were never delivered"));
    }
    if duplicates > 0 {
        errors.push(format!("{duplicates} duplicate deliveries"));
    }
    errors.truncate(20);
    let payload = delivered as f64 * args.body_bytes as f64;
    let mut v = args.json();
    merge(
        &mut v,
        json!({
            "system": "qim",
            "scenario": "backlog",
            "sent": stored,
            "acked": stored,
            "delivered": delivered,
            "lost": lost,
            "duplicates": duplicates,
            "download_s": seconds,
            "msgs_per_s": delivered as f64 / seconds,
            "payload_mib_per_s": payload / seconds / f64::from(1u32 << 20),
            "gateway_cpu_cores": cpu,
            "ok": errors.is_empty(),
            "errors": errors,
        }),
    );
    Ok(v)
}
