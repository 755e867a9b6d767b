//! The only way a durable entry reaches sessions, on this node and on the
//! others.
//!
//! Every entry a store call made durable (a chat copy, an event, a
//! scheduled send when it fires, a read-diffusion group's log entry) is
//! handed to [`Fanout::deliver`] after the call returned:
//! - an inbox entry goes to the feed of its inbox here ([`Routes`]), whose
//!   device sessions deliver it with acks and retransmits, and, in a
//!   cluster, to the forwarder that queues it for the nodes holding a
//!   session of that inbox;
//! - a group log entry (inbox `#<group>`) goes to the sessions here that
//!   follow the group ([`Registry::publish_group`]), and to the other nodes
//!   as a signal (best effort: a member that missed it pulls it), except to
//!   the members who blocked its sender: who they are is read once per
//!   entry from the reverse block index and travels with the signal. When
//!   that read fails the entry is pushed to nobody (members pull it with
//!   the next entry or nudge) rather than to a blocker.
//!
//! Signals (presence changes, typing, who follows a group, who stopped
//! watching whose presence) cross nodes here too, best effort. What other nodes send comes back through
//! [`Fanout::receive`], which hands it to the same local halves. Entries are published only after they
//! are durable, so a session that misses one reads it from the store.

use std::sync::Arc;

use qim_proto::v1;
use qim_storage::redis::signals::{FollowChange, Signal};
use qim_storage::{ContactStore, GroupStore, StoredMessage};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::cluster::{Cluster, Inbound};
use crate::metrics::Metrics;
use crate::push::Registry;
use crate::route::Routes;

/// Where durable entries go.
pub(crate) struct Fanout {
    /// Device sessions on this node, by inbox.
    routes: Arc<Routes>,
    /// Best-effort pushes on this node (group logs, presence, typing).
    push: Arc<Registry>,
    /// The other nodes, in a cluster.
    cluster: Option<Arc<Cluster>>,
    /// Who blocked a group entry's sender (not pushed to them).
    contacts: Arc<dyn ContactStore>,
    metrics: Arc<Metrics>,
    /// Offline push's queue: the chat messages and friend requests stored
    /// on this node, for devices without a live session.
    offline: mpsc::Sender<Arc<StoredMessage>>,
}

impl Fanout {
    /// The fan-out over this node's sessions and, with `cluster`, the
    /// other nodes.
    pub(crate) fn new(
        routes: Arc<Routes>,
        push: Arc<Registry>,
        cluster: Option<Arc<Cluster>>,
        contacts: Arc<dyn ContactStore>,
        metrics: Arc<Metrics>,
        offline: mpsc::Sender<Arc<StoredMessage>>,
    ) -> Self {
        Self {
            routes,
            push,
            cluster,
            contacts,
            metrics,
            offline,
        }
    }

    /// Queues `entry` for offline push when it is one (a chat message or
    /// a friend request); a full queue drops it (counted).
    fn offer_offline(&self, entry: &Arc<StoredMessage>) {
        let wanted = match entry.message.event.as_ref().and_then(|e| e.kind.as_ref()) {
            None => !entry.message.from_user.is_empty(),
            Some(kind) => matches!(kind, v1::inbox_event::Kind::FriendRequest(_)),
        };
        if wanted && self.offline.try_send(Arc::clone(entry)).is_err() {
            self.metrics
                .pushes_not_sent
                .get_or_create(&vec![("reason", "queue_full")])
                .inc();
        }
    }

    /// Hands a durable entry to the sessions of its inbox, here and on the
    /// other nodes. Waits while the cluster forwarder's queue is full
    /// (backpressure to whoever stores entries).
    pub(crate) async fn deliver(&self, entry: Arc<StoredMessage>) {
        self.offer_offline(&entry);
        if let Some(group) = entry.inbox.strip_prefix('#') {
            let sender = &entry.message.from_user;
            let hidden = if sender.is_empty() {
                Vec::new()
            } else {
                match self.contacts.blockers(sender).await {
                    Ok(hidden) => hidden,
                    Err(e) => {
                        warn!(group, error = %e, "reading who blocked a group sender failed; the entry is left to pulls");
                        return;
                    }
                }
            };
            self.push.publish_group(group, Arc::clone(&entry), &hidden);
            if let Some(cluster) = &self.cluster {
                cluster
                    .signal(&Signal::GroupEntry {
                        group: group.to_owned(),
                        message: Box::new((*entry).clone()),
                        hidden,
                    })
                    .await;
            }
            return;
        }
        self.routes.publish(Arc::clone(&entry));
        if let Some(cluster) = &self.cluster {
            cluster.forward(entry).await;
        }
    }

    /// [`deliver`](Self::deliver) for each entry, in order.
    pub(crate) async fn deliver_all(&self, entries: impl IntoIterator<Item = StoredMessage>) {
        for entry in entries {
            self.deliver(Arc::new(entry)).await;
        }
    }

    /// Replaces an entry the sessions here may hold in memory with its
    /// rewritten form (an edit, a recall), so a retransmit or a catch-up
    /// from memory sends the new one. Other nodes read it from the store.
    pub(crate) fn replace(&self, entry: StoredMessage) {
        self.routes.replace(Arc::new(entry));
    }

    /// Pushes a presence change to the watchers here and on the other
    /// nodes (best effort, never stored).
    pub(crate) async fn presence(&self, status: v1::PresenceStatus) {
        self.push.notify_presence(&status);
        if let Some(cluster) = &self.cluster {
            cluster.signal(&Signal::Presence(status)).await;
        }
    }

    /// Stops each of `a` and `b` watching the other's presence, here and on
    /// the other nodes (a friendship ended or a block was set). The signal
    /// is published before this returns, so a presence change announced
    /// after it reaches no node before it.
    pub(crate) async fn unwatch(&self, a: &str, b: &str) {
        self.push.unwatch_pair(a, b);
        if let Some(cluster) = &self.cluster {
            cluster
                .signal(&Signal::Unwatch {
                    a: a.to_owned(),
                    b: b.to_owned(),
                })
                .await;
        }
    }

    /// Offers a signal (typing) to every session of `users`, here and on
    /// the other nodes (best effort, never stored).
    pub(crate) async fn signal_users(&self, users: Vec<String>, signal: v1::Signal) {
        self.push.offer_to_users(&users, &signal);
        if let Some(cluster) = &self.cluster {
            cluster.signal(&Signal::ToUsers { users, signal }).await;
        }
    }

    /// Makes the sessions here and on the other nodes follow a
    /// read-diffusion group's log, or stop, as `change` says.
    pub(crate) async fn refollow(
        &self,
        groups: &dyn GroupStore,
        group: &str,
        change: FollowChange,
    ) {
        self.push.refollow(groups, group, &change).await;
        if let Some(cluster) = &self.cluster {
            cluster
                .signal(&Signal::GroupFollow {
                    group: group.to_owned(),
                    change,
                })
                .await;
        }
    }

    /// Hands what other nodes send to this node's sessions, until the
    /// cluster stops.
    pub(crate) async fn receive(
        &self,
        groups: Arc<dyn GroupStore>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        while let Some(item) = inbound.recv().await {
            match item {
                Inbound::Entry(entry) => {
                    self.metrics.handoffs_received.inc();
                    self.routes.publish(entry);
                }
                Inbound::Kick {
                    user,
                    device,
                    session,
                    code,
                } => self.routes.kick(&user, &device, session, code),
                Inbound::Revoke { user, before } => self.routes.revoke(&user, before),
                Inbound::Signal(Signal::Presence(status)) => self.push.notify_presence(&status),
                Inbound::Signal(Signal::ToUsers { users, signal }) => {
                    self.push.offer_to_users(&users, &signal);
                }
                Inbound::Signal(Signal::GroupEntry {
                    group,
                    message,
                    hidden,
                }) => {
                    self.push.publish_group(&group, Arc::from(message), &hidden);
                }
                Inbound::Signal(Signal::Unwatch { a, b }) => self.push.unwatch_pair(&a, &b),
                Inbound::Signal(Signal::GroupFollow { group, change }) => {
                    self.push.refollow(groups.as_ref(), &group, &change).await;
                }
                Inbound::Signal(other) => debug!(?other, "signal of an unknown kind ignored"),
            }
        }
    }
}
