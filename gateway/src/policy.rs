//! Who may reach whom: the rules every path from one user to another
//! checks (a chat send, a scheduled send, a typing indicator), and what a
//! reader of a read-diffusion group's log does not see.
//!
//! # Invariants
//! - A send to a user who blocked the sender is refused with `BLOCKED`;
//!   with `im.direct_policy = "friends"`, a send between non-friends with
//!   `NOT_FRIENDS`. Both are final (not retryable) and logged.
//! - A send to a deleted account is refused with `USER_DELETED` (final),
//!   before anything is stored: a deleted inbox is never brought back.
//!   The tombstone is read with the relation ([`check_direct`], no extra
//!   round trip), or on its own where no relation is read
//!   ([`check_not_deleted`]: the system account's sends, friend requests,
//!   blocks, approvals).
//! - A group's messages from a user the reader blocked are *hidden* in the
//!   reader's read-diffusion log pulls and group history ([`hide_blocked`]):
//!   the entry keeps its seq, so the log has no gap, but carries no
//!   message. This holds while the block stands, for entries from before
//!   it too. (Write-diffusion groups put no copy of a post made during the
//!   block in the blocker's inbox, and read-diffusion entries are not
//!   pushed to the blocker.)

use qim_proto::v1::{self, ErrorCode};
use tracing::debug;

use crate::ctx::Ctx;
use crate::reply::Refusal;

/// Whether `sender` may message `recipient` one to one.
pub(crate) async fn check_direct(ctx: &Ctx, sender: &str, recipient: &str) -> Result<(), Refusal> {
    if sender == recipient {
        return Ok(());
    }
    let relation = ctx.stores.contacts.relation(sender, recipient).await?;
    if relation.deleted {
        debug!(sender, recipient, "refused: the recipient is deleted");
        return Err(deleted_refusal());
    }
    if relation.blocked {
        debug!(sender, recipient, "refused: blocked");
        return Err(Refusal::new(
            ErrorCode::Blocked,
            "the recipient has blocked you",
        ));
    }
    if !relation.friends && ctx.config.im.direct_policy == "friends" {
        debug!(sender, recipient, "refused: not friends");
        return Err(Refusal::new(
            ErrorCode::NotFriends,
            "this server only allows messages between friends",
        ));
    }
    Ok(())
}

/// The refusal of anything addressed to a deleted account.
pub(crate) fn deleted_refusal() -> Refusal {
    Refusal::new(ErrorCode::UserDeleted, "the recipient's account is deleted")
}

/// Refuses with `USER_DELETED` when `user`'s account is deleted (one
/// account read).
pub(crate) async fn check_not_deleted(ctx: &Ctx, user: &str) -> Result<(), Refusal> {
    match ctx.stores.accounts.account(user).await? {
        Some(a) if a.deleted => {
            debug!(user, "refused: the account is deleted");
            Err(Refusal::new(
                ErrorCode::UserDeleted,
                "the account of a user named is deleted",
            ))
        }
        _ => Ok(()),
    }
}

/// Hides, in `entries` of a group's log or history read by `viewer`,
/// the messages of users `viewer` blocked (one read of `viewer`'s blocks).
pub(crate) async fn hide_blocked(
    ctx: &Ctx,
    viewer: &str,
    entries: &mut [v1::InboxEntry],
) -> Result<(), Refusal> {
    if entries.is_empty() {
        return Ok(());
    }
    let blocked = ctx.stores.contacts.blocked(viewer).await?;
    if blocked.is_empty() {
        return Ok(());
    }
    for entry in entries {
        if entry
            .message
            .as_ref()
            .is_some_and(|m| blocked.contains(&m.from_user))
        {
            entry.message = None;
        }
    }
    Ok(())
}
