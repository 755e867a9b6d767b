//! The "before offline push" hook: the one place where a notification may
//! be changed or cancelled after the gateway decided to send it and before
//! it goes to the provider. A business's synchronous webhook (e.g. to
//! rewrite the text, or to cancel pushes for a user in a meeting) plugs in
//! here; without one every notification goes out as decided.
//!
//! Contract: return `Some` (the notification, changed or not) to send it,
//! `None` to cancel it (counted as reason `cancelled_by_hook`). The hook
//! runs once per notification, after the rate limit and the cross-node
//! claim, before the first attempt (not again on retries); it must bound
//! its own time (a webhook with a timeout and a fail-open or fail-closed
//! policy).

use super::provider::Notification;
use crate::ctx::Ctx;

/// Changes or cancels `notification` before it is sent.
pub(crate) async fn before_offline_push(
    ctx: &Ctx,
    notification: Notification,
) -> Option<Notification> {
    let _ = ctx;
    Some(notification)
}
