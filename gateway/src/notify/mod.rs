//! Offline push: what a device with no live session is told through its
//! platform's push service.
//!
//! # Files
//! - `tokens.rs`: the push token request (register on login, remove on
//!   logout, list) and the push settings request (preview on or off per
//!   user and per conversation), with their rules and limits.
//!
//! The per-user state this node keeps (the token write rate) is in
//! [`Notifier`], shared through the context.

use std::sync::Mutex;

use crate::config::Notify;
use crate::limit::PerKey;

mod tokens;

pub(crate) use tokens::{push_settings, push_token};

/// Users whose token write rate this node remembers at once.
const USERS_REMEMBERED: usize = 100_000;

/// This node's offline push state.
pub(crate) struct Notifier {
    /// Token registrations and removals per user
    /// (`notify.token_writes_per_minute`).
    pub(crate) token_writes: Mutex<PerKey<String>>,
}

impl Notifier {
    /// The state for `config`.
    pub(crate) fn new(config: &Notify) -> Self {
        let per_minute = config.token_writes_per_minute;
        Self {
            token_writes: Mutex::new(PerKey::new(
                f64::from(per_minute) / 60.0,
                per_minute,
                USERS_REMEMBERED,
            )),
        }
    }
}
