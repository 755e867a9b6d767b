//! The admin API's handlers and the check in front of them: a key with the
//! route's scope, and a limit on failed attempts per remote address.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use qim_proto::v1::ErrorCode;
use tokio::time::Instant;
use tracing::warn;

use super::error::ApiError;
use super::keys::Scope;
use super::public::{INVALID_USER, UserQuery};
use super::{AdminState, remote};
use crate::mutex::lock;

/// The bearer secret of a request, if it has one.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Lets a request through when it carries a key with `scope`; refuses it
/// (401, 403, 429) otherwise, with a log line and a count.
pub(super) async fn authorize(
    State((state, scope)): State<(AdminState, Scope)>,
    request: Request,
    next: Next,
) -> Response {
    let peer = remote(&request);
    let path = request.uri().path().to_owned();
    let metrics = &state.ctx.metrics;
    let now = Instant::now();
    if let Err(wait) = lock(&state.auth_failures).check(peer.ip(), now) {
        warn!(remote = %peer, path, "admin API refused: too many failed attempts from this address");
        metrics.admin_refusal("rate_limited");
        return ApiError::RateLimited(wait).into_response();
    }
    let key = match (&state.keys, bearer(&request)) {
        (Some(keys), Some(secret)) => keys.find(secret),
        _ => None,
    };
    let Some(key) = key else {
        // Counts against the address whether or not a key was sent: a
        // scanner without one is as much a guesser as one with a wrong one.
        let _ = lock(&state.auth_failures).take(peer.ip(), now);
        warn!(remote = %peer, path, presented = bearer(&request).is_some(), "admin API refused: missing or wrong key");
        metrics.admin_refusal("unauthorized");
        return ApiError::Unauthorized.into_response();
    };
    if !key.allows(scope) {
        warn!(remote = %peer, path, key = %key.id, scope = scope.name(), "admin API refused: the key lacks the scope");
        metrics.admin_refusal("forbidden");
        return ApiError::Forbidden(scope).into_response();
    }
    tracing::debug!(remote = %peer, path, key = %key.id, "admin API request");
    next.run(request).await
}

/// A node as the cluster views show it.
#[derive(Debug, serde::Serialize)]
pub(super) struct NodeView {
    node_id: String,
    addr: String,
    /// TLS on TCP (empty: QUIC only).
    tcp_addr: String,
    route_addr: String,
    connections: u64,
    online_users: u64,
    draining: bool,
}

/// `GET /v1/nodes` (scope `read`): the live nodes with their load.
pub(super) async fn nodes(
    State(state): State<AdminState>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        return Ok(Json(vec![NodeView {
            node_id: ctx.identity.id.clone(),
            addr: ctx.identity.addr.clone(),
            tcp_addr: ctx.identity.tcp_addr.clone(),
            route_addr: ctx.identity.route_addr.clone(),
            connections: ctx.metrics.connections_open.get().max(0).unsigned_abs(),
            online_users: ctx.routes.online_users() as u64,
            draining: *ctx.draining.borrow(),
        }]));
    };
    match cluster.nodes().await {
        Ok(nodes) => Ok(Json(
            nodes
                .into_iter()
                .map(|n| NodeView {
                    node_id: n.id,
                    addr: n.addr,
                    tcp_addr: n.tcp_addr,
                    route_addr: n.route_addr,
                    connections: n.connections,
                    online_users: n.online_users,
                    draining: n.draining,
                })
                .collect(),
        )),
        Err(e) => {
            warn!(error = %e, "admin API: reading the node registry failed");
            Err(ApiError::Unavailable("the cluster registry cannot be read"))
        }
    }
}

/// The answer of `/v1/presence`.
#[derive(Debug, serde::Serialize)]
pub(super) struct PresenceView {
    online: bool,
    devices: Vec<String>,
    last_seen_ms: Option<i64>,
}

/// `GET /v1/presence?user=ID` (scope `read`): whether the user is online,
/// on which devices, and when last seen.
pub(super) async fn presence(
    State(state): State<AdminState>,
    Query(q): Query<UserQuery>,
) -> Result<Json<PresenceView>, ApiError> {
    if !qim_proto::ids::is_valid_id(&q.user) {
        return Err(INVALID_USER);
    }
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        let mut devices: Vec<String> = ctx
            .routes
            .sessions()
            .into_iter()
            .filter(|(user, _, _)| *user == q.user)
            .map(|(_, device, _)| device)
            .collect();
        devices.sort();
        return Ok(Json(PresenceView {
            online: !devices.is_empty(),
            devices,
            last_seen_ms: None,
        }));
    };
    match cluster.presence(&q.user).await {
        Ok(p) => Ok(Json(PresenceView {
            online: p.online(),
            devices: p.devices,
            last_seen_ms: p.last_seen_ms,
        })),
        Err(e) => {
            warn!(error = %e, "admin API: reading presence failed");
            Err(ApiError::Unavailable("presence cannot be read"))
        }
    }
}

/// The answer of `/v1/users/{user}/kick`.
#[derive(Debug, serde::Serialize)]
pub(super) struct KickView {
    /// Sessions of the user this node ended.
    kicked: usize,
}

/// The answer of `revoke-tokens`.
#[derive(Debug, serde::Serialize)]
pub(super) struct RevokedView {
    user: String,
    revoked_before: u64,
}

/// `POST /v1/users/{user}/revoke-tokens` (scope `sessions`): refuses the
/// user's tokens issued before now and ends the sessions of such tokens on
/// every node with `TOKEN_REVOKED` (`credential::revoke_tokens`). 400 for
/// an invalid id, 503 when the store or Redis failed (safe to repeat).
pub(super) async fn revoke_tokens(
    State(state): State<AdminState>,
    Path(user): Path<String>,
) -> Result<Json<RevokedView>, ApiError> {
    use crate::credential::RevokeError;
    match crate::credential::revoke_tokens(&state.ctx, &user).await {
        Ok(revoked_before) => {
            tracing::info!(user, revoked_before, "admin API: revoked the user's tokens");
            Ok(Json(RevokedView {
                user,
                revoked_before,
            }))
        }
        Err(RevokeError::BadUser) => Err(INVALID_USER),
        Err(RevokeError::Store(e)) => {
            warn!(error = %e, user, "revoking tokens failed");
            Err(ApiError::Unavailable("the store is unavailable; retry"))
        }
    }
}

/// `POST /v1/users/{user}/kick` (scope `sessions`): ends the user's
/// sessions on this node with `KICKED` (the SDK does not reconnect on its
/// own after it). In a cluster, call it on each node `/v1/nodes` lists.
pub(super) async fn kick(
    State(state): State<AdminState>,
    Path(user): Path<String>,
) -> Result<Json<KickView>, ApiError> {
    if !qim_proto::ids::is_valid_id(&user) {
        return Err(INVALID_USER);
    }
    let kicked = state.ctx.routes.kick_user(&user, ErrorCode::Kicked);
    tracing::info!(user, kicked, "admin API: kicked the user's sessions");
    Ok(Json(KickView { kicked }))
}
