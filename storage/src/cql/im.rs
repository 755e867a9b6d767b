//! The CQL statements of conversations and groups (tables of schema
//! migration 2), and [`Writes`]: the logged batches the cluster store
//! makes each IM call's writes atomic with.
//!
//! # Monotonic cells without compare-and-set
//! Read cursors (`im_conversations.read_seq`, `group_cursors.read_seq`) are
//! written `USING TIMESTAMP <cursor>`: of two writes the higher cursor wins
//! whatever order they arrive in, so a cursor never moves back without a
//! lightweight transaction. `im_conversations.oldest_ms` is written with a
//! timestamp that falls as the time grows, so the oldest time wins. These
//! cells are written with such timestamps only.

use std::sync::Arc;

use prost::Message as _;
use qim_proto::v1;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::{Cql, applied, bucket, corrupt, cql_error, decode, seq_from_cql, seq_to_cql};
use crate::StoreError;
use crate::model::StoredMessage;

/// A logged batch is split at a unit boundary once it holds this many
/// bytes of values (the server refuses batches past its
/// `batch_size_fail_threshold`; Cassandra's default is 50 KiB, ScyllaDB's
/// 1 MiB, qim's development server 640 KiB).
const BATCH_BYTES: usize = 256 * 1024;

/// Timestamps of `oldest_ms` cells: `OLDEST_BASE - ms`, so older wins
/// (positive until the year 2286, and below current microsecond clocks, so
/// no guardrail on future timestamps applies).
const OLDEST_BASE: i64 = 10_000_000_000_000;

type Values = Box<dyn SerializeRow + Send + Sync>;

/// Writes to be made in logged batches: all of a unit (the rows between two
/// [`Writes::unit`] calls) land together or not at all.
#[derive(Default)]
pub(crate) struct Writes {
    statements: Vec<(PreparedStatement, Values, usize)>,
    /// Indexes of `statements` where a new unit starts.
    units: Vec<usize>,
}

impl Writes {
    fn push(&mut self, statement: &PreparedStatement, values: Values, bytes: usize) {
        self.statements
            .push((statement.clone(), values, bytes.saturating_add(64)));
    }

    /// Starts a new unit: a batch may be split here when large.
    pub(crate) fn unit(&mut self) {
        self.units.push(self.statements.len());
    }
}

/// The IM statements, prepared once.
pub(crate) struct ImStatements {
    conv_insert: PreparedStatement,
    conv_group_insert: PreparedStatement,
    conv_read_seq: PreparedStatement,
    conv_oldest: PreparedStatement,
    conv_flags: PreparedStatement,
    conv_get: PreparedStatement,
    conv_list: PreparedStatement,
    idx_insert: PreparedStatement,
    idx_last: PreparedStatement,
    idx_desc: PreparedStatement,
    idx_asc: PreparedStatement,
    unread_insert: PreparedStatement,
    unread_delete: PreparedStatement,
    unread_count: PreparedStatement,
    copies_insert: PreparedStatement,
    copies_read: PreparedStatement,
    inbox_desc: PreparedStatement,
    group_get: PreparedStatement,
    group_get_serial: PreparedStatement,
    group_create: PreparedStatement,
    group_update: PreparedStatement,
    group_check: PreparedStatement,
    member_get: PreparedStatement,
    member_put: PreparedStatement,
    member_delete: PreparedStatement,
    members_after: PreparedStatement,
    user_group_put: PreparedStatement,
    user_group_delete: PreparedStatement,
    user_groups: PreparedStatement,
    cursor_set: PreparedStatement,
    cursor_get: PreparedStatement,
    cursors: PreparedStatement,
}

impl ImStatements {
    pub(crate) async fn prepare(session: &Arc<Session>) -> Result<Self, StoreError> {
        let prepare =
            |cql, consistency, idempotent| super::prepare(session, cql, consistency, idempotent);
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
            members_after: prepare(
                "SELECT member FROM im_groups WHERE group_id = ? AND user_id > ? LIMIT ?",
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

type ConvTuple = (
    String,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<bool>,
    Option<i64>,
);

fn conv_row(row: ConvTuple) -> Result<ConvRow, StoreError> {
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

fn decode_proto<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(corrupt)
}

impl Cql {
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(cql_error)?
            .into_rows_result()
            .map_err(corrupt)?;
        result
            .rows::<R>()
            .map_err(corrupt)?
            .map(|r| r.map_err(corrupt))
            .collect()
    }

    /// Runs `writes` as logged batches (split only between units when
    /// large); returns once every batch is written.
    pub(crate) async fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        if writes.statements.is_empty() {
            return Ok(());
        }
        let mut starts = writes.units.clone();
        starts.retain(|&i| i > 0 && i < writes.statements.len());
        let mut batches: Vec<(Batch, Vec<Values>)> = Vec::new();
        let mut size = usize::MAX;
        for (i, (statement, values, bytes)) in writes.statements.into_iter().enumerate() {
            let at_boundary = i == 0 || starts.binary_search(&i).is_ok();
            if at_boundary && size.saturating_add(bytes) > BATCH_BYTES {
                let mut batch = Batch::new(BatchType::Logged);
                batch.set_consistency(Consistency::LocalQuorum);
                batch.set_is_idempotent(true);
                batches.push((batch, Vec::new()));
                size = 0;
            }
            size = size.saturating_add(bytes);
            if let Some((batch, vals)) = batches.last_mut() {
                batch.append_statement(statement);
                vals.push(values);
            }
        }
        let runs = batches.iter().map(|(batch, values)| async move {
            self.session
                .batch(batch, values)
                .await
                .map_err(cql_error)
                .map(|_| ())
        });
        futures_util::future::try_join_all(runs).await?;
        Ok(())
    }

    /// Stores (or rewrites) a message row.
    pub(crate) fn w_message(
        &self,
        w: &mut Writes,
        stored: &StoredMessage,
    ) -> Result<(), StoreError> {
        let body = stored.message.encode_to_vec();
        let bytes = body.len() + stored.inbox.len();
        w.push(
            &self.insert_message,
            Box::new((
                stored.inbox.clone(),
                bucket(stored.seq),
                seq_to_cql(stored.seq)?,
                body,
                self.ttl,
            )),
            bytes,
        );
        Ok(())
    }

    /// Indexes a copy in its owner's conversation (and as unread).
    pub(crate) fn w_copy(
        &self,
        w: &mut Writes,
        owner: &str,
        peer: &str,
        seq: u64,
        unread: bool,
        time_ms: i64,
    ) -> Result<(), StoreError> {
        let seq = seq_to_cql(seq)?;
        let bytes = owner.len() + peer.len();
        let key = (owner.to_owned(), peer.to_owned());
        w.push(&self.im.conv_insert, Box::new(key.clone()), bytes);
        w.push(
            &self.im.conv_oldest,
            Box::new((OLDEST_BASE - time_ms, time_ms, key.0.clone(), key.1.clone())),
            bytes,
        );
        w.push(
            &self.im.idx_insert,
            Box::new((key.0.clone(), key.1.clone(), seq, self.ttl)),
            bytes,
        );
        if unread {
            w.push(
                &self.im.unread_insert,
                Box::new((key.0, key.1, seq, self.ttl)),
                bytes,
            );
        }
        Ok(())
    }

    /// The copy no longer counts as unread (recalled or deleted).
    pub(crate) fn w_not_unread(
        &self,
        w: &mut Writes,
        owner: &str,
        peer: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        w.push(
            &self.im.unread_delete,
            Box::new((owner.to_owned(), peer.to_owned(), seq_to_cql(seq)?)),
            owner.len() + peer.len(),
        );
        Ok(())
    }

    /// Raises the read cursor (never lowers it).
    pub(crate) fn w_read_seq(
        &self,
        w: &mut Writes,
        owner: &str,
        peer: &str,
        read_seq: u64,
    ) -> Result<(), StoreError> {
        let seq = seq_to_cql(read_seq)?;
        w.push(
            &self.im.conv_read_seq,
            Box::new((seq, seq, owner.to_owned(), peer.to_owned())),
            owner.len() + peer.len(),
        );
        Ok(())
    }

    /// Sets both flags.
    pub(crate) fn w_flags(
        &self,
        w: &mut Writes,
        owner: &str,
        peer: &str,
        pinned: bool,
        muted: bool,
    ) {
        w.push(
            &self.im.conv_flags,
            Box::new((pinned, muted, owner.to_owned(), peer.to_owned())),
            owner.len() + peer.len(),
        );
    }

    /// Creates a group conversation (a member was added).
    pub(crate) fn w_group_conv(&self, w: &mut Writes, owner: &str, peer: &str, created_ms: i64) {
        w.push(
            &self.im.conv_group_insert,
            Box::new((owner.to_owned(), peer.to_owned(), created_ms)),
            owner.len() + peer.len(),
        );
    }

    /// Records where the copies of `msg_id` are (the primary first).
    pub(crate) fn w_copies(
        &self,
        w: &mut Writes,
        msg_id: &str,
        copies: &[(String, u64)],
    ) -> Result<(), StoreError> {
        for (pos, (inbox, seq)) in copies.iter().enumerate() {
            w.push(
                &self.im.copies_insert,
                Box::new((
                    msg_id.to_owned(),
                    i32::try_from(pos).unwrap_or(i32::MAX),
                    inbox.clone(),
                    seq_to_cql(*seq)?,
                    self.ttl,
                )),
                msg_id.len() + inbox.len(),
            );
        }
        Ok(())
    }

    /// Raises a member's read cursor in a group log.
    pub(crate) fn w_group_cursor(
        &self,
        w: &mut Writes,
        group: &str,
        user: &str,
        read_seq: u64,
    ) -> Result<(), StoreError> {
        let seq = seq_to_cql(read_seq)?;
        w.push(
            &self.im.cursor_set,
            Box::new((seq, seq, group.to_owned(), user.to_owned())),
            group.len() + user.len(),
        );
        Ok(())
    }

    /// Adds `group` to `user`'s group index.
    pub(crate) fn w_user_group(&self, w: &mut Writes, user: &str, group: &str, member: bool) {
        let statement = if member {
            &self.im.user_group_put
        } else {
            &self.im.user_group_delete
        };
        w.push(
            statement,
            Box::new((user.to_owned(), group.to_owned())),
            user.len() + group.len(),
        );
    }

    /// One conversation row.
    pub(crate) async fn conv_row(
        &self,
        owner: &str,
        peer: &str,
    ) -> Result<Option<ConvRow>, StoreError> {
        let rows: Vec<ConvTuple> = self.rows(&self.im.conv_get, (owner, peer)).await?;
        rows.into_iter().next().map(conv_row).transpose()
    }

    /// Every conversation row of `owner`.
    pub(crate) async fn conv_rows(&self, owner: &str) -> Result<Vec<ConvRow>, StoreError> {
        let rows: Vec<ConvTuple> = self.rows(&self.im.conv_list, (owner,)).await?;
        rows.into_iter().map(conv_row).collect()
    }

    /// The newest copy's seq in a conversation.
    pub(crate) async fn conv_last(
        &self,
        owner: &str,
        peer: &str,
    ) -> Result<Option<u64>, StoreError> {
        let rows: Vec<(i64,)> = self.rows(&self.im.idx_last, (owner, peer)).await?;
        rows.into_iter()
            .next()
            .map(|(s,)| seq_from_cql(s))
            .transpose()
    }

    /// Seqs of a conversation's copies in `[lo, hi]`, newest first (or
    /// oldest first when `forward`), at most `limit`.
    pub(crate) async fn conv_seqs(
        &self,
        owner: &str,
        peer: &str,
        lo: u64,
        hi: u64,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let statement = if forward {
            &self.im.idx_asc
        } else {
            &self.im.idx_desc
        };
        let hi = hi.min(i64::MAX as u64);
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(i64,)> = self
            .rows(
                statement,
                (owner, peer, seq_to_cql(lo)?, seq_to_cql(hi)?, limit),
            )
            .await?;
        rows.into_iter().map(|(s,)| seq_from_cql(s)).collect()
    }

    /// Copies counted unread above `after`.
    pub(crate) async fn conv_unread(
        &self,
        owner: &str,
        peer: &str,
        after: u64,
    ) -> Result<u32, StoreError> {
        let after = seq_to_cql(after.min(i64::MAX as u64))?;
        let rows: Vec<(i64,)> = self
            .rows(&self.im.unread_count, (owner, peer, after))
            .await?;
        let n = rows.first().map_or(0, |(n,)| *n);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Where the copies of `msg_id` are, the primary first.
    pub(crate) async fn copies(&self, msg_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self.rows(&self.im.copies_read, (msg_id,)).await?;
        rows.into_iter()
            .map(|(inbox, seq)| Ok((inbox, seq_from_cql(seq)?)))
            .collect()
    }

    /// Messages of `inbox` in `[lo, hi]`, newest first, at most `limit`.
    pub(crate) async fn read_inbox_desc(
        &self,
        inbox: &str,
        lo: u64,
        hi: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        let hi = hi.min(self.reserved(inbox).await?);
        if hi < lo || limit == 0 {
            return Ok(out);
        }
        let mut b = bucket(hi);
        while b >= bucket(lo) && out.len() < limit {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let rows: Vec<(i64, Vec<u8>)> = self
                .rows(
                    &self.im.inbox_desc,
                    (inbox, b, seq_to_cql(lo)?, seq_to_cql(hi)?, want),
                )
                .await?;
            for (seq, body) in rows {
                let seq = seq_from_cql(seq)?;
                out.push(decode(inbox, seq, &body)?);
            }
            b -= 1;
        }
        Ok(out)
    }

    /// A group record and its version; `serial` reads at `LOCAL_SERIAL`
    /// (completing a transaction in flight).
    pub(crate) async fn group(
        &self,
        group: &str,
        serial: bool,
    ) -> Result<Option<(v1::GroupInfo, i64)>, StoreError> {
        let statement = if serial {
            &self.im.group_get_serial
        } else {
            &self.im.group_get
        };
        let rows: Vec<(Option<Vec<u8>>, Option<i64>)> = self.rows(statement, (group,)).await?;
        match rows.into_iter().next() {
            Some((Some(info), Some(version))) => Ok(Some((decode_proto(&info)?, version))),
            _ => Ok(None),
        }
    }

    /// One member.
    pub(crate) async fn member(
        &self,
        group: &str,
        user: &str,
    ) -> Result<Option<v1::GroupMember>, StoreError> {
        let rows: Vec<(Option<Vec<u8>>,)> = self.rows(&self.im.member_get, (group, user)).await?;
        match rows.into_iter().next() {
            Some((Some(m),)) => Ok(Some(decode_proto(&m)?)),
            _ => Ok(None),
        }
    }

    /// Members after `after` by user id, at most `limit`.
    pub(crate) async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(Option<Vec<u8>>,)> = self
            .rows(&self.im.members_after, (group, after, limit))
            .await?;
        rows.into_iter()
            .filter_map(|(m,)| m)
            .map(|m| decode_proto(&m))
            .collect()
    }

    /// Changes a group in one lightweight transaction on its partition:
    /// the record (checked against `expected`, `None` to create), members
    /// put and removed. False when the version did not match.
    pub(crate) async fn group_write(
        &self,
        group: &str,
        expected: Option<i64>,
        info: &v1::GroupInfo,
        put: &[v1::GroupMember],
        remove: &[String],
    ) -> Result<bool, StoreError> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        let mut values: Vec<Values> = Vec::new();
        let version = expected.unwrap_or(0) + 1;
        match expected {
            None => {
                batch.append_statement(self.im.group_create.clone());
                values.push(Box::new((info.encode_to_vec(), version, group.to_owned())));
            }
            Some(v) => {
                batch.append_statement(self.im.group_update.clone());
                values.push(Box::new((
                    info.encode_to_vec(),
                    version,
                    group.to_owned(),
                    v,
                )));
            }
        }
        for m in put {
            batch.append_statement(self.im.member_put.clone());
            values.push(Box::new((
                group.to_owned(),
                m.user.clone(),
                m.encode_to_vec(),
            )));
        }
        for user in remove {
            batch.append_statement(self.im.member_delete.clone());
            values.push(Box::new((group.to_owned(), user.clone())));
        }
        let result = self
            .session
            .batch(&batch, &values)
            .await
            .map_err(cql_error)?;
        applied(result)
    }

    /// Serialises a post with the group's changes: a transaction that
    /// succeeds only while the group is still at `version`.
    pub(crate) async fn group_check(&self, group: &str, version: i64) -> Result<bool, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.im.group_check, (version, group, version))
            .await
            .map_err(cql_error)?;
        applied(result)
    }

    /// The groups in `user`'s index.
    pub(crate) async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self.rows(&self.im.user_groups, (user,)).await?;
        Ok(rows.into_iter().map(|(g,)| g).collect())
    }

    /// A member's read cursor in a group log (0 when none).
    pub(crate) async fn group_cursor(&self, group: &str, user: &str) -> Result<u64, StoreError> {
        let rows: Vec<(Option<i64>,)> = self.rows(&self.im.cursor_get, (group, user)).await?;
        match rows.into_iter().next() {
            Some((Some(s),)) => seq_from_cql(s),
            _ => Ok(0),
        }
    }

    /// Every member's read cursor in a group log.
    pub(crate) async fn group_cursors(
        &self,
        group: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = self.rows(&self.im.cursors, (group,)).await?;
        rows.into_iter()
            .map(|(u, s)| Ok((u, seq_from_cql(s.unwrap_or(0))?)))
            .collect()
    }
}
