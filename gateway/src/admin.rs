//! Admin HTTP: `/health`, Prometheus `/metrics`, and the cluster views:
//! `/route?user=ID` (which node the user should connect to), `/nodes` (the
//! live nodes with their load) and `/presence?user=ID`; and
//! `POST /v1/users/{user}/revoke-tokens`. [`app`] returns the
//! router, so tests call it without a server; [`route_app`] is the route
//! endpoint alone, for the public `cluster.route_listen` listener.
//!
//! `/route` answers `{"node_id", "addr", "route_addr", "strategy"}` (200),
//! 400 for an invalid user id, 503 when no node takes clients or Redis
//! cannot be read. A single node (no `store.redis`) answers with itself and
//! strategy `"single"`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::ctx::Ctx;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    ctx: Arc<Ctx>,
}

impl AdminState {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

/// The admin router.
pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/route", get(route))
        .route("/nodes", get(nodes))
        .route("/presence", get(presence))
        .route("/v1/users/{user}/revoke-tokens", post(revoke_tokens))
        .with_state(state)
}

/// The route endpoint alone.
pub fn route_app(state: AdminState) -> Router {
    Router::new().route("/route", get(route)).with_state(state)
}

/// The `user` query parameter.
#[derive(Debug, serde::Deserialize)]
struct UserQuery {
    user: String,
}

/// A node as the cluster views show it.
#[derive(Debug, serde::Serialize)]
struct NodeView {
    node_id: String,
    addr: String,
    route_addr: String,
    connections: u64,
    online_users: u64,
    draining: bool,
}

/// The answer of `/route`.
#[derive(Debug, serde::Serialize)]
struct RouteView {
    node_id: String,
    addr: String,
    route_addr: String,
    strategy: &'static str,
}

fn error(status: StatusCode, message: String) -> axum::response::Response {
    (status, Json(serde_json_error(message))).into_response()
}

#[derive(serde::Serialize)]
struct ErrorView {
    error: String,
}

fn serde_json_error(error: String) -> ErrorView {
    ErrorView { error }
}

async fn route(
    State(state): State<AdminState>,
    Query(q): Query<UserQuery>,
) -> axum::response::Response {
    if !qim_proto::ids::is_valid_id(&q.user) {
        return error(
            StatusCode::BAD_REQUEST,
            "user must be 1-64 of [A-Za-z0-9._@-]".into(),
        );
    }
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        return Json(RouteView {
            node_id: ctx.identity.id.clone(),
            addr: ctx.identity.addr.clone(),
            route_addr: ctx.identity.route_addr.clone(),
            strategy: "single",
        })
        .into_response();
    };
    match cluster.route(&q.user).await {
        Ok(Some(node)) => Json(RouteView {
            node_id: node.id,
            addr: node.addr,
            route_addr: node.route_addr,
            strategy: cluster.strategy().name(),
        })
        .into_response(),
        Ok(None) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no node takes clients".into(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "route lookup failed");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

async fn nodes(State(state): State<AdminState>) -> axum::response::Response {
    let ctx = &state.ctx;
    let Some(cluster) = &ctx.cluster else {
        return Json(vec![NodeView {
            node_id: ctx.identity.id.clone(),
            addr: ctx.identity.addr.clone(),
            route_addr: ctx.identity.route_addr.clone(),
            connections: ctx.metrics.connections_open.get().max(0) as u64,
            online_users: ctx.routes.online_users() as u64,
            draining: *ctx.draining.borrow(),
        }])
        .into_response();
    };
    match cluster.nodes().await {
        Ok(nodes) => Json(
            nodes
                .into_iter()
                .map(|n| NodeView {
                    node_id: n.id,
                    addr: n.addr,
                    route_addr: n.route_addr,
                    connections: n.connections,
                    online_users: n.online_users,
                    draining: n.draining,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The answer of `/presence`.
#[derive(Debug, serde::Serialize)]
struct PresenceView {
    online: bool,
    devices: Vec<String>,
    last_seen_ms: Option<i64>,
}

async fn presence(
    State(state): State<AdminState>,
    Query(q): Query<UserQuery>,
) -> axum::response::Response {
    if !qim_proto::ids::is_valid_id(&q.user) {
        return error(
            StatusCode::BAD_REQUEST,
            "user must be 1-64 of [A-Za-z0-9._@-]".into(),
        );
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
        return Json(PresenceView {
            online: !devices.is_empty(),
            devices,
            last_seen_ms: None,
        })
        .into_response();
    };
    match cluster.presence(&q.user).await {
        Ok(p) => Json(PresenceView {
            online: p.online(),
            devices: p.devices,
            last_seen_ms: p.last_seen_ms,
        })
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The answer of `revoke-tokens`.
#[derive(Debug, serde::Serialize)]
struct Revoked {
    user: String,
    revoked_before: u64,
}

/// Revokes the user's tokens issued before now and ends the user's
/// sessions of such tokens on every node (`credential::revoke_tokens`):
/// `{"user", "revoked_before"}` (200), 400 for an invalid id, 503 when the
/// store or Redis failed (safe to repeat).
async fn revoke_tokens(
    State(state): State<AdminState>,
    Path(user): Path<String>,
) -> axum::response::Response {
    use crate::credential::RevokeError;
    match crate::credential::revoke_tokens(&state.ctx, &user).await {
        Ok(revoked_before) => Json(Revoked {
            user,
            revoked_before,
        })
        .into_response(),
        Err(e @ RevokeError::BadUser) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(RevokeError::Store(e)) => {
            tracing::warn!(error = %e, user, "revoking tokens failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable".into())
        }
    }
}

/// 200 while serving, 503 while draining, with live counts.
async fn health(State(state): State<AdminState>) -> impl IntoResponse {
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

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ctx.metrics.render(),
    )
}
