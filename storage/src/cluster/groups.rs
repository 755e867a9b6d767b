//! The cluster backend's [`GroupStore`]: a group and its members in one
//! CQL partition (`im_groups`), changed only by lightweight transactions.
//!
//! # Serialising changes with posts
//! The group record carries a `version` (a static column). Every change
//! reads the partition at `LOCAL_SERIAL`, computes the new record and
//! member rows, and writes them in one conditional batch on the partition
//! (`IF version = <read>`, setting `version + 1`): all or nothing, and of
//! two concurrent changes one retries on the new state. Every group post
//! (see `conversations.rs`) resolves its recipients at a version and
//! confirms it with a transaction of its own (`SET version = v IF version
//! = v`) before it takes seqs: a post is ordered either before a change
//! (resolved with the old members and mode) or after it. So a group that
//! crosses the write/read threshold while messages flow sends each message
//! down exactly one path, a removed member gets nothing posted after the
//! removal, and a muted member's post after the mute is refused.
//!
//! Cost: one Paxos round (four round trips to a quorum) per group post,
//! and posts to one group contend on its partition: throughput per group
//! is bounded by LWT throughput on one partition (hundreds per second),
//! not by fan-out. Posts to different groups and one-to-one posts do not
//! contend.
//!
//! # The user index
//! `im_user_groups` (user → groups) lives in other partitions, so it
//! cannot be in the transaction. It is written as a superset: entries are
//! added *before* the transaction and removed after it, and
//! [`GroupStore::user_groups`] keeps only groups whose partition lists the
//! user. A crash between the two leaves a stale entry that reads filter
//! out. The group conversations of added members are written after the
//! transaction (a crash there leaves a member without the conversation
//! row until the first message or read, which recreates it).

use std::collections::HashMap;

use async_trait::async_trait;
use qim_proto::v1;

use super::{ClusterStore, Pending, bounded};
use crate::OpError;
use crate::StoreError;
use crate::conversations::group_log;
use crate::cql::writes::Writes;
use crate::groups::{GroupOp, GroupStore, plan};

/// Members listed per page at most.
const MAX_MEMBERS_PAGE: usize = 1000;

/// Rounds of read / conditional write before giving up under contention.
const ROUNDS: usize = 32;

#[async_trait]
impl GroupStore for ClusterStore {
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        threshold: u32,
    ) -> Result<v1::GroupInfo, OpError> {
        for _ in 0..ROUNDS {
            let existing = self.cql.group(group, true).await?;
            let expected = existing.as_ref().map(|(_, version)| *version);
            let members: HashMap<String, v1::GroupMember> = if existing.is_some() {
                self.cql
                    .members(group, "", usize::MAX >> 2)
                    .await?
                    .into_iter()
                    .map(|m| (m.user.clone(), m))
                    .collect()
            } else {
                HashMap::new()
            };
            let log_head = self.cql.reserved(&group_log(group)).await?;
            let existing = existing.map(|(info, _)| info);
            let change = plan(group, by, &op, threshold, existing, members, log_head)?;
            // The user index first: a superset, filtered on read.
            let mut before = Writes::default();
            for user in &change.added {
                before.unit();
                self.cql.w_user_group(&mut before, user, group, true);
            }
            self.cql.commit(before).await?;
            if !self
                .cql
                .group_write(group, expected, &change.info, &change.put, &change.removed)
                .await?
            {
                tracing::debug!(group, "group changed concurrently; planning again");
                continue;
            }
            let mut after = Writes::default();
            let key = format!("g:{group}");
            for user in &change.added {
                after.unit();
                self.cql
                    .w_group_conv(&mut after, user, &key, change.info.created_ms);
            }
            for user in &change.removed {
                after.unit();
                self.cql.w_user_group(&mut after, user, group, false);
            }
            self.cql.commit(after).await?;
            return Ok(change.info);
        }
        Err(OpError::Store(StoreError::Unavailable(format!(
            "group {group} changes too fast"
        ))))
    }

    async fn group(&self, group: &str) -> Result<Option<v1::GroupInfo>, StoreError> {
        Ok(self.cql.group(group, false).await?.map(|(info, _)| info))
    }

    async fn member(&self, group: &str, user: &str) -> Result<Option<v1::GroupMember>, StoreError> {
        self.cql.member(group, user).await
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError> {
        let limit = limit.clamp(1, MAX_MEMBERS_PAGE);
        self.cql.members(group, after, limit).await
    }

    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let groups = self.cql.user_groups(user).await?;
        let checks: Vec<Pending<'_, Option<String>>> = groups
            .into_iter()
            .map(|g| {
                Box::pin(async move { Ok(self.cql.member(&g, user).await?.is_some().then_some(g)) })
                    as Pending<'_, _>
            })
            .collect();
        Ok(bounded(checks).await?.into_iter().flatten().collect())
    }
}
