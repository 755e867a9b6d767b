//! The cluster backend's [`UserPurge`]: CQL deletes of the user's
//! partitions and of the user's rows in each peer's, then the user's
//! Redis keys (stored-bytes counters, pending uploads).
//!
//! Nothing here is atomic across partitions: each statement is an
//! idempotent delete, so a purge that failed half-way is finished by
//! running it again ([`Stores::delete_user`](crate::Stores::delete_user)
//! repeats it whole). Kept on purpose: the inbox's seq high-water mark
//! (`inbox_heads`, the Redis counter), so no seq of the deleted inbox is
//! ever handed out twice. Idempotency claims and delivery-receipt marks
//! are keyed by message, not listable by user: they expire with the CQL
//! retention.

use async_trait::async_trait;
use fred::interfaces::{HashesInterface as _, KeysInterface as _, SortedSetsInterface as _};
use scylla::serialize::row::SerializeRow;

use super::ClusterStore;
use crate::accounts::check_user;
use crate::cql::SEQS_PER_BUCKET;
use crate::deletion::UserPurge;
use crate::quota::{DAY_COUNT_TTL_SECS, utc_day};
use crate::redis::unavailable;
use crate::{MessageStore as _, ScheduleStore as _, StoreError};

/// Deletes of the user's own partitions (one bind: the user).
const MINE: [&str; 14] = [
    "DELETE FROM device_cursors WHERE inbox = ?",
    "DELETE FROM conversations WHERE owner = ?",
    "DELETE FROM im_conversations WHERE owner = ?",
    "DELETE FROM im_user_groups WHERE user_id = ?",
    "DELETE FROM contacts WHERE owner = ?",
    "DELETE FROM blocks WHERE owner = ?",
    "DELETE FROM blocked_by WHERE user_id = ?",
    "DELETE FROM contact_outgoing WHERE owner = ?",
    "DELETE FROM contact_rejections WHERE owner = ?",
    "DELETE FROM sessions WHERE user_id = ?",
    "DELETE FROM last_seen WHERE user_id = ?",
    "DELETE FROM im_user_invitations WHERE user_id = ?",
    "DELETE FROM user_settings WHERE user_id = ?",
    "DELETE FROM push_settings WHERE user_id = ?",
];

/// Deletes of the user's rows in a peer's partitions (binds: the peer,
/// then the user).
const THEIRS: [&str; 5] = [
    "DELETE FROM contacts WHERE owner = ? AND other = ?",
    "DELETE FROM blocks WHERE owner = ? AND other = ?",
    "DELETE FROM blocked_by WHERE user_id = ? AND blocker = ?",
    "DELETE FROM contact_outgoing WHERE owner = ? AND other = ?",
    "DELETE FROM contact_rejections WHERE owner = ? AND other = ?",
];

/// Deletes of one conversation (binds: owner, peer key).
const CONVERSATION: [&str; 3] = [
    "DELETE FROM im_conv_messages WHERE owner = ? AND peer = ?",
    "DELETE FROM im_conv_unread WHERE owner = ? AND peer = ?",
    "DELETE FROM im_conversations WHERE owner = ? AND peer = ?",
];

fn cql(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("CQL: {e}"))
}

impl ClusterStore {
    async fn run(&self, statement: &str, values: impl SerializeRow) -> Result<(), StoreError> {
        self.cql
            .session
            .query_unpaged(statement, values)
            .await
            .map_err(cql)?;
        Ok(())
    }

    /// The first column (text) of every row `statement` returns.
    async fn texts(&self, statement: &str, user: &str) -> Result<Vec<String>, StoreError> {
        let result = self
            .cql
            .session
            .query_unpaged(statement, (user,))
            .await
            .map_err(cql)?;
        let rows = result.into_rows_result().map_err(cql)?;
        let mut out = Vec::new();
        for row in rows.rows::<(String,)>().map_err(cql)? {
            out.push(row.map_err(cql)?.0);
        }
        Ok(out)
    }
}

#[async_trait]
impl UserPurge for ClusterStore {
    async fn purge_user(&self, user: &str, peers: &[String]) -> Result<(), StoreError> {
        check_user(user)?;
        // Scheduled sends, through the store's own cancel (both indexes).
        for id in self
            .texts("SELECT id FROM schedules_by_owner WHERE owner = ?", user)
            .await?
        {
            match self.cancel(user, &id).await {
                Ok(()) | Err(crate::OpError::NotFound) => {}
                Err(crate::OpError::Store(e)) => return Err(e),
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
        // The conversations' indexes, then the list itself (in MINE).
        for peer in self
            .texts("SELECT peer FROM im_conversations WHERE owner = ?", user)
            .await?
        {
            for statement in CONVERSATION {
                self.run(statement, (user, peer.as_str())).await?;
            }
        }
        // The inbox: every bucket up to the head.
        let head = self.inbox_head(user).await?;
        for bucket in 0..=(head / SEQS_PER_BUCKET) {
            let bucket = i64::try_from(bucket).unwrap_or(i64::MAX);
            self.run(
                "DELETE FROM inbox_messages WHERE inbox = ? AND bucket = ?",
                (user, bucket),
            )
            .await?;
        }
        let convkey = format!("u:{user}");
        for peer in peers {
            for statement in CONVERSATION {
                self.run(statement, (peer.as_str(), convkey.as_str()))
                    .await?;
            }
            for statement in THEIRS {
                self.run(statement, (peer.as_str(), user)).await?;
            }
        }
        for statement in MINE {
            self.run(statement, (user,)).await?;
        }
        // Redis: the stored-bytes counters still alive, pending uploads.
        let today = utc_day(qim_proto::now_ms());
        let days = u32::try_from(DAY_COUNT_TTL_SECS / 86_400 + 1).unwrap_or(3);
        for day in today.saturating_sub(days)..=today {
            let _: i64 = self
                .redis
                .del(self.quota_key(user, day))
                .await
                .map_err(unavailable)?;
        }
        let pending = self.pending_key(user);
        let blobs: Vec<String> = self.redis.hkeys(&pending).await.map_err(unavailable)?;
        for blob in blobs {
            let _: i64 = self
                .redis
                .zrem(self.pending_index(), format!("{user} {blob}"))
                .await
                .map_err(unavailable)?;
        }
        let _: i64 = self.redis.del(pending).await.map_err(unavailable)?;
        // The index of groups whose lists named the user (taken off them
        // before the purge).
        let _: i64 = self
            .redis
            .del(self.lists_key(user))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
