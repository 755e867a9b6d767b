//! Why a session, or one of its streams, ends: [`Fault`] (a code and a fixed
//! text for the client, a reason for the log) and [`StreamEnd`].
//!
//! # Invariants
//! - A client is told a code and a fixed text only; an error's own text (a
//!   store's, quinn's, a decoder's) and values the client sent go to the
//!   log.

use qim_proto::io::RecvError;
use qim_proto::v1::{ErrorCode, KickReason};

use crate::route::Ending;

/// Why a connection is closed by the server: a code and a fixed text for
/// the client, and a reason for the log.
///
/// The client sees `code` and `message` only (in the close frame or the
/// login Refusal); an error's own text (a store's, quinn's, a decoder's)
/// goes to `reason`, which is logged and never sent.
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) code: ErrorCode,
    /// What the client is told: always a fixed text.
    pub(crate) message: &'static str,
    /// What the log says.
    pub(crate) reason: String,
    /// Why an admin kick ended the session (`KICKED` only), told in the
    /// Refusal.
    pub(crate) kick_reason: KickReason,
}

impl Fault {
    pub(crate) fn new(code: ErrorCode, message: &'static str) -> Self {
        Self {
            code,
            message,
            reason: message.to_owned(),
            kick_reason: KickReason::Unspecified,
        }
    }

    /// The fault of a session the routes ended (a newer login, a kick, a
    /// revocation), with its fixed text.
    pub(crate) fn ending(ending: Ending) -> Self {
        let message = match (ending.code, ending.reason) {
            (ErrorCode::Replaced, _) => "this device logged in again",
            (ErrorCode::Kicked, KickReason::Unspecified) => {
                "another device logged in (im.device_policy), or an admin ended the session"
            }
            (ErrorCode::Kicked, KickReason::Operator) => "an operator ended the session",
            (ErrorCode::Kicked, KickReason::Security) => {
                "the session was ended for the account's security; log in again"
            }
            (ErrorCode::Kicked, KickReason::AccountDisabled) => "the account was disabled",
            (ErrorCode::Kicked, KickReason::AccountDeleted) => "the account was deleted",
            (ErrorCode::Kicked, KickReason::Policy) => "the app's policy ended the session",
            (ErrorCode::TokenRevoked, _) => "the user's tokens were revoked",
            _ => "session ended by the server",
        };
        Self {
            kick_reason: ending.reason,
            ..Fault::new(ending.code, message)
        }
    }

    /// A fault whose detail (an error's text, a value the client sent) is
    /// for the log only.
    pub(crate) fn detailed(
        code: ErrorCode,
        message: &'static str,
        detail: impl std::fmt::Display,
    ) -> Self {
        Self {
            code,
            message,
            reason: format!("{message}: {detail}"),
            kick_reason: KickReason::Unspecified,
        }
    }

    /// The connection is gone or the client left: the session ends
    /// without blame (`NO_ERROR`).
    pub(crate) fn gone(reason: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::NoError,
            message: "session ended",
            reason: reason.into(),
            kick_reason: KickReason::Unspecified,
        }
    }

    /// A read failure: the peer's fault has a code; a lost transport ends the
    /// session quietly (`None`).
    pub(crate) fn from_recv(e: RecvError) -> Option<Self> {
        e.code()
            .map(|code| Fault::detailed(code, fixed_text(code), e))
    }
}

/// The text a client is told with `code` where no more specific fixed text
/// was written.
pub(crate) fn fixed_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadToken => "the token was refused",
        ErrorCode::TokenExpired => "the token expired",
        ErrorCode::VersionTooOld => "this protocol version is too old; update the client",
        ErrorCode::VersionTooNew => "this protocol version is newer than the server's",
        ErrorCode::BadPreamble => "a stream did not start with a qim preamble",
        ErrorCode::UnknownStreamKind => "a stream of an unknown kind",
        ErrorCode::FrameTooLarge => "a frame above limits.max_frame_bytes",
        ErrorCode::MalformedFrame => "a frame that does not decode",
        other => other.as_str_name(),
    }
}

/// How a stream task ended.
pub(crate) enum StreamEnd {
    /// The stream is done; the session goes on.
    Done,
    /// The session must end with this fault.
    Fault(Fault),
}

impl From<Option<Fault>> for StreamEnd {
    fn from(f: Option<Fault>) -> Self {
        f.map_or(StreamEnd::Done, StreamEnd::Fault)
    }
}

/// One of the session's own futures, polled by its task: a panic in it
/// ends the session with INTERNAL, as a panicking stream task does, rather
/// than unwinding the session past its cleanup.
pub(crate) fn contained<F: std::future::Future>(
    f: F,
) -> impl std::future::Future<Output = Result<F::Output, Fault>> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .map(|caught| {
            caught.map_err(|_| {
                Fault::detailed(
                    ErrorCode::Internal,
                    "the server failed",
                    "a session future panicked",
                )
            })
        })
}
