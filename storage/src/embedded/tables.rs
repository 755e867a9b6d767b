//! The embedded backend's keyspaces, the keys of messages and
//! conversations in them, and reading those records back. (Groups,
//! contacts, schedules and presence describe their own keys.)
//!
//! # Keys
//! - `messages`: `[len u8][inbox][seq u64 BE]` → protobuf `v1.Message`. The
//!   length prefix keeps inbox `ab` from sharing a prefix with `abc`; the
//!   big-endian seq makes a range scan return an inbox in seq order.
//! - `sends`: one row per send, found from `(sender, client_msg_id)` and
//!   from its `msg_id` (see `sends.rs`).
//! - `idempotency`, `msg_ids`: what stores written before `sends` kept
//!   instead, read only when they hold rows ([`Tables::legacy`]):
//!   `[len u8][sender][client_msg_id]` → the message key, followed for a
//!   post by its 16-byte digest; and `[msg_id]` → the copies,
//!   `([len][inbox][seq u64 BE])*`.
//! - `cursors`: `[len u8][inbox][device]` → `u64 BE`.
//! - `conversations`: `[len][user][convkey]` → protobuf `v1.Conversation`
//!   followed by the store's own field 100, the conversation's place in its
//!   owner's list ([`ConvRecord`]).
//! - `conv_order`: `[len][user][0 = pinned | 1][!place u64 BE][convkey]`
//!   → empty; a prefix scan lists conversations in list order.
//! - `conv_msgs`: `[len][user][len][convkey][seq u64 BE]` → one byte, 1 when
//!   the copy counts as unread above the read cursor (from someone else,
//!   not recalled or deleted), else 0. Unread counts are recounted from it.
//! - `quota_bytes`: `[len][user][day u32 BE]` → `u64 BE`, the bytes the
//!   user's posts stored on that UTC day (days since the epoch).
//!
//! `cursors`, `conversations`, `conv_order` and `quota_bytes` hold rows
//! written again with each message rather than added: they get small
//! memtables ([`Rows::Rewritten`]).

use super::kv::{Db, Rows, Table};
use prost::Message as _;
use qim_proto::v1;

use crate::conversations::{DIGEST_BYTES, counts_as_unread};
use crate::{StoreError, StoredMessage};

/// The keyspaces of one database.
#[derive(Clone)]
pub(super) struct Tables {
    pub(super) db: Db,
    pub(super) messages: Table,
    /// One row per send (see `sends.rs`).
    pub(super) sends: Table,
    /// Whether `idempotency` or `msg_ids` held rows when the store opened:
    /// then a send not found in `sends` is looked up there too.
    pub(super) legacy: bool,
    pub(super) idempotency: Table,
    pub(super) cursors: Table,
    pub(super) conversations: Table,
    pub(super) conv_order: Table,
    pub(super) conv_msgs: Table,
    pub(super) msg_ids: Table,
    pub(super) groups: Table,
    pub(super) members: Table,
    pub(super) user_groups: Table,
    pub(super) contacts: Table,
    pub(super) blocks: Table,
    pub(super) blocked_by: Table,
    pub(super) outgoing: Table,
    pub(super) rejections: Table,
    pub(super) scheduled: Table,
    pub(super) schedule_ids: Table,
    pub(super) schedule_owners: Table,
    pub(super) sessions_log: Table,
    pub(super) last_seen: Table,
    /// `[len][recipient][msg_id]` → empty: a delivery receipt was appended.
    pub(super) receipts: Table,
    /// A group's lists (see `groups.rs`).
    pub(super) group_lists: Table,
    /// Each user's pending invitations (see `groups.rs`).
    pub(super) invitations: Table,
    /// Each user's settings (see `groups.rs`).
    pub(super) settings: Table,
    /// Stored bytes per user and UTC day (see the module docs).
    pub(super) quota_bytes: Table,
    /// `[user]` → unix seconds: the user's tokens issued before are refused.
    pub(super) revoked: Table,
    /// `[user]` → the registered account (see `accounts.rs`).
    pub(super) accounts: Table,
    /// Push tokens, who holds each token, preview settings (see `notify.rs`).
    pub(super) push_tokens: Table,
    pub(super) push_token_owners: Table,
    pub(super) push_settings: Table,
    /// Blob records, uploaders, pending uploads and references (see
    /// `media.rs`).
    pub(super) media: Table,
}

impl Tables {
    /// Opens (or creates) every keyspace of `db`, then applies what the
    /// store's log holds past its checkpoint (`kv/log.rs`).
    pub(super) fn open(db: Db) -> Result<Self, StoreError> {
        let keyspace = |name: &'static str| db.table_of(name, Rows::Growing);
        let rewritten = |name: &'static str| db.table_of(name, Rows::Rewritten);
        let idempotency = keyspace("idempotency").map_err(unavailable)?;
        let msg_ids = keyspace("msg_ids").map_err(unavailable)?;
        let legacy = !idempotency.is_empty().map_err(unavailable)?
            || !msg_ids.is_empty().map_err(unavailable)?;
        let tables = Tables {
            messages: keyspace("messages").map_err(unavailable)?,
            sends: keyspace("sends").map_err(unavailable)?,
            legacy,
            idempotency,
            cursors: rewritten("cursors").map_err(unavailable)?,
            conversations: rewritten("conversations").map_err(unavailable)?,
            conv_order: rewritten("conv_order").map_err(unavailable)?,
            conv_msgs: keyspace("conv_msgs").map_err(unavailable)?,
            msg_ids,
            groups: keyspace("groups").map_err(unavailable)?,
            members: keyspace("members").map_err(unavailable)?,
            user_groups: keyspace("user_groups").map_err(unavailable)?,
            contacts: keyspace("contacts").map_err(unavailable)?,
            blocks: keyspace("blocks").map_err(unavailable)?,
            blocked_by: keyspace("blocked_by").map_err(unavailable)?,
            outgoing: keyspace("outgoing").map_err(unavailable)?,
            rejections: keyspace("rejections").map_err(unavailable)?,
            scheduled: keyspace("scheduled").map_err(unavailable)?,
            schedule_ids: keyspace("schedule_ids").map_err(unavailable)?,
            schedule_owners: keyspace("schedule_owners").map_err(unavailable)?,
            sessions_log: keyspace("sessions_log").map_err(unavailable)?,
            last_seen: keyspace("last_seen").map_err(unavailable)?,
            receipts: keyspace("receipts").map_err(unavailable)?,
            group_lists: keyspace("group_lists").map_err(unavailable)?,
            invitations: keyspace("invitations").map_err(unavailable)?,
            settings: keyspace("settings").map_err(unavailable)?,
            quota_bytes: rewritten("quota_bytes").map_err(unavailable)?,
            revoked: keyspace("revoked").map_err(unavailable)?,
            accounts: keyspace("accounts").map_err(unavailable)?,
            push_tokens: keyspace("push_tokens").map_err(unavailable)?,
            push_token_owners: keyspace("push_token_owners").map_err(unavailable)?,
            push_settings: keyspace("push_settings").map_err(unavailable)?,
            media: keyspace("media").map_err(unavailable)?,
            db,
        };
        tables.db.replay_log().map_err(unavailable)?;
        Ok(tables)
    }

    /// Every table with its name.
    pub(super) fn each(&self) -> [(&'static str, &Table); 32] {
        [
            ("messages", &self.messages),
            ("sends", &self.sends),
            ("idempotency", &self.idempotency),
            ("cursors", &self.cursors),
            ("conversations", &self.conversations),
            ("conv_order", &self.conv_order),
            ("conv_msgs", &self.conv_msgs),
            ("msg_ids", &self.msg_ids),
            ("groups", &self.groups),
            ("members", &self.members),
            ("user_groups", &self.user_groups),
            ("contacts", &self.contacts),
            ("blocks", &self.blocks),
            ("blocked_by", &self.blocked_by),
            ("outgoing", &self.outgoing),
            ("rejections", &self.rejections),
            ("scheduled", &self.scheduled),
            ("schedule_ids", &self.schedule_ids),
            ("schedule_owners", &self.schedule_owners),
            ("sessions_log", &self.sessions_log),
            ("last_seen", &self.last_seen),
            ("receipts", &self.receipts),
            ("group_lists", &self.group_lists),
            ("invitations", &self.invitations),
            ("settings", &self.settings),
            ("quota_bytes", &self.quota_bytes),
            ("revoked", &self.revoked),
            ("accounts", &self.accounts),
            ("push_tokens", &self.push_tokens),
            ("push_token_owners", &self.push_token_owners),
            ("push_settings", &self.push_settings),
            ("media", &self.media),
        ]
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn check_key_part(part: &str) -> Result<(), StoreError> {
    if part.is_empty() || part.len() > usize::from(u8::MAX) {
        return Err(StoreError::Invalid(format!(
            "id of {} bytes (1 to 255 allowed)",
            part.len()
        )));
    }
    Ok(())
}

pub(super) fn prefixed(part: &str, extra: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + part.len() + extra);
    // Length checked by `check_key_part` at every entry point.
    key.push(part.len() as u8);
    key.extend_from_slice(part.as_bytes());
    key
}

pub(super) fn message_key(inbox: &str, seq: u64) -> Vec<u8> {
    let mut key = prefixed(inbox, 8);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn idempotency_key(sender: &str, client_msg_id: &str) -> Vec<u8> {
    let mut key = prefixed(sender, client_msg_id.len());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// An idempotency record split into the message key and the digest, if
/// the record has one.
pub(super) fn split_idempotency_value(
    value: &[u8],
) -> Result<(&[u8], Option<[u8; DIGEST_BYTES]>), StoreError> {
    let corrupt = || StoreError::Corrupt("bad idempotency record".into());
    let key_len = 1 + 8 + usize::from(*value.first().ok_or_else(corrupt)?);
    match value.len().checked_sub(key_len) {
        Some(0) => Ok((value, None)),
        Some(DIGEST_BYTES) => {
            let (key, digest) = value.split_at(key_len);
            Ok((key, Some(digest.try_into().map_err(|_| corrupt())?)))
        }
        _ => Err(corrupt()),
    }
}

pub(super) fn quota_key(user: &str, day: u32) -> Vec<u8> {
    let mut key = prefixed(user, 4);
    key.extend_from_slice(&day.to_be_bytes());
    key
}

pub(super) fn cursor_key(inbox: &str, device: &str) -> Vec<u8> {
    let mut key = prefixed(inbox, device.len());
    key.extend_from_slice(device.as_bytes());
    key
}

pub(super) fn split_message_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let corrupt = || StoreError::Corrupt("bad message key".into());
    let (&len, rest) = key.split_first().ok_or_else(corrupt)?;
    let len = usize::from(len);
    if rest.len() != len + 8 {
        return Err(corrupt());
    }
    let inbox = std::str::from_utf8(&rest[..len]).map_err(|_| corrupt())?;
    let seq: [u8; 8] = rest[len..].try_into().map_err(|_| corrupt())?;
    Ok((inbox.to_owned(), u64::from_be_bytes(seq)))
}

pub(super) fn decode_message(
    inbox: &str,
    key: &[u8],
    value: &[u8],
) -> Result<StoredMessage, StoreError> {
    let (_, seq) = split_message_key(key)?;
    let message = v1::Message::decode(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(StoredMessage {
        inbox: inbox.to_owned(),
        seq,
        message,
    })
}

pub(super) fn read_head(messages: &Table, inbox: &str) -> Result<u64, StoreError> {
    match messages.prefix(prefixed(inbox, 0)).next_back() {
        None => Ok(0),
        Some(guard) => {
            let (key, _) = guard.into_inner().map_err(unavailable)?;
            Ok(split_message_key(&key)?.1)
        }
    }
}

pub(super) fn conv_key(user: &str, convkey: &str) -> Vec<u8> {
    let mut key = prefixed(user, convkey.len());
    key.extend_from_slice(convkey.as_bytes());
    key
}

pub(super) fn order_key(user: &str, pinned: bool, place: u64, convkey: &str) -> Vec<u8> {
    let mut key = prefixed(user, 9 + convkey.len());
    key.push(if pinned { 0 } else { 1 });
    key.extend_from_slice(&(!place).to_be_bytes());
    key.extend_from_slice(convkey.as_bytes());
    key
}

pub(super) fn conv_msg_prefix(user: &str, convkey: &str) -> Vec<u8> {
    let mut key = prefixed(user, 1 + convkey.len() + 8);
    key.push(convkey.len() as u8);
    key.extend_from_slice(convkey.as_bytes());
    key
}

pub(super) fn conv_msg_key(user: &str, convkey: &str, seq: u64) -> Vec<u8> {
    let mut key = conv_msg_prefix(user, convkey);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn encode_copies(copies: &[(String, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (inbox, seq) in copies {
        out.push(inbox.len() as u8);
        out.extend_from_slice(inbox.as_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
    }
    out
}

pub(super) fn decode_copies(mut bytes: &[u8]) -> Result<Vec<(String, u64)>, StoreError> {
    let corrupt = || StoreError::Corrupt("bad msg_id index entry".into());
    let mut out = Vec::new();
    while let Some((&len, rest)) = bytes.split_first() {
        let len = usize::from(len);
        if rest.len() < len + 8 {
            return Err(corrupt());
        }
        let inbox = std::str::from_utf8(&rest[..len]).map_err(|_| corrupt())?;
        let seq: [u8; 8] = rest[len..len + 8].try_into().map_err(|_| corrupt())?;
        out.push((inbox.to_owned(), u64::from_be_bytes(seq)));
        bytes = &rest[len + 8..];
    }
    Ok(out)
}

/// A conversation record as this store keeps it: the wire record and its
/// place in the owner's list.
///
/// The place orders the list like `last_seq` does, without changing with
/// every message: a conversation whose newest message is its owner's newest
/// inbox entry is on top of the list, and a message to it leaves its list
/// row alone. A message to any other conversation gives it the message's
/// seq as its place, which tops every other place (each place is at most
/// its conversation's `last_seq`).
#[derive(Debug, Clone)]
pub(super) struct ConvRecord {
    pub(super) conv: v1::Conversation,
    pub(super) place: u64,
}

/// The store's own field after the wire record's bytes: protobuf decoders
/// skip a field they do not know, so the record still decodes as a
/// `v1.Conversation`, and this decodes from the same bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct ListPlace {
    #[prost(uint64, optional, tag = "100")]
    place: Option<u64>,
}

/// [`ListPlace`]'s field.
const PLACE_TAG: u32 = 100;

impl ConvRecord {
    /// A record written before places were kept sits at its `last_seq`.
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let conv = decode_wire(bytes)?;
        let place = ListPlace::decode(bytes)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .place;
        Ok(Self {
            place: place.unwrap_or(conv.last_seq),
            conv,
        })
    }

    /// The record's row in `conv_order`.
    pub(super) fn order_key(&self, user: &str, convkey: &str) -> Vec<u8> {
        order_key(user, self.conv.pinned, self.place, convkey)
    }
}

/// A record's bytes: the wire record, then its place.
pub(super) fn encode_record(conv: &v1::Conversation, place: u64) -> Vec<u8> {
    let mut out = conv.encode_to_vec();
    prost::encoding::uint64::encode(PLACE_TAG, &place, &mut out);
    out
}

pub(super) fn load_record(
    conversations: &Table,
    user: &str,
    convkey: &str,
) -> Result<Option<ConvRecord>, StoreError> {
    let value = conversations
        .get(conv_key(user, convkey))
        .map_err(unavailable)?;
    value.map(|v| ConvRecord::decode(&v)).transpose()
}

/// The wire record alone, for readers that do not need its place.
pub(super) fn load_conv(
    conversations: &Table,
    user: &str,
    convkey: &str,
) -> Result<Option<v1::Conversation>, StoreError> {
    let value = conversations
        .get(conv_key(user, convkey))
        .map_err(unavailable)?;
    value.map(|v| decode_wire(&v)).transpose()
}

fn decode_wire(bytes: &[u8]) -> Result<v1::Conversation, StoreError> {
    v1::Conversation::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Messages of a group log after `after` that count as unread for `user`.
pub(super) fn count_log_unread(
    messages: &Table,
    log: &str,
    user: &str,
    after: u64,
) -> Result<u32, StoreError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(0);
    };
    let mut n: u32 = 0;
    for guard in messages.range(message_key(log, first)..=message_key(log, u64::MAX)) {
        let (_, value) = guard.into_inner().map_err(unavailable)?;
        let m =
            v1::Message::decode(value.as_ref()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if counts_as_unread(user, &m) {
            n = n.saturating_add(1);
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::kv::{Db, Engine};
    use super::Tables;

    /// `each` names every table the store makes (what a soak counts).
    #[test]
    fn each_lists_every_table() {
        for engine in Engine::ALL {
            let dir = tempfile::tempdir().expect("tempdir");
            let db =
                Db::open(dir.path(), engine, crate::embedded::DEFAULT_CACHE_BYTES).expect("open");
            let tables = Tables::open(db.clone()).expect("tables");
            let mut listed: Vec<String> =
                tables.each().iter().map(|(n, _)| n.to_string()).collect();
            let mut held = db.table_names().expect("names");
            listed.sort();
            held.sort();
            assert_eq!(listed, held, "{engine}");
        }
    }
}
