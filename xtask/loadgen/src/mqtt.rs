//! The same chat and connections scenarios against an MQTT broker with
//! QoS 1 (rumqttc clients over TCP): each sender publishes to its pair's
//! topic, its receiver is subscribed with QoS 1. QoS 1 allows duplicates,
//! so they are counted, not failed; a gap (a lost message) is reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};

use crate::chat::{ChatArgs, Received, summarize};
use crate::connections::{ConnArgs, Snapshot, costs};
use crate::stats;

/// Where the broker is.
#[derive(Clone, Debug)]
pub(crate) struct Broker {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Broker {
    fn options(&self, id: &str, in_flight: usize, keep_alive: Duration) -> MqttOptions {
        let mut o = MqttOptions::new(id, self.host.clone(), self.port);
        o.set_keep_alive(keep_alive)
            .set_clean_session(true)
            .set_inflight(in_flight.clamp(1, u16::MAX as usize) as u16)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_request_channel_capacity(in_flight.max(16));
        o
    }
}

/// Polls `eventloop` until ConnAck (or a failure).
async fn connected(eventloop: &mut EventLoop) -> Result<()> {
    loop {
        match eventloop.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => return Ok(()),
            _ => continue,
        }
    }
}

/// Runs the chat scenario on the broker.
pub(crate) async fn chat(broker: Broker, args: ChatArgs, run_id: &str) -> Result<Value> {
    let start_gate = Instant::now();
    let mut pairs = tokio::task::JoinSet::new();
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let ready = Arc::new(Semaphore::new(0));
    for p in 0..args.pairs {
        let (broker, args, run_id) = (broker.clone(), args.clone(), run_id.to_owned());
        let (go, ready) = (go_rx.clone(), Arc::clone(&ready));
        pairs.spawn(async move { pair(broker, args, &run_id, p, go, ready).await });
    }
    // Every subscription is in place before anyone publishes.
    let all = u32::try_from(args.pairs).unwrap_or(u32::MAX);
    tokio::time::timeout(Duration::from_secs(60), ready.acquire_many(all))
        .await
        .context("MQTT clients not ready in time")??
        .forget();
    eprintln!(
        "mqtt chat: {} pairs subscribed in {:.1?}",
        args.pairs,
        start_gate.elapsed()
    );
    let start = Instant::now() + Duration::from_millis(200);
    go_tx.send_replace(Some(start));
    let (mut sent, mut acked, mut received, mut errors) = (0, 0, Vec::new(), Vec::new());
    while let Some(done) = pairs.join_next().await {
        match done? {
            Ok((s, a, r)) => {
                sent += s;
                acked += a;
                received.push(r);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Ok(summarize(
        "mosquitto-qos1",
        &args,
        start,
        (sent, acked),
        received,
        errors,
        false,
    ))
}

async fn pair(
    broker: Broker,
    args: ChatArgs,
    run_id: &str,
    p: usize,
    mut go: watch::Receiver<Option<Instant>>,
    ready: Arc<Semaphore>,
) -> Result<(u64, u64, Received)> {
    let topic = format!("{run_id}/chat/{p}");
    let keep_alive = Duration::from_secs(30);
    // Receiver.
    let (rx_client, mut rx_loop) = AsyncClient::new(
        broker.options(&format!("{run_id}-r{p}"), args.in_flight, keep_alive),
        64,
    );
    connected(&mut rx_loop).await?;
    rx_client.subscribe(&topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = rx_loop.poll().await? {
            break;
        }
    }
    // Sender.
    let (tx_client, mut tx_loop) = AsyncClient::new(
        broker.options(&format!("{run_id}-s{p}"), args.in_flight, keep_alive),
        args.in_flight.max(16),
    );
    connected(&mut tx_loop).await?;
    ready.add_permits(1);
    let start = go.wait_for(|s| s.is_some()).await?.context("start time")?;
    let start = args.phased(start, p);

    let (expect_tx, mut expect_rx) = watch::channel(None::<u64>);
    let receiving = tokio::spawn(async move {
        let mut r = Received {
            latency: Some(stats::histogram()),
            ..Received::default()
        };
        let latency = r.latency.get_or_insert_with(stats::histogram);
        let mut next = 0u64;
        loop {
            if expect_rx.borrow().is_some_and(|t| next >= t) {
                break;
            }
            let event = tokio::select! {
                e = rx_loop.poll() => e,
                changed = expect_rx.changed() => { if changed.is_err() { break } continue; }
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Some((index, sent_ns)) = stats::parse_body(&publish.payload) else {
                        r.errors.push("short payload".into());
                        break;
                    };
                    if index < next {
                        r.duplicates += 1;
                    } else if index > next {
                        r.errors
                            .push(format!("pair {p}: gap, {index} where {next} was due"));
                        break;
                    } else {
                        stats::record(latency, sent_ns);
                        r.delivered += 1;
                        next += 1;
                        r.last = Some(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    r.errors.push(format!("pair {p} receiver: {e}"));
                    break;
                }
            }
        }
        drop(rx_client);
        r
    });

    // The sender's event loop counts PubAcks; publish() waits while the
    // request channel is full, and rumqttc keeps `in_flight` unacked.
    let acked = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(Notify::new());
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let driving = {
        let (acked, acks) = (Arc::clone(&acked), Arc::clone(&acks));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = tx_loop.poll() => match e {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            acks.notify_one();
                        }
                        Ok(_) => {}
                        Err(e) => bail!("sender: {e}"),
                    },
                    _ = stop_rx.wait_for(|s| *s) => return Ok(()),
                }
            }
        })
    };
    tokio::time::sleep_until(start.into()).await;
    let mut n = 0u64;
    while args.more(start, n) {
        let sent_ns = match args.due(start, n) {
            Some(due) => {
                tokio::time::sleep_until(due.into()).await;
                stats::ns_of(due)
            }
            None => stats::now_ns(),
        };
        // Keep at most `in_flight` unacked, like the qim sender.
        while n.saturating_sub(acked.load(Ordering::Relaxed)) >= args.in_flight as u64 {
            if driving.is_finished() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), acks.notified()).await;
        }
        tx_client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                stats::body(n, sent_ns, args.body_bytes),
            )
            .await?;
        n += 1;
    }
    let settle = Duration::from_secs_f64(args.settle_seconds);
    let deadline = Instant::now() + settle;
    while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        if driving.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_n = acked.load(Ordering::Relaxed);
    expect_tx.send_replace(Some(acked_n));
    let r = match tokio::time::timeout(settle, receiving).await {
        Ok(r) => r?,
        Err(_) => Received {
            errors: vec![format!("pair {p}: deliveries missing after {settle:?}")],
            ..Received::default()
        },
    };
    stop_tx.send_replace(true);
    if let Ok(Err(e)) = driving.await {
        bail!("pair {p}: {e}");
    }
    drop(tx_client);
    Ok((n, acked_n, r))
}

/// Runs the connections scenario on the broker.
pub(crate) async fn connections(
    broker: Broker,
    args: ConnArgs,
    run_id: &str,
    concurrency: usize,
) -> Result<Value> {
    let before = Snapshot::take(&args.pid);
    let keep_alive = Duration::from_millis(if args.heartbeat_ms == 0 {
        30_000
    } else {
        args.heartbeat_ms.max(1000)
    });
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let lost = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.n {
        let (broker, permits, ready, lost) = (
            broker.clone(),
            Arc::clone(&permits),
            ready_tx.clone(),
            Arc::clone(&lost),
        );
        let mut stop = stop_rx.clone();
        let id = format!("{run_id}-c{i}");
        tasks.spawn(async move {
            let permit = permits.acquire_owned().await;
            let (client, mut eventloop) = AsyncClient::new(broker.options(&id, 16, keep_alive), 16);
            if let Err(e) = connected(&mut eventloop).await {
                let _ = ready.send(Err(e.to_string())).await;
                return;
            }
            drop(permit);
            let _ = ready.send(Ok(())).await;
            drop(ready);
            loop {
                let stopped = tokio::select! {
                    e = eventloop.poll() => if e.is_err() {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    } else {
                        false
                    },
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopped {
                    let _ = client.disconnect().await;
                    // Let the event loop write the DISCONNECT.
                    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
                    return;
                }
            }
        });
    }
    drop(ready_tx);
    let (mut up, mut failed, mut errors) = (0u64, 0u64, Vec::new());
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => up += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
    }
    let ramp = started.elapsed();
    eprintln!("mqtt connections: {up} up in {ramp:.1?}, {failed} failed; holding");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_up = Snapshot::take(&args.pid);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = Snapshot::take(&args.pid);
    let dropped = lost.load(Ordering::Relaxed);
    if dropped > 0 {
        errors.push(format!("{dropped} connections lost while held"));
    }
    if failed > 0 {
        errors.push(format!("{failed} connects failed"));
    }
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let mut v = json!({
        "system": "mosquitto-qos1",
        "scenario": "connections",
        "connections": args.n,
        "connected": up,
        "failed": failed,
        "lost_while_held": dropped,
        "ramp_s": ramp.as_secs_f64(),
        "connects_per_s": up as f64 / ramp.as_secs_f64().max(1e-9),
        "ok": errors.is_empty(),
        "errors": errors,
    });
    crate::chat::merge(&mut v, costs(args.n, &before, &at_up, &after));
    Ok(v)
}
