//! The embedded backend's [`GroupStore`]: group records, members, each
//! user's group index, and group resolution for posts. Written by the
//! writer thread, so a group change and a post to the group never
//! interleave.
//!
//! # Keys
//! - `groups`: `[group]` → protobuf `v1.GroupInfo`.
//! - `members`: `[len][group][user]` → protobuf `v1.GroupMember`.
//! - `user_groups`: `[len][user][group]` → empty.
//! - `group_lists`: `[len][group][list tag][user]` → protobuf
//!   `v1.GroupInvitation` (who put the user on the list).
//! - `invitations`: `[len][user][group]` → protobuf `v1.GroupInvitation`,
//!   written and deleted with the group's `Invited` entry. The other lists
//!   have no index by user: [`GroupStore::listed_in`] scans `group_lists`.
//! - `settings`: `[user]` → protobuf `v1.SettingsResponse`.

use async_trait::async_trait;
use prost::Message as _;
use std::collections::HashMap;

use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::kv;
use super::tables::{
    check_key_part, conv_key, encode_record, order_key, prefixed, read_head, unavailable,
};
use super::writer::{Op, Request, Writer};
use crate::OpError;
use crate::StoreError;
use crate::conversations::{Post, group_log};
use crate::groups::{
    GroupApplied, GroupChange, GroupLimits, GroupOp, GroupStore, List, Listed, MAX_MEMBERS_PAGE,
    PlanInput, Roster, check_post, plan,
};

fn list_prefix(group: &str, list: List) -> Vec<u8> {
    let mut key = prefixed(group, 1);
    key.push(list.tag());
    key
}

fn list_key(group: &str, list: List, user: &str) -> Vec<u8> {
    let mut key = list_prefix(group, list);
    key.extend_from_slice(user.as_bytes());
    key
}

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

/// The groups with an entry of `user` in `group_lists`: a scan of every
/// list entry (the lists have no index by user; a deletion is rare and
/// the lists are short beside the members).
fn groups_listing(lists: &kv::Table, user: &str) -> Result<Vec<String>, StoreError> {
    let mut groups = Vec::new();
    for guard in lists.iter() {
        let (key, _) = guard.into_inner().map_err(unavailable)?;
        let Some((&len, rest)) = key.split_first() else {
            continue;
        };
        let len = usize::from(len);
        // `[group][tag][user]` after the length byte.
        if rest.get(len + 1..) == Some(user.as_bytes())
            && let Some(group) = rest.get(..len)
        {
            let group = String::from_utf8_lossy(group).into_owned();
            if groups.last() != Some(&group) {
                groups.push(group);
            }
        }
    }
    Ok(groups)
}

fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn load_group(
    groups: &kv::Table,
    group: &str,
) -> Result<Option<v1::GroupInfo>, StoreError> {
    match groups.get(group.as_bytes()).map_err(unavailable)? {
        Some(v) => decode(&v).map(Some),
        None => Ok(None),
    }
}

pub(super) fn load_member(
    members: &kv::Table,
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

    /// The group's members and lists.
    fn roster(&self, group: &str) -> Result<Roster, StoreError> {
        let mut roster = Roster::default();
        for guard in self.tables.members.prefix(prefixed(group, 0)) {
            let (_, value) = guard.into_inner().map_err(unavailable)?;
            let m: v1::GroupMember = decode(&value)?;
            roster.members.insert(m.user.clone(), m);
        }
        let prefix = prefixed(group, 0);
        for guard in self.tables.group_lists.prefix(&prefix) {
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            let rest = &key[prefix.len()..];
            let (Some(list), Ok(user)) = (
                rest.first().copied().and_then(List::from_tag),
                std::str::from_utf8(rest.get(1..).unwrap_or_default()),
            ) else {
                return Err(StoreError::Corrupt("bad group list key".into()));
            };
            roster
                .lists
                .insert((list, user.to_owned()), decode(&value)?);
        }
        Ok(roster)
    }

    /// Groups `user` owns now.
    fn owned(&self, user: &str) -> Result<u32, StoreError> {
        let prefix = prefixed(user, 0);
        let mut owned = 0;
        for guard in self.tables.user_groups.prefix(&prefix) {
            let (key, _) = guard.into_inner().map_err(unavailable)?;
            let group = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| StoreError::Corrupt("bad user group key".into()))?;
            if load_group(&self.tables.groups, group)?
                .is_some_and(|g| g.owner == user && !g.dissolved)
            {
                owned += 1;
            }
        }
        Ok(owned)
    }

    /// Applies one group change, with the events it appends, in a batch of
    /// its own.
    pub(super) fn group_op(
        &mut self,
        group: &str,
        by: &str,
        op: GroupOp,
        limits: GroupLimits,
    ) -> Result<GroupApplied, OpError> {
        check_key_part(group)?;
        check_key_part(by)?;
        let existing = load_group(&self.tables.groups, group)?;
        let roster = match existing {
            Some(_) => self.roster(group)?,
            None => Roster::default(),
        };
        let log_head = match self.heads.get(&group_log(group)) {
            Some(head) => *head,
            None => read_head(&self.tables.messages, &group_log(group))?,
        };
        let owned = match op.new_owner(by) {
            Some(owner) => {
                check_key_part(owner)?;
                self.owned(owner)?
            }
            None => 0,
        };
        let mut pending = HashMap::new();
        for user in op.invitees() {
            check_key_part(user)?;
            let count = self.tables.invitations.prefix(prefixed(user, 0)).count();
            pending.insert(user.clone(), u32::try_from(count).unwrap_or(u32::MAX));
        }
        let input = PlanInput {
            existing,
            log_head,
            owned,
            pending,
            now_ms: qim_proto::now_ms(),
        };
        let now_ms = input.now_ms;
        let change = plan(group, by, &op, limits, roster, input)?;
        let mut stage = self.new_stage();
        let events = match self.stage_group(&mut stage, group, by, &change, now_ms) {
            Ok(events) => events,
            Err(e) => {
                self.abandon_stage();
                return Err(e.into());
            }
        };
        self.commit_stage(stage)?;
        Ok(change.applied(events))
    }

    /// Stages the rows of a planned change and its events.
    fn stage_group(
        &mut self,
        stage: &mut super::writer::Stage,
        group: &str,
        by: &str,
        change: &GroupChange,
        now_ms: i64,
    ) -> Result<Vec<crate::StoredMessage>, StoreError> {
        let batch = &mut stage.batch;
        for (list, user, entry) in &change.listed {
            check_key_part(user)?;
            batch.insert(
                &self.tables.group_lists,
                list_key(group, *list, user),
                entry.encode_to_vec(),
            );
            if *list == List::Invited {
                batch.insert(
                    &self.tables.invitations,
                    user_group_key(user, group),
                    entry.encode_to_vec(),
                );
            }
        }
        for (list, user) in &change.unlisted {
            batch.remove(&self.tables.group_lists, list_key(group, *list, user));
            if *list == List::Invited {
                batch.remove(&self.tables.invitations, user_group_key(user, group));
            }
        }
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
                // At the bottom of the list until its first message.
                batch.insert(
                    &self.tables.conv_order,
                    order_key(user, false, 0, &convkey),
                    Vec::new(),
                );
                batch.insert(&self.tables.conversations, record, encode_record(&conv, 0));
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
        let mut events = Vec::with_capacity(change.events.len());
        for (inbox, event) in &change.events {
            events.push(self.stage_event(stage, inbox, by, event.clone(), now_ms)?);
        }
        Ok(events)
    }
}

#[async_trait]
impl GroupStore for EmbeddedStore {
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        limits: GroupLimits,
    ) -> Result<GroupApplied, OpError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Im(Box::new(Request::Group {
                group: group.to_owned(),
                by: by.to_owned(),
                op,
                limits,
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

    async fn listed(
        &self,
        group: &str,
        list: List,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        check_key_part(group)?;
        let limit = limit.clamp(1, MAX_MEMBERS_PAGE);
        let prefix = list_prefix(group, list);
        let mut start = list_key(group, list, after);
        if !after.is_empty() {
            start.push(0);
        }
        let mut end = prefix.clone();
        end.push(0xFF);
        let mut out = Vec::new();
        for guard in self.tables.group_lists.range(start..end).take(limit) {
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let user = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| StoreError::Corrupt("bad group list key".into()))?;
            let entry: v1::GroupInvitation = decode(&value)?;
            out.push(Listed {
                user: user.to_owned(),
                by: entry.by,
            });
        }
        Ok(out)
    }

    async fn listing(
        &self,
        group: &str,
        list: List,
        user: &str,
    ) -> Result<Option<Listed>, StoreError> {
        check_key_part(group)?;
        check_key_part(user)?;
        match self
            .tables
            .group_lists
            .get(list_key(group, list, user))
            .map_err(unavailable)?
        {
            Some(v) => {
                let entry: v1::GroupInvitation = decode(&v)?;
                Ok(Some(Listed {
                    user: user.to_owned(),
                    by: entry.by,
                }))
            }
            None => Ok(None),
        }
    }

    async fn invitations(&self, user: &str) -> Result<Vec<v1::GroupInvitation>, StoreError> {
        check_key_part(user)?;
        let mut out = Vec::new();
        for guard in self.tables.invitations.prefix(prefixed(user, 0)) {
            let (_, value) = guard.into_inner().map_err(unavailable)?;
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    async fn listed_in(&self, user: &str) -> Result<Vec<String>, StoreError> {
        check_key_part(user)?;
        let (t, user) = (self.tables.clone(), user.to_owned());
        tokio::task::spawn_blocking(move || groups_listing(&t.group_lists, &user))
            .await
            .map_err(|e| StoreError::Unavailable(format!("list scan task: {e}")))?
    }

    async fn group_adds(&self, user: &str) -> Result<Option<v1::GroupAdds>, StoreError> {
        check_key_part(user)?;
        match self
            .tables
            .settings
            .get(user.as_bytes())
            .map_err(unavailable)?
        {
            Some(v) => {
                let settings: v1::SettingsResponse = decode(&v)?;
                Ok(Some(settings.group_adds()))
            }
            None => Ok(None),
        }
    }

    async fn set_group_adds(&self, user: &str, adds: v1::GroupAdds) -> Result<(), StoreError> {
        check_key_part(user)?;
        let settings = v1::SettingsResponse {
            group_adds: adds as i32,
        };
        let mut batch = self.tables.db.batch();
        batch.insert(
            &self.tables.settings,
            user.as_bytes().to_vec(),
            settings.encode_to_vec(),
        );
        batch.durable().commit().map_err(unavailable)
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
