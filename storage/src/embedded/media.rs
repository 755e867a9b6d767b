//! The embedded backend's [`MediaStore`].
//!
//! # Keys (keyspace `media`)
//! - `B` `[blob]` → size `u64 BE`, created `i64 BE`, media type: a blob.
//! - `U` `[blob]` `user` → empty: `user` uploaded the blob.
//! - `P` `[user]` `[blob]` → size, committed `u64 BE`, started `i64 BE`,
//!   media type: a pending upload.
//! - `R` `[blob]` `scope` → empty: a message in `scope` references it.
//!
//! `[x]` is a length-prefixed part, `[blob]` the 32 bytes of the id.
//! Written directly (not through the writer thread) and synced before
//! each call returns: an upload commits once per megabyte or so, far
//! rarer than messages.

use async_trait::async_trait;
use fjall::PersistMode;

use super::EmbeddedStore;
use super::tables::{check_key_part, prefixed, unavailable};
use crate::StoreError;
use crate::media::{
    BLOB_ID_BYTES, BlobId, BlobMeta, IMAGE_INFO_BYTES, ImageInfo, MediaStore, PendingUpload, Scope,
};

fn key(tag: u8, id: &BlobId, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + BLOB_ID_BYTES + rest.len());
    k.push(tag);
    k.extend_from_slice(&id.0);
    k.extend_from_slice(rest);
    k
}

pub(super) fn pending_prefix(user: &str) -> Vec<u8> {
    let mut k = vec![b'P'];
    k.extend_from_slice(&prefixed(user, BLOB_ID_BYTES));
    k
}

fn pending_key(user: &str, id: &BlobId) -> Vec<u8> {
    let mut k = pending_prefix(user);
    k.extend_from_slice(&id.0);
    k
}

fn be_u64(v: &[u8], at: usize) -> Result<u64, StoreError> {
    v.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("short media record".into()))
}

fn text(v: &[u8], at: usize) -> Result<String, StoreError> {
    let bytes = v
        .get(at..)
        .ok_or_else(|| StoreError::Corrupt("short media record".into()))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Corrupt("media type not utf-8".into()))
}

/// Size and created as `u64 BE`, the media type, then for a decoded image
/// a NUL and its [`ImageInfo`] (media types hold no control characters).
fn encode_blob(b: &BlobMeta) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + b.media_type.len() + IMAGE_INFO_BYTES);
    v.extend_from_slice(&b.size.to_be_bytes());
    v.extend_from_slice(&b.created_ms.to_be_bytes());
    v.extend_from_slice(b.media_type.as_bytes());
    if let Some(image) = &b.image {
        v.push(0);
        v.extend_from_slice(&image.encode());
    }
    v
}

fn decode_blob(id: BlobId, v: &[u8]) -> Result<BlobMeta, StoreError> {
    let tail = v
        .get(16..)
        .ok_or_else(|| StoreError::Corrupt("short media record".into()))?;
    let (media_type, image) = match tail.iter().position(|&b| b == 0) {
        Some(nul) => {
            let image = ImageInfo::decode(&tail[nul + 1..])
                .ok_or_else(|| StoreError::Corrupt("bad image record".into()))?;
            (text(&tail[..nul], 0)?, Some(image))
        }
        None => (text(tail, 0)?, None),
    };
    Ok(BlobMeta {
        id,
        size: be_u64(v, 0)?,
        created_ms: be_u64(v, 8)? as i64,
        media_type,
        image,
    })
}

/// The user and blob of a pending key (`P` `[user]` `[blob]`).
fn split_pending_key(k: &[u8]) -> Result<(String, BlobId), StoreError> {
    let corrupt = || StoreError::Corrupt("bad pending-upload key".into());
    let len = usize::from(*k.get(1).ok_or_else(corrupt)?);
    let user = k.get(2..2 + len).ok_or_else(corrupt)?;
    let id = k
        .get(2 + len..)
        .and_then(BlobId::from_slice)
        .ok_or_else(corrupt)?;
    Ok((String::from_utf8(user.to_vec()).map_err(|_| corrupt())?, id))
}

impl EmbeddedStore {
    fn media_sync(&self) -> Result<(), StoreError> {
        self.tables
            .db
            .persist(PersistMode::SyncAll)
            .map_err(unavailable)
    }
}

#[async_trait]
impl MediaStore for EmbeddedStore {
    async fn blob(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        match self
            .tables
            .media
            .get(key(b'B', id, &[]))
            .map_err(unavailable)?
        {
            Some(v) => Ok(Some(decode_blob(*id, &v)?)),
            None => Ok(None),
        }
    }

    async fn is_uploader(&self, id: &BlobId, user: &str) -> Result<bool, StoreError> {
        self.tables
            .media
            .contains_key(key(b'U', id, user.as_bytes()))
            .map_err(unavailable)
    }

    async fn add_uploader(&self, id: &BlobId, user: &str) -> Result<(), StoreError> {
        check_key_part(user)?;
        self.tables
            .media
            .insert(key(b'U', id, user.as_bytes()), Vec::new())
            .map_err(unavailable)?;
        self.media_sync()
    }

    async fn pending(&self, user: &str, id: &BlobId) -> Result<Option<PendingUpload>, StoreError> {
        check_key_part(user)?;
        match self
            .tables
            .media
            .get(pending_key(user, id))
            .map_err(unavailable)?
        {
            Some(v) => Ok(Some(PendingUpload::decode(user, *id, &v)?)),
            None => Ok(None),
        }
    }

    async fn pending_count(&self, user: &str, limit: usize) -> Result<usize, StoreError> {
        check_key_part(user)?;
        let mut n = 0;
        for guard in self.tables.media.prefix(pending_prefix(user)).take(limit) {
            guard.into_inner().map_err(unavailable)?;
            n += 1;
        }
        Ok(n)
    }

    async fn put_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        check_key_part(&upload.user)?;
        self.tables
            .media
            .insert(pending_key(&upload.user, &upload.id), upload.encode())
            .map_err(unavailable)?;
        self.media_sync()
    }

    async fn remove_pending(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        check_key_part(user)?;
        self.tables
            .media
            .remove(pending_key(user, id))
            .map_err(unavailable)?;
        self.media_sync()
    }

    async fn stale_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingUpload>, StoreError> {
        let mut out = Vec::new();
        for guard in self.tables.media.prefix([b'P']) {
            let (k, v) = guard.into_inner().map_err(unavailable)?;
            let (user, id) = split_pending_key(&k)?;
            let pending = PendingUpload::decode(&user, id, &v)?;
            if pending.started_ms < before_ms {
                out.push(pending);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn complete(&self, user: &str, blob: &BlobMeta) -> Result<(), StoreError> {
        check_key_part(user)?;
        let t = &self.tables;
        let mut batch = t.db.batch();
        let blob_key = key(b'B', &blob.id, &[]);
        if !t.media.contains_key(&blob_key).map_err(unavailable)? {
            batch.insert(&t.media, blob_key, encode_blob(blob));
        }
        batch.insert(&t.media, key(b'U', &blob.id, user.as_bytes()), Vec::new());
        batch.remove(&t.media, pending_key(user, &blob.id));
        batch
            .durability(Some(PersistMode::SyncAll))
            .commit()
            .map_err(unavailable)
    }

    async fn add_refs(&self, id: &BlobId, scopes: &[Scope]) -> Result<(), StoreError> {
        let t = &self.tables;
        let mut batch = t.db.batch();
        for scope in scopes {
            batch.insert(&t.media, key(b'R', id, scope.key().as_bytes()), Vec::new());
        }
        batch
            .durability(Some(PersistMode::SyncAll))
            .commit()
            .map_err(unavailable)
    }

    async fn has_ref(&self, id: &BlobId, scope: &Scope) -> Result<bool, StoreError> {
        self.tables
            .media
            .contains_key(key(b'R', id, scope.key().as_bytes()))
            .map_err(unavailable)
    }

    async fn group_refs(&self, id: &BlobId, limit: usize) -> Result<Vec<String>, StoreError> {
        let prefix = key(b'R', id, b"g:");
        let mut out = Vec::new();
        for guard in self.tables.media.prefix(&prefix).take(limit) {
            let (k, _) = guard.into_inner().map_err(unavailable)?;
            let group = k
                .get(prefix.len()..)
                .and_then(|g| std::str::from_utf8(g).ok())
                .ok_or_else(|| StoreError::Corrupt("bad reference key".into()))?;
            out.push(group.to_owned());
        }
        Ok(out)
    }
}
