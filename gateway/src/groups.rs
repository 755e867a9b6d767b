//! Groups at the gateway: the rpc requests (create, change, members, pull a
//! read-diffusion group's log) and the push of read-diffusion group logs to
//! online members.
//!
//! # Push and pull
//! A write-diffusion group's messages are ordinary inbox copies: they take
//! the inbox delivery path with its acks and retransmits. A read-diffusion
//! group's messages are stored once in the group's log; [`GroupPush`] hands
//! each one to every online member's session, which writes it on a server
//! uni stream of its own (kind Delivery, `Deliver.group` set, `seq` the
//! group's seq). The push is best effort: each session has a bounded queue
//! ([`PUSH_QUEUE`]); when it is full the message is dropped for that session
//! and a *nudge* ("the group's log is at seq N") is sent instead once the
//! queue has room, so a hot group costs a slow member one small frame, and
//! the SDK pulls the range with `GroupSyncRequest`. Every push carries the
//! member's first readable seq, so a client always knows where to start.
//!
//! # Invariants
//! - A session is subscribed to a group before the group's head is read for
//!   its first nudge, so every message is either pushed or at most the head
//!   the nudge names (and pulled): none is missed.
//! - Removing a member (remove, leave, dissolve) unsubscribes their sessions
//!   in the same request, before it answers; pulls check membership.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use qim_proto::io::FramedSend;
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, group_request, rpc_response};
use qim_storage::conversations::group_log;
use qim_storage::groups::GroupOp;
use qim_storage::redis::signals::{FollowChange, Signal};
use qim_storage::{GroupStore, StoredMessage};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, warn};

use crate::conversations::op_error;
use crate::server::Ctx;

/// Pushes queued per session before the session falls back to nudges.
pub(crate) const PUSH_QUEUE: usize = 256;

/// Members a create or invite may name at once.
const MAX_USERS_PER_REQUEST: usize = 5_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One frame for a session's push stream.
pub(crate) enum Push {
    /// A signal (typing, presence), never stored.
    Signal(v1::Signal),
    Message {
        group: Arc<str>,
        from: u64,
        message: Arc<StoredMessage>,
    },
    Nudge {
        group: Arc<str>,
        from: u64,
    },
}

/// A session's end of the push.
pub(crate) struct Sub {
    pub(crate) user: String,
    /// Boxed: the channel allocates its first block of slots up front, for
    /// every session, and most sessions never see a push.
    tx: mpsc::Sender<Box<Push>>,
    /// Groups whose pushes were dropped (queue full): nudge them.
    lagged: Mutex<HashSet<(Arc<str>, u64)>>,
    wake: Notify,
}

impl Sub {
    /// Queues a push; when the queue is full a group push becomes a nudge
    /// and a signal is dropped (signals are best effort by nature).
    pub(crate) fn offer(&self, push: Push) {
        if let Err(mpsc::error::TrySendError::Full(push)) = self.tx.try_send(Box::new(push)) {
            let (group, from) = match *push {
                Push::Message { group, from, .. } | Push::Nudge { group, from } => (group, from),
                Push::Signal(_) => return,
            };
            lock(&self.lagged).insert((group, from));
            self.wake.notify_one();
        }
    }
}

/// A session following a group, with the member's first readable seq.
type Following = (Arc<Sub>, u64);

/// Online sessions by user, and which read-diffusion groups each follows.
#[derive(Default)]
pub(crate) struct GroupPush {
    pub(crate) inner: Mutex<Registry>,
}

#[derive(Default)]
pub(crate) struct Registry {
    /// Sessions of each online user.
    pub(crate) sessions: HashMap<String, HashMap<u64, Arc<Sub>>>,
    /// Sessions subscribed to each user's presence.
    pub(crate) watchers: HashMap<String, HashMap<u64, Arc<Sub>>>,
    /// Subscribed sessions of each group, with the member's first seq.
    groups: HashMap<Arc<str>, HashMap<u64, Following>>,
}

/// Unregisters a session when dropped (and records its end).
pub(crate) struct Attached {
    push: Arc<Ctx>,
    session_id: u64,
    user: String,
    device: String,
    started_ms: i64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let went_offline = {
            let mut r = lock(&self.push.group_push.inner);
            let mut last = false;
            if let Some(sessions) = r.sessions.get_mut(&self.user) {
                sessions.remove(&self.session_id);
                if sessions.is_empty() {
                    r.sessions.remove(&self.user);
                    last = true;
                }
            }
            r.groups.retain(|_, subs| {
                subs.remove(&self.session_id);
                !subs.is_empty()
            });
            r.watchers.retain(|_, subs| {
                subs.remove(&self.session_id);
                !subs.is_empty()
            });
            last
        };
        let now = qim_proto::now_ms();
        crate::presence::session_ended(
            &self.push,
            &self.user,
            &self.device,
            self.started_ms,
            now,
            went_offline,
        );
    }
}

impl GroupPush {
    /// Pushes a stored log entry of `group` to its subscribed sessions.
    pub(crate) fn publish(&self, group: &str, message: Arc<StoredMessage>) {
        let subs: Vec<(Arc<Sub>, u64)> = {
            let r = lock(&self.inner);
            match r.groups.get(group) {
                Some(subs) => subs.values().cloned().collect(),
                None => return,
            }
        };
        let group: Arc<str> = Arc::from(group);
        for (sub, from) in subs {
            sub.offer(Push::Message {
                group: Arc::clone(&group),
                from,
                message: Arc::clone(&message),
            });
        }
    }

    /// Subscribes every online session of `user` to `group` and nudges
    /// them with the current head (read after subscribing).
    async fn follow(&self, ctx: &Ctx, groups: &dyn GroupStore, group: &str, user: &str) {
        let member = match groups.member(group, user).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let key: Arc<str> = Arc::from(group);
        let subs: Vec<Arc<Sub>> = {
            let mut r = lock(&self.inner);
            let Some(sessions) = r.sessions.get(user) else {
                return;
            };
            let sessions: Vec<(u64, Arc<Sub>)> = sessions
                .iter()
                .map(|(id, s)| (*id, Arc::clone(s)))
                .collect();
            let entry = r.groups.entry(Arc::clone(&key)).or_default();
            for (id, sub) in &sessions {
                entry.insert(*id, (Arc::clone(sub), member.joined_seq));
            }
            sessions.into_iter().map(|(_, s)| s).collect()
        };
        let _ = ctx;
        for sub in subs {
            sub.offer(Push::Nudge {
                group: Arc::clone(&key),
                from: member.joined_seq,
            });
        }
    }

    /// Stops pushing `group` to `user`'s sessions, at once.
    fn unfollow(&self, group: &str, user: &str) {
        let mut r = lock(&self.inner);
        if let Some(subs) = r.groups.get_mut(group) {
            subs.retain(|_, (sub, _)| sub.user != user);
            if subs.is_empty() {
                r.groups.remove(group);
            }
        }
    }

    pub(crate) fn online(&self, user: &str) -> bool {
        lock(&self.inner).sessions.contains_key(user)
    }
}

/// Registers a session (for group pushes, presence and typing) and starts
/// following its read-diffusion groups; the returned task writes the
/// pushes. Dropping the guard unregisters. `None` when the server has none
/// of those features.
pub(crate) fn attach(
    ctx: &Arc<Ctx>,
    session_id: u64,
    user: &str,
    device: &str,
    conn: quinn::Connection,
) -> Option<(
    Attached,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    if ctx.groups.is_none() && ctx.contacts.is_none() && ctx.presence.is_none() {
        return None;
    }
    let groups = ctx.groups.clone();
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let sub = Arc::new(Sub {
        user: user.to_owned(),
        tx,
        lagged: Mutex::new(HashSet::new()),
        wake: Notify::new(),
    });
    let first = {
        let mut r = lock(&ctx.group_push.inner);
        let sessions = r.sessions.entry(user.to_owned()).or_default();
        sessions.insert(session_id, Arc::clone(&sub));
        sessions.len() == 1
    };
    let started_ms = qim_proto::now_ms();
    crate::presence::session_started(ctx, user, device, started_ms, first);
    let guard = Attached {
        push: Arc::clone(ctx),
        session_id,
        user: user.to_owned(),
        device: device.to_owned(),
        started_ms,
    };
    let ctx = Arc::clone(ctx);
    let user = user.to_owned();
    let task = async move {
        if let Some(groups) = groups {
            match groups.user_groups(&user).await {
                Ok(list) => {
                    for group in list {
                        if let Ok(Some(info)) = groups.group(&group).await {
                            if info.read_diffusion && !info.dissolved {
                                ctx.group_push
                                    .follow(&ctx, groups.as_ref(), &group, &user)
                                    .await;
                            }
                        }
                    }
                }
                Err(e) => warn!(user, error = %e, "listing the user's groups failed"),
            }
        }
        write_pushes(ctx, conn, sub, rx).await;
    };
    Some((guard, task))
}

/// Writes a session's pushes on its group stream, opened at the first.
async fn write_pushes(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    sub: Arc<Sub>,
    mut rx: mpsc::Receiver<Box<Push>>,
) {
    let max_frame = ctx.config.limits.max_frame_bytes as usize;
    let mut stream: Option<FramedSend> = None;
    loop {
        let push = tokio::select! {
            push = rx.recv() => match push {
                Some(push) => *push,
                None => return,
            },
            () = sub.wake.notified() => {
                let lagged: Vec<(Arc<str>, u64)> = lock(&sub.lagged).drain().collect();
                for (group, from) in lagged {
                    if let Err(e) = Box::pin(write(&ctx, &conn, &mut stream, max_frame, Push::Nudge { group, from })).await {
                        debug!(error = %e, "group stream ended");
                        return;
                    }
                }
                continue;
            }
        };
        // Boxed: the writing future is a kilobyte, and this task waits for
        // pushes for the whole life of every session.
        if let Err(e) = Box::pin(write(&ctx, &conn, &mut stream, max_frame, push)).await {
            debug!(error = %e, "group stream ended");
            return;
        }
    }
}

async fn write(
    ctx: &Ctx,
    conn: &quinn::Connection,
    stream: &mut Option<FramedSend>,
    max_frame: usize,
    push: Push,
) -> Result<(), String> {
    let deliver = match push {
        Push::Signal(signal) => v1::Deliver {
            signal: Some(signal),
            ..Default::default()
        },
        Push::Message {
            group,
            from,
            message,
        } => v1::Deliver {
            seq: message.seq,
            message: Some(message.message.clone()),
            attempt: 0,
            group: group.to_string(),
            group_from: from,
            signal: None,
        },
        Push::Nudge { group, from } => {
            let head = ctx
                .store
                .inbox_head(&group_log(&group))
                .await
                .map_err(|e| e.to_string())?;
            v1::Deliver {
                seq: head,
                message: None,
                attempt: 0,
                group: group.to_string(),
                group_from: from,
                signal: None,
            }
        }
    };
    if stream.is_none() {
        let s = conn.open_uni().await.map_err(|e| e.to_string())?;
        *stream = Some(FramedSend::new(s, StreamKind::Delivery, max_frame));
    }
    let Some(s) = stream.as_mut() else {
        return Err("no group stream".into());
    };
    s.send(&deliver).await.map_err(|e| e.to_string())?;
    ctx.metrics.deliveries.inc();
    Ok(())
}

fn error(code: ErrorCode, message: impl Into<String>) -> rpc_response::Kind {
    rpc_response::Kind::Error(v1::RpcError {
        code: code as i32,
        message: message.into(),
    })
}

fn valid_users(users: &[String]) -> bool {
    users.len() <= MAX_USERS_PER_REQUEST && users.iter().all(|u| qim_proto::ids::is_valid_id(u))
}

/// Answers a group rpc request of `user`.
pub(crate) async fn rpc(ctx: &Ctx, user: &str, request: GroupRpc) -> rpc_response::Kind {
    let Some(groups) = ctx.groups.as_ref() else {
        return error(ErrorCode::Unsupported, "this server's store has no groups");
    };
    let threshold = ctx.config.groups.read_diffusion_threshold;
    let (group, op) = match request {
        GroupRpc::Create(r) => {
            if !qim_proto::ids::is_valid_id(&r.group)
                || !valid_users(&r.members)
                || r.name.len() > 256
            {
                return error(
                    ErrorCode::InvalidArgument,
                    "bad group id, name or member list",
                );
            }
            if r.members.len() + 1 > ctx.config.groups.max_members as usize {
                return error(
                    ErrorCode::InvalidArgument,
                    "more members than groups.max_members",
                );
            }
            (
                r.group,
                GroupOp::Create {
                    name: r.name,
                    members: r.members,
                    now_ms: qim_proto::now_ms(),
                },
            )
        }
        GroupRpc::Change(r) => {
            if !qim_proto::ids::is_valid_id(&r.group) {
                return error(ErrorCode::InvalidArgument, "bad group id");
            }
            let op = match r.op {
                Some(group_request::Op::Info(_)) => {
                    return match groups.group(&r.group).await {
                        Ok(Some(info)) => {
                            rpc_response::Kind::Group(v1::GroupResponse { group: Some(info) })
                        }
                        Ok(None) => error(ErrorCode::NotFound, "no such group"),
                        Err(e) => error(ErrorCode::StoreUnavailable, e.to_string()),
                    };
                }
                Some(group_request::Op::Rename(name)) if name.len() <= 256 => GroupOp::Rename(name),
                Some(group_request::Op::Dissolve(true)) => GroupOp::Dissolve,
                Some(group_request::Op::Join(true)) => GroupOp::Join,
                Some(group_request::Op::Leave(true)) => GroupOp::Leave,
                Some(group_request::Op::Invite(u)) if valid_users(&u.users) => {
                    GroupOp::Invite(u.users)
                }
                Some(group_request::Op::Remove(u)) if valid_users(&u.users) => {
                    GroupOp::Remove(u.users)
                }
                Some(group_request::Op::SetRole(s)) if qim_proto::ids::is_valid_id(&s.user) => {
                    GroupOp::SetRole(
                        s.user,
                        v1::GroupRole::try_from(s.role).unwrap_or(v1::GroupRole::Member),
                    )
                }
                Some(group_request::Op::MuteMember(m)) if qim_proto::ids::is_valid_id(&m.user) => {
                    GroupOp::MuteMember(m.user, m.muted)
                }
                Some(group_request::Op::MuteAll(true)) => GroupOp::MuteAll(true),
                Some(group_request::Op::UnmuteAll(true)) => GroupOp::MuteAll(false),
                _ => {
                    return error(
                        ErrorCode::InvalidArgument,
                        "unknown or malformed group operation",
                    );
                }
            };
            (r.group, op)
        }
        GroupRpc::Members(r) => {
            let limit = match r.limit {
                0 => 100,
                n => n as usize,
            };
            return match groups.member(&r.group, user).await {
                Ok(Some(_)) => match groups.members(&r.group, &r.after, limit).await {
                    Ok(members) => {
                        let next = if members.len() == limit.min(1000) {
                            members.last().map(|m| m.user.clone()).unwrap_or_default()
                        } else {
                            String::new()
                        };
                        rpc_response::Kind::Members(v1::MembersResponse { members, next })
                    }
                    Err(e) => error(ErrorCode::StoreUnavailable, e.to_string()),
                },
                Ok(None) => error(ErrorCode::NotAMember, "not a member of the group"),
                Err(e) => error(ErrorCode::StoreUnavailable, e.to_string()),
            };
        }
        GroupRpc::Sync(r) => return sync(ctx, groups.as_ref(), user, r).await,
    };
    let before = groups.group(&group).await.ok().flatten();
    let touched: Vec<String> = match &op {
        GroupOp::Create { members, .. } => {
            members.iter().cloned().chain([user.to_owned()]).collect()
        }
        GroupOp::Join | GroupOp::Leave => vec![user.to_owned()],
        GroupOp::Invite(u) | GroupOp::Remove(u) => u.clone(),
        _ => Vec::new(),
    };
    let leaving = matches!(op, GroupOp::Leave | GroupOp::Remove(_));
    match groups.group_apply(&group, user, op, threshold).await {
        Ok(info) => {
            let change = if info.dissolved {
                Some(FollowChange::Dissolved)
            } else if leaving {
                Some(FollowChange::Leave(touched))
            } else if info.read_diffusion {
                if before.is_some_and(|b| !b.read_diffusion) {
                    Some(FollowChange::All)
                } else {
                    Some(FollowChange::Join(touched))
                }
            } else {
                None
            };
            if let Some(change) = change {
                refollow(ctx, &group, &change).await;
                if let Some(cluster) = &ctx.cluster {
                    cluster
                        .signal(&Signal::GroupFollow {
                            group: group.clone(),
                            change,
                        })
                        .await;
                }
            }
            rpc_response::Kind::Group(v1::GroupResponse { group: Some(info) })
        }
        Err(e) => {
            let (code, message) = op_error(&e);
            debug!(user, group, ?code, "group operation refused");
            error(code, message)
        }
    }
}

/// Makes this node's sessions follow a read-diffusion group, or stop, as
/// `change` says (for a change made here, or announced by another node).
pub(crate) async fn refollow(ctx: &Ctx, group: &str, change: &FollowChange) {
    let Some(groups) = &ctx.groups else { return };
    let push = &ctx.group_push;
    match change {
        FollowChange::Dissolved => {
            lock(&push.inner).groups.remove(group);
        }
        FollowChange::Leave(users) => {
            for u in users {
                push.unfollow(group, u);
            }
        }
        // Every online member starts following now.
        FollowChange::All => follow_all(ctx, groups.as_ref(), group).await,
        FollowChange::Join(users) => {
            for u in users {
                if push.online(u) {
                    push.follow(ctx, groups.as_ref(), group, u).await;
                }
            }
        }
    }
}

async fn follow_all(ctx: &Ctx, groups: &dyn GroupStore, group: &str) {
    let mut after = String::new();
    loop {
        let page = match groups.members(group, &after, 1000).await {
            Ok(page) => page,
            Err(e) => {
                warn!(group, error = %e, "listing members to follow failed");
                return;
            }
        };
        let Some(last) = page.last() else { return };
        after = last.user.clone();
        for m in &page {
            if ctx.group_push.online(&m.user) {
                ctx.group_push.follow(ctx, groups, group, &m.user).await;
            }
        }
        if page.len() < 1000 {
            return;
        }
    }
}

async fn sync(
    ctx: &Ctx,
    groups: &dyn GroupStore,
    user: &str,
    r: v1::GroupSyncRequest,
) -> rpc_response::Kind {
    if !qim_proto::ids::is_valid_id(&r.group) {
        return error(ErrorCode::InvalidArgument, "bad group id");
    }
    let member = match groups.member(&r.group, user).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(ErrorCode::NotAMember, "not a member of the group"),
        Err(e) => return error(ErrorCode::StoreUnavailable, e.to_string()),
    };
    let limit = match r.limit {
        0 => 100,
        n => n.min(500),
    } as usize;
    let log = group_log(&r.group);
    let after = r.after_seq.max(member.joined_seq);
    let read = async {
        let head = ctx.store.inbox_head(&log).await?;
        let entries = ctx.store.read_inbox(&log, after, limit).await?;
        Ok::<_, qim_storage::StoreError>((head, entries))
    };
    match read.await {
        Ok((head, entries)) => {
            let budget = (ctx.config.limits.max_frame_bytes as usize).saturating_sub(64);
            let mut used = 0;
            let entries = entries
                .into_iter()
                .map(|m| v1::InboxEntry {
                    seq: m.seq,
                    message: Some(m.message),
                })
                .take_while(|e| {
                    use prost::Message as _;
                    let len = e.encoded_len();
                    used += len + prost::length_delimiter_len(len) + 1;
                    used <= budget
                })
                .collect();
            rpc_response::Kind::GroupSync(v1::GroupSyncResponse { entries, head })
        }
        Err(e) => error(ErrorCode::StoreUnavailable, e.to_string()),
    }
}

/// The group requests of the rpc stream.
pub(crate) enum GroupRpc {
    Create(v1::CreateGroupRequest),
    Change(v1::GroupRequest),
    Members(v1::MembersRequest),
    Sync(v1::GroupSyncRequest),
}
