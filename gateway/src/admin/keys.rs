//! Admin API keys: read from `admin.keys_file` at start-up, each with an id
//! (for logs), the SHA-256 of its secret and its scopes. A request presents
//! the secret as `Authorization: Bearer <secret>`; it is hashed and compared
//! with every key's hash in constant time (`subtle`), so neither the timing
//! nor the file (which may hold hashes only) gives a secret away.
//!
//! ```toml
//! [[key]]
//! id = "dashboard"
//! # printf %s "$SECRET" | sha256sum
//! secret_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! scopes = ["read"]
//!
//! [[key]]
//! id = "support"
//! secret = "a secret of at least 32 characters, kept only here"
//! scopes = ["read", "sessions"]
//! ```

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq as _;
use thiserror::Error;

/// What a key may do. Each route of the admin API needs one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read views: nodes and their load, online status and counts.
    Read,
    /// Act on users' sessions: kick, revoke tokens.
    Sessions,
    /// Send messages and business notifications to users and groups, as a
    /// user or as the system account.
    Messages,
    /// Administer groups on the business's behalf: create, add and remove
    /// members, mute, dissolve.
    Groups,
    /// Register, disable and enable users' accounts.
    Users,
}

impl Scope {
    /// Every scope, as the keys file names them.
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Sessions,
        Scope::Messages,
        Scope::Groups,
        Scope::Users,
    ];

    /// The name in the keys file and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Sessions => "sessions",
            Scope::Messages => "messages",
            Scope::Groups => "groups",
            Scope::Users => "users",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Why the keys file was refused (the gateway does not start).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Not TOML of the expected shape.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key that cannot be used.
    #[error("{path}: key {id:?}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key's id.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Shortest accepted plaintext secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    secret: Option<String>,
    secret_sha256: Option<String>,
    scopes: Vec<String>,
}

/// One admin key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Names the key in logs; never secret.
    pub id: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

impl ApiKey {
    /// Whether the key may use routes of `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// The keys of the admin API.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16);
    let mut out = [0; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::try_from(nibble(pair[0])? * 16 + nibble(pair[1])?).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// Reads and checks the keys file.
    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<ApiKeys, KeysError> {
        let file: File = toml::from_str(text).map_err(|e| KeysError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if file.key.is_empty() {
            return Err(KeysError::Parse {
                path: path.to_owned(),
                reason: "no [[key]]: remove admin.keys_file to turn the admin API off".into(),
            });
        }
        let mut keys: Vec<ApiKey> = Vec::with_capacity(file.key.len());
        for entry in file.key {
            let invalid = |reason| KeysError::Invalid {
                path: path.to_owned(),
                id: entry.id.clone(),
                reason,
            };
            if !qim_proto::ids::is_valid_id(&entry.id) {
                return Err(invalid("id must be 1-64 of [A-Za-z0-9._@-]"));
            }
            let hash = match (&entry.secret, &entry.secret_sha256) {
                (Some(secret), None) if secret.len() >= MIN_SECRET_BYTES => {
                    sha256(secret.as_bytes())
                }
                (Some(_), None) => return Err(invalid("secret shorter than 32 bytes")),
                (None, Some(hex)) => {
                    from_hex(hex).ok_or_else(|| invalid("secret_sha256 is not 64 hex digits"))?
                }
                _ => return Err(invalid("needs exactly one of secret and secret_sha256")),
            };
            let mut scopes = Vec::new();
            for name in &entry.scopes {
                scopes.push(Scope::parse(name).ok_or_else(|| {
                    invalid(
                        "unknown scope (known: \"read\", \"sessions\", \"messages\", \"groups\", \"users\")",
                    )
                })?);
            }
            if scopes.is_empty() {
                return Err(invalid("no scopes"));
            }
            if keys.iter().any(|k| k.id == entry.id) {
                return Err(invalid("the id is used twice"));
            }
            if keys.iter().any(|k| k.hash == hash) {
                return Err(invalid("the secret is used twice"));
            }
            keys.push(ApiKey {
                id: entry.id,
                hash,
                scopes,
            });
        }
        Ok(ApiKeys { keys })
    }

    /// The key whose secret is `presented`, if any. Every key's hash is
    /// compared, in constant time, whatever matched before.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let hash = sha256(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn parse(text: &str) -> Result<ApiKeys, KeysError> {
        ApiKeys::parse(Path::new("keys.toml"), text)
    }

    #[test]
    fn keys_are_found_by_secret_or_hash_with_their_scopes() {
        let hex: String = sha256(b"another secret of 32 bytes or more")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = parse(&format!(
            "[[key]]\nid = \"ops\"\nsecret = \"{SECRET}\"\nscopes = [\"read\", \"sessions\"]\n\
             [[key]]\nid = \"dash\"\nsecret_sha256 = \"{hex}\"\nscopes = [\"read\"]\n"
        ))
        .expect("valid");
        let ops = keys.find(SECRET).expect("plain secret");
        assert_eq!(ops.id, "ops");
        assert!(ops.allows(Scope::Sessions));
        let dash = keys
            .find("another secret of 32 bytes or more")
            .expect("hashed secret");
        assert!(dash.allows(Scope::Read) && !dash.allows(Scope::Sessions));
        assert!(keys.find("").is_none());
        assert!(keys.find(&SECRET[1..]).is_none());
    }

    #[test]
    fn unusable_files_are_refused() {
        for bad in [
            "",
            "[[key]]\nid = \"a\"\nsecret = \"short\"\nscopes = [\"read\"]\n",
            &format!("[[key]]\nid = \"a\"\nsecret = \"{SECRET}\"\nscopes = [\"all\"]\n"),
            &format!("[[key]]\nid = \"a\"\nsecret = \"{SECRET}\"\nscopes = []\n"),
            "[[key]]\nid = \"a\"\nsecret_sha256 = \"zz\"\nscopes = [\"read\"]\n",
            &format!(
                "[[key]]\nid = \"a\"\nsecret = \"{SECRET}\"\nscopes = [\"read\"]\n\
                 [[key]]\nid = \"b\"\nsecret = \"{SECRET}\"\nscopes = [\"read\"]\n"
            ),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
