//! The cluster backend's [`MediaStore`], in Redis (every node reads and
//! writes the same records; the bytes are in the object store).
//!
//! # Keys
//! - `<prefix>media:b:{<blob>}`: hash `size`, `created`, `type`, and
//!   `image` (hex of `ImageInfo::encode`) for a decoded image: a blob.
//! - `<prefix>media:u:{<blob>}`: set of users who uploaded it.
//! - `<prefix>media:r:{<blob>}`: set of scopes (`u:<user>`, `g:<group>`)
//!   whose messages reference it.
//! - `<prefix>media:p:{<user>}`: hash `<blob hex>` → pending upload
//!   (size, committed, started as `u64 BE`, then the media type).
//! - `<prefix>media:pending`: sorted set of `<user> <blob hex>` by start
//!   time, for the expiry of abandoned uploads.
//! - The blob hash's `hold` (ms) and, while it is being collected,
//!   `claim` (`<token> <ms>`); `<prefix>media:c:{<blob>}`: set of the
//!   copies carrying it (`<seq> <inbox>`); `<prefix>media:w:{<blob>}`: set
//!   of users with an upload of it pending; `<prefix>media:due`: sorted set
//!   of blob hex by hold, the sweep's index. The checks of a hold, a claim
//!   and an upload's start are Lua scripts on the blob's slot; the index
//!   is only a hint (a blob found held is put back at its hold).
//!
//! A blob's keys share its hash tag, a user's pending uploads theirs, so
//! each call is one slot's work on a Redis Cluster. Like revocations,
//! these records live as long as Redis keeps its data: run the cluster's
//! Redis with persistence (AOF).

use async_trait::async_trait;
use bytes::Bytes;
use fred::interfaces::{
    HashesInterface as _, KeysInterface as _, LuaInterface as _, SetsInterface as _,
    SortedSetsInterface as _,
};
use fred::types::Value;
use fred::types::sorted_sets::Ordering;

use super::ClusterStore;
use crate::StoreError;
use crate::media::{
    BlobId, BlobMeta, COLLECT_LEASE_MS, Collect, CopyRef, ImageInfo, MediaStore, PendingUpload,
    Scope,
};
use crate::redis::unavailable;

/// KEYS blob hash; ARGV until. Moves the hold up; -1 for no blob or one
/// being collected, else the hold.
const HOLD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'claim') == 1 then
  return -1
end
local h = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
local u = tonumber(ARGV[1])
if u > h then
  redis.call('HSET', KEYS[1], 'hold', ARGV[1])
  h = u
end
return h
"#;

/// KEYS blob hash, uploading set; ARGV user. 0 while the blob is being
/// collected, else 1 with the user added.
const UPLOADING: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'claim') == 1 then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS blob hash, copies, uploading; ARGV now, claim, lease. Replies
/// {0} gone, {1} claimed, {2, hold} held, {3} in use, {4} busy.
const BEGIN: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0}
end
local now = tonumber(ARGV[1])
local c = redis.call('HGET', KEYS[1], 'claim')
if c then
  local token, at = string.match(c, '^(%S+) (%S+)$')
  if token == ARGV[2] then
    return {1}
  end
  if now - tonumber(at) < tonumber(ARGV[3]) then
    return {4}
  end
else
  local h = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
  if h > now then
    return {2, h}
  end
  if redis.call('SCARD', KEYS[2]) > 0 or redis.call('SCARD', KEYS[3]) > 0 then
    return {3}
  end
end
redis.call('HSET', KEYS[1], 'claim', ARGV[2] .. ' ' .. ARGV[1])
return {1}
"#;

/// KEYS blob hash, uploaders, references, copies, uploading; ARGV claim.
/// Deletes them all when the claim is still the caller's.
const FINISH: &str = r#"
local c = redis.call('HGET', KEYS[1], 'claim')
if c and string.match(c, '^(%S+) ') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  return 1
end
return 0
"#;

fn parse_id(hex: &str) -> Option<BlobId> {
    blake3::Hash::from_hex(hex)
        .ok()
        .map(|h| BlobId(*h.as_bytes()))
}

fn check_user(user: &str) -> Result<(), StoreError> {
    if qim_proto::ids::is_valid_id(user) {
        Ok(())
    } else {
        Err(StoreError::Invalid("bad user id".into()))
    }
}

impl ClusterStore {
    fn media_key(&self, kind: &str, id: &BlobId) -> String {
        format!("{}media:{kind}:{{{}}}", self.prefix, id.hex())
    }

    pub(super) fn pending_key(&self, user: &str) -> String {
        format!("{}media:p:{{{user}}}", self.prefix)
    }

    fn due_index(&self) -> String {
        format!("{}media:due", self.prefix)
    }

    /// Puts `id` in the sweep's index at `hold`.
    async fn index_due(&self, id: &BlobId, hold: i64) -> Result<(), StoreError> {
        let () = self
            .redis
            .zadd(
                self.due_index(),
                None,
                None::<Ordering>,
                false,
                false,
                (hold as f64, id.hex()),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Takes `id` out of the sweep's index once it has no record.
    async fn unindex(&self, id: &BlobId) -> Result<(), StoreError> {
        let () = self
            .redis
            .zrem(self.due_index(), id.hex())
            .await
            .map_err(unavailable)?;
        // Published again meanwhile (its hold may have indexed it before
        // the removal above): index it back.
        let back: bool = self
            .redis
            .exists(self.media_key("b", id))
            .await
            .map_err(unavailable)?;
        if back {
            self.hold(id, 0).await?;
        }
        Ok(())
    }

    pub(super) fn pending_index(&self) -> String {
        format!("{}media:pending", self.prefix)
    }
}

/// An image's record as the `image` field of a blob hash: hex of
/// [`ImageInfo::encode`].
fn encode_image(image: &ImageInfo) -> String {
    image.encode().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_image(hex: &str) -> Result<ImageInfo, StoreError> {
    let corrupt = || StoreError::Corrupt("bad image field of a blob record".into());
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(corrupt)?;
    ImageInfo::decode(&bytes).ok_or_else(corrupt)
}

#[async_trait]
impl MediaStore for ClusterStore {
    async fn blob(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        let fields: std::collections::HashMap<String, String> = self
            .redis
            .hgetall(self.media_key("b", id))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() || fields.contains_key("claim") {
            return Ok(None);
        }
        let num = |name: &str| -> Result<i64, StoreError> {
            fields
                .get(name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("blob record without {name}")))
        };
        Ok(Some(BlobMeta {
            id: *id,
            size: u64::try_from(num("size")?).unwrap_or(0),
            created_ms: num("created")?,
            media_type: fields.get("type").cloned().unwrap_or_default(),
            image: match fields.get("image") {
                None => None,
                Some(hex) => Some(decode_image(hex)?),
            },
        }))
    }

    async fn is_uploader(&self, id: &BlobId, user: &str) -> Result<bool, StoreError> {
        self.redis
            .sismember(self.media_key("u", id), user)
            .await
            .map_err(unavailable)
    }

    async fn add_uploader(&self, id: &BlobId, user: &str) -> Result<(), StoreError> {
        check_user(user)?;
        let () = self
            .redis
            .sadd(self.media_key("u", id), user)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn pending(&self, user: &str, id: &BlobId) -> Result<Option<PendingUpload>, StoreError> {
        check_user(user)?;
        let v: Option<Bytes> = self
            .redis
            .hget(self.pending_key(user), id.hex())
            .await
            .map_err(unavailable)?;
        v.map(|v| PendingUpload::decode(user, *id, &v)).transpose()
    }

    async fn pending_count(&self, user: &str, _limit: usize) -> Result<usize, StoreError> {
        check_user(user)?;
        let n: u64 = self
            .redis
            .hlen(self.pending_key(user))
            .await
            .map_err(unavailable)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn put_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        check_user(&upload.user)?;
        let admitted: i64 = self
            .redis
            .eval(
                UPLOADING,
                vec![
                    self.media_key("b", &upload.id),
                    self.media_key("w", &upload.id),
                ],
                vec![upload.user.clone()],
            )
            .await
            .map_err(unavailable)?;
        if admitted == 0 {
            return Err(StoreError::Unavailable(
                "the blob is being removed; upload it again shortly".into(),
            ));
        }
        let () = self
            .redis
            .hset(
                self.pending_key(&upload.user),
                (upload.id.hex(), Bytes::from(upload.encode())),
            )
            .await
            .map_err(unavailable)?;
        let member = format!("{} {}", upload.user, upload.id.hex());
        let () = self
            .redis
            .zadd(
                self.pending_index(),
                None,
                None::<Ordering>,
                false,
                false,
                (upload.started_ms as f64, member),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn remove_pending(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        check_user(user)?;
        // The blob's uploading mark first: a failure after it leaves the
        // pending record, which the expiry removes again.
        let () = self
            .redis
            .srem(self.media_key("w", id), user)
            .await
            .map_err(unavailable)?;
        let () = self
            .redis
            .hdel(self.pending_key(user), id.hex())
            .await
            .map_err(unavailable)?;
        let () = self
            .redis
            .zrem(self.pending_index(), format!("{user} {}", id.hex()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn stale_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingUpload>, StoreError> {
        let members: Vec<String> = self
            .redis
            .zrangebyscore(
                self.pending_index(),
                f64::MIN,
                (before_ms as f64) - 0.5,
                false,
                Some((0, i64::try_from(limit).unwrap_or(i64::MAX))),
            )
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(members.len());
        for member in members {
            let Some((user, hex)) = member.split_once(' ') else {
                continue;
            };
            let Some(id) = parse_id(hex) else { continue };
            match self.pending(user, &id).await? {
                Some(p) => out.push(p),
                // Its record went (completed or removed) after the index
                // was read, or the index outlived it: drop the index entry.
                None => {
                    let () = self
                        .redis
                        .zrem(self.pending_index(), member.as_str())
                        .await
                        .map_err(unavailable)?;
                }
            }
        }
        Ok(out)
    }

    async fn complete(
        &self,
        user: &str,
        blob: &BlobMeta,
        hold_until_ms: i64,
    ) -> Result<(), StoreError> {
        check_user(user)?;
        let key = self.media_key("b", &blob.id);
        let _: Value = self
            .redis
            .hsetnx(&key, "size", blob.size.to_string())
            .await
            .map_err(unavailable)?;
        let _: Value = self
            .redis
            .hsetnx(&key, "created", blob.created_ms.to_string())
            .await
            .map_err(unavailable)?;
        let _: Value = self
            .redis
            .hsetnx(&key, "type", blob.media_type.as_str())
            .await
            .map_err(unavailable)?;
        if let Some(image) = &blob.image {
            let _: Value = self
                .redis
                .hsetnx(&key, "image", encode_image(image))
                .await
                .map_err(unavailable)?;
        }
        // Held before the upload's mark goes, so no sweep finds it free
        // in between.
        self.hold(&blob.id, hold_until_ms).await?;
        self.add_uploader(&blob.id, user).await?;
        self.remove_pending(user, &blob.id).await
    }

    async fn add_refs(&self, id: &BlobId, scopes: &[Scope]) -> Result<(), StoreError> {
        if scopes.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = scopes.iter().map(Scope::key).collect();
        let () = self
            .redis
            .sadd(self.media_key("r", id), keys)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn has_ref(&self, id: &BlobId, scope: &Scope) -> Result<bool, StoreError> {
        self.redis
            .sismember(self.media_key("r", id), scope.key())
            .await
            .map_err(unavailable)
    }

    async fn group_refs(&self, id: &BlobId, limit: usize) -> Result<Vec<String>, StoreError> {
        let scopes: Vec<String> = self
            .redis
            .smembers(self.media_key("r", id))
            .await
            .map_err(unavailable)?;
        Ok(scopes
            .iter()
            .filter_map(|s| match Scope::parse(s) {
                Some(Scope::Group(g)) => Some(g),
                _ => None,
            })
            .take(limit)
            .collect())
    }

    async fn hold(&self, id: &BlobId, until_ms: i64) -> Result<bool, StoreError> {
        let hold: i64 = self
            .redis
            .eval(
                HOLD,
                vec![self.media_key("b", id)],
                vec![until_ms.to_string()],
            )
            .await
            .map_err(unavailable)?;
        if hold < 0 {
            return Ok(false);
        }
        self.index_due(id, hold).await?;
        Ok(true)
    }

    async fn add_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError> {
        if copies.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = copies.iter().map(CopyRef::key).collect();
        let () = self
            .redis
            .sadd(self.media_key("c", id), keys)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn copies(&self, id: &BlobId, limit: usize) -> Result<Vec<CopyRef>, StoreError> {
        let keys: Vec<String> = self
            .redis
            .srandmember(self.media_key("c", id), Some(limit.max(1)))
            .await
            .map_err(unavailable)?;
        Ok(keys.iter().filter_map(|k| CopyRef::parse(k)).collect())
    }

    async fn remove_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError> {
        if copies.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = copies.iter().map(CopyRef::key).collect();
        let () = self
            .redis
            .srem(self.media_key("c", id), keys)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn due_blobs(&self, now_ms: i64, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        let members: Vec<String> = self
            .redis
            .zrangebyscore(
                self.due_index(),
                f64::MIN,
                now_ms as f64,
                false,
                Some((0, i64::try_from(limit).unwrap_or(i64::MAX))),
            )
            .await
            .map_err(unavailable)?;
        Ok(members.iter().filter_map(|m| parse_id(m)).collect())
    }

    async fn begin_collect(
        &self,
        id: &BlobId,
        now_ms: i64,
        claim: u64,
    ) -> Result<Collect, StoreError> {
        let reply: Vec<i64> = self
            .redis
            .eval(
                BEGIN,
                vec![
                    self.media_key("b", id),
                    self.media_key("c", id),
                    self.media_key("w", id),
                ],
                vec![
                    now_ms.to_string(),
                    claim.to_string(),
                    COLLECT_LEASE_MS.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(match reply.as_slice() {
            [0] => {
                self.unindex(id).await?;
                Collect::Gone
            }
            [1] => Collect::Claimed,
            [2, hold] => Collect::Held(*hold),
            [3] => Collect::InUse,
            [4] => Collect::Busy,
            _ => {
                return Err(StoreError::Corrupt(
                    "bad reply of the collect script".into(),
                ));
            }
        })
    }

    async fn finish_collect(&self, id: &BlobId, claim: u64) -> Result<(), StoreError> {
        let _: i64 = self
            .redis
            .eval(
                FINISH,
                vec![
                    self.media_key("b", id),
                    self.media_key("u", id),
                    self.media_key("r", id),
                    self.media_key("c", id),
                    self.media_key("w", id),
                ],
                vec![claim.to_string()],
            )
            .await
            .map_err(unavailable)?;
        self.unindex(id).await
    }
}
