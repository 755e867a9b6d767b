//! The admin API's extractors: a JSON body, a query string and a path
//! parameter whose rejections are the API's typed 400s (axum's own answer
//! plain text), so a malformed request never gets an untyped answer.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::error::ApiError;

/// A JSON request body of type `T`, which must be a JSON object; anything
/// else is a typed 400. (serde reads a struct from an array too, by field
/// position; every body the API documents is an object.)
pub(super) struct Body<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(value)) => value,
            Err(e) => {
                debug!(error = %e, "admin API: a body refused");
                return Err(ApiError::BadRequest(match e {
                    JsonRejection::MissingJsonContentType(_) => {
                        "the body must be JSON (Content-Type: application/json)"
                    }
                    JsonRejection::JsonSyntaxError(_) | JsonRejection::JsonDataError(_) => {
                        "the body is not valid JSON"
                    }
                    _ => "the body could not be read",
                }));
            }
        };
        if !value.is_object() {
            debug!("admin API: a body that is not a JSON object refused");
            return Err(ApiError::BadRequest("the body must be a JSON object"));
        }
        match serde_json::from_value(value) {
            Ok(body) => Ok(Body(body)),
            Err(e) => {
                debug!(error = %e, "admin API: a body refused");
                Err(ApiError::BadRequest(
                    "the body does not have the documented fields and types",
                ))
            }
        }
    }
}

/// A query string of type `T`; a malformed one is a typed 400.
pub(super) struct Params<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                debug!(error = %e, "admin API: a query refused");
                Err(ApiError::BadRequest(
                    "the query string does not have the documented parameters",
                ))
            }
            Err(_) => Err(ApiError::BadRequest("the query string could not be read")),
        }
    }
}

/// A path's one parameter (a user or a group id), checked against the id
/// alphabet; a malformed one is a typed 400.
pub(super) struct Id(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let id = match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => id,
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                debug!(error = %e, "admin API: a path refused");
                return Err(INVALID_ID);
            }
            Err(_) => return Err(INVALID_ID),
        };
        if qim_proto::ids::is_valid_id(&id) {
            Ok(Id(id))
        } else {
            Err(INVALID_ID)
        }
    }
}

/// The refusal of an id outside the id alphabet.
pub(super) const INVALID_ID: ApiError = ApiError::BadRequest("ids must be 1-64 of [A-Za-z0-9._@-]");
