//! What the token key (`auth`) and the certificates (`tls`) both need:
//! files written for their owner's eyes only, and the wall clock in
//! seconds that expiries are counted in.

use std::path::Path;

/// Writes a file readable by its owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The endpoint secret: what the QUIC endpoint's connection-ID and
/// stateless-reset keys are derived from (see [`EndpointKeys`]). It must
/// outlive the process and be the same on every node of a cluster, so that
/// a restarted or another node recognises the connection IDs it (or a
/// peer) handed out and answers a packet of a connection it does not hold
/// with a stateless reset, which ends the client's connection at once.
pub(crate) mod endpoint {
    use std::path::{Path, PathBuf};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::hmac;
    use thiserror::Error;

    /// Bytes an endpoint secret must have at least.
    pub(crate) const MIN_LEN: usize = 32;

    /// Why the endpoint secret could not be had.
    #[derive(Debug, Error)]
    #[non_exhaustive]
    pub enum EndpointSecretError {
        /// A cluster node without `quic.endpoint_secret_file`.
        #[error("a cluster node needs quic.endpoint_secret_file (the same secret on every node)")]
        Missing,
        /// The file could not be read or written.
        #[error("endpoint secret {path}: {source}")]
        Io {
            /// The file.
            path: PathBuf,
            /// The failure.
            source: std::io::Error,
        },
        /// The file is not base64url.
        #[error("endpoint secret {0}: not base64url")]
        Malformed(PathBuf),
        /// Fewer than [`MIN_LEN`] bytes.
        #[error("endpoint secret {path}: {len} bytes, at least 32 needed")]
        Short {
            /// The file.
            path: PathBuf,
            /// Its length in bytes, decoded.
            len: usize,
        },
    }

    /// The keys of the QUIC endpoint, derived from the endpoint secret.
    pub(crate) struct EndpointKeys {
        /// Signs stateless-reset tokens.
        pub(crate) reset: hmac::Key,
        /// Keys the hash that connection IDs carry, by which the endpoint
        /// tells its own IDs (reset them) from random ones (drop them).
        pub(crate) cid: u64,
    }

    impl EndpointKeys {
        /// Derives both keys from `secret` (HMAC-SHA256 with a label each).
        pub(crate) fn derive(secret: &[u8]) -> Self {
            let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
            let reset = hmac::sign(&root, b"qim quic stateless reset v1");
            let cid = hmac::sign(&root, b"qim quic connection ids v1");
            let mut first = [0u8; 8];
            first.copy_from_slice(&cid.as_ref()[..8]);
            Self {
                reset: hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref()),
                cid: u64::from_le_bytes(first),
            }
        }
    }

    /// The endpoint keys: from `configured` (required when `clustered`), or
    /// else from `data_dir/endpoint-secret`, created once (mode 0600).
    /// Returns whether the file was created.
    pub(crate) fn load(
        configured: Option<&Path>,
        clustered: bool,
        data_dir: &Path,
    ) -> Result<(EndpointKeys, bool), EndpointSecretError> {
        match configured {
            Some(path) => Ok((EndpointKeys::derive(&read(path)?), false)),
            None if clustered => Err(EndpointSecretError::Missing),
            None => {
                let path = data_dir.join("endpoint-secret");
                let created = create(&path).map_err(|source| EndpointSecretError::Io {
                    path: path.clone(),
                    source,
                })?;
                Ok((EndpointKeys::derive(&read(&path)?), created))
            }
        }
    }

    /// Writes a random secret of [`MIN_LEN`] bytes, base64url, to `path`
    /// (mode 0600, directories made) unless the file exists; returns
    /// whether it wrote one. For `quic.endpoint_secret_file`: make it once
    /// and give every node of the cluster the same file.
    pub fn create(path: &Path) -> std::io::Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let secret: [u8; MIN_LEN] = rand::random();
        super::write_private(path, URL_SAFE_NO_PAD.encode(secret).as_bytes())?;
        Ok(true)
    }

    /// Reads a base64url secret of at least [`MIN_LEN`] bytes.
    fn read(path: &Path) -> Result<Vec<u8>, EndpointSecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointSecretError::Io {
            path: path.to_owned(),
            source,
        })?;
        let secret = URL_SAFE_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .map_err(|_| EndpointSecretError::Malformed(path.to_owned()))?;
        if secret.len() < MIN_LEN {
            return Err(EndpointSecretError::Short {
                path: path.to_owned(),
                len: secret.len(),
            });
        }
        Ok(secret)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_secret_is_made_once_and_a_configured_one_is_checked() {
            let dir = tempfile::tempdir().expect("dir");
            let (first, created) = load(None, false, dir.path()).expect("created");
            assert!(created);
            let (again, created) = load(None, false, dir.path()).expect("read");
            assert!(!created);
            assert_eq!(first.cid, again.cid, "the same keys after a restart");
            assert!(matches!(
                load(None, true, dir.path()),
                Err(EndpointSecretError::Missing)
            ));
            let short = dir.path().join("short");
            std::fs::write(&short, URL_SAFE_NO_PAD.encode([7u8; 31])).expect("write");
            assert!(matches!(
                load(Some(&short), true, dir.path()),
                Err(EndpointSecretError::Short { len: 31, .. })
            ));
            let bad = dir.path().join("bad");
            std::fs::write(&bad, "not base64!").expect("write");
            assert!(matches!(
                load(Some(&bad), true, dir.path()),
                Err(EndpointSecretError::Malformed(_))
            ));
            let missing = dir.path().join("missing");
            assert!(matches!(
                load(Some(&missing), true, dir.path()),
                Err(EndpointSecretError::Io { .. })
            ));
            let shared = dir.path().join("shared");
            std::fs::write(&shared, URL_SAFE_NO_PAD.encode([9u8; 32])).expect("write");
            let (a, _) = load(Some(&shared), true, dir.path()).expect("node a");
            let (b, _) = load(Some(&shared), true, dir.path()).expect("node b");
            assert_eq!(a.cid, b.cid, "every node derives the same keys");
            assert_ne!(a.cid, first.cid);
        }
    }
}
