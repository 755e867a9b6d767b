//! The unauthenticated listener's handlers: health, metrics and the route
//! endpoint, with the route endpoint's per-address rate limit.

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tracing::warn;

use super::error::ApiError;
use super::{AdminState, remote_ip};
use crate::mutex::lock;

/// The `user` query parameter (empty when missing: refused as invalid).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UserQuery {
    /// The user id (1-64 of `[A-Za-z0-9._@-]`).
    #[param(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    #[serde(default)]
    pub(super) user: String,
}

/// The refusal of an invalid user id.
pub(super) const INVALID_USER: ApiError =
    ApiError::BadRequest("user must be 1-64 of [A-Za-z0-9._@-]");

/// The answer of `/route`.
#[derive(Debug, serde::Serialize)]
pub(super) struct RouteView {
    node_id: String,
    addr: String,
    /// TLS on TCP, for clients whose network blocks UDP (empty: QUIC only).
    tcp_addr: String,
    route_addr: String,
    strategy: &'static str,
}

/// Refuses route requests above `cluster.route_requests_per_second` from
/// one address (429, `Retry-After`).
pub(super) async fn limit_routes(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let ip = remote_ip(&request);
    let taken = lock(&state.route_limits).take(ip, Instant::now());
    match taken {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            state.ctx.metrics.route_requests_limited.inc();
            tracing::debug!(remote = %ip, "route endpoint: rate limited");
            ApiError::RateLimited(wait).into_response()
        }
    }
}

pub(super) async fn route(
    State(state): State<AdminState>,
    Query(q): Query<UserQuery>,
) -> Result<Json<RouteView>, ApiError> {
    if !qim_proto::ids::is_valid_id(&q.user) {
        return Err(INVALID_USER);
    }
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        return Ok(Json(RouteView {
            node_id: ctx.identity.id.clone(),
            addr: ctx.identity.addr.clone(),
            tcp_addr: ctx.identity.tcp_addr.clone(),
            route_addr: ctx.identity.route_addr.clone(),
            strategy: "single",
        }));
    };
    match cluster.route(&q.user).await {
        Ok(Some(node)) => Ok(Json(RouteView {
            node_id: node.id,
            addr: node.addr,
            tcp_addr: node.tcp_addr,
            route_addr: node.route_addr,
            strategy: cluster.strategy().name(),
        })),
        Ok(None) => Err(ApiError::Unavailable("no node takes clients")),
        Err(e) => {
            warn!(error = %e, "route lookup failed");
            Err(ApiError::Unavailable("the cluster registry cannot be read"))
        }
    }
}

/// 200 while serving, 503 while draining, with live counts.
pub(super) async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    let draining = *state.ctx.draining.borrow();
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = format!(
        "{{\"status\":\"{}\",\"online_users\":{}}}\n",
        if draining { "draining" } else { "ok" },
        state.ctx.routes.online_users()
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

pub(super) async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ctx.metrics.render(),
    )
}
