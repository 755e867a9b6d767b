//! Prepared statements for contacts, scheduled sends and session records
//! (schema migration 2), and the logged batches that write a contact change
//! together with its events.

use std::sync::Arc;

use prost::Message as _;
use qim_proto::v1;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::Cql;
use super::codec::{bucket, corrupt, cql_error, prepare, seq_to_cql};
use crate::{StoreError, StoredMessage};

/// One row written by a batch, with its values.
pub(crate) type Row = (PreparedStatement, Box<dyn SerializeRow + Send + Sync>);

/// The statements over one session.
pub(crate) struct Social {
    session: Arc<Session>,
    pub(crate) contact_read: PreparedStatement,
    pub(crate) contacts_of: PreparedStatement,
    pub(crate) contact_put: PreparedStatement,
    pub(crate) contact_delete: PreparedStatement,
    pub(crate) block_read: PreparedStatement,
    pub(crate) blocks_of: PreparedStatement,
    pub(crate) block_put: PreparedStatement,
    pub(crate) block_delete: PreparedStatement,
    pub(crate) blocked_by_put: PreparedStatement,
    pub(crate) blocked_by_delete: PreparedStatement,
    pub(crate) blockers_of: PreparedStatement,
    pub(crate) outgoing_put: PreparedStatement,
    pub(crate) outgoing_delete: PreparedStatement,
    pub(crate) outgoing_of: PreparedStatement,
    pub(crate) rejection_put: PreparedStatement,
    pub(crate) rejection_read: PreparedStatement,
    pub(crate) rejection_delete: PreparedStatement,
    pub(crate) schedule_owner_put: PreparedStatement,
    pub(crate) schedule_owner_delete: PreparedStatement,
    pub(crate) schedules_of_owner: PreparedStatement,
    pub(crate) session_put: PreparedStatement,
    pub(crate) sessions_of: PreparedStatement,
    pub(crate) seen_put: PreparedStatement,
    pub(crate) seen_read: PreparedStatement,
    pub(crate) schedule_put: PreparedStatement,
    pub(crate) schedule_due_put: PreparedStatement,
    pub(crate) schedule_read: PreparedStatement,
    pub(crate) schedule_cancel: PreparedStatement,
    pub(crate) schedule_claim: PreparedStatement,
    pub(crate) schedule_reclaim: PreparedStatement,
    pub(crate) schedule_delete: PreparedStatement,
    pub(crate) schedule_due_delete: PreparedStatement,
    pub(crate) schedules_due: PreparedStatement,
    pub(crate) receipt_claim: PreparedStatement,
}

impl Social {
    /// Prepares every statement (the keyspace is already in use).
    pub(crate) async fn open(session: Arc<Session>) -> Result<Self, StoreError> {
        use Consistency::{LocalQuorum, LocalSerial};
        let prepare =
            |cql, consistency, idempotent| prepare(&session, cql, consistency, idempotent);
        Ok(Social {
            contact_read: prepare(
                "SELECT state FROM contacts WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            contacts_of: prepare(
                "SELECT other, state, at_ms, message FROM contacts WHERE owner = ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            contact_put: prepare(
                "INSERT INTO contacts (owner, other, state, at_ms, message) VALUES (?, ?, ?, ?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            contact_delete: prepare(
                "DELETE FROM contacts WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            block_read: prepare(
                "SELECT other FROM blocks WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            blocks_of: prepare(
                "SELECT other FROM blocks WHERE owner = ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            block_put: prepare(
                "INSERT INTO blocks (owner, other) VALUES (?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            block_delete: prepare(
                "DELETE FROM blocks WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            blocked_by_put: prepare(
                "INSERT INTO blocked_by (user_id, blocker) VALUES (?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            blocked_by_delete: prepare(
                "DELETE FROM blocked_by WHERE user_id = ? AND blocker = ?",
                LocalQuorum,
                true,
            )
            .await?,
            blockers_of: prepare(
                "SELECT blocker FROM blocked_by WHERE user_id = ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            outgoing_put: prepare(
                "INSERT INTO contact_outgoing (owner, other) VALUES (?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            outgoing_delete: prepare(
                "DELETE FROM contact_outgoing WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            outgoing_of: prepare(
                "SELECT other FROM contact_outgoing WHERE owner = ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            rejection_put: prepare(
                "INSERT INTO contact_rejections (owner, other, at_ms) VALUES (?, ?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            rejection_read: prepare(
                "SELECT at_ms FROM contact_rejections WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            rejection_delete: prepare(
                "DELETE FROM contact_rejections WHERE owner = ? AND other = ?",
                LocalQuorum,
                true,
            )
            .await?,
            schedule_owner_put: prepare(
                "INSERT INTO schedules_by_owner (owner, id) VALUES (?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            schedule_owner_delete: prepare(
                "DELETE FROM schedules_by_owner WHERE owner = ? AND id = ?",
                LocalQuorum,
                true,
            )
            .await?,
            schedules_of_owner: prepare(
                "SELECT id FROM schedules_by_owner WHERE owner = ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            session_put: prepare(
                "INSERT INTO sessions (user_id, start_ms, device, end_ms) VALUES (?, ?, ?, ?) USING TTL ?",
                LocalQuorum,
                true,
            )
            .await?,
            sessions_of: prepare(
                "SELECT start_ms, device, end_ms FROM sessions WHERE user_id = ? AND start_ms < ? ORDER BY start_ms DESC LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            seen_put: prepare(
                "INSERT INTO last_seen (user_id, at_ms) VALUES (?, ?) USING TIMESTAMP ?",
                LocalQuorum,
                true,
            )
            .await?,
            seen_read: prepare(
                "SELECT at_ms FROM last_seen WHERE user_id = ?",
                LocalQuorum,
                true,
            )
            .await?,
            schedule_put: prepare(
                "INSERT INTO schedules (id, owner, due_ms, entry, state, claimed_ms) VALUES (?, ?, ?, ?, 0, 0) IF NOT EXISTS",
                LocalQuorum,
                false,
            )
            .await?,
            schedule_due_put: prepare(
                "INSERT INTO schedules_due (shard, due_ms, id, written_ms) VALUES (?, ?, ?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            schedule_read: prepare(
                "SELECT owner, due_ms, entry, state, claimed_ms FROM schedules WHERE id = ?",
                LocalSerial,
                true,
            )
            .await?,
            schedule_cancel: prepare(
                "DELETE FROM schedules WHERE id = ? IF state = 0 AND owner = ?",
                LocalQuorum,
                false,
            )
            .await?,
            schedule_claim: prepare(
                "UPDATE schedules SET state = 1, claimed_ms = ? WHERE id = ? IF state = 0",
                LocalQuorum,
                false,
            )
            .await?,
            schedule_reclaim: prepare(
                "UPDATE schedules SET claimed_ms = ? WHERE id = ? IF state = 1 AND claimed_ms = ?",
                LocalQuorum,
                false,
            )
            .await?,
            schedule_delete: prepare(
                "DELETE FROM schedules WHERE id = ? IF state = 1",
                LocalQuorum,
                false,
            )
            .await?,
            schedule_due_delete: prepare(
                "DELETE FROM schedules_due WHERE shard = ? AND due_ms = ? AND id = ?",
                LocalQuorum,
                true,
            )
            .await?,
            schedules_due: prepare(
                "SELECT due_ms, id, written_ms FROM schedules_due WHERE shard = ? AND due_ms <= ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            receipt_claim: prepare(
                "INSERT INTO im_receipts (recipient, msg_id) VALUES (?, ?) IF NOT EXISTS USING TTL 2592000",
                LocalQuorum,
                false,
            )
            .await?,
            session,
        })
    }

    /// Runs `statement` once.
    pub(crate) async fn exec(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<scylla::response::query_result::QueryResult, StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(cql_error)
    }

    /// Writes `rows` as one logged batch (all of it eventually applied, or
    /// none), at `LOCAL_QUORUM`.
    pub(crate) async fn batch(&self, rows: Vec<Row>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        let mut values = Vec::with_capacity(rows.len());
        for (statement, row) in rows {
            batch.append_statement(statement);
            values.push(row);
        }
        self.session
            .batch(&batch, values)
            .await
            .map_err(cql_error)?;
        Ok(())
    }
}

/// Whether an LWT was applied (its first column, `[applied]`).
pub(crate) fn applied(
    result: scylla::response::query_result::QueryResult,
) -> Result<bool, StoreError> {
    super::codec::applied(result)
}

impl Cql {
    /// The row that writes `stored` into its inbox, for a batch.
    pub(crate) fn message_row(&self, stored: &StoredMessage) -> Result<Row, StoreError> {
        let seq = seq_to_cql(stored.seq)?;
        let body = stored.message.encode_to_vec();
        Ok((
            self.insert_message.clone(),
            Box::new((
                stored.inbox.clone(),
                bucket(stored.seq),
                seq,
                body,
                self.ttl,
            )),
        ))
    }

    /// The message TTL (seconds; 0: none), for session records too.
    pub(crate) fn ttl(&self) -> i32 {
        self.ttl
    }
}

/// Decodes a stored scheduled send.
pub(crate) fn decode_schedule(bytes: &[u8]) -> Result<v1::ScheduledSend, StoreError> {
    v1::ScheduledSend::decode(bytes).map_err(corrupt)
}
