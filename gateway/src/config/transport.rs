//! The `[transport]` section: the second transport, TLS 1.3 on TCP, for
//! networks that block or starve UDP.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::sections::{example_line, section};

section! {
    /// TLS on TCP: the same sessions as over QUIC, for clients whose network blocks UDP.
    "transport" => Transport {
        /// Serve TLS on TCP next to QUIC.
        tcp: bool = true,
        /// TCP address to listen on; unset: server.listen's address and port, on TCP.
        tcp_listen: Option<SocketAddr> = None,
        /// Milliseconds a TCP connection may take from accept to a completed TLS handshake; a
        /// slower one is dropped and counted in qim_handshakes_timed_out_total. Attempts in their
        /// handshake hold the same quic.max_pending_handshakes slots as QUIC attempts.
        handshake_timeout_ms: u64 = 5_000,
    }
}

impl Transport {
    /// The TCP address to bind, when TCP is on.
    pub fn tcp_addr(&self, quic: SocketAddr) -> Option<SocketAddr> {
        self.tcp.then(|| self.tcp_listen.unwrap_or(quic))
    }

    /// Refuses values that cannot work.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.handshake_timeout_ms == 0 {
            return Err("transport.handshake_timeout_ms must be above 0".into());
        }
        Ok(())
    }
}
