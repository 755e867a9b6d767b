//! Who may reach whom: the rules every path from one user to another
//! checks (a chat send, a scheduled send, a typing indicator), and what a
//! reader of a read-diffusion group's log does not see.
//!
//! # Invariants
//! - A send to a user who blocked the sender is refused with `BLOCKED`;
//!   with `im.direct_policy = "friends"`, a send between non-friends with
//!   `NOT_FRIENDS`. Both are final (not retryable) and logged.
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
