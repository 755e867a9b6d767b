//! The chat scenario on qim: P sender/receiver pairs, each sender sending
//! to its receiver at an offered rate or flat out for a while.
//!
//! Every message is `Send` → durable → `SendAck` → `Deliver` →
//! `DeliveryAck`. Latency is from the moment a message was due to be sent
//! (so a slow sender does not hide queueing) to its delivery. The run
//! fails on any nack, gap, duplicate or missing delivery: every acked
//! message must be delivered exactly once, in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, server_ack};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::qim::{Endpoints, Session, Target, login, register_push_token};
use crate::soak::{self, Windows};
use crate::stats;

/// Parameters shared by every chat-like scenario (qim, echo, MQTT).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ChatArgs {
    /// Sender/receiver pairs (2 connections each).
    #[arg(long, default_value_t = 8)]
    pub(crate) pairs: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// At most this many messages per sender (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub(crate) messages: u64,
    /// Offered messages per second over all senders (0: flat out).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Unacknowledged sends each sender keeps in flight.
    #[arg(long, default_value_t = 128)]
    pub(crate) in_flight: usize,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Seconds to wait for the last deliveries after sending stops.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) settle_seconds: f64,
    /// qim only: each sender also uploads blobs of this many MiB flat out
    /// on its own connection while it sends (0: no upload).
    #[arg(long, default_value_t = 0)]
    pub(crate) upload_mib: u64,
    /// Soak: also report latency per window of this many seconds (by the
    /// time a message was due; 0: no windows).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) window_seconds: f64,
    /// Soak: the server's process id; its disk writes, CPU and RSS are
    /// sampled at every window boundary.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// qim only: every client registers a push token after login, as a
    /// phone does (each delivered message then asks whether to push).
    #[arg(long)]
    pub(crate) push_tokens: bool,
    /// qim only: each receiver logs in only after its sender's
    /// `--messages` are all acknowledged, then every receiver downloads its
    /// backlog at once (`backlog.rs`).
    #[arg(long)]
    pub(crate) backlog: bool,
    /// qim only: client message ids of the form the SDK made before it made
    /// time-ordered ones (32 hex digits); the embedded store keeps their
    /// send rows at hashed places rather than in time order.
    #[arg(long)]
    pub(crate) plain_ids: bool,
}

impl ChatArgs {
    /// When sender `i`'s message `n` is due, or `None` when flat out.
    pub(crate) fn due(&self, start: Instant, n: u64) -> Option<Instant> {
        (self.rate > 0.0).then(|| {
            let per_sender = self.rate / self.pairs.max(1) as f64;
            start + Duration::from_secs_f64(n as f64 / per_sender)
        })
    }

    /// Where sender `i`'s schedule starts: at a fixed rate the senders are
    /// spread evenly over one interval, so the offered load is smooth
    /// rather than every sender's message `n` falling due at the same
    /// instant (bursts of one message per sender).
    pub(crate) fn phased(&self, start: Instant, i: usize) -> Instant {
        if self.rate > 0.0 {
            start + Duration::from_secs_f64(i as f64 / self.rate)
        } else {
            start
        }
    }

    /// Whether sender may send its message `n` at `now`: at a fixed rate,
    /// only if it falls due before the run's end (a message due at the
    /// end itself would open a window of its own).
    pub(crate) fn more(&self, start: Instant, n: u64) -> bool {
        let end = start + Duration::from_secs_f64(self.seconds);
        (self.messages == 0 || n < self.messages)
            && Instant::now() < end
            && self.due(start, n).is_none_or(|due| due < end)
    }

    /// Fields every chat result carries.
    pub(crate) fn json(&self) -> Value {
        json!({
            "pairs": self.pairs,
            "connections": self.pairs * 2,
            "offered_rate": self.rate,
            "in_flight": self.in_flight,
            "body_bytes": self.body_bytes,
            "upload_mib": self.upload_mib,
        })
    }
}

/// What a receiver saw.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) delivered: u64,
    pub(crate) retransmits: u64,
    pub(crate) duplicates: u64,
    pub(crate) errors: Vec<String>,
    pub(crate) last: Option<Instant>,
    pub(crate) latency: Option<Histogram<u64>>,
    /// Latency per window, when windows were asked for.
    pub(crate) windows: Option<Windows>,
    /// qim only: the latency split at the server's receive stamp
    /// (`server_time_ms`, millisecond precision): from due to the stamp
    /// (the client's send, the network, the gateway reading the frame),
    /// and from the stamp to delivery (store, routing, delivery, the
    /// receiver).
    pub(crate) split: Option<(Histogram<u64>, Histogram<u64>)>,
    /// qim only: how late the sender queued each message after it was due
    /// (part of "due → stamp"): the load generator's own delay, and its
    /// wait for a free place among `--in-flight` unacknowledged sends.
    pub(crate) late: Option<Histogram<u64>>,
}

/// Sums pairs' results into one JSON result.
pub(crate) fn summarize(
    system: &str,
    args: &ChatArgs,
    start: Instant,
    (sent, acked): (u64, u64),
    received: Vec<Received>,
    mut errors: Vec<String>,
    strict: bool,
) -> Value {
    let mut latency = stats::histogram();
    let mut split: Option<(Histogram<u64>, Histogram<u64>)> = None;
    let mut late: Option<Histogram<u64>> = None;
    let (mut delivered, mut retransmits, mut duplicates) = (0, 0, 0);
    let mut last = start;
    let mut windows = Windows::new(start, args.window_seconds, args.seconds);
    for r in received {
        if let (Some(all), Some(w)) = (&mut windows, &r.windows) {
            all.merge(w);
        }
        delivered += r.delivered;
        retransmits += r.retransmits;
        duplicates += r.duplicates;
        errors.extend(r.errors);
        if let Some(h) = &r.latency {
            let _ = latency.add(h);
        }
        if let Some((to, from)) = &r.split {
            let all = split.get_or_insert_with(|| (stats::histogram(), stats::histogram()));
            let _ = all.0.add(to);
            let _ = all.1.add(from);
        }
        if let Some(h) = &r.late {
            let _ = late.get_or_insert_with(stats::histogram).add(h);
        }
        last = last.max(r.last.unwrap_or(start));
    }
    let lost = acked.saturating_sub(delivered);
    if strict {
        if lost > 0 {
            errors.push(format!("{lost} acked messages were never delivered"));
        }
        if duplicates > 0 {
            errors.push(format!("{duplicates} duplicate deliveries"));
        }
    }
    let elapsed = last.duration_since(start).as_secs_f64().max(1e-9);
    errors.truncate(20);
    let mut v = args.json();
    let extra = json!({
        "system": system,
        "scenario": "chat",
        "sent": sent,
        "acked": acked,
        "delivered": delivered,
        "lost": lost,
        "duplicates": duplicates,
        "retransmits": retransmits,
        "elapsed_s": elapsed,
        "msgs_per_s": delivered as f64 / elapsed,
        "latency": stats::latency_json(&latency),
        "ok": errors.is_empty(),
        "errors": errors,
    });
    merge(&mut v, extra);
    if let Some((to, from)) = split {
        merge(
            &mut v,
            json!({ "latency_split": {
                "due_to_server_stamp": stats::latency_json(&to),
                "server_stamp_to_delivered": stats::latency_json(&from),
                "due_to_queued": late.as_ref().map(stats::latency_json),
            }}),
        );
    }
    if let Some(w) = windows {
        merge(
            &mut v,
            json!({ "window_seconds": args.window_seconds, "windows": w.json() }),
        );
    }
    v
}

/// Copies `extra`'s fields into `v`.
pub(crate) fn merge(v: &mut Value, extra: Value) {
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
}

/// Runs the qim chat scenario.
pub(crate) async fn run(
    target: Target,
    endpoints: Arc<Endpoints>,
    args: ChatArgs,
    run_id: &str,
    connect_concurrency: usize,
) -> Result<Value> {
    if args.backlog {
        return crate::backlog::run(target, endpoints, args, run_id).await;
    }
    let tcp = target.tcp.is_some();
    let logins = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let mut connecting = tokio::task::JoinSet::new();
    for p in 0..args.pairs {
        for role in ["s", "r"] {
            let (target, endpoints, logins) =
                (target.clone(), Arc::clone(&endpoints), Arc::clone(&logins));
            let user = format!("{run_id}-{role}{p}");
            let push_token = args.push_tokens;
            connecting.spawn(async move {
                let _permit = logins.acquire_owned().await?;
                let session = login(endpoints.pick(), &target, &user, "d", 0).await?;
                if push_token {
                    register_push_token(&session, &user).await?;
                }
                anyhow::Ok((p, role, session))
            });
        }
    }
    let mut senders: Vec<Option<Session>> = (0..args.pairs).map(|_| None).collect();
    let mut receivers: Vec<Option<Session>> = (0..args.pairs).map(|_| None).collect();
    while let Some(done) = connecting.join_next().await {
        let (p, role, session) = done??;
        if role == "s" {
            senders[p] = Some(session);
        } else {
            receivers[p] = Some(session);
        }
    }
    eprintln!("chat: {} pairs logged in", args.pairs);

    let start = Instant::now() + Duration::from_millis(200);
    let width = Duration::from_secs_f64(args.window_seconds.max(0.0));
    let (stop_sampling, sampling_stop) = watch::channel(false);
    let sampling = match args.pid {
        Some(pid) if !width.is_zero() => {
            Some(tokio::spawn(soak::sample(pid, start, width, sampling_stop)))
        }
        _ => None,
    };
    let mut pairs = tokio::task::JoinSet::new();
    for (p, (sender, receiver)) in senders.into_iter().zip(receivers).enumerate() {
        let (sender, receiver) = (
            sender.context("sender session")?,
            receiver.context("receiver session")?,
        );
        let args = args.clone();
        let to = format!("{run_id}-r{p}");
        pairs.spawn(async move {
            let (expect_tx, expect_rx) = watch::channel(None);
            let windows = Windows::new(start, args.window_seconds, args.seconds);
            let receiving = tokio::spawn(receive(receiver, expect_rx, windows, None));
            let (stop_upload, upload_stop) = watch::channel(false);
            let uploading = (args.upload_mib > 0).then(|| {
                tokio::spawn(crate::upload::flat_out(
                    sender.conn.clone(),
                    sender.welcome.clone(),
                    sender.max_frame,
                    args.upload_mib,
                    upload_stop,
                ))
            });
            let sending = send(&sender, &args, &to, args.phased(start, p)).await;
            stop_upload.send_replace(true);
            let mut upload_errors = Vec::new();
            if let Some(uploading) = uploading {
                match uploading.await {
                    Ok(Ok(bytes)) => eprintln!("chat: sender {p} uploaded {} MiB", bytes >> 20),
                    Ok(Err(e)) => upload_errors.push(format!("uploader {p}: {e:#}")),
                    Err(e) => upload_errors.push(format!("uploader {p}: {e}")),
                }
            }
            let (sent, acked, late, mut errors) = match sending {
                Ok((sent, acked, late)) => (sent, acked, Some(late), Vec::new()),
                Err(e) => (0, 0, None, vec![format!("sender {p}: {e:#}")]),
            };
            errors.extend(upload_errors);
            expect_tx.send_replace(Some(acked));
            let settle = Duration::from_secs_f64(args.settle_seconds);
            let mut received = match tokio::time::timeout(settle, receiving).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Received {
                    errors: vec![format!("receiver {p}: {e}")],
                    ..Received::default()
                },
                Err(_) => Received {
                    errors: vec![format!(
                        "receiver {p}: not all deliveries within {settle:?}"
                    )],
                    ..Received::default()
                },
            };
            received.late = late;
            // Keep the sender's connection open until its receiver is done.
            drop(sender);
            (sent, acked, received, errors)
        });
    }
    let (mut sent, mut acked, mut received, mut errors) = (0, 0, Vec::new(), Vec::new());
    while let Some(done) = pairs.join_next().await {
        let (s, a, r, e) = done?;
        sent += s;
        acked += a;
        received.push(r);
        errors.extend(e);
    }
    stop_sampling.send_replace(true);
    let samples = match sampling {
        Some(sampling) => sampling.await?,
        None => Vec::new(),
    };
    // Over TLS on TCP the result is a system of its own, next to QUIC's.
    let system = if tcp { "qim-tcp" } else { "qim" };
    let mut result = summarize(system, &args, start, (sent, acked), received, errors, true);
    soak::attach(&mut result, &samples, width);
    Ok(result)
}

/// Sends until the time or message budget is spent; returns (sent, acked)
/// and how late each message was queued after it was due.
pub(crate) async fn send(
    session: &Session,
    args: &ChatArgs,
    to: &str,
    start: Instant,
) -> Result<(u64, u64, Histogram<u64>)> {
    let mut late = stats::histogram();
    let streams = session.server_streams().await?;
    let mut chat = session.open_uni(StreamKind::Chat).await?;
    let heartbeat = {
        let interval = session.heartbeat_interval();
        let conn_session = session.conn.clone();
        tokio::spawn(async move {
            // Ends with the connection; its result does not matter here.
            let _ = heartbeat_on(conn_session, interval).await;
        })
    };
    let window = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let (total_tx, mut total_rx) = watch::channel(None::<u64>);
    let mut acks = streams.acks;
    let acking = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                if total_rx.borrow().is_some_and(|t| acked >= t) {
                    return Ok(acked);
                }
                tokio::select! {
                    ack = acks.next::<v1::ServerAck>() => match ack? {
                        Some(v1::ServerAck { kind: Some(server_ack::Kind::Ack(ack)) }) => {
                            if ack_number(&ack.client_msg_id) != Some(acked) {
                                bail!("ack for {} where {acked} was due", ack.client_msg_id);
                            }
                            acked += 1;
                            window.add_permits(1);
                        }
                        Some(v1::ServerAck { kind: Some(server_ack::Kind::Nack(nack)) }) => {
                            bail!("send {} refused: {:?} {}", nack.client_msg_id, nack.code(), nack.message);
                        }
                        other => bail!("unexpected ack frame {other:?}"),
                    },
                    _ = total_rx.changed() => {}
                }
            }
        })
    };
    tokio::time::sleep_until(start.into()).await;
    let mut n = 0u64;
    let to_peer = v1::Peer {
        target: Some(v1::peer::Target::User(to.to_owned())),
    };
    let result: Result<()> = async {
        while args.more(start, n) {
            let due = args.due(start, n);
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            window.acquire().await?.forget();
            let mut batch = 0;
            loop {
                let sent_ns = args.due(start, n).map_or_else(stats::now_ns, stats::ns_of);
                stats::record(&mut late, sent_ns);
                chat.queue(&v1::Send {
                    client_msg_id: client_msg_id(n, args.plain_ids),
                    to: Some(to_peer.clone()),
                    body: stats::body(n, sent_ns, args.body_bytes).into(),
                    kind: "text".into(),
                    // Each send is written once, as the SDK's first attempt.
                    first_attempt: true,
                    ..Default::default()
                })?;
                n += 1;
                batch += 1;
                // Take what else is due and allowed now, in one write.
                let ready = args.more(start, n)
                    && batch < 64
                    && args.due(start, n).is_none_or(|d| d <= Instant::now());
                if !ready {
                    break;
                }
                match window.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
            }
            chat.flush().await?;
        }
        Ok(())
    }
    .await;
    total_tx.send_replace(Some(n));
    result?;
    let acked = acking.await??;
    heartbeat.abort();
    Ok((n, acked, late))
}

async fn heartbeat_on(conn: qim_proto::transport::Connection, interval: Duration) -> Result<()> {
    use qim_proto::io::{FramedRecv, FramedSend};
    let max = qim_proto::DEFAULT_MAX_FRAME;
    let (send, recv) = conn.open_bi().await?;
    let mut send = FramedSend::new(send, StreamKind::Heartbeat, max);
    let mut recv = FramedRecv::new(recv, max);
    for n in 1.. {
        send.send(&v1::Ping {
            n,
            sent_at_ms: qim_proto::now_ms(),
            next_within_ms: 0,
        })
        .await?;
        recv.next::<v1::Pong>().await?;
        tokio::time::sleep(interval).await;
    }
    Ok(())
}

/// Receives and acknowledges deliveries, in order, until `expect` says how
/// many were acked and that many have arrived; the first one due is the
/// one after `after` (the inbox's head at login when `None`).
pub(crate) async fn receive(
    session: Session,
    mut expect: watch::Receiver<Option<u64>>,
    windows: Option<Windows>,
    after: Option<u64>,
) -> Received {
    let mut r = Received {
        latency: Some(stats::histogram()),
        windows,
        split: Some((stats::histogram(), stats::histogram())),
        ..Received::default()
    };
    if let Err(e) = receive_into(&session, &mut expect, &mut r, after).await {
        r.errors.push(format!("{e:#}"));
    }
    r
}

async fn receive_into(
    session: &Session,
    expect: &mut watch::Receiver<Option<u64>>,
    r: &mut Received,
    after: Option<u64>,
) -> Result<()> {
    let streams = session.server_streams().await?;
    let mut deliveries = streams.deliveries;
    let mut acks = session.open_uni(StreamKind::Ack).await?;
    let hb = tokio::spawn(heartbeat_on(
        session.conn.clone(),
        session.heartbeat_interval(),
    ));
    let base = after.unwrap_or(session.welcome.inbox_head);
    let mut next_seq = base + 1;
    let latency = r.latency.get_or_insert_with(stats::histogram);
    let split = r
        .split
        .get_or_insert_with(|| (stats::histogram(), stats::histogram()));
    let result = async {
        loop {
            if expect.borrow().is_some_and(|t| r.delivered >= t) {
                return Ok(());
            }
            let first = tokio::select! {
                d = deliveries.next::<v1::Deliver>() => d?.context("delivery stream ended")?,
                changed = expect.changed() => { changed?; continue; }
            };
            let mut d = Some(first);
            while let Some(deliver) = d {
                if deliver.attempt > 0 {
                    r.retransmits += 1;
                }
                if deliver.seq < next_seq {
                    if deliver.attempt == 0 {
                        r.duplicates += 1;
                    }
                } else if deliver.seq > next_seq {
                    bail!("gap: seq {} where {next_seq} was due", deliver.seq);
                } else {
                    let body = deliver.message.as_ref().map(|m| &m.body[..]).unwrap_or(&[]);
                    let (index, sent_ns) = stats::parse_body(body).context("short body")?;
                    let want = next_seq - base - 1;
                    if index != want {
                        bail!("seq {next_seq} holds message {index}, expected {want}");
                    }
                    stats::record(latency, sent_ns);
                    if let Some(m) = &deliver.message {
                        let stamp = stats::ns_of_wall_ms(m.server_time_ms);
                        stats::record_between(&mut split.0, sent_ns, stamp);
                        stats::record_between(&mut split.1, stamp, stats::now_ns());
                    }
                    if let Some(w) = &mut r.windows {
                        w.record(sent_ns);
                    }
                    r.delivered += 1;
                    next_seq += 1;
                }
                d = deliveries.try_next::<v1::Deliver>()?;
            }
            r.last = Some(Instant::now());
            acks.send(&v1::DeliveryAck {
                up_to_seq: next_seq - 1,
                seqs: Vec::new(),
            })
            .await?;
        }
    }
    .await;
    hb.abort();
    result
}

/// The `n`th send's client id: time-ordered, as the SDK makes them
/// (`qim_proto::ids::time_ordered_client_msg_id`), with `n` in place of
/// the random bits so its ack can be matched; or `n` as 32 hex digits.
fn client_msg_id(n: u64, plain: bool) -> String {
    if plain {
        return format!("{n:032x}");
    }
    let now_ms = u64::try_from(qim_proto::now_ms()).unwrap_or(0);
    qim_proto::ids::time_ordered_client_msg_id(now_ms, u128::from(n))
}

/// The `n` of [`client_msg_id`] an ack names.
fn ack_number(client_msg_id: &str) -> Option<u64> {
    let n = match client_msg_id.split_once('-') {
        Some((_, random)) if qim_proto::ids::client_msg_id_time(client_msg_id).is_some() => random,
        _ => client_msg_id,
    };
    u64::from_str_radix(n, 16).ok()
}
