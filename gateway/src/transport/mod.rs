//! The second transport: the same sessions over one TLS 1.3 connection on
//! TCP, for clients whose network blocks or starves UDP.
//!
//! [`TcpListener`] accepts TCP connections, bounds each TLS handshake
//! (`transport.handshake_timeout_ms`) in one of the handshake slots QUIC
//! attempts use too (`quic.max_pending_handshakes`), checks the ALPN
//! version as QUIC does, and hands the connection, now a
//! [`qim_proto::transport::mux`] connection with QUIC's stream limits, to
//! the same `session::serve` as a QUIC connection. Nothing above this
//! module knows which transport a session runs on.

mod tcp;

pub(crate) use tcp::{Attempt, TcpListener, serve};
