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
use qim_proto::v1::{self, GroupRole};

use super::{ClusterStore, Pending, bounded};
use crate::StoreError;
use crate::conversations::{OpError, group_log};
use crate::cql::im::Writes;
use crate::groups::{GroupOp, GroupStore};

/// Members listed per page at most.
const MAX_MEMBERS_PAGE: usize = 1000;

/// Rounds of read / conditional write before giving up under contention.
const ROUNDS: usize = 32;

fn role(m: &v1::GroupMember) -> GroupRole {
    GroupRole::try_from(m.role).unwrap_or(GroupRole::Member)
}

fn rank(r: GroupRole) -> u8 {
    match r {
        GroupRole::Member => 0,
        GroupRole::Admin => 1,
        GroupRole::Owner => 2,
    }
}

/// A change computed against one version of the group.
struct Change {
    info: v1::GroupInfo,
    expected: Option<i64>,
    put: Vec<v1::GroupMember>,
    added: Vec<String>,
    removed: Vec<String>,
}

impl ClusterStore {
    /// Computes `op` against the group as it is now.
    async fn plan(
        &self,
        g: &str,
        by: &str,
        op: &GroupOp,
        threshold: u32,
    ) -> Result<Change, OpError> {
        let existing = self.cql.group(g, true).await?;
        let (mut info, expected) = match (op, existing) {
            (GroupOp::Create { .. }, Some(_)) => return Err(OpError::Exists),
            (GroupOp::Create { name, now_ms, .. }, None) => (
                v1::GroupInfo {
                    id: g.to_owned(),
                    name: name.clone(),
                    owner: by.to_owned(),
                    created_ms: *now_ms,
                    ..Default::default()
                },
                None,
            ),
            (_, None) => return Err(OpError::NotFound),
            (_, Some((info, _))) if info.dissolved => return Err(OpError::Dissolved),
            (_, Some((info, version))) => (info, Some(version)),
        };
        let mut members: HashMap<String, v1::GroupMember> = if expected.is_some() {
            self.cql
                .members(g, "", usize::MAX >> 2)
                .await?
                .into_iter()
                .map(|m| (m.user.clone(), m))
                .collect()
        } else {
            HashMap::new()
        };
        let log_head = self.cql.reserved(&group_log(g)).await?;
        let by_rank = members.get(by).map(|m| rank(role(m)));
        let need = |min: GroupRole| -> Result<(), OpError> {
            match by_rank {
                None => Err(OpError::NotAMember),
                Some(r) if r < rank(min) => Err(OpError::NotAllowed),
                Some(_) => Ok(()),
            }
        };
        let mut change = Change {
            info: v1::GroupInfo::default(),
            expected,
            put: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
        };
        let add = |members: &mut HashMap<String, v1::GroupMember>,
                   change: &mut Change,
                   info: &mut v1::GroupInfo,
                   user: &str,
                   role: GroupRole| {
            if members.contains_key(user) {
                return;
            }
            let m = v1::GroupMember {
                user: user.to_owned(),
                role: role as i32,
                muted: false,
                joined_seq: log_head,
            };
            members.insert(user.to_owned(), m.clone());
            change.put.push(m);
            change.added.push(user.to_owned());
            info.member_count += 1;
        };
        let remove = |members: &mut HashMap<String, v1::GroupMember>,
                      change: &mut Change,
                      info: &mut v1::GroupInfo,
                      user: &str| {
            if members.remove(user).is_some() {
                change.removed.push(user.to_owned());
                info.member_count = info.member_count.saturating_sub(1);
            }
        };
        match op {
            GroupOp::Create { members: users, .. } => {
                add(&mut members, &mut change, &mut info, by, GroupRole::Owner);
                let mut users = users.clone();
                users.sort();
                users.dedup();
                users.retain(|m| m != by);
                for user in &users {
                    add(
                        &mut members,
                        &mut change,
                        &mut info,
                        user,
                        GroupRole::Member,
                    );
                }
            }
            GroupOp::Rename(name) => {
                need(GroupRole::Admin)?;
                info.name = name.clone();
            }
            GroupOp::Dissolve => {
                need(GroupRole::Owner)?;
                info.dissolved = true;
                let users: Vec<String> = members.keys().cloned().collect();
                for user in users {
                    remove(&mut members, &mut change, &mut info, &user);
                }
            }
            GroupOp::Join => add(&mut members, &mut change, &mut info, by, GroupRole::Member),
            GroupOp::Leave => {
                need(GroupRole::Member)?;
                if by_rank == Some(rank(GroupRole::Owner)) && info.member_count > 1 {
                    // Hand the group over first.
                    return Err(OpError::NotAllowed);
                }
                remove(&mut members, &mut change, &mut info, by);
            }
            GroupOp::Invite(users) => {
                need(GroupRole::Member)?;
                let mut users = users.clone();
                users.sort();
                users.dedup();
                for user in &users {
                    add(
                        &mut members,
                        &mut change,
                        &mut info,
                        user,
                        GroupRole::Member,
                    );
                }
            }
            GroupOp::Remove(users) => {
                need(GroupRole::Admin)?;
                let mut users = users.clone();
                users.sort();
                users.dedup();
                for user in &users {
                    let Some(target) = members.get(user) else {
                        continue;
                    };
                    if Some(rank(role(target))) >= by_rank {
                        return Err(OpError::NotAllowed);
                    }
                    remove(&mut members, &mut change, &mut info, user);
                }
            }
            GroupOp::SetRole(user, new_role) => {
                need(GroupRole::Owner)?;
                let Some(mut target) = members.get(user).cloned() else {
                    return Err(OpError::NotAMember);
                };
                if user == by {
                    return Err(OpError::NotAllowed);
                }
                target.role = *new_role as i32;
                if *new_role == GroupRole::Owner {
                    if let Some(mut me) = members.get(by).cloned() {
                        me.role = GroupRole::Admin as i32;
                        change.put.push(me);
                    }
                    info.owner = user.clone();
                }
                change.put.push(target);
            }
            GroupOp::MuteMember(user, muted) => {
                need(GroupRole::Admin)?;
                let Some(mut target) = members.get(user).cloned() else {
                    return Err(OpError::NotAMember);
                };
                if Some(rank(role(&target))) >= by_rank {
                    return Err(OpError::NotAllowed);
                }
                target.muted = *muted;
                change.put.push(target);
            }
            GroupOp::MuteAll(muted) => {
                need(GroupRole::Admin)?;
                info.muted_all = *muted;
            }
        }
        if !info.read_diffusion && info.member_count > threshold {
            info.read_diffusion = true;
            tracing::info!(
                group = g,
                members = info.member_count,
                "group switches to read diffusion"
            );
        }
        change.info = info;
        Ok(change)
    }
}

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
            let change = self.plan(group, by, &op, threshold).await?;
            // The user index first: a superset, filtered on read.
            let mut before = Writes::default();
            for user in &change.added {
                before.unit();
                self.cql.w_user_group(&mut before, user, group, true);
            }
            self.cql.commit(before).await?;
            let removed: Vec<String> = change.removed.clone();
            if !self
                .cql
                .group_write(group, change.expected, &change.info, &change.put, &removed)
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
