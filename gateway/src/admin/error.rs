//! The admin HTTP listeners' refusals: a status, a fixed message and a
//! typed JSON body, `{"error": {"code": "...", "message": "..."}}`. The
//! detail of an internal failure goes to the log, never into the body.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::keys::Scope;
use crate::reply::Refusal;
use qim_proto::v1::ErrorCode;

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
    /// The operation was refused by the same rule a client would meet;
    /// the body's code is the wire code's name in lower case (`blocked`,
    /// `not_a_member`, `idempotency_conflict`, ...), the status its class.
    Refused(Refusal),
}

/// The HTTP status of a refusal's wire code.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::PermissionDenied
        | ErrorCode::Blocked
        | ErrorCode::Muted
        | ErrorCode::NotAMember
        | ErrorCode::NotFriends
        | ErrorCode::Banned
        | ErrorCode::InviteOnly => StatusCode::FORBIDDEN,
        ErrorCode::IdempotencyConflict | ErrorCode::AlreadyExists | ErrorCode::GroupFull => {
            StatusCode::CONFLICT
        }
        ErrorCode::UserDeleted => StatusCode::GONE,
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::Cooldown => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ErrorCode::StoreUnavailable
        | ErrorCode::StoreFull
        | ErrorCode::ShuttingDown
        | ErrorCode::ServerBusy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Every refusal's body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: Detail,
}

/// What went wrong.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Detail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`,
    /// `rate_limited`, `bad_request`, `not_found`, `unavailable`, or a wire
    /// code's name in lower case (`blocked`, `idempotency_conflict`, ...).
    code: String,
    /// For people; fixed texts only.
    message: String,
    /// Seconds to wait before retrying, when the refusal says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, String, String) {
        let (status, code, message): (StatusCode, &str, String) = match self {
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
            ApiError::Refused(refusal) => {
                return (
                    status_of(refusal.code),
                    refusal.code.as_str_name().to_ascii_lowercase(),
                    refusal.message.clone(),
                );
            }
        };
        (status, code.to_owned(), message)
    }

    /// How long the caller should wait before retrying, if at all.
    fn wait(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited(wait) => Some(*wait),
            ApiError::Refused(r) if r.retry_after_ms > 0 => {
                Some(Duration::from_millis(u64::from(r.retry_after_ms)))
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        // Whole seconds, rounded up, at least one.
        let wait = self
            .wait()
            .map(|w| (w.as_secs() + u64::from(w.subsec_nanos() > 0)).max(1));
        let mut response = (
            status,
            Json(ErrorBody {
                error: Detail {
                    code,
                    message,
                    retry_after_s: wait,
                },
            }),
        )
            .into_response();
        if let Some(secs) = wait {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::Refused(refusal)
    }
}

/// Answers 404 with the typed body, for paths no route serves.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Answers 405 with the typed body, for a path served with other methods.
pub(crate) async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::BadRequest("this method is not served at this path").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
