//! Login tokens: HMAC-SHA256-signed, naming their key, user, issue time and
//! expiry; and the key ring that verifies them.
//!
//! # Format (version 2, minted today)
//! ```text
//! qim2.<key id>.<base64url(user id)>.<issued at>.<expires at>.<base64url(signature)>
//! ```
//! - `key id`: 1-32 of `[A-Za-z0-9_-]`, the id of the key that signed it.
//! - the user id, base64url without padding (RFC 4648 §5), so any valid
//!   id (`[A-Za-z0-9._@-]`, see [`qim_proto::ids`]) travels unambiguously.
//! - `issued at`, `expires at`: unix seconds in decimal (1-20 digits),
//!   `issued at <= expires at`.
//! - the signature: HMAC-SHA256, with the secret of `key id`, of every byte
//!   before the last `.`, base64url without padding.
//!
//! # Version 1 (still verified)
//! `qim1.<user id>.<expires at>.<signature>`: the user id in clear, so only
//! ids without a `.` fit; no key id (every verification key is tried) and
//! no issue time (taken as 0, so any revocation of the user refuses it).
//!
//! The application's backend mints tokens with a shared secret; the gateway
//! only verifies (`qim-gateway token` mints for development). docs/security.md
//! ("Identity and tokens") is the reference for backends in other languages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use qim_proto::v1::ErrorCode;
use ring::hmac;
use thiserror::Error;

/// The prefix of tokens minted today.
const V2: &str = "qim2";
/// The prefix of the first format, verified still.
const V1: &str = "qim1";

/// The shortest secret a key may have, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The id of the key of `auth.secret_file` (and of the development secret).
pub const DEFAULT_KEY_ID: &str = "default";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of a token format, or the user id is not a valid id.
    #[error("malformed token")]
    Malformed,
    /// The token names a key this gateway does not have (never had, or
    /// removed by a rotation).
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The signature does not match (wrong secret or altered token).
    #[error("token signature does not verify")]
    BadSignature,
    /// The token expired at this unix time.
    #[error("token expired at {0}")]
    Expired(u64),
    /// The user's tokens issued before this unix time were revoked.
    #[error("token revoked (issued before {0})")]
    Revoked(u64),
}

impl TokenError {
    /// The wire code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Malformed | TokenError::UnknownKey | TokenError::BadSignature => {
                ErrorCode::BadToken
            }
            TokenError::Expired(_) => ErrorCode::TokenExpired,
            TokenError::Revoked(_) => ErrorCode::TokenRevoked,
        }
    }
}

/// Why a key could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read (or, for the development secret, written).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is not base64.
    #[error("not base64 (standard or URL-safe, padding optional)")]
    Encoding,
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("secret of {0} bytes; at least {MIN_SECRET_BYTES} needed")]
    TooShort(usize),
    /// The key id is not 1-32 of `[A-Za-z0-9_-]`.
    #[error("key id {0:?} is not 1-32 of [A-Za-z0-9_-]")]
    BadId(String),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user the token logs in.
    pub user_id: String,
    /// Unix seconds the token was issued at (0 for a version 1 token).
    pub issued_at: u64,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
}

pub use crate::config::is_valid_key_id;

/// One signing secret with its id.
#[derive(Clone)]
pub struct TokenKey {
    id: String,
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({:?}, ..)", self.id)
    }
}

impl TokenKey {
    /// A key named `id` from secret bytes (at least [`MIN_SECRET_BYTES`]).
    pub fn with_id(id: &str, secret: &[u8]) -> Result<Self, KeyError> {
        if !is_valid_key_id(id) {
            return Err(KeyError::BadId(id.to_owned()));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(Self {
            id: id.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// The key id tokens of this key name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the secret of key `id` at `path`.
    pub fn load_with_id(id: &str, path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)?;
        Self::with_id(id, &decode_secret(&text)?)
    }

    /// Reads the secret at `path` as the [`DEFAULT_KEY_ID`] key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::load_with_id(DEFAULT_KEY_ID, path)
    }

    /// Reads the secret at `path` as the [`DEFAULT_KEY_ID`] key, creating a
    /// random one (32 bytes, base64url, mode 0600) if the file does not
    /// exist; says whether it did. The development path, and how
    /// `qim-gateway token` makes a secret file for a cluster.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Ok(key) => Ok((key, false)),
            Err(KeyError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; 32] = rand::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::secrets::write_private(path, URL_SAFE_NO_PAD.encode(secret).as_bytes())?;
                Ok((Self::with_id(DEFAULT_KEY_ID, &secret)?, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Mints a token for `user_id`, issued now (or at `expires_at` if that
    /// is earlier), valid until `expires_at` (unix seconds).
    pub fn mint(&self, user_id: &str, expires_at: u64) -> Result<String, TokenError> {
        let now = crate::secrets::unix_now();
        self.mint_at(user_id, now.min(expires_at), expires_at)
    }

    /// Mints a token for `user_id` issued at `issued_at`, valid until
    /// `expires_at` (unix seconds).
    pub fn mint_at(
        &self,
        user_id: &str,
        issued_at: u64,
        expires_at: u64,
    ) -> Result<String, TokenError> {
        if !qim_proto::ids::is_valid_id(user_id) || issued_at > expires_at {
            return Err(TokenError::Malformed);
        }
        let user = URL_SAFE_NO_PAD.encode(user_id);
        let signed = format!("{V2}.{}.{user}.{issued_at}.{expires_at}", self.id);
        let tag = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    fn verifies(&self, signed: &str, signature: &[u8]) -> bool {
        hmac::verify(&self.key, signed.as_bytes(), signature).is_ok()
    }
}

/// Reads a secret file's text: base64, standard or URL-safe, padding and
/// surrounding whitespace optional.
fn decode_secret(text: &str) -> Result<Vec<u8>, KeyError> {
    let url_safe: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD
        .decode(url_safe)
        .map_err(|_| KeyError::Encoding)
}

/// The verification keys, by id, and the one new tokens are signed with.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    keys: BTreeMap<String, TokenKey>,
    signing: String,
}

impl TokenKeys {
    /// One key, which signs and verifies.
    pub fn single(key: TokenKey) -> Self {
        let signing = key.id.clone();
        Self {
            keys: BTreeMap::from([(signing.clone(), key)]),
            signing,
        }
    }

    /// Several keys; `signing` names the one that signs (it must be there).
    pub fn new(keys: Vec<TokenKey>, signing: &str) -> Option<Self> {
        let keys: BTreeMap<String, TokenKey> =
            keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        keys.contains_key(signing).then(|| Self {
            keys,
            signing: signing.to_owned(),
        })
    }

    /// The key new tokens are signed with.
    pub fn signing(&self) -> &TokenKey {
        // `new` and `single` keep the signing key in the map.
        &self.keys[&self.signing]
    }

    /// The ids of the verification keys.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks a token's format, key, signature and expiry at `now` (unix
    /// seconds). Revocation is the caller's (it needs the store).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let parts: Vec<&str> = signed.split('.').collect();
        let claims = match parts.as_slice() {
            [V2, kid, user, issued, expires] => {
                let key = self.keys.get(*kid).ok_or(TokenError::UnknownKey)?;
                if !key.verifies(signed, &signature) {
                    return Err(TokenError::BadSignature);
                }
                let user = URL_SAFE_NO_PAD
                    .decode(user)
                    .ok()
                    .and_then(|u| String::from_utf8(u).ok())
                    .ok_or(TokenError::Malformed)?;
                Claims {
                    user_id: user,
                    issued_at: seconds(issued)?,
                    expires_at: seconds(expires)?,
                }
            }
            [V1, user, expires] => {
                if !self.keys.values().any(|k| k.verifies(signed, &signature)) {
                    return Err(TokenError::BadSignature);
                }
                Claims {
                    user_id: (*user).to_owned(),
                    issued_at: 0,
                    expires_at: seconds(expires)?,
                }
            }
            _ => return Err(TokenError::Malformed),
        };
        if !qim_proto::ids::is_valid_id(&claims.user_id) || claims.issued_at > claims.expires_at {
            return Err(TokenError::Malformed);
        }
        if now >= claims.expires_at {
            return Err(TokenError::Expired(claims.expires_at));
        }
        Ok(claims)
    }
}

/// A decimal unix time: 1-20 ASCII digits.
fn seconds(text: &str) -> Result<u64, TokenError> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed);
    }
    text.parse().map_err(|_| TokenError::Malformed)
}

/// The key ring a gateway configuration names: `auth.keys` with
/// `auth.signing_key`, or `auth.secret_file` as the [`DEFAULT_KEY_ID`] key,
/// or (neither set, single node only: `Config::validate` refuses a cluster
/// without keys) the development secret `data_dir/token-secret`, created
/// once. Returns the ring and the development secret's path when that is
/// the one in use. Every configured file must exist and hold a secret of
/// at least [`MIN_SECRET_BYTES`].
pub fn keys_from_config(
    config: &crate::config::Config,
) -> Result<(TokenKeys, Option<PathBuf>), (PathBuf, KeyError)> {
    let auth = &config.auth;
    if !auth.keys.is_empty() {
        let mut keys = Vec::with_capacity(auth.keys.len());
        for (id, path) in &auth.keys {
            keys.push(TokenKey::load_with_id(id, path).map_err(|e| (path.clone(), e))?);
        }
        let signing = match (&auth.signing_key, auth.keys.keys().next()) {
            (Some(id), _) => id.clone(),
            (None, Some(only)) => only.clone(),
            (None, None) => String::new(),
        };
        let ring = TokenKeys::new(keys, &signing).ok_or_else(|| {
            let path = PathBuf::from(format!("auth.signing_key {signing:?}"));
            (path, KeyError::BadId(signing.clone()))
        })?;
        return Ok((ring, None));
    }
    if let Some(path) = &auth.secret_file {
        let key = TokenKey::load(path).map_err(|e| (path.clone(), e))?;
        return Ok((TokenKeys::single(key), None));
    }
    let path = dev_secret_path(config);
    let (key, created) = TokenKey::load_or_create(&path).map_err(|e| (path.clone(), e))?;
    if created {
        tracing::info!(path = %path.display(), "created a development token secret");
    }
    Ok((TokenKeys::single(key), Some(path)))
}

/// Where the development secret lives: `data_dir/token-secret`.
pub fn dev_secret_path(config: &crate::config::Config) -> PathBuf {
    config.server.data_dir.join("token-secret")
}

pub use crate::secrets::unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn key(id: &str, secret: &[u8]) -> TokenKey {
        TokenKey::with_id(id, secret).expect("key")
    }

    #[test]
    fn tokens_verify_until_they_expire() {
        let ring = TokenKeys::single(key("k1", SECRET));
        let token = ring.signing().mint_at("alice", 10, 1000).expect("mint");
        assert!(token.starts_with("qim2.k1."), "{token}");
        assert_eq!(
            ring.verify(&token, 999),
            Ok(Claims {
                user_id: "alice".into(),
                issued_at: 10,
                expires_at: 1000
            })
        );
        assert_eq!(ring.verify(&token, 1000), Err(TokenError::Expired(1000)));
        assert_eq!(TokenError::Expired(1).code(), ErrorCode::TokenExpired);
        assert_eq!(TokenError::Revoked(1).code(), ErrorCode::TokenRevoked);
    }

    #[test]
    fn every_valid_user_id_round_trips() {
        let ring = TokenKeys::single(key("k", SECRET));
        let longest = "a.".repeat(32);
        for user in ["john.smith", "a@b.com", ".", "-_.@", "x", longest.as_str()] {
            let token = ring.signing().mint(user, u64::MAX).expect("mint");
            assert_eq!(ring.verify(&token, 0).map(|c| c.user_id), Ok(user.into()));
        }
    }

    /// A version 1 token, as the first format minted it.
    fn v1_token(secret: &[u8], user: &str, expires_at: u64) -> String {
        let signed = format!("qim1.{user}.{expires_at}");
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            signed.as_bytes(),
        );
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    #[test]
    fn version_1_tokens_of_ids_without_dots_still_verify() {
        let other = [7u8; 32];
        let ring =
            TokenKeys::new(vec![key("old", SECRET), key("new", &other)], "new").expect("ring");
        let token = v1_token(SECRET, "alice", 1000);
        assert_eq!(
            ring.verify(&token, 5),
            Ok(Claims {
                user_id: "alice".into(),
                issued_at: 0,
                expires_at: 1000
            })
        );
        assert_eq!(
            ring.verify(&v1_token(SECRET, "john.smith", 1000), 5),
            Err(TokenError::Malformed),
            "a dotted id never fitted version 1"
        );
        let removed = TokenKeys::single(key("new", &other));
        assert_eq!(removed.verify(&token, 5), Err(TokenError::BadSignature));
    }

    #[test]
    fn altered_foreign_and_removed_key_tokens_are_refused() {
        let ring = TokenKeys::single(key("k1", SECRET));
        let token = ring.signing().mint("alice", u64::MAX).expect("mint");
        let same_id_other_secret = TokenKeys::single(key("k1", &[9u8; 32]));
        assert_eq!(
            same_id_other_secret.verify(&token, 0),
            Err(TokenError::BadSignature)
        );
        let rotated = TokenKeys::single(key("k2", SECRET));
        assert_eq!(rotated.verify(&token, 0), Err(TokenError::UnknownKey));
        let mallory = URL_SAFE_NO_PAD.encode("mallory");
        let alice = URL_SAFE_NO_PAD.encode("alice");
        let forged = token.replacen(&alice, &mallory, 1);
        assert_eq!(ring.verify(&forged, 0), Err(TokenError::BadSignature));
        for junk in [
            "",
            "qim2",
            "a.b.c.d",
            "qim1.alice.10",
            "qim2.k1.YWxpY2U.1.2",
            "qim2.k1.YWxpY2U.1.2.3.!!",
            "qim2.k1.YWxpY2U.x.2.AAAA",
        ] {
            assert!(ring.verify(junk, 0).is_err(), "{junk:?} refused");
        }
        assert_eq!(ring.signing().mint("bad id", 1), Err(TokenError::Malformed));
        assert_eq!(
            ring.signing().mint_at("alice", 2, 1),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn short_secrets_and_bad_ids_are_refused() {
        assert!(matches!(
            TokenKey::with_id("k", b"short"),
            Err(KeyError::TooShort(5))
        ));
        assert!(matches!(
            TokenKey::with_id("k.1", SECRET),
            Err(KeyError::BadId(_))
        ));
        assert_eq!(
            decode_secret("  q83vEjRWeJA=\n").expect("padded standard base64"),
            [0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90]
        );
        assert_eq!(
            decode_secret("+/+/").expect("standard alphabet"),
            decode_secret("-_-_").expect("url-safe alphabet")
        );
        assert!(matches!(
            decode_secret("not base64!"),
            Err(KeyError::Encoding)
        ));
    }
}
