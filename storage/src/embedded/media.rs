//! The embedded backend's [`MediaStore`].
//!
//! # Keys (keyspace `media`)
//! - `B` `[blob]` → size `u64 BE`, created `i64 BE`, media type: a blob.
//! - `U` `[blob]` `user` → empty: `user` uploaded the blob.
//! - `P` `[user]` `[blob]` → size, committed `u64 BE`, started `i64 BE`,
//!   media type: a pending upload.
//! - `R` `[blob]` `scope` → empty: a message in `scope` references it.
//! - `H` `[blob]` → hold `i64 BE`; `Q` hold `u64 BE` `[blob]` → empty:
//!   the sweep's index of holds.
//! - `C` `[blob]` seq `u64 BE` inbox → empty: a stored copy carrying it.
//! - `W` `[blob]` `user` → empty: `user` has an upload of it pending.
//! - `X` `[blob]` → claim `u64 BE`, claimed `i64 BE`: being collected.
//!
//! `[x]` is a length-prefixed part, `[blob]` the 32 bytes of the id.
//! Written directly (not through the writer thread) and synced before
//! each call returns: an upload commits once per megabyte or so, far
//! rarer than messages.

use async_trait::async_trait;

use super::EmbeddedStore;
use super::kv;
use super::tables::{check_key_part, prefixed, unavailable};
use crate::StoreError;
use crate::media::{
    BLOB_ID_BYTES, BlobId, BlobMeta, COLLECT_LEASE_MS, Collect, CopyRef, IMAGE_INFO_BYTES,
    ImageInfo, MediaStore, PendingUpload, Scope,
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

fn due_key(hold: i64, id: &BlobId) -> Vec<u8> {
    let mut k = vec![b'Q'];
    k.extend_from_slice(&(hold.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

fn copy_key(id: &BlobId, copy: &CopyRef) -> Vec<u8> {
    let mut rest = copy.seq.to_be_bytes().to_vec();
    rest.extend_from_slice(copy.inbox.as_bytes());
    key(b'C', id, &rest)
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
    fn media_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.media_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claim on `id`: token and when it was taken.
    fn claim_of(&self, id: &BlobId) -> Result<Option<(u64, i64)>, StoreError> {
        match self
            .tables
            .media
            .get(key(b'X', id, &[]))
            .map_err(unavailable)?
        {
            Some(v) => Ok(Some((be_u64(&v, 0)?, be_u64(&v, 8)? as i64))),
            None => Ok(None),
        }
    }

    fn hold_of(&self, id: &BlobId) -> Result<Option<i64>, StoreError> {
        match self
            .tables
            .media
            .get(key(b'H', id, &[]))
            .map_err(unavailable)?
        {
            Some(v) => Ok(Some(be_u64(&v, 0)? as i64)),
            None => Ok(None),
        }
    }

    /// Adds to `batch` the move of `id`'s hold to at least `until`.
    fn stage_hold(&self, batch: &mut kv::Batch, id: &BlobId, until: i64) -> Result<(), StoreError> {
        let t = &self.tables;
        let old = self.hold_of(id)?;
        if let Some(old) = old {
            batch.remove(&t.media, due_key(old, id));
        }
        let hold = old.map_or(until, |old| old.max(until));
        batch.insert(
            &t.media,
            key(b'H', id, &[]),
            (hold as u64).to_be_bytes().to_vec(),
        );
        batch.insert(&t.media, due_key(hold, id), Vec::new());
        Ok(())
    }

    fn has_prefix(&self, tag: u8, id: &BlobId) -> Result<bool, StoreError> {
        match self.tables.media.prefix(key(tag, id, &[])).next() {
            Some(guard) => guard.into_inner().map(|_| true).map_err(unavailable),
            None => Ok(false),
        }
    }

    fn media_sync(&self) -> Result<(), StoreError> {
        self.tables.db.sync().map_err(unavailable)
    }
}

#[async_trait]
impl MediaStore for EmbeddedStore {
    async fn blob(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        if self.claim_of(id)?.is_some() {
            return Ok(None);
        }
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
        let _guard = self.media_guard();
        if self.claim_of(&upload.id)?.is_some() {
            return Err(StoreError::Unavailable(
                "the blob is being removed; upload it again shortly".into(),
            ));
        }
        let t = &self.tables;
        let mut batch = t.db.batch();
        batch.insert(
            &t.media,
            pending_key(&upload.user, &upload.id),
            upload.encode(),
        );
        batch.insert(
            &t.media,
            key(b'W', &upload.id, upload.user.as_bytes()),
            Vec::new(),
        );
        batch.durable().commit().map_err(unavailable)
    }

    async fn remove_pending(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        check_key_part(user)?;
        let _guard = self.media_guard();
        let t = &self.tables;
        let mut batch = t.db.batch();
        batch.remove(&t.media, pending_key(user, id));
        batch.remove(&t.media, key(b'W', id, user.as_bytes()));
        batch.durable().commit().map_err(unavailable)
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

    async fn complete(
        &self,
        user: &str,
        blob: &BlobMeta,
        hold_until_ms: i64,
    ) -> Result<(), StoreError> {
        check_key_part(user)?;
        let _guard = self.media_guard();
        let t = &self.tables;
        let mut batch = t.db.batch();
        self.stage_hold(&mut batch, &blob.id, hold_until_ms)?;
        batch.remove(&t.media, key(b'W', &blob.id, user.as_bytes()));
        let blob_key = key(b'B', &blob.id, &[]);
        if !t.media.contains_key(&blob_key).map_err(unavailable)? {
            batch.insert(&t.media, blob_key, encode_blob(blob));
        }
        batch.insert(&t.media, key(b'U', &blob.id, user.as_bytes()), Vec::new());
        batch.remove(&t.media, pending_key(user, &blob.id));
        batch.durable().commit().map_err(unavailable)
    }

    async fn add_refs(&self, id: &BlobId, scopes: &[Scope]) -> Result<(), StoreError> {
        let t = &self.tables;
        let mut batch = t.db.batch();
        for scope in scopes {
            batch.insert(&t.media, key(b'R', id, scope.key().as_bytes()), Vec::new());
        }
        batch.durable().commit().map_err(unavailable)
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

    async fn hold(&self, id: &BlobId, until_ms: i64) -> Result<bool, StoreError> {
        let _guard = self.media_guard();
        let t = &self.tables;
        if self.claim_of(id)?.is_some()
            || !t
                .media
                .contains_key(key(b'B', id, &[]))
                .map_err(unavailable)?
        {
            return Ok(false);
        }
        let mut batch = t.db.batch();
        self.stage_hold(&mut batch, id, until_ms)?;
        batch.durable().commit().map_err(unavailable)?;
        Ok(true)
    }

    async fn add_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError> {
        let t = &self.tables;
        let mut batch = t.db.batch();
        for copy in copies {
            check_key_part(&copy.inbox)?;
            batch.insert(&t.media, copy_key(id, copy), Vec::new());
        }
        batch.durable().commit().map_err(unavailable)
    }

    async fn copies(&self, id: &BlobId, limit: usize) -> Result<Vec<CopyRef>, StoreError> {
        let prefix = key(b'C', id, &[]);
        let mut out = Vec::new();
        for guard in self.tables.media.prefix(&prefix).take(limit) {
            let (k, _) = guard.into_inner().map_err(unavailable)?;
            let rest = k.get(prefix.len()..).unwrap_or_default();
            let corrupt = || StoreError::Corrupt("bad copy key".into());
            let seq = be_u64(rest, 0).map_err(|_| corrupt())?;
            let inbox =
                std::str::from_utf8(rest.get(8..).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
            out.push(CopyRef {
                inbox: inbox.to_owned(),
                seq,
            });
        }
        Ok(out)
    }

    async fn remove_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError> {
        let t = &self.tables;
        let mut batch = t.db.batch();
        for copy in copies {
            batch.remove(&t.media, copy_key(id, copy));
        }
        batch.durable().commit().map_err(unavailable)
    }

    async fn due_blobs(&self, now_ms: i64, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        let mut out = Vec::new();
        for guard in self.tables.media.prefix([b'Q']) {
            let (k, _) = guard.into_inner().map_err(unavailable)?;
            let hold = be_u64(&k, 1)? as i64;
            if hold > now_ms || out.len() >= limit {
                break;
            }
            let id = k
                .get(9..)
                .and_then(BlobId::from_slice)
                .ok_or_else(|| StoreError::Corrupt("bad hold key".into()))?;
            out.push(id);
        }
        Ok(out)
    }

    async fn begin_collect(
        &self,
        id: &BlobId,
        now_ms: i64,
        claim: u64,
    ) -> Result<Collect, StoreError> {
        let _guard = self.media_guard();
        let t = &self.tables;
        let hold = self.hold_of(id)?;
        if !t
            .media
            .contains_key(key(b'B', id, &[]))
            .map_err(unavailable)?
        {
            let mut batch = t.db.batch();
            if let Some(hold) = hold {
                batch.remove(&t.media, due_key(hold, id));
            }
            batch.remove(&t.media, key(b'H', id, &[]));
            batch.commit().map_err(unavailable)?;
            return Ok(Collect::Gone);
        }
        match self.claim_of(id)? {
            Some((c, _)) if c == claim => return Ok(Collect::Claimed),
            Some((_, at)) if now_ms.saturating_sub(at) < COLLECT_LEASE_MS => {
                return Ok(Collect::Busy);
            }
            // A dead sweeper's claim, taken over below: nothing else
            // could use the blob since.
            Some(_) => {}
            None => {
                if let Some(hold) = hold
                    && hold > now_ms
                {
                    return Ok(Collect::Held(hold));
                }
                if self.has_prefix(b'C', id)? || self.has_prefix(b'W', id)? {
                    return Ok(Collect::InUse);
                }
            }
        }
        let mut v = claim.to_be_bytes().to_vec();
        v.extend_from_slice(&now_ms.to_be_bytes());
        let mut batch = t.db.batch();
        batch.insert(&t.media, key(b'X', id, &[]), v);
        batch.durable().commit().map_err(unavailable)?;
        Ok(Collect::Claimed)
    }

    async fn finish_collect(&self, id: &BlobId, claim: u64) -> Result<(), StoreError> {
        let _guard = self.media_guard();
        if self.claim_of(id)?.map(|(c, _)| c) != Some(claim) {
            return Ok(());
        }
        let t = &self.tables;
        let mut batch = t.db.batch();
        if let Some(hold) = self.hold_of(id)? {
            batch.remove(&t.media, due_key(hold, id));
        }
        for tag in [b'B', b'H', b'X'] {
            batch.remove(&t.media, key(tag, id, &[]));
        }
        for tag in [b'U', b'R', b'C', b'W'] {
            for guard in t.media.prefix(key(tag, id, &[])) {
                let (k, _) = guard.into_inner().map_err(unavailable)?;
                batch.remove(&t.media, k.to_vec());
            }
        }
        batch.durable().commit().map_err(unavailable)
    }
}
