//! The fan-out scenario: one group of M online members (plus the senders,
//! who are members too); S senders post a fixed number of messages each,
//! at an offered rate or flat out; every member must get every message
//! exactly once and, per sender, in order.
//!
//! A write-diffusion group's messages arrive as inbox deliveries (acked
//! like one-to-one messages); a read-diffusion group's (more members than
//! the server's `groups.read_diffusion_threshold`) are pushed best effort
//! on the session's group stream, and a member pulls what it missed
//! (a gap in the group's seqs, or a nudge naming a head it has not
//! reached) with `GroupSyncRequest`, as the SDK does. Both paths count.
//!
//! Reported: deliveries/s over all members, latency send → each member and
//! send → the last member (p50…p99.9), pulls, pushed duplicates (a pull
//! and a push of the same seq: dropped by seq, as the SDK does). The run
//! fails on any nack, any member missing a message, any message delivered
//! twice to the application, or any message out of its sender's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, rpc_request, rpc_response, server_ack};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::qim::{Endpoints, Session, Target, login, rpc};
use crate::stats;

/// Parameters of the fan-out scenario.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct FanoutArgs {
    /// Online members who receive (besides the senders).
    #[arg(long, default_value_t = 100)]
    pub(crate) members: usize,
    /// Members who post.
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,
    /// Messages each sender posts.
    #[arg(long, default_value_t = 100)]
    pub(crate) messages: u64,
    /// Offered messages per second over all senders (0: flat out).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Unacknowledged sends each sender keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub(crate) in_flight: usize,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Seconds to wait for the last deliveries after sending stops.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) settle_seconds: f64,
}

/// Sender `j`'s message `n` as one index in a body.
fn index(j: usize, n: u64) -> u64 {
    ((j as u64) << 32) | n
}

/// Per message: members that got it, and when the last did (ns).
struct Tally {
    got: Vec<AtomicU32>,
    last_ns: Vec<AtomicU64>,
    sent_ns: Vec<AtomicU64>,
    messages: u64,
}

impl Tally {
    fn slot(&self, j: usize, n: u64) -> Option<usize> {
        (n < self.messages).then(|| j * self.messages as usize + n as usize)
    }
}

/// What one member saw.
#[derive(Default)]
struct Seen {
    delivered: u64,
    pulled: u64,
    pulls: u64,
    push_duplicates: u64,
    retransmits: u64,
    errors: Vec<String>,
    last: Option<Instant>,
    latency: Option<Histogram<u64>>,
}

/// Runs the fan-out scenario.
pub(crate) async fn run(
    target: Target,
    endpoints: Arc<Endpoints>,
    args: FanoutArgs,
    run_id: &str,
    connect_concurrency: usize,
) -> Result<Value> {
    if args.senders == 0 || args.messages == 0 {
        bail!("--senders and --messages must be at least 1");
    }
    let group = format!("{run_id}-g");
    let members: Vec<String> = (0..args.members)
        .map(|i| format!("{run_id}-m{i}"))
        .collect();
    let senders: Vec<String> = (0..args.senders)
        .map(|j| format!("{run_id}-f{j}"))
        .collect();
    let t = Instant::now();
    let logins = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let mut connecting = tokio::task::JoinSet::new();
    for (i, user) in senders.iter().chain(&members).enumerate() {
        let (target, endpoints, logins, user) = (
            target.clone(),
            Arc::clone(&endpoints),
            Arc::clone(&logins),
            user.clone(),
        );
        connecting.spawn(async move {
            let _permit = logins.acquire_owned().await?;
            let session = login(endpoints.pick(), &target, &user, "d", 0).await?;
            anyhow::Ok((i, session))
        });
    }
    let mut sessions: Vec<Option<Session>> =
        (0..senders.len() + members.len()).map(|_| None).collect();
    while let Some(done) = connecting.join_next().await {
        let (i, session) = done??;
        sessions[i] = Some(session);
    }
    let mut sessions: Vec<Session> = sessions
        .into_iter()
        .map(|s| s.context("missing session"))
        .collect::<Result<_>>()?;
    let member_sessions = sessions.split_off(senders.len());
    let sender_sessions = sessions;
    let login_s = t.elapsed().as_secs_f64();
    eprintln!(
        "fanout: {} members and {} senders online in {login_s:.1} s",
        members.len(),
        senders.len()
    );

    // Every member's streams are taken before the group exists, so no
    // delivery is missed.
    let tally = Arc::new(Tally {
        got: (0..args.senders as u64 * args.messages)
            .map(|_| AtomicU32::new(0))
            .collect(),
        last_ns: (0..args.senders as u64 * args.messages)
            .map(|_| AtomicU64::new(0))
            .collect(),
        sent_ns: (0..args.senders as u64 * args.messages)
            .map(|_| AtomicU64::new(0))
            .collect(),
        messages: args.messages,
    });
    let (expect_tx, expect_rx) = watch::channel(None::<Vec<u64>>);
    // A permit per member that has seen its first group push (the nudge a
    // read-diffusion group sends when a member starts following it).
    let following = Arc::new(Semaphore::new(0));
    let mut receiving = tokio::task::JoinSet::new();
    for session in member_sessions {
        let (tally, expect, group) = (Arc::clone(&tally), expect_rx.clone(), group.clone());
        let following = Arc::clone(&following);
        receiving.spawn(async move { member(session, &group, tally, expect, following).await });
    }
    let mut draining = tokio::task::JoinSet::new();
    let mut sender_parts = Vec::new();
    for session in sender_sessions {
        let (deliveries, acks) = take_streams(&session).await?;
        draining.spawn(drain(session.conn.clone(), deliveries));
        sender_parts.push((session, acks));
    }

    // The first sender creates the group with everyone in it.
    let creator = &sender_parts[0].0;
    let mut everyone: Vec<String> = senders[1..].to_vec();
    everyone.extend(members.iter().cloned());
    let mut chunks = everyone.chunks(1_000);
    let first = chunks.next().map(<[String]>::to_vec).unwrap_or_default();
    let mut info = group_rpc(
        creator,
        rpc_request::Kind::CreateGroup(v1::CreateGroupRequest {
            group: group.clone(),
            name: "fan-out".into(),
            members: first,
            ..Default::default()
        }),
    )
    .await?;
    for chunk in chunks {
        info = group_rpc(
            creator,
            rpc_request::Kind::Group(v1::GroupRequest {
                group: group.clone(),
                op: Some(v1::group_request::Op::Invite(v1::group_request::Users {
                    users: chunk.to_vec(),
                })),
            }),
        )
        .await?;
    }
    eprintln!(
        "fanout: group {group} of {} members, {} diffusion",
        info.member_count,
        if info.read_diffusion { "read" } else { "write" }
    );

    if info.read_diffusion {
        // Measure the steady state: every member follows the group before
        // the first post (else the first nudges name messages already
        // stored and every member pulls them as well).
        let n = u32::try_from(args.members).unwrap_or(u32::MAX);
        let all = tokio::time::timeout(Duration::from_secs(60), following.acquire_many(n)).await;
        if !matches!(all, Ok(Ok(_))) {
            bail!("not every member follows the group after 60 s");
        }
    }
    let start = Instant::now() + Duration::from_millis(200);
    let mut sending = tokio::task::JoinSet::new();
    for (j, (session, acks)) in sender_parts.into_iter().enumerate() {
        let (args, group, tally) = (args.clone(), group.clone(), Arc::clone(&tally));
        sending.spawn(async move {
            let r = send(&session, acks, &args, j, &group, start, &tally).await;
            (j, r, session)
        });
    }
    let mut acked = vec![0u64; args.senders];
    let mut errors = Vec::new();
    let mut keep = Vec::new();
    while let Some(done) = sending.join_next().await {
        let (j, r, session) = done?;
        match r {
            Ok(a) => acked[j] = a,
            Err(e) => errors.push(format!("sender {j}: {e:#}")),
        }
        // Senders stay online until the members are done.
        keep.push(session);
    }
    let sent_done = start.elapsed();
    expect_tx.send_replace(Some(acked.clone()));
    let settle = Duration::from_secs_f64(args.settle_seconds);
    let mut seen = Vec::new();
    let gathered = tokio::time::timeout(settle, async {
        while let Some(done) = receiving.join_next().await {
            seen.push(done);
        }
    })
    .await;
    if gathered.is_err() {
        errors.push(format!(
            "{} members not done within {settle:?}",
            args.members - seen.len()
        ));
    }
    draining.abort_all();
    drop(keep);

    let mut per_delivery = stats::histogram();
    let (mut delivered, mut pulled, mut pulls, mut dup, mut retransmits) = (0, 0, 0, 0, 0);
    let mut last = start;
    for s in seen {
        let s = s?;
        delivered += s.delivered;
        pulled += s.pulled;
        pulls += s.pulls;
        dup += s.push_duplicates;
        retransmits += s.retransmits;
        errors.extend(s.errors);
        if let Some(h) = &s.latency {
            let _ = per_delivery.add(h);
        }
        last = last.max(s.last.unwrap_or(start));
    }
    let mut to_last = stats::histogram();
    let mut incomplete = 0u64;
    for (j, &a) in acked.iter().enumerate() {
        for n in 0..a {
            let Some(i) = tally.slot(j, n) else { continue };
            if tally.got[i].load(Ordering::Relaxed) as usize != args.members {
                incomplete += 1;
                continue;
            }
            let (sent, last) = (
                tally.sent_ns[i].load(Ordering::Relaxed),
                tally.last_ns[i].load(Ordering::Relaxed),
            );
            let _ = to_last.record(last.saturating_sub(sent) / 1_000);
        }
    }
    if incomplete > 0 {
        errors.push(format!(
            "{incomplete} acked messages did not reach every member"
        ));
    }
    let total_acked: u64 = acked.iter().sum();
    let expected = total_acked * args.members as u64;
    if delivered != expected {
        errors.push(format!("{delivered} deliveries where {expected} were due"));
    }
    errors.truncate(20);
    let elapsed = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok(json!({
        "system": "qim",
        "scenario": "fanout",
        "members": args.members,
        "senders": args.senders,
        "group_members": info.member_count,
        "read_diffusion": info.read_diffusion,
        "offered_rate": args.rate,
        "in_flight": args.in_flight,
        "body_bytes": args.body_bytes,
        "login_s": login_s,
        "acked": total_acked,
        "send_s": sent_done.as_secs_f64(),
        "messages_per_s": total_acked as f64 / elapsed,
        "delivered": delivered,
        "pulled": pulled,
        "pulls": pulls,
        "push_duplicates": dup,
        "retransmits": retransmits,
        "elapsed_s": elapsed,
        "deliveries_per_s": delivered as f64 / elapsed,
        "latency": stats::latency_json(&per_delivery),
        "latency_to_last_member": stats::latency_json(&to_last),
        "ok": errors.is_empty(),
        "errors": errors,
    }))
}

/// One rpc on a bidi stream of its own; the group's info on success.
async fn group_rpc(session: &Session, kind: rpc_request::Kind) -> Result<v1::GroupInfo> {
    match rpc(session, kind).await? {
        rpc_response::Kind::Group(v1::GroupResponse {
            group: Some(info), ..
        }) => Ok(info),
        other => bail!("group rpc answered {other:?}"),
    }
}

/// Accepts the server's uni streams for the session's life: the ack
/// stream is returned, every delivery stream (inbox, group push) feeds
/// one channel.
async fn take_streams(session: &Session) -> Result<(mpsc::Receiver<v1::Deliver>, FramedRecv)> {
    let (tx, rx) = mpsc::channel(1024);
    let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
    let conn = session.conn.clone();
    let max = session.max_frame;
    tokio::spawn(async move {
        let mut ack_tx = Some(ack_tx);
        while let Ok(mut stream) = conn.accept_uni().await {
            match read_preamble(&mut stream).await {
                Ok(StreamKind::Ack) => {
                    if let Some(t) = ack_tx.take() {
                        let _ = t.send(FramedRecv::new(stream, max));
                    }
                }
                Ok(StreamKind::Delivery) => {
                    let tx = tx.clone();
                    let mut recv = FramedRecv::new(stream, max);
                    tokio::spawn(async move {
                        while let Ok(Some(d)) = recv.next::<v1::Deliver>().await {
                            if tx.send(d).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                _ => return,
            }
        }
    });
    let acks = ack_rx.await.context("no ack stream")?;
    Ok((rx, acks))
}

/// Acknowledges a sender's own inbox deliveries so nothing piles up.
async fn drain(
    conn: qim_proto::transport::Connection,
    mut deliveries: mpsc::Receiver<v1::Deliver>,
) -> Result<()> {
    let mut acks = FramedSend::new(
        conn.open_uni().await?,
        StreamKind::Ack,
        qim_proto::DEFAULT_MAX_FRAME,
    );
    while let Some(d) = deliveries.recv().await {
        if d.group.is_empty() && d.seq > 0 {
            acks.send(&v1::DeliveryAck {
                up_to_seq: d.seq,
                seqs: Vec::new(),
            })
            .await?;
        }
    }
    Ok(())
}

async fn send(
    session: &Session,
    mut acks: FramedRecv,
    args: &FanoutArgs,
    j: usize,
    group: &str,
    start: Instant,
    tally: &Tally,
) -> Result<u64> {
    let mut chat = session.open_uni(StreamKind::Chat).await?;
    let hb = tokio::spawn(heartbeat(
        session.conn.clone(),
        session.heartbeat_interval(),
    ));
    let window = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let total = args.messages;
    let acking = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let mut acked = 0u64;
            while acked < total {
                match acks.next::<v1::ServerAck>().await? {
                    Some(v1::ServerAck {
                        kind: Some(server_ack::Kind::Ack(ack)),
                    }) => {
                        if ack.client_msg_id != acked.to_string() {
                            bail!("ack for {} where {acked} was due", ack.client_msg_id);
                        }
                        acked += 1;
                        window.add_permits(1);
                    }
                    Some(v1::ServerAck {
                        kind: Some(server_ack::Kind::Nack(nack)),
                    }) => bail!(
                        "send {} refused: {:?} {}",
                        nack.client_msg_id,
                        nack.code(),
                        nack.message
                    ),
                    other => bail!("unexpected ack frame {other:?}"),
                }
            }
            anyhow::Ok(acked)
        })
    };
    let to = v1::Peer {
        target: Some(v1::peer::Target::Group(group.to_owned())),
    };
    let per_sender = args.rate / args.senders as f64;
    let due =
        |n: u64| (per_sender > 0.0).then(|| start + Duration::from_secs_f64(n as f64 / per_sender));
    tokio::time::sleep_until(start.into()).await;
    for n in 0..total {
        if let Some(due) = due(n) {
            tokio::time::sleep_until(due.into()).await;
        }
        window.acquire().await?.forget();
        let sent_ns = due(n).map_or_else(stats::now_ns, stats::ns_of);
        if let Some(i) = tally.slot(j, n) {
            tally.sent_ns[i].store(sent_ns, Ordering::Relaxed);
        }
        chat.send(&v1::Send {
            client_msg_id: n.to_string(),
            to: Some(to.clone()),
            body: stats::body(index(j, n), sent_ns, args.body_bytes).into(),
            kind: "text".into(),
            // Each send is written once, as the SDK's first attempt.
            first_attempt: true,
            ..Default::default()
        })
        .await?;
    }
    let acked = acking.await??;
    hb.abort();
    Ok(acked)
}

async fn heartbeat(conn: qim_proto::transport::Connection, interval: Duration) -> Result<()> {
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

/// A member: takes every delivery (inbox or group push, pulling what the
/// push missed) until the expected count from each sender has arrived.
async fn member(
    session: Session,
    group: &str,
    tally: Arc<Tally>,
    mut expect: watch::Receiver<Option<Vec<u64>>>,
    following: Arc<Semaphore>,
) -> Seen {
    let mut seen = Seen {
        latency: Some(stats::histogram()),
        ..Seen::default()
    };
    let done = member_into(&session, group, &tally, &mut expect, &mut seen, &following);
    if let Err(e) = done.await {
        seen.errors.push(format!("{e:#}"));
    }
    seen
}

/// One member's view of the senders' streams.
struct Order {
    next: Vec<u64>,
    latency: Histogram<u64>,
    delivered: u64,
}

impl Order {
    /// Takes one message to the application: in its sender's order, once.
    fn take(&mut self, message: &v1::Message, tally: &Tally) -> Result<()> {
        if message.kind != "text" {
            return Ok(());
        }
        let (index, sent_ns) = stats::parse_body(&message.body).context("short body")?;
        let (j, n) = ((index >> 32) as usize, index & 0xffff_ffff);
        let Some(next) = self.next.get_mut(j) else {
            bail!("message from unknown sender {j}");
        };
        if n != *next {
            bail!("sender {j}'s message {n} where {next} was due");
        }
        *next += 1;
        self.delivered += 1;
        let now = stats::now_ns();
        let _ = self.latency.record(now.saturating_sub(sent_ns) / 1_000);
        if let Some(i) = tally.slot(j, n) {
            tally.got[i].fetch_add(1, Ordering::Relaxed);
            tally.last_ns[i].fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }

    fn done(&self, expect: &Option<Vec<u64>>) -> bool {
        expect
            .as_ref()
            .is_some_and(|e| e.iter().zip(&self.next).all(|(e, n)| n >= e))
    }
}

async fn member_into(
    session: &Session,
    group: &str,
    tally: &Tally,
    expect: &mut watch::Receiver<Option<Vec<u64>>>,
    seen: &mut Seen,
    following: &Semaphore,
) -> Result<()> {
    let (mut deliveries, _acks) = take_streams(session).await?;
    let mut acks = session.open_uni(StreamKind::Ack).await?;
    let hb = tokio::spawn(heartbeat(
        session.conn.clone(),
        session.heartbeat_interval(),
    ));
    let senders = tally.got.len() / tally.messages as usize;
    let mut order = Order {
        next: vec![0; senders],
        latency: stats::histogram(),
        delivered: 0,
    };
    let mut inbox_next = session.welcome.inbox_head + 1;
    // The group log's next seq for this member (read diffusion), once the
    // first push names where the member starts.
    let mut group_next: Option<u64> = None;
    let result = async {
        loop {
            if order.done(&expect.borrow()) {
                return Ok(());
            }
            let first = tokio::select! {
                d = deliveries.recv() => d.context("delivery streams ended")?,
                changed = expect.changed() => { changed?; continue; }
            };
            let mut d = Some(first);
            let mut ack_up_to = None;
            while let Some(deliver) = d {
                if deliver.attempt > 0 {
                    seen.retransmits += 1;
                }
                if deliver.signal.is_some() {
                } else if deliver.group.is_empty() {
                    if deliver.seq == inbox_next {
                        if let Some(m) = &deliver.message {
                            order.take(m, tally)?;
                        }
                        inbox_next += 1;
                        ack_up_to = Some(deliver.seq);
                    } else if deliver.seq > inbox_next {
                        bail!("inbox gap: seq {} where {inbox_next} was due", deliver.seq);
                    }
                } else if deliver.group == group {
                    if group_next.is_none() {
                        following.add_permits(1);
                    }
                    let next = *group_next.get_or_insert(deliver.group_from + 1);
                    let upto = match &deliver.message {
                        Some(_) => deliver.seq.saturating_sub(1),
                        None => deliver.seq,
                    };
                    if upto >= next {
                        let got = pull(session, group, next - 1, upto, &mut order, tally).await?;
                        seen.pulls += got.0;
                        seen.pulled += got.1;
                        group_next = Some(upto + 1);
                    }
                    if let Some(m) = &deliver.message {
                        if deliver.seq == group_next.unwrap_or(0) {
                            order.take(m, tally)?;
                            group_next = Some(deliver.seq + 1);
                        } else {
                            seen.push_duplicates += 1;
                        }
                    }
                }
                d = deliveries.try_recv().ok();
            }
            seen.last = Some(Instant::now());
            if let Some(up_to_seq) = ack_up_to {
                acks.send(&v1::DeliveryAck {
                    up_to_seq,
                    seqs: Vec::new(),
                })
                .await?;
            }
        }
    }
    .await;
    hb.abort();
    seen.delivered = order.delivered;
    seen.latency = Some(order.latency);
    result
}

/// Pulls `(after, up_to]` of the group's log into `order`; returns
/// (requests, entries).
async fn pull(
    session: &Session,
    group: &str,
    mut after: u64,
    up_to: u64,
    order: &mut Order,
    tally: &Tally,
) -> Result<(u64, u64)> {
    let (mut requests, mut entries) = (0, 0);
    while after < up_to {
        let limit = u32::try_from(up_to - after).unwrap_or(u32::MAX).min(500);
        let kind = rpc(
            session,
            rpc_request::Kind::GroupSync(v1::GroupSyncRequest {
                group: group.to_owned(),
                after_seq: after,
                limit,
            }),
        )
        .await?;
        requests += 1;
        let rpc_response::Kind::GroupSync(sync) = kind else {
            bail!("group sync answered {kind:?}");
        };
        let before = after;
        for entry in sync.entries {
            if entry.seq <= after || entry.seq > up_to {
                continue;
            }
            if entry.seq != after + 1 {
                bail!("group log gap: seq {} after {after}", entry.seq);
            }
            if let Some(m) = &entry.message {
                order.take(m, tally)?;
            }
            entries += 1;
            after = entry.seq;
        }
        if after == before {
            bail!("group log holds nothing in ({after}, {up_to}]");
        }
    }
    Ok((requests, entries))
}
