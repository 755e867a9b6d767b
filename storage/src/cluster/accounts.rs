//! The cluster backend's [`AccountStore`], in Redis: a hash
//! `<prefix>{accounts}:h` (user → `"<0|1|2>:<registered_ms>"`: enabled,
//! disabled, deleted) and a sorted set `<prefix>{accounts}:z` of the ids
//! not deleted (score 0, listed by `ZRANGEBYLEX`),
//! in one hash slot so each change is one script. Like revocations, the
//! accounts live as long as Redis keeps its data: run the cluster's Redis
//! with persistence (AOF).

use async_trait::async_trait;
use fred::interfaces::{HashesInterface as _, LuaInterface as _, SortedSetsInterface as _};
use fred::types::sorted_sets::ZRange;

use super::ClusterStore;
use crate::StoreError;
use crate::accounts::{Account, AccountStore, check_user};
use crate::redis::unavailable;

/// Registers `ARGV[2..]` not in `KEYS[1]` with `ARGV[1]` (the value);
/// returns how many were new.
const REGISTER: &str = r"
local new = 0
for i = 2, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[2], 0, ARGV[i])
    new = new + 1
  end
end
return new
";

/// Sets the disabled flag of `ARGV[1]` to `ARGV[2]`; returns the value
/// afterwards, or false when not registered.
const SET_DISABLED: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
if string.sub(v, 1, 1) == '2' then return v end
local ms = string.sub(v, 3)
local nv = ARGV[2] .. ':' .. ms
redis.call('HSET', KEYS[1], ARGV[1], nv)
return nv
";

/// Marks `ARGV[1]` deleted (a tombstone in `KEYS[1]`, out of the listing
/// `KEYS[2]`); returns the value afterwards, or false when not registered.
const MARK_DELETED: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local nv = '2:' .. string.sub(v, 3)
redis.call('HSET', KEYS[1], ARGV[1], nv)
redis.call('ZREM', KEYS[2], ARGV[1])
return nv
";

fn parse(user: &str, v: &str) -> Result<Account, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("account record of {user:?}"));
    let (flag, ms) = v.split_once(':').ok_or_else(corrupt)?;
    Ok(Account {
        user: user.to_owned(),
        registered_ms: ms.parse().map_err(|_| corrupt())?,
        disabled: flag != "0",
        deleted: flag == "2",
    })
}

impl ClusterStore {
    fn account_keys(&self) -> (String, String) {
        (
            format!("{}{{accounts}}:h", self.prefix),
            format!("{}{{accounts}}:z", self.prefix),
        )
    }

    /// Whether `user`'s account is a tombstone (one `HGET`; an id never
    /// registered is not).
    pub(super) async fn is_deleted(&self, user: &str) -> Result<bool, StoreError> {
        let (h, _) = self.account_keys();
        let v: Option<String> = self.redis.hget(h, user).await.map_err(unavailable)?;
        Ok(v.is_some_and(|v| v.starts_with('2')))
    }
}

#[async_trait]
impl AccountStore for ClusterStore {
    async fn register(&self, users: &[String], now_ms: i64) -> Result<u32, StoreError> {
        for user in users {
            check_user(user)?;
        }
        if users.is_empty() {
            return Ok(0);
        }
        let (h, z) = self.account_keys();
        let mut args = Vec::with_capacity(users.len() + 1);
        args.push(format!("0:{now_ms}"));
        args.extend(users.iter().cloned());
        let new: i64 = self
            .redis
            .eval(REGISTER, vec![h, z], args)
            .await
            .map_err(unavailable)?;
        Ok(u32::try_from(new).unwrap_or(0))
    }

    async fn set_disabled(
        &self,
        user: &str,
        disabled: bool,
    ) -> Result<Option<Account>, StoreError> {
        check_user(user)?;
        let (h, _) = self.account_keys();
        let flag = if disabled { "1" } else { "0" };
        let v: Option<String> = self
            .redis
            .eval(
                SET_DISABLED,
                vec![h],
                vec![user.to_owned(), flag.to_owned()],
            )
            .await
            .map_err(unavailable)?;
        v.map(|v| parse(user, &v)).transpose()
    }

    async fn mark_deleted(&self, user: &str) -> Result<Option<Account>, StoreError> {
        check_user(user)?;
        let (h, z) = self.account_keys();
        let v: Option<String> = self
            .redis
            .eval(MARK_DELETED, vec![h, z], vec![user.to_owned()])
            .await
            .map_err(unavailable)?;
        v.map(|v| parse(user, &v)).transpose()
    }

    async fn account(&self, user: &str) -> Result<Option<Account>, StoreError> {
        check_user(user)?;
        let (h, _) = self.account_keys();
        let v: Option<String> = self.redis.hget(h, user).await.map_err(unavailable)?;
        v.map(|v| parse(user, &v)).transpose()
    }

    async fn accounts_after(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let (_, z) = self.account_keys();
        let min = if after.is_empty() {
            ZRange::from("-")
        } else {
            ZRange::from(format!("({after}"))
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.redis
            .zrangebylex(z, min, "+", Some((0, limit)))
            .await
            .map_err(unavailable)
    }
}
