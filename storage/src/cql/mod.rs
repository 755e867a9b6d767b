//! The CQL half of the cluster backend: messages, idempotency keys, inbox
//! high-water marks, cursors, conversations and groups in ScyllaDB or
//! Apache Cassandra, through the `scylla` driver with prepared statements.
//!
//! # Partitions and their sizes
//! Inbox messages live in `inbox_messages`, partitioned by `(inbox, bucket)`
//! and clustered by `seq`, where `bucket = seq / SEQS_PER_BUCKET`
//! ([`SEQS_PER_BUCKET`] = 4096). The bucket is a *seq* bucket rather than a
//! time bucket, on purpose:
//! - **Bounded partitions whatever the message rate.** A partition holds at
//!   most 4096 messages: with the protocol's bodies (a few hundred bytes
//!   typical, 64 KiB at most) that is ≈ 1–4 MB typical and 256 MiB in the
//!   pathological all-maximum case, inside ScyllaDB's and Cassandra's
//!   comfortable range (tens of MB). A time bucket bounds a partition only
//!   for an assumed rate: a hot inbox (a bot, a busy group member) could
//!   write 100k messages into one hour bucket while a quiet one spreads 10
//!   messages over 10 000 near-empty day buckets.
//! - **Direct addressing.** Every read the gateway makes is "after seq N"
//!   (resume, gap pull, history page); the bucket of N is `N / 4096`, so a
//!   read starts at the right partition without an index from seq to time.
//! - **Retention still works by time**: rows carry a TTL; since seqs grow
//!   with time, old buckets expire whole and become empty partitions that
//!   compaction drops.
//!
//! `read_inbox(after, limit)` reads bucket `(after + 1) / 4096` from
//! `seq > after`, then the following buckets, until it has `limit` messages
//! or passes the bucket of the inbox's high-water mark (`inbox_heads`); a
//! read is one query when it fits in a bucket, two when it straddles one.
//! Reads after a long-expired seq walk the empty buckets in between (one
//! cheap query each; at most `reserved / 4096`, ≈ 250 per million messages).
//! A read-diffusion group's log is an inbox named `#<group>` in the same
//! table, with its own seqs (the v1 tables `group_messages` and
//! `group_heads` are not used). Conversations and groups (migration 2) are
//! described in the `im` module.
//!
//! # Consistency
//! Every write and read a delivery guarantee depends on runs at
//! `LOCAL_QUORUM` (with replication factor 3: survives one replica down per
//! data centre, and a quorum read sees every quorum write). Lightweight
//! transactions (the idempotency claim, the high-water mark) use
//! `LOCAL_SERIAL`, and the high-water mark is read back at `LOCAL_SERIAL`
//! when a sequence counter is rebuilt, so an in-progress Paxos round is
//! seen. See `docs/scylla.md`.
//!
//! # Retention
//! With `retention_days > 0`, messages and idempotency keys are written
//! `USING TTL`; high-water marks never expire (seqs must never restart).

mod codec;
mod conversations;
mod groups;
pub(crate) mod im;
pub(crate) mod notify;
mod options;
pub mod schema;
pub(crate) mod social;
pub(crate) mod writes;

use std::sync::Arc;

use prost::Message as _;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use crate::StoreError;
use crate::model::StoredMessage;

pub use codec::SEQS_PER_BUCKET;
use codec::{applied, bucket, corrupt, decode, prepare, seq_from_cql, seq_to_cql};
pub(crate) use codec::{cql_error, valid_identifier};
pub use options::CqlOptions;
pub use schema::{SCHEMA_VERSION, migrate};

/// Buckets `inbox_head` walks down from the high-water mark looking for the
/// newest stored message (only writes that failed leave buckets empty).
const HEAD_SEARCH_BUCKETS: u64 = 16;

/// Connects a session to `options.nodes` with the keyspace unset.
pub async fn connect(options: &CqlOptions) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(options.request_timeout))
        .build();
    SessionBuilder::new()
        .known_nodes(&options.nodes)
        .connection_timeout(options.request_timeout)
        .default_execution_profile_handle(profile.into_handle())
        // A single-node server has no peers to agree with, and schema
        // changes are made by `migrate` only, which waits itself.
        .auto_await_schema_agreement(false)
        .build()
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting to CQL {:?}: {e}", options.nodes)))
}

/// Connects and runs [`migrate`]: what `qim-gateway migrate` does.
pub async fn connect_and_migrate(options: &CqlOptions) -> Result<i32, StoreError> {
    let session = connect(options).await?;
    migrate(&session, options).await
}

/// Where a claimed idempotency key points.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claim {
    pub(crate) inbox: String,
    pub(crate) seq: u64,
    pub(crate) msg_id: String,
    /// When the claim's seq was written (microseconds since the epoch, the
    /// cell's write time); 0 for a claim not read back from CQL.
    pub(crate) written_us: i64,
    /// The post's digest (recipient and body); `None` for an `append`, and
    /// for a claim written before digests were kept.
    pub(crate) digest: Option<Vec<u8>>,
}

/// The prepared statements over one session and keyspace.
pub(crate) struct Cql {
    pub(crate) session: Arc<Session>,
    ttl: i32,
    insert_message: PreparedStatement,
    read_bucket: PreparedStatement,
    read_one: PreparedStatement,
    last_in_bucket: PreparedStatement,
    head_read: PreparedStatement,
    head_read_serial: PreparedStatement,
    head_create: PreparedStatement,
    head_raise: PreparedStatement,
    claim: PreparedStatement,
    claim_read: PreparedStatement,
    claim_read_serial: PreparedStatement,
    claim_move: PreparedStatement,
    cursor_save: PreparedStatement,
    cursor_load: PreparedStatement,
    im: im::ImStatements,
}

impl Cql {
    /// Prepares every statement on `session`, after checking the keyspace's
    /// schema version.
    pub(crate) async fn open(
        session: Arc<Session>,
        options: &CqlOptions,
    ) -> Result<Self, StoreError> {
        let ks = &options.keyspace;
        valid_identifier(ks)?;
        session.use_keyspace(ks, false).await.map_err(|e| {
            StoreError::Invalid(format!("keyspace {ks}: {e}: run `qim-gateway migrate`"))
        })?;
        schema::check_version(&session, ks).await?;
        let prepare =
            |cql, consistency, idempotent| prepare(&session, cql, consistency, idempotent);
        use Consistency::{LocalQuorum, LocalSerial};
        Ok(Cql {
            ttl: options.ttl_seconds(),
            insert_message: prepare(
                "INSERT INTO inbox_messages (inbox, bucket, seq, message) VALUES (?, ?, ?, ?) USING TTL ?",
                LocalQuorum,
                true,
            )
            .await?,
            read_bucket: prepare(
                "SELECT seq, message FROM inbox_messages WHERE inbox = ? AND bucket = ? AND seq > ? LIMIT ?",
                LocalQuorum,
                true,
            )
            .await?,
            read_one: prepare(
                "SELECT message FROM inbox_messages WHERE inbox = ? AND bucket = ? AND seq = ?",
                LocalQuorum,
                true,
            )
            .await?,
            last_in_bucket: prepare(
                "SELECT seq FROM inbox_messages WHERE inbox = ? AND bucket = ? ORDER BY seq DESC LIMIT 1",
                LocalQuorum,
                true,
            )
            .await?,
            head_read: prepare(
                "SELECT reserved FROM inbox_heads WHERE inbox = ?",
                LocalQuorum,
                true,
            )
            .await?,
            head_read_serial: prepare(
                "SELECT reserved FROM inbox_heads WHERE inbox = ?",
                LocalSerial,
                true,
            )
            .await?,
            head_create: prepare(
                "INSERT INTO inbox_heads (inbox, reserved) VALUES (?, 0) IF NOT EXISTS",
                LocalQuorum,
                false,
            )
            .await?,
            head_raise: prepare(
                "UPDATE inbox_heads SET reserved = ? WHERE inbox = ? IF reserved < ?",
                LocalQuorum,
                false,
            )
            .await?,
            claim: prepare(
                "INSERT INTO idempotency (sender, client_msg_id, inbox, seq, msg_id, digest) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
                LocalQuorum,
                false,
            )
            .await?,
            claim_read: prepare(
                "SELECT inbox, seq, msg_id, WRITETIME(seq), digest FROM idempotency WHERE sender = ? AND client_msg_id = ?",
                LocalQuorum,
                true,
            )
            .await?,
            claim_read_serial: prepare(
                "SELECT inbox, seq, msg_id, WRITETIME(seq), digest FROM idempotency WHERE sender = ? AND client_msg_id = ?",
                LocalSerial,
                true,
            )
            .await?,
            claim_move: prepare(
                "UPDATE idempotency USING TTL ? SET seq = ? WHERE sender = ? AND client_msg_id = ? IF seq = ?",
                LocalQuorum,
                false,
            )
            .await?,
            cursor_save: prepare(
                "INSERT INTO device_cursors (inbox, device, seq) VALUES (?, ?, ?)",
                LocalQuorum,
                true,
            )
            .await?,
            cursor_load: prepare(
                "SELECT seq FROM device_cursors WHERE inbox = ? AND device = ?",
                LocalQuorum,
                true,
            )
            .await?,
            im: im::ImStatements::prepare(&session).await?,
            session,
        })
    }

    async fn exec(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(cql_error)
    }

    /// Writes a message row (idempotent: same key, same content).
    pub(crate) async fn insert_message(&self, stored: &StoredMessage) -> Result<(), StoreError> {
        let seq = seq_to_cql(stored.seq)?;
        let body = stored.message.encode_to_vec();
        self.exec(
            &self.insert_message,
            (&stored.inbox, bucket(stored.seq), seq, body, self.ttl),
        )
        .await?;
        Ok(())
    }

    /// The message at `seq` of `inbox`, if stored.
    pub(crate) async fn read_one(
        &self,
        inbox: &str,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let rows = self
            .exec(&self.read_one, (inbox, bucket(seq), seq_to_cql(seq)?))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let Some((body,)) = rows.maybe_first_row::<(Vec<u8>,)>().map_err(corrupt)? else {
            return Ok(None);
        };
        Ok(Some(decode(inbox, seq, &body)?))
    }

    /// Messages of `inbox` after `after`, oldest first, at most `limit`.
    pub(crate) async fn read_inbox(
        &self,
        inbox: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 || after >= i64::MAX as u64 {
            return Ok(out);
        }
        let mut b = bucket(after + 1);
        let mut from = after;
        let mut last_bucket: Option<i64> = None;
        loop {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let rows = self
                .exec(&self.read_bucket, (inbox, b, seq_to_cql(from)?, want))
                .await?
                .into_rows_result()
                .map_err(corrupt)?;
            for row in rows.rows::<(i64, Vec<u8>)>().map_err(corrupt)? {
                let (seq, body) = row.map_err(corrupt)?;
                let seq = seq_from_cql(seq)?;
                out.push(decode(inbox, seq, &body)?);
            }
            if out.len() >= limit {
                return Ok(out);
            }
            let last = match last_bucket {
                Some(l) => l,
                None => {
                    let l = bucket(self.reserved(inbox).await?);
                    last_bucket = Some(l);
                    l
                }
            };
            if b >= last {
                return Ok(out);
            }
            b += 1;
            from = 0;
        }
    }

    /// The newest stored seq of `inbox`, 0 when none.
    pub(crate) async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError> {
        let reserved = self.reserved(inbox).await?;
        if reserved == 0 {
            return Ok(0);
        }
        let top = bucket(reserved);
        let bottom = (top - HEAD_SEARCH_BUCKETS as i64).max(0);
        for b in (bottom..=top).rev() {
            let rows = self
                .exec(&self.last_in_bucket, (inbox, b))
                .await?
                .into_rows_result()
                .map_err(corrupt)?;
            if let Some((seq,)) = rows.maybe_first_row::<(i64,)>().map_err(corrupt)? {
                return seq_from_cql(seq);
            }
        }
        Ok(0)
    }

    /// The inbox's high-water mark at `LOCAL_QUORUM` (0 when none).
    pub(crate) async fn reserved(&self, inbox: &str) -> Result<u64, StoreError> {
        self.read_reserved(&self.head_read, inbox).await
    }

    /// The high-water mark at `LOCAL_SERIAL`, creating the row at 0 when
    /// missing: the floor for rebuilding a sequence counter.
    pub(crate) async fn reserved_serial(&self, inbox: &str) -> Result<u64, StoreError> {
        self.exec(&self.head_create, (inbox,)).await?;
        self.read_reserved(&self.head_read_serial, inbox).await
    }

    async fn read_reserved(
        &self,
        statement: &PreparedStatement,
        inbox: &str,
    ) -> Result<u64, StoreError> {
        let rows = self
            .exec(statement, (inbox,))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        match rows.maybe_first_row::<(Option<i64>,)>().map_err(corrupt)? {
            Some((Some(r),)) => seq_from_cql(r),
            _ => Ok(0),
        }
    }

    /// Raises the high-water mark to at least `to` (never lowers it);
    /// returns the mark now durable (≥ `to`).
    pub(crate) async fn raise(&self, inbox: &str, to: u64) -> Result<u64, StoreError> {
        let to_cql = seq_to_cql(to)?;
        let result = self.exec(&self.head_raise, (to_cql, inbox, to_cql)).await?;
        if applied(result)? {
            return Ok(to);
        }
        // Not applied: the row is missing, or already at or above `to`.
        let now = self.reserved_serial(inbox).await?;
        if now >= to {
            return Ok(now);
        }
        let result = self.exec(&self.head_raise, (to_cql, inbox, to_cql)).await?;
        if applied(result)? {
            Ok(to)
        } else {
            let now = self.reserved_serial(inbox).await?;
            if now >= to {
                Ok(now)
            } else {
                Err(StoreError::Unavailable(format!(
                    "high-water mark of {inbox} could not be raised to {to} (contention)"
                )))
            }
        }
    }

    /// Claims `(sender, client_msg_id)` for `claim`; returns `None` when the
    /// claim is ours, or the claim that was there first.
    pub(crate) async fn claim(
        &self,
        sender: &str,
        client_msg_id: &str,
        claim: &Claim,
    ) -> Result<Option<Claim>, StoreError> {
        let result = self
            .exec(
                &self.claim,
                (
                    sender,
                    client_msg_id,
                    &claim.inbox,
                    seq_to_cql(claim.seq)?,
                    &claim.msg_id,
                    &claim.digest,
                    self.ttl,
                ),
            )
            .await?;
        if applied(result)? {
            return Ok(None);
        }
        match self.read_claim(sender, client_msg_id, true).await? {
            Some(existing) => Ok(Some(existing)),
            None => Err(StoreError::Unavailable(format!(
                "idempotency claim of {sender}/{client_msg_id} refused but not readable"
            ))),
        }
    }

    /// The claim of `(sender, client_msg_id)`, if any.
    pub(crate) async fn read_claim(
        &self,
        sender: &str,
        client_msg_id: &str,
        serial: bool,
    ) -> Result<Option<Claim>, StoreError> {
        let statement = if serial {
            &self.claim_read_serial
        } else {
            &self.claim_read
        };
        let rows = self
            .exec(statement, (sender, client_msg_id))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        type Row = (
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<Vec<u8>>,
        );
        let Some((inbox, seq, msg_id, written, digest)) =
            rows.maybe_first_row::<Row>().map_err(corrupt)?
        else {
            return Ok(None);
        };
        match (inbox, seq, msg_id) {
            (Some(inbox), Some(seq), Some(msg_id)) => Ok(Some(Claim {
                inbox,
                seq: seq_from_cql(seq)?,
                msg_id,
                written_us: written.unwrap_or(0),
                digest,
            })),
            _ => Err(corrupt(format!(
                "incomplete idempotency row {sender}/{client_msg_id}"
            ))),
        }
    }

    /// Moves the claim of `(sender, client_msg_id)` from seq `from` to
    /// `to`; false when it no longer points at `from`.
    pub(crate) async fn move_claim(
        &self,
        sender: &str,
        client_msg_id: &str,
        from: u64,
        to: u64,
    ) -> Result<bool, StoreError> {
        let result = self
            .exec(
                &self.claim_move,
                (
                    self.ttl,
                    seq_to_cql(to)?,
                    sender,
                    client_msg_id,
                    seq_to_cql(from)?,
                ),
            )
            .await?;
        applied(result)
    }

    pub(crate) async fn save_cursor(
        &self,
        inbox: &str,
        device: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.exec(&self.cursor_save, (inbox, device, seq_to_cql(seq)?))
            .await?;
        Ok(())
    }

    pub(crate) async fn load_cursor(
        &self,
        inbox: &str,
        device: &str,
    ) -> Result<Option<u64>, StoreError> {
        let rows = self
            .exec(&self.cursor_load, (inbox, device))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        match rows.maybe_first_row::<(Option<i64>,)>().map_err(corrupt)? {
            Some((Some(seq),)) => Ok(Some(seq_from_cql(seq)?)),
            _ => Ok(None),
        }
    }
}
