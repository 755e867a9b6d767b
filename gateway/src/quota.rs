//! Per-user quotas on what sends cost: inbox copies per second (a token
//! bucket per user, weighted by fan-out) and stored bytes per UTC day (a
//! durable counter in the store), and the refusal of writes while the
//! embedded store's disk is nearly full.
//!
//! A send costs the inbox copies it makes: one per addressee's inbox for a
//! one-to-one message (two with `im.sync_sent`), one per member for a
//! write-diffusion group, one for a read-diffusion group's log. Its stored
//! bytes are its body's size times its copies.
//!
//! # What holds where
//! - The copies bucket is per user on one node: every session of the user
//!   on this node draws from it. A user logged in on `n` nodes at once may
//!   send up to `n` times the rate (sessions of one user normally share a
//!   node: the route endpoint's consistent hash places them together).
//! - Stored bytes are counted in the store, once for every node (embedded:
//!   a table; cluster: a Redis counter per user and day).
//! - Buckets of users that stopped sending are forgotten once full, so the
//!   map stays bounded by the users that sent within the last burst.
//!
//! # Invariants
//! - A send refused here stores nothing and charges nothing more than the
//!   check that refused it (a rate refusal takes no tokens; a bytes refusal
//!   adds no bytes).
//! - Refusals are typed: `RATE_LIMITED` with `retry_after_ms` (retryable),
//!   `QUOTA_EXCEEDED` (not retryable), `STORE_FULL` (retryable), each
//!   counted in `qim_quota_refusals_total{quota}` or
//!   `qim_send_refusals_total{code}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use qim_proto::v1::ErrorCode;
use qim_storage::QuotaStore;
use qim_storage::embedded::DiskSpace;
use qim_storage::quota::{Charged, utc_day};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Quotas as Limits;
use crate::limit::Bucket;
use crate::metrics::Metrics;
use crate::mutex::lock;
use crate::reply::Refusal;

/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 100_000;

/// How often the disk is looked at when nobody writes.
const DISK_WATCH: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a client is told to wait while the disk is nearly full.
const STORE_FULL_RETRY_MS: u32 = 1_000;

/// The quota names, as in the config and in `qim_quota_refusals_total`.
pub(crate) const SENDS_PER_SECOND: &str = "sends_per_second";
pub(crate) const STORED_BYTES_PER_DAY: &str = "stored_bytes_per_day";

/// What a send costs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cost {
    /// Inbox copies it makes.
    pub(crate) copies: u32,
    /// Its body's size in bytes.
    pub(crate) body_bytes: u64,
}

impl Cost {
    fn stored_bytes(self) -> u64 {
        self.body_bytes.saturating_mul(u64::from(self.copies))
    }
}

/// The quotas of this node's users.
pub(crate) struct Quotas {
    limits: Limits,
    store: Arc<dyn QuotaStore>,
    disk: Option<Arc<DiskSpace>>,
    metrics: Arc<Metrics>,
    /// Copies per second, per user.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Quotas {
    /// The quotas of `limits`; the disk's floor is set to `min_free_bytes`.
    pub(crate) fn new(
        limits: Limits,
        min_free_bytes: u64,
        store: Arc<dyn QuotaStore>,
        disk: Option<Arc<DiskSpace>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        if let Some(disk) = &disk {
            disk.set_min_free_bytes(min_free_bytes);
        }
        metrics.store_free_bytes.set(-1);
        Self {
            limits,
            store,
            disk,
            metrics,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `STORE_FULL` while the embedded store's disk is nearly full.
    pub(crate) fn check_disk(&self) -> Result<(), Refusal> {
        match &self.disk {
            Some(disk) if disk.is_full() => Err(Refusal::new(
                ErrorCode::StoreFull,
                "the server's disk is nearly full; retry later",
            )
            .retry_after(STORE_FULL_RETRY_MS)),
            _ => Ok(()),
        }
    }

    /// Looks at the disk every [`DISK_WATCH`] (so the free space and the
    /// refusal state are current also when nobody writes), into the
    /// metrics, until `draining` turns true.
    pub(crate) async fn watch_disk(&self, mut draining: watch::Receiver<bool>) {
        let Some(disk) = &self.disk else { return };
        loop {
            let free = disk.refresh();
            self.metrics
                .store_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
            self.metrics.store_full.set(i64::from(disk.is_full()));
            tokio::select! {
                () = tokio::time::sleep(DISK_WATCH) => {}
                _ = draining.wait_for(|d| *d) => return,
            }
        }
    }

    /// Admits a send of `user` that costs `cost`: the disk, the copies
    /// bucket, then the day's stored bytes.
    pub(crate) async fn admit_send(&self, user: &str, cost: Cost) -> Result<(), Refusal> {
        self.check_disk()?;
        let now = Instant::now();
        let waited = self.with_bucket(user, now, |b| b.try_take(cost.copies, now));
        if let Err(wait) = waited {
            self.metrics.quota_refused(SENDS_PER_SECOND);
            let ms = u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX);
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "quotas.copies_per_second: sending too fast for this fan-out",
            )
            .retry_after(ms));
        }
        self.charge_bytes(user, cost).await?;
        self.metrics.send_copies.inc_by(u64::from(cost.copies));
        Ok(())
    }

    /// Charges a scheduled send as it fires: its copies are taken from the
    /// bucket even when they are not there (the debt holds back the user's
    /// next sends; a due message is not postponed), its bytes as for any
    /// send (refused past the day's limit).
    pub(crate) async fn charge_fired(&self, user: &str, cost: Cost) -> Result<(), Refusal> {
        let now = Instant::now();
        self.with_bucket(user, now, |b| b.charge(cost.copies, now));
        self.charge_bytes(user, cost).await?;
        self.metrics.send_copies.inc_by(u64::from(cost.copies));
        Ok(())
    }

    async fn charge_bytes(&self, user: &str, cost: Cost) -> Result<(), Refusal> {
        let bytes = cost.stored_bytes();
        if bytes == 0 {
            return Ok(());
        }
        let day = utc_day(qim_proto::now_ms());
        let limit = self.limits.stored_bytes_per_day;
        match self
            .store
            .charge_stored_bytes(user, day, bytes, limit)
            .await?
        {
            Charged::Taken { .. } => {
                self.metrics.stored_bytes.inc_by(bytes);
                Ok(())
            }
            Charged::Refused { .. } => {
                self.metrics.quota_refused(STORED_BYTES_PER_DAY);
                Err(Refusal::new(
                    ErrorCode::QuotaExceeded,
                    "quotas.stored_bytes_per_day is used up for today (UTC)",
                ))
            }
        }
    }

    /// The send rate's limit (copies per second) and the copies `user`
    /// has used of the burst now.
    pub(crate) fn copies_used(&self, user: &str) -> (u64, u64) {
        let now = Instant::now();
        let used = lock(&self.buckets).get(user).map_or(0, |b| b.used(now));
        (u64::from(self.limits.copies_per_second), used)
    }

    /// The day's stored bytes of `user` and its limit.
    pub(crate) async fn stored_bytes(&self, user: &str) -> Result<(u64, u64), Refusal> {
        let day = utc_day(qim_proto::now_ms());
        let used = self.store.stored_bytes(user, day).await?;
        Ok((self.limits.stored_bytes_per_day, used))
    }

    fn with_bucket<T>(&self, user: &str, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(user) {
            buckets.retain(|_, b| b.used(now) > 0);
        }
        let bucket = buckets.entry(user.to_owned()).or_insert_with(|| {
            Bucket::new(self.limits.copies_per_second, self.limits.copies_burst, now)
        });
        f(bucket)
    }
}
