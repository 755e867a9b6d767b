//! The qim wire protocol: everything two peers must agree on, and no IO.
//!
//! # Layout
//! - [`v1`]: the protobuf messages generated from `schema/qim/v1/qim.proto`
//!   (compiled by `protox`, so no system `protoc` is needed).
//! - [`preamble`]: the 5 bytes that open every stream (`QIM`, version, kind).
//! - [`frame`]: the length-delimited frame codec with a hard size limit.
//! - [`code`]: [`ErrorCode`](v1::ErrorCode) helpers; the one place codes meet
//!   QUIC close and reset codes.
//! - [`ids`]: validation of user, device and message ids.
//! - `transport` (feature `quinn`): the [`Transport`](transport::Transport)
//!   trait the session's streams run over, implemented by QUIC (quinn) and by
//!   TLS on TCP with yamux streams (`transport::mux`).
//! - `io` (feature `quinn`): framed send and receive over a transport's
//!   streams, the one async reader and writer shared by the gateway and the
//!   SDK.
//!
//! # Invariants
//! - Decoding never panics and never allocates more than the frame limit for a
//!   declared length: the length is checked before any buffer grows.
//! - Incomplete input is a normal outcome (`Ok(None)`), not an error.

pub mod code;
pub mod frame;
pub mod ids;
pub mod preamble;

#[cfg(feature = "quinn")]
pub mod io;
#[cfg(feature = "quinn")]
pub mod tls;
#[cfg(feature = "quinn")]
pub mod transport;

/// Generated protobuf types of protocol version 1.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/qim.v1.rs"));
}

/// ALPN protocol id of qim, over QUIC and over TLS on TCP alike.
pub const ALPN: &[u8] = b"qim/1";

/// The protocol version this crate speaks, carried in every stream preamble.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default largest frame, in bytes. Peers may lower it in `Welcome.limits`.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Current time in milliseconds since the Unix epoch, as carried on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
