//! Presence and typing: online/offline aggregated over a user's devices,
//! last seen, subscriptions with pushed changes, online-time records, and
//! typing indicators. None of it is stored as messages: changes are
//! [`v1::Signal`]s pushed to online sessions only (never resent).
//!
//! # Single node and cluster
//! On a single node, live status comes from the push registry
//! ([`Registry`](crate::push::Registry)): a user is online while they
//! have a session here, and the first session on / last session off is
//! the transition that is pushed.
//!
//! In a cluster, the transitions come from the routes in Redis: the
//! script that writes a session's route tells whether the user had no live
//! route anywhere (came online), the one that removes it whether none is
//! left (went offline), each decided atomically, so of two devices logging
//! in at once on two nodes exactly one announces it. The node that sees a
//! transition pushes it to its own watchers and publishes it on the
//! cluster's signal channel ([`qim_storage::redis::signals`]); every other
//! node pushes it to the watchers it holds (both through the
//! [`Fanout`](crate::fanout::Fanout)). Typing goes the same way. A query
//! reads the routes. A node that dies takes its routes
//! with it one route TTL later: queries then say offline, but no push
//! announces it (nobody saw the transition happen).
//!
//! The session tells this module when it starts and ends
//! ([`session_started`], [`session_ended`]); session records (start, end)
//! go to the [`PresenceStore`](qim_storage::PresenceStore) for last seen
//! and statistics.
//!
//! # Invariants
//! - A change is pushed only on a transition of the aggregate (first device
//!   on, last device off), so a second device or a reconnect of one of
//!   several devices causes no flapping.
//! - Only friends see a user's presence (and typing in one-to-one chats
//!   needs the recipient not to have blocked the sender). A subscription
//!   ends when the friendship does or a block is set, on every node
//!   ([`Fanout::unwatch`](crate::fanout::Fanout::unwatch)); a subscription
//!   is registered before the friendship is checked, so one racing an
//!   unfriend or block is either removed by it or refused.

use qim_proto::v1::{self, ErrorCode, rpc_response};
use tracing::warn;

use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply};

/// Users one request (and one session's subscriptions) may name.
const MAX_WATCHED: usize = 1000;

/// A session started; `first` when the user has no other session on this
/// node. In a cluster the transition comes from the routes in Redis
/// instead: `came_online` says whether this session's route was the
/// user's first anywhere.
pub(crate) async fn session_started(
    ctx: &Ctx,
    user: &str,
    device: &str,
    start_ms: i64,
    first: bool,
    came_online: bool,
) {
    let announce = match ctx.cluster {
        None => first,
        Some(_) => came_online,
    };
    if announce {
        ctx.fanout.presence(change(user, true, 0)).await;
        ctx.webhooks.emit(
            "user_online",
            || serde_json::json!({ "user": user, "device": device, "time_ms": start_ms }),
        );
    }
    record(ctx, user, device, start_ms, 0);
}

/// A session ended; `last` when it was the user's last on this node,
/// `went_offline` (in a cluster) when its route was the user's last
/// anywhere.
pub(crate) async fn session_ended(
    ctx: &Ctx,
    user: &str,
    device: &str,
    start_ms: i64,
    last: bool,
    went_offline: bool,
) {
    let end_ms = qim_proto::now_ms();
    let announce = match ctx.cluster {
        None => last,
        Some(_) => went_offline,
    };
    if announce {
        ctx.fanout.presence(change(user, false, end_ms)).await;
        ctx.webhooks.emit("user_offline", || {
            serde_json::json!({
                "user": user,
                "device": device,
                "time_ms": end_ms,
                "session_ms": end_ms - start_ms,
            })
        });
    }
    record(ctx, user, device, start_ms, end_ms);
}

fn change(user: &str, online: bool, last_seen_ms: i64) -> v1::PresenceStatus {
    v1::PresenceStatus {
        user: user.to_owned(),
        online,
        last_seen_ms,
    }
}

fn record(ctx: &Ctx, user: &str, device: &str, start_ms: i64, end_ms: i64) {
    let store = ctx.stores.presence.clone();
    let (user, device) = (user.to_owned(), device.to_owned());
    // Statistics: written in the background, never on a session's path.
    tokio::spawn(async move {
        if let Err(e) = store.record_session(&user, &device, start_ms, end_ms).await {
            warn!(user, error = %e, "recording a session failed");
        }
    });
}

/// A user's presence now.
async fn status(ctx: &Ctx, user: &str) -> v1::PresenceStatus {
    let (online, seen) = match &ctx.cluster {
        Some(cluster) => match cluster.presence(user).await {
            Ok(p) => (p.online(), p.last_seen_ms.unwrap_or(0)),
            Err(e) => {
                warn!(user, error = %e, "reading presence from the cluster failed");
                (false, 0)
            }
        },
        None => (ctx.push.online(user), 0),
    };
    let last_seen_ms = if online {
        0
    } else {
        ctx.stores
            .presence
            .last_seen(user)
            .await
            .unwrap_or(0)
            .max(seen)
    };
    v1::PresenceStatus {
        user: user.to_owned(),
        online,
        last_seen_ms,
    }
}

async fn may_see(ctx: &Ctx, viewer: &str, user: &str) -> bool {
    if viewer == user {
        return true;
    }
    ctx.stores
        .contacts
        .relation(viewer, user)
        .await
        .is_ok_and(|r| r.friends && !r.blocked)
}

/// Answers a presence request of `viewer` (session `session_id`).
pub(crate) async fn presence(
    ctx: &Ctx,
    viewer: &str,
    session_id: u64,
    request: v1::PresenceRequest,
) -> Reply {
    if request.users.len() > MAX_WATCHED
        || !request.users.iter().all(|u| qim_proto::ids::is_valid_id(u))
    {
        return Err(Refusal::invalid("at most 1000 valid user ids"));
    }
    if request.unsubscribe {
        ctx.push.watch(viewer, session_id, &request.users, false);
    } else if request.subscribe {
        // Before the check: an unfriend or block racing this request
        // either removes the watch or is seen by the check.
        ctx.push.watch(viewer, session_id, &request.users, true);
    }
    for user in &request.users {
        if !may_see(ctx, viewer, user).await {
            if request.subscribe && !request.unsubscribe {
                ctx.push.watch(viewer, session_id, &request.users, false);
            }
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("{user} is not a friend"),
            ));
        }
    }
    let mut out = Vec::with_capacity(request.users.len());
    for user in &request.users {
        out.push(status(ctx, user).await);
    }
    Ok(rpc_response::Kind::Presence(v1::PresenceResponse {
        users: out,
    }))
}

/// Answers an online-time request: the requester's own sessions.
pub(crate) async fn online_time(ctx: &Ctx, user: &str, request: v1::OnlineTimeRequest) -> Reply {
    let spans = ctx
        .stores
        .presence
        .sessions(user, request.from_ms, request.to_ms)
        .await?;
    Ok(rpc_response::Kind::OnlineTime(v1::OnlineTimeResponse {
        spans,
    }))
}

/// Relays a typing indicator of `from` to the online sessions of the
/// recipient (or of the group's members). Never stored.
pub(crate) async fn typing(ctx: &Ctx, from: &str, request: v1::TypingRequest) -> Reply {
    let (targets, conversation): (Vec<String>, v1::Peer) =
        match request.to.as_ref().and_then(|p| p.target.as_ref()) {
            Some(v1::peer::Target::User(to)) if qim_proto::ids::is_valid_id(to) => {
                crate::policy::check_direct(ctx, from, to).await?;
                (vec![to.clone()], qim_storage::conversations::user(from))
            }
            Some(v1::peer::Target::Group(g)) if qim_proto::ids::is_valid_id(g) => {
                let groups = &ctx.stores.groups;
                match groups.member(g, from).await {
                    Ok(Some(_)) => {}
                    _ => {
                        return Err(Refusal::new(
                            ErrorCode::NotAMember,
                            "not a member of the group",
                        ));
                    }
                }
                let members = groups.members(g, "", MAX_WATCHED).await.unwrap_or_default();
                (
                    members
                        .into_iter()
                        .map(|m| m.user)
                        .filter(|u| u != from)
                        .collect(),
                    qim_storage::conversations::group(g),
                )
            }
            _ => return Err(Refusal::invalid("typing needs a user or group")),
        };
    let signal = v1::Signal {
        kind: Some(v1::signal::Kind::Typing(v1::Typing {
            conversation: Some(conversation),
            from_user: from.to_owned(),
            typing: request.typing,
        })),
    };
    ctx.fanout.signal_users(targets, signal).await;
    Ok(rpc_response::Kind::Op(v1::OpResponse::default()))
}
