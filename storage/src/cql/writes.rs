//! [`Writes`]: the logged batches the cluster store makes each IM call's
//! writes atomic with, and the rows of conversations and groups written
//! through them.
//!
//! # Monotonic cells without compare-and-set
//! Read cursors (`im_conversations.read_seq`, `group_cursors.read_seq`) are
//! written `USING TIMESTAMP <cursor>`: of two writes the higher cursor wins
//! whatever order they arrive in, so a cursor never moves back without a
//! lightweight transaction. `im_conversations.oldest_ms` is written with a
//! timestamp that falls as the time grows, so the oldest time wins. These
//! cells are written with such timestamps only.

use prost::Message as _;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::Cql;
use super::codec::{bucket, cql_error, seq_to_cql};
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

pub(super) type Values = Box<dyn SerializeRow + Send + Sync>;

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

impl Cql {
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
}
