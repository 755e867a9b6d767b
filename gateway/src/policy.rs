//! Who may reach whom: the rules every path from one user to another
//! checks (a chat send, a scheduled send, a typing indicator).
//!
//! # Invariants
//! - A send to a user who blocked the sender is refused with `BLOCKED`;
//!   with `im.direct_policy = "friends"`, a send between non-friends with
//!   `NOT_FRIENDS`. Both are final (not retryable) and logged.

use qim_proto::v1::ErrorCode;
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
