//! Presence and typing: online/offline aggregated over a user's devices,
//! last seen, subscriptions with pushed changes, online-time records, and
//! typing indicators. None of it is stored as messages: changes are
//! [`v1::Signal`]s pushed to online sessions only (never resent).
//!
//! # Single node and cluster
//! On a single node, live status comes from the session registry
//! ([`GroupPush`](crate::groups::GroupPush)): a user is online while they
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
//! node pushes it to the watchers it holds. Typing goes the same way. A
//! query ([`status`]) reads the routes. A node that dies takes its routes
//! with it one route TTL later: queries then say offline, but no push
//! announces it (nobody saw the transition happen).
//!
//! Session records (start, end) go to the
//! [`PresenceStore`](qim_storage::PresenceStore) for last seen and
//! statistics.
//!
//! # Invariants
//! - A change is pushed only on a transition of the aggregate (first device
//!   on, last device off), so a second device or a reconnect of one of
//!   several devices causes no flapping.
//! - Only friends see a user's presence (and typing in one-to-one chats
//!   needs the recipient not to have blocked the sender).

use std::sync::Arc;

use qim_proto::v1::{self, ErrorCode, rpc_response};
use tracing::warn;

use crate::groups::{Push, lock};
use crate::server::Ctx;

/// Users one request (and one session's subscriptions) may name.
const MAX_WATCHED: usize = 1000;

fn error(code: ErrorCode, message: impl Into<String>) -> rpc_response::Kind {
    rpc_response::Kind::Error(v1::RpcError {
        code: code as i32,
        message: message.into(),
    })
}

/// A session started; `first` when the user has no other session on this
/// node (in a cluster the transition comes from [`transition`] instead).
pub(crate) fn session_started(
    ctx: &Arc<Ctx>,
    user: &str,
    device: &str,
    start_ms: i64,
    first: bool,
) {
    if first && ctx.cluster.is_none() {
        notify_local(ctx, &change(user, true, 0));
    }
    record(ctx, user, device, start_ms, 0);
}

/// A session ended; `last` when it was the user's last.
pub(crate) fn session_ended(
    ctx: &Arc<Ctx>,
    user: &str,
    device: &str,
    start_ms: i64,
    end_ms: i64,
    last: bool,
) {
    if last && ctx.cluster.is_none() {
        notify_local(ctx, &change(user, false, end_ms));
    }
    record(ctx, user, device, start_ms, end_ms);
}

/// A cluster-wide transition of `user` (first route written, last route
/// removed) seen by this node: pushed to the watchers here and announced
/// to the other nodes.
pub(crate) async fn transition(ctx: &Ctx, user: &str, online: bool, at_ms: i64) {
    let status = change(user, online, if online { 0 } else { at_ms });
    notify_local(ctx, &status);
    if let Some(cluster) = &ctx.cluster {
        cluster
            .signal(&qim_storage::redis::signals::Signal::Presence(status))
            .await;
    }
}

fn change(user: &str, online: bool, last_seen_ms: i64) -> v1::PresenceStatus {
    v1::PresenceStatus {
        user: user.to_owned(),
        online,
        last_seen_ms,
    }
}

fn record(ctx: &Arc<Ctx>, user: &str, device: &str, start_ms: i64, end_ms: i64) {
    let Some(store) = ctx.presence.clone() else {
        return;
    };
    let (user, device) = (user.to_owned(), device.to_owned());
    // Statistics: written in the background, never on a session's path.
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            if let Err(e) = store.record_session(&user, &device, start_ms, end_ms).await {
                warn!(user, error = %e, "recording a session failed");
            }
        });
    }
}

/// Pushes a presence change to the sessions on this node that watch the
/// user.
pub(crate) fn notify_local(ctx: &Ctx, status: &v1::PresenceStatus) {
    let watchers: Vec<Arc<crate::groups::Sub>> = lock(&ctx.group_push.inner)
        .watchers
        .get(&status.user)
        .map(|w| w.values().cloned().collect())
        .unwrap_or_default();
    let signal = v1::Signal {
        kind: Some(v1::signal::Kind::Presence(status.clone())),
    };
    for w in watchers {
        w.offer(Push::Signal(signal.clone()));
    }
}

/// Offers `signal` to every session on this node of each of `users`.
pub(crate) fn offer_to_users(ctx: &Ctx, users: &[String], signal: &v1::Signal) {
    let subs: Vec<Arc<crate::groups::Sub>> = {
        let r = lock(&ctx.group_push.inner);
        users
            .iter()
            .filter_map(|u| r.sessions.get(u))
            .flat_map(|s| s.values().cloned())
            .collect()
    };
    for sub in subs {
        sub.offer(Push::Signal(signal.clone()));
    }
}

/// A user's presence now.
pub(crate) async fn status(ctx: &Ctx, user: &str) -> v1::PresenceStatus {
    let (online, seen) = match &ctx.cluster {
        Some(cluster) => match cluster.presence(user).await {
            Ok(p) => (p.online(), p.last_seen_ms.unwrap_or(0)),
            Err(e) => {
                warn!(user, error = %e, "reading presence from the cluster failed");
                (false, 0)
            }
        },
        None => (ctx.group_push.online(user), 0),
    };
    let last_seen_ms = match (&ctx.presence, online) {
        (Some(store), false) => store.last_seen(user).await.unwrap_or(0).max(seen),
        (None, false) => seen,
        _ => 0,
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
    match &ctx.contacts {
        Some(contacts) => contacts
            .relation(viewer, user)
            .await
            .is_ok_and(|r| r.friends && !r.blocked),
        None => false,
    }
}

/// Answers a presence request of `viewer` (session `session_id`).
pub(crate) async fn presence(
    ctx: &Ctx,
    viewer: &str,
    session_id: u64,
    request: v1::PresenceRequest,
) -> rpc_response::Kind {
    if request.users.len() > MAX_WATCHED
        || !request.users.iter().all(|u| qim_proto::ids::is_valid_id(u))
    {
        return error(ErrorCode::InvalidArgument, "at most 1000 valid user ids");
    }
    let mut out = Vec::with_capacity(request.users.len());
    for user in &request.users {
        if !may_see(ctx, viewer, user).await {
            return error(
                ErrorCode::PermissionDenied,
                format!("{user} is not a friend"),
            );
        }
    }
    {
        let mut r = lock(&ctx.group_push.inner);
        let sub = r
            .sessions
            .get(viewer)
            .and_then(|s| s.get(&session_id))
            .cloned();
        for user in &request.users {
            if request.unsubscribe {
                if let Some(w) = r.watchers.get_mut(user) {
                    w.remove(&session_id);
                }
            } else if request.subscribe {
                if let Some(sub) = &sub {
                    r.watchers
                        .entry(user.clone())
                        .or_default()
                        .insert(session_id, Arc::clone(sub));
                }
            }
        }
    }
    for user in &request.users {
        out.push(status(ctx, user).await);
    }
    rpc_response::Kind::Presence(v1::PresenceResponse { users: out })
}

/// Answers an online-time request: the requester's own sessions.
pub(crate) async fn online_time(
    ctx: &Ctx,
    user: &str,
    request: v1::OnlineTimeRequest,
) -> rpc_response::Kind {
    let Some(store) = &ctx.presence else {
        return error(
            ErrorCode::Unsupported,
            "this server's store keeps no session records",
        );
    };
    match store.sessions(user, request.from_ms, request.to_ms).await {
        Ok(spans) => rpc_response::Kind::OnlineTime(v1::OnlineTimeResponse { spans }),
        Err(e) => error(ErrorCode::StoreUnavailable, e.to_string()),
    }
}

/// Relays a typing indicator of `from` to the online sessions of the
/// recipient (or of the group's members). Never stored.
pub(crate) async fn typing(
    ctx: &Ctx,
    from: &str,
    request: v1::TypingRequest,
) -> rpc_response::Kind {
    let (targets, conversation): (Vec<String>, v1::Peer) =
        match request.to.as_ref().and_then(|p| p.target.as_ref()) {
            Some(v1::peer::Target::User(to)) if qim_proto::ids::is_valid_id(to) => {
                if let Err((code, message)) = crate::contacts::check_direct(ctx, from, to).await {
                    return error(code, message);
                }
                (vec![to.clone()], qim_storage::conversations::user(from))
            }
            Some(v1::peer::Target::Group(g)) if qim_proto::ids::is_valid_id(g) => {
                let Some(groups) = &ctx.groups else {
                    return error(ErrorCode::Unsupported, "no groups");
                };
                match groups.member(g, from).await {
                    Ok(Some(_)) => {}
                    _ => return error(ErrorCode::NotAMember, "not a member of the group"),
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
            _ => return error(ErrorCode::InvalidArgument, "typing needs a user or group"),
        };
    let signal = v1::Signal {
        kind: Some(v1::signal::Kind::Typing(v1::Typing {
            conversation: Some(conversation),
            from_user: from.to_owned(),
            typing: request.typing,
        })),
    };
    offer_to_users(ctx, &targets, &signal);
    if let Some(cluster) = &ctx.cluster {
        cluster
            .signal(&qim_storage::redis::signals::Signal::ToUsers {
                users: targets,
                signal,
            })
            .await;
    }
    rpc_response::Kind::Op(v1::OpResponse::default())
}
