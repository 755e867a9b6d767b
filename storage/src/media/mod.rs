//! Media: blobs (a file's bytes, named by their BLAKE3 hash), the uploads
//! that are still arriving, and the references that say who may read a
//! blob.
//!
//! Two traits, so the bytes and the records can live in different places:
//! - [`MediaStore`]: the records, in the message store of the backend
//!   (embedded: the `media` keyspace; cluster: Redis). A blob's record,
//!   who uploaded it, each user's pending uploads with their committed
//!   offset, and the scopes that reference it.
//! - [`BlobBytes`]: the bytes, staged while an upload arrives and
//!   published under the blob's id once the hash checks. [`files`] keeps
//!   them as files under a directory (the embedded backend's); [`s3`] in
//!   an S3-compatible object store (a cluster's: every node sees the same
//!   bytes, staged ones included, so an upload resumes on any node).
//!
//! # Invariants
//! - A blob record exists only for bytes that were published, i.e. whose
//!   BLAKE3 hash equals the id; a blob whose hash did not check is never
//!   readable.
//! - A pending upload's `committed` offset is written only after the bytes
//!   below it are durable in [`BlobBytes::stage`]; staged bytes beyond it
//!   are cut off before the upload goes on.
//!
//! # Collection of blobs no message carries
//! Mark and sweep over recorded copies, not reference counts: after a post
//! the gateway records each stored copy that carries a blob
//! ([`MediaStore::add_copies`]: inbox and seq), and a sweep reads those
//! copies back from the message store. A copy that is gone (retention, a
//! deleted user's inbox), recalled (attachments cleared) or deleted for
//! its owner (a tombstone) no longer carries the blob; none of those paths
//! has to know about media. Every use of a blob (publication, a dedup
//! proof, a send's check) first moves its *hold* forward
//! ([`MediaStore::hold`]: now plus the grace), and a blob is collected only
//! when its hold has passed, no recorded copy carries it and nobody is
//! uploading it. [`MediaStore::begin_collect`] checks all three and marks
//! the blob as being collected in one atomic step with the hold's move, so
//! a send either holds the blob first (and the collection is refused) or
//! finds it gone (and is refused with `NOT_FOUND`). A marked blob reads as
//! absent and refuses new uploads of its bytes until
//! [`MediaStore::finish_collect`] removed its records, after its bytes.
//! The claim is a token: of several sweepers (nodes) only one collects a
//! blob; a claim older than [`COLLECT_LEASE_MS`] (its sweeper died) is
//! taken over.

use async_trait::async_trait;
use bytes::Bytes;

use crate::StoreError;

pub mod files;
pub mod s3;

/// Bytes of a blob id (a BLAKE3 hash).
pub const BLOB_ID_BYTES: usize = 32;

/// A blob's name: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; BLOB_ID_BYTES]);

impl BlobId {
    /// The id in `bytes`, when they are exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<BlobId> {
        <[u8; BLOB_ID_BYTES]>::try_from(bytes).ok().map(BlobId)
    }

    /// The id of `data`.
    pub fn of(data: &[u8]) -> BlobId {
        BlobId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, for file and object names.
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl std::fmt::Debug for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobId({})", &self.hex()[..16])
    }
}

/// What the store keeps of a published blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// The hash of the bytes.
    pub id: BlobId,
    /// Bytes.
    pub size: u64,
    /// Media type the first uploader declared.
    pub media_type: String,
    /// When it was published (ms since the Unix epoch).
    pub created_ms: i64,
    /// What the server read of an image it decoded: its pixels and the
    /// thumbnail it made (a blob of its own).
    pub image: Option<ImageInfo>,
}

/// An image the server decoded when it was uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// The thumbnail the server made of it.
    pub thumbnail: BlobId,
}

/// Bytes of an [`ImageInfo`] in [`ImageInfo::encode`].
pub const IMAGE_INFO_BYTES: usize = 8 + BLOB_ID_BYTES;

impl ImageInfo {
    /// Width and height as `u32 BE`, then the thumbnail's id.
    pub fn encode(&self) -> [u8; IMAGE_INFO_BYTES] {
        let mut v = [0u8; IMAGE_INFO_BYTES];
        v[..4].copy_from_slice(&self.width.to_be_bytes());
        v[4..8].copy_from_slice(&self.height.to_be_bytes());
        v[8..].copy_from_slice(&self.thumbnail.0);
        v
    }

    /// The info stored as `v` (exactly [`IMAGE_INFO_BYTES`]).
    pub fn decode(v: &[u8]) -> Option<ImageInfo> {
        let u32_at = |i: usize| {
            v.get(i..i + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
        };
        if v.len() != IMAGE_INFO_BYTES {
            return None;
        }
        Some(ImageInfo {
            width: u32_at(0)?,
            height: u32_at(4)?,
            thumbnail: BlobId::from_slice(&v[8..])?,
        })
    }
}

/// An upload still arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Who uploads.
    pub user: String,
    /// The declared hash.
    pub id: BlobId,
    /// The declared size.
    pub size: u64,
    /// The declared media type.
    pub media_type: String,
    /// Bytes durable so far, from the start.
    pub committed: u64,
    /// When the upload started (ms), for the expiry of abandoned uploads.
    pub started_ms: i64,
}

impl PendingUpload {
    /// The stored form (without user and id, which the key holds): size,
    /// committed and started as `u64 BE`, then the media type.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.media_type.len());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.committed.to_be_bytes());
        v.extend_from_slice(&self.started_ms.to_be_bytes());
        v.extend_from_slice(self.media_type.as_bytes());
        v
    }

    /// The pending upload of `user` and `id` stored as `v`.
    pub fn decode(user: &str, id: BlobId, v: &[u8]) -> Result<PendingUpload, StoreError> {
        let corrupt = || StoreError::Corrupt("short pending-upload record".into());
        let at = |i: usize| -> Result<u64, StoreError> {
            v.get(i..i + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(corrupt)
        };
        Ok(PendingUpload {
            user: user.to_owned(),
            id,
            size: at(0)?,
            committed: at(8)?,
            started_ms: at(16)? as i64,
            media_type: String::from_utf8(v.get(24..).ok_or_else(corrupt)?.to_vec())
                .map_err(|_| StoreError::Corrupt("media type not utf-8".into()))?,
        })
    }
}

/// Who a reference lets read a blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A user (either side of a one-to-one message that carries it).
    User(String),
    /// The current members of a group whose message carries it.
    Group(String),
}

impl Scope {
    /// The scope as stored (`u:<user>` or `g:<group>`).
    pub fn key(&self) -> String {
        match self {
            Scope::User(u) => format!("u:{u}"),
            Scope::Group(g) => format!("g:{g}"),
        }
    }

    /// The scope of a stored key.
    pub fn parse(key: &str) -> Option<Scope> {
        match key.split_once(':')? {
            ("u", u) => Some(Scope::User(u.to_owned())),
            ("g", g) => Some(Scope::Group(g.to_owned())),
            _ => None,
        }
    }
}

/// A stored message copy that carries a blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CopyRef {
    /// The inbox holding it (a user, or a read-diffusion group's log).
    pub inbox: String,
    /// Its seq there.
    pub seq: u64,
}

impl CopyRef {
    /// The stored form: `<seq> <inbox>`.
    pub fn key(&self) -> String {
        format!("{} {}", self.seq, self.inbox)
    }

    /// The copy of a stored key.
    pub fn parse(key: &str) -> Option<CopyRef> {
        let (seq, inbox) = key.split_once(' ')?;
        Some(CopyRef {
            inbox: inbox.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

/// The blobs a message carries: each attachment's blob and thumbnail blob.
pub fn carried_blobs(message: &qim_proto::v1::Message) -> Vec<BlobId> {
    let mut ids = Vec::new();
    for a in &message.attachments {
        for raw in [&a.blob_id, &a.thumbnail_blob_id] {
            if let Some(id) = BlobId::from_slice(raw)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    ids
}

/// Whether the copy `copy` still carries `id`: stored (not expired, not
/// in a deleted user's inbox), not recalled (a recall clears the
/// attachments) and not deleted for its owner (a tombstone carries none).
pub async fn carries(
    messages: &dyn crate::MessageStore,
    id: &BlobId,
    copy: &CopyRef,
) -> Result<bool, StoreError> {
    let read = messages
        .read_inbox(&copy.inbox, copy.seq.saturating_sub(1), 1)
        .await?;
    Ok(read
        .first()
        .is_some_and(|m| m.seq == copy.seq && carried_blobs(&m.message).contains(id)))
}

/// How long a collection claim stays its sweeper's before another may
/// take it over (the sweeper is taken to have died).
pub const COLLECT_LEASE_MS: i64 = 10 * 60_000;

/// What [`MediaStore::begin_collect`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// The blob is marked as being collected under the caller's claim:
    /// remove its bytes, then [`MediaStore::finish_collect`].
    Claimed,
    /// Held until this time (ms): look again then.
    Held(i64),
    /// A recorded copy or an upload of its bytes is still there.
    InUse,
    /// Another sweeper's live claim collects it.
    Busy,
    /// No such blob (its index entry is dropped).
    Gone,
}

/// The records of blobs, uploads and references.
#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// The record of a published blob.
    async fn blob(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError>;

    /// Whether `user` uploaded `id` (or proved having its bytes).
    async fn is_uploader(&self, id: &BlobId, user: &str) -> Result<bool, StoreError>;

    /// Records that `user` may reference `id` as its uploader.
    async fn add_uploader(&self, id: &BlobId, user: &str) -> Result<(), StoreError>;

    /// `user`'s pending upload of `id`.
    async fn pending(&self, user: &str, id: &BlobId) -> Result<Option<PendingUpload>, StoreError>;

    /// How many uploads `user` has pending, counting at most `limit`.
    async fn pending_count(&self, user: &str, limit: usize) -> Result<usize, StoreError>;

    /// Writes a pending upload (new, or its committed offset moved);
    /// durable when it returns. Refused as [`StoreError::Unavailable`]
    /// (retry later) while a blob with the upload's id is being collected.
    async fn put_pending(&self, upload: &PendingUpload) -> Result<(), StoreError>;

    /// Forgets `user`'s pending upload of `id`.
    async fn remove_pending(&self, user: &str, id: &BlobId) -> Result<(), StoreError>;

    /// Pending uploads started before `before_ms`, at most `limit`.
    async fn stale_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingUpload>, StoreError>;

    /// Publishes `blob` for `user`: the blob record (kept if it exists),
    /// `user` as an uploader, the hold at least `hold_until_ms`, and
    /// `user`'s pending upload gone.
    async fn complete(
        &self,
        user: &str,
        blob: &BlobMeta,
        hold_until_ms: i64,
    ) -> Result<(), StoreError>;

    /// Records that messages in `scopes` reference `id`.
    async fn add_refs(&self, id: &BlobId, scopes: &[Scope]) -> Result<(), StoreError>;

    /// Whether a message in `scope` references `id`.
    async fn has_ref(&self, id: &BlobId, scope: &Scope) -> Result<bool, StoreError>;

    /// The groups whose messages reference `id`, at most `limit`.
    async fn group_refs(&self, id: &BlobId, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Moves the hold of `id` to at least `until_ms` (and its place in the
    /// sweep's index to the hold); false when there is no such blob or it
    /// is being collected.
    async fn hold(&self, id: &BlobId, until_ms: i64) -> Result<bool, StoreError>;

    /// Records stored copies that carry `id`.
    async fn add_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError>;

    /// Recorded copies of `id`, at most `limit`.
    async fn copies(&self, id: &BlobId, limit: usize) -> Result<Vec<CopyRef>, StoreError>;

    /// Forgets recorded copies of `id` (ones found not to carry it).
    async fn remove_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError>;

    /// Blobs whose hold passed by `now_ms` in the sweep's index, oldest
    /// first, at most `limit`.
    async fn due_blobs(&self, now_ms: i64, limit: usize) -> Result<Vec<BlobId>, StoreError>;

    /// Marks `id` as being collected under `claim` when its hold passed
    /// by `now_ms`, no copy is recorded and no upload of it is pending,
    /// in one atomic step (see the module docs).
    async fn begin_collect(
        &self,
        id: &BlobId,
        now_ms: i64,
        claim: u64,
    ) -> Result<Collect, StoreError>;

    /// Removes every record of `id` (blob, uploaders, references, copies,
    /// hold) when it is still claimed by `claim`.
    async fn finish_collect(&self, id: &BlobId, claim: u64) -> Result<(), StoreError>;
}

/// Where blob bytes live: uploads being staged, and published blobs.
#[async_trait]
pub trait BlobBytes: Send + Sync + 'static {
    /// Writes `data` at `offset` of `user`'s staged upload of `id`, after
    /// cutting the staged bytes at `offset`; durable when it returns.
    async fn stage(
        &self,
        user: &str,
        id: &BlobId,
        offset: u64,
        data: Vec<Bytes>,
    ) -> Result<(), StoreError>;

    /// The staged upload's length and the BLAKE3 hash of its first
    /// `len` bytes (bytes beyond are ignored).
    async fn staged_hash(&self, user: &str, id: &BlobId, len: u64) -> Result<BlobId, StoreError>;

    /// Makes the staged upload (cut at `len`) the blob `id`; a blob that
    /// exists already stays and the staged bytes go.
    async fn publish(&self, user: &str, id: &BlobId, len: u64) -> Result<(), StoreError>;

    /// Removes a staged upload (nothing if there is none).
    async fn discard(&self, user: &str, id: &BlobId) -> Result<(), StoreError>;

    /// Up to `len` bytes of blob `id` from `offset`.
    async fn read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Bytes, StoreError>;

    /// Whether the bytes of `id` are here.
    async fn has(&self, id: &BlobId) -> Result<bool, StoreError>;

    /// Removes blob `id`'s bytes (nothing if there are none).
    async fn delete(&self, id: &BlobId) -> Result<(), StoreError>;
}
