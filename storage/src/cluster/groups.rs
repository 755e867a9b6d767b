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
//!
//! # Lists, invitations and settings
//! A group's lists (invited, join requests, banned) are rows of the same
//! partition keyed `~<tag>:<user>` (after every user id), so they change in
//! the same transaction as the members. Each user's invitation index
//! (`im_user_invitations`) is a superset like `im_user_groups`: written
//! before the transaction, cleaned after it, and
//! [`GroupStore::invitations`] keeps only invitations the group still
//! holds. The pending-invitation limit counts the index, so a stale entry
//! counts against it until the invitation is answered or cleaned. The
//! limits that span partitions (groups owned, invitations per user) are
//! read before the transaction: concurrent changes may pass them by the
//! number in flight. Events (invitations, join requests, answers) are
//! written after the transaction with seqs of their inboxes; a crash
//! between leaves the change without its events (the invitation or request
//! is still listed).
//!
//! Which groups' lists (any of the three) name a user is kept in a Redis
//! set per user (`<prefix>groups:lists:{<user>}`), added to before the
//! transaction and never taken from (a superset, read only when the user
//! is deleted, filtered by the partition, and removed with the user), so a
//! deletion finds the user's bans and join requests without a scan.

use std::collections::HashMap;

use async_trait::async_trait;
use fred::interfaces::SetsInterface as _;
use qim_proto::v1;

use super::{ClusterStore, Pending, bounded};
use crate::OpError;
use crate::StoreError;
use crate::conversations::group_log;
use crate::cql::writes::Writes;
use crate::groups::{
    GroupApplied, GroupLimits, GroupOp, GroupStore, List, Listed, MAX_MEMBERS_PAGE, PlanInput,
    Roster, plan,
};
use crate::redis::unavailable;

/// Invitation index entries read per user at most (the limit per user is
/// far below).
const MAX_INVITATIONS: usize = 10_000;

/// Rounds of read / conditional write before giving up under contention.
const ROUNDS: usize = 32;

impl ClusterStore {
    /// The Redis set of the groups whose lists may name `user` (see the
    /// module docs, "Lists, invitations and settings").
    pub(super) fn lists_key(&self, user: &str) -> String {
        format!("{}groups:lists:{{{user}}}", self.prefix)
    }

    /// Adds `group` to `user`'s set of groups whose lists name them.
    async fn index_listing(&self, user: &str, group: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .redis
            .sadd(self.lists_key(user), group)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl GroupStore for ClusterStore {
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        limits: GroupLimits,
    ) -> Result<GroupApplied, OpError> {
        let owned = match op.new_owner(by) {
            Some(owner) => self.owned(owner).await?,
            None => 0,
        };
        let counts: Vec<Pending<'_, (String, u32)>> = op
            .invitees()
            .iter()
            .map(|user| {
                Box::pin(async move {
                    let n = self
                        .cql
                        .invitation_index(user, MAX_INVITATIONS)
                        .await?
                        .len();
                    Ok((user.clone(), u32::try_from(n).unwrap_or(u32::MAX)))
                }) as Pending<'_, _>
            })
            .collect();
        let pending: HashMap<String, u32> = bounded(counts).await?.into_iter().collect();
        for _ in 0..ROUNDS {
            let existing = self.cql.group(group, true).await?;
            let expected = existing.as_ref().map(|(_, version)| *version);
            let roster = if existing.is_some() {
                self.cql.roster(group).await?
            } else {
                Roster::default()
            };
            let log_head = self.cql.reserved(&group_log(group)).await?;
            let input = PlanInput {
                existing: existing.map(|(info, _)| info),
                log_head,
                owned,
                pending: pending.clone(),
                now_ms: qim_proto::now_ms(),
            };
            let now_ms = input.now_ms;
            let change = plan(group, by, &op, limits, roster, input)?;
            // The user indexes first: supersets, filtered on read.
            let mut before = Writes::default();
            for user in &change.added {
                before.unit();
                self.cql.w_user_group(&mut before, user, group, true);
            }
            self.cql.commit(before).await?;
            let invited: Vec<Pending<'_, ()>> = change
                .listed
                .iter()
                .filter(|(list, _, _)| *list == List::Invited)
                .map(|(_, user, _)| {
                    Box::pin(self.cql.index_invitation(user, group, true)) as Pending<'_, ()>
                })
                .collect();
            bounded(invited).await?;
            let listed: Vec<Pending<'_, ()>> = change
                .listed
                .iter()
                .map(|(_, user, _)| Box::pin(self.index_listing(user, group)) as Pending<'_, ()>)
                .collect();
            bounded(listed).await?;
            if !self.cql.group_write(group, expected, &change).await? {
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
            let mut events = Vec::with_capacity(change.events.len());
            for (inbox, event) in &change.events {
                let stored = self.event(inbox, by, event.clone(), now_ms).await?;
                after.unit();
                self.cql.w_message(&mut after, &stored)?;
                events.push(stored);
            }
            self.cql.commit(after).await?;
            let uninvited: Vec<Pending<'_, ()>> = change
                .unlisted
                .iter()
                .filter(|(list, _)| *list == List::Invited)
                .map(|(_, user)| {
                    Box::pin(self.cql.index_invitation(user, group, false)) as Pending<'_, ()>
                })
                .collect();
            bounded(uninvited).await?;
            return Ok(change.applied(events));
        }
        Err(OpError::Store(StoreError::Unavailable(format!(
            "group {group} changes too fast"
        ))))
    }

    async fn listed_in(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.redis
            .smembers(self.lists_key(user))
            .await
            .map_err(unavailable)
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

    async fn listed(
        &self,
        group: &str,
        list: List,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let limit = limit.clamp(1, MAX_MEMBERS_PAGE);
        self.cql.listed(group, list, after, limit).await
    }

    async fn listing(
        &self,
        group: &str,
        list: List,
        user: &str,
    ) -> Result<Option<Listed>, StoreError> {
        Ok(self
            .cql
            .listing(group, list, user)
            .await?
            .map(|entry| Listed {
                user: user.to_owned(),
                by: entry.by,
            }))
    }

    async fn invitations(&self, user: &str) -> Result<Vec<v1::GroupInvitation>, StoreError> {
        let groups = self.cql.invitation_index(user, MAX_INVITATIONS).await?;
        let checks: Vec<Pending<'_, Option<v1::GroupInvitation>>> = groups
            .into_iter()
            .map(|g| {
                Box::pin(async move { self.cql.listing(&g, List::Invited, user).await })
                    as Pending<'_, _>
            })
            .collect();
        Ok(bounded(checks).await?.into_iter().flatten().collect())
    }

    async fn group_adds(&self, user: &str) -> Result<Option<v1::GroupAdds>, StoreError> {
        Ok(self
            .cql
            .group_adds(user)
            .await?
            .map(|v| v1::GroupAdds::try_from(v).unwrap_or_default()))
    }

    async fn set_group_adds(&self, user: &str, adds: v1::GroupAdds) -> Result<(), StoreError> {
        self.cql.set_group_adds(user, adds as i32).await
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

impl ClusterStore {
    /// Groups `user` owns now.
    async fn owned(&self, user: &str) -> Result<u32, StoreError> {
        let groups = self.user_groups(user).await?;
        let checks: Vec<Pending<'_, bool>> = groups
            .into_iter()
            .map(|g| {
                Box::pin(async move {
                    Ok(self
                        .cql
                        .group(&g, false)
                        .await?
                        .is_some_and(|(info, _)| info.owner == user && !info.dissolved))
                }) as Pending<'_, _>
            })
            .collect();
        let owned = bounded(checks).await?.into_iter().filter(|o| *o).count();
        Ok(u32::try_from(owned).unwrap_or(u32::MAX))
    }
}
