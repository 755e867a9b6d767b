//! Per-node delivery queues: how a node that stored a message tells the
//! nodes holding the recipient's sessions, and how a node tells another to
//! end an older session of a device that logged in again elsewhere.
//!
//! Each node reads its own Redis Stream, `{P:q:NODE}`, through the consumer
//! group `deliver`. An entry stays in the group's pending list until the
//! reader acknowledges it (XACK), which the gateway does only after its
//! local delivery path has the message; a node restarted with the same id
//! reads its pending entries first. The hand-off is therefore at least once;
//! the gateway's feeds ignore seqs they have and the SDK drops duplicates.
//!
//! # Bounds
//! Every XADD trims the stream to about [`QueueConfig::max_len`] entries
//! (`MAXLEN ~`, which trims whole macro nodes and may keep a little more).
//! Trimming only bites when a node is that far behind or dead: a trimmed
//! hand-off is a message that is durable in the message store but was not
//! pushed live; its recipient gets it with the next message to the same
//! inbox (the delivery task reads the gap from the store) or on reconnect.
//! Each write also renews the key's TTL ([`QueueConfig::ttl_ms`]), so the
//! queue of a node that died for good disappears, while the registry no
//! longer lists it and nobody writes to it.

use bytes::Bytes;
use fred::interfaces::{KeysInterface as _, StreamsInterface as _};
use fred::types::Value;
use prost::Message as _;
use qim_proto::v1;

use super::{Redis, is_key_part, unavailable};
use crate::{StoreError, StoredMessage};

/// The consumer group every node reads its queue through.
const GROUP: &str = "deliver";

/// Bounds of the delivery queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Entries kept per queue (approximately, `MAXLEN ~`); older ones are
    /// trimmed.
    pub max_len: u64,
    /// A queue nobody writes to disappears after this long.
    pub ttl_ms: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            ttl_ms: 24 * 3600 * 1000,
        }
    }
}

/// What one node asks of another.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Handoff {
    /// A message was stored for a user with a session on the target node.
    Message(Box<StoredMessage>),
    /// End session `session` of a device on the target node: with
    /// REPLACED when the same device logged in elsewhere, with KICKED when
    /// another device's login excludes it under the device policy.
    Kick {
        /// The user.
        user: String,
        /// The device.
        device: String,
        /// The session on the target node.
        session: u64,
        /// A device-policy kick (KICKED) rather than a replacement.
        policy: bool,
    },
    /// End every session of `user` on the target node whose token was
    /// issued before `before` (unix seconds), with TOKEN_REVOKED.
    Revoke {
        /// The user.
        user: String,
        /// The revocation mark.
        before: u64,
    },
}

impl Handoff {
    fn fields(&self) -> Vec<(&'static str, Value)> {
        match self {
            Handoff::Message(m) => {
                let entry = v1::InboxEntry {
                    seq: m.seq,
                    message: Some(m.message.clone()),
                };
                vec![
                    ("k", Value::from("m")),
                    ("i", Value::from(m.inbox.clone())),
                    ("d", Value::Bytes(Bytes::from(entry.encode_to_vec()))),
                ]
            }
            Handoff::Kick {
                user,
                device,
                session,
                policy,
            } => vec![
                ("k", Value::from("x")),
                ("i", Value::from(user.clone())),
                ("v", Value::from(device.clone())),
                ("s", Value::from(session.to_string())),
                ("p", Value::from(if *policy { "1" } else { "0" })),
            ],
            Handoff::Revoke { user, before } => vec![
                ("k", Value::from("r")),
                ("i", Value::from(user.clone())),
                ("b", Value::from(before.to_string())),
            ],
        }
    }

    fn parse(fields: &std::collections::HashMap<String, Value>) -> Result<Handoff, StoreError> {
        let text = |name: &str| {
            fields
                .get(name)
                .and_then(|v| v.as_bytes())
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned)
                .ok_or_else(|| StoreError::Corrupt(format!("hand-off without {name:?}")))
        };
        match text("k")?.as_str() {
            "m" => {
                let inbox = text("i")?;
                let data = fields
                    .get("d")
                    .and_then(|v| v.as_bytes())
                    .ok_or_else(|| StoreError::Corrupt("hand-off without data".into()))?;
                let entry = v1::InboxEntry::decode(data)
                    .map_err(|e| StoreError::Corrupt(format!("hand-off message: {e}")))?;
                let message = entry
                    .message
                    .ok_or_else(|| StoreError::Corrupt("hand-off without message".into()))?;
                Ok(Handoff::Message(Box::new(StoredMessage {
                    inbox,
                    seq: entry.seq,
                    message,
                })))
            }
            "x" => Ok(Handoff::Kick {
                user: text("i")?,
                device: text("v")?,
                session: text("s")?
                    .parse()
                    .map_err(|_| StoreError::Corrupt("hand-off kick session".into()))?,
                // Entries written before the field existed are replacements.
                policy: text("p").is_ok_and(|p| p == "1"),
            }),
            "r" => Ok(Handoff::Revoke {
                user: text("i")?,
                before: text("b")?
                    .parse()
                    .map_err(|_| StoreError::Corrupt("hand-off revocation mark".into()))?,
            }),
            other => Err(StoreError::Corrupt(format!("hand-off kind {other:?}"))),
        }
    }
}

/// One entry read from a queue.
#[derive(Debug)]
pub struct Entry {
    /// The stream id, to acknowledge.
    pub id: String,
    /// The hand-off, or why it could not be read (acknowledge it anyway:
    /// it will not get better).
    pub handoff: Result<Handoff, StoreError>,
}

impl Redis {
    fn queue_key(&self, node: &str) -> String {
        self.key(&format!("q:{node}"), "")
    }

    /// Appends hand-offs to the queues of their nodes, in one pipeline.
    pub async fn push(
        &self,
        handoffs: &[(String, Handoff)],
        config: QueueConfig,
    ) -> Result<(), StoreError> {
        if handoffs.is_empty() {
            return Ok(());
        }
        let pipeline = self.client.pipeline();
        let mut touched: Vec<&str> = Vec::new();
        for (node, handoff) in handoffs {
            if !is_key_part(node) {
                return Err(StoreError::Invalid(format!("node id {node:?}")));
            }
            let cap = ("MAXLEN", "~", config.max_len as i64, None);
            let _: () = pipeline
                .xadd(self.queue_key(node), false, cap, "*", handoff.fields())
                .await
                .map_err(unavailable)?;
            if !touched.contains(&node.as_str()) {
                touched.push(node);
            }
        }
        for node in touched {
            let _: () = pipeline
                .pexpire(self.queue_key(node), config.ttl_ms, None)
                .await
                .map_err(unavailable)?;
        }
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    /// Deletes a node's queue (graceful shutdown, after its sessions left).
    pub async fn delete_queue(&self, node: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client
            .del(self.queue_key(node))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A reader of `node`'s queue, on a connection of its own (its reads
    /// block).
    pub async fn consumer(&self, node: &str) -> Result<Consumer, StoreError> {
        if !is_key_part(node) {
            return Err(StoreError::Invalid(format!("node id {node:?}")));
        }
        Ok(Consumer {
            client: self.dedicated().await?,
            key: self.queue_key(node),
            name: node.to_owned(),
            pending_first: true,
        })
    }
}

/// Reads one node's queue.
pub struct Consumer {
    client: fred::clients::Client,
    key: String,
    name: String,
    /// Entries read by an earlier run of this node but never acknowledged
    /// are read first.
    pending_first: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The entries of an XREADGROUP reply on one stream: nil (timed out), or
/// `[[key, [[id, [field, value, ...]], ...]]]` (a map in RESP3). A deleted
/// entry still pending has nil fields; it is reported as corrupt.
fn parse_read(reply: Value) -> Result<Vec<Entry>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("XREADGROUP reply: {what}"));
    let streams: Vec<Value> = match reply {
        Value::Null => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().collect(),
        _ => return Err(bad("not an array")),
    };
    let mut out = Vec::new();
    for records in streams {
        let Value::Array(records) = records else {
            continue;
        };
        for record in records {
            let Value::Array(mut parts) = record else {
                return Err(bad("record is not an array"));
            };
            if parts.len() != 2 {
                return Err(bad("record is not [id, fields]"));
            }
            let fields = parts.pop().unwrap_or(Value::Null);
            let id = parts
                .pop()
                .and_then(|v| v.as_string())
                .ok_or_else(|| bad("record id"))?;
            let handoff = match fields {
                Value::Array(flat) => {
                    let mut map = std::collections::HashMap::new();
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let Some(k) = k.as_string() {
                            map.insert(k, v);
                        }
                    }
                    Handoff::parse(&map)
                }
                _ => Err(StoreError::Corrupt("hand-off was deleted".into())),
            };
            out.push(Entry { id, handoff });
        }
    }
    Ok(out)
}

impl Consumer {
    /// Up to `max` entries, waiting up to `block_ms` for the first (keep it
    /// below the command timeout). Creates the stream and group when
    /// missing (first start, or Redis lost them).
    pub async fn next(&mut self, max: u64, block_ms: u64) -> Result<Vec<Entry>, StoreError> {
        loop {
            let (id, block) = if self.pending_first {
                ("0", None)
            } else {
                (">", Some(block_ms))
            };
            let read: Result<Value, _> = self
                .client
                .xreadgroup(
                    GROUP,
                    self.name.as_str(),
                    Some(max),
                    block,
                    false,
                    self.key.as_str(),
                    id,
                )
                .await;
            let read = match read {
                Ok(read) => read,
                Err(e) if e.details().contains("NOGROUP") => {
                    self.create_group().await?;
                    continue;
                }
                Err(e) => return Err(unavailable(e)),
            };
            let entries = parse_read(read)?;
            if self.pending_first && entries.is_empty() {
                self.pending_first = false;
                continue;
            }
            return Ok(entries);
        }
    }

    async fn create_group(&self) -> Result<(), StoreError> {
        // From the start of the stream: whatever is in a node's queue is
        // for that node.
        match self
            .client
            .xgroup_create::<Value, _, _, _>(self.key.as_str(), GROUP, "0", true)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Acknowledges entries: the local delivery path has them.
    pub async fn ack(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .client
            .xack(self.key.as_str(), GROUP, ids.to_vec())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Closes the consumer's connection.
    pub async fn quit(&self) {
        use fred::interfaces::ClientLike as _;
        let _ = self.client.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoffs_round_trip_and_garbage_is_corrupt() {
        let message = StoredMessage {
            inbox: "bob".into(),
            seq: 7,
            message: v1::Message {
                msg_id: "m".into(),
                body: Bytes::from_static(b"hi"),
                ..Default::default()
            },
        };
        for handoff in [
            Handoff::Message(Box::new(message)),
            Handoff::Kick {
                user: "bob".into(),
                device: "phone".into(),
                session: 3,
                policy: true,
            },
            Handoff::Revoke {
                user: "john.smith".into(),
                before: 1_800_000_000,
            },
        ] {
            let fields = handoff
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(Handoff::parse(&fields).expect("parses"), handoff);
        }
        let mut fields = std::collections::HashMap::new();
        fields.insert("k".to_owned(), Value::from("m"));
        fields.insert("i".to_owned(), Value::from("bob"));
        fields.insert("d".to_owned(), Value::from("\u{ff}garbage"));
        assert!(matches!(
            Handoff::parse(&fields),
            Err(StoreError::Corrupt(_))
        ));
    }
}
