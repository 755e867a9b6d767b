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

use std::sync::Arc;
use std::time::Duration;

use qim_proto::v1::{self, ErrorCode, rpc_response};
use qim_storage::ScheduleStore;
use qim_storage::model::new_msg_id;
use tracing::{debug, warn};

use crate::conversations::{Extras, op_error};
use crate::server::Ctx;

/// Delay before retrying after a store error in the scheduler.
const RETRY: Duration = Duration::from_secs(1);

/// How often a cluster node looks for due entries at least.
const CLUSTER_POLL: Duration = Duration::from_secs(1);

fn error(code: ErrorCode, message: impl Into<String>) -> rpc_response::Kind {
    rpc_response::Kind::Error(v1::RpcError {
        code: code as i32,
        message: message.into(),
    })
}

/// Answers a schedule request of `user` on `device`.
pub(crate) async fn schedule(
    ctx: &Ctx,
    user: &str,
    device: &str,
    request: v1::ScheduleRequest,
) -> rpc_response::Kind {
    let Some(store) = &ctx.schedules else {
        return error(
            ErrorCode::Unsupported,
            "this server's store has no scheduled messages",
        );
    };
    let Some(mut send) = request.send else {
        return error(ErrorCode::InvalidArgument, "no send to schedule");
    };
    let now = qim_proto::now_ms();
    let ahead = i64::try_from(ctx.config.im.max_schedule_ahead_ms).unwrap_or(i64::MAX);
    if request.deliver_at_ms > now.saturating_add(ahead) {
        return error(
            ErrorCode::InvalidArgument,
            "deliver_at_ms beyond im.max_schedule_ahead_ms",
        );
    }
    if !qim_proto::ids::is_valid_client_msg_id(&send.client_msg_id) {
        return error(
            ErrorCode::InvalidArgument,
            "client_msg_id must be 1-64 printable ASCII bytes",
        );
    }
    if send.body.len() > ctx.config.limits.max_body_bytes as usize {
        return error(
            ErrorCode::MessageTooLarge,
            "body exceeds limits.max_body_bytes",
        );
    }
    if send.kind.len() > qim_proto::ids::MAX_ID_LEN {
        return error(ErrorCode::InvalidArgument, "kind is longer than 64 bytes");
    }
    // Checked now; kept in the send for delivery.
    let extras = match Extras::take(&mut send, ctx) {
        Ok(extras) => extras,
        Err((code, message)) => return error(code, message),
    };
    extras.put_back(&mut send);
    let inboxes = match send.to.as_ref().and_then(|p| p.target.as_ref()) {
        Some(v1::peer::Target::User(to)) if qim_proto::ids::is_valid_id(to) => {
            if let Err((code, message)) = crate::contacts::check_direct(ctx, user, to).await {
                return error(code, message);
            }
            let mut inboxes = vec![to.clone()];
            if ctx.config.im.sync_sent && to != user {
                inboxes.push(user.to_owned());
            }
            inboxes
        }
        Some(v1::peer::Target::Group(g)) if qim_proto::ids::is_valid_id(g) => Vec::new(),
        _ => {
            return error(
                ErrorCode::InvalidRecipient,
                "recipient is not a valid user or group id",
            );
        }
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
    match store.schedule(entry).await {
        Ok(()) => {
            ctx.schedule_wake.notify_one();
            rpc_response::Kind::Schedule(reply)
        }
        Err(e) => {
            warn!(user, error = %e, "storing a scheduled send failed");
            error(ErrorCode::StoreUnavailable, e.to_string())
        }
    }
}

/// Answers a cancel request of `user`.
pub(crate) async fn cancel(
    ctx: &Ctx,
    user: &str,
    request: v1::CancelScheduleRequest,
) -> rpc_response::Kind {
    let Some(store) = &ctx.schedules else {
        return error(
            ErrorCode::Unsupported,
            "this server's store has no scheduled messages",
        );
    };
    if request.schedule_id.is_empty() || request.schedule_id.len() > 64 {
        return error(ErrorCode::InvalidArgument, "bad schedule id");
    }
    match store.cancel(user, &request.schedule_id).await {
        Ok(()) => rpc_response::Kind::Schedule(v1::ScheduleResponse {
            schedule_id: request.schedule_id,
            deliver_at_ms: 0,
        }),
        Err(e) => {
            let (code, message) = op_error(&e);
            error(code, message)
        }
    }
}

/// Posts scheduled sends when due, until the gateway drains.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let Some(store) = ctx.schedules.clone() else {
        return;
    };
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
            () = sleep_opt(wait) => {}
            _ = draining.wait_for(|d| *d) => return,
        }
    }
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
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
            match store.fire(&entry.id, qim_proto::now_ms()).await? {
                Some(Ok(posted)) => {
                    fired += 1;
                    debug!(id = %entry.id, late_ms = qim_proto::now_ms() - entry.deliver_at_ms, "scheduled send posted");
                    for copy in posted.copies {
                        match copy.inbox.strip_prefix('#') {
                            Some(group) => {
                                crate::cluster::deliver_group(ctx, group, Arc::new(copy.clone()))
                                    .await
                            }
                            None => crate::cluster::deliver(ctx, Arc::new(copy)).await,
                        }
                    }
                }
                Some(Err(refused)) => {
                    fired += 1;
                    warn!(id = %entry.id, sender = %entry.sender, error = %refused, "scheduled send refused at delivery time; dropped");
                }
                None => {}
            }
        }
    }
}
