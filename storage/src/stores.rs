//! [`Stores`]: every store trait of one backend instance, in one value, so
//! a caller picks the backend once and needs no concrete store type after.

use std::path::Path;
use std::sync::Arc;

use crate::cluster::{ClusterOptions, ClusterStore};
use crate::deletion::UserPurge;
use crate::embedded::{DiskSpace, EmbeddedStore};
use crate::media::files::FileBlobs;
use crate::media::{BlobBytes, MediaStore};
use crate::{
    AccountStore, ContactStore, ConversationStore, GroupStore, MessageStore, NotifyStore,
    PresenceStore, QuotaStore, RevocationStore, ScheduleStore, StoreError,
};

/// The stores of one backend instance (each field is the same backend,
/// seen through one trait).
#[derive(Clone)]
pub struct Stores {
    /// Inboxes, idempotency keys and delivery cursors.
    pub messages: Arc<dyn MessageStore>,
    /// Posts, conversation lists, read state and message operations.
    pub conversations: Arc<dyn ConversationStore>,
    /// Groups, members and roles.
    pub groups: Arc<dyn GroupStore>,
    /// Friends, requests and blocks.
    pub contacts: Arc<dyn ContactStore>,
    /// Scheduled sends.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Session records (last seen, online time).
    pub presence: Arc<dyn PresenceStore>,
    /// Quota counters (stored bytes per day).
    pub quotas: Arc<dyn QuotaStore>,
    /// The free space under an embedded store, below whose floor it
    /// refuses writes; `None` for a backend without a local disk.
    pub disk: Option<Arc<DiskSpace>>,
    /// Revocations of users' login tokens.
    pub revocations: Arc<dyn RevocationStore>,
    /// Registered users (enabled or disabled).
    pub accounts: Arc<dyn AccountStore>,
    /// Push tokens, preview settings and push claims.
    pub notify: Arc<dyn NotifyStore>,
    /// Blob records, pending uploads and references.
    pub media: Arc<dyn MediaStore>,
    /// Where blob bytes live; `None` when none was configured (uploads
    /// and downloads are then refused as unsupported).
    pub blobs: Option<Arc<dyn BlobBytes>>,
    /// The backend's part of deleting a user (see [`Stores::delete_user`]).
    pub purge: Arc<dyn UserPurge>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// Every store of `backend`, one value implementing all the traits.
    pub fn new<B>(backend: Arc<B>) -> Self
    where
        B: MessageStore
            + ConversationStore
            + GroupStore
            + ContactStore
            + ScheduleStore
            + PresenceStore
            + QuotaStore
            + RevocationStore
            + AccountStore
            + NotifyStore
            + MediaStore
            + UserPurge,
    {
        Self {
            messages: backend.clone(),
            conversations: backend.clone(),
            groups: backend.clone(),
            contacts: backend.clone(),
            schedules: backend.clone(),
            presence: backend.clone(),
            quotas: backend.clone(),
            disk: None,
            revocations: backend.clone(),
            accounts: backend.clone(),
            notify: backend.clone(),
            purge: backend.clone(),
            media: backend,
            blobs: None,
        }
    }

    /// The same stores with blob bytes in `blobs`.
    pub fn with_blobs(self, blobs: Arc<dyn BlobBytes>) -> Self {
        Self {
            blobs: Some(blobs),
            ..self
        }
    }

    /// The embedded store in `dir` ([`EmbeddedStore::open`]), with blob
    /// files under `dir/media` ([`FileBlobs`]), keeping
    /// history readable for `history_retention_ms` (0: forever; see
    /// [`EmbeddedStore::set_history_retention_ms`]).
    pub fn open_embedded(dir: &Path, history_retention_ms: u64) -> Result<Self, StoreError> {
        let options = crate::embedded::StoreOptions {
            engine: crate::embedded::Engine::found_in(dir).unwrap_or_default(),
            ..Default::default()
        };
        Self::open_embedded_on(dir, &options, history_retention_ms)
    }

    /// [`Stores::open_embedded`] opened as `options` say
    /// ([`EmbeddedStore::open_with_options`]).
    pub fn open_embedded_on(
        dir: &Path,
        options: &crate::embedded::StoreOptions,
        history_retention_ms: u64,
    ) -> Result<Self, StoreError> {
        let store = Arc::new(EmbeddedStore::open_with_options(dir, options)?);
        store.set_history_retention_ms(history_retention_ms);
        let disk = store.disk();
        let blobs = Arc::new(FileBlobs::open(&dir.join("media"))?);
        Ok(Self {
            disk: Some(disk),
            ..Self::new(store)
        }
        .with_blobs(blobs))
    }

    /// The cluster store ([`ClusterStore::connect`]), keeping history
    /// readable for `history_retention_ms` (0: as long as the CQL
    /// retention keeps it; see [`ClusterStore::set_history_retention_ms`]).
    pub async fn connect_cluster(
        options: &ClusterOptions,
        history_retention_ms: u64,
    ) -> Result<Self, StoreError> {
        let store = Arc::new(ClusterStore::connect(options).await?);
        store.set_history_retention_ms(history_retention_ms);
        Ok(Self::new(store))
    }
}
