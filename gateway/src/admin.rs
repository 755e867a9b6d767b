//! Admin HTTP: `/health` and Prometheus `/metrics`. [`app`] returns the
//! router, so tests call it without a server.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Ctx;

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
        .with_state(state)
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
