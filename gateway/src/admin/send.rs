//! The admin API's sends: one message (`POST /v1/messages`), one message to
//! many users with a result each (`POST /v1/messages/batch`), and business
//! notifications from the system account (`POST /v1/notifications`, e.g. a
//! payment result).
//!
//! Every send takes the clients' own path ([`post`](crate::post)): stored
//! durably with an idempotency key in one store call, then handed to the
//! fan-out, which delivers it to every device with acks and retransmits.
//! A send as a user obeys that user's rules (blocks, `im.direct_policy`,
//! quotas); a send as the system account (`backend.system_user`) obeys
//! none and keeps no sender copy. Nothing is sent to or as a deleted
//! account (`user_deleted`, HTTP 410; in a batch, per recipient).
//!
//! Idempotency: `idempotency_key` is the message's `client_msg_id` for
//! its sender; the same key again answers the first result and stores
//! nothing, the same key with another content is `409
//! idempotency_conflict`. A batch derives one key per recipient from it.

use axum::Json;
use axum::extract::State;
use qim_proto::v1::{self, ErrorCode, server_ack};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::error::{ApiError, ErrorBody};
use super::input::Body;
use crate::post::{Sender, Trust, post_sends_as};
use crate::reply::Refusal;

/// The device id admin API sends are stored with.
pub(super) const DEVICE: &str = "admin-api";

/// `POST /v1/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    /// The sending user; absent: the system account (`backend.system_user`).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    from: Option<String>,
    /// The recipient user (exactly one of `to_user` and `to_group`).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    to_user: Option<String>,
    /// The recipient group; the sender must be a member who may post.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    to_group: Option<String>,
    /// Application content type (default `"text"`), at most 64 bytes.
    #[serde(default)]
    kind: Option<String>,
    /// The message body (UTF-8), at most `limits.max_body_bytes`.
    text: String,
    /// 1-64 printable ASCII characters, unique per sender: the same key
    /// again answers the first result and stores nothing twice.
    #[schema(pattern = "^[!-~]{1,64}$")]
    idempotency_key: String,
}

/// A stored message.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Sent {
    /// The message's id, the same in every inbox.
    msg_id: String,
    /// Its seq in the recipient's inbox (or the group's log).
    seq: u64,
    /// When the server stored it (ms since the epoch).
    server_time_ms: i64,
}

/// `POST /v1/messages/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    /// The sending user; absent: the system account.
    #[serde(default)]
    from: Option<String>,
    /// The recipients, at most `backend.max_batch_recipients`, no repeats.
    to_users: Vec<String>,
    /// Application content type (default `"text"`).
    #[serde(default)]
    kind: Option<String>,
    /// The message body (UTF-8).
    text: String,
    /// The batch's key: each recipient's key is derived from it, so the
    /// same batch again stores nothing twice.
    #[schema(pattern = "^[!-~]{1,64}$")]
    idempotency_key: String,
}

/// One recipient's outcome in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RecipientResult {
    /// The recipient.
    user: String,
    /// The stored message, when it was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<Sent>,
    /// Why not, when it was refused (the same codes as a single send).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RecipientError>,
}

/// Why one recipient of a batch was refused.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RecipientError {
    /// The wire code's name in lower case, e.g. `blocked`.
    code: String,
    /// For people.
    message: String,
    /// Whether the same batch again may store it.
    retryable: bool,
}

/// The answer of a batch: one result per recipient, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BatchResult {
    /// Recipients stored.
    sent: usize,
    /// Recipients refused.
    failed: usize,
    /// Per recipient, in request order.
    results: Vec<RecipientResult>,
}

/// `POST /v1/notifications`: a business notification.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NotifyRequest {
    /// The user notified (every device of theirs receives it once).
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    user: String,
    /// The notification's type, e.g. `"payment.result"` (at most 64 bytes);
    /// the message's `kind`.
    #[schema(min_length = 1, max_length = 64)]
    kind: String,
    /// Any JSON value; the message's body is its serialized form.
    data: serde_json::Value,
    /// 1-64 printable ASCII characters: the payment provider's callback id
    /// serves well, so a repeated callback notifies once.
    #[schema(pattern = "^[!-~]{1,64}$")]
    idempotency_key: String,
}

/// Who sends: the named user, or the system account. A deleted user
/// sends nothing (`user_deleted`, 410).
async fn sender_of<'a>(
    state: &'a AdminState,
    from: Option<&'a str>,
) -> Result<(&'a str, Trust), ApiError> {
    match from {
        Some(user) if qim_proto::ids::is_valid_id(user) => {
            match state.ctx.stores.accounts.account(user).await {
                Ok(Some(a)) if a.deleted => Err(ApiError::Refused(Refusal::new(
                    ErrorCode::UserDeleted,
                    "the sender's account is deleted",
                ))),
                Ok(_) => Ok((user, Trust::User)),
                Err(e) => Err(ApiError::Refused(Refusal::from(e))),
            }
        }
        Some(_) => Err(ApiError::BadRequest("from must be 1-64 of [A-Za-z0-9._@-]")),
        None => Ok((&state.ctx.config.backend.system_user, Trust::System)),
    }
}

/// A send frame as a client would make it.
pub(super) fn frame(
    to: v1::peer::Target,
    kind: Option<String>,
    body: Vec<u8>,
    key: String,
) -> v1::Send {
    v1::Send {
        client_msg_id: key,
        to: Some(v1::Peer { target: Some(to) }),
        body: body.into(),
        kind: kind.unwrap_or_else(|| "text".into()),
        ..Default::default()
    }
}

/// A send's ack as the API answers it.
pub(super) fn outcome(ack: v1::ServerAck) -> Result<Sent, Refusal> {
    match ack.kind {
        Some(server_ack::Kind::Ack(a)) => Ok(Sent {
            msg_id: a.msg_id,
            seq: a.seq,
            server_time_ms: a.server_time_ms,
        }),
        Some(server_ack::Kind::Nack(n)) => Err(Refusal::new(
            ErrorCode::try_from(n.code).unwrap_or(ErrorCode::Internal),
            n.message,
        )
        .retry_after(n.retry_after_ms)),
        None => Err(Refusal::new(
            ErrorCode::Internal,
            "the send was not answered",
        )),
    }
}

/// Posts one send on the clients' path and answers its outcome.
async fn post_one(
    state: &AdminState,
    user: &str,
    trust: Trust,
    send: v1::Send,
) -> Result<Sent, ApiError> {
    let sender = Sender {
        user,
        device: DEVICE,
        first_attempts: None,
    };
    let ack = post_sends_as(&state.ctx, &sender, vec![send], trust, None)
        .await
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(outcome(ack)?)
}

/// Sends one message as a user or the system account.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    request_body = SendRequest,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Stored durably (or stored before, same key)", body = Sent),
        (status = 400, description = "Malformed request or recipient", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope messages, or the sender's rules refuse (blocked, not_a_member, muted)", body = ErrorBody),
        (status = 409, description = "The key was used with another content", body = ErrorBody),
        (status = 410, description = "The sender's or the recipient's account is deleted (user_deleted)", body = ErrorBody),
        (status = 413, description = "The body is above limits.max_body_bytes", body = ErrorBody),
        (status = 429, description = "Rate limited or the sender's quota", body = ErrorBody),
        (status = 503, description = "The store is unavailable; repeat with the same key", body = ErrorBody),
    ))]
pub(super) async fn message(
    State(state): State<AdminState>,
    Body(r): Body<SendRequest>,
) -> Result<Json<Sent>, ApiError> {
    let (user, trust) = sender_of(&state, r.from.as_deref()).await?;
    let to = match (r.to_user, r.to_group) {
        (Some(u), None) => v1::peer::Target::User(u),
        (None, Some(g)) => v1::peer::Target::Group(g),
        _ => {
            return Err(ApiError::BadRequest(
                "name exactly one of to_user and to_group",
            ));
        }
    };
    let send = frame(to, r.kind, r.text.into_bytes(), r.idempotency_key);
    let sent = post_one(&state, user, trust, send).await?;
    tracing::info!(from = user, msg_id = %sent.msg_id, "admin API: message stored");
    Ok(Json(sent))
}

/// The key of one recipient of a batch: printable, at most 64 bytes, the
/// same for the same batch key and recipient.
pub(super) fn recipient_key(batch_key: &str, user: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{batch_key}\n{user}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("batch-{hex}")
}

/// Sends one message to many users, with a result per recipient.
#[utoipa::path(post, path = "/v1/messages/batch", tag = "messages",
    request_body = BatchRequest,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "One result per recipient (stored, or why not)", body = BatchResult),
        (status = 400, description = "Malformed request, too many or repeated recipients", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope messages", body = ErrorBody),
        (status = 410, description = "The sender's account is deleted (user_deleted)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; repeat", body = ErrorBody),
    ))]
pub(super) async fn batch(
    State(state): State<AdminState>,
    Body(r): Body<BatchRequest>,
) -> Result<Json<BatchResult>, ApiError> {
    let (user, trust) = sender_of(&state, r.from.as_deref()).await?;
    let max = state.ctx.config.backend.max_batch_recipients as usize;
    if r.to_users.is_empty() || r.to_users.len() > max {
        return Err(ApiError::BadRequest(
            "to_users must name 1 to backend.max_batch_recipients users",
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(r.to_users.len());
    if !r.to_users.iter().all(|u| seen.insert(u.as_str())) {
        return Err(ApiError::BadRequest("to_users names a user twice"));
    }
    if !qim_proto::ids::is_valid_client_msg_id(&r.idempotency_key) {
        return Err(ApiError::BadRequest(
            "idempotency_key must be 1-64 printable ASCII characters",
        ));
    }
    let body = r.text.into_bytes();
    let sends = r
        .to_users
        .iter()
        .map(|to| {
            frame(
                v1::peer::Target::User(to.clone()),
                r.kind.clone(),
                body.clone(),
                recipient_key(&r.idempotency_key, to),
            )
        })
        .collect();
    let sender = Sender {
        user,
        device: DEVICE,
        first_attempts: None,
    };
    let acks = post_sends_as(&state.ctx, &sender, sends, trust, None).await;
    let mut results = Vec::with_capacity(acks.len());
    for (to, ack) in r.to_users.into_iter().zip(acks) {
        results.push(match outcome(ack) {
            Ok(sent) => RecipientResult {
                user: to,
                sent: Some(sent),
                error: None,
            },
            Err(refusal) => RecipientResult {
                user: to,
                sent: None,
                error: Some(RecipientError {
                    code: refusal.code.as_str_name().to_ascii_lowercase(),
                    retryable: refusal.code.is_retryable(),
                    message: refusal.message,
                }),
            },
        });
    }
    let sent = results.iter().filter(|r| r.sent.is_some()).count();
    tracing::info!(
        from = user,
        sent,
        failed = results.len() - sent,
        "admin API: batch stored"
    );
    Ok(Json(BatchResult {
        sent,
        failed: results.len() - sent,
        results,
    }))
}

/// Notifies a user from the system account (a business notification such
/// as a payment result): stored durably, delivered once on every device.
#[utoipa::path(post, path = "/v1/notifications", tag = "messages",
    request_body = NotifyRequest,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Stored durably (or stored before, same key)", body = Sent),
        (status = 400, description = "Malformed request, user or kind", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope messages", body = ErrorBody),
        (status = 409, description = "The key was used with another content", body = ErrorBody),
        (status = 410, description = "The user's account is deleted (user_deleted)", body = ErrorBody),
        (status = 413, description = "The data is above limits.max_body_bytes", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; repeat with the same key", body = ErrorBody),
    ))]
pub(super) async fn notification(
    State(state): State<AdminState>,
    Body(r): Body<NotifyRequest>,
) -> Result<Json<Sent>, ApiError> {
    if r.kind.is_empty() {
        return Err(ApiError::BadRequest(
            "kind must name the notification's type",
        ));
    }
    let body = serde_json::to_vec(&r.data)
        .map_err(|_| ApiError::BadRequest("data could not be serialized"))?;
    let system = state.ctx.config.backend.system_user.clone();
    let send = frame(
        v1::peer::Target::User(r.user.clone()),
        Some(r.kind),
        body,
        r.idempotency_key,
    );
    let sent = post_one(&state, &system, Trust::System, send).await?;
    tracing::info!(user = %r.user, msg_id = %sent.msg_id, "admin API: notification stored");
    Ok(Json(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_keys_are_valid_stable_and_distinct() {
        let a = recipient_key("k", "alice");
        assert!(qim_proto::ids::is_valid_client_msg_id(&a));
        assert_eq!(a, recipient_key("k", "alice"));
        assert_ne!(a, recipient_key("k", "bob"));
        assert_ne!(a, recipient_key("k2", "alice"));
    }
}
