//! Routes: which node holds the session of each device of a user.
//!
//! One hash per user, `{P:u:USER}:routes`, maps a device to
//! `node|session|class|expires_ms`. A node writes a route when a device logs in,
//! refreshes the routes of its live sessions well within the TTL, and
//! removes a route when its session ends. Expired entries are ignored by
//! readers and dropped by the next write; the whole hash expires when no
//! node refreshes it.
//!
//! Invariants:
//! - `set` atomically returns the route it replaced, so the caller can tell
//!   another node to end the older session of the same device.
//! - `refresh` and `remove` act only on the caller's own session: a route
//!   taken over by a newer login (on any node) is never overwritten or
//!   removed by the older session.

use fred::interfaces::LuaInterface as _;

use super::{Redis, is_key_part, unavailable};
use crate::StoreError;

/// Where a device's session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The device.
    pub device: String,
    /// The node holding the session.
    pub node: String,
    /// The session's id on that node.
    pub session: u64,
    /// The device's platform class (`mobile`, `desktop`, `web`; empty when
    /// none), for device policies across nodes.
    pub class: String,
    /// When the route lapses unless refreshed (ms since the Unix epoch).
    pub expires_ms: i64,
}

fn check(parts: &[&str]) -> Result<(), StoreError> {
    match parts.iter().find(|p| !is_key_part(p)) {
        Some(bad) => Err(StoreError::Invalid(format!("{bad:?} is not a valid id"))),
        None => Ok(()),
    }
}

/// Sets the route, drops expired entries, returns the previous live value
/// of the device ('' when none) and the live routes of the user's other
/// devices before (device, value, device, value, ...). `KEYS[1]` routes
/// hash; ARGV: device, value, now_ms, key ttl ms.
const SET: &str = r#"
local prev = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
local others = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '|(%d+)$'))
  if exp == nil or exp <= now then redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] then
    others[#others + 1] = all[i]
    others[#others + 1] = all[i + 1]
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local live = ''
if prev then
  local exp = tonumber(string.match(prev, '|(%d+)$'))
  if exp ~= nil and exp > now then live = prev end
end
return {live, others}
"#;

/// Renews the route if it is still this session's (keeping its class) or
/// absent (e.g. Redis lost it; written without a class then). `KEYS[1]`
/// routes hash; ARGV: device, `node|session|` prefix, value, now_ms, key
/// ttl ms, new expiry. Returns 1 when written.
const REFRESH: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local value = ARGV[3]
if cur then
  local exp = tonumber(string.match(cur, '|(%d+)$'))
  local mine = string.sub(cur, 1, #ARGV[2]) == ARGV[2]
  if not mine and exp ~= nil and exp > tonumber(ARGV[4]) then return 0 end
  if mine then value = string.gsub(cur, '|%d+$', '|' .. ARGV[6]) end
end
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// Removes the route if it is this session's, and records last seen when
/// no live route remains. `KEYS[1]` routes hash, `KEYS[2]` seen key; ARGV:
/// device, `node|session|` prefix, now_ms, seen ttl ms. Returns 0 when not
/// removed, 1 when removed, 2 when removed and no live route remains.
const REMOVE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or string.sub(cur, 1, #ARGV[2]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
local live = false
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '|(%d+)$'))
  if exp ~= nil and exp > now then live = true end
end
if not live then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return 2
end
return 1
"#;

/// What writing a route found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSet {
    /// The live route of the same device it replaced (a second login of
    /// the device, here or elsewhere).
    pub replaced: Option<Route>,
    /// The user had no live route before: they just came online.
    pub first: bool,
    /// The live routes of the user's other devices before this one.
    pub others: Vec<Route>,
}

/// What removing a route did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRemoval {
    /// The route belongs to another session (or is gone): left alone.
    NotMine,
    /// Removed; the user has other live routes.
    Removed,
    /// Removed, and it was the user's last live route: they went offline
    /// (last seen recorded).
    Last,
}

fn encode(node: &str, session: u64, class: &str, expires_ms: i64) -> String {
    format!("{node}|{session}|{class}|{expires_ms}")
}

fn owner(node: &str, session: u64) -> String {
    format!("{node}|{session}|")
}

/// Reads `node|session|class|expires_ms` (or the older
/// `node|session|expires_ms`, without a class).
pub(crate) fn decode(device: String, value: &str) -> Option<Route> {
    let parts: Vec<&str> = value.split('|').collect();
    let (node, session, class, expires) = match parts[..] {
        [node, session, class, expires] => (node, session, class, expires),
        [node, session, expires] => (node, session, "", expires),
        _ => return None,
    };
    Some(Route {
        device,
        node: node.to_owned(),
        session: session.parse().ok()?,
        class: class.to_owned(),
        expires_ms: expires.parse().ok()?,
    })
}

/// Route refreshes in flight at once.
const REFRESH_CHUNK: usize = 1024;

/// How long a user's last-seen time is kept after they went offline.
pub const SEEN_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

impl Redis {
    pub(crate) fn routes_key(&self, user: &str) -> String {
        self.key(&format!("u:{user}"), ":routes")
    }

    pub(crate) fn seen_key(&self, user: &str) -> String {
        self.key(&format!("u:{user}"), ":seen")
    }

    /// Records that `device` of `user` has session `session` on `node`
    /// until `now_ms + ttl_ms`. Returns the live route it replaced, if any
    /// (the same device logged in elsewhere, or again here), and whether
    /// the user had no live route at all before (decided inside one script,
    /// so of two devices logging in at once on two nodes exactly one is
    /// first).
    #[allow(clippy::too_many_arguments)]
    pub async fn set_route(
        &self,
        user: &str,
        device: &str,
        node: &str,
        session: u64,
        class: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<RouteSet, StoreError> {
        check(&[user, device, node])?;
        if !class.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(StoreError::Invalid(format!(
                "{class:?} is not a platform class"
            )));
        }
        let value = encode(node, session, class, now_ms + ttl_ms);
        let (prev, others): (String, Vec<String>) = self
            .client
            .eval(
                SET,
                vec![self.routes_key(user)],
                vec![
                    device.to_owned(),
                    value,
                    now_ms.to_string(),
                    ttl_ms.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        let replaced = (!prev.is_empty())
            .then(|| decode(device.to_owned(), &prev))
            .flatten();
        let others: Vec<Route> = others
            .chunks(2)
            .filter_map(|pair| match pair {
                [device, value] => decode(device.clone(), value),
                _ => None,
            })
            .collect();
        Ok(RouteSet {
            first: replaced.is_none() && others.is_empty(),
            replaced,
            others,
        })
    }

    /// Renews the routes of this node's live sessions (`(user, device,
    /// session)`), in one pipeline. A route another session has taken over
    /// is left alone. Returns how many were written.
    pub async fn refresh_routes(
        &self,
        node: &str,
        sessions: &[(String, String, u64)],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<usize, StoreError> {
        check(&[node])?;
        if sessions.is_empty() {
            return Ok(0);
        }
        // fred writes concurrent commands back to back on one connection
        // (scripts cannot go in a `Pipeline`); chunks bound what is in
        // flight.
        let mut written = 0;
        for chunk in sessions.chunks(REFRESH_CHUNK) {
            let calls = chunk
                .iter()
                .filter(|(user, device, _)| check(&[user, device]).is_ok())
                .map(|(user, device, session)| {
                    self.client.eval::<i64, _, _, _>(
                        REFRESH,
                        vec![self.routes_key(user)],
                        vec![
                            device.clone(),
                            owner(node, *session),
                            encode(node, *session, "", now_ms + ttl_ms),
                            now_ms.to_string(),
                            ttl_ms.to_string(),
                            (now_ms + ttl_ms).to_string(),
                        ],
                    )
                });
            for result in futures_util::future::join_all(calls).await {
                if result.map_err(unavailable)? == 1 {
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// Removes the route of `device` if it still belongs to `session` on
    /// `node`; when the user has no live route left, records `now_ms` as
    /// last seen.
    pub async fn remove_route(
        &self,
        user: &str,
        device: &str,
        node: &str,
        session: u64,
        now_ms: i64,
    ) -> Result<RouteRemoval, StoreError> {
        check(&[user, device, node])?;
        let removed: i64 = self
            .client
            .eval(
                REMOVE,
                vec![self.routes_key(user), self.seen_key(user)],
                vec![
                    device.to_owned(),
                    owner(node, session),
                    now_ms.to_string(),
                    SEEN_TTL_MS.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(match removed {
            0 => RouteRemoval::NotMine,
            1 => RouteRemoval::Removed,
            _ => RouteRemoval::Last,
        })
    }

    /// The live routes of `user`.
    pub async fn routes(&self, user: &str, now_ms: i64) -> Result<Vec<Route>, StoreError> {
        let mut all = self.routes_of(&[user], now_ms).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The live routes of each of `users` (same order), in one pipeline.
    pub async fn routes_of(
        &self,
        users: &[&str],
        now_ms: i64,
    ) -> Result<Vec<Vec<Route>>, StoreError> {
        check(users)?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for user in users {
            let _: () = pipeline
                .hgetall(self.routes_key(user))
                .await
                .map_err(unavailable)?;
        }
        let maps: Vec<std::collections::HashMap<String, String>> =
            pipeline.all().await.map_err(unavailable)?;
        Ok(maps
            .into_iter()
            .map(|map| {
                let mut routes: Vec<Route> = map
                    .into_iter()
                    .filter_map(|(device, value)| decode(device, &value))
                    .filter(|r| r.expires_ms > now_ms)
                    .collect();
                routes.sort_by(|a, b| a.device.cmp(&b.device));
                routes
            })
            .collect())
    }
}

use fred::interfaces::HashesInterface as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_values_round_trip_and_garbage_is_skipped() {
        let r = decode("phone".into(), &encode("n-1", 42, "mobile", 1_000)).expect("decodes");
        assert_eq!(
            r,
            Route {
                device: "phone".into(),
                node: "n-1".into(),
                session: 42,
                class: "mobile".into(),
                expires_ms: 1_000
            }
        );
        let old = decode("phone".into(), "n-1|42|1000").expect("the older form decodes");
        assert_eq!((old.class.as_str(), old.expires_ms), ("", 1_000));
        assert!(decode("x".into(), "n|notanumber|5").is_none());
        assert!(decode("x".into(), "garbage").is_none());
        assert!(encode("n-1", 42, "", 7).starts_with(&owner("n-1", 42)));
        assert!(!encode("n-1", 421, "web", 7).starts_with(&owner("n-1", 42)));
    }
}
