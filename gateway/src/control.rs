//! A session's control stream after login: Refusals (a [`Fault`]'s code and
//! fixed text, before the connection closes with the same code), the
//! client's `Refresh` tokens and `Bye`.

use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::v1::{self, ErrorCode, client_control};
use tracing::{debug, warn};

use crate::auth::Claims;
use crate::credential::{self, CheckError};
use crate::ctx::Ctx;
use crate::fault::{Fault, fixed_text};

/// A token not taken: its code and fixed text; a store failure is logged
/// here and told as `STORE_UNAVAILABLE` without its text.
pub(crate) fn token_fault(e: CheckError) -> Fault {
    match e {
        CheckError::Token(e) => Fault::detailed(e.code(), fixed_text(e.code()), e),
        CheckError::Store(e) => {
            warn!(error = %e, "checking a token failed");
            Fault::new(ErrorCode::StoreUnavailable, "store unavailable")
        }
        CheckError::Disabled => Fault::new(ErrorCode::UserDisabled, "the account is disabled"),
        CheckError::Deleted => Fault::new(ErrorCode::UserDeleted, "the account is deleted"),
    }
}

/// Sends a Refusal on the control stream and finishes it, before the
/// connection is closed with the same code.
pub(crate) async fn refuse(control: &mut FramedSend, fault: &Fault) {
    let refusal = v1::ServerControl {
        kind: Some(v1::server_control::Kind::Refusal(v1::Refusal {
            code: fault.code as i32,
            message: fault.message.to_owned(),
            retry_after_ms: 0,
            kick_reason: fault.kick_reason as i32,
        })),
    };
    if control.send(&refusal).await.is_ok() {
        control.finish();
        // Closing discards unsent stream data: give the Refusal a moment to
        // be acknowledged first.
        let _ = tokio::time::timeout(Duration::from_secs(1), control.stopped()).await;
    }
}

/// How the control stream's reader ended.
pub(crate) enum ControlEnd {
    /// The stream is done (the client finished it); the session goes on.
    Done,
    /// The client said Bye.
    Bye,
    /// The session must end with this fault.
    Fault(Fault),
}

/// The milliseconds of `claims`' expiry, for Welcome and Refreshed.
pub(crate) fn expires_ms(claims: &Claims) -> i64 {
    i64::try_from(claims.expires_at.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Takes a fresh token for the session of `current`: valid, not revoked,
/// and of the same user (another user's token ends the session with
/// `BAD_TOKEN`).
pub(crate) async fn refresh(ctx: &Ctx, current: &Claims, token: &str) -> Result<Claims, Fault> {
    let fresh = credential::check(ctx, token).await.map_err(token_fault)?;
    if fresh.user_id != current.user_id {
        return Err(Fault::new(
            ErrorCode::BadToken,
            "Refresh carries a token of another user",
        ));
    }
    Ok(fresh)
}

/// What the client said next on its control stream after Hello.
pub(crate) enum ControlEvent {
    /// A fresh token: the session checks it, then reads on.
    Refresh(String),
    /// The control stream ended, how.
    End(ControlEnd),
}

/// Reads the next frame of the control stream after Hello and gives the
/// stream back with it, so the session reads one frame at a time, in
/// order, within its own task (a Refresh is taken before the next frame
/// is read).
/// (Not an `async fn`, which would keep the stream twice.)
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
pub(crate) fn next(
    mut control: FramedRecv,
) -> impl Future<Output = (FramedRecv, ControlEvent)> + Send {
    async move {
        let event = match control.next::<v1::ClientControl>().await {
            Ok(Some(v1::ClientControl {
                kind: Some(client_control::Kind::Bye(_)),
            })) => ControlEvent::End(ControlEnd::Bye),
            Ok(Some(v1::ClientControl {
                kind: Some(client_control::Kind::Refresh(refresh)),
            })) => ControlEvent::Refresh(refresh.token),
            Ok(Some(_)) => ControlEvent::End(ControlEnd::Fault(Fault::new(
                ErrorCode::ProtocolViolation,
                "only Refresh or Bye may follow Hello",
            ))),
            // The client finished its side of the control stream; it may
            // still use the others.
            Ok(None) => ControlEvent::End(ControlEnd::Done),
            Err(e) => {
                debug!(error = %e, "control stream ended");
                ControlEvent::End(Fault::from_recv(e).map_or(ControlEnd::Done, ControlEnd::Fault))
            }
        };
        (control, event)
    }
}
