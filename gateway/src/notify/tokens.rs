//! The push token and push settings requests: a device registers its push
//! token (after login, and whenever the platform issues a new one),
//! removes it on logout, and lists the user's devices with one; a user
//! sets whether notifications show a preview.
//!
//! # Rules
//! - A session registers or removes only its own device's token
//!   (`PERMISSION_DENIED` for any other device).
//! - Tokens and app ids are bounded (`notify.max_token_bytes`,
//!   `notify.max_app_id_bytes`) and of the provider's alphabet
//!   (`INVALID_ARGUMENT`).
//! - At most `notify.max_devices` devices with a token per user
//!   (`QUOTA_EXCEEDED`), and `notify.token_writes_per_minute` registrations
//!   and removals per user (`RATE_LIMITED`, with the wait).
//! - A listing shows the token only of the requesting device.

use qim_proto::v1::{self, ErrorCode, push_token_request::Op, rpc_response};
use tokio::time::Instant;

use crate::ctx::Ctx;
use crate::mutex::lock;
use crate::reply::{Refusal, Reply};
use crate::rpc::Caller;

/// Answers a push token request of `caller`.
pub(crate) async fn push_token(ctx: &Ctx, caller: &Caller<'_>, r: v1::PushTokenRequest) -> Reply {
    let store = &ctx.stores.notify;
    match r.op {
        Some(Op::Register(mut token)) => {
            own_device(caller, &token.device)?;
            check_token(ctx, &token)?;
            writes_allowed(ctx, caller.user)?;
            token.device = caller.device.to_owned();
            token.updated_ms = qim_proto::now_ms();
            let max = ctx.config.notify.max_devices as usize;
            store.register_push_token(caller.user, token, max).await?;
            ctx.metrics.push_tokens("registered");
        }
        Some(Op::Unregister(device)) => {
            own_device(caller, &device)?;
            writes_allowed(ctx, caller.user)?;
            if store
                .remove_push_token(caller.user, caller.device, None)
                .await?
            {
                ctx.metrics.push_tokens("removed");
            }
        }
        Some(Op::List(_)) => {}
        None => return Err(Refusal::invalid("empty push token request")),
    }
    let mut tokens = store.push_tokens(caller.user).await?;
    for t in &mut tokens {
        if t.device != caller.device {
            t.token.clear();
        }
    }
    Ok(rpc_response::Kind::PushToken(v1::PushTokenResponse {
        tokens,
    }))
}

/// Answers a push settings request of `user`.
pub(crate) async fn push_settings(ctx: &Ctx, user: &str, r: v1::PushSettingsRequest) -> Reply {
    let store = &ctx.stores.notify;
    let settings = if r.preview.is_none() && r.conversations.is_empty() {
        store.push_settings(user).await?
    } else {
        let max = ctx.config.notify.max_preview_overrides as usize;
        if r.conversations.len() > max {
            return Err(Refusal::new(
                ErrorCode::QuotaExceeded,
                "too many conversations in one request",
            ));
        }
        store.set_push_settings(user, &r, max).await?
    };
    Ok(rpc_response::Kind::PushSettings(settings))
}

fn own_device(caller: &Caller<'_>, device: &str) -> Result<(), Refusal> {
    if device.is_empty() || device == caller.device {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::PermissionDenied,
            "a session manages only its own device's push token",
        ))
    }
}

fn writes_allowed(ctx: &Ctx, user: &str) -> Result<(), Refusal> {
    let wait = lock(&ctx.notify.token_writes).take(user.to_owned(), Instant::now());
    wait.map_err(|wait| {
        ctx.metrics.push_tokens("rate_limited");
        Refusal::new(ErrorCode::RateLimited, "too many push token changes")
            .retry_after(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1))
    })
}

/// A token and app id the provider could have issued, within the bounds.
fn check_token(ctx: &Ctx, token: &v1::PushToken) -> Result<(), Refusal> {
    let config = &ctx.config.notify;
    let provider = v1::PushProvider::try_from(token.provider)
        .ok()
        .filter(|p| *p != v1::PushProvider::Unspecified)
        .ok_or_else(|| Refusal::invalid("unknown push provider"))?;
    let bad = |what: &str| {
        ctx.metrics.push_tokens("invalid");
        Err(Refusal::invalid(what.to_owned()))
    };
    if token.token.is_empty() || token.token.len() > config.max_token_bytes as usize {
        return bad("push token empty or too long");
    }
    let alphabet_ok = match provider {
        // Apple's tokens are hex.
        v1::PushProvider::Apns => token.token.bytes().all(|b| b.is_ascii_hexdigit()),
        // Firebase registration tokens: letters, digits, `-`, `_`, `:`.
        v1::PushProvider::Fcm => token
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':')),
        _ => token.token.bytes().all(|b| b.is_ascii_graphic()),
    };
    if !alphabet_ok {
        return bad("push token has characters its provider never issues");
    }
    if token.app_id.is_empty()
        || token.app_id.len() > config.max_app_id_bytes as usize
        || !token
            .app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("app id empty, too long, or not of [A-Za-z0-9._-]");
    }
    Ok(())
}
