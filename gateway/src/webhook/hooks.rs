//! The before-send hook: asked about each user's send (a client's, or the
//! admin API's on a user's behalf; not the system account's) after the
//! sender's rules passed and before quotas are charged and the post is
//! stored. The business allows it, refuses it (`REFUSED_BY_BUSINESS`, its
//! reason shown to the sender) or rewrites its body; a failed call
//! (timeout, error status, unreachable, invalid answer) applies
//! `webhooks.failure_policy`.

use base64::Engine as _;
use qim_proto::v1::{self, ErrorCode};

use super::{Answer, Hook};
use crate::ctx::Ctx;
use crate::reply::Refusal;

/// Bytes of a refusal's reason kept for the sender.
const MAX_REASON_BYTES: usize = 200;

fn peer(to: &Option<v1::Peer>) -> serde_json::Value {
    match to.as_ref().and_then(|p| p.target.as_ref()) {
        Some(v1::peer::Target::User(u)) => serde_json::json!({ "user": u }),
        Some(v1::peer::Target::Group(g)) => serde_json::json!({ "group": g }),
        None => serde_json::Value::Null,
    }
}

/// A message's body as events carry it: base64, and the text when UTF-8.
pub(crate) fn body_fields(body: &[u8]) -> (String, Option<&str>) {
    (
        base64::engine::general_purpose::STANDARD.encode(body),
        std::str::from_utf8(body).ok(),
    )
}

/// The body an answer rewrites to, if it names a valid one.
fn rewritten(answer: &Answer) -> Option<Vec<u8>> {
    match (&answer.text, &answer.body) {
        (Some(text), None) => Some(text.as_bytes().to_vec()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
        _ => None,
    }
}

/// Cuts `reason` to at most [`MAX_REASON_BYTES`] on a char boundary.
fn shorten(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Asks the before-send hook about `send` of `user` on `device` (when
/// configured): `Ok` to go
/// on, with the body rewritten if the business said so.
pub(crate) async fn before_send(
    ctx: &Ctx,
    user: &str,
    device: &str,
    send: &mut v1::Send,
) -> Result<(), Refusal> {
    if ctx.config.webhooks.before_send_url.is_none() {
        return Ok(());
    }
    let (body, text) = body_fields(&send.body);
    let data = serde_json::json!({
        "from": user,
        "device": device,
        "to": peer(&send.to),
        "client_msg_id": send.client_msg_id,
        "kind": send.kind,
        "body": body,
        "text": text,
    });
    let max_body = ctx.config.limits.max_body_bytes as usize;
    let valid = |a: &Answer| match a.action.as_str() {
        "allow" | "refuse" => true,
        "rewrite" => rewritten(a).is_some_and(|b| b.len() <= max_body),
        _ => false,
    };
    let Some(answer) = ctx.webhooks.ask(ctx, Hook::BeforeSend, data, valid).await else {
        if ctx.config.webhooks.fail_closed() {
            return Err(Refusal::new(
                ErrorCode::RefusedByBusiness,
                "the business check is unavailable",
            ));
        }
        return Ok(());
    };
    match answer.action.as_str() {
        "refuse" => Err(Refusal::new(
            ErrorCode::RefusedByBusiness,
            shorten(
                answer
                    .reason
                    .unwrap_or_else(|| "refused by the business".to_owned()),
            ),
        )),
        "rewrite" => {
            if let Some(body) = rewritten(&answer) {
                send.body = body.into();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
