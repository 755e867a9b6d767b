//! Sending one decided notification: the last checks (the device has no
//! live session and has not received the entry since the decision; the
//! user's push rate; one node claims it), the "before offline push" hook,
//! then the provider with retries. A token the provider calls invalid is
//! removed (only while it is still that device's token).

use super::Providers;
use super::decide::{is_live, not_sent};
use super::hook::before_offline_push;
use super::provider::{Notification, Outcome, backoff};
use crate::ctx::Ctx;
use crate::mutex::lock;
use qim_proto::v1::PushProvider;

/// How long a claim of one (device, entry) keeps other nodes off it.
const CLAIM_TTL_MS: u64 = 24 * 3600 * 1000;

/// Sends `n` as the rules allow.
pub(crate) async fn send(ctx: &Ctx, providers: &Providers, n: Notification) {
    let (user, device) = (n.user.clone(), n.token.device.clone());
    if is_live(ctx, &user, &device).await {
        return not_sent(ctx, "online", &user, &device);
    }
    if !n.group_log {
        if let Ok(Some(cursor)) = ctx.stores.messages.load_cursor(&user, &device).await {
            if cursor >= n.seq {
                return not_sent(ctx, "already_delivered", &user, &device);
            }
        }
    }
    if lock(&ctx.notify.pushes)
        .take(user.clone(), tokio::time::Instant::now())
        .is_err()
    {
        return not_sent(ctx, "rate_limited", &user, &device);
    }
    let claim = format!("{user}/{device}/{}/{}", n.conversation, n.seq);
    match ctx.stores.notify.claim_push(&claim, CLAIM_TTL_MS).await {
        Ok(true) => {}
        Ok(false) => return not_sent(ctx, "claimed_elsewhere", &user, &device),
        Err(e) => {
            tracing::warn!(user, device, error = %e, "claiming a push failed");
            return not_sent(ctx, "store_error", &user, &device);
        }
    }
    let Some(n) = before_offline_push(ctx, n).await else {
        return not_sent(ctx, "cancelled_by_hook", &user, &device);
    };
    let provider = PushProvider::try_from(n.token.provider).unwrap_or(PushProvider::Unspecified);
    let config = &ctx.config.notify;
    let mut attempt = 0;
    loop {
        let outcome = match provider {
            PushProvider::Apns => match &providers.apns {
                Some(p) => p.send(&providers.http, &n).await,
                None => Outcome::Failed("provider_not_configured"),
            },
            PushProvider::Fcm => match &providers.fcm {
                Some(p) => p.send(&providers.http, &n).await,
                None => Outcome::Failed("provider_not_configured"),
            },
            PushProvider::Bridge => match &providers.bridge {
                Some(p) => p.send(&providers.http, &n).await,
                None => Outcome::Failed("provider_not_configured"),
            },
            PushProvider::Unspecified => Outcome::Failed("provider_not_configured"),
        };
        match outcome {
            Outcome::Sent => {
                ctx.metrics
                    .pushes_sent
                    .get_or_create(&vec![("provider", provider.as_str_name())])
                    .inc();
                tracing::debug!(user, device, badge = n.badge, "push sent");
                return;
            }
            Outcome::Gone => {
                match ctx
                    .stores
                    .notify
                    .remove_push_token(&user, &device, Some(&n.token.token))
                    .await
                {
                    Ok(_) => ctx.metrics.push_tokens("unregistered_by_provider"),
                    Err(e) => {
                        tracing::warn!(user, device, error = %e, "removing an invalid token failed")
                    }
                }
                tracing::info!(
                    user,
                    device,
                    "the provider says the push token is invalid; removed"
                );
                return not_sent(ctx, "token_unregistered", &user, &device);
            }
            Outcome::Failed(reason) => {
                tracing::warn!(user, device, reason, "push refused");
                return not_sent(ctx, reason, &user, &device);
            }
            Outcome::Retry(wait) => {
                attempt += 1;
                if attempt > config.retries {
                    tracing::warn!(
                        user,
                        device,
                        attempts = attempt,
                        "push failed after every retry"
                    );
                    return not_sent(ctx, "retries_exhausted", &user, &device);
                }
                let pause = wait
                    .map(|w| w.min(std::time::Duration::from_millis(config.retry_max_ms)))
                    .unwrap_or_else(|| backoff(config, attempt));
                tokio::time::sleep(pause).await;
            }
        }
    }
}
