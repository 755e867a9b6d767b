//! The cluster backend's [`NotifyStore`]: tokens and settings in CQL
//! (migration 4), push claims in Redis.
//!
//! # Writes
//! A registration reads the user's devices (the quota), reads who holds
//! the token, and writes the device's row and the token's owner row in one
//! logged batch (with the device's former token's owner row removed), after
//! removing the token from a former holder. The quota is checked by that
//! read, without a transaction: registrations of one user racing on
//! several nodes at once may each pass it (a user has one registration
//! per device, so this takes as many of the user's own devices racing).
//! Settings are read, changed and written whole (one row per user); two
//! devices of one user changing them at the same moment keep the later.
//!
//! # Claims
//! `<prefix>push:{<key>}` set with `NX` and a time to live: one node wins.

use async_trait::async_trait;
use fred::interfaces::KeysInterface as _;
use fred::types::{Expiration, SetOptions};
use prost::Message as _;
use qim_proto::v1;

use super::ClusterStore;
use crate::notify::{NotifyStore, PUSH_DEVICES, apply_settings, default_settings, token_key};
use crate::redis::unavailable;
use crate::{OpError, StoreError};

/// Devices read per user (far above any quota a server sets).
const MAX_DEVICES_READ: i32 = 1_000;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn check_ids(user: &str, device: &str) -> Result<(), StoreError> {
    if qim_proto::ids::is_valid_id(user) && qim_proto::ids::is_valid_id(device) {
        Ok(())
    } else {
        Err(StoreError::Invalid("bad user or device id".into()))
    }
}

impl ClusterStore {
    async fn token_of(
        &self,
        user: &str,
        device: &str,
    ) -> Result<Option<v1::PushToken>, StoreError> {
        let rows = self
            .social
            .exec(&self.notify.token_get, (user, device))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        match rows
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(corrupt)?
        {
            Some((Some(bytes),)) => Ok(Some(v1::PushToken::decode(&bytes[..]).map_err(corrupt)?)),
            _ => Ok(None),
        }
    }

    async fn owner_of(&self, token: &str) -> Result<Option<(String, String)>, StoreError> {
        let rows = self
            .social
            .exec(&self.notify.owner_get, (token_key(token),))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        Ok(rows
            .maybe_first_row::<(Option<String>, Option<String>)>()
            .map_err(corrupt)?
            .and_then(|(u, d)| u.zip(d)))
    }
}

#[async_trait]
impl NotifyStore for ClusterStore {
    async fn register_push_token(
        &self,
        user: &str,
        token: v1::PushToken,
        max_devices: usize,
    ) -> Result<(), OpError> {
        check_ids(user, &token.device)?;
        let devices = self.push_tokens(user).await?;
        let others = devices.iter().filter(|t| t.device != token.device).count();
        if others >= max_devices {
            return Err(OpError::QuotaExceeded(PUSH_DEVICES));
        }
        if let Some((holder, device)) = self.owner_of(&token.token).await? {
            if (holder.as_str(), device.as_str()) != (user, token.device.as_str()) {
                // The token moved to this device: the former holder loses it
                // (unless that device registered another token since).
                if self
                    .token_of(&holder, &device)
                    .await?
                    .is_some_and(|t| t.token == token.token)
                {
                    self.social
                        .exec(
                            &self.notify.token_delete,
                            (holder.as_str(), device.as_str()),
                        )
                        .await?;
                }
            }
        }
        let mut rows: Vec<crate::cql::social::Row> = Vec::new();
        if let Some(old) = devices.iter().find(|t| t.device == token.device) {
            if old.token != token.token {
                rows.push((
                    self.notify.owner_delete.clone(),
                    Box::new((token_key(&old.token),)),
                ));
            }
        }
        rows.push((
            self.notify.owner_put.clone(),
            Box::new((
                token_key(&token.token),
                user.to_owned(),
                token.device.clone(),
            )),
        ));
        rows.push((
            self.notify.token_put.clone(),
            Box::new((user.to_owned(), token.device.clone(), token.encode_to_vec())),
        ));
        self.social.batch(rows).await?;
        Ok(())
    }

    async fn remove_push_token(
        &self,
        user: &str,
        device: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        check_ids(user, device)?;
        let Some(old) = self.token_of(user, device).await? else {
            return Ok(false);
        };
        if only_if.is_some_and(|token| token != old.token) {
            return Ok(false);
        }
        let mut rows: Vec<crate::cql::social::Row> = vec![(
            self.notify.token_delete.clone(),
            Box::new((user.to_owned(), device.to_owned())),
        )];
        if self.owner_of(&old.token).await? == Some((user.to_owned(), device.to_owned())) {
            rows.push((
                self.notify.owner_delete.clone(),
                Box::new((token_key(&old.token),)),
            ));
        }
        self.social.batch(rows).await?;
        Ok(true)
    }

    async fn push_tokens(&self, user: &str) -> Result<Vec<v1::PushToken>, StoreError> {
        if !qim_proto::ids::is_valid_id(user) {
            return Err(StoreError::Invalid("bad user id".into()));
        }
        let rows = self
            .social
            .exec(&self.notify.tokens_of, (user, MAX_DEVICES_READ))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let mut out = Vec::new();
        for row in rows.rows::<(String, Option<Vec<u8>>)>().map_err(corrupt)? {
            if let (_, Some(bytes)) = row.map_err(corrupt)? {
                out.push(v1::PushToken::decode(&bytes[..]).map_err(corrupt)?);
            }
        }
        Ok(out)
    }

    async fn push_settings(&self, user: &str) -> Result<v1::PushSettingsResponse, StoreError> {
        if !qim_proto::ids::is_valid_id(user) {
            return Err(StoreError::Invalid("bad user id".into()));
        }
        let rows = self
            .social
            .exec(&self.notify.settings_get, (user,))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        match rows
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(corrupt)?
        {
            Some((Some(bytes),)) => v1::PushSettingsResponse::decode(&bytes[..]).map_err(corrupt),
            _ => Ok(default_settings()),
        }
    }

    async fn set_push_settings(
        &self,
        user: &str,
        change: &v1::PushSettingsRequest,
        max_overrides: usize,
    ) -> Result<v1::PushSettingsResponse, OpError> {
        let settings = apply_settings(self.push_settings(user).await?, change, max_overrides)?;
        self.social
            .exec(&self.notify.settings_put, (user, settings.encode_to_vec()))
            .await?;
        Ok(settings)
    }

    async fn claim_push(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let key = format!("{}push:{{{key}}}", self.prefix);
        let ttl = i64::try_from(ttl_ms.max(1)).unwrap_or(i64::MAX);
        let taken: Option<String> = self
            .redis
            .set(
                &key,
                "1",
                Some(Expiration::PX(ttl)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(taken.is_some())
    }
}
