//! Stream preambles: the opener of every stream starts it with `QIM`, the
//! protocol version and the stream kind, so the receiver knows what the
//! stream carries before the first frame, and garbage is refused after five
//! bytes. The reply direction of a bidi stream carries no preamble.

use thiserror::Error;

use crate::v1::ErrorCode;

/// Magic bytes at the start of every stream.
pub const MAGIC: [u8; 3] = *b"QIM";

/// Length of a preamble in bytes.
pub const LEN: usize = 5;

/// What a stream carries (see the table in `qim.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    /// Client-opened bidi: login, then notices from the server.
    Control = 1,
    /// Client-opened bidi: `Ping`/`Pong`.
    Heartbeat = 2,
    /// Client-opened uni: `Send` frames.
    Chat = 3,
    /// Uni in either direction: `ServerAck` down, `DeliveryAck` up.
    Ack = 4,
    /// Server-opened uni: `Deliver` frames in seq order.
    Delivery = 5,
    /// Client-opened bidi: one request, one response.
    Rpc = 6,
    /// Client-opened bidi: one blob uploaded (resumable, below chat in
    /// priority).
    Upload = 7,
    /// Client-opened bidi: one range of one blob downloaded.
    Download = 8,
}

impl StreamKind {
    /// Every kind, in wire order.
    pub const ALL: [StreamKind; 8] = [
        StreamKind::Control,
        StreamKind::Heartbeat,
        StreamKind::Chat,
        StreamKind::Ack,
        StreamKind::Delivery,
        StreamKind::Rpc,
        StreamKind::Upload,
        StreamKind::Download,
    ];

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// Why a preamble was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PreambleError {
    /// The first three bytes are not `QIM`.
    #[error("bad stream magic")]
    BadMagic,
    /// The version byte is not one this crate speaks: older than
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) (the peer must update)
    /// or newer (the peer is ahead of this build).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The kind byte names no known stream kind.
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
}

impl PreambleError {
    /// The wire code a peer is told.
    pub fn code(self) -> ErrorCode {
        match self {
            PreambleError::BadMagic => ErrorCode::BadPreamble,
            PreambleError::UnsupportedVersion(v) if v > crate::PROTOCOL_VERSION => {
                ErrorCode::VersionTooNew
            }
            PreambleError::UnsupportedVersion(_) => ErrorCode::VersionTooOld,
            PreambleError::UnknownKind(_) => ErrorCode::UnknownStreamKind,
        }
    }
}

/// The preamble bytes for a stream of `kind`.
pub fn encode(kind: StreamKind) -> [u8; LEN] {
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        crate::PROTOCOL_VERSION,
        kind as u8,
    ]
}

/// Parses a complete preamble.
pub fn decode(bytes: [u8; LEN]) -> Result<StreamKind, PreambleError> {
    if bytes[..3] != MAGIC {
        return Err(PreambleError::BadMagic);
    }
    if bytes[3] != crate::PROTOCOL_VERSION {
        return Err(PreambleError::UnsupportedVersion(bytes[3]));
    }
    StreamKind::from_byte(bytes[4]).ok_or(PreambleError::UnknownKind(bytes[4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for kind in StreamKind::ALL {
            assert_eq!(decode(encode(kind)), Ok(kind));
        }
    }

    #[test]
    fn garbage_is_refused_with_its_reason() {
        assert_eq!(decode(*b"HTTP/"), Err(PreambleError::BadMagic));
        assert_eq!(
            decode([b'Q', b'I', b'M', 9, 1]),
            Err(PreambleError::UnsupportedVersion(9))
        );
        assert_eq!(
            PreambleError::UnsupportedVersion(crate::PROTOCOL_VERSION + 1).code(),
            ErrorCode::VersionTooNew,
            "a newer peer is told so, not to update"
        );
        assert_eq!(
            PreambleError::UnsupportedVersion(0).code(),
            ErrorCode::VersionTooOld
        );
        assert_eq!(
            decode([b'Q', b'I', b'M', 1, 200]),
            Err(PreambleError::UnknownKind(200))
        );
        assert_eq!(
            PreambleError::UnknownKind(200).code(),
            ErrorCode::UnknownStreamKind
        );
    }
}
