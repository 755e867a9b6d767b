//! Groups: membership, roles, mutes and the switch from write to read
//! diffusion, as the gateway needs them.
//!
//! # Model
//! A group has members with roles (owner, admin, member) and mutes. While it
//! has at most `threshold` members, a message is copied to every member's
//! inbox (write diffusion, see [`ConversationStore::post`]). When a change
//! takes it past the threshold, it switches to **read diffusion** for good:
//! messages are appended once to the group's log (an inbox named
//! [`group_log`], with its own seq), pushed to online members, and pulled by
//! members in ranges. Since the switch and every post are serialised by the
//! same store write path, each message takes exactly one of the two paths:
//! none is lost or stored twice across the switch.
//!
//! # Contract (every backend)
//! - Each [`GroupOp`] is one atomic write (group record, member rows, each
//!   member's group index); a CQL backend uses a lightweight transaction on
//!   the group row (its `version`) so concurrent changes serialise.
//! - `joined_seq` of a member is the log head when they joined: a member
//!   reads only after it.
//! - Posts to a group check membership and mutes in the same serialised
//!   step as they store the message.
//!
//! [`ConversationStore::post`]: crate::ConversationStore::post
//! [`group_log`]: crate::conversations::group_log

use async_trait::async_trait;
use qim_proto::v1;

use crate::OpError;
use crate::StoreError;

/// A change to a group, made by `by`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GroupOp {
    /// Creates the group with `by` as owner and `members` as members.
    Create {
        /// Name.
        name: String,
        /// Initial members besides the owner.
        members: Vec<String>,
        /// Now.
        now_ms: i64,
    },
    /// Renames (admins).
    Rename(String),
    /// Dissolves (owner); members stop receiving, sends are refused.
    Dissolve,
    /// `by` joins.
    Join,
    /// `by` leaves (an owner must hand over first).
    Leave,
    /// `by` (a member) adds users.
    Invite(Vec<String>),
    /// `by` (an admin, or the owner for admins) removes users.
    Remove(Vec<String>),
    /// The owner sets a role; giving `Owner` hands the group over.
    SetRole(String, v1::GroupRole),
    /// An admin mutes or unmutes a member.
    MuteMember(String, bool),
    /// An admin mutes or unmutes everyone but admins.
    MuteAll(bool),
}

/// Groups and their members.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Applies `op` by `by` to `group` atomically; a group past `threshold`
    /// members switches to read diffusion in the same write.
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        threshold: u32,
    ) -> Result<v1::GroupInfo, OpError>;

    /// The group, if it exists (dissolved ones too).
    async fn group(&self, group: &str) -> Result<Option<v1::GroupInfo>, StoreError>;

    /// One member, if `user` is one.
    async fn member(&self, group: &str, user: &str) -> Result<Option<v1::GroupMember>, StoreError>;

    /// Members after user id `after` (empty: from the start), by user id, at
    /// most `limit`.
    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError>;

    /// The groups `user` is a member of.
    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError>;
}

/// A member's role (unknown values read as member).
pub(crate) fn role(m: &v1::GroupMember) -> v1::GroupRole {
    v1::GroupRole::try_from(m.role).unwrap_or(v1::GroupRole::Member)
}

fn rank(r: v1::GroupRole) -> u8 {
    match r {
        v1::GroupRole::Member => 0,
        v1::GroupRole::Admin => 1,
        v1::GroupRole::Owner => 2,
    }
}

/// What a [`GroupOp`] changes, computed by [`plan`] against the group as
/// read; each backend writes it in one atomic step.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct GroupChange {
    /// The group record after the change.
    pub(crate) info: v1::GroupInfo,
    /// Member rows to write (new members and changed ones).
    pub(crate) put: Vec<v1::GroupMember>,
    /// Users who became members (their group index and conversation).
    pub(crate) added: Vec<String>,
    /// Users who stopped being members.
    pub(crate) removed: Vec<String>,
}

/// Checks `op` by `by` against the group (`existing`, with all its
/// `members`) and computes the change; new members join at `log_head`. A
/// group past `threshold` members switches to read diffusion.
pub(crate) fn plan(
    group: &str,
    by: &str,
    op: &GroupOp,
    threshold: u32,
    existing: Option<v1::GroupInfo>,
    mut members: std::collections::HashMap<String, v1::GroupMember>,
    log_head: u64,
) -> Result<GroupChange, OpError> {
    use v1::GroupRole;
    let mut info = match (op, existing) {
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
    let by_rank = members.get(by).map(|m| rank(role(m)));
    let need = |min: GroupRole| -> Result<(), OpError> {
        match by_rank {
            None => Err(OpError::NotAMember),
            Some(r) if r < rank(min) => Err(OpError::NotAllowed),
            Some(_) => Ok(()),
        }
    };
    let mut change = GroupChange::default();
    let mut add = |members: &mut std::collections::HashMap<String, v1::GroupMember>,
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
    let mut removed = Vec::new();
    let mut put = Vec::new();
    let mut remove = |members: &mut std::collections::HashMap<String, v1::GroupMember>,
                      info: &mut v1::GroupInfo,
                      user: &str| {
        if members.remove(user).is_some() {
            removed.push(user.to_owned());
            info.member_count = info.member_count.saturating_sub(1);
        }
    };
    let sorted = |users: &[String]| {
        let mut users = users.to_vec();
        users.sort();
        users.dedup();
        users
    };
    match op {
        GroupOp::Create { members: users, .. } => {
            add(&mut members, &mut info, by, GroupRole::Owner);
            for user in sorted(users).iter().filter(|u| *u != by) {
                add(&mut members, &mut info, user, GroupRole::Member);
            }
        }
        GroupOp::Rename(name) => {
            need(GroupRole::Admin)?;
            info.name = name.clone();
        }
        GroupOp::Dissolve => {
            need(GroupRole::Owner)?;
            info.dissolved = true;
            let mut users: Vec<String> = members.keys().cloned().collect();
            users.sort();
            for user in users {
                remove(&mut members, &mut info, &user);
            }
        }
        GroupOp::Join => add(&mut members, &mut info, by, GroupRole::Member),
        GroupOp::Leave => {
            need(GroupRole::Member)?;
            if by_rank == Some(rank(GroupRole::Owner)) && info.member_count > 1 {
                // Hand the group over first.
                return Err(OpError::NotAllowed);
            }
            remove(&mut members, &mut info, by);
        }
        GroupOp::Invite(users) => {
            need(GroupRole::Member)?;
            for user in &sorted(users) {
                add(&mut members, &mut info, user, GroupRole::Member);
            }
        }
        GroupOp::Remove(users) => {
            need(GroupRole::Admin)?;
            for user in &sorted(users) {
                let Some(target) = members.get(user) else {
                    continue;
                };
                if Some(rank(role(target))) >= by_rank {
                    return Err(OpError::NotAllowed);
                }
                remove(&mut members, &mut info, user);
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
                    put.push(me);
                }
                info.owner = user.clone();
            }
            put.push(target);
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
            put.push(target);
        }
        GroupOp::MuteAll(muted) => {
            need(GroupRole::Admin)?;
            info.muted_all = *muted;
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
    change.put.extend(put);
    change.removed = removed;
    change.info = info;
    Ok(change)
}

/// Whether a member may post to the group now (with `@all` when
/// `mention_all`): the refusal, if any (dissolved, not a member, muted,
/// `@all` by a member).
pub(crate) fn check_post(
    info: &v1::GroupInfo,
    member: Option<&v1::GroupMember>,
    mention_all: bool,
) -> Result<(), OpError> {
    if info.dissolved {
        return Err(OpError::Dissolved);
    }
    let Some(member) = member else {
        return Err(OpError::NotAMember);
    };
    let role = role(member);
    if member.muted || (info.muted_all && role == v1::GroupRole::Member) {
        return Err(OpError::Muted);
    }
    if mention_all && role == v1::GroupRole::Member {
        return Err(OpError::NotAllowed);
    }
    Ok(())
}
