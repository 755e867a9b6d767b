//! [`ClusterStore`]: the [`MessageStore`] of a gateway cluster. Sequence
//! counters in Redis (through `fred`), everything durable in ScyllaDB or
//! Cassandra (through `scylla`, see [`crate::cql`]).
//!
//! # Append, step by step
//! For a batch (in order):
//! 1. Duplicates inside the batch are answered from their first copy.
//! 2. Each `(sender, client_msg_id)` is looked up in `idempotency`
//!    (`LOCAL_QUORUM`). A hit is a resend: its stored message is returned
//!    with `duplicate = true`. If the claim exists but the message row does
//!    not (the first attempt failed between claim and write), the resend
//!    stores the message with the claimed id: at the claimed seq within
//!    [`FILL_WINDOW_MIN`] of the claim (the gap is filled), else at a new
//!    seq, moving the claim with an LWT (clients may have skipped the old
//!    seq by then).
//! 3. The new messages of each inbox get consecutive seqs in batch order
//!    from `seq.rs` (Redis counter floored by the CQL high-water mark).
//! 4. Each message claims its key with an LWT (`INSERT ... IF NOT EXISTS`
//!    at `LOCAL_SERIAL`): of two nodes storing the same resend at once,
//!    exactly one wins; the loser answers with the winner's message (and
//!    leaves its own seq unused).
//! 5. The message rows are written at `LOCAL_QUORUM`; `append` returns only
//!    when every row of the batch is written, so an acknowledged message is
//!    durable on a quorum of replicas. Any error fails the whole call
//!    (retryable [`StoreError::Unavailable`]); nothing of it may be acked.
//!
//! # Invariants
//! - A seq is never issued twice for an inbox, whatever Redis loses (see
//!   `seq.rs` for the argument and its one assumption).
//! - A `(sender, client_msg_id)` is stored at most once, cluster-wide.
//! - Seqs of an inbox may have gaps (failed writes, races on resends); they
//!   never go backwards and a batch's messages to one inbox keep its order.

mod accounts;
mod contacts;
mod conversations;
mod deletion;
mod groups;
mod media;
mod notify;
mod operations;
mod posts;
mod presence;
mod quota;
mod revocation;
mod schedule;
mod seq;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::ClientLike as _;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use futures_util::StreamExt as _;
use futures_util::stream;
use scylla::client::session::Session;

use crate::cql::{Claim, Cql, CqlOptions};
use crate::model::{Appended, NewMessage, StoredMessage, new_msg_id};
use crate::redis::unavailable;
use crate::{MessageStore, StoreError};

/// CQL requests one `append` keeps in flight.
const CONCURRENCY: usize = 32;

/// How to reach Redis and CQL.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Redis URL (`redis://host:port`, `rediss://` for TLS,
    /// `redis-cluster://host:port?node=host2:port2` for a Redis Cluster).
    pub redis_url: String,
    /// Prefix of every Redis key this store writes (e.g. `qim:`); must not
    /// contain `{`. Lets several deployments or tests share one Redis.
    pub key_prefix: String,
    /// The CQL side.
    pub cql: CqlOptions,
    /// Seqs reserved in CQL beyond what an allocation needs: fewer LWTs on
    /// busy inboxes, but up to this many seqs skipped when Redis loses its
    /// data. 0 by default (no gaps from a Redis loss).
    pub seq_headroom: u64,
    /// Time after which a Redis command fails as unavailable.
    pub redis_timeout: Duration,
    /// A missing seq handed out longer ago than this is settled: sync tells
    /// clients to skip it at once instead of waiting (default: the fill
    /// window of `cql.request_timeout`; set it again after changing that
    /// timeout). At least the fill
    /// window ([`FILL_WINDOW_MIN`], or three CQL request timeouts if
    /// longer), or a client could skip a seq that a resend still fills.
    pub gap_settle: Duration,
}

impl ClusterOptions {
    /// Options with the defaults for everything but the addresses.
    pub fn new(redis_url: impl Into<String>, cql: CqlOptions) -> Self {
        ClusterOptions {
            redis_url: redis_url.into(),
            key_prefix: "qim:".to_owned(),
            gap_settle: fill_window(cql.request_timeout),
            cql,
            seq_headroom: 0,
            redis_timeout: Duration::from_secs(2),
        }
    }
}

/// Connects a `fred` client to `url` that reconnects forever and fails a
/// command after `timeout` instead of queueing it while Redis is away.
pub async fn connect_redis(url: &str, timeout: Duration) -> Result<Client, StoreError> {
    let config = RedisConfig::from_url(url)
        .map_err(|e| StoreError::Invalid(format!("redis url {url}: {e}")))?;
    let client = fred::types::Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build()
        .map_err(unavailable)?;
    client.init().await.map_err(unavailable)?;
    Ok(client)
}

/// Messages in CQL, seqs in Redis: the cluster [`MessageStore`].
pub struct ClusterStore {
    cql: Arc<Cql>,
    /// Contacts, schedules and session records.
    social: Arc<crate::cql::social::Social>,
    /// Push tokens and preview settings.
    notify: Arc<crate::cql::notify::NotifyStatements>,
    redis: Client,
    /// Prefix of this store's Redis keys.
    prefix: String,
    seqs: seq::Sequences,
    /// How long a claimed seq may still receive its message (see
    /// [`FILL_WINDOW_MIN`]).
    fill_window: Duration,
    /// Milliseconds messages stay readable in history; 0: as long as the
    /// CQL retention keeps them.
    history_retention_ms: std::sync::atomic::AtomicU64,
    /// The CQL retention (`retention_days`) in milliseconds; 0: forever.
    retention_ms: i64,
}

/// A claimed seq whose message is missing is filled by a resend only within
/// this long (or three CQL request timeouts, if longer) of the claim; later
/// resends get a new seq. Clients skip a gap only after it has been empty
/// for longer (the SDK's `gap_skip_after`, 30 s).
pub const FILL_WINDOW_MIN: Duration = Duration::from_secs(5);

/// The fill window for CQL requests that time out after `request_timeout`:
/// [`FILL_WINDOW_MIN`], or three request timeouts if longer.
pub fn fill_window(request_timeout: Duration) -> Duration {
    FILL_WINDOW_MIN.max(request_timeout.saturating_mul(3))
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore").finish_non_exhaustive()
    }
}

impl ClusterStore {
    /// Connects to Redis and CQL. The keyspace must have been migrated
    /// ([`crate::cql::migrate`], `qim-gateway migrate`); a missing or older
    /// schema is refused with [`StoreError::Invalid`].
    pub async fn connect(options: &ClusterOptions) -> Result<Self, StoreError> {
        if options.key_prefix.contains('{') {
            return Err(StoreError::Invalid(
                "redis key prefix must not contain '{'".into(),
            ));
        }
        let session = Arc::new(crate::cql::connect(&options.cql).await?);
        Self::with_session(session, options).await
    }

    /// Like [`connect`](Self::connect) over an existing CQL session (its
    /// keyspace is set to `options.cql.keyspace`).
    pub async fn with_session(
        session: Arc<Session>,
        options: &ClusterOptions,
    ) -> Result<Self, StoreError> {
        let fill_window = fill_window(options.cql.request_timeout);
        if options.gap_settle < fill_window {
            return Err(StoreError::Invalid(format!(
                "the gap settle window ({:?}) must be at least the fill window ({fill_window:?})",
                options.gap_settle
            )));
        }
        let cql = Arc::new(Cql::open(Arc::clone(&session), &options.cql).await?);
        let notify = Arc::new(crate::cql::notify::NotifyStatements::open(&session).await?);
        let social = Arc::new(crate::cql::social::Social::open(session).await?);
        let redis = connect_redis(&options.redis_url, options.redis_timeout).await?;
        let seqs = seq::Sequences::new(
            redis.clone(),
            Arc::clone(&cql),
            options.key_prefix.clone(),
            options.seq_headroom,
            options.gap_settle,
        );
        Ok(ClusterStore {
            cql,
            social,
            notify,
            redis,
            prefix: options.key_prefix.clone(),
            seqs,
            fill_window,
            history_retention_ms: std::sync::atomic::AtomicU64::new(0),
            retention_ms: i64::from(options.cql.retention_days) * 86_400_000,
        })
    }

    /// The Redis client (shared with the cluster's routing).
    pub fn redis(&self) -> &Client {
        &self.redis
    }

    /// The CQL session (keyspace set).
    pub fn cql_session(&self) -> &Arc<Session> {
        &self.cql.session
    }

    /// The answer for a resend whose key is claimed: the stored message,
    /// or, if the first attempt never wrote it, the resend written now: at
    /// the claimed seq while the claim is younger than the fill window, at a
    /// new seq (the claim moved with an LWT) after that, since by then
    /// clients may have skipped the empty seq as a permanent gap.
    async fn resend(&self, new: &NewMessage, claim: Claim) -> Result<StoredMessage, StoreError> {
        if let Some(stored) = self.cql.read_one(&claim.inbox, claim.seq).await? {
            return Ok(stored);
        }
        if claim.inbox != new.inbox {
            return Err(StoreError::Unavailable(format!(
                "message {}/{} claimed for another inbox is not stored yet",
                new.sender, new.client_msg_id
            )));
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let age_us = now_us.saturating_sub(claim.written_us);
        let window_us = i64::try_from(self.fill_window.as_micros()).unwrap_or(i64::MAX);
        let seq = if age_us < window_us {
            claim.seq
        } else {
            let seq = self.seqs.allocate(&claim.inbox, 1).await?;
            if !self
                .cql
                .move_claim(&new.sender, &new.client_msg_id, claim.seq, seq)
                .await?
            {
                // Another node moved or filled it first; answer from there.
                let moved = self
                    .cql
                    .read_claim(&new.sender, &new.client_msg_id, true)
                    .await?;
                if let Some(moved) = moved
                    && let Some(stored) = self.cql.read_one(&moved.inbox, moved.seq).await?
                {
                    return Ok(stored);
                }
                return Err(StoreError::Unavailable(format!(
                    "message {}/{} is being stored by another node",
                    new.sender, new.client_msg_id
                )));
            }
            seq
        };
        let stored = StoredMessage::from_new(new.clone(), seq, claim.msg_id);
        tracing::info!(inbox = %stored.inbox, seq, "storing a resend whose first write failed");
        self.cql.insert_message(&stored).await?;
        Ok(stored)
    }
}

/// What happens to one input of a batch.
enum Plan {
    /// A copy of an earlier input of the same batch.
    SameAs(usize),
    /// Already stored (or claimed) before this batch.
    Resend(Claim),
    /// New: gets a seq.
    New,
}

type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Runs `futures` at most [`CONCURRENCY`] at a time; results in input order.
async fn bounded<T>(futures: Vec<Pending<'_, T>>) -> Result<Vec<T>, StoreError> {
    stream::iter(futures)
        .buffered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

impl ClusterStore {
    /// Steps 4 and 5 for one new message.
    async fn store_new(
        &self,
        m: &NewMessage,
        seq: u64,
    ) -> Result<(StoredMessage, bool), StoreError> {
        let stored = StoredMessage::from_new(m.clone(), seq, new_msg_id(m.server_time_ms));
        let claim = Claim {
            inbox: stored.inbox.clone(),
            seq,
            msg_id: stored.message.msg_id.clone(),
            written_us: 0,
            digest: None,
        };
        match self.cql.claim(&m.sender, &m.client_msg_id, &claim).await? {
            None => {
                self.cql.insert_message(&stored).await?;
                Ok((stored, false))
            }
            Some(theirs) => {
                tracing::debug!(inbox = %m.inbox, seq, "lost a resend race; seq unused");
                Ok((self.resend(m, theirs).await?, true))
            }
        }
    }
}

#[async_trait]
impl MessageStore for ClusterStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        // 1: copies inside the batch.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        let mut plans: Vec<Option<Plan>> = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            match first.get(&(m.sender.as_str(), m.client_msg_id.as_str())) {
                Some(&j) => plans.push(Some(Plan::SameAs(j))),
                None => {
                    first.insert((&m.sender, &m.client_msg_id), i);
                    plans.push(None);
                }
            }
        }
        // 2: earlier claims.
        let mut unique = Vec::new();
        let mut lookups: Vec<Pending<'_, Option<Claim>>> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            if plans[i].is_none() {
                unique.push(i);
                lookups.push(Box::pin(self.cql.read_claim(
                    &m.sender,
                    &m.client_msg_id,
                    false,
                )));
            }
        }
        for (i, claim) in unique.into_iter().zip(bounded(lookups).await?) {
            plans[i] = Some(match claim {
                Some(c) => Plan::Resend(c),
                None => Plan::New,
            });
        }

        // 3: seqs per inbox, in batch order.
        let mut per_inbox: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in plans.iter().enumerate() {
            if matches!(p, Some(Plan::New)) {
                per_inbox
                    .entry(batch[i].inbox.as_str())
                    .or_default()
                    .push(i);
            }
        }
        let inboxes: Vec<(&str, &Vec<usize>)> = per_inbox.iter().map(|(k, v)| (*k, v)).collect();
        let mut allocations: Vec<Pending<'_, u64>> = Vec::new();
        for (inbox, idx) in &inboxes {
            allocations.push(Box::pin(self.seqs.allocate(inbox, idx.len() as u64)));
        }
        let mut seqs: Vec<u64> = vec![0; batch.len()];
        for ((_, idx), first_seq) in inboxes.iter().zip(bounded(allocations).await?) {
            for (k, &i) in idx.iter().enumerate() {
                seqs[i] = first_seq + k as u64;
            }
        }

        // 4 + 5: claim, then write; resends answered from the store.
        let mut work: Vec<Pending<'_, Option<(StoredMessage, bool)>>> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let seq = seqs[i];
            work.push(match &plans[i] {
                Some(Plan::New) => Box::pin(async move { self.store_new(m, seq).await.map(Some) }),
                Some(Plan::Resend(claim)) => {
                    let claim = claim.clone();
                    Box::pin(async move { Ok(Some((self.resend(m, claim).await?, true))) })
                }
                Some(Plan::SameAs(_)) | None => Box::pin(async { Ok(None) }),
            });
        }
        let mut out: Vec<Appended> = Vec::with_capacity(batch.len());
        for (i, result) in bounded(work).await?.into_iter().enumerate() {
            let appended = match (result, &plans[i]) {
                (Some((message, duplicate)), _) => Appended { message, duplicate },
                (None, Some(Plan::SameAs(j))) => Appended {
                    message: out[*j].message.clone(),
                    duplicate: true,
                },
                (None, _) => {
                    return Err(StoreError::Invalid("append planning failed".into()));
                }
            };
            out.push(appended);
        }
        Ok(out)
    }

    async fn read_inbox(
        &self,
        inbox: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.cql.read_inbox(inbox, after_seq, limit).await
    }

    async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError> {
        self.cql.inbox_head(inbox).await
    }

    /// Seqs are handed out before their rows are written, from any node,
    /// so a seq below the head may still be filled within the fill window:
    /// only those handed out longer ago than the settle window are settled
    /// (see the `seq` module).
    async fn settled_through(&self, inbox: &str, head: u64) -> Result<u64, StoreError> {
        Ok(self.seqs.settled(inbox).await?.min(head))
    }

    async fn save_cursor(&self, inbox: &str, device: &str, seq: u64) -> Result<(), StoreError> {
        self.cql.save_cursor(inbox, device, seq).await
    }

    async fn load_cursor(&self, inbox: &str, device: &str) -> Result<Option<u64>, StoreError> {
        self.cql.load_cursor(inbox, device).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every acknowledged write is already on a quorum of replicas.
        Ok(())
    }
}
