//! Records that cross the [`MessageStore`](crate::MessageStore) trait.

use bytes::Bytes;
use qim_proto::v1;

/// A message to append to one inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// The user whose inbox receives the message.
    pub inbox: String,
    /// Sending user; with `client_msg_id`, the idempotency key.
    pub sender: String,
    /// Sending device, so the sender's other devices can tell copies apart.
    pub sender_device: String,
    /// The sender's id for this message.
    pub client_msg_id: String,
    /// The addressee as the sender wrote it (user or group).
    pub to: v1::Peer,
    /// Application content type.
    pub kind: String,
    /// Opaque body.
    pub body: Bytes,
    /// Server receive time, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
}

/// A message as stored in an inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Inbox the message is in.
    pub inbox: String,
    /// Position in the inbox.
    pub seq: u64,
    /// The message as recipients see it.
    pub message: v1::Message,
}

impl StoredMessage {
    /// Builds the stored form of `new`, with its assigned seq and id.
    pub fn from_new(new: NewMessage, seq: u64, msg_id: String) -> Self {
        StoredMessage {
            seq,
            message: v1::Message {
                msg_id,
                from_user: new.sender,
                from_device: new.sender_device,
                client_msg_id: new.client_msg_id,
                to: Some(new.to),
                kind: new.kind,
                body: new.body,
                server_time_ms: new.server_time_ms,
                ..Default::default()
            },
            inbox: new.inbox,
        }
    }
}

/// The outcome of appending one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored message: the new one, or the original for a duplicate.
    pub message: StoredMessage,
    /// True when `(sender, client_msg_id)` was already stored.
    pub duplicate: bool,
}

/// A new message id: 48 bits of milliseconds then 80 random bits, as 32 hex
/// digits, so ids sort roughly by time and never collide in practice.
pub fn new_msg_id(now_ms: i64) -> String {
    msg_id_with_tail(now_ms, rand::random::<u128>())
}

/// A message id of `now_ms` whose low 80 bits are `tail`'s: a backend that
/// derives them from the send (the embedded store does, to find the send's
/// record from its id) keeps the same shape as [`new_msg_id`].
pub fn msg_id_with_tail(now_ms: i64, tail: u128) -> String {
    let time = (now_ms.max(0) as u128) & ((1u128 << 48) - 1);
    format!("{:032x}", (time << 80) | (tail & ((1u128 << 80) - 1)))
}
