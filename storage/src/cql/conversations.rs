//! Conversation reads over CQL: conversation rows, their index of copies,
//! unread counts, `msg_id` copies and inbox pages newest first.

use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::Cql;
use super::codec::{bucket, corrupt, cql_error, decode, seq_from_cql, seq_to_cql};
use super::im::{ConvRow, ConvTuple, conv_row};
use crate::StoreError;
use crate::model::StoredMessage;

impl Cql {
    pub(super) async fn rows<R>(
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
}
