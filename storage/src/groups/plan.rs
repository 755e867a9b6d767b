//! The rules of every group change, computed against the group as read:
//! [`plan`] checks a [`GroupOp`] and returns the [`GroupChange`] a backend
//! writes in one atomic step; [`check_post`] is the rule of a post.

use std::collections::HashMap;

use qim_proto::v1;

use super::{GroupLimits, GroupOp, List};
use crate::StoreError;
use crate::{OpError, Quota};

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

/// A group's members and lists, as a backend read them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Roster {
    /// Members by user.
    pub(crate) members: HashMap<String, v1::GroupMember>,
    /// List entries by list and user; the value names the group and who
    /// put the user there (`by`).
    pub(crate) lists: HashMap<(List, String), v1::GroupInvitation>,
}

impl Roster {
    fn count(&self, list: List) -> usize {
        self.lists.keys().filter(|(l, _)| *l == list).count()
    }

    fn has(&self, list: List, user: &str) -> bool {
        self.lists.contains_key(&(list, user.to_owned()))
    }
}

/// What a backend reads besides the roster before planning.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanInput {
    /// The group record, if the group exists.
    pub(crate) existing: Option<v1::GroupInfo>,
    /// The group log's head: new members read after it.
    pub(crate) log_head: u64,
    /// Groups owned by [`GroupOp::new_owner`], if the op has one.
    pub(crate) owned: u32,
    /// Pending invitations of each of [`GroupOp::invitees`].
    pub(crate) pending: HashMap<String, u32>,
    /// Now, for the events.
    pub(crate) now_ms: i64,
}

/// What a [`GroupOp`] changes, computed by [`plan`]; each backend writes it
/// in one atomic step.
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
    /// List entries to write (an invitation also goes to the invitee's
    /// index of invitations).
    pub(crate) listed: Vec<(List, String, v1::GroupInvitation)>,
    /// List entries to delete.
    pub(crate) unlisted: Vec<(List, String)>,
    /// Events to append: (inbox, from user, event).
    pub(crate) events: Vec<(String, v1::inbox_event::Kind)>,
    /// Users invited by this change.
    pub(crate) invited: Vec<String>,
    /// A join request was made.
    pub(crate) requested: bool,
}

impl GroupChange {
    /// What the change did, with the events the backend appended.
    pub(crate) fn applied(self, events: Vec<crate::StoredMessage>) -> super::GroupApplied {
        super::GroupApplied {
            info: self.info,
            added: self.added,
            removed: self.removed,
            invited: self.invited,
            requested: self.requested,
            events,
        }
    }
}

/// The member limit of a group: its own, at most the server's (0: the
/// server's).
fn capacity(info: &v1::GroupInfo, limits: &GroupLimits) -> usize {
    let own = match info.max_members {
        0 => limits.max_members,
        n => n.min(limits.max_members),
    };
    own as usize
}

fn invalid(message: &str) -> OpError {
    OpError::Store(StoreError::Invalid(message.to_owned()))
}

fn sorted(users: &[String]) -> Vec<String> {
    let mut users = users.to_vec();
    users.sort();
    users.dedup();
    users
}

/// The state [`plan`] changes as it goes.
struct Planner<'a> {
    group: &'a str,
    by: &'a str,
    info: v1::GroupInfo,
    roster: Roster,
    input: PlanInput,
    limits: GroupLimits,
    change: GroupChange,
}

impl Planner<'_> {
    fn by_rank(&self) -> Option<u8> {
        self.roster.members.get(self.by).map(|m| rank(role(m)))
    }

    fn need(&self, min: v1::GroupRole) -> Result<(), OpError> {
        match self.by_rank() {
            None => Err(OpError::NotAMember),
            Some(r) if r < rank(min) => Err(OpError::NotAllowed),
            Some(_) => Ok(()),
        }
    }

    /// Members and pending invitations: what the limit counts.
    fn occupied(&self) -> usize {
        self.roster.members.len() + self.roster.count(List::Invited)
    }

    /// Room for `more` members or invitations, else `GroupFull`.
    fn room(&self, more: usize) -> Result<(), OpError> {
        if self.occupied() + more > capacity(&self.info, &self.limits) {
            return Err(OpError::GroupFull);
        }
        Ok(())
    }

    fn banned(&self, user: &str) -> Result<(), OpError> {
        if self.roster.has(List::Banned, user) {
            return Err(OpError::Banned);
        }
        Ok(())
    }

    fn entry(&self) -> v1::GroupInvitation {
        v1::GroupInvitation {
            group: self.group.to_owned(),
            name: self.info.name.clone(),
            by: self.by.to_owned(),
        }
    }

    fn list(&mut self, list: List, user: &str, entry: v1::GroupInvitation) {
        self.roster.lists.insert((list, user.to_owned()), entry);
    }

    fn unlist(&mut self, list: List, user: &str) {
        self.roster.lists.remove(&(list, user.to_owned()));
    }

    /// Makes `user` a member with `role` (no-op for a member), taking them
    /// off the invited and requested lists.
    fn add(&mut self, user: &str, role: v1::GroupRole) {
        self.unlist(List::Invited, user);
        self.unlist(List::Requested, user);
        if self.roster.members.contains_key(user) {
            return;
        }
        let m = v1::GroupMember {
            user: user.to_owned(),
            role: role as i32,
            muted: false,
            joined_seq: self.input.log_head,
        };
        self.roster.members.insert(user.to_owned(), m.clone());
        self.change.put.push(m);
        self.change.added.push(user.to_owned());
        self.info.member_count += 1;
    }

    fn remove(&mut self, user: &str) {
        if self.roster.members.remove(user).is_some() {
            self.change.removed.push(user.to_owned());
            self.info.member_count = self.info.member_count.saturating_sub(1);
        }
    }

    /// Sends `users` (not members, not invited yet) an invitation.
    fn invite(&mut self, users: &[String]) -> Result<(), OpError> {
        let fresh: Vec<String> = users
            .iter()
            .filter(|u| {
                *u != self.by
                    && !self.roster.members.contains_key(*u)
                    && !self.roster.has(List::Invited, u)
            })
            .cloned()
            .collect();
        for user in &fresh {
            self.banned(user)?;
            let pending = self.input.pending.get(user).copied().unwrap_or(0);
            if pending >= self.limits.invitations_per_user {
                return Err(OpError::QuotaExceeded(Quota::PendingInvitations));
            }
        }
        for user in fresh {
            let entry = self.entry();
            self.list(List::Invited, &user, entry.clone());
            self.change
                .events
                .push((user.clone(), v1::inbox_event::Kind::GroupInvitation(entry)));
            self.change.invited.push(user);
        }
        Ok(())
    }

    /// Adds `users` directly (refusing banned ones), after checking room
    /// for them and for `invited` more invitations.
    fn add_and_invite(&mut self, add: &[String], invite: &[String]) -> Result<(), OpError> {
        let add: Vec<String> = sorted(add).into_iter().filter(|u| u != self.by).collect();
        let invite: Vec<String> = sorted(invite)
            .into_iter()
            .filter(|u| !add.contains(u))
            .collect();
        for user in add.iter().chain(&invite) {
            self.banned(user)?;
        }
        let new_members = add
            .iter()
            .filter(|u| !self.roster.members.contains_key(*u) && !self.roster.has(List::Invited, u))
            .count();
        let new_invitations = invite
            .iter()
            .filter(|u| !self.roster.members.contains_key(*u) && !self.roster.has(List::Invited, u))
            .count();
        self.room(new_members + new_invitations)?;
        for user in &add {
            self.add(user, v1::GroupRole::Member);
        }
        self.invite(&invite)
    }

    /// Admins and the owner: who hears of join requests.
    fn admins(&self) -> Vec<String> {
        let mut admins: Vec<String> = self
            .roster
            .members
            .values()
            .filter(|m| rank(role(m)) >= rank(v1::GroupRole::Admin))
            .map(|m| m.user.clone())
            .collect();
        admins.sort();
        admins
    }

    fn answer(&mut self, user: &str, accepted: bool) {
        self.change.events.push((
            user.to_owned(),
            v1::inbox_event::Kind::JoinAnswer(v1::JoinAnswer {
                group: self.group.to_owned(),
                accepted,
            }),
        ));
    }

    fn apply(&mut self, op: &GroupOp) -> Result<(), OpError> {
        use v1::GroupRole;
        let by = self.by;
        match op {
            GroupOp::Create {
                members, invited, ..
            } => {
                if self.input.owned >= self.limits.groups_owned {
                    return Err(OpError::QuotaExceeded(Quota::GroupsOwned));
                }
                self.add(by, GroupRole::Owner);
                self.add_and_invite(members, invited)?;
            }
            GroupOp::Rename(name) => {
                self.need(GroupRole::Admin)?;
                self.info.name = name.clone();
            }
            GroupOp::Dissolve => {
                self.need(GroupRole::Owner)?;
                self.info.dissolved = true;
                let mut users: Vec<String> = self.roster.members.keys().cloned().collect();
                users.sort();
                for user in users {
                    self.remove(&user);
                }
                let mut listed: Vec<(List, String)> = self.roster.lists.keys().cloned().collect();
                listed.sort();
                for (list, user) in listed {
                    self.unlist(list, &user);
                }
            }
            GroupOp::Join => {
                self.banned(by)?;
                if self.roster.members.contains_key(by) {
                    return Ok(());
                }
                if self.roster.has(List::Invited, by) {
                    return self.accept();
                }
                match v1::JoinPolicy::try_from(self.info.join_policy) {
                    Ok(v1::JoinPolicy::Open) => {
                        self.room(1)?;
                        self.add(by, GroupRole::Member);
                    }
                    Ok(v1::JoinPolicy::Approval) => {
                        self.change.requested = true;
                        if self.roster.has(List::Requested, by) {
                            return Ok(());
                        }
                        self.room(1)?;
                        if self.roster.count(List::Requested) >= self.limits.join_requests as usize
                        {
                            return Err(OpError::QuotaExceeded(Quota::JoinRequests));
                        }
                        let entry = self.entry();
                        self.list(List::Requested, by, entry);
                        for admin in self.admins() {
                            self.change.events.push((
                                admin,
                                v1::inbox_event::Kind::JoinRequest(v1::JoinRequestEvent {
                                    group: self.group.to_owned(),
                                    user: by.to_owned(),
                                    message: String::new(),
                                }),
                            ));
                        }
                    }
                    _ => return Err(OpError::InviteOnly),
                }
            }
            GroupOp::Leave => {
                self.need(GroupRole::Member)?;
                if self.by_rank() == Some(rank(GroupRole::Owner)) && self.info.member_count > 1 {
                    // Hand the group over first.
                    return Err(OpError::NotAllowed);
                }
                self.remove(by);
            }
            GroupOp::Invite { add, invite } => {
                self.need(GroupRole::Member)?;
                self.add_and_invite(add, invite)?;
            }
            GroupOp::Remove(users) => {
                self.need(GroupRole::Admin)?;
                for user in &sorted(users) {
                    self.check_outranks(user)?;
                    self.remove(user);
                }
            }
            GroupOp::SetRole(user, new_role) => {
                self.need(GroupRole::Owner)?;
                let Some(mut target) = self.roster.members.get(user).cloned() else {
                    return Err(OpError::NotAMember);
                };
                if user == by {
                    return Err(OpError::NotAllowed);
                }
                target.role = *new_role as i32;
                if *new_role == GroupRole::Owner {
                    if self.input.owned >= self.limits.groups_owned {
                        return Err(OpError::QuotaExceeded(Quota::GroupsOwned));
                    }
                    if let Some(mut me) = self.roster.members.get(by).cloned() {
                        me.role = GroupRole::Admin as i32;
                        self.change.put.push(me);
                    }
                    self.info.owner = user.clone();
                }
                self.change.put.push(target);
            }
            GroupOp::MuteMember(user, muted) => {
                self.need(GroupRole::Admin)?;
                let Some(mut target) = self.roster.members.get(user).cloned() else {
                    return Err(OpError::NotAMember);
                };
                self.check_outranks(user)?;
                target.muted = *muted;
                self.change.put.push(target);
            }
            GroupOp::MuteAll(muted) => {
                self.need(GroupRole::Admin)?;
                self.info.muted_all = *muted;
            }
            GroupOp::AcceptInvitation => {
                self.banned(by)?;
                if self.roster.members.contains_key(by) {
                    return Ok(());
                }
                if !self.roster.has(List::Invited, by) {
                    return Err(OpError::NotFound);
                }
                self.accept()?;
            }
            GroupOp::DeclineInvitation => {
                if !self.roster.has(List::Invited, by) {
                    return Err(OpError::NotFound);
                }
                self.unlist(List::Invited, by);
            }
            GroupOp::Approve(users) => {
                self.need(GroupRole::Admin)?;
                let asking: Vec<String> = sorted(users)
                    .into_iter()
                    .filter(|u| self.roster.has(List::Requested, u))
                    .collect();
                self.room(asking.len())?;
                for user in asking {
                    self.add(&user, GroupRole::Member);
                    self.answer(&user, true);
                }
            }
            GroupOp::Deny(users) => {
                self.need(GroupRole::Admin)?;
                for user in sorted(users) {
                    if self.roster.has(List::Requested, &user) {
                        self.unlist(List::Requested, &user);
                        self.answer(&user, false);
                    }
                }
            }
            GroupOp::Ban(users) => {
                self.need(GroupRole::Admin)?;
                for user in &sorted(users) {
                    if user == by {
                        return Err(OpError::NotAllowed);
                    }
                    self.check_outranks(user)?;
                    self.remove(user);
                    self.unlist(List::Invited, user);
                    self.unlist(List::Requested, user);
                    if !self.roster.has(List::Banned, user) {
                        let entry = self.entry();
                        self.list(List::Banned, user, entry);
                    }
                }
            }
            GroupOp::Unban(users) => {
                self.need(GroupRole::Admin)?;
                for user in &sorted(users) {
                    self.unlist(List::Banned, user);
                }
            }
            GroupOp::Settings(s) => {
                self.need(GroupRole::Admin)?;
                self.settings(s.join_policy, s.max_members, s.public)?;
            }
        }
        Ok(())
    }

    /// `by` accepts a pending invitation.
    fn accept(&mut self) -> Result<(), OpError> {
        // The invitation holds a place already; the check guards a limit
        // lowered below it by an older server.
        if self.roster.members.len() + 1 > capacity(&self.info, &self.limits) {
            return Err(OpError::GroupFull);
        }
        self.add(self.by, v1::GroupRole::Member);
        Ok(())
    }

    /// A member `user` (if one) ranks below `by`.
    fn check_outranks(&self, user: &str) -> Result<(), OpError> {
        match self.roster.members.get(user) {
            Some(target) if Some(rank(role(target))) >= self.by_rank() => Err(OpError::NotAllowed),
            _ => Ok(()),
        }
    }

    fn settings(
        &mut self,
        join_policy: Option<i32>,
        max_members: Option<u32>,
        public: Option<bool>,
    ) -> Result<(), OpError> {
        if let Some(policy) = join_policy {
            if v1::JoinPolicy::try_from(policy).is_err() {
                return Err(invalid("unknown join policy"));
            }
            self.info.join_policy = policy;
        }
        if let Some(max) = max_members {
            let max = match max {
                0 => self.limits.max_members,
                n if n > self.limits.max_members => {
                    return Err(invalid("max_members above the server's limit"));
                }
                n => n,
            };
            if (max as usize) < self.occupied() {
                return Err(invalid(
                    "max_members below the members and invitations the group has",
                ));
            }
            self.info.max_members = max;
        }
        if let Some(public) = public {
            self.info.public = public;
        }
        Ok(())
    }
}

/// Checks `op` by `by` against the group (its record in `input`, its
/// members and lists in `roster`) under `limits`, and computes the change.
/// A group past `limits.threshold` members switches to read diffusion.
pub(crate) fn plan(
    group: &str,
    by: &str,
    op: &GroupOp,
    limits: GroupLimits,
    roster: Roster,
    input: PlanInput,
) -> Result<GroupChange, OpError> {
    let info = match (op, input.existing.clone()) {
        (GroupOp::Create { .. }, Some(_)) => return Err(OpError::Exists),
        (
            GroupOp::Create {
                name,
                now_ms,
                join_policy,
                max_members,
                public,
                ..
            },
            None,
        ) => {
            let max = match *max_members {
                0 => limits.max_members,
                n if n > limits.max_members => {
                    return Err(invalid("max_members above the server's limit"));
                }
                n => n,
            };
            v1::GroupInfo {
                id: group.to_owned(),
                name: name.clone(),
                owner: by.to_owned(),
                created_ms: *now_ms,
                join_policy: *join_policy as i32,
                max_members: max,
                public: *public,
                ..Default::default()
            }
        }
        (_, None) => return Err(OpError::NotFound),
        (_, Some(info)) if info.dissolved => return Err(OpError::Dissolved),
        (_, Some(info)) => info,
    };
    let before = roster.lists.clone();
    let mut planner = Planner {
        group,
        by,
        info,
        roster,
        input,
        limits,
        change: GroupChange::default(),
    };
    planner.apply(op)?;
    let Planner {
        mut info,
        mut change,
        roster,
        ..
    } = planner;
    if !info.read_diffusion && info.member_count > limits.threshold {
        info.read_diffusion = true;
        tracing::info!(
            group,
            members = info.member_count,
            "group switches to read diffusion"
        );
    }
    // The lists' rows to write and delete: the difference the op made.
    for ((list, user), entry) in &roster.lists {
        if before.get(&(*list, user.clone())) != Some(entry) {
            change.listed.push((*list, user.clone(), entry.clone()));
        }
    }
    for key in before.keys() {
        if !roster.lists.contains_key(key) {
            change.unlisted.push(key.clone());
        }
    }
    change.listed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    change.unlisted.sort();
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
