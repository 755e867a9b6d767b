//! Login tokens for development: minted here from the gateway's
//! development secret (`qim-data/token-secret`), in the gateway's `qim2`
//! format, so a developer needs no backend. Real deployments give the app
//! a token from their backend (`--token`, `token_file`).
//!
//! The format (docs/security.md, "Identity and tokens"):
//! `qim2.<key id>.<base64url(user)>.<issued at>.<expires at>.<base64url(HMAC-SHA256)>`,
//! the HMAC over everything before the last `.`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use thiserror::Error;

/// The key id of the gateway's development secret.
pub const DEV_KEY_ID: &str = "default";

/// The shortest secret the gateway accepts, in bytes.
const MIN_SECRET_BYTES: usize = 32;

/// Why no token could be minted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MintError {
    /// The secret file could not be read.
    #[error("reading the development secret: {0}")]
    Read(#[from] std::io::Error),
    /// The file is not base64 of at least 32 bytes.
    #[error("the development secret is not base64 of at least {MIN_SECRET_BYTES} bytes")]
    BadSecret,
    /// The user id is not 1-64 of `[A-Za-z0-9._@-]`.
    #[error("not a valid user id: {0:?}")]
    BadUser(String),
}

/// A token for `user`, valid from `now` (unix seconds) for `valid_secs`,
/// signed with the secret in the file at `secret`.
pub fn mint_from_file(
    secret: &Path,
    user: &str,
    now: u64,
    valid_secs: u64,
) -> Result<String, MintError> {
    let text = std::fs::read_to_string(secret)?;
    mint(&decode_secret(&text)?, user, now, valid_secs)
}

/// A token for `user` signed with `secret` (raw bytes).
pub fn mint(secret: &[u8], user: &str, now: u64, valid_secs: u64) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::BadSecret);
    }
    if !valid_id(user) {
        return Err(MintError::BadUser(user.to_owned()));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signed = format!(
        "qim2.{DEV_KEY_ID}.{}.{now}.{}",
        URL_SAFE_NO_PAD.encode(user),
        now.saturating_add(valid_secs)
    );
    let tag = hmac::sign(&key, signed.as_bytes());
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
}

/// The user a `qim2` token names (unverified: only the server checks
/// tokens), for naming the data directory before login.
pub fn user_of(token: &str) -> Option<String> {
    let mut parts = token.trim().split('.');
    if parts.next()? != "qim2" {
        return None;
    }
    let _key = parts.next()?;
    let user = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    String::from_utf8(user).ok().filter(|u| valid_id(u))
}

/// A user id as the server accepts it: 1-64 of `[A-Za-z0-9._@-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A secret file's text: base64, standard or URL-safe, padding optional.
fn decode_secret(text: &str) -> Result<Vec<u8>, MintError> {
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
        .map_err(|_| MintError::BadSecret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_name_their_user_and_refuse_bad_input() {
        let secret = [7u8; 32];
        let token = mint(&secret, "alice", 1_000, 60).expect("mint");
        assert!(
            token.starts_with("qim2.default.YWxpY2U.1000.1060."),
            "{token}"
        );
        assert_eq!(user_of(&token).as_deref(), Some("alice"));
        assert!(matches!(
            mint(&secret, "bad user", 0, 1),
            Err(MintError::BadUser(_))
        ));
        assert!(matches!(
            mint(&[1; 8], "a", 0, 1),
            Err(MintError::BadSecret)
        ));
        assert_eq!(user_of("qim1.alice.1.x"), None);
        assert_eq!(user_of("qim2.k.!!!.1.2.x"), None);
    }
}
