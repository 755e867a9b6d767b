//! How the gateway answers a user's request or send it will not carry out:
//! the feature error type [`Refusal`], the one place where store and
//! operation errors become wire codes, and the frame budget that paged
//! answers fill up to.
//!
//! # Invariants
//! - Every refusal carries an [`ErrorCode`] the client can act on and a
//!   message for people. Store failures are logged here with their detail;
//!   the client is told only that the store is unavailable (retryable) or
//!   that the server failed, never the internal error text.

use qim_proto::v1::{self, ErrorCode, rpc_response};
use qim_storage::{OpError, StoreError, StoredMessage};
use thiserror::Error;
use tracing::warn;

/// Why a request or a send was refused: a wire code and a message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{code:?}: {message}")]
pub(crate) struct Refusal {
    /// What the client sees and acts on (retry, fix the input, give up).
    pub(crate) code: ErrorCode,
    /// For people; never internal error text.
    pub(crate) message: String,
    /// When non-zero, how long the client should wait before retrying.
    pub(crate) retry_after_ms: u32,
    /// The per-user quota that refused it (its config name, the label of
    /// `qim_quota_refusals_total`), when a quota did.
    pub(crate) quota: Option<&'static str>,
}

impl Refusal {
    /// A refusal with `code`.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
            quota: None,
        }
    }

    /// A refusal by the per-user quota `quota` (`QUOTA_EXCEEDED`).
    pub(crate) fn quota(quota: &'static str, message: impl Into<String>) -> Self {
        Self {
            quota: Some(quota),
            ..Self::new(ErrorCode::QuotaExceeded, message)
        }
    }

    /// The same refusal, telling the client to wait `ms` before retrying.
    pub(crate) fn retry_after(mut self, ms: u32) -> Self {
        self.retry_after_ms = ms;
        self
    }

    /// Input the server cannot take (`INVALID_ARGUMENT`).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// A send not stored because an earlier one on its chat stream is held
    /// (`ORDER_HELD`, see `order`).
    pub(crate) fn order_held() -> Self {
        Self::new(
            ErrorCode::OrderHeld,
            "an earlier send on this stream was refused; send it again first",
        )
    }

    /// The rpc answer that carries this refusal.
    pub(crate) fn into_rpc(self) -> rpc_response::Kind {
        rpc_response::Kind::Error(v1::RpcError {
            code: self.code as i32,
            message: self.message,
            retry_after_ms: self.retry_after_ms,
        })
    }
}

impl From<StoreError> for Refusal {
    /// A store failure: retryable when the store says so. The detail goes
    /// to the log only.
    fn from(e: StoreError) -> Self {
        match e {
            // The store's text may name its internals (a key, a keyspace,
            // a Redis client error): logged, not sent.
            StoreError::Invalid(detail) => {
                tracing::debug!(%detail, "store refused the input");
                Refusal::invalid("the store refused this input")
            }
            StoreError::Full(detail) => {
                tracing::debug!(detail, "store full; write refused as retryable");
                Refusal::new(
                    ErrorCode::StoreFull,
                    "the server's disk is nearly full; retry later",
                )
                .retry_after(1_000)
            }
            e if e.is_retryable() => {
                warn!(error = %e, "store unavailable; request refused as retryable");
                Refusal::new(
                    ErrorCode::StoreUnavailable,
                    "the store is unavailable; retry",
                )
            }
            e => {
                warn!(error = %e, "store failed; request refused");
                Refusal::new(ErrorCode::Internal, "the server failed to carry this out")
            }
        }
    }
}

impl From<OpError> for Refusal {
    /// The one place [`OpError`] meets [`ErrorCode`].
    fn from(e: OpError) -> Self {
        let code = match &e {
            OpError::Store(_) => ErrorCode::Internal,
            OpError::NotFound => ErrorCode::NotFound,
            OpError::Superseded => ErrorCode::SendSuperseded,
            OpError::NotSender => ErrorCode::PermissionDenied,
            OpError::WindowPassed => ErrorCode::RecallWindowPassed,
            OpError::Recalled => ErrorCode::AlreadyRecalled,
            OpError::NotAMember => ErrorCode::NotAMember,
            OpError::Muted => ErrorCode::Muted,
            OpError::NotAllowed => ErrorCode::PermissionDenied,
            OpError::Exists => ErrorCode::AlreadyExists,
            OpError::Dissolved => ErrorCode::NotFound,
            OpError::Blocked => ErrorCode::Blocked,
            OpError::Banned => ErrorCode::Banned,
            OpError::GroupFull => ErrorCode::GroupFull,
            OpError::InviteOnly => ErrorCode::InviteOnly,
            OpError::Conflict => ErrorCode::IdempotencyConflict,
            OpError::Pending => ErrorCode::AlreadyExists,
            OpError::Cooldown { .. } => ErrorCode::Cooldown,
            OpError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            _ => ErrorCode::Internal,
        };
        match e {
            OpError::Store(store) => store.into(),
            OpError::Cooldown { retry_after_ms } => Refusal::new(code, e.to_string())
                .retry_after(u32::try_from(retry_after_ms).unwrap_or(u32::MAX)),
            OpError::QuotaExceeded(what) => Refusal::quota(what.config_name(), e.to_string()),
            other => Refusal::new(code, other.to_string()),
        }
    }
}

/// A post the store refused (live or scheduled): a group that does not
/// exist (any more) is a bad recipient; the rest as [`From<OpError>`].
pub(crate) fn post_refused(e: OpError) -> Refusal {
    match e {
        OpError::NotFound | OpError::Dissolved => Refusal::new(
            ErrorCode::InvalidRecipient,
            "no such group, or it was dissolved",
        ),
        e => Refusal::from(e),
    }
}

/// What the sender of a scheduled send is told when the store refuses its
/// post at fire time: what a live send would get.
pub(crate) fn explain(e: &OpError) -> (ErrorCode, String) {
    let refusal = post_refused(e.clone());
    (refusal.code, refusal.message)
}

/// What an rpc handler returns: the answer, or why there is none.
pub(crate) type Reply = Result<rpc_response::Kind, Refusal>;

/// The wire form of a handler's reply.
pub(crate) fn answer(reply: Reply) -> rpc_response::Kind {
    reply.unwrap_or_else(Refusal::into_rpc)
}

/// The page size of a paged request: `default` when it names none (0), at
/// most `max`.
pub(crate) fn page_size(requested: u32, default: u32, max: u32) -> usize {
    let size = match requested {
        0 => default,
        n => n.min(max),
    };
    size as usize
}

/// Stored messages as the entries of one response frame: the leading ones
/// that fit, and whether any were cut.
pub(crate) fn entries_in_frame(
    messages: Vec<StoredMessage>,
    max_frame_bytes: u32,
) -> (Vec<v1::InboxEntry>, bool) {
    let entries = messages.into_iter().map(|m| v1::InboxEntry {
        seq: m.seq,
        message: Some(m.message),
    });
    fill_frame(entries, max_frame_bytes)
}

/// Bytes of a response frame kept free for everything but its entries.
const FRAME_OVERHEAD: usize = 64;

/// The leading `items` that fit one response frame of `max_frame_bytes`
/// (as repeated fields of the response); the client asks again for the
/// rest. The second value says whether items were cut.
fn fill_frame<T: prost::Message>(
    items: impl IntoIterator<Item = T>,
    max_frame_bytes: u32,
) -> (Vec<T>, bool) {
    let budget = (max_frame_bytes as usize).saturating_sub(FRAME_OVERHEAD);
    let mut used = 0;
    let mut kept = Vec::new();
    for item in items {
        let len = item.encoded_len();
        // Tag byte, length prefix, body.
        used += len + prost::length_delimiter_len(len) + 1;
        if used > budget {
            return (kept, true);
        }
        kept.push(item);
    }
    (kept, false)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use qim_storage::Quota;

    #[test]
    fn a_response_keeps_what_fits_the_frame_and_says_it_cut() {
        let entries: Vec<v1::InboxEntry> = (1..=100)
            .map(|seq| v1::InboxEntry {
                seq,
                message: Some(v1::Message {
                    body: vec![b'x'; 100].into(),
                    ..Default::default()
                }),
            })
            .collect();
        let (kept, cut) = fill_frame(entries.clone(), 2_000);
        assert!(cut);
        assert!(!kept.is_empty() && kept.len() < 100);
        let response = v1::SyncResponse {
            entries: kept,
            ..Default::default()
        };
        assert!(response.encoded_len() <= 2_000);
        let (all, cut) = fill_frame(entries, 1 << 20);
        assert_eq!((all.len(), cut), (100, false));
    }

    #[test]
    fn store_failures_do_not_reach_the_client() {
        let r = Refusal::from(StoreError::Unavailable("10.0.0.7:9042 timed out".into()));
        assert_eq!(r.code, ErrorCode::StoreUnavailable);
        assert!(!r.message.contains("10.0.0.7"));
        let r = Refusal::from(OpError::NotAMember);
        assert_eq!(r.code, ErrorCode::NotAMember);
        let r = Refusal::from(StoreError::Invalid("keyspace qim_prod: no table".into()));
        assert_eq!(r.code, ErrorCode::InvalidArgument);
        assert!(!r.message.contains("qim_prod"), "{}", r.message);
        let r = Refusal::from(StoreError::Full("/var/lib/qim: 3 bytes free".into()));
        assert_eq!((r.code, r.retry_after_ms), (ErrorCode::StoreFull, 1_000));
        assert!(r.code.is_retryable() && !r.message.contains("/var/lib"));
        let r = Refusal::from(OpError::Conflict);
        assert_eq!(r.code, ErrorCode::IdempotencyConflict);
        assert!(!r.code.is_retryable());
    }

    #[test]
    fn contact_rules_have_their_codes() {
        let r = Refusal::from(OpError::Cooldown {
            retry_after_ms: 5_000,
        });
        assert_eq!((r.code, r.retry_after_ms), (ErrorCode::Cooldown, 5_000));
        assert_eq!(
            Refusal::from(OpError::Pending).code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            Refusal::from(OpError::QuotaExceeded(Quota::GroupsOwned)).code,
            ErrorCode::QuotaExceeded
        );
        assert_eq!(explain(&OpError::Muted).0, ErrorCode::Muted);
    }
}
