//! Fresh login tokens from the app: a [`TokenProvider`] the client asks when
//! the server refuses its token (`BAD_TOKEN`, `TOKEN_EXPIRED`,
//! `TOKEN_REVOKED`) or before the token expires (then it sends the fresh one
//! to the running session with `Refresh`, and the session goes on). Without
//! a provider, a refused token stops the client as before.

use std::time::Duration;

use qim_proto::v1::ErrorCode;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Error;
use crate::shared::Shared;
use crate::sync::lock;

/// Why the client asks for a fresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum TokenRequest {
    /// The server refused the token as invalid (`BAD_TOKEN`: forged, of a
    /// removed key, or malformed).
    Refused,
    /// The token expired (`TOKEN_EXPIRED`).
    Expired,
    /// The user's tokens were revoked (`TOKEN_REVOKED`): a token issued
    /// after the revocation is needed.
    Revoked,
    /// The token expires soon; the session goes on if a fresh one comes.
    ExpiresSoon,
}

/// Gives the client fresh login tokens (from the app's backend). Called on
/// a blocking thread, so it may wait for the network; `None` means there
/// is none: a refused client then stops, an expiring session runs until the
/// server ends it.
pub trait TokenProvider: Send + Sync {
    /// A fresh token for the client's user, or `None`.
    fn fresh_token(&self, reason: TokenRequest) -> Option<String>;
}

impl<F> TokenProvider for F
where
    F: Fn(TokenRequest) -> Option<String> + Send + Sync,
{
    fn fresh_token(&self, reason: TokenRequest) -> Option<String> {
        self(reason)
    }
}

impl std::fmt::Debug for dyn TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider")
    }
}

/// Asks the provider for a token for `reason` and makes it the client's
/// token; says whether there is one.
pub(crate) async fn fetch(shared: &Shared, reason: TokenRequest) -> Option<String> {
    let provider = shared.config.token_provider.clone()?;
    let token = tokio::task::spawn_blocking(move || provider.fresh_token(reason))
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "the token provider failed");
            None
        })?;
    *lock(&shared.token) = token.clone();
    Some(token)
}

/// For a refused login or an ended session: a fresh token from the
/// provider, when `error` is a token refusal and the app gave one.
pub(crate) async fn renew(shared: &Shared, error: &Error) -> bool {
    let Error::Auth { code, .. } = error else {
        return false;
    };
    let reason = match code {
        ErrorCode::TokenExpired => TokenRequest::Expired,
        ErrorCode::TokenRevoked => TokenRequest::Revoked,
        _ => TokenRequest::Refused,
    };
    let renewed = fetch(shared, reason).await.is_some();
    debug!(?reason, renewed, "asked the token provider");
    renewed
}

/// When to ask for a token that expires at `expires_ms` (server clock),
/// `server_offset_ms` being the server's clock minus this one's: a fifth
/// of the time left before the expiry, at most a minute before. `None`
/// without a provider or an expiry.
pub(crate) fn refresh_at(
    shared: &Shared,
    expires_ms: i64,
    server_offset_ms: i64,
) -> Option<Instant> {
    shared.config.token_provider.as_ref()?;
    if expires_ms <= 0 {
        return None;
    }
    let left = expires_ms - (qim_proto::now_ms() + server_offset_ms);
    let early = (left / 5).min(60_000);
    let wait = u64::try_from(left - early).unwrap_or(0);
    Some(Instant::now() + Duration::from_millis(wait))
}
