//! The CQL statements of conversations and groups (tables of schema
//! migration 2), prepared once, and the conversation row they read. Reads
//! are in `conversations.rs`, writes go through
//! [`Writes`](super::writes::Writes) (`writes.rs`), groups are read and
//! changed in `groups.rs`.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::codec::{corrupt, prepare, seq_from_cql};
use crate::StoreError;

/// The IM statements, prepared once.
pub(crate) struct ImStatements {
    pub(super) conv_insert: PreparedStatement,
    pub(super) conv_group_insert: PreparedStatement,
    pub(super) conv_read_seq: PreparedStatement,
    pub(super) conv_oldest: PreparedStatement,
    pub(super) conv_flags: PreparedStatement,
    pub(super) conv_get: PreparedStatement,
    pub(super) conv_list: PreparedStatement,
    pub(super) idx_insert: PreparedStatement,
    pub(super) idx_last: PreparedStatement,
    pub(super) idx_desc: PreparedStatement,
    pub(super) idx_asc: PreparedStatement,
    pub(super) unread_insert: PreparedStatement,
    pub(super) unread_delete: PreparedStatement,
    pub(super) unread_count: PreparedStatement,
    pub(super) copies_insert: PreparedStatement,
    pub(super) copies_read: PreparedStatement,
    pub(super) inbox_desc: PreparedStatement,
    pub(super) group_get: PreparedStatement,
    pub(super) group_get_serial: PreparedStatement,
    pub(super) group_create: PreparedStatement,
    pub(super) group_update: PreparedStatement,
    pub(super) group_check: PreparedStatement,
    pub(super) member_get: PreparedStatement,
    pub(super) member_put: PreparedStatement,
    pub(super) member_delete: PreparedStatement,
    pub(super) members_after: PreparedStatement,
    pub(super) group_rows: PreparedStatement,
    pub(super) listed_range: PreparedStatement,
    pub(super) invitation_put: PreparedStatement,
    pub(super) invitation_delete: PreparedStatement,
    pub(super) invitations: PreparedStatement,
    pub(super) settings_put: PreparedStatement,
    pub(super) settings_get: PreparedStatement,
    pub(super) user_group_put: PreparedStatement,
    pub(super) user_group_delete: PreparedStatement,
    pub(super) user_groups: PreparedStatement,
    pub(super) cursor_set: PreparedStatement,
    pub(super) cursor_get: PreparedStatement,
    pub(super) cursors: PreparedStatement,
}

impl ImStatements {
    pub(crate) async fn prepare(session: &Arc<Session>) -> Result<Self, StoreError> {
        let prepare = |cql, consistency, idempotent| prepare(session, cql, consistency, idempotent);
        use Consistency::{LocalQuorum as Q, LocalSerial as S};
        Ok(ImStatements {
            conv_insert: prepare(
                "INSERT INTO im_conversations (owner, peer) VALUES (?, ?)",
                Q,
                true,
            )
            .await?,
            conv_group_insert: prepare(
                "INSERT INTO im_conversations (owner, peer, created_ms) VALUES (?, ?, ?)",
                Q,
                true,
            )
            .await?,
            conv_read_seq: prepare(
                "UPDATE im_conversations USING TIMESTAMP ? SET read_seq = ? WHERE owner = ? AND peer = ?",
                Q,
                true,
            )
            .await?,
            conv_oldest: prepare(
                "UPDATE im_conversations USING TIMESTAMP ? SET oldest_ms = ? WHERE owner = ? AND peer = ?",
                Q,
                true,
            )
            .await?,
            conv_flags: prepare(
                "UPDATE im_conversations SET pinned = ?, muted = ? WHERE owner = ? AND peer = ?",
                Q,
                true,
            )
            .await?,
            conv_get: prepare(
                "SELECT peer, created_ms, read_seq, pinned, muted, oldest_ms FROM im_conversations WHERE owner = ? AND peer = ?",
                Q,
                true,
            )
            .await?,
            conv_list: prepare(
                "SELECT peer, created_ms, read_seq, pinned, muted, oldest_ms FROM im_conversations WHERE owner = ?",
                Q,
                true,
            )
            .await?,
            idx_insert: prepare(
                "INSERT INTO im_conv_messages (owner, peer, seq) VALUES (?, ?, ?) USING TTL ?",
                Q,
                true,
            )
            .await?,
            idx_last: prepare(
                "SELECT seq FROM im_conv_messages WHERE owner = ? AND peer = ? LIMIT 1",
                Q,
                true,
            )
            .await?,
            idx_desc: prepare(
                "SELECT seq FROM im_conv_messages WHERE owner = ? AND peer = ? AND seq >= ? AND seq <= ? LIMIT ?",
                Q,
                true,
            )
            .await?,
            idx_asc: prepare(
                "SELECT seq FROM im_conv_messages WHERE owner = ? AND peer = ? AND seq >= ? AND seq <= ? ORDER BY seq ASC LIMIT ?",
                Q,
                true,
            )
            .await?,
            unread_insert: prepare(
                "INSERT INTO im_conv_unread (owner, peer, seq) VALUES (?, ?, ?) USING TTL ?",
                Q,
                true,
            )
            .await?,
            unread_delete: prepare(
                "DELETE FROM im_conv_unread WHERE owner = ? AND peer = ? AND seq = ?",
                Q,
                true,
            )
            .await?,
            unread_count: prepare(
                "SELECT COUNT(*) FROM im_conv_unread WHERE owner = ? AND peer = ? AND seq > ?",
                Q,
                true,
            )
            .await?,
            copies_insert: prepare(
                "INSERT INTO im_msg_copies (msg_id, pos, inbox, seq) VALUES (?, ?, ?, ?) USING TTL ?",
                Q,
                true,
            )
            .await?,
            copies_read: prepare(
                "SELECT inbox, seq FROM im_msg_copies WHERE msg_id = ?",
                Q,
                true,
            )
            .await?,
            inbox_desc: prepare(
                "SELECT seq, message FROM inbox_messages WHERE inbox = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
                Q,
                true,
            )
            .await?,
            group_get: prepare(
                "SELECT info, version FROM im_groups WHERE group_id = ? LIMIT 1",
                Q,
                true,
            )
            .await?,
            group_get_serial: prepare(
                "SELECT info, version FROM im_groups WHERE group_id = ? LIMIT 1",
                S,
                true,
            )
            .await?,
            group_create: prepare(
                "UPDATE im_groups SET info = ?, version = ? WHERE group_id = ? IF version = null",
                Q,
                false,
            )
            .await?,
            group_update: prepare(
                "UPDATE im_groups SET info = ?, version = ? WHERE group_id = ? IF version = ?",
                Q,
                false,
            )
            .await?,
            group_check: prepare(
                "UPDATE im_groups SET version = ? WHERE group_id = ? IF version = ?",
                Q,
                false,
            )
            .await?,
            member_get: prepare(
                "SELECT member FROM im_groups WHERE group_id = ? AND user_id = ?",
                Q,
                true,
            )
            .await?,
            member_put: prepare(
                "INSERT INTO im_groups (group_id, user_id, member) VALUES (?, ?, ?)",
                Q,
                true,
            )
            .await?,
            member_delete: prepare(
                "DELETE FROM im_groups WHERE group_id = ? AND user_id = ?",
                Q,
                true,
            )
            .await?,
            // List entries are keyed `~<tag>:<user>`, after every user id.
            members_after: prepare(
                "SELECT member FROM im_groups WHERE group_id = ? AND user_id > ? AND user_id < '~' LIMIT ?",
                Q,
                true,
            )
            .await?,
            group_rows: prepare(
                "SELECT user_id, member FROM im_groups WHERE group_id = ? LIMIT ?",
                Q,
                true,
            )
            .await?,
            listed_range: prepare(
                "SELECT user_id, member FROM im_groups WHERE group_id = ? AND user_id > ? AND user_id < ? LIMIT ?",
                Q,
                true,
            )
            .await?,
            invitation_put: prepare(
                "INSERT INTO im_user_invitations (user_id, group_id) VALUES (?, ?)",
                Q,
                true,
            )
            .await?,
            invitation_delete: prepare(
                "DELETE FROM im_user_invitations WHERE user_id = ? AND group_id = ?",
                Q,
                true,
            )
            .await?,
            invitations: prepare(
                "SELECT group_id FROM im_user_invitations WHERE user_id = ? LIMIT ?",
                Q,
                true,
            )
            .await?,
            settings_put: prepare(
                "UPDATE user_settings SET group_adds = ? WHERE user_id = ?",
                Q,
                true,
            )
            .await?,
            settings_get: prepare(
                "SELECT group_adds FROM user_settings WHERE user_id = ?",
                Q,
                true,
            )
            .await?,
            user_group_put: prepare(
                "INSERT INTO im_user_groups (user_id, group_id) VALUES (?, ?)",
                Q,
                true,
            )
            .await?,
            user_group_delete: prepare(
                "DELETE FROM im_user_groups WHERE user_id = ? AND group_id = ?",
                Q,
                true,
            )
            .await?,
            user_groups: prepare(
                "SELECT group_id FROM im_user_groups WHERE user_id = ?",
                Q,
                true,
            )
            .await?,
            cursor_set: prepare(
                "UPDATE group_cursors USING TIMESTAMP ? SET read_seq = ? WHERE group_id = ? AND user_id = ?",
                Q,
                true,
            )
            .await?,
            cursor_get: prepare(
                "SELECT read_seq FROM group_cursors WHERE group_id = ? AND user_id = ?",
                Q,
                true,
            )
            .await?,
            cursors: prepare(
                "SELECT user_id, read_seq FROM group_cursors WHERE group_id = ?",
                Q,
                true,
            )
            .await?,
        })
    }
}

/// A row of `im_conversations`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ConvRow {
    /// The peer key (`u:<id>` / `g:<id>`).
    pub(crate) peer: String,
    pub(crate) created_ms: i64,
    pub(crate) read_seq: u64,
    pub(crate) pinned: bool,
    pub(crate) muted: bool,
    /// Server time of the oldest message ever in the conversation.
    pub(crate) oldest_ms: Option<i64>,
}

pub(super) type ConvTuple = (
    String,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<bool>,
    Option<i64>,
);

pub(super) fn conv_row(row: ConvTuple) -> Result<ConvRow, StoreError> {
    let (peer, created_ms, read_seq, pinned, muted, oldest_ms) = row;
    Ok(ConvRow {
        peer,
        created_ms: created_ms.unwrap_or(0),
        read_seq: seq_from_cql(read_seq.unwrap_or(0))?,
        pinned: pinned.unwrap_or(false),
        muted: muted.unwrap_or(false),
        oldest_ms,
    })
}

pub(super) fn decode_proto<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(corrupt)
}
