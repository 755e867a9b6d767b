//! Storage for qim: the traits the gateway needs, and their backends.
//!
//! # Layout
//! - [`MessageStore`] (here): inbox append with idempotency and per-inbox
//!   sequence numbers, inbox reads, per-device cursors. Describes what the
//!   gateway needs, not a database.
//! - [`model`]: the records that cross the trait ([`NewMessage`],
//!   [`StoredMessage`], [`Appended`]).
//! - `error.rs`: [`StoreError`] (a backend failing) and [`OpError`] (an IM
//!   operation refused, or the store failing under it).
//! - [`conversations`]: [`ConversationStore`], posts with one copy per
//!   inbox, conversation lists with exact unread counts, read cursors,
//!   recall, edit and delete-for-me, with the atomicity each backend owes.
//! - [`contacts`]: [`ContactStore`], friend requests, friends, blocks.
//! - [`groups`] (`groups/`): [`GroupStore`], members, roles, mutes, the
//!   switch from write to read diffusion, and who may become a member (join
//!   policies, join requests, invitations, bans, member limits, owned
//!   groups, the group-adds setting); `plan.rs` holds the rules both
//!   backends apply.
//! - [`presence`]: [`PresenceStore`], session records for last seen and
//!   online time.
//! - [`schedule`]: [`ScheduleStore`], durable scheduled sends, fired once.
//! - [`quota`]: [`QuotaStore`], durable per-user quota counters (stored
//!   bytes per UTC day), shared by every node of a cluster.
//! - [`media`] (`media/`): [`MediaStore`](media::MediaStore), the records
//!   of blobs (a file's bytes named by their BLAKE3 hash), pending uploads
//!   with their committed offsets, and the references that say who may
//!   read a blob; [`BlobBytes`](media::BlobBytes), where the bytes are
//!   staged and published (`files.rs`: files under a directory).
//! - [`revocation`]: [`RevocationStore`], per user the time before which
//!   the user's login tokens are refused.
//! - [`accounts`]: [`AccountStore`], the users the business backend
//!   registered, enabled or disabled, listed in id order.
//! - [`notify`]: [`NotifyStore`], offline push: each device's push
//!   token (one holder per token, a per-user device quota), each user's
//!   preview settings, and claims that make a notification go out once
//!   whichever node tries.
//! - [`deletion`]: deleting a user ([`Stores::delete_user`]): the
//!   account becomes a tombstone, then groups, push tokens and
//!   [`UserPurge`] (each backend's part), idempotent and resumable.
//! - `stores.rs`: [`Stores`], every trait above as one backend instance
//!   ([`Stores::open_embedded`], [`Stores::connect_cluster`], or
//!   [`Stores::new`] from any backend value).
//! - [`embedded`] (`embedded/`): the default single-node backend, a durable
//!   database under the data directory with group commit, on fjall (the
//!   default), redb or SQLite behind one key-value layer (`kv/`). Its files
//!   are named like `cluster/`'s (`conversations.rs` with `posts.rs` and
//!   `operations.rs`, `groups.rs`, `contacts.rs`, `presence.rs`,
//!   `schedule.rs`), plus what only it has: `tables.rs` (keyspaces and
//!   keys), `writer.rs` (the writer thread every write goes through),
//!   `sweeper.rs` (history retention) and `reaper.rs` (freeing memtables).
//! - [`redis`]: cluster state in Redis through `fred` (routes, presence,
//!   node registry, per-node delivery queues).
//! - [`cluster`] (`cluster/`): [`ClusterStore`], the backend of a gateway
//!   cluster: per-inbox seq counters in Redis floored by a durable
//!   high-water mark (`seq.rs`), messages, idempotency keys and cursors in
//!   ScyllaDB/Cassandra, and its [`ConversationStore`] (`conversations.rs`,
//!   `posts.rs`, `operations.rs`: unread counts kept exact without
//!   transactions) and [`GroupStore`] (`groups.rs`: groups changed by
//!   lightweight transactions that posts are ordered with).
//! - [`cql`] (`cql/`): the CQL schema ([`cql::migrate`], run by `qim-gateway
//!   migrate`, in `schema.rs`), its partition sizing, and the prepared
//!   statements: messages in `mod.rs`, conversations and groups in `im.rs`
//!   (read in `conversations.rs` and `groups.rs`, written through the
//!   logged batches of `writes.rs`), contacts and schedules in `social.rs`;
//!   `options.rs` ([`cql::CqlOptions`]) and `codec.rs` (value conversions,
//!   errors) are what the others share.
//! - `conformance`, `conformance_im`, `conformance_groups`,
//!   `conformance_contacts`, `conformance_notify`, `conformance_media`,
//!   `conformance_media_gc`,
//!   `conformance_blobs`, `conformance_deletion` (feature `conformance`): the checks every backend
//!   must pass (the last five: the rules of groups; of friend requests,
//!   blocks and scheduled sends; of push tokens, settings and claims; of
//!   media records; of blob bytes, files or S3).
//!
//! # Public API of the cluster backend (stable)
//! - [`cluster::ClusterOptions`] / [`ClusterStore::connect`]: connect to
//!   Redis + CQL; [`ClusterStore::redis`] and [`ClusterStore::cql_session`]
//!   share the connections with routing code.
//! - [`cluster::connect_redis`]: a `fred` client configured like the
//!   store's (bounded command timeouts, endless reconnect).
//! - [`cql::CqlOptions`], [`cql::connect`], [`cql::migrate`],
//!   [`cql::connect_and_migrate`], [`cql::SCHEMA_VERSION`].
//! - [`ClusterStore::set_history_retention_ms`]: how long history stays
//!   readable (besides `retention_days`); [`Stores::connect_cluster`]
//!   connects and sets it in one call.
//! - `conformance` (feature `conformance`): checks every backend must pass,
//!   run unchanged against each one by [`conformance_tests!`].
//!
//! # Invariants every backend keeps
//! - `append` returns only after the messages are durable; an error means
//!   none of the batch may be acknowledged.
//! - Each inbox's seqs start at 1 and increase by one per new message, are
//!   never reused (also across restarts), and keep the order of a batch.
//! - `(sender, client_msg_id)` is an idempotency key: appending it again
//!   returns the original message with `duplicate = true` and stores nothing.

use async_trait::async_trait;

pub mod accounts;
pub mod cluster;
pub mod contacts;
pub mod conversations;
pub mod cql;
pub mod deletion;
pub mod embedded;
mod error;
pub mod groups;
pub mod media;
pub mod model;
pub mod notify;
pub mod presence;
pub mod quota;
pub mod redis;
pub mod revocation;
pub mod schedule;
mod stores;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod conformance_blobs;
#[cfg(feature = "conformance")]
pub mod conformance_contacts;
#[cfg(feature = "conformance")]
pub mod conformance_deletion;
#[cfg(feature = "conformance")]
pub mod conformance_groups;
#[cfg(feature = "conformance")]
pub mod conformance_im;
#[cfg(feature = "conformance")]
pub mod conformance_media;
#[cfg(feature = "conformance")]
pub mod conformance_media_gc;
#[cfg(feature = "conformance")]
pub mod conformance_notify;

pub use accounts::AccountStore;
pub use cluster::ClusterStore;
pub use contacts::ContactStore;
pub use conversations::ConversationStore;
pub use deletion::{Deleted, UserPurge};
pub use error::{OpError, Quota, StoreError};
pub use groups::GroupStore;
pub use model::{Appended, NewMessage, StoredMessage};
pub use notify::NotifyStore;
pub use presence::PresenceStore;
pub use quota::QuotaStore;
pub use revocation::RevocationStore;
pub use schedule::ScheduleStore;
pub use stores::Stores;

/// Messages, inboxes, idempotency keys and delivery cursors.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Appends a batch in order, each message to its inbox, and returns one
    /// [`Appended`] per input in the same order once all are durable.
    ///
    /// Callers batch to keep order (one batch in flight per sender stream)
    /// and to let the backend commit many messages per disk sync.
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError>;

    /// Messages of `inbox` with seq in `(after_seq, ..]`, oldest first, at
    /// most `limit`.
    async fn read_inbox(
        &self,
        inbox: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The newest seq of `inbox`, 0 when empty.
    async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError>;

    /// Up to which seq of `inbox` a seq that a read started after this
    /// call does not return is gone for good (expired, or never written)
    /// rather than possibly still being written; `head` is the inbox head
    /// read just before. The gateway tells a client that pulls such a gap
    /// to skip it at once. 0 (the default): nothing is known to be settled,
    /// clients wait before skipping.
    async fn settled_through(&self, inbox: &str, head: u64) -> Result<u64, StoreError> {
        let _ = (inbox, head);
        Ok(0)
    }

    /// Records that `device` of `inbox` has processed up to `seq`; visible
    /// to `load_cursor` when this returns.
    ///
    /// Cursors are advisory (clients send their own resume point), so they
    /// need no disk sync of their own.
    async fn save_cursor(&self, inbox: &str, device: &str, seq: u64) -> Result<(), StoreError>;

    /// The last cursor saved for `device` of `inbox`.
    async fn load_cursor(&self, inbox: &str, device: &str) -> Result<Option<u64>, StoreError>;

    /// Makes everything written so far durable (cursors included); used at
    /// shutdown.
    async fn flush(&self) -> Result<(), StoreError>;
}
