//! The admin API's OpenAPI document, generated from the handlers'
//! annotations and the request and answer types (utoipa), served at
//! `GET /v1/openapi.json` without a key: it is the same for everyone and
//! says nothing about the deployment.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, broadcast, groups, send, users};

/// The document: every `/v1/` route with its key scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "qim admin API",
        description = "The business backend's API of a qim gateway: messages and notifications, \
                       sessions, presence, groups, accounts, broadcasts. Every route needs `Authorization: Bearer <key>` \
                       with the route's scope; refusals are typed JSON. See docs/backend.md."
    ),
    paths(
        api::nodes,
        api::counts,
        api::presence,
        api::presence_query,
        api::kick,
        api::revoke_tokens,
        send::message,
        send::batch,
        send::notification,
        broadcast::start,
        broadcast::progress,
        users::register,
        users::account,
        users::disable,
        users::enable,
        users::delete,
        groups::create,
        groups::info,
        groups::add,
        groups::remove,
        groups::mute,
        groups::dissolve,
    ),
    modifiers(&KeyScheme),
    tags(
        (name = "read", description = "Scope read: nodes, counts, presence"),
        (name = "sessions", description = "Scope sessions: kick, revoke tokens"),
        (name = "messages", description = "Scope messages: send, batch, notifications"),
        (name = "groups", description = "Scope groups: group administration"),
        (name = "users", description = "Scope users: register, disable, enable, delete accounts"),
    )
)]
pub(super) struct ApiDoc;

/// Declares the bearer key the routes name as `admin_key`.
struct KeyScheme;

impl Modify for KeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /v1/openapi.json`.
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
