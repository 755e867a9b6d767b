//! Conversions between the store's values and CQL's (seqs and their
//! buckets, stored messages, the `[applied]` column, errors), and preparing
//! a statement: what every file of the CQL backend uses.

use bytes::Bytes;
use prost::Message as _;
use qim_proto::v1;
use scylla::client::session::Session;
use scylla::errors::ExecutionError;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use crate::StoreError;
use crate::model::StoredMessage;

/// Seqs per `inbox_messages` / `group_messages` partition.
pub const SEQS_PER_BUCKET: u64 = 4096;

pub(crate) fn cql_error(e: ExecutionError) -> StoreError {
    StoreError::Unavailable(format!("CQL: {e}"))
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Refuses keyspace names CQL would need quoting for.
pub(crate) fn valid_identifier(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "keyspace {name:?}: letters, digits and _ only, starting with a letter, at most 48"
        )))
    }
}

pub(super) fn seq_to_cql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Invalid(format!("seq {seq} out of range")))
}

pub(super) fn seq_from_cql(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))
}

pub(super) fn bucket(seq: u64) -> i64 {
    // seq / 4096 always fits in i64.
    (seq / SEQS_PER_BUCKET) as i64
}

/// Prepares `cql` with its consistency (serial consistency `LOCAL_SERIAL`
/// for the LWTs) and whether a retry may run it twice.
pub(crate) async fn prepare(
    session: &Session,
    cql: &'static str,
    consistency: Consistency,
    idempotent: bool,
) -> Result<PreparedStatement, StoreError> {
    let mut p = session
        .prepare(cql)
        .await
        .map_err(|e| StoreError::Unavailable(format!("preparing {cql}: {e}")))?;
    p.set_consistency(consistency);
    p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    p.set_is_idempotent(idempotent);
    Ok(p)
}

/// The `[applied]` column of an LWT result.
pub(super) fn applied(result: QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result().map_err(corrupt)?;
    let row = rows
        .maybe_first_row::<scylla::value::Row>()
        .map_err(corrupt)?;
    Ok(row
        .and_then(|r| r.columns.into_iter().next().flatten())
        .and_then(|v| v.as_boolean())
        .unwrap_or(false))
}

pub(super) fn decode(inbox: &str, seq: u64, body: &[u8]) -> Result<StoredMessage, StoreError> {
    let message = v1::Message::decode(Bytes::copy_from_slice(body))
        .map_err(|e| corrupt(format!("message {inbox}/{seq}: {e}")))?;
    Ok(StoredMessage {
        inbox: inbox.to_owned(),
        seq,
        message,
    })
}
