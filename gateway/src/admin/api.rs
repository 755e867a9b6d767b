//! The admin API's handlers and the check in front of them: a key with the
//! route's scope, and a limit on failed attempts per remote address.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use qim_proto::v1::{ErrorCode, KickReason};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::warn;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::input::{Body, Id, Params};
use super::keys::Scope;
use super::public::{INVALID_USER, UserQuery};
use super::{AdminState, remote};
use crate::mutex::lock;
use crate::route::Ending;

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
#[derive(Debug, Serialize, ToSchema)]
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
#[utoipa::path(get, path = "/v1/nodes", tag = "read",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The live nodes", body = Vec<NodeView>),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope read", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The cluster registry cannot be read", body = ErrorBody),
    ))]
pub(super) async fn nodes(
    State(state): State<AdminState>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    node_views(&state).await.map(Json)
}

/// The live nodes: this one alone, or the cluster's registry.
async fn node_views(state: &AdminState) -> Result<Vec<NodeView>, ApiError> {
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        return Ok(vec![NodeView {
            node_id: ctx.identity.id.clone(),
            addr: ctx.identity.addr.clone(),
            tcp_addr: ctx.identity.tcp_addr.clone(),
            route_addr: ctx.identity.route_addr.clone(),
            connections: ctx.metrics.connections_open.get().max(0).unsigned_abs(),
            online_users: ctx.routes.online_users() as u64,
            draining: *ctx.draining.borrow(),
        }]);
    };
    match cluster.nodes().await {
        Ok(nodes) => Ok(nodes
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
            .collect()),
        Err(e) => {
            warn!(error = %e, "admin API: reading the node registry failed");
            Err(ApiError::Unavailable("the cluster registry cannot be read"))
        }
    }
}

/// The answer of `/v1/presence`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PresenceView {
    /// The user (in `/v1/presence/query` answers).
    user: String,
    online: bool,
    /// The devices with a session, sorted.
    devices: Vec<String>,
    /// When the user was last seen online (ms; cluster only).
    last_seen_ms: Option<i64>,
}

/// The presence of one user (valid id) over this node or the cluster.
async fn presence_of(state: &AdminState, user: String) -> Result<PresenceView, ApiError> {
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        let mut devices: Vec<String> = ctx
            .routes
            .sessions()
            .into_iter()
            .filter(|(u, _, _)| *u == user)
            .map(|(_, device, _)| device)
            .collect();
        devices.sort();
        return Ok(PresenceView {
            user,
            online: !devices.is_empty(),
            devices,
            last_seen_ms: None,
        });
    };
    match cluster.presence(&user).await {
        Ok(p) => {
            let mut devices = p.devices.clone();
            devices.sort();
            Ok(PresenceView {
                user,
                online: p.online(),
                devices,
                last_seen_ms: p.last_seen_ms,
            })
        }
        Err(e) => {
            warn!(error = %e, "admin API: reading presence failed");
            Err(ApiError::Unavailable("presence cannot be read"))
        }
    }
}

/// `GET /v1/presence?user=ID` (scope `read`): whether the user is online,
/// on which devices, and when last seen.
#[utoipa::path(get, path = "/v1/presence", tag = "read",
    params(UserQuery),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The user's presence", body = PresenceView),
        (status = 400, description = "Malformed user id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope read", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "Presence cannot be read", body = ErrorBody),
    ))]
pub(super) async fn presence(
    State(state): State<AdminState>,
    Params(q): Params<UserQuery>,
) -> Result<Json<PresenceView>, ApiError> {
    if !qim_proto::ids::is_valid_id(&q.user) {
        return Err(INVALID_USER);
    }
    presence_of(&state, q.user).await.map(Json)
}

/// `POST /v1/presence/query`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PresenceQuery {
    /// The users, at most `backend.max_presence_users`.
    users: Vec<String>,
}

/// `POST /v1/presence/query` (scope `read`): the presence and devices of
/// many users, in request order.
#[utoipa::path(post, path = "/v1/presence/query", tag = "read",
    request_body = PresenceQuery,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Each user's presence, in request order", body = Vec<PresenceView>),
        (status = 400, description = "Malformed request, a bad id or too many users", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope read", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "Presence cannot be read", body = ErrorBody),
    ))]
pub(super) async fn presence_query(
    State(state): State<AdminState>,
    Body(q): Body<PresenceQuery>,
) -> Result<Json<Vec<PresenceView>>, ApiError> {
    if q.users.len() > state.ctx.config.backend.max_presence_users as usize {
        return Err(ApiError::BadRequest(
            "users names more than backend.max_presence_users",
        ));
    }
    if !q.users.iter().all(|u| qim_proto::ids::is_valid_id(u)) {
        return Err(INVALID_USER);
    }
    let mut out = Vec::with_capacity(q.users.len());
    for user in q.users {
        out.push(presence_of(&state, user).await?);
    }
    Ok(Json(out))
}

/// The answer of `/v1/counts`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Counts {
    /// Live nodes.
    nodes: u64,
    /// Users online, summed over the nodes (a user on two nodes counts
    /// twice).
    online_users: u64,
    /// Open client connections over the nodes.
    connections: u64,
    /// This node's own counts.
    this_node: NodeCounts,
}

/// One node's counts.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct NodeCounts {
    node_id: String,
    online_users: u64,
    connections: u64,
}

/// `GET /v1/counts` (scope `read`): online users and connections of this
/// node and of the cluster.
#[utoipa::path(get, path = "/v1/counts", tag = "read",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The counts", body = Counts),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope read", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The cluster registry cannot be read", body = ErrorBody),
    ))]
pub(super) async fn counts(State(state): State<AdminState>) -> Result<Json<Counts>, ApiError> {
    let nodes = node_views(&state).await?;
    let ctx = &state.ctx;
    Ok(Json(Counts {
        nodes: nodes.len() as u64,
        online_users: nodes.iter().map(|n| n.online_users).sum(),
        connections: nodes.iter().map(|n| n.connections).sum(),
        this_node: NodeCounts {
            node_id: ctx.identity.id.clone(),
            online_users: ctx.routes.online_users() as u64,
            connections: ctx.metrics.connections_open.get().max(0).unsigned_abs(),
        },
    }))
}

/// The answer of `/v1/users/{user}/kick`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KickView {
    /// Sessions of the user this node ended.
    kicked: usize,
}

/// The answer of `revoke-tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RevokedView {
    user: String,
    revoked_before: u64,
}

/// `POST /v1/users/{user}/revoke-tokens` (scope `sessions`): refuses the
/// user's tokens issued before now and ends the sessions of such tokens on
/// every node with `TOKEN_REVOKED` (`credential::revoke_tokens`). 400 for
/// an invalid id, 503 when the store or Redis failed (safe to repeat).
#[utoipa::path(post, path = "/v1/users/{user}/revoke-tokens", tag = "sessions",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The user id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Tokens issued before revoked_before are refused", body = RevokedView),
        (status = 400, description = "Malformed user id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope sessions", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store or Redis failed; safe to repeat", body = ErrorBody),
    ))]
pub(super) async fn revoke_tokens(
    State(state): State<AdminState>,
    Id(user): Id,
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

/// The query of `/v1/users/{user}/kick`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct KickQuery {
    /// Only this device's session; absent: every device of the user.
    #[param(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    #[serde(default)]
    device: Option<String>,
    /// What the user's app is told: `operator` (default), `security`,
    /// `account_disabled`, `account_deleted` or `policy`.
    #[serde(default)]
    reason: Option<String>,
}

/// The kick reason named by the API.
fn kick_reason(name: Option<&str>) -> Option<KickReason> {
    Some(match name {
        None | Some("operator") => KickReason::Operator,
        Some("security") => KickReason::Security,
        Some("account_disabled") => KickReason::AccountDisabled,
        Some("account_deleted") => KickReason::AccountDeleted,
        Some("policy") => KickReason::Policy,
        Some(_) => return None,
    })
}

/// `POST /v1/users/{user}/kick` (scope `sessions`): ends the user's
/// sessions on this node (one device's with `device`) with `KICKED` and a
/// reason the SDK reports (`Error::Kicked`); the SDK does not reconnect on
/// its own after it. In a cluster, call it on each node `/v1/nodes` lists.
#[utoipa::path(post, path = "/v1/users/{user}/kick", tag = "sessions",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The user id"), KickQuery),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The sessions ended here", body = KickView),
        (status = 400, description = "Malformed user or device id, or an unknown reason", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope sessions", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
    ))]
pub(super) async fn kick(
    State(state): State<AdminState>,
    Id(user): Id,
    Params(q): Params<KickQuery>,
) -> Result<Json<KickView>, ApiError> {
    if q.device
        .as_deref()
        .is_some_and(|d| !qim_proto::ids::is_valid_id(d))
    {
        return Err(ApiError::BadRequest(
            "device must be 1-64 of [A-Za-z0-9._@-]",
        ));
    }
    let Some(reason) = kick_reason(q.reason.as_deref()) else {
        return Err(ApiError::BadRequest(
            "reason must be operator, security, account_disabled, account_deleted or policy",
        ));
    };
    let ending = Ending {
        code: ErrorCode::Kicked,
        reason,
    };
    let kicked = state
        .ctx
        .routes
        .kick_user(&user, q.device.as_deref(), ending);
    tracing::info!(user, device = ?q.device, ?reason, kicked, "admin API: kicked sessions");
    Ok(Json(KickView { kicked }))
}
