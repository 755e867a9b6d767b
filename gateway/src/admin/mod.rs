//! Admin HTTP, on two listeners with different trust:
//!
//! - [`metrics_app`], on `admin.listen`, without authentication: `/health`
//!   (200 while serving, 503 while draining), Prometheus `/metrics`, and the
//!   route endpoint `/route?user=ID`. It exposes load and counts, no user
//!   data; keep it on a private network.
//! - [`api_app`], on `admin.api_listen`, only when `admin.keys_file` is set:
//!   the admin API under `/v1/`, each route needing a key with its scope
//!   (see [`keys`]): `GET /v1/nodes` and `GET /v1/presence?user=ID`
//!   (scope `read`), `POST /v1/users/{user}/kick` and
//!   `POST /v1/users/{user}/revoke-tokens` (scope `sessions`), and the
//!   business backend's routes: counts and presence queries (`read`),
//!   messages, batches and notifications (`messages`, [`send`]: the
//!   clients' durable path), broadcasts to every registered user
//!   (`messages`, [`broadcast`]: paced, resumable, progress visible), group
//!   administration (`groups`, [`groups`]), accounts (`users`, [`users`]:
//!   register, disable, enable, `DELETE /v1/users/{user}`).
//!   `GET /v1/openapi.json` is the document of them all, generated from
//!   the code ([`openapi`]). Malformed input is a typed 400 ([`input`]).
//!   Refusals are typed JSON ([`error`]): 401 without a key or with a wrong
//!   one, 403 outside the key's scopes, 429 with `Retry-After` once an
//!   address failed `admin.auth_failures_per_minute` times. Each refusal is
//!   logged and counted in `qim_admin_refusals_total`.
//!
//! [`route_app`] is the route endpoint alone, for the public
//! `cluster.route_listen` listener. `/route` answers `{"node_id", "addr",
//! "tcp_addr", "route_addr", "strategy"}` (200; `tcp_addr` is the node's
//! TLS-on-TCP address, empty when it serves QUIC only), 400 for an invalid user id, 503 when no
//! node takes clients or Redis cannot be read, 429 with `Retry-After` above
//! `cluster.route_requests_per_second` per remote address. A single node (no
//! `store.redis`) answers with itself and strategy `"single"`.
//!
//! The routers are plain `axum::Router`s, so tests call them without a
//! server; the server serves them with the peer's address
//! (`ConnectInfo<SocketAddr>`), which the rate limits key on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware;
use axum::routing::{get, post};

use crate::ctx::Ctx;
use crate::limit::PerAddress;

mod api;
mod broadcast;
pub mod error;
mod groups;
mod input;
pub mod keys;
mod openapi;
mod public;
mod send;
mod users;

pub use keys::{ApiKeys, KeysError, Scope};

/// Remote addresses remembered by each per-address limit.
const ADDRESSES: usize = 65_536;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    ctx: Arc<Ctx>,
    /// The admin API's keys; `None`: the API is off.
    keys: Option<Arc<ApiKeys>>,
    /// Route endpoint requests per remote address (both listeners).
    route_limits: Arc<Mutex<PerAddress>>,
    /// Failed admin API authentications per remote address.
    auth_failures: Arc<Mutex<PerAddress>>,
    /// This node's broadcasts and their progress.
    broadcasts: Arc<broadcast::Broadcasts>,
    /// Permits of the deletions running on this node.
    deletions: Arc<tokio::sync::Semaphore>,
}

impl AdminState {
    pub(crate) fn new(ctx: Arc<Ctx>, keys: Option<Arc<ApiKeys>>) -> Self {
        let cluster = &ctx.config.cluster;
        let route_limits = PerAddress::new(
            f64::from(cluster.route_requests_per_second),
            cluster.route_requests_burst,
            ADDRESSES,
        );
        let per_minute = ctx.config.admin.auth_failures_per_minute;
        let auth_failures = PerAddress::new(f64::from(per_minute) / 60.0, per_minute, ADDRESSES);
        Self {
            ctx,
            keys,
            route_limits: Arc::new(Mutex::new(route_limits)),
            auth_failures: Arc::new(Mutex::new(auth_failures)),
            broadcasts: Arc::default(),
            deletions: Arc::new(tokio::sync::Semaphore::new(users::DELETIONS_AT_ONCE)),
        }
    }
}

/// The peer's IP address, as the server recorded it (unspecified when the
/// router runs without a server, as in unit tests).
fn remote(request: &Request) -> SocketAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |c| c.0)
}

fn remote_ip(request: &Request) -> IpAddr {
    remote(request).ip()
}

/// The unauthenticated listener: health, metrics, the route endpoint.
pub fn metrics_app(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(public::health))
        .route("/metrics", get(public::metrics))
        .merge(route_routes(&state))
        .fallback(error::not_found)
        .with_state(state)
}

/// The route endpoint alone (rate-limited per remote address).
pub fn route_app(state: AdminState) -> Router {
    route_routes(&state)
        .fallback(error::not_found)
        .with_state(state)
}

fn route_routes(state: &AdminState) -> Router<AdminState> {
    Router::new().route(
        "/route",
        get(public::route).route_layer(middleware::from_fn_with_state(
            state.clone(),
            public::limit_routes,
        )),
    )
}

/// The authenticated admin API (`/v1/...`). Each group of routes sits
/// behind the scope it needs; the OpenAPI document needs none.
pub fn api_app(state: AdminState) -> Router {
    let scoped =
        |scope: Scope| middleware::from_fn_with_state((state.clone(), scope), api::authorize);
    let read = Router::new()
        .route("/v1/nodes", get(api::nodes))
        .route("/v1/counts", get(api::counts))
        .route("/v1/presence", get(api::presence))
        .route("/v1/presence/query", post(api::presence_query))
        .route_layer(scoped(Scope::Read));
    // Routes that act on users' sessions and tokens: scope "sessions".
    let sessions = Router::new()
        .route("/v1/users/{user}/kick", post(api::kick))
        .route("/v1/users/{user}/revoke-tokens", post(api::revoke_tokens))
        .route_layer(scoped(Scope::Sessions));
    let messages = Router::new()
        .route("/v1/messages", post(send::message))
        .route("/v1/messages/batch", post(send::batch))
        .route("/v1/notifications", post(send::notification))
        .route("/v1/broadcasts", post(broadcast::start))
        .route("/v1/broadcasts/{id}", get(broadcast::progress))
        .route_layer(scoped(Scope::Messages));
    let users = Router::new()
        .route("/v1/users", post(users::register))
        .route(
            "/v1/users/{user}",
            get(users::account).delete(users::delete),
        )
        .route("/v1/users/{user}/disable", post(users::disable))
        .route("/v1/users/{user}/enable", post(users::enable))
        .route_layer(scoped(Scope::Users));
    let groups = Router::new()
        .route("/v1/groups", post(groups::create))
        .route("/v1/groups/{group}", get(groups::info))
        .route("/v1/groups/{group}/members", post(groups::add))
        .route("/v1/groups/{group}/members/remove", post(groups::remove))
        .route("/v1/groups/{group}/mute", post(groups::mute))
        .route("/v1/groups/{group}/dissolve", post(groups::dissolve))
        .route_layer(scoped(Scope::Groups));
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .merge(read)
        .merge(sessions)
        .merge(messages)
        .merge(groups)
        .merge(users)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
