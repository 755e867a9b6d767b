//! A session's credential: its login token is checked at login (format,
//! key, signature, expiry, the user's revocation mark, and whether the
//! business backend disabled the account), again once the
//! session's route is written, and with each `Refresh`; the session ends at
//! the token's expiry ([`deadline`]). And the revocation of a user's tokens,
//! which ends that user's live sessions of older tokens on every node.
//!
//! # Why a revocation misses no session
//! [`revoke_tokens`] writes the mark, then ends the sessions it finds (here,
//! and through the routes in Redis on the other nodes). A session attaches
//! its route first and reads the mark after ([`still_valid`] in the
//! session): either the revocation finds its route, or the session reads
//! the new mark.

use std::time::Duration;

use qim_storage::StoreError;
use thiserror::Error;
use tokio::time::Instant;

use crate::auth::{Claims, TokenError, unix_now};
use crate::ctx::Ctx;

/// Why a token was not taken.
#[derive(Debug, Error)]
pub(crate) enum CheckError {
    /// The token is refused (its code says why).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The revocation mark or the account could not be read.
    #[error("reading the revocation mark or the account: {0}")]
    Store(#[from] StoreError),
    /// The business backend disabled the user's account.
    #[error("the account is disabled")]
    Disabled,
    /// The business backend deleted the user's account: for good.
    #[error("the account is deleted")]
    Deleted,
}

/// Verifies `token` and checks it against its user's revocation mark.
pub(crate) async fn check(ctx: &Ctx, token: &str) -> Result<Claims, CheckError> {
    let claims = ctx.tokens.verify(token, unix_now())?;
    still_valid(ctx, &claims).await?;
    Ok(claims)
}

/// Refuses `claims` of a token issued before its user's revocation mark.
pub(crate) async fn still_valid(ctx: &Ctx, claims: &Claims) -> Result<(), CheckError> {
    let mark = ctx
        .stores
        .revocations
        .tokens_revoked_before(&claims.user_id)
        .await?;
    if claims.issued_at < mark {
        return Err(TokenError::Revoked(mark).into());
    }
    let account = ctx.stores.accounts.account(&claims.user_id).await?;
    match account {
        Some(a) if a.deleted => return Err(CheckError::Deleted),
        Some(a) if a.disabled => return Err(CheckError::Disabled),
        _ => {}
    }
    Ok(())
}

/// When a session on a token expiring at `expires_at` (unix seconds) ends,
/// on tokio's clock (simulated time in tests).
pub(crate) fn deadline(expires_at: u64) -> Instant {
    let left_ms = i128::from(expires_at) * 1000 - i128::from(qim_proto::now_ms());
    let left_ms = u64::try_from(left_ms.max(0)).unwrap_or(u64::MAX);
    Instant::now() + Duration::from_millis(left_ms.min(100 * 365 * 86_400_000))
}

/// Why a revocation failed.
#[derive(Debug, Error)]
pub(crate) enum RevokeError {
    /// Not a valid user id.
    #[error("user must be 1-64 of [A-Za-z0-9._@-]")]
    BadUser,
    /// The mark could not be written, or the other nodes not told (the
    /// mark may be written: revoking again is safe).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Refuses every token of `user` issued before now (unix seconds) from now
/// on, on every node, and ends the user's live sessions of such tokens
/// with `TOKEN_REVOKED`. Returns the mark in force.
pub(crate) async fn revoke_tokens(ctx: &Ctx, user: &str) -> Result<u64, RevokeError> {
    if !qim_proto::ids::is_valid_id(user) {
        return Err(RevokeError::BadUser);
    }
    let mark = ctx
        .stores
        .revocations
        .revoke_tokens(user, unix_now())
        .await?;
    ctx.routes.revoke(user, mark);
    if let Some(cluster) = &ctx.cluster {
        cluster.revoke(user, mark).await?;
    }
    tracing::info!(user, revoked_before = mark, "tokens revoked");
    Ok(mark)
}
