//! Signals between the nodes of a cluster: what every node may need to
//! hear at once and nobody needs later.
//!
//! - **Presence**: a user went online (first device) or offline (last
//!   device); each node pushes it to the sessions it holds that watch the
//!   user.
//! - **Typing** (or any other [`v1::Signal`] for named users): each node
//!   pushes it to the sessions it holds of those users.
//! - **Group log entries** of read-diffusion groups: each node pushes the
//!   entry to the sessions it holds that follow the group, except those of
//!   the users the entry is hidden from (who blocked its sender).
//! - **Presence unwatch**: two users stopped being friends (or one blocked
//!   the other); each node stops pushing either one's presence to the
//!   other's sessions.
//! - **Group follower changes** (members joined or left, the group switched
//!   to read diffusion or was dissolved): each node makes the sessions it
//!   holds follow or stop following the group, so a removed member stops
//!   receiving on every node at once.
//!
//! All of it travels over one Redis pub/sub channel, `{P:signals}`, which
//! every node subscribes to with a dedicated connection (a
//! [`SubscriberClient`] that subscribes again after a reconnect).
//!
//! # Guarantees, and why they are enough
//! Pub/sub is at most once: a node that is disconnected from Redis misses
//! what was published meanwhile. That is the contract of these signals
//! anyway: presence and typing are never stored or resent, and a group log
//! entry is durable in the group's log before it is announced, so a member
//! that missed the push pulls it (every push and nudge names the log's
//! head, and the SDK pulls gaps). Every signal carries the node that
//! published it, so the publisher, which has already pushed to its own
//! sessions, skips its own.

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike as _, EventInterface as _, PubsubInterface as _};
use fred::types::Value;
use prost::Message as _;
use qim_proto::v1;
use tokio::sync::broadcast;

use super::{Redis, builder, init, unavailable};
use crate::{StoreError, StoredMessage};

/// A signal for every node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Signal {
    /// A user's aggregate presence changed.
    Presence(v1::PresenceStatus),
    /// A signal for the sessions of `users`.
    ToUsers {
        /// The users whose sessions get it.
        users: Vec<String>,
        /// What they get.
        signal: v1::Signal,
    },
    /// A durable entry of a read-diffusion group's log.
    GroupEntry {
        /// The group.
        group: String,
        /// The entry (inbox: the group's log).
        message: Box<StoredMessage>,
        /// Users it is not pushed to (they blocked its sender).
        hidden: Vec<String>,
    },
    /// Neither user's sessions watch the other's presence any more.
    Unwatch {
        /// One user.
        a: String,
        /// The other.
        b: String,
    },
    /// Who follows a read-diffusion group changed.
    GroupFollow {
        /// The group.
        group: String,
        /// How.
        change: FollowChange,
    },
}

/// A change of a read-diffusion group's followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowChange {
    /// The group was dissolved: nobody follows it.
    Dissolved,
    /// These users left or were removed.
    Leave(Vec<String>),
    /// These users joined (or the group was created with them).
    Join(Vec<String>),
    /// The group switched to read diffusion: every online member follows.
    All,
}

/// The wire form of a [`Signal`] on the channel.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    /// The publishing node.
    #[prost(string, tag = "1")]
    origin: String,
    #[prost(oneof = "Body", tags = "2, 3, 4, 5, 6")]
    body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Body {
    #[prost(message, tag = "2")]
    Presence(v1::PresenceStatus),
    #[prost(message, tag = "3")]
    ToUsers(ToUsers),
    #[prost(message, tag = "4")]
    GroupEntry(Box<GroupEntry>),
    #[prost(message, tag = "5")]
    GroupFollow(GroupFollow),
    #[prost(message, tag = "6")]
    Unwatch(Unwatch),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Unwatch {
    #[prost(string, tag = "1")]
    a: String,
    #[prost(string, tag = "2")]
    b: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GroupFollow {
    #[prost(string, tag = "1")]
    group: String,
    /// 0 dissolved, 1 leave, 2 join, 3 all.
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(string, repeated, tag = "3")]
    users: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ToUsers {
    #[prost(string, repeated, tag = "1")]
    users: Vec<String>,
    #[prost(message, optional, tag = "2")]
    signal: Option<v1::Signal>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GroupEntry {
    #[prost(string, tag = "1")]
    group: String,
    #[prost(string, tag = "2")]
    inbox: String,
    #[prost(message, optional, tag = "3")]
    entry: Option<v1::InboxEntry>,
    #[prost(string, repeated, tag = "4")]
    hidden: Vec<String>,
}

fn encode(origin: &str, signal: &Signal) -> Vec<u8> {
    let body = match signal {
        Signal::Presence(p) => Body::Presence(p.clone()),
        Signal::ToUsers { users, signal } => Body::ToUsers(ToUsers {
            users: users.clone(),
            signal: Some(signal.clone()),
        }),
        Signal::GroupEntry {
            group,
            message,
            hidden,
        } => Body::GroupEntry(Box::new(GroupEntry {
            group: group.clone(),
            inbox: message.inbox.clone(),
            entry: Some(v1::InboxEntry {
                seq: message.seq,
                message: Some(message.message.clone()),
            }),
            hidden: hidden.clone(),
        })),
        Signal::Unwatch { a, b } => Body::Unwatch(Unwatch {
            a: a.clone(),
            b: b.clone(),
        }),
        Signal::GroupFollow { group, change } => {
            let (kind, users) = match change {
                FollowChange::Dissolved => (0, Vec::new()),
                FollowChange::Leave(u) => (1, u.clone()),
                FollowChange::Join(u) => (2, u.clone()),
                FollowChange::All => (3, Vec::new()),
            };
            Body::GroupFollow(GroupFollow {
                group: group.clone(),
                kind,
                users,
            })
        }
    };
    Envelope {
        origin: origin.to_owned(),
        body: Some(body),
    }
    .encode_to_vec()
}

fn decode(bytes: &[u8]) -> Result<(String, Signal), StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("signal: {what}"));
    let envelope = Envelope::decode(bytes).map_err(|e| corrupt(&e.to_string()))?;
    let signal = match envelope.body.ok_or_else(|| corrupt("no body"))? {
        Body::Presence(p) => Signal::Presence(p),
        Body::ToUsers(t) => Signal::ToUsers {
            users: t.users,
            signal: t.signal.ok_or_else(|| corrupt("no signal"))?,
        },
        Body::GroupEntry(g) => {
            let entry = g.entry.ok_or_else(|| corrupt("no entry"))?;
            Signal::GroupEntry {
                group: g.group,
                message: Box::new(StoredMessage {
                    inbox: g.inbox,
                    seq: entry.seq,
                    message: entry.message.ok_or_else(|| corrupt("no message"))?,
                }),
                hidden: g.hidden,
            }
        }
        Body::Unwatch(u) => Signal::Unwatch { a: u.a, b: u.b },
        Body::GroupFollow(f) => Signal::GroupFollow {
            group: f.group,
            change: match f.kind {
                0 => FollowChange::Dissolved,
                1 => FollowChange::Leave(f.users),
                2 => FollowChange::Join(f.users),
                3 => FollowChange::All,
                _ => return Err(corrupt("unknown follow change")),
            },
        },
    };
    Ok((envelope.origin, signal))
}

/// This node's subscription to the signal channel.
pub struct Signals {
    client: SubscriberClient,
    rx: broadcast::Receiver<fred::types::Message>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Redis {
    fn signal_channel(&self) -> String {
        format!("{{{}:signals}}", self.prefix)
    }

    /// Publishes `signal` from node `origin` to every node (at most once).
    pub async fn publish_signal(&self, origin: &str, signal: &Signal) -> Result<(), StoreError> {
        let payload = Value::Bytes(Bytes::from(encode(origin, signal)));
        let _receivers: i64 = self
            .client
            .publish(self.signal_channel(), payload)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Subscribes to the signal channel on a dedicated connection, which
    /// subscribes again by itself after a reconnect.
    pub async fn subscribe_signals(&self) -> Result<Signals, StoreError> {
        let client = builder(&self.config)?
            .build_subscriber_client()
            .map_err(|e| StoreError::Invalid(format!("redis subscriber: {e}")))?;
        init(&client, self.timeout).await?;
        let _resubscribe = client.manage_subscriptions();
        let rx = client.message_rx();
        if let Err(e) = client.subscribe(self.signal_channel()).await {
            let _ = client.quit().await;
            return Err(unavailable(e));
        }
        Ok(Signals { client, rx })
    }
}

impl Signals {
    /// The next signal and the node that published it; `None` once the
    /// subscription is closed. Unreadable payloads are skipped with a log
    /// line; a receiver that fell behind skips what it lost.
    pub async fn next(&mut self) -> Option<(String, Signal)> {
        loop {
            match self.rx.recv().await {
                Ok(message) => {
                    let Some(bytes) = message.value.as_bytes() else {
                        tracing::warn!("signal without a payload dropped");
                        continue;
                    };
                    match decode(bytes) {
                        Ok(decoded) => return Some(decoded),
                        Err(e) => tracing::warn!(error = %e, "unreadable signal dropped"),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fell behind on cluster signals");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Unsubscribes and closes the connection.
    pub async fn quit(self) {
        let _ = self.client.unsubscribe_all().await;
        let _ = self.client.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_garbage_is_an_error() {
        let signals = [
            Signal::Presence(v1::PresenceStatus {
                user: "alice".into(),
                online: true,
                last_seen_ms: 0,
            }),
            Signal::ToUsers {
                users: vec!["bob".into(), "carol".into()],
                signal: v1::Signal::default(),
            },
            Signal::GroupEntry {
                group: "g1".into(),
                message: Box::new(StoredMessage {
                    inbox: "#g1".into(),
                    seq: 7,
                    message: v1::Message {
                        msg_id: "m".into(),
                        ..Default::default()
                    },
                }),
                hidden: vec!["carol".into()],
            },
            Signal::Unwatch {
                a: "alice".into(),
                b: "bob".into(),
            },
            Signal::GroupFollow {
                group: "g1".into(),
                change: FollowChange::Leave(vec!["bob".into()]),
            },
            Signal::GroupFollow {
                group: "g1".into(),
                change: FollowChange::All,
            },
        ];
        for signal in signals {
            let (origin, back) = decode(&encode("node-a", &signal)).expect("decodes");
            assert_eq!(origin, "node-a");
            assert_eq!(back, signal);
        }
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(
            decode(&[]).is_err(),
            "an envelope without a body is refused"
        );
    }
}
