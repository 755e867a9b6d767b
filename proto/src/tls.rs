//! The TLS cipher suites the gateway and its clients use.

use quinn::rustls::crypto::{CryptoProvider, ring};

/// ring's provider with TLS 1.3 AES-128-GCM first, then ChaCha20-Poly1305,
/// then AES-256-GCM.
///
/// ring's default puts AES-256-GCM with SHA-384 first. Every handshake
/// derives its keys with HKDF over the suite's hash, and SHA-384 has no
/// hardware instructions on x86 while SHA-256 does: in a reconnect storm
/// SHA-512 blocks were 2.4% of the gateway's CPU and as much of the
/// client's (`BENCHMARKS.md`). AES-128-GCM is TLS 1.3's mandatory suite and
/// also seals each packet with 10 AES rounds instead of 14. The server
/// honours the client's order, so a client without AES instructions may
/// still put ChaCha20 first.
pub fn crypto_provider() -> CryptoProvider {
    use ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ],
        ..ring::default_provider()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_only_tls13_suites_with_aes_128_first() {
        let suites = crypto_provider().cipher_suites;
        assert_eq!(suites.len(), 3);
        assert!(suites.iter().all(|s| s.tls13().is_some()));
        assert_eq!(
            suites[0].suite(),
            quinn::rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }
}
