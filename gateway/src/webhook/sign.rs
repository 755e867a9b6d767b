//! The signature of the gateway's outgoing HTTP calls (webhooks and the
//! push bridge): `x-qim-timestamp` is the unix time in seconds and
//! `x-qim-signature` is `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`
//! under a secret of at least [`MIN_SECRET_BYTES`] read from a file.

use std::path::Path;

use ring::hmac;

/// Bytes of a signing secret at least.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// Why a signing secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: at least {MIN_SECRET_BYTES} bytes")]
    Short { what: &'static str, path: String },
}

/// Signs request bodies with one secret.
pub(crate) struct Signer {
    key: hmac::Key,
}

impl Signer {
    /// The signer of the secret in `path` (surrounding whitespace
    /// ignored); `what` names the setting in errors.
    pub(crate) fn load(what: &'static str, path: &Path) -> Result<Signer, SecretError> {
        let secret = std::fs::read(path).map_err(|source| SecretError::Read {
            what,
            path: path.display().to_string(),
            source,
        })?;
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::Short {
                what,
                path: path.display().to_string(),
            });
        }
        Ok(Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// The `x-qim-signature` value for `body` sent at `timestamp`.
    pub(crate) fn sign(&self, timestamp: u64, body: &str) -> String {
        let tag = hmac::sign(&self.key, format!("{timestamp}.{body}").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }

    /// A POST of `body` (JSON) to `url` with the signature headers.
    pub(crate) fn post(
        &self,
        http: &reqwest::Client,
        url: &str,
        body: String,
    ) -> reqwest::RequestBuilder {
        let timestamp = crate::auth::unix_now();
        http.post(url)
            .header("content-type", "application/json")
            .header("x-qim-timestamp", timestamp.to_string())
            .header("x-qim-signature", self.sign(timestamp, &body))
            .body(body)
    }
}
