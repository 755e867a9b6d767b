//! The "before offline push" hook: the one place where a notification may
//! be changed or cancelled after the gateway decided to send it and before
//! it goes to the provider. With `webhooks.before_push_url` the business
//! is asked (a signed call within `webhooks.hook_timeout_ms`, see
//! `webhook`): `allow`, `cancel`, or `rewrite` with a new `title` and/or
//! `body`; a failed call applies `webhooks.failure_policy` (open: sent as
//! decided; closed: cancelled). Without it every notification goes out as
//! decided.
//!
//! Contract: return `Some` (the notification, changed or not) to send it,
//! `None` to cancel it (counted as reason `cancelled_by_hook`). The hook
//! runs once per notification, after the rate limit and the cross-node
//! claim, before the first attempt (not again on retries).

use qim_proto::v1::PushProvider;

use super::provider::Notification;
use crate::ctx::Ctx;
use crate::webhook::{Answer, Hook};

/// Bytes of a rewritten title or body at most.
const MAX_TEXT_BYTES: usize = 1024;

/// Changes or cancels `notification` before it is sent.
pub(crate) async fn before_offline_push(
    ctx: &Ctx,
    mut notification: Notification,
) -> Option<Notification> {
    if ctx.config.webhooks.before_push_url.is_none() {
        return Some(notification);
    }
    let n = &notification;
    let provider = PushProvider::try_from(n.token.provider).unwrap_or(PushProvider::Unspecified);
    let data = serde_json::json!({
        "user": n.user,
        "device": n.token.device,
        "provider": provider.as_str_name(),
        "conversation": n.conversation,
        "seq": n.seq,
        "badge": n.badge,
        "title": n.title,
        "body": n.body,
    });
    let valid = |a: &Answer| match a.action.as_str() {
        "allow" | "cancel" => true,
        "rewrite" => {
            (a.title.is_some() || a.text.is_some())
                && a.title.as_ref().is_none_or(|t| t.len() <= MAX_TEXT_BYTES)
                && a.text.as_ref().is_none_or(|t| t.len() <= MAX_TEXT_BYTES)
        }
        _ => false,
    };
    let Some(answer) = ctx.webhooks.ask(ctx, Hook::BeforePush, data, valid).await else {
        return (!ctx.config.webhooks.fail_closed()).then_some(notification);
    };
    match answer.action.as_str() {
        "cancel" => None,
        "rewrite" => {
            if let Some(title) = answer.title {
                notification.title = Some(title);
            }
            if let Some(text) = answer.text {
                notification.body = text;
            }
            Some(notification)
        }
        _ => Some(notification),
    }
}
