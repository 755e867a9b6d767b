//! The SDK's public error: small and actionable. Wire codes are mapped to it
//! in one place, [`Error::from_code`].

use qim_proto::transport::ConnectionError;
use qim_proto::v1::{ErrorCode, KickReason};
use thiserror::Error;

/// Why an SDK call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The token was refused (bad, expired or revoked) and no
    /// [`TokenProvider`](crate::TokenProvider) gave a fresh one: the client
    /// stops reconnecting.
    #[error("login refused ({code:?}): {message}")]
    Auth {
        /// `BadToken`, `TokenExpired` or `TokenRevoked`.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server does not speak this client's protocol version:
    /// `VersionTooOld` (update the app) or `VersionTooNew` (the server is
    /// older than this client: connect to an updated server). The client
    /// stops reconnecting.
    #[error("protocol version refused ({code:?}): {message}")]
    Version {
        /// `VersionTooOld` or `VersionTooNew`.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server refused the request; `retryable` says whether the same
    /// request may succeed later.
    #[error("refused ({code:?}): {message}")]
    Rejected {
        /// Why.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Whether sending again unchanged may succeed.
        retryable: bool,
    },
    /// The business backend or an operator ended the session through the
    /// admin API, for `reason` (e.g. `AccountDisabled`, `Security`): the
    /// client stops reconnecting; tell the user and log in again when the
    /// reason allows it.
    #[error("kicked ({reason:?}): {message}")]
    Kicked {
        /// Why the session was ended.
        reason: KickReason,
        /// The server's explanation.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("network: {0}")]
    Network(String),
    /// The server's certificate did not verify.
    #[error("tls: {0}")]
    Tls(String),
    /// The client's configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// No answer within the configured time; a send may still be delivered
    /// later if it reached the server (resend with the same id to find out).
    #[error("timed out")]
    Timeout,
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The app cancelled the transfer ([`Transfer::cancel`](crate::Transfer::cancel)).
    #[error("cancelled")]
    Cancelled,
    /// The client's data directory (the persistent outbox) or the local store could not be
    /// read or written.
    #[error("local storage: {0}")]
    Storage(String),
}

impl Error {
    /// The error for a wire code received in a refusal, nack or close.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Error {
        let message = message.into();
        match code {
            ErrorCode::BadToken | ErrorCode::TokenExpired | ErrorCode::TokenRevoked => {
                Error::Auth { code, message }
            }
            ErrorCode::VersionTooOld | ErrorCode::VersionTooNew => Error::Version { code, message },
            code => Error::Rejected {
                code,
                retryable: code.is_retryable(),
                message,
            },
        }
    }

    /// Whether reconnecting could fix it (the driver keeps trying).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Network(_) | Error::Timeout => true,
            // REPLACED means another live client uses this device id:
            // reconnecting would only evict it in turn.
            Error::Rejected {
                retryable, code, ..
            } => *retryable || *code == ErrorCode::NoError,
            Error::Auth { .. }
            | Error::Kicked { .. }
            | Error::Version { .. }
            | Error::Tls(_)
            | Error::Config(_)
            | Error::Closed
            | Error::Cancelled
            | Error::Storage(_) => false,
        }
    }

    /// Maps a connection error (of either transport), keeping the server's
    /// close code.
    pub(crate) fn from_connection(e: &ConnectionError) -> Error {
        match e {
            ConnectionError::ApplicationClosed { code, reason } => {
                Error::from_code(*code, reason.clone())
            }
            ConnectionError::Tls(t) => Error::Tls(t.clone()),
            ConnectionError::LocallyClosed => Error::Closed,
            other => Error::Network(other.to_string()),
        }
    }
}

impl From<qim_proto::io::RecvError> for Error {
    fn from(e: qim_proto::io::RecvError) -> Self {
        match e {
            qim_proto::io::RecvError::ConnectionLost(c) => Error::from_connection(&c),
            other => Error::Network(other.to_string()),
        }
    }
}

impl From<qim_proto::io::SendError> for Error {
    fn from(e: qim_proto::io::SendError) -> Self {
        match e {
            qim_proto::io::SendError::ConnectionLost(c) => Error::from_connection(&c),
            other => Error::Network(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_protocol_version_is_its_own_error_and_final() {
        for code in [ErrorCode::VersionTooOld, ErrorCode::VersionTooNew] {
            let e = Error::from_code(code, "x");
            assert_eq!(
                e,
                Error::Version {
                    code,
                    message: "x".into()
                }
            );
            assert!(!e.is_transient(), "reconnecting cannot fix {code:?}");
        }
    }
}
