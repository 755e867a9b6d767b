//! [`AccountStore`]: the users the business backend registered, each
//! enabled or disabled, listed in id order (what a broadcast walks).
//!
//! Registration is optional for logging in (the token is the identity); a
//! disabled account's logins are refused. Registering a registered user
//! changes nothing, so a registration may be repeated safely.

use async_trait::async_trait;

use crate::StoreError;

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user id.
    pub user: String,
    /// When it was first registered (ms since the epoch).
    pub registered_ms: i64,
    /// Logins are refused while set.
    pub disabled: bool,
}

/// Registered users.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Registers each of `users` not registered yet, durably, in one write
    /// (the others stay as they are); returns how many were new.
    async fn register(&self, users: &[String], now_ms: i64) -> Result<u32, StoreError>;

    /// Disables or enables `user`, durably; `None` when not registered.
    async fn set_disabled(&self, user: &str, disabled: bool)
    -> Result<Option<Account>, StoreError>;

    /// The account of `user`, if registered.
    async fn account(&self, user: &str) -> Result<Option<Account>, StoreError>;

    /// Registered users with ids above `after` (`""`: from the first), in
    /// id order, at most `limit`.
    async fn accounts_after(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError>;
}

/// Refuses an id outside the id alphabet.
pub(crate) fn check_user(user: &str) -> Result<(), StoreError> {
    if qim_proto::ids::is_valid_id(user) {
        Ok(())
    } else {
        Err(StoreError::Invalid("bad user id".into()))
    }
}

/// An account's stored value: `[disabled u8][registered_ms i64 BE]`.
pub(crate) fn encode(registered_ms: i64, disabled: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.push(u8::from(disabled));
    v.extend_from_slice(&registered_ms.to_be_bytes());
    v
}

/// The account of `user` from its stored value.
pub(crate) fn decode(user: &str, v: &[u8]) -> Result<Account, StoreError> {
    match v {
        [flag, ms @ ..] if ms.len() == 8 => Ok(Account {
            user: user.to_owned(),
            registered_ms: i64::from_be_bytes(ms.try_into().unwrap_or_default()),
            disabled: *flag != 0,
        }),
        _ => Err(StoreError::Corrupt(format!("account record of {user:?}"))),
    }
}
