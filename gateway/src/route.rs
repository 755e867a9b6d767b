//! In-process routes: which users are online on this node, their sessions
//! (one per device), and a per-user feed of newly stored messages.
//!
//! A [`Feed`] exists while a user has at least one session. Storing a message
//! publishes it to the recipient's feed (if any): the feed keeps the newest
//! messages in a small ring, so live delivery needs no store read, and raises
//! the head seq that every device's delivery task watches. Messages published
//! out of order (two senders' batches racing) are kept sorted; a delivery
//! task that finds a seq missing from the ring reads it from the store, where
//! it is already durable (publish happens only after the store's commit).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use qim_proto::v1::{ErrorCode, KickReason};
use qim_storage::StoredMessage;
use tokio::sync::{Notify, oneshot};

use crate::mutex::lock;

/// Newest messages kept in memory per online user.
const RECENT: usize = 512;

/// Which devices of a user may be online together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevicePolicy {
    /// Any number of devices.
    Unlimited,
    /// One device per platform class (mobile, desktop, web); a login kicks
    /// the older session of its class.
    OnePerClass,
    /// One device in total; a login kicks every other device.
    Single,
}

impl DevicePolicy {
    /// From the config value (validated at start-up).
    pub(crate) fn parse(s: &str) -> Option<DevicePolicy> {
        match s {
            "unlimited" => Some(DevicePolicy::Unlimited),
            "one-per-platform-class" => Some(DevicePolicy::OnePerClass),
            "single" => Some(DevicePolicy::Single),
            _ => None,
        }
    }
}

/// Platform classes for [`DevicePolicy::OnePerClass`]; `None` (servers,
/// unspecified) is never kicked by class.
pub(crate) fn platform_class(platform: i32) -> Option<&'static str> {
    use qim_proto::v1::Platform;
    match Platform::try_from(platform).ok()? {
        Platform::Android | Platform::Ios => Some("mobile"),
        Platform::Desktop => Some("desktop"),
        Platform::Web => Some("web"),
        Platform::Server | Platform::Unspecified => None,
    }
}

/// Why the routes end a session: the close code and, for a kick through
/// the admin API, the reason the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ending {
    pub(crate) code: ErrorCode,
    pub(crate) reason: KickReason,
}

impl From<ErrorCode> for Ending {
    fn from(code: ErrorCode) -> Self {
        Self {
            code,
            reason: KickReason::Unspecified,
        }
    }
}

/// A session of one device, as the routes know it.
struct Attached {
    session_id: u64,
    device_id: String,
    class: Option<&'static str>,
    /// Ends the session with a reason (another login of the device, a kick).
    kick: oneshot::Sender<Ending>,
    /// When the session's token was issued (unix seconds; the session
    /// raises it when it takes a fresh token).
    issued_at: Arc<AtomicU64>,
}

/// The live side of one online user's inbox.
pub(crate) struct Feed {
    /// The newest seq known for this inbox.
    head: AtomicU64,
    /// Wakes the devices' deliveries when `head` rises (a notifier, not a
    /// watch channel: a watch keeps eight notifiers per user).
    raised: Notify,
    recent: Mutex<VecDeque<Arc<StoredMessage>>>,
    sessions: Mutex<Vec<Attached>>,
    /// Highest seq whose delivery receipt was sent from this node.
    receipted: std::sync::atomic::AtomicU64,
}

impl Feed {
    fn new() -> Self {
        Self {
            head: AtomicU64::new(0),
            raised: Notify::new(),
            // Empty until the first message: most feeds are of idle users.
            recent: Mutex::new(VecDeque::new()),
            sessions: Mutex::new(Vec::new()),
            receipted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Raises the receipt mark to `seq`; returns the mark before.
    pub(crate) fn receipted_up_to(&self, seq: u64) -> u64 {
        self.receipted
            .fetch_max(seq, std::sync::atomic::Ordering::AcqRel)
    }

    /// The newest seq known for this inbox.
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Resolves once the head rises after the future was enabled (see
    /// [`Notify::notified`]): enable it before reading [`head`](Self::head)
    /// and no rise is missed.
    pub(crate) fn raised(&self) -> tokio::sync::futures::Notified<'_> {
        self.raised.notified()
    }

    /// Raises the head to `seq` if it is newer.
    pub(crate) fn raise_head(&self, seq: u64) {
        if self.head.fetch_max(seq, Ordering::AcqRel) < seq {
            self.raised.notify_waiters();
        }
    }

    fn push(&self, message: Arc<StoredMessage>) {
        let seq = message.seq;
        {
            let mut recent = lock(&self.recent);
            // Messages nearly always arrive in seq order: append without a
            // search (a binary search over the ring costs a cache miss per
            // probe, each element behind its own Arc).
            let at = match recent.back() {
                Some(last) if last.seq < seq => recent.len(),
                None => 0,
                Some(_) => recent.partition_point(|m| m.seq < seq),
            };
            if recent.get(at).is_none_or(|m| m.seq != seq) {
                recent.insert(at, message);
                if recent.len() > RECENT {
                    recent.pop_front();
                }
            }
        }
        self.raise_head(seq);
    }

    /// Replaces the ring's copy of a message rewritten in the store
    /// (recall, edit), so devices served from the ring see the new form.
    fn replace(&self, message: Arc<StoredMessage>) {
        let mut recent = lock(&self.recent);
        let at = recent.partition_point(|m| m.seq < message.seq);
        if let Some(slot) = recent.get_mut(at).filter(|m| m.seq == message.seq) {
            *slot = message;
        }
    }

    /// Up to `max` consecutive messages starting at `seq`, if the ring holds
    /// `seq`; empty otherwise.
    pub(crate) fn recent_from(&self, seq: u64, max: usize) -> Vec<Arc<StoredMessage>> {
        let recent = lock(&self.recent);
        // The ring is usually gapless: try the slot the seq would have.
        let guess = recent
            .front()
            .and_then(|f| usize::try_from(seq.checked_sub(f.seq)?).ok())
            .filter(|&i| recent.get(i).is_some_and(|m| m.seq == seq));
        let start = guess.unwrap_or_else(|| recent.partition_point(|m| m.seq < seq));
        recent
            .iter()
            .skip(start)
            .take(max)
            .zip(seq..)
            .take_while(|(m, want)| m.seq == *want)
            .map(|(m, _)| Arc::clone(m))
            .collect()
    }
}

/// Online users of this node.
#[derive(Default)]
pub(crate) struct Routes {
    users: Mutex<HashMap<String, Arc<Feed>>>,
}

impl Routes {
    /// Registers a session of `device_id` for `user`. An earlier session of
    /// the same device is told to end with `REPLACED`. Returns the user's
    /// feed and the receiver that ends this session when fired.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn attach(
        &self,
        user: &str,
        device_id: &str,
        session_id: u64,
    ) -> (Arc<Feed>, oneshot::Receiver<Ending>) {
        let token = Arc::new(AtomicU64::new(0));
        self.attach_with_policy(
            user,
            device_id,
            session_id,
            None,
            DevicePolicy::Unlimited,
            token,
        )
    }

    /// [`attach`](Routes::attach) under a device policy: besides an earlier
    /// session of the same device (`REPLACED`, never a policy kick, so a
    /// device reconnecting after a network blip is never kicked by its own
    /// earlier session), sessions of other devices the policy excludes are
    /// told to end with `KICKED`. `issued_at` is when the session's token
    /// was issued, for [`revoke`](Routes::revoke).
    pub(crate) fn attach_with_policy(
        &self,
        user: &str,
        device_id: &str,
        session_id: u64,
        class: Option<&'static str>,
        policy: DevicePolicy,
        issued_at: Arc<AtomicU64>,
    ) -> (Arc<Feed>, oneshot::Receiver<Ending>) {
        let (kick, kicked) = oneshot::channel();
        let mut users = lock(&self.users);
        let feed = Arc::clone(
            users
                .entry(user.to_owned())
                .or_insert_with(|| Arc::new(Feed::new())),
        );
        let mut sessions = lock(&feed.sessions);
        if let Some(i) = sessions.iter().position(|s| s.device_id == device_id) {
            let old = sessions.swap_remove(i);
            let _ = old.kick.send(ErrorCode::Replaced.into());
        }
        let excluded = |s: &Attached| match policy {
            DevicePolicy::Unlimited => false,
            DevicePolicy::Single => true,
            DevicePolicy::OnePerClass => class.is_some() && s.class == class,
        };
        let mut i = 0;
        while i < sessions.len() {
            if excluded(&sessions[i]) {
                let old = sessions.swap_remove(i);
                let _ = old.kick.send(ErrorCode::Kicked.into());
            } else {
                i += 1;
            }
        }
        // One slot at a time: nearly every user has one or two devices
        // online, and a first push would make room for four.
        sessions.reserve_exact(1);
        sessions.push(Attached {
            session_id,
            device_id: device_id.to_owned(),
            class,
            kick,
            issued_at,
        });
        drop(sessions);
        (feed, kicked)
    }

    /// Removes a session; the user goes offline with their last session.
    pub(crate) fn detach(&self, user: &str, session_id: u64) {
        let mut users = lock(&self.users);
        let Some(feed) = users.get(user) else {
            return;
        };
        let empty = {
            let mut sessions = lock(&feed.sessions);
            sessions.retain(|s| s.session_id != session_id);
            sessions.is_empty()
        };
        if empty {
            users.remove(user);
        }
    }

    /// Hands a newly stored message to its recipient's feed, if online.
    pub(crate) fn publish(&self, message: Arc<StoredMessage>) {
        let feed = lock(&self.users).get(&message.inbox).cloned();
        if let Some(feed) = feed {
            feed.push(message);
        }
    }

    /// Refreshes a rewritten message in its inbox's feed, if online.
    pub(crate) fn replace(&self, message: Arc<StoredMessage>) {
        let feed = lock(&self.users).get(&message.inbox).cloned();
        if let Some(feed) = feed {
            feed.replace(message);
        }
    }

    /// Ends the session `session_id` of `device` of `user`, if it is here,
    /// with `code` (a newer login of the device on another node).
    pub(crate) fn kick(&self, user: &str, device_id: &str, session_id: u64, code: ErrorCode) {
        let feed = lock(&self.users).get(user).cloned();
        let Some(feed) = feed else { return };
        let mut sessions = lock(&feed.sessions);
        if let Some(i) = sessions
            .iter()
            .position(|s| s.session_id == session_id && s.device_id == device_id)
        {
            let old = sessions.swap_remove(i);
            let _ = old.kick.send(code.into());
        }
    }

    /// Ends the sessions of `user` here, of `device` only when given, with
    /// `ending` (an admin's kick); returns how many there were.
    pub(crate) fn kick_user(&self, user: &str, device: Option<&str>, ending: Ending) -> usize {
        let feed = lock(&self.users).get(user).cloned();
        let Some(feed) = feed else { return 0 };
        let mut sessions = lock(&feed.sessions);
        let mut kicked = 0;
        let mut i = 0;
        while i < sessions.len() {
            if device.is_none_or(|d| sessions[i].device_id == d) {
                let old = sessions.swap_remove(i);
                let _ = old.kick.send(ending);
                kicked += 1;
            } else {
                i += 1;
            }
        }
        kicked
    }

    /// Ends the sessions here of `user` whose token was issued before
    /// `before` (unix seconds) with `TOKEN_REVOKED`.
    pub(crate) fn revoke(&self, user: &str, before: u64) {
        let feed = lock(&self.users).get(user).cloned();
        let Some(feed) = feed else { return };
        let mut sessions = lock(&feed.sessions);
        let mut i = 0;
        while i < sessions.len() {
            if sessions[i].issued_at.load(Ordering::Acquire) < before {
                let old = sessions.swap_remove(i);
                let _ = old.kick.send(ErrorCode::TokenRevoked.into());
            } else {
                i += 1;
            }
        }
    }

    /// Every session here as `(user, device, session id)`.
    pub(crate) fn sessions(&self) -> Vec<(String, String, u64)> {
        let users = lock(&self.users);
        let mut out = Vec::with_capacity(users.len());
        for (user, feed) in users.iter() {
            for s in lock(&feed.sessions).iter() {
                out.push((user.clone(), s.device_id.clone(), s.session_id));
            }
        }
        out
    }

    /// The devices of `user` with a session here.
    pub(crate) fn devices(&self, user: &str) -> Vec<String> {
        let users = lock(&self.users);
        users.get(user).map_or_else(Vec::new, |feed| {
            lock(&feed.sessions)
                .iter()
                .map(|s| s.device_id.clone())
                .collect()
        })
    }

    /// Users with at least one session.
    pub(crate) fn online_users(&self) -> usize {
        lock(&self.users).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(inbox: &str, seq: u64) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            inbox: inbox.into(),
            seq,
            message: Default::default(),
        })
    }

    #[test]
    fn out_of_order_publishes_are_served_in_order() {
        let routes = Routes::default();
        let (feed, _kick) = routes.attach("bob", "phone", 1);
        routes.publish(msg("bob", 2));
        routes.publish(msg("bob", 1));
        routes.publish(msg("bob", 4));
        assert_eq!(feed.head(), 4);
        let seqs: Vec<u64> = feed.recent_from(1, 10).iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2], "stops at the gap before 4");
        assert!(
            feed.recent_from(3, 10).is_empty(),
            "3 must come from the store"
        );
        routes.publish(msg("alice", 1));
        assert_eq!(routes.online_users(), 1, "offline users get no feed");
    }

    #[test]
    fn a_second_login_of_a_device_replaces_the_first() {
        let routes = Routes::default();
        let (_, mut first) = routes.attach("bob", "phone", 1);
        let (_, mut laptop) = routes.attach("bob", "laptop", 2);
        let (_, _second) = routes.attach("bob", "phone", 3);
        assert_eq!(first.try_recv(), Ok(ErrorCode::Replaced.into()));
        assert!(laptop.try_recv().is_err(), "other devices stay");
        routes.detach("bob", 1);
        assert_eq!(routes.online_users(), 1);
        let mut sessions = routes.sessions();
        sessions.sort();
        assert_eq!(
            sessions,
            [
                ("bob".into(), "laptop".into(), 2),
                ("bob".into(), "phone".into(), 3)
            ]
        );
        routes.kick("bob", "laptop", 99, ErrorCode::Replaced);
        assert!(
            laptop.try_recv().is_err(),
            "another session id is not kicked"
        );
        routes.kick("bob", "laptop", 2, ErrorCode::Replaced);
        assert_eq!(laptop.try_recv(), Ok(ErrorCode::Replaced.into()));
        routes.detach("bob", 2);
        routes.detach("bob", 3);
        assert_eq!(routes.online_users(), 0);
    }

    #[test]
    fn a_revocation_ends_the_sessions_of_older_tokens() {
        let routes = Routes::default();
        let token = |at| Arc::new(AtomicU64::new(at));
        let attach = |device, id, issued: &Arc<AtomicU64>| {
            routes
                .attach_with_policy(
                    "bob",
                    device,
                    id,
                    None,
                    DevicePolicy::Unlimited,
                    Arc::clone(issued),
                )
                .1
        };
        let (old, fresh, refreshed) = (token(10), token(20), token(10));
        let mut old_session = attach("phone", 1, &old);
        let mut fresh_session = attach("laptop", 2, &fresh);
        let mut refreshed_session = attach("tablet", 3, &refreshed);
        refreshed.store(30, Ordering::Release);
        routes.revoke("alice", 100);
        routes.revoke("bob", 20);
        assert_eq!(old_session.try_recv(), Ok(ErrorCode::TokenRevoked.into()));
        assert!(fresh_session.try_recv().is_err(), "issued at the mark");
        assert!(refreshed_session.try_recv().is_err(), "took a newer token");
    }
}
