//! The cluster backend's [`PresenceStore`]: session records in CQL.
//!
//! One partition per user, clustered by session start, so a time range is
//! one slice read newest first. A session that never ended cleanly keeps
//! `end_ms = 0`. Last seen is a single cell written with the end time as
//! its write timestamp: the latest end wins whichever node writes last.
//! Records expire with the message retention (`store.retention_days`).
//! When more than [`MAX_SPANS`] sessions match, the newest are listed.

use async_trait::async_trait;
use qim_proto::v1;

use super::ClusterStore;
use crate::StoreError;
use crate::presence::{MAX_SPANS, PresenceStore};

/// Sessions older than the range are looked at only this far back (a
/// session lasting longer than this that started before the range is not
/// listed).
const LONGEST_SESSION_MS: i64 = 7 * 24 * 3600 * 1000;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[async_trait]
impl PresenceStore for ClusterStore {
    async fn record_session(
        &self,
        user: &str,
        device: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(), StoreError> {
        if !qim_proto::ids::is_valid_id(user) || !qim_proto::ids::is_valid_id(device) {
            return Err(StoreError::Invalid("bad user or device id".into()));
        }
        self.social
            .exec(
                &self.social.session_put,
                (user, start_ms, device, end_ms, self.cql.ttl()),
            )
            .await?;
        if end_ms > 0 {
            self.social
                .exec(
                    &self.social.seen_put,
                    (user, end_ms, end_ms.saturating_mul(1000)),
                )
                .await?;
        }
        Ok(())
    }

    async fn sessions(
        &self,
        user: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<v1::SessionSpan>, StoreError> {
        if !qim_proto::ids::is_valid_id(user) {
            return Err(StoreError::Invalid("bad user id".into()));
        }
        // Newest first from `to_ms` down, stopping at sessions that start
        // so long before the range that none of them can reach into it.
        let limit = i32::try_from(MAX_SPANS * 2).unwrap_or(i32::MAX);
        let rows = self
            .social
            .exec(&self.social.sessions_of, (user, to_ms, limit))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let mut spans = Vec::new();
        for row in rows.rows::<(i64, String, Option<i64>)>().map_err(corrupt)? {
            let (start_ms, device, end_ms) = row.map_err(corrupt)?;
            if start_ms < from_ms.saturating_sub(LONGEST_SESSION_MS) || spans.len() == MAX_SPANS {
                break;
            }
            let end_ms = end_ms.unwrap_or(0);
            if end_ms == 0 || end_ms >= from_ms {
                spans.push(v1::SessionSpan {
                    device,
                    start_ms,
                    end_ms,
                });
            }
        }
        spans.reverse();
        Ok(spans)
    }

    async fn last_seen(&self, user: &str) -> Result<i64, StoreError> {
        let rows = self
            .social
            .exec(&self.social.seen_read, (user,))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        Ok(rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(corrupt)?
            .and_then(|(v,)| v)
            .unwrap_or(0))
    }
}
