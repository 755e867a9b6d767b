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
use std::collections::HashMap;

use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::tables::{check_key_part, conv_key, order_key, prefixed, read_head, unavailable};
use super::writer::{Op, Request, Writer};
use crate::OpError;
use crate::StoreError;
use crate::conversations::{Post, group_log};
use crate::groups::{GroupOp, GroupStore, check_post, plan};

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
        let member = load_member(&self.tables.members, group, &post.sender)?;
        if let Err(refused) = check_post(&info, member.as_ref(), post.mention_all) {
            return Ok(Err(refused));
        }
        if info.read_diffusion {
            return Ok(Ok(vec![group_log(group)]));
        }
        // Members who blocked the sender get no copy (one read of the
        // reverse block index).
        let blockers = super::contacts::blockers_of(&self.tables, &post.sender)?;
        let mut inboxes = vec![post.sender.clone()];
        for guard in self.tables.members.prefix(prefixed(group, 0)) {
            let (_, value) = guard.into_inner().map_err(unavailable)?;
            let m: v1::GroupMember = decode(&value)?;
            if m.user != post.sender && !blockers.contains(&m.user) {
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
        let existing = load_group(&self.tables.groups, group)?;
        let mut members = HashMap::new();
        if existing.is_some() {
            for guard in self.tables.members.prefix(prefixed(group, 0)) {
                let (_, value) = guard.into_inner().map_err(unavailable)?;
                let m: v1::GroupMember = decode(&value)?;
                members.insert(m.user.clone(), m);
            }
        }
        let log_head = match self.heads.get(&group_log(group)) {
            Some(head) => *head,
            None => read_head(&self.tables.messages, &group_log(group))?,
        };
        let change = plan(group, by, &op, threshold, existing, members, log_head)?;
        let mut batch = self.tables.db.batch();
        for m in &change.put {
            check_key_part(&m.user)?;
            batch.insert(
                &self.tables.members,
                member_key(group, &m.user),
                m.encode_to_vec(),
            );
        }
        let convkey = format!("g:{group}");
        for user in &change.added {
            batch.insert(
                &self.tables.user_groups,
                user_group_key(user, group),
                Vec::new(),
            );
            // The group shows in the member's conversation list from now on.
            let record = conv_key(user, &convkey);
            if !self
                .tables
                .conversations
                .contains_key(&record)
                .map_err(unavailable)?
            {
                let conv = v1::Conversation {
                    peer: Some(crate::conversations::group(group)),
                    updated_ms: change.info.created_ms,
                    ..Default::default()
                };
                batch.insert(
                    &self.tables.conv_order,
                    order_key(user, &conv, &convkey),
                    Vec::new(),
                );
                batch.insert(&self.tables.conversations, record, conv.encode_to_vec());
            }
        }
        for user in &change.removed {
            batch.remove(&self.tables.members, member_key(group, user));
            batch.remove(&self.tables.user_groups, user_group_key(user, group));
        }
        batch.insert(
            &self.tables.groups,
            group.as_bytes().to_vec(),
            change.info.encode_to_vec(),
        );
        let batch = batch.durability(Some(PersistMode::SyncAll));
        if let Err(e) = batch.commit() {
            tracing::error!(error = %e, "store commit failed; the store takes no more writes until restarted");
            self.failed = Some(e.to_string());
            return Err(OpError::Store(StoreError::Failed(e.to_string())));
        }
        Ok(change.info)
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
