//! Deleting a user: [`Stores::delete_user`], one store operation on every
//! backend, and [`UserPurge`], the part each backend does on its own.
//!
//! # What goes, in order
//! 1. The account becomes a tombstone ([`AccountStore::mark_deleted`]):
//!    from here on the id's logins are refused and it is never registered
//!    again, so nothing new is written for it by its own sessions.
//! 2. Groups: the user leaves every group. A group the user owns is handed
//!    over first, to its first admin (by user id), else to its first other
//!    member; a group the user is alone in is dissolved. (The group and its
//!    history stay for the others, as in OpenIM and Matrix, where a
//!    deactivated user leaves its rooms and the rooms go on.)
//!    Then the user is taken off every group's lists
//!    ([`GroupStore::listed_in`](crate::GroupStore::listed_in)): a pending
//!    invitation is declined, a join request denied and a ban lifted (by
//!    the group's owner), each a group change like any other. A dissolved
//!    group refuses changes and keeps its lists (nobody reads them).
//! 3. Push device tokens, one by one.
//! 4. [`UserPurge::purge_user`]: the records only the user reads, and the
//!    user's entries on the other side of each relation: the inbox
//!    (messages, delivery cursors, its seq state where the backend keeps
//!    one apart), the conversation list with read cursors, flags and
//!    unread indexes, every peer's conversation with the user, friends on
//!    both sides, friend requests both ways, blocks both ways, cool-downs,
//!    group invitations, settings, preview overrides, scheduled sends,
//!    pending uploads, stored-bytes counters, session records.
//!
//! # Atomicity
//! No backend does all of it in one transaction. Every step is idempotent
//! and the tombstone comes first, so a deletion that stopped half-way (a
//! crash, the store failing) is finished by calling it again: the account
//! is then already deleted and the remaining steps find less to do.
//! [`Stores::delete_user`] answers `None` only for an id never registered.
//!
//! Blob bytes and the references messages hold to them are shared with
//! the other side of each message: they stay while those messages stay
//! (the user's pending uploads go).

use async_trait::async_trait;
use qim_proto::v1;

use crate::accounts::Account;
use crate::groups::{GroupLimits, GroupOp, List};
use crate::{OpError, StoreError, Stores};

/// Conversations read per page while collecting the user's peers.
const PAGE: usize = 256;

/// The part of a deletion each backend does on its own.
#[async_trait]
pub trait UserPurge: Send + Sync + 'static {
    /// Removes `user`'s records (see the [module](self) docs, step 4)
    /// and `user`'s entries in the records of each of `peers` (the users
    /// it had a conversation or a contact relation with). Idempotent.
    async fn purge_user(&self, user: &str, peers: &[String]) -> Result<(), StoreError>;
}

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The account, now deleted.
    pub account: Account,
    /// Groups the user left (handed over first when owned).
    pub groups_left: u32,
    /// Groups dissolved (the user was their only member).
    pub groups_dissolved: u32,
    /// Other users whose records named the user.
    pub peers: u32,
}

impl Stores {
    /// Deletes `user` (see the [module](crate::deletion) docs): `None` when
    /// the id was never registered. Idempotent and resumable: repeat it
    /// after an error until it answers.
    pub async fn delete_user(
        &self,
        user: &str,
        limits: GroupLimits,
    ) -> Result<Option<Deleted>, StoreError> {
        let Some(account) = self.accounts.mark_deleted(user).await? else {
            return Ok(None);
        };
        let (groups_left, groups_dissolved) = self.leave_groups(user, limits).await?;
        self.leave_lists(user, limits).await?;
        for token in self.notify.push_tokens(user).await? {
            self.notify
                .remove_push_token(user, &token.device, None)
                .await?;
        }
        let peers = self.peers_of(user).await?;
        self.purge.purge_user(user, &peers).await?;
        Ok(Some(Deleted {
            account,
            groups_left,
            groups_dissolved,
            peers: u32::try_from(peers.len()).unwrap_or(u32::MAX),
        }))
    }

    /// Leaves every group of `user`; returns (left, dissolved).
    async fn leave_groups(
        &self,
        user: &str,
        limits: GroupLimits,
    ) -> Result<(u32, u32), StoreError> {
        let (mut left, mut dissolved) = (0, 0);
        for group in self.groups.user_groups(user).await? {
            let Some(me) = self.groups.member(&group, user).await? else {
                continue;
            };
            if me.role == v1::GroupRole::Owner as i32 {
                match self.successor(&group, user).await? {
                    Some(next) => {
                        let op = GroupOp::SetRole(next, v1::GroupRole::Owner);
                        tolerate(self.groups.group_apply(&group, user, op, limits).await)?;
                    }
                    None => {
                        let op = GroupOp::Dissolve;
                        tolerate(self.groups.group_apply(&group, user, op, limits).await)?;
                        dissolved += 1;
                        continue;
                    }
                }
            }
            tolerate(
                self.groups
                    .group_apply(&group, user, GroupOp::Leave, limits)
                    .await,
            )?;
            left += 1;
        }
        Ok((left, dissolved))
    }

    /// Takes `user` off the invited, requested and banned lists of every
    /// group that names them there.
    async fn leave_lists(&self, user: &str, limits: GroupLimits) -> Result<(), StoreError> {
        // The invitation index too: it names invitations made before the
        // lists' own index existed.
        let mut groups: std::collections::BTreeSet<String> =
            self.groups.listed_in(user).await?.into_iter().collect();
        groups.extend(
            self.groups
                .invitations(user)
                .await?
                .into_iter()
                .map(|i| i.group),
        );
        for group in groups {
            let Some(info) = self.groups.group(&group).await? else {
                continue;
            };
            let on = |list| self.groups.listing(&group, list, user);
            if on(List::Invited).await?.is_some() {
                let op = GroupOp::DeclineInvitation;
                tolerate(self.groups.group_apply(&group, user, op, limits).await)?;
            }
            if on(List::Requested).await?.is_some() {
                let op = GroupOp::Deny(vec![user.to_owned()]);
                tolerate(
                    self.groups
                        .group_apply(&group, &info.owner, op, limits)
                        .await,
                )?;
            }
            if on(List::Banned).await?.is_some() {
                let op = GroupOp::Unban(vec![user.to_owned()]);
                tolerate(
                    self.groups
                        .group_apply(&group, &info.owner, op, limits)
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// Who takes over `group` from `owner`: the first admin by user id,
    /// else the first other member; `None` when the owner is alone.
    async fn successor(&self, group: &str, owner: &str) -> Result<Option<String>, StoreError> {
        let mut first = None;
        let mut after = String::new();
        loop {
            let page = self.groups.members(group, &after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(first);
            };
            after.clone_from(&last.user);
            for m in page.into_iter().filter(|m| m.user != owner) {
                if m.role == v1::GroupRole::Admin as i32 {
                    return Ok(Some(m.user));
                }
                first.get_or_insert(m.user);
            }
        }
    }

    /// Every user with a one-to-one conversation or a contact relation
    /// with `user`, sorted, without repeats.
    async fn peers_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let mut peers = std::collections::BTreeSet::new();
        let mut after = Vec::new();
        loop {
            let page = self.conversations.conversations(user, &after, PAGE).await?;
            for c in &page.conversations {
                if let Some(v1::peer::Target::User(u)) =
                    c.peer.as_ref().and_then(|p| p.target.as_ref())
                {
                    peers.insert(u.clone());
                }
            }
            if page.next.is_empty() || page.conversations.is_empty() {
                break;
            }
            after = page.next;
        }
        let contacts = self.contacts.contacts(user).await?;
        peers.extend(contacts.friends);
        peers.extend(contacts.blocked);
        peers.extend(contacts.outgoing);
        peers.extend(contacts.incoming.into_iter().map(|r| r.user));
        peers.extend(self.contacts.blockers(user).await?);
        peers.remove(user);
        Ok(peers.into_iter().collect())
    }
}

/// A group change refused because it was already made (a repeated
/// deletion) is not an error; the store failing is.
fn tolerate<T>(r: Result<T, OpError>) -> Result<(), StoreError> {
    match r {
        Ok(_) => Ok(()),
        Err(OpError::Store(e)) => Err(e),
        Err(_) => Ok(()),
    }
}
