//! Best-effort pushes to live sessions: entries of read-diffusion group
//! logs, presence changes and typing. The [`Registry`] knows every session
//! on this node, which groups each follows and whose presence each
//! watches; each session has a bounded queue and a writer (polled by the
//! session's task) that writes its pushes on a server uni stream of its
//! own.
//!
//! # Push and pull
//! A read-diffusion group's messages are stored once in the group's log;
//! [`Registry::publish_group`] hands each one to every following session,
//! which writes it on its push stream (kind Delivery, `Deliver.group` set,
//! `seq` the group's seq). When a session's queue ([`PUSH_QUEUE`]) is full
//! the entry is dropped for that session and a *nudge* ("the group's log is
//! at seq N") is sent instead, ahead of the pushes still queued, so a hot
//! group costs a slow member one small frame, and the SDK pulls the range.
//! Every push carries the member's first readable seq, so a client always
//! knows where to start. Signals (presence, typing) are dropped when the
//! queue is full: they are never stored or resent.
//!
//! # Blocks
//! A read-diffusion group's entry is not pushed to the sessions of the
//! members who blocked its sender (the caller names them), and when two
//! users stop being friends or one blocks the other,
//! [`Registry::unwatch_pair`] ends each one's watching of the other's
//! presence on this node (every node is told through the fan-out).
//!
//! # Invariants
//! - A session is subscribed to a group before the group's head is read for
//!   its first nudge, so every entry is either pushed or at most the head
//!   the nudge names (and pulled): none is missed.
//! - A session leaves the registry when it ends ([`Registration::end`]), or
//!   when its registration is dropped if the session task was aborted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use qim_proto::io::FramedSend;
use qim_proto::preamble::StreamKind;
use qim_proto::v1;
use qim_storage::conversations::group_log;
use qim_storage::redis::signals::FollowChange;
use qim_storage::{GroupStore, MessageStore, StoredMessage};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::mutex::lock;

/// Pushes queued per session before the session falls back to nudges.
pub(crate) const PUSH_QUEUE: usize = 256;

/// Members listed per page when every online member starts following.
const FOLLOW_PAGE: usize = 1000;

/// One frame for a session's push stream.
pub(crate) enum Item {
    /// A signal (typing, presence), never stored.
    Signal(v1::Signal),
    /// An entry of a read-diffusion group's log.
    Entry {
        group: Arc<str>,
        from: u64,
        message: Arc<StoredMessage>,
    },
    /// "The group's log has news": the session pulls it.
    Nudge { group: Arc<str>, from: u64 },
}

/// A session's end of the push.
pub(crate) struct Sub {
    /// Shared with the user's entry in the registry.
    user: Arc<str>,
    queue: Mutex<Queue>,
    /// Tells the writer the queue has news.
    wake: Notify,
}

/// A session's pushes not written yet. Nothing here allocates before the
/// first push (a channel would allocate a block of slots for every
/// session, and most sessions never see a push).
#[derive(Default)]
struct Queue {
    /// At most [`PUSH_QUEUE`], in order.
    items: VecDeque<Item>,
    /// Groups whose pushes were dropped (queue full): nudge them.
    lagged: HashSet<(Arc<str>, u64)>,
    /// The writer ended (its stream failed): pushes are dropped.
    closed: bool,
}

impl Sub {
    /// Queues a push; when the queue is full a group push becomes a nudge
    /// and a signal is dropped (signals are best effort by nature).
    fn offer(&self, item: Item) {
        {
            let mut q = lock(&self.queue);
            if q.closed {
                return;
            }
            if q.items.len() < PUSH_QUEUE {
                q.items.push_back(item);
            } else {
                let (group, from) = match item {
                    Item::Entry { group, from, .. } | Item::Nudge { group, from } => (group, from),
                    Item::Signal(_) => return,
                };
                q.lagged.insert((group, from));
            }
        }
        self.wake.notify_one();
    }

    /// What the writer does next: lagged groups' nudges first (they stand
    /// for what was dropped), then the queue in order.
    fn take(&self) -> Next {
        let mut q = lock(&self.queue);
        if !q.lagged.is_empty() {
            return Next::Nudges(q.lagged.drain().collect());
        }
        match q.items.pop_front() {
            Some(item) => {
                if q.items.is_empty() {
                    // Drained: its room is given back (at most one
                    // allocation per burst, where a boxed item was one
                    // per push).
                    q.items = VecDeque::new();
                }
                Next::Item(item)
            }
            None => Next::Wait,
        }
    }

    /// The writer ended: drops what waits, and every later push.
    fn close(&self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.items = VecDeque::new();
        q.lagged = HashSet::new();
    }
}

/// What a session's push writer does next.
enum Next {
    Nudges(Vec<(Arc<str>, u64)>),
    Item(Item),
    Wait,
}

/// A session following a group, with the member's first readable seq.
type Following = (Arc<Sub>, u64);

#[derive(Default)]
struct Tables {
    /// Sessions of each online user, by session id: a list, since nearly
    /// every user has one or two (a map would cost each user its table).
    sessions: HashMap<Arc<str>, Vec<(u64, Arc<Sub>)>>,
    /// Sessions subscribed to each user's presence.
    watchers: HashMap<String, HashMap<u64, Arc<Sub>>>,
    /// Subscribed sessions of each group, with the member's first seq.
    groups: HashMap<Arc<str>, HashMap<u64, Following>>,
    /// What each session was entered in, in `groups` and `watchers`, so
    /// that its end visits those entries only, not every group and user
    /// of the node under the lock. Kept for sessions that follow or
    /// watch anything; an entry removed meanwhile (a group left,
    /// dissolved, a pair unwatched) is passed over.
    entered: HashMap<u64, Entered>,
}

#[derive(Default)]
struct Entered {
    groups: HashSet<Arc<str>>,
    watched: HashSet<String>,
}

impl Tables {
    /// Enters every session of `user` as following `group` from `from`;
    /// returns them.
    fn enter_group(&mut self, group: &Arc<str>, user: &str, from: u64) -> Vec<Arc<Sub>> {
        let Some(sessions) = self.sessions.get(user) else {
            return Vec::new();
        };
        let following = self.groups.entry(Arc::clone(group)).or_default();
        for (id, sub) in sessions {
            following.insert(*id, (Arc::clone(sub), from));
            let entered = self.entered.entry(*id).or_default();
            entered.groups.insert(Arc::clone(group));
        }
        sessions.iter().map(|(_, sub)| Arc::clone(sub)).collect()
    }
}

/// The sessions on this node and what each is pushed.
#[derive(Default)]
pub(crate) struct Registry {
    tables: Mutex<Tables>,
}

/// A session's place in the registry; [`end`](Registration::end) it when
/// the session ends (dropping it unregisters too, quietly).
pub(crate) struct Registration {
    registry: Arc<Registry>,
    session_id: u64,
    user: Arc<str>,
    ended: bool,
}

impl Registration {
    /// Unregisters the session; returns whether it was the user's last on
    /// this node.
    pub(crate) fn end(mut self) -> bool {
        self.ended = true;
        self.registry.remove(&self.user, self.session_id)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.ended {
            self.registry.remove(&self.user, self.session_id);
        }
    }
}

/// What a session's push writer needs.
pub(crate) struct Writer {
    pub(crate) conn: qim_proto::transport::Connection,
    pub(crate) max_frame: usize,
    /// To read a group's head for a nudge.
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) groups: Arc<dyn GroupStore>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Registry {
    /// Registers a session. Returns its registration, whether it is the
    /// user's first session on this node, and the task that follows the
    /// user's read-diffusion groups and then writes the session's pushes.
    pub(crate) fn attach(
        self: &Arc<Self>,
        session_id: u64,
        user: &str,
        writer: Writer,
    ) -> (
        Registration,
        bool,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (sub, first) = {
            let mut t = lock(&self.tables);
            // One copy of the name for the user's sessions here.
            let name = match t.sessions.get_key_value(user) {
                Some((name, _)) => Arc::clone(name),
                None => Arc::from(user),
            };
            let sub = Arc::new(Sub {
                user: Arc::clone(&name),
                queue: Mutex::default(),
                wake: Notify::new(),
            });
            let sessions = t.sessions.entry(name).or_default();
            sessions.reserve_exact(1);
            sessions.push((session_id, Arc::clone(&sub)));
            (sub, sessions.len() == 1)
        };
        let registration = Registration {
            registry: Arc::clone(self),
            session_id,
            user: Arc::clone(&sub.user),
            ended: false,
        };
        let task = write_pushes(Arc::clone(self), writer, sub);
        (registration, first, task)
    }

    /// Removes a session everywhere; returns whether it was the user's last.
    fn remove(&self, user: &str, session_id: u64) -> bool {
        let mut t = lock(&self.tables);
        let mut last = false;
        if let Some(sessions) = t.sessions.get_mut(user) {
            sessions.retain(|(id, _)| *id != session_id);
            if sessions.is_empty() {
                t.sessions.remove(user);
                last = true;
            }
        }
        let Some(entered) = t.entered.remove(&session_id) else {
            return last;
        };
        for group in &entered.groups {
            if let Some(subs) = t.groups.get_mut(group) {
                subs.remove(&session_id);
                if subs.is_empty() {
                    t.groups.remove(group);
                }
            }
        }
        for user in &entered.watched {
            if let Some(subs) = t.watchers.get_mut(user) {
                subs.remove(&session_id);
                if subs.is_empty() {
                    t.watchers.remove(user);
                }
            }
        }
        last
    }

    /// Whether `user` has a session on this node.
    pub(crate) fn online(&self, user: &str) -> bool {
        lock(&self.tables).sessions.contains_key(user)
    }

    /// Pushes a stored log entry of `group` to its following sessions,
    /// except those of the `hidden` users.
    pub(crate) fn publish_group(
        &self,
        group: &str,
        message: Arc<StoredMessage>,
        hidden: &[String],
    ) {
        let subs: Vec<Following> = match lock(&self.tables).groups.get(group) {
            Some(subs) => subs
                .values()
                .filter(|(sub, _)| !hidden.iter().any(|h| **h == *sub.user))
                .cloned()
                .collect(),
            None => return,
        };
        let group: Arc<str> = Arc::from(group);
        for (sub, from) in subs {
            sub.offer(Item::Entry {
                group: Arc::clone(&group),
                from,
                message: Arc::clone(&message),
            });
        }
    }

    /// Pushes a presence change to the sessions that watch its user.
    pub(crate) fn notify_presence(&self, status: &v1::PresenceStatus) {
        let watchers: Vec<Arc<Sub>> = lock(&self.tables)
            .watchers
            .get(&status.user)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default();
        let signal = v1::Signal {
            kind: Some(v1::signal::Kind::Presence(status.clone())),
        };
        for w in watchers {
            w.offer(Item::Signal(signal.clone()));
        }
    }

    /// Offers `signal` to every session of each of `users`.
    pub(crate) fn offer_to_users(&self, users: &[String], signal: &v1::Signal) {
        let subs: Vec<Arc<Sub>> = {
            let t = lock(&self.tables);
            users
                .iter()
                .filter_map(|u| t.sessions.get(u.as_str()))
                .flat_map(|s| s.iter().map(|(_, sub)| Arc::clone(sub)))
                .collect()
        };
        for sub in subs {
            sub.offer(Item::Signal(signal.clone()));
        }
    }

    /// Stops the sessions of `a` watching `b`'s presence, and those of `b`
    /// watching `a`'s.
    pub(crate) fn unwatch_pair(&self, a: &str, b: &str) {
        let mut t = lock(&self.tables);
        for (watched, viewer) in [(a, b), (b, a)] {
            if let Some(w) = t.watchers.get_mut(watched) {
                w.retain(|_, sub| *sub.user != *viewer);
                if w.is_empty() {
                    t.watchers.remove(watched);
                }
            }
        }
    }

    /// Makes session `session_id` of `viewer` watch (or stop watching)
    /// the presence of `users`.
    pub(crate) fn watch(&self, viewer: &str, session_id: u64, users: &[String], watch: bool) {
        let mut t = lock(&self.tables);
        let sub = t
            .sessions
            .get(viewer)
            .and_then(|s| s.iter().find(|(id, _)| *id == session_id))
            .map(|(_, sub)| Arc::clone(sub));
        for user in users {
            if !watch {
                if let Some(w) = t.watchers.get_mut(user) {
                    w.remove(&session_id);
                    if w.is_empty() {
                        t.watchers.remove(user);
                    }
                }
                if let Some(entered) = t.entered.get_mut(&session_id) {
                    entered.watched.remove(user);
                }
            } else if let Some(sub) = &sub {
                t.watchers
                    .entry(user.clone())
                    .or_default()
                    .insert(session_id, Arc::clone(sub));
                t.entered
                    .entry(session_id)
                    .or_default()
                    .watched
                    .insert(user.clone());
            }
        }
    }

    /// Makes this node's sessions follow a read-diffusion group, or stop, as
    /// `change` says (for a change made here, or announced by another node).
    pub(crate) async fn refollow(
        &self,
        groups: &dyn GroupStore,
        group: &str,
        change: &FollowChange,
    ) {
        match change {
            FollowChange::Dissolved => {
                lock(&self.tables).groups.remove(group);
            }
            FollowChange::Leave(users) => {
                for u in users {
                    self.unfollow(group, u);
                }
            }
            // Every online member starts following now.
            FollowChange::All => self.follow_all(groups, group).await,
            FollowChange::Join(users) => {
                for u in users {
                    if self.online(u) {
                        self.follow(groups, group, u).await;
                    }
                }
            }
        }
    }

    /// Subscribes every session of `user` here to `group` and nudges them
    /// with the current head (read after subscribing).
    async fn follow(&self, groups: &dyn GroupStore, group: &str, user: &str) {
        let member = match groups.member(group, user).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let key: Arc<str> = Arc::from(group);
        let subs = lock(&self.tables).enter_group(&key, user, member.joined_seq);
        for sub in subs {
            sub.offer(Item::Nudge {
                group: Arc::clone(&key),
                from: member.joined_seq,
            });
        }
    }

    /// Stops pushing `group` to `user`'s sessions, at once.
    fn unfollow(&self, group: &str, user: &str) {
        let mut t = lock(&self.tables);
        if let Some(subs) = t.groups.get_mut(group) {
            subs.retain(|_, (sub, _)| *sub.user != *user);
            if subs.is_empty() {
                t.groups.remove(group);
            }
        }
    }

    async fn follow_all(&self, groups: &dyn GroupStore, group: &str) {
        let mut after = String::new();
        loop {
            let page = match groups.members(group, &after, FOLLOW_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    warn!(group, error = %e, "listing members to follow failed");
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = last.user.clone();
            for m in &page {
                if self.online(&m.user) {
                    self.follow(groups, group, &m.user).await;
                }
            }
            if page.len() < FOLLOW_PAGE {
                return;
            }
        }
    }

    /// A new session follows every read-diffusion group of its user.
    async fn follow_groups_of(&self, writer: &Writer, user: &str) {
        let groups = writer.groups.as_ref();
        match groups.user_groups(user).await {
            Ok(list) => {
                for group in list {
                    if let Ok(Some(info)) = groups.group(&group).await
                        && info.read_diffusion
                        && !info.dissolved
                    {
                        self.follow(groups, &group, user).await;
                    }
                }
            }
            Err(e) => warn!(user, error = %e, "listing the user's groups failed"),
        }
    }
}

/// Follows the user's read-diffusion groups, then writes the session's
/// pushes on its push stream, opened at the first. (Not an `async fn`,
/// which would keep its arguments twice for the session's life.)
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
fn write_pushes(
    registry: Arc<Registry>,
    writer: Writer,
    sub: Arc<Sub>,
) -> impl Future<Output = ()> + Send {
    async move {
        // Boxed: a one-off at the start, larger than the writer.
        Box::pin(registry.follow_groups_of(&writer, &sub.user)).await;
        let mut stream: Option<FramedSend> = None;
        loop {
            // Boxed: the writing future is a kilobyte, and the writer waits for
            // pushes for the whole life of every session.
            let written = match sub.take() {
                // A wake-up stored while the queue was read is not lost: the
                // next `notified` takes it at once.
                Next::Wait => {
                    sub.wake.notified().await;
                    continue;
                }
                Next::Item(item) => Box::pin(write(&writer, &mut stream, item)).await,
                Next::Nudges(lagged) => {
                    let mut written = Ok(());
                    for (group, from) in lagged {
                        written =
                            Box::pin(write(&writer, &mut stream, Item::Nudge { group, from }))
                                .await;
                        if written.is_err() {
                            break;
                        }
                    }
                    written
                }
            };
            if let Err(e) = written {
                debug!(error = %e, "push stream ended");
                sub.close();
                return;
            }
        }
    }
}

async fn write(writer: &Writer, stream: &mut Option<FramedSend>, item: Item) -> Result<(), String> {
    let deliver = match item {
        Item::Signal(signal) => v1::Deliver {
            signal: Some(signal),
            ..Default::default()
        },
        Item::Entry {
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
        Item::Nudge { group, from } => {
            let head = writer
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
        let s = writer.conn.open_uni().await.map_err(|e| e.to_string())?;
        *stream = Some(FramedSend::new(s, StreamKind::Delivery, writer.max_frame));
    }
    let Some(s) = stream.as_mut() else {
        return Err("no push stream".into());
    };
    s.send(&deliver).await.map_err(|e| e.to_string())?;
    writer.metrics.deliveries.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(group: &Arc<str>, seq: u64) -> Item {
        Item::Entry {
            group: Arc::clone(group),
            from: 1,
            message: Arc::new(StoredMessage {
                inbox: "g".into(),
                seq,
                message: Default::default(),
            }),
        }
    }

    #[test]
    fn a_full_queue_nudges_the_group_and_keeps_what_it_queued_in_order() {
        let sub = Sub {
            user: "bob".into(),
            queue: Mutex::default(),
            wake: Notify::new(),
        };
        let group: Arc<str> = Arc::from("g1");
        for seq in 1..=PUSH_QUEUE as u64 + 10 {
            sub.offer(entry(&group, seq));
        }
        sub.offer(Item::Signal(v1::Signal::default()));
        // The nudge first: the client pulls what was dropped.
        match sub.take() {
            Next::Nudges(nudges) => assert_eq!(nudges, vec![(Arc::clone(&group), 1)]),
            _ => panic!("expected the group's nudge"),
        }
        for seq in 1..=PUSH_QUEUE as u64 {
            match sub.take() {
                Next::Item(Item::Entry { message, .. }) => assert_eq!(message.seq, seq),
                _ => panic!("expected entry {seq}"),
            }
        }
        assert!(matches!(sub.take(), Next::Wait), "the signal was dropped");
        sub.close();
        sub.offer(entry(&group, 999));
        assert!(
            matches!(sub.take(), Next::Wait),
            "a closed queue takes nothing"
        );
    }

    /// A registry with `sessions` (user, session id) in it, as `attach`
    /// enters them (without their writers).
    fn registry_of(sessions: &[(&str, u64)]) -> Registry {
        let registry = Registry::default();
        {
            let mut t = lock(&registry.tables);
            for (user, id) in sessions {
                let sub = Arc::new(Sub {
                    user: Arc::from(*user),
                    queue: Mutex::default(),
                    wake: Notify::new(),
                });
                t.sessions
                    .entry(Arc::clone(&sub.user))
                    .or_default()
                    .push((*id, sub));
            }
        }
        registry
    }

    #[test]
    fn a_session_that_ends_leaves_no_follow_or_watch_behind_and_takes_no_one_elses() {
        let registry = registry_of(&[("alice", 1), ("alice", 2), ("bob", 3)]);
        let users = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        registry.watch("alice", 1, &users(&["carol", "dave"]), true);
        registry.watch("bob", 3, &users(&["carol"]), true);
        registry.watch("alice", 1, &users(&["erin"]), true);
        registry.watch("alice", 1, &users(&["erin"]), false);
        {
            let t = lock(&registry.tables);
            assert!(!t.watchers.contains_key("erin"));
            assert!(
                !t.entered[&1].watched.contains("erin"),
                "an unwatch is forgotten"
            );
        }
        let (g1, g2): (Arc<str>, Arc<str>) = (Arc::from("g1"), Arc::from("g2"));
        {
            let mut t = lock(&registry.tables);
            assert_eq!(t.enter_group(&g1, "alice", 5).len(), 2);
            assert_eq!(t.enter_group(&g2, "bob", 1).len(), 1);
        }
        // Alice's first session ends: her second goes on following g1.
        assert!(!registry.remove("alice", 1), "alice is still online");
        {
            let t = lock(&registry.tables);
            let followers: Vec<u64> = t.groups["g1"].keys().copied().collect();
            assert_eq!(followers, vec![2]);
            let carol: Vec<u64> = t.watchers["carol"].keys().copied().collect();
            assert_eq!(carol, vec![3]);
            assert!(!t.watchers.contains_key("dave"), "dave had one watcher");
            assert!(!t.entered.contains_key(&1));
        }
        // A group dissolved meanwhile is passed over.
        lock(&registry.tables).groups.remove("g1");
        assert!(registry.remove("alice", 2), "her last session here");
        assert!(registry.remove("bob", 3));
        let t = lock(&registry.tables);
        assert!(t.groups.is_empty() && t.watchers.is_empty() && t.entered.is_empty());
        assert!(t.sessions.is_empty());
    }
}
