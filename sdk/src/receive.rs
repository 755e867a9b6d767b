//! The receive path: deliveries into inbox order (dedup, gap pull, and the
//! skip of a gap the server keeps confirming empty, decided by the
//! sans-IO [`Inbox`]), read-diffusion groups' logs in per-group order,
//! and signals (typing, presence) for the app.
//!
//! Pulls go through the one rpc exchange ([`rpc::exchange`]) on the
//! session's connection.
//!
//! A read-diffusion group's messages are pushed with the group's seq
//! (`Deliver.group`); one [`Inbox`] per group orders them, gaps and nudged
//! ranges are pulled with `GroupSyncRequest`, and they join the same queue
//! as the inbox's messages with [`IncomingMessage::group_seq`] set (and
//! `seq` 0: they are not in the inbox). Cursors per group last as long as
//! the client. A pulled entry without a message is *hidden* (its sender is
//! someone this user blocked): it keeps the log's order and is not handed
//! to the app.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use qim_proto::io::FramedRecv;
use qim_proto::v1::{self, rpc_request, rpc_response};
use tracing::{debug, info, warn};

use crate::Error;
use crate::inbox::{GapCheck, Inbox};
use crate::message::{IncomingMessage, Signal};
use crate::rpc;
use crate::shared::{MAX_SIGNALS, Shared};
use crate::sync::lock;

/// Most entries asked for in one pull.
const PULL_LIMIT: u32 = 500;

/// Reads the delivery stream until the server finishes it (`Ok`), pulling
/// gaps as they appear. Stops reading while the app is behind: the
/// server's window fills and it waits, instead of the queue growing
/// without bound.
pub(crate) async fn read_deliveries(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
    mut recv: FramedRecv,
) -> Result<(), Error> {
    let capacity = shared.config.inbox_buffer.max(1);
    loop {
        loop {
            let shrank = shared.queue_shrank.notified();
            if lock(&shared.received).queue.len() < capacity {
                break;
            }
            shrank.await;
        }
        let Some(deliver) = recv.next::<v1::Deliver>().await? else {
            return Ok(());
        };
        shared.check_path(&conn);
        shared.traffic.notify_one();
        if let Some(signal) = deliver.signal {
            push_signal(&shared, signal);
            continue;
        }
        if !deliver.group.is_empty() {
            on_group_deliver(&shared, &conn, deliver).await?;
            continue;
        }
        if deliver.attempt > 0 {
            shared.retransmits.fetch_add(1, Ordering::Relaxed);
        }
        let message = incoming(&shared, deliver.seq, deliver.message.unwrap_or_default());
        let mut gap = accept(&shared, message);
        while let Some((after, up_to)) = gap {
            // Each pull may return less than asked (frame limit); go on
            // until the gap is closed or the server has nothing more.
            gap = pull_gap(&shared, &conn, after, up_to).await?;
        }
    }
}

/// A wire message of this user's as the app sees it.
fn incoming(shared: &Shared, seq: u64, message: v1::Message) -> IncomingMessage {
    IncomingMessage::from_wire(seq, message, &shared.user_id(), &shared.config.device_id)
}

/// Hands messages, already in order, to the app's queue.
fn push_ready(shared: &Shared, ready: Vec<IncomingMessage>) {
    if ready.is_empty() {
        return;
    }
    lock(&shared.received).queue.extend(ready);
    shared.queue_grew();
}

/// Orders one delivery into the queue; returns a gap to pull, if any.
fn accept(shared: &Shared, message: IncomingMessage) -> Option<(u64, u64)> {
    let mut received = lock(&shared.received);
    let accepted = received.inbox.accept(message);
    if accepted.duplicate {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    let grew = !accepted.ready.is_empty();
    received.queue.extend(accepted.ready);
    drop(received);
    if grew {
        shared.queue_grew();
    }
    accepted.gap
}

/// Tells the inbox the server confirmed seqs `(after, empty_up_to]` empty
/// (`settled`: gone for good). Returns the next gap to pull when the gap
/// was skipped; wakes the gap watcher when its clock started.
fn confirm_empty(
    shared: &Shared,
    after: u64,
    empty_up_to: u64,
    settled: bool,
) -> Option<(u64, u64)> {
    let now = tokio::time::Instant::now().into_std();
    let mut received = lock(&shared.received);
    match received
        .inbox
        .confirm_empty(after, empty_up_to, settled, now)
    {
        GapCheck::Waiting { started } => {
            drop(received);
            if started {
                shared.gap_confirmed.notify_one();
            }
            None
        }
        GapCheck::Skipped {
            ready,
            next_gap,
            settled,
        } => {
            if settled {
                info!(
                    after,
                    up_to = empty_up_to,
                    "skipping inbox seqs the server says are gone (expired)"
                );
            } else {
                warn!(
                    after,
                    up_to = empty_up_to,
                    "skipping inbox seqs the server confirms empty"
                );
            }
            let grew = !ready.is_empty();
            received.queue.extend(ready);
            drop(received);
            if grew {
                shared.queue_grew();
            }
            next_gap
        }
    }
}

/// Pulls a gap confirmed empty again every second (the server may say it
/// settled) and once it has been empty for `gap_skip_after`, so a gap is
/// skipped even when nothing else arrives.
pub(crate) async fn watch_gaps(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
) -> Result<Infallible, Error> {
    loop {
        let confirmed = shared.gap_confirmed.notified();
        let due = lock(&shared.received).inbox.next_pull();
        match due {
            Some(due) => tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await,
            None => {
                confirmed.await;
                continue;
            }
        }
        let mut gap = lock(&shared.received).inbox.gap();
        while let Some((after, up_to)) = gap {
            gap = pull_gap(&shared, &conn, after, up_to).await?;
        }
    }
}

/// The most entries worth asking for to fill `(after, up_to]`.
fn pull_limit(after: u64, up_to: u64) -> u32 {
    u32::try_from(up_to - after)
        .unwrap_or(u32::MAX)
        .min(PULL_LIMIT)
}

/// Fetches missing seqs `(after, up_to]`; returns the gap still open
/// afterwards, if the pull made progress (or skipped the gap).
async fn pull_gap(
    shared: &Shared,
    conn: &qim_proto::transport::Connection,
    after: u64,
    up_to: u64,
) -> Result<Option<(u64, u64)>, Error> {
    debug!(after, up_to, "pulling gap");
    let request = rpc_request::Kind::Sync(v1::SyncRequest {
        after_seq: after,
        limit: pull_limit(after, up_to),
    });
    let rpc_response::Kind::Sync(sync) = rpc::exchange(conn, shared.max_frame(), request).await?
    else {
        return Err(rpc::unexpected());
    };
    // The server has nothing in (after, first returned - 1], or nothing at
    // all after `after`: the gap is empty for now.
    let empty_up_to = match sync.entries.first() {
        Some(first) if first.seq > after + 1 => Some((first.seq - 1).min(up_to)),
        Some(_) => None,
        None => Some(up_to),
    };
    if let Some(empty_up_to) = empty_up_to {
        // Settled seqs are gone for good (expired, or never written): no
        // point waiting for them to fill.
        let settled = sync.settled_through >= empty_up_to;
        if let Some(gap) = confirm_empty(shared, after, empty_up_to, settled) {
            return Ok(Some(gap));
        }
    }
    let mut gap = None;
    let progressed = !sync.entries.is_empty();
    for entry in sync.entries {
        let message = incoming(shared, entry.seq, entry.message.unwrap_or_default());
        gap = accept(shared, message);
    }
    Ok(if progressed { gap } else { None })
}

/// Handles a `Deliver` of a read-diffusion group: a pushed message or a
/// nudge. Pulls whatever is missing before returning.
async fn on_group_deliver(
    shared: &Shared,
    conn: &qim_proto::transport::Connection,
    deliver: v1::Deliver,
) -> Result<(), Error> {
    let group = deliver.group;
    let from = deliver.group_from;
    let mut gap = match deliver.message {
        None => {
            let released = lock(&shared.groups)
                .entry(group.clone())
                .or_insert_with(|| group_log(shared, from))
                .released();
            (deliver.seq > released).then_some((released, deliver.seq))
        }
        Some(m) => {
            let message = incoming(shared, deliver.seq, m);
            accept_group(shared, &group, from, message)
        }
    };
    while let Some((after, up_to)) = gap {
        gap = match pull_group(shared, conn, &group, after, up_to).await {
            Ok(gap) => gap,
            // Refused (no longer a member): stop following; the session goes on.
            Err(e @ Error::Rejected { .. }) => {
                debug!(group, error = %e, "group pull refused");
                None
            }
            Err(e) => return Err(e),
        };
    }
    Ok(())
}

/// The order of a group's log this client starts following at `from`.
fn group_log(shared: &Shared, from: u64) -> Inbox {
    Inbox::new(from, shared.config.gap_skip_after)
}

fn accept_group(
    shared: &Shared,
    group: &str,
    from: u64,
    message: IncomingMessage,
) -> Option<(u64, u64)> {
    let accepted = lock(&shared.groups)
        .entry(group.to_owned())
        .or_insert_with(|| group_log(shared, from))
        .accept(message);
    let ready = accepted
        .ready
        .into_iter()
        // Hidden entries (no message: a blocked sender's) only hold their seq.
        .filter(|m| !m.msg_id.is_empty())
        .map(|mut m| {
            m.group_seq = m.seq;
            m.seq = 0;
            m
        })
        .collect();
    push_ready(shared, ready);
    accepted.gap
}

/// Pulls `(after, up_to]` of a group's log; returns what is still missing
/// if the pull made progress.
async fn pull_group(
    shared: &Shared,
    conn: &qim_proto::transport::Connection,
    group: &str,
    after: u64,
    up_to: u64,
) -> Result<Option<(u64, u64)>, Error> {
    debug!(group, after, up_to, "pulling group log");
    let request = rpc_request::Kind::GroupSync(v1::GroupSyncRequest {
        group: group.to_owned(),
        after_seq: after,
        limit: pull_limit(after, up_to),
    });
    let rpc_response::Kind::GroupSync(sync) =
        rpc::exchange(conn, shared.max_frame(), request).await?
    else {
        return Err(rpc::unexpected());
    };
    let mut gap = None;
    let mut last = after;
    for entry in sync.entries {
        last = last.max(entry.seq);
        let message = incoming(shared, entry.seq, entry.message.unwrap_or_default());
        gap = accept_group(shared, group, after, message);
    }
    if last == after {
        return Ok(None);
    }
    // The nudged range may reach beyond what this page held.
    let released = lock(&shared.groups)
        .get(group)
        .map_or(last, Inbox::released);
    Ok(gap.or((released < up_to).then_some((released, up_to))))
}

/// Queues a signal for the app, dropping the oldest when full.
fn push_signal(shared: &Shared, signal: v1::Signal) {
    let Some(signal) = Signal::from_wire(signal) else {
        return;
    };
    let mut signals = lock(&shared.signals);
    if signals.len() >= MAX_SIGNALS {
        signals.pop_front();
    }
    signals.push_back(signal);
    drop(signals);
    shared.signal_arrived.notify_one();
}
