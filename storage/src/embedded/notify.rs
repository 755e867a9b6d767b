//! The embedded backend's [`NotifyStore`].
//!
//! # Keys
//! - `push_tokens`: `[len][user][device]` → protobuf `v1.PushToken`.
//! - `push_token_owners`: `[token key]` ([`token_key`]) →
//!   `[len][user][device]`: who holds a token.
//! - `push_settings`: `[user]` → protobuf `v1.PushSettingsResponse`.
//!
//! Token and settings writes are rare: they are made directly (not through
//! the writer thread), one at a time under a lock, each one batch synced
//! before the call returns. Push claims live in memory: one node is the
//! whole cluster, and a claim only has to outlive the retries of one push.
//!
//! Users read to hold no token are remembered ([`Tokenless`]): every chat
//! message asks for its recipient's tokens, and most recipients have none
//! (desktop and web clients, users who refused notifications), so the
//! answer comes from memory rather than from a scan of the table.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use prost::Message as _;
use qim_proto::v1;

use super::EmbeddedStore;
use super::tables::{check_key_part, prefixed, unavailable};
use crate::notify::{NotifyStore, apply_settings, default_settings, token_key};
use crate::{OpError, StoreError};

/// Claims kept in memory before expired ones are swept.
const CLAIMS_SWEEP_AT: usize = 4_096;

/// Users remembered to hold no token; the set starts over when full.
const MAX_TOKENLESS: usize = 65_536;

/// Users read to hold no push token. Only a registration adds a token, and
/// each one takes its user out and counts itself in `registered`: a read
/// that began before a registration finished (and may have missed its
/// token) finds the count moved and remembers nothing.
#[derive(Default)]
struct Tokenless {
    users: HashSet<String>,
    registered: u64,
}

impl Tokenless {
    /// Before a read of `user`'s tokens: `None` when `user` is known to hold
    /// none, else the registration count to hand to [`remember`](Self::remember).
    fn before_read(&self, user: &str) -> Option<u64> {
        (!self.users.contains(user)).then_some(self.registered)
    }

    /// After a read found no token for `user`: remembered unless a
    /// registration finished since [`before_read`](Self::before_read).
    fn remember(&mut self, user: &str, registered: u64) {
        if self.registered != registered {
            return;
        }
        if self.users.len() >= MAX_TOKENLESS {
            self.users.clear();
        }
        self.users.insert(user.to_owned());
    }

    /// After a token was registered for `user`.
    fn registered(&mut self, user: &str) {
        self.registered += 1;
        self.users.remove(user);
    }
}

/// The in-memory part of the embedded notify store.
#[derive(Default)]
pub(super) struct NotifyState {
    /// Serialises token and settings writes (read, check, write).
    writes: Mutex<()>,
    /// Claim key → expiry (ms since the epoch).
    claims: Mutex<HashMap<String, i64>>,
    tokenless: Mutex<Tokenless>,
}

impl NotifyState {
    fn tokenless(&self) -> std::sync::MutexGuard<'_, Tokenless> {
        self.tokenless.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn device_key(user: &str, device: &str) -> Result<Vec<u8>, StoreError> {
    if !qim_proto::ids::is_valid_id(user) || !qim_proto::ids::is_valid_id(device) {
        return Err(StoreError::Invalid("bad user or device id".into()));
    }
    let mut key = prefixed(user, device.len());
    key.extend_from_slice(device.as_bytes());
    Ok(key)
}

fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt(format!("push record: {e}")))
}

impl EmbeddedStore {
    fn tokens_of(&self, user: &str) -> Result<Vec<(Vec<u8>, v1::PushToken)>, StoreError> {
        check_key_part(user)?;
        let mut out = Vec::new();
        for guard in self.tables.push_tokens.prefix(prefixed(user, 0)) {
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            out.push((key.to_vec(), decode(&value)?));
        }
        Ok(out)
    }

    fn settings_of(&self, user: &str) -> Result<v1::PushSettingsResponse, StoreError> {
        check_key_part(user)?;
        match self
            .tables
            .push_settings
            .get(user.as_bytes())
            .map_err(unavailable)?
        {
            Some(v) => decode(&v),
            None => Ok(default_settings()),
        }
    }
}

#[async_trait]
impl NotifyStore for EmbeddedStore {
    async fn register_push_token(
        &self,
        user: &str,
        token: v1::PushToken,
        max_devices: usize,
    ) -> Result<(), OpError> {
        let key = device_key(user, &token.device)?;
        self.disk.check()?;
        let t = &self.tables;
        let _writes = self.notify.writes.lock().unwrap_or_else(|e| e.into_inner());
        let others = self
            .tokens_of(user)?
            .into_iter()
            .filter(|(k, _)| *k != key)
            .count();
        if others >= max_devices {
            return Err(OpError::QuotaExceeded(crate::Quota::PushDevices));
        }
        let owner_key = token_key(&token.token);
        let mut batch = t.db.batch();
        if let Some(old) = t.push_tokens.get(&key).map_err(unavailable)? {
            let old: v1::PushToken = decode(&old)?;
            if old.token != token.token {
                batch.remove(&t.push_token_owners, token_key(&old.token).into_bytes());
            }
        }
        if let Some(holder) = t
            .push_token_owners
            .get(owner_key.as_bytes())
            .map_err(unavailable)?
        {
            if holder.as_ref() != key.as_slice() {
                // The token moved to this device: the former holder loses it.
                batch.remove(&t.push_tokens, holder.to_vec());
            }
        }
        batch.insert(&t.push_token_owners, owner_key.into_bytes(), key.clone());
        batch.insert(&t.push_tokens, key, token.encode_to_vec());
        batch.durable().commit().map_err(unavailable)?;
        self.notify.tokenless().registered(user);
        Ok(())
    }

    async fn remove_push_token(
        &self,
        user: &str,
        device: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        let key = device_key(user, device)?;
        let t = &self.tables;
        let _writes = self.notify.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = t.push_tokens.get(&key).map_err(unavailable)? else {
            return Ok(false);
        };
        let old: v1::PushToken = decode(&old)?;
        if only_if.is_some_and(|token| token != old.token) {
            return Ok(false);
        }
        let mut batch = t.db.batch();
        batch.remove(&t.push_tokens, key);
        batch.remove(&t.push_token_owners, token_key(&old.token).into_bytes());
        batch.durable().commit().map_err(unavailable)?;
        Ok(true)
    }

    async fn push_tokens(&self, user: &str) -> Result<Vec<v1::PushToken>, StoreError> {
        let Some(registered) = self.notify.tokenless().before_read(user) else {
            return Ok(Vec::new());
        };
        let tokens = self.tokens_of(user)?;
        if tokens.is_empty() {
            self.notify.tokenless().remember(user, registered);
        }
        Ok(tokens.into_iter().map(|(_, t)| t).collect())
    }

    async fn push_settings(&self, user: &str) -> Result<v1::PushSettingsResponse, StoreError> {
        self.settings_of(user)
    }

    async fn set_push_settings(
        &self,
        user: &str,
        change: &v1::PushSettingsRequest,
        max_overrides: usize,
    ) -> Result<v1::PushSettingsResponse, OpError> {
        self.disk.check()?;
        let _writes = self.notify.writes.lock().unwrap_or_else(|e| e.into_inner());
        let settings = apply_settings(self.settings_of(user)?, change, max_overrides)?;
        let mut batch = self.tables.db.batch();
        batch.insert(
            &self.tables.push_settings,
            user.as_bytes().to_vec(),
            settings.encode_to_vec(),
        );
        batch.durable().commit().map_err(unavailable)?;
        Ok(settings)
    }

    async fn claim_push(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = qim_proto::now_ms();
        let mut claims = self.notify.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() >= CLAIMS_SWEEP_AT {
            claims.retain(|_, expiry| *expiry > now);
        }
        match claims.get(key) {
            Some(expiry) if *expiry > now => Ok(false),
            _ => {
                let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
                claims.insert(key.to_owned(), now.saturating_add(ttl));
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that began before a registration finished may have missed
    /// its token: it remembers nothing. One that began after does.
    #[test]
    fn a_read_overtaken_by_a_registration_remembers_nothing() {
        let mut t = Tokenless::default();
        let before = t.before_read("u").expect("not known yet");
        t.registered("u");
        t.remember("u", before);
        assert!(t.before_read("u").is_some(), "remembered from a stale read");

        let after = t.before_read("u").expect("not known");
        t.remember("u", after);
        assert_eq!(t.before_read("u"), None, "an up-to-date read is remembered");
        t.registered("u");
        assert!(
            t.before_read("u").is_some(),
            "a registration forgets its user"
        );
    }

    /// The set starts over at its bound rather than growing.
    #[test]
    fn the_set_is_bounded() {
        let mut t = Tokenless::default();
        for i in 0..=MAX_TOKENLESS {
            t.remember(&format!("u{i}"), 0);
        }
        assert_eq!(t.users.len(), 1);
    }
}
