//! Login tokens: HMAC-SHA256-signed, carrying a user id and an expiry.
//!
//! Format: `qim1.<user id>.<expiry, unix seconds>.<base64url signature>`,
//! where the signature covers everything before the last dot. User ids are
//! restricted to `[A-Za-z0-9._@-]` (see [`qim_proto::ids`]) so they need no
//! escaping. The application's backend mints tokens with the shared secret;
//! the gateway only verifies. `qim-gateway token` mints one for development.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use qim_proto::v1::ErrorCode;
use ring::hmac;
use thiserror::Error;

const VERSION: &str = "qim1";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of the token format, or the user id is not a valid id.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match (wrong secret or altered token).
    #[error("token signature does not verify")]
    BadSignature,
    /// The token expired at this unix time.
    #[error("token expired at {0}")]
    Expired(u64),
}

impl TokenError {
    /// The wire code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Malformed | TokenError::BadSignature => ErrorCode::BadToken,
            TokenError::Expired(_) => ErrorCode::TokenExpired,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user the token logs in.
    pub user_id: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from secret bytes (at least 32 recommended).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Reads the secret at `path`, creating a random one (mode 0600) if the
    /// file does not exist. This is the development path: production
    /// deployments configure a secret shared with their token issuer.
    pub fn load_or_create(path: &Path) -> std::io::Result<(Self, bool)> {
        match Self::load(path) {
            Ok(key) => Ok((key, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; 32] = rand::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::secrets::write_private(path, URL_SAFE_NO_PAD.encode(secret).as_bytes())?;
                Ok((Self::new(&secret), true))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the base64url secret at `path`.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let secret = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Self::new(&secret))
    }

    /// Mints a token for `user_id` valid until `expires_at` (unix seconds).
    pub fn mint(&self, user_id: &str, expires_at: u64) -> Result<String, TokenError> {
        if !qim_proto::ids::is_valid_id(user_id) {
            return Err(TokenError::Malformed);
        }
        let signed = format!("{VERSION}.{user_id}.{expires_at}");
        let tag = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    /// Checks a token's signature and expiry at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(VERSION), Some(user_id), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, signed.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let expires_at: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if !qim_proto::ids::is_valid_id(user_id) {
            return Err(TokenError::Malformed);
        }
        if now >= expires_at {
            return Err(TokenError::Expired(expires_at));
        }
        Ok(Claims {
            user_id: user_id.to_owned(),
            expires_at,
        })
    }
}

pub use crate::secrets::unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.mint("alice", 1000).expect("mint");
        assert_eq!(
            key.verify(&token, 999),
            Ok(Claims {
                user_id: "alice".into(),
                expires_at: 1000
            })
        );
        assert_eq!(key.verify(&token, 1000), Err(TokenError::Expired(1000)));
        assert_eq!(TokenError::Expired(1).code(), ErrorCode::TokenExpired);
    }

    #[test]
    fn altered_or_foreign_tokens_are_refused() {
        let key = TokenKey::new(b"secret-one");
        let other = TokenKey::new(b"secret-two");
        let token = key.mint("alice", u64::MAX).expect("mint");
        assert_eq!(other.verify(&token, 0), Err(TokenError::BadSignature));
        let forged = token.replacen("alice", "mallory", 1);
        assert_eq!(key.verify(&forged, 0), Err(TokenError::BadSignature));
        for junk in [
            "",
            "qim1",
            "a.b.c.d",
            "qim1.alice.10",
            "qim1.a.b.c.d.e",
            "qim1.alice.x.!!",
        ] {
            assert!(key.verify(junk, 0).is_err(), "{junk:?} refused");
        }
        assert_eq!(key.mint("bad id", 1), Err(TokenError::Malformed));
    }
}
