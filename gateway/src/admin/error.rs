//! The admin HTTP listeners' refusals: a status, a fixed message and a
//! typed JSON body, `{"error": {"code": "...", "message": "..."}}`. The
//! detail of an internal failure goes to the log, never into the body.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::keys::Scope;

/// Why an admin or route request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// No admin key, or one that matches no key of the keys file (401).
    Unauthorized,
    /// The key is valid but lacks the scope the route needs (403).
    Forbidden(Scope),
    /// Too many requests (or failed logins) from this address; retry after
    /// the wait (429 with `Retry-After`).
    RateLimited(Duration),
    /// The request names something malformed (400).
    BadRequest(&'static str),
    /// Nothing by that name (404).
    NotFound,
    /// A dependency (Redis, the store) failed or no node takes clients
    /// (503); the detail is logged where it happened.
    Unavailable(&'static str),
}

#[derive(serde::Serialize)]
struct Body {
    error: Detail,
}

#[derive(serde::Serialize)]
struct Detail {
    /// Stable, machine-readable.
    code: &'static str,
    /// For people; fixed texts only.
    message: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin key is required: Authorization: Bearer <secret>".into(),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this key lacks the scope \"{}\"", scope.name()),
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address; retry after the Retry-After seconds".into(),
            ),
            ApiError::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, "bad_request", (*message).into())
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such route".into()),
            ApiError::Unavailable(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                (*message).into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let mut response = (
            status,
            Json(Body {
                error: Detail { code, message },
            }),
        )
            .into_response();
        if let ApiError::RateLimited(wait) = self {
            // Whole seconds, rounded up, at least one.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// Answers 404 with the typed body, for paths no route serves.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}
