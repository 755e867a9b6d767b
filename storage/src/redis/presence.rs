//! Presence: whether a user is online on any device, and when they were
//! last seen, read from the routes and the `seen` key in one step.
//!
//! A user is online while at least one of their routes is live; a route
//! lapses with its TTL when a node dies, so presence follows node loss
//! within one route TTL. Last seen is written when a user's last route is
//! removed (a clean logout or disconnect).

use fred::interfaces::{HashesInterface as _, KeysInterface as _};

use super::{Redis, is_key_part, routes, unavailable};
use crate::StoreError;

/// A user's presence, aggregated over their devices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    /// Devices with a live session, by id.
    pub devices: Vec<String>,
    /// When the user last went offline (ms since the Unix epoch), if known.
    pub last_seen_ms: Option<i64>,
}

impl Presence {
    /// Whether any device is online.
    pub fn online(&self) -> bool {
        !self.devices.is_empty()
    }
}

impl Redis {
    /// The presence of `user` at `now_ms`.
    pub async fn presence(&self, user: &str, now_ms: i64) -> Result<Presence, StoreError> {
        if !is_key_part(user) {
            return Err(StoreError::Invalid(format!("{user:?} is not a valid id")));
        }
        let pipeline = self.client.pipeline();
        let _: () = pipeline
            .hgetall(self.routes_key(user))
            .await
            .map_err(unavailable)?;
        let _: () = pipeline
            .get(self.seen_key(user))
            .await
            .map_err(unavailable)?;
        let (map, seen): (std::collections::HashMap<String, String>, Option<i64>) =
            pipeline.all().await.map_err(unavailable)?;
        let mut devices: Vec<String> = map
            .into_iter()
            .filter_map(|(device, value)| routes::decode(device, &value))
            .filter(|r| r.expires_ms > now_ms)
            .map(|r| r.device)
            .collect();
        devices.sort();
        Ok(Presence {
            devices,
            last_seen_ms: seen,
        })
    }
}
