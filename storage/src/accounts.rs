//! [`AccountStore`]: the users the business backend registered, each
//! enabled or disabled, listed in id order (what a broadcast walks).
//!
//! Registration is optional for logging in (the token is the identity); a
//! disabled account's logins are refused. Registering a registered user
//! changes nothing, so a registration may be repeated safely.
//!
//! A deleted account ([`AccountStore::mark_deleted`], the first step of
//! [`Stores::delete_user`](crate::Stores::delete_user)) stays as a
//! tombstone: its logins are refused for good, registering the id again
//! changes nothing (ids are never reused: a new user must not inherit
//! what others still hold about the old one, such as their chat history),
//! and [`AccountStore::accounts_after`] no longer lists it.

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
    /// The account was deleted: logins are refused for good.
    pub deleted: bool,
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

    /// Marks `user`'s account deleted, durably (a tombstone: logins
    /// refused, the id never registered again, no longer listed);
    /// `None` when never registered. Repeating it changes nothing.
    async fn mark_deleted(&self, user: &str) -> Result<Option<Account>, StoreError>;

    /// The account of `user`, if registered (deleted ones included).
    async fn account(&self, user: &str) -> Result<Option<Account>, StoreError>;

    /// Registered users (not deleted) with ids above `after` (`""`: from the first), in
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

/// The state byte of a deleted account (0: enabled, 1: disabled).
pub(crate) const DELETED: u8 = 2;

/// An account's stored value: `[state u8][registered_ms i64 BE]`, the
/// state 0 (enabled), 1 (disabled) or [`DELETED`].
pub(crate) fn encode(registered_ms: i64, state: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.push(state);
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
            deleted: *flag == DELETED,
        }),
        _ => Err(StoreError::Corrupt(format!("account record of {user:?}"))),
    }
}
