//! The embedded backend's [`PresenceStore`].
//!
//! # Keys
//! - `sessions_log`: `[len][user][start_ms u64 BE][device]` → `end_ms i64 BE`.
//! - `last_seen`: `[user]` → `i64 BE`.
//!
//! Written directly (not through the writer thread, and without a sync of
//! their own): they are statistics, made durable with the next commit.

use async_trait::async_trait;
use qim_proto::v1;

use super::EmbeddedStore;
use super::tables::{check_key_part, prefixed, unavailable};
use crate::StoreError;
use crate::presence::{MAX_SPANS, PresenceStore};

fn span_key(user: &str, start_ms: i64, device: &str) -> Vec<u8> {
    let mut key = prefixed(user, 8 + device.len());
    key.extend_from_slice(&(start_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(device.as_bytes());
    key
}

fn be_i64(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

#[async_trait]
impl PresenceStore for EmbeddedStore {
    async fn record_session(
        &self,
        user: &str,
        device: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(), StoreError> {
        check_key_part(user)?;
        let t = self.tables.clone();
        let key = span_key(user, start_ms, device);
        let user = user.to_owned();
        tokio::task::spawn_blocking(move || {
            t.sessions_log
                .insert(key, end_ms.to_be_bytes().to_vec())
                .map_err(unavailable)?;
            if end_ms > 0 {
                t.last_seen
                    .insert(user.into_bytes(), end_ms.to_be_bytes().to_vec())
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("presence task: {e}")))?
    }

    async fn sessions(
        &self,
        user: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<v1::SessionSpan>, StoreError> {
        check_key_part(user)?;
        let prefix = prefixed(user, 0);
        let end = span_key(user, to_ms, "");
        let mut out = Vec::new();
        for guard in self.tables.sessions_log.range(prefix.clone()..end) {
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            let rest = &key[prefix.len()..];
            if rest.len() < 8 {
                return Err(StoreError::Corrupt("bad session key".into()));
            }
            let start_ms = be_i64(&rest[..8]);
            let end_ms = be_i64(&value);
            if end_ms != 0 && end_ms < from_ms {
                continue;
            }
            out.push(v1::SessionSpan {
                device: String::from_utf8_lossy(&rest[8..]).into_owned(),
                start_ms,
                end_ms,
            });
            if out.len() == MAX_SPANS {
                break;
            }
        }
        Ok(out)
    }

    async fn last_seen(&self, user: &str) -> Result<i64, StoreError> {
        check_key_part(user)?;
        Ok(self
            .tables
            .last_seen
            .get(user.as_bytes())
            .map_err(unavailable)?
            .map_or(0, |v| be_i64(&v)))
    }
}
