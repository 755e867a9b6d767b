//! Scheduled messages at the gateway: the schedule and cancel requests, and
//! the task that posts each entry when it is due.
//!
//! # Invariants
//! - An entry is acknowledged (`ScheduleResponse`) only once it is durable.
//! - The task posts due entries through [`ScheduleStore::fire`], which posts
//!   and removes an entry in one write, so after a crash or a restart every
//!   pending entry is posted once: overdue ones right at start-up, the rest
//!   at their time (never before it).
//! - A cancel that succeeded means the message is never delivered.
//! - Every rule a live send is checked against is checked again when the
//!   entry falls due ([`verdict`]: the message checks, blocks and
//!   `im.direct_policy`; the store's post checks group membership and
//!   mutes and keeps copies out of the inboxes of members who blocked the
//!   sender). A refused entry delivers nothing; its sender gets a
//!   `ScheduleRefused` inbox event with the code a live send would get.
//! - A user has at most `quotas.pending_schedules` entries waiting
//!   (`QUOTA_EXCEEDED` when scheduling one more).
//! - A firing entry is charged to its sender's quotas like a send: its
//!   copies are taken from the sender's bucket (into debt if need be: a due
//!   message is not postponed) and its bytes from the day's stored bytes;
//!   past that limit it is refused like any other rule (`ScheduleRefused`).

use std::sync::Arc;
use std::time::Duration;

use qim_proto::v1::{self, rpc_response};
use qim_storage::ScheduleStore;
use qim_storage::model::new_msg_id;
use qim_storage::schedule::{Fired, Verdict};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::ctx::Ctx;
use crate::deadline::sleep_until_opt;
use crate::post::{Extras, Target, check_send, copies, direct_inboxes};
use crate::quota::Cost;
use crate::reply::{Refusal, Reply, explain};

/// Delay before retrying after a store error in the scheduler.
const RETRY: Duration = Duration::from_secs(1);

/// How often a cluster node looks for due entries at least.
const CLUSTER_POLL: Duration = Duration::from_secs(1);

/// Answers a schedule request of `user` on `device`.
pub(crate) async fn schedule(
    ctx: &Ctx,
    user: &str,
    device: &str,
    request: v1::ScheduleRequest,
) -> Reply {
    let Some(mut send) = request.send else {
        return Err(Refusal::invalid("no send to schedule"));
    };
    let now = qim_proto::now_ms();
    let ahead = i64::try_from(ctx.config.im.max_schedule_ahead_ms).unwrap_or(i64::MAX);
    if request.deliver_at_ms > now.saturating_add(ahead) {
        return Err(Refusal::invalid(
            "deliver_at_ms beyond im.max_schedule_ahead_ms",
        ));
    }
    if !send.attachments.is_empty() {
        return Err(Refusal::invalid("scheduled sends carry no attachments"));
    }
    // Checked now; kept in the send for delivery.
    let extras = Extras::take(&mut send, ctx)?;
    let target = check_send(ctx, &send);
    extras.put_back(&mut send);
    let inboxes = match target? {
        Target::User(to) => {
            crate::policy::check_direct(ctx, user, &to).await?;
            direct_inboxes(ctx, user, &to)
        }
        Target::Group => Vec::new(),
    };
    let entry = v1::ScheduledSend {
        id: new_msg_id(now),
        deliver_at_ms: request.deliver_at_ms,
        sender: user.to_owned(),
        sender_device: device.to_owned(),
        send: Some(send),
        inboxes,
    };
    let reply = v1::ScheduleResponse {
        schedule_id: entry.id.clone(),
        deliver_at_ms: entry.deliver_at_ms,
    };
    ctx.stores
        .schedules
        .schedule(entry, ctx.config.quotas.pending_schedules as usize)
        .await
        .inspect_err(|e| debug!(user, error = %e, "scheduling refused"))?;
    ctx.schedule_wake.notify_one();
    Ok(rpc_response::Kind::Schedule(reply))
}

/// Answers a cancel request of `user`.
pub(crate) async fn cancel(ctx: &Ctx, user: &str, request: v1::CancelScheduleRequest) -> Reply {
    if request.schedule_id.is_empty() || request.schedule_id.len() > 64 {
        return Err(Refusal::invalid("bad schedule id"));
    }
    ctx.stores
        .schedules
        .cancel(user, &request.schedule_id)
        .await?;
    Ok(rpc_response::Kind::Schedule(v1::ScheduleResponse {
        schedule_id: request.schedule_id,
        deliver_at_ms: 0,
    }))
}

/// Posts scheduled sends when due, until the gateway drains.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let store = Arc::clone(&ctx.stores.schedules);
    let mut draining = ctx.draining.subscribe();
    loop {
        let woken = ctx.schedule_wake.notified();
        let wait = match fire_due(&ctx, store.as_ref()).await {
            Ok(fired) => match store.next_due().await {
                Ok(Some(at)) => {
                    let ms = at.saturating_sub(qim_proto::now_ms()).max(0);
                    if ms == 0 && fired == 0 {
                        // Due but not ours to fire now (another node is
                        // posting it, or its claim has not gone stale yet).
                        Some(RETRY)
                    } else {
                        Some(Duration::from_millis(ms as u64))
                    }
                }
                Ok(None) => None,
                Err(e) => {
                    warn!(error = %e, "reading the next scheduled send failed");
                    Some(RETRY)
                }
            },
            Err(e) => {
                warn!(error = %e, "posting scheduled sends failed; retrying");
                Some(RETRY)
            }
        };
        // In a cluster, entries scheduled through other nodes wake nobody
        // here: look at least every CLUSTER_POLL.
        let wait = match (&ctx.cluster, wait) {
            (Some(_), Some(w)) => Some(w.min(CLUSTER_POLL)),
            (Some(_), None) => Some(CLUSTER_POLL),
            (None, w) => w,
        };
        tokio::select! {
            () = woken => {}
            () = sleep_until_opt(wait.map(|w| Instant::now() + w)) => {}
            _ = draining.wait_for(|d| *d) => return,
        }
    }
}

/// Charges a due entry's copies and bytes to its sender, as it fires.
async fn charge(ctx: &Ctx, entry: &v1::ScheduledSend) -> Result<(), Refusal> {
    let send = entry.send.as_ref();
    let to = send.and_then(|s| s.to.clone());
    let cost = Cost {
        copies: copies(ctx, &to, &entry.inboxes).await,
        body_bytes: send.map_or(0, |s| s.body.len() as u64),
    };
    ctx.quotas.charge_fired(&entry.sender, cost).await
}

/// Fires every due entry; returns how many this node posted or dropped.
async fn fire_due(ctx: &Ctx, store: &dyn ScheduleStore) -> Result<usize, qim_storage::StoreError> {
    let mut fired = 0;
    loop {
        let now = qim_proto::now_ms();
        let due = store.due(now).await?;
        if due.is_empty() {
            return Ok(fired);
        }
        for entry in due {
            let Some(mut verdict) = verdict(ctx, &entry).await else {
                // The checks could not be made now (the store failed):
                // the entry waits for the next round.
                return Err(qim_storage::StoreError::Unavailable(
                    "checking a due scheduled send failed".into(),
                ));
            };
            if matches!(verdict, Verdict::Post(_))
                && let Err(refused) = charge(ctx, &entry).await
            {
                if refused.code.is_retryable() {
                    // The store could not count it: fire it later.
                    return Err(qim_storage::StoreError::Unavailable(
                        "charging a due scheduled send failed".into(),
                    ));
                }
                verdict = Verdict::Refuse {
                    code: refused.code,
                    message: refused.message,
                };
            }
            match store.fire(&entry.id, qim_proto::now_ms(), verdict).await? {
                Some(Fired::Posted(posted)) => {
                    fired += 1;
                    debug!(id = %entry.id, late_ms = qim_proto::now_ms() - entry.deliver_at_ms, "scheduled send posted");
                    ctx.fanout.deliver_all(posted.copies).await;
                }
                Some(Fired::Refused(event)) => {
                    fired += 1;
                    info!(id = %entry.id, sender = %entry.sender, "scheduled send refused at delivery time; the sender is told");
                    ctx.fanout.deliver(Arc::new(*event)).await;
                }
                None => {}
            }
        }
    }
}

/// What the rules say about a due entry now, as for a live send: post it
/// (the store's post adds the group checks), or refuse it. `None` when a
/// check failed for a reason that may pass later (a store error).
async fn verdict(ctx: &Ctx, entry: &v1::ScheduledSend) -> Option<Verdict> {
    let refuse = |refusal: Refusal| {
        if refusal.code.is_retryable() {
            None
        } else {
            Some(Verdict::Refuse {
                code: refusal.code,
                message: refusal.message,
            })
        }
    };
    let Some(mut send) = entry.send.clone() else {
        return refuse(Refusal::invalid("no send to deliver"));
    };
    if let Err(refusal) = Extras::take(&mut send, ctx) {
        return refuse(refusal);
    }
    match check_send(ctx, &send) {
        Err(refusal) => refuse(refusal),
        Ok(Target::User(to)) => match crate::policy::check_direct(ctx, &entry.sender, &to).await {
            Err(refusal) => refuse(refusal),
            Ok(()) => Some(Verdict::Post(explain)),
        },
        Ok(Target::Group) => Some(Verdict::Post(explain)),
    }
}
