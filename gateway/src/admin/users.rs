//! Users' accounts for the business backend: register (what a broadcast
//! reaches), read, disable (logins refused with `USER_DISABLED`, live
//! sessions ended with the reason `ACCOUNT_DISABLED`), enable again, and
//! delete ([`delete`]: for good, with everything the store holds of the
//! user). Register, disable and enable are one durable store write each
//! ([`qim_storage::AccountStore`]); a deletion is
//! [`qim_storage::Stores::delete_user`], at most [`DELETIONS_AT_ONCE`] at
//! once per node.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use qim_proto::v1::{ErrorCode, KickReason};
use qim_storage::accounts::Account;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::AdminState;
use super::error::{ApiError, ErrorBody};
use super::input::{Body, Id};
use crate::route::Ending;

/// `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Register {
    /// The users, at most `backend.max_batch_recipients`; registered ones
    /// are left as they are.
    users: Vec<String>,
}

/// The answer of a registration.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Registered {
    /// Users that were not registered before.
    registered: u32,
}

/// An account as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AccountView {
    user: String,
    /// When it was first registered (ms since the epoch).
    registered_ms: i64,
    /// Logins are refused while set.
    disabled: bool,
    /// Deleted for good (the id is never registered again).
    deleted: bool,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        Self {
            user: a.user,
            registered_ms: a.registered_ms,
            disabled: a.disabled,
            deleted: a.deleted,
        }
    }
}

/// Deletions one node runs at once; more are refused with 429 (each walks
/// all of a user's records).
pub(super) const DELETIONS_AT_ONCE: usize = 4;

/// A deletion's turn: one of the node's [`DELETIONS_AT_ONCE`] permits,
/// held until the deletion answers (whatever the answer), or `429
/// rate_limited` with `Retry-After: 1` when all are taken. Never waits.
fn deletion_turn(
    deletions: &Arc<Semaphore>,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    deletions
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::RateLimited(std::time::Duration::from_secs(1)))
}

/// The answer of a deletion.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeletedView {
    user: String,
    /// Groups the user left (an owned one handed over first: to its first
    /// admin by id, else its first member).
    groups_left: u32,
    /// Groups dissolved (the user was their only member).
    groups_dissolved: u32,
    /// Other users whose contacts or conversations named the user.
    peers: u32,
    /// Live sessions ended on this node.
    kicked: usize,
}

fn store_failed(e: &qim_storage::StoreError) -> ApiError {
    warn!(error = %e, "admin API: the account store failed");
    ApiError::Unavailable("the store is unavailable; retry")
}

/// Registers users (idempotent).
#[utoipa::path(post, path = "/v1/users", tag = "users",
    request_body = Register,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Registered (new ones counted)", body = Registered),
        (status = 400, description = "Malformed request, a bad id or too many users", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope users", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; repeat", body = ErrorBody),
    ))]
pub(super) async fn register(
    State(state): State<AdminState>,
    Body(r): Body<Register>,
) -> Result<Json<Registered>, ApiError> {
    let max = state.ctx.config.backend.max_batch_recipients as usize;
    if r.users.is_empty() || r.users.len() > max {
        return Err(ApiError::BadRequest(
            "users must name 1 to backend.max_batch_recipients users",
        ));
    }
    if !r.users.iter().all(|u| qim_proto::ids::is_valid_id(u)) {
        return Err(super::input::INVALID_ID);
    }
    let registered = state
        .ctx
        .stores
        .accounts
        .register(&r.users, qim_proto::now_ms())
        .await
        .map_err(|e| store_failed(&e))?;
    info!(registered, "admin API: users registered");
    Ok(Json(Registered { registered }))
}

/// A user's account.
#[utoipa::path(get, path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The user id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope users", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn account(
    State(state): State<AdminState>,
    Id(user): Id,
) -> Result<Json<AccountView>, ApiError> {
    match state.ctx.stores.accounts.account(&user).await {
        Ok(Some(a)) => Ok(Json(a.into())),
        Ok(None) => Err(ApiError::NotFound),
        Err(e) => Err(store_failed(&e)),
    }
}

/// Sets the flag; a disable ends the user's sessions here (reason
/// `ACCOUNT_DISABLED`) and on the other nodes.
async fn set(
    state: &AdminState,
    user: &str,
    disabled: bool,
) -> Result<Json<AccountView>, ApiError> {
    let ctx = &state.ctx;
    let account = match ctx.stores.accounts.set_disabled(user, disabled).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(ApiError::NotFound),
        Err(e) => return Err(store_failed(&e)),
    };
    if disabled {
        let ending = Ending {
            code: ErrorCode::Kicked,
            reason: KickReason::AccountDisabled,
        };
        let kicked = ctx.routes.kick_user(user, None, ending);
        if let Some(cluster) = &ctx.cluster {
            // Every session elsewhere ends; their logins are refused.
            if let Err(e) = cluster.revoke(user, u64::MAX).await {
                warn!(user, error = %e, "could not end the sessions on other nodes");
                return Err(ApiError::Unavailable(
                    "disabled, but other nodes were not told; repeat",
                ));
            }
        }
        info!(user, kicked, "admin API: account disabled");
    } else {
        info!(user, "admin API: account enabled");
    }
    Ok(Json(account.into()))
}

/// Disables an account: its logins are refused (`USER_DISABLED`) and its
/// sessions end (`KICKED`, reason `ACCOUNT_DISABLED`).
#[utoipa::path(post, path = "/v1/users/{user}/disable", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The user id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Disabled", body = AccountView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope users", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store or Redis failed; repeat", body = ErrorBody),
    ))]
pub(super) async fn disable(
    State(state): State<AdminState>,
    Id(user): Id,
) -> Result<Json<AccountView>, ApiError> {
    set(&state, &user, true).await
}

/// Enables a disabled account again.
#[utoipa::path(post, path = "/v1/users/{user}/enable", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The user id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Enabled", body = AccountView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope users", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; repeat", body = ErrorBody),
    ))]
pub(super) async fn enable(
    State(state): State<AdminState>,
    Id(user): Id,
) -> Result<Json<AccountView>, ApiError> {
    set(&state, &user, false).await
}

/// Deletes an account for good: its sessions end (`KICKED`, reason
/// `ACCOUNT_DELETED`), its logins are refused (`USER_DELETED`), and the
/// store removes its inbox, conversations (and the peers' conversations
/// with it), contacts on both sides, group memberships, push tokens and
/// settings, scheduled sends, pending uploads and counters; blobs that no
/// other stored message carries are collected after their grace
/// (`media.collect_grace_ms`). The id is never registered again.
/// Idempotent: after a 503, repeat it to finish.
#[utoipa::path(delete, path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The user id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Deleted (also when it was already)", body = DeletedView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope users", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address, or deletions running at once", body = ErrorBody),
        (status = 503, description = "The store or Redis failed half-way; repeat to finish", body = ErrorBody),
    ))]
pub(super) async fn delete(
    State(state): State<AdminState>,
    Id(user): Id,
) -> Result<Json<DeletedView>, ApiError> {
    let _running = deletion_turn(&state.deletions)?;
    let ctx = &state.ctx;
    // The tombstone first: from here every login of the id is refused, so
    // the sessions ended below cannot come back while the store purges.
    match ctx.stores.accounts.mark_deleted(&user).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ApiError::NotFound),
        Err(e) => return Err(store_failed(&e)),
    }
    let ending = Ending {
        code: ErrorCode::Kicked,
        reason: KickReason::AccountDeleted,
    };
    let kicked = ctx.routes.kick_user(&user, None, ending);
    if let Some(cluster) = &ctx.cluster
        && let Err(e) = cluster.revoke(&user, u64::MAX).await
    {
        warn!(user, error = %e, "could not end the sessions on other nodes");
        return Err(ApiError::Unavailable(
            "deleting: other nodes were not told; repeat",
        ));
    }
    let limits = crate::groups::limits(ctx);
    let deleted = match ctx.stores.delete_user(&user, limits).await {
        Ok(Some(d)) => d,
        Ok(None) => return Err(ApiError::NotFound),
        Err(e) => {
            warn!(user, error = %e, "admin API: a deletion stopped half-way");
            return Err(ApiError::Unavailable(
                "the deletion stopped half-way; repeat to finish",
            ));
        }
    };
    info!(
        user,
        kicked,
        groups_left = deleted.groups_left,
        peers = deleted.peers,
        "admin API: account deleted"
    );
    Ok(Json(DeletedView {
        user,
        groups_left: deleted.groups_left,
        groups_dissolved: deleted.groups_dissolved,
        peers: deleted.peers,
        kicked,
    }))
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse as _;

    use super::*;

    /// Four deletions hold a turn each; the fifth is refused at once with
    /// 429, `Retry-After: 1` and the typed body; a finished deletion gives
    /// its turn back.
    #[tokio::test]
    async fn the_fifth_deletion_at_once_is_refused_with_a_typed_429() {
        let deletions = Arc::new(Semaphore::new(DELETIONS_AT_ONCE));
        let mut running: Vec<_> = (0..DELETIONS_AT_ONCE)
            .map(|_| deletion_turn(&deletions).expect("a turn"))
            .collect();
        let refused = deletion_turn(&deletions).expect_err("all turns are taken");
        let response = refused.into_response();
        assert_eq!(response.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(axum::http::header::RETRY_AFTER),
            Some(&axum::http::HeaderValue::from(1u64))
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(body["error"]["retry_after_s"], 1);
        running.pop();
        let again = deletion_turn(&deletions).expect("a turn given back");
        drop((again, running));
        assert_eq!(deletions.available_permits(), DELETIONS_AT_ONCE);
    }
}
