//! What a session's loop does after its `select!`, where it may wait: the
//! loop's arms never wait (a value an arm held across an await would stay
//! in the session's future for its whole life), they return a [`Step`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::transport::Connection;
use qim_proto::v1::{self, ErrorCode};
use tokio::time::Instant;

use crate::auth::Claims;
use crate::control::{expires_ms, refresh, refuse};
use crate::credential;
use crate::ctx::Ctx;
use crate::fault::Fault;

/// What the session's loop does after its select, where it may wait.
pub(super) enum Step {
    /// Tell the client `fault` on the control stream, then end with it.
    Refuse(Fault),
    /// The client sent a fresh token (the control stream comes back with
    /// it, to read the next frame).
    Refresh(FramedRecv, String),
    /// The route ended the session (replaced, kicked, revoked).
    Kicked(crate::route::Ending),
    /// The gateway started draining: tell the client to go.
    GoAway,
}

/// The session's token and its deadline, which a Refresh moves on.
pub(super) struct Credentials<'a> {
    pub(super) claims: &'a mut Claims,
    /// When the current token was issued, for revocations.
    pub(super) issued_at: &'a AtomicU64,
    pub(super) token_deadline: &'a mut Instant,
}

/// Does what a [`Step`] asks; `Err` ends the session with the fault, `Ok`
/// gives back the control stream after a Refresh.
pub(super) async fn after_select(
    step: Step,
    ctx: &Ctx,
    conn: &Connection,
    control_send: &mut FramedSend,
    credentials: &mut Credentials<'_>,
    drain_deadline: &mut Option<Instant>,
) -> Result<Option<FramedRecv>, Fault> {
    match step {
        Step::Refuse(fault) => {
            refuse(control_send, &fault).await;
            Err(fault)
        }
        Step::Refresh(control_recv, token) => {
            // (The request rate was checked when the Refresh was read.)
            let fresh = match refresh(ctx, credentials.claims, &token).await {
                Ok(fresh) => fresh,
                Err(fault) => {
                    refuse(control_send, &fault).await;
                    return Err(fault);
                }
            };
            if fresh.expires_at > credentials.claims.expires_at {
                credentials
                    .issued_at
                    .store(fresh.issued_at, Ordering::Release);
                *credentials.token_deadline = credential::deadline(fresh.expires_at);
                *credentials.claims = fresh;
            }
            let refreshed = v1::ServerControl {
                kind: Some(v1::server_control::Kind::Refreshed(v1::Refreshed {
                    token_expires_ms: expires_ms(credentials.claims),
                })),
            };
            control_send
                .send(&refreshed)
                .await
                .map_err(|e| Fault::gone(format!("sending Refreshed: {e}")))?;
            Ok(Some(control_recv))
        }
        Step::Kicked(ending) => {
            let mut fault = Fault::ending(ending);
            if ending.code == ErrorCode::TokenRevoked
                || ending.reason != v1::KickReason::Unspecified
            {
                refuse(control_send, &fault).await;
            }
            if ending.reason != v1::KickReason::Unspecified {
                // The SDK closes once it read the reason; a close from here
                // first could reach it before the reason.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            }
            fault.reason = format!("{}: {:?}", fault.message, ending.reason);
            Err(fault)
        }
        Step::GoAway => {
            let go_away = v1::ServerControl {
                kind: Some(v1::server_control::Kind::GoAway(v1::GoAway {
                    code: ErrorCode::ShuttingDown as i32,
                    message: "server is shutting down".into(),
                    reconnect_within_ms: ctx.config.shutdown.reconnect_within_ms,
                    redirect: String::new(),
                })),
            };
            let _ = control_send.send(&go_away).await;
            *drain_deadline =
                Some(Instant::now() + Duration::from_millis(ctx.config.shutdown.drain_ms));
            Ok(None)
        }
    }
}
