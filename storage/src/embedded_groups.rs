//! The embedded backend's [`GroupStore`]: group records, members, each
//! user's group index, and group resolution for posts. Written by the
//! writer thread, so a group change and a post to the group never
//! interleave.
//!
//! # Keys
//! - `groups`: `[group]` → protobuf `v1.GroupInfo`.
//! - `members`: `[len][group][user]` → protobuf `v1.GroupMember`.
//! - `user_groups`: `[len][user][group]` → empty.

use async_trait::async_trait;
use fjall::PersistMode;
use prost::Message as _;
use qim_proto::v1::{self, GroupRole};
use tokio::sync::oneshot;

use super::im::Request;
use super::{EmbeddedStore, Op, Writer, check_key_part, prefixed, read_head, unavailable};
use crate::StoreError;
use crate::conversations::{OpError, Post, group_log};
use crate::groups::{GroupOp, GroupStore};

/// Members listed per page at most.
const MAX_MEMBERS_PAGE: usize = 1000;

fn member_key(group: &str, user: &str) -> Vec<u8> {
    let mut key = prefixed(group, user.len());
    key.extend_from_slice(user.as_bytes());
    key
}

fn user_group_key(user: &str, group: &str) -> Vec<u8> {
    let mut key = prefixed(user, group.len());
    key.extend_from_slice(group.as_bytes());
    key
}

fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn load_group(
    groups: &fjall::Keyspace,
    group: &str,
) -> Result<Option<v1::GroupInfo>, StoreError> {
    match groups.get(group.as_bytes()).map_err(unavailable)? {
        Some(v) => decode(&v).map(Some),
        None => Ok(None),
    }
}

pub(super) fn load_member(
    members: &fjall::Keyspace,
    group: &str,
    user: &str,
) -> Result<Option<v1::GroupMember>, StoreError> {
    match members.get(member_key(group, user)).map_err(unavailable)? {
        Some(v) => decode(&v).map(Some),
        None => Ok(None),
    }
}

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

impl Writer {
    /// Where a group post goes: refused, every member's inbox (the sender's
    /// first), or the group's log.
    pub(super) fn group_inboxes(
        &self,
        post: &Post,
    ) -> Result<Result<Vec<String>, OpError>, StoreError> {
        let Some(v1::peer::Target::Group(group)) = post.to.target.as_ref() else {
            return Err(StoreError::Invalid(
                "a post needs at least one inbox".into(),
            ));
        };
        check_key_part(group)?;
        let Some(info) = load_group(&self.tables.groups, group)? else {
            return Ok(Err(OpError::NotFound));
        };
        if info.dissolved {
            return Ok(Err(OpError::Dissolved));
        }
        let Some(member) = load_member(&self.tables.members, group, &post.sender)? else {
            return Ok(Err(OpError::NotAMember));
        };
        let role = role(&member);
        if member.muted || (info.muted_all && role == GroupRole::Member) {
            return Ok(Err(OpError::Muted));
        }
        if post.mention_all && role == GroupRole::Member {
            return Ok(Err(OpError::NotAllowed));
        }
        if info.read_diffusion {
            return Ok(Ok(vec![group_log(group)]));
        }
        let mut inboxes = vec![post.sender.clone()];
        for guard in self.tables.members.prefix(prefixed(group, 0)) {
            let (_, value) = guard.into_inner().map_err(unavailable)?;
            let m: v1::GroupMember = decode(&value)?;
            if m.user != post.sender {
                inboxes.push(m.user);
            }
        }
        Ok(Ok(inboxes))
    }

    /// Applies one group change in a batch of its own.
    pub(super) fn group_op(
        &mut self,
        group: &str,
        by: &str,
        op: GroupOp,
        threshold: u32,
    ) -> Result<v1::GroupInfo, OpError> {
        check_key_part(group)?;
        check_key_part(by)?;
        let mut batch = self.tables.db.batch();
        let existing = load_group(&self.tables.groups, group)?;
        let log_head = match self.heads.get(&group_log(group)) {
            Some(head) => *head,
            None => read_head(&self.tables.messages, &group_log(group))?,
        };
        let mut info = match (&op, existing) {
            (GroupOp::Create { .. }, Some(_)) => return Err(OpError::Exists),
            (GroupOp::Create { name, now_ms, .. }, None) => v1::GroupInfo {
                id: group.to_owned(),
                name: name.clone(),
                owner: by.to_owned(),
                created_ms: *now_ms,
                ..Default::default()
            },
            (_, None) => return Err(OpError::NotFound),
            (_, Some(info)) if info.dissolved => return Err(OpError::Dissolved),
            (_, Some(info)) => info,
        };
        let by_member = load_member(&self.tables.members, group, by)?;
        let by_rank = by_member.as_ref().map(|m| rank(role(m)));
        let need = |min: GroupRole| -> Result<(), OpError> {
            match by_rank {
                None => Err(OpError::NotAMember),
                Some(r) if r < rank(min) => Err(OpError::NotAllowed),
                Some(_) => Ok(()),
            }
        };
        let add = |batch: &mut fjall::OwnedWriteBatch,
                   info: &mut v1::GroupInfo,
                   user: &str,
                   role: GroupRole|
         -> Result<(), OpError> {
            check_key_part(user)?;
            if load_member(&self.tables.members, group, user)?.is_some() {
                return Ok(());
            }
            let m = v1::GroupMember {
                user: user.to_owned(),
                role: role as i32,
                muted: false,
                joined_seq: log_head,
            };
            batch.insert(
                &self.tables.members,
                member_key(group, user),
                m.encode_to_vec(),
            );
            batch.insert(
                &self.tables.user_groups,
                user_group_key(user, group),
                Vec::new(),
            );
            // The group shows in the member's conversation list from now on.
            let convkey = format!("g:{group}");
            let record = super::im::conv_key(user, &convkey);
            if !self
                .tables
                .conversations
                .contains_key(&record)
                .map_err(unavailable)?
            {
                let conv = v1::Conversation {
                    peer: Some(crate::conversations::group(group)),
                    updated_ms: info.created_ms,
                    ..Default::default()
                };
                batch.insert(
                    &self.tables.conv_order,
                    super::im::order_key(user, &conv, &convkey),
                    Vec::new(),
                );
                batch.insert(&self.tables.conversations, record, conv.encode_to_vec());
            }
            info.member_count += 1;
            Ok(())
        };
        let remove = |batch: &mut fjall::OwnedWriteBatch, info: &mut v1::GroupInfo, user: &str| {
            batch.remove(&self.tables.members, member_key(group, user));
            batch.remove(&self.tables.user_groups, user_group_key(user, group));
            info.member_count = info.member_count.saturating_sub(1);
        };
        match op {
            GroupOp::Create { mut members, .. } => {
                add(&mut batch, &mut info, by, GroupRole::Owner)?;
                members.sort();
                members.dedup();
                members.retain(|m| m != by);
                for user in &members {
                    add(&mut batch, &mut info, user, GroupRole::Member)?;
                }
            }
            GroupOp::Rename(name) => {
                need(GroupRole::Admin)?;
                info.name = name;
            }
            GroupOp::Dissolve => {
                need(GroupRole::Owner)?;
                info.dissolved = true;
                let mut users = Vec::new();
                for guard in self.tables.members.prefix(prefixed(group, 0)) {
                    let (_, value) = guard.into_inner().map_err(unavailable)?;
                    users.push(decode::<v1::GroupMember>(&value)?.user);
                }
                for user in users {
                    remove(&mut batch, &mut info, &user);
                }
            }
            GroupOp::Join => add(&mut batch, &mut info, by, GroupRole::Member)?,
            GroupOp::Leave => {
                need(GroupRole::Member)?;
                if by_rank == Some(rank(GroupRole::Owner)) && info.member_count > 1 {
                    // Hand the group over first.
                    return Err(OpError::NotAllowed);
                }
                remove(&mut batch, &mut info, by);
            }
            GroupOp::Invite(mut users) => {
                need(GroupRole::Member)?;
                users.sort();
                users.dedup();
                for user in &users {
                    add(&mut batch, &mut info, user, GroupRole::Member)?;
                }
            }
            GroupOp::Remove(mut users) => {
                need(GroupRole::Admin)?;
                users.sort();
                users.dedup();
                for user in &users {
                    let Some(target) = load_member(&self.tables.members, group, user)? else {
                        continue;
                    };
                    if Some(rank(role(&target))) >= by_rank {
                        return Err(OpError::NotAllowed);
                    }
                    remove(&mut batch, &mut info, user);
                }
            }
            GroupOp::SetRole(user, new_role) => {
                need(GroupRole::Owner)?;
                let Some(mut target) = load_member(&self.tables.members, group, &user)? else {
                    return Err(OpError::NotAMember);
                };
                if user == by {
                    return Err(OpError::NotAllowed);
                }
                target.role = new_role as i32;
                if new_role == GroupRole::Owner {
                    if let Some(mut me) = by_member {
                        me.role = GroupRole::Admin as i32;
                        batch.insert(
                            &self.tables.members,
                            member_key(group, by),
                            me.encode_to_vec(),
                        );
                    }
                    info.owner = user.clone();
                }
                batch.insert(
                    &self.tables.members,
                    member_key(group, &user),
                    target.encode_to_vec(),
                );
            }
            GroupOp::MuteMember(user, muted) => {
                need(GroupRole::Admin)?;
                let Some(mut target) = load_member(&self.tables.members, group, &user)? else {
                    return Err(OpError::NotAMember);
                };
                if Some(rank(role(&target))) >= by_rank {
                    return Err(OpError::NotAllowed);
                }
                target.muted = muted;
                batch.insert(
                    &self.tables.members,
                    member_key(group, &user),
                    target.encode_to_vec(),
                );
            }
            GroupOp::MuteAll(muted) => {
                need(GroupRole::Admin)?;
                info.muted_all = muted;
            }
        }
        if !info.read_diffusion && info.member_count > threshold {
            info.read_diffusion = true;
            tracing::info!(
                group,
                members = info.member_count,
                "group switches to read diffusion"
            );
        }
        batch.insert(
            &self.tables.groups,
            group.as_bytes().to_vec(),
            info.encode_to_vec(),
        );
        let batch = batch.durability(Some(PersistMode::SyncAll));
        if let Err(e) = batch.commit() {
            tracing::error!(error = %e, "store commit failed; the store takes no more writes until restarted");
            self.failed = Some(e.to_string());
            return Err(OpError::Store(StoreError::Failed(e.to_string())));
        }
        Ok(info)
    }
}

#[async_trait]
impl GroupStore for EmbeddedStore {
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        threshold: u32,
    ) -> Result<v1::GroupInfo, OpError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Im(Box::new(Request::Group {
                group: group.to_owned(),
                by: by.to_owned(),
                op,
                threshold,
                reply,
            })))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn group(&self, group: &str) -> Result<Option<v1::GroupInfo>, StoreError> {
        check_key_part(group)?;
        load_group(&self.tables.groups, group)
    }

    async fn member(&self, group: &str, user: &str) -> Result<Option<v1::GroupMember>, StoreError> {
        check_key_part(group)?;
        check_key_part(user)?;
        load_member(&self.tables.members, group, user)
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError> {
        check_key_part(group)?;
        let limit = limit.clamp(1, MAX_MEMBERS_PAGE);
        let prefix = prefixed(group, 0);
        let mut start = member_key(group, after);
        if !after.is_empty() {
            start.push(0);
        }
        let mut end = prefix.clone();
        end.push(0xFF);
        let mut out = Vec::new();
        for guard in self.tables.members.range(start..end).take(limit) {
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        check_key_part(user)?;
        let prefix = prefixed(user, 0);
        let mut out = Vec::new();
        for guard in self.tables.user_groups.prefix(&prefix) {
            let (key, _) = guard.into_inner().map_err(unavailable)?;
            let group = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| StoreError::Corrupt("bad user group key".into()))?;
            out.push(group.to_owned());
        }
        Ok(out)
    }
}
