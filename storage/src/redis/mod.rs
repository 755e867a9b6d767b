//! Cluster state in Redis, through `fred`: routes (which node holds each
//! device's session), presence, the node registry, and per-node delivery
//! queues for messages stored on one node for a user connected to another.
//!
//! # Layout
//! - [`routes`]: `user/device → (node, session)` with a TTL each node
//!   refreshes for its live sessions; conditional removal so a session
//!   that was replaced on another node never removes its successor.
//! - [`presence`]: online (any live route) and last seen, per user,
//!   aggregated over devices.
//! - [`nodes`]: the node registry: each node's address and load figures,
//!   live while its heartbeats keep renewing its deadline.
//! - [`queue`]: each node's delivery queue, a Redis Stream read through a
//!   consumer group: at-least-once hand-off (an entry is acknowledged only
//!   after the local delivery path has it), bounded by `MAXLEN ~`.
//! - [`signals`]: what every node may need to hear at once and nobody needs
//!   later (presence changes, typing, read-diffusion group log entries),
//!   over one pub/sub channel: at most once, never stored.
//!
//! # Keys (prefix `P`, one Redis Cluster hash slot per `{…}` tag)
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{P:u:USER}:routes` | hash | device → `node|session|expires_ms` |
//! | `{P:u:USER}:seen` | string | last time the user went offline (ms) |
//! | `{P:nodes}:alive` | sorted set | node id scored by its deadline (ms) |
//! | `{P:nodes}:info` | hash | node id → address and load figures |
//! | `{P:q:NODE}` | stream | hand-offs for that node |
//! | `{P:signals}` | pub/sub channel | signals for every node |
//!
//! Every multi-key operation (each is one Lua script) touches keys of one
//! tag only, so the same code runs against a single Redis and a Redis
//! Cluster. Times are the caller's clock in milliseconds: nodes of a
//! cluster are expected to keep their clocks within a fraction of the TTLs.
//!
//! # Invariants
//! - Nothing here is the source of truth for messages: losing all of Redis
//!   (a restart without persistence) loses no message. Nodes write their
//!   registry entry and routes again within one heartbeat or refresh
//!   interval, and recreate their queue's consumer group on the next read.
//! - Entries past their deadline are never returned, whether or not Redis
//!   has removed them yet.

use std::time::Duration;

use fred::prelude::{ClientLike as _, Config, ReconnectPolicy};
use fred::types::Builder;

use crate::StoreError;

pub mod nodes;
pub mod presence;
pub mod queue;
pub mod routes;
pub mod signals;

/// How to reach Redis and where qim's keys live.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port` for a single server, `redis-cluster://host:port`
    /// (with `?node=host:port` for more seeds) for a Redis Cluster.
    pub url: String,
    /// Prefix of every key; several clusters (or tests) can share a Redis
    /// by using different prefixes.
    pub prefix: String,
    /// A command without an answer this long fails with
    /// [`StoreError::Unavailable`].
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// A configuration with the default prefix (`qim`) and timeout (2 s).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "qim".to_owned(),
            command_timeout: Duration::from_secs(2),
        }
    }
}

/// A connection to the Redis that holds the cluster state.
///
/// Cheap to clone (the connection is shared). Blocking reads of a queue
/// use a [`queue::Consumer`], which has a connection of its own.
#[derive(Clone)]
pub struct Redis {
    client: fred::clients::Client,
    prefix: String,
    timeout: Duration,
    config: RedisConfig,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Whether `s` may appear inside a key (user, device and node ids, the
/// prefix): the id alphabet, which has no `{`, `}`, `|` or `:`.
pub(crate) fn is_key_part(s: &str) -> bool {
    qim_proto::ids::is_valid_id(s)
}

/// Maps a Redis failure to the store's error: every failure of the server
/// or the connection may pass, so it is `Unavailable`.
pub(crate) fn unavailable(e: fred::error::Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl Redis {
    /// Connects; fails if Redis cannot be reached within the command
    /// timeout. After that the client reconnects by itself (exponential
    /// backoff up to 2 s) and commands fail while it is away.
    pub async fn connect(config: &RedisConfig) -> Result<Redis, StoreError> {
        if !is_key_part(&config.prefix) {
            return Err(StoreError::Invalid(
                "redis prefix must be 1-64 of [A-Za-z0-9._@-]".into(),
            ));
        }
        let client = build(config)?;
        init(&client, config.command_timeout).await?;
        Ok(Redis {
            client,
            prefix: config.prefix.clone(),
            timeout: config.command_timeout,
            config: config.clone(),
        })
    }

    /// A second, independent connection to the same Redis (for blocking
    /// commands, which would hold up everything queued behind them).
    pub(crate) async fn dedicated(&self) -> Result<fred::clients::Client, StoreError> {
        let client = self.client.clone_new();
        init(&client, self.timeout).await?;
        Ok(client)
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }

    fn key(&self, tag: &str, suffix: &str) -> String {
        format!("{{{}:{tag}}}{suffix}", self.prefix)
    }
}

fn builder(config: &RedisConfig) -> Result<Builder, StoreError> {
    let parsed = Config::from_url(&config.url)
        .map_err(|e| StoreError::Invalid(format!("redis url {:?}: {e}", config.url)))?;
    let timeout = config.command_timeout;
    let mut builder = Builder::from_config(parsed);
    builder
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 2;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

fn build(config: &RedisConfig) -> Result<fred::clients::Client, StoreError> {
    builder(config)?
        .build()
        .map_err(|e| StoreError::Invalid(format!("redis client: {e}")))
}

async fn init(
    client: &impl fred::interfaces::ClientLike,
    timeout: Duration,
) -> Result<(), StoreError> {
    // `init` keeps retrying under the reconnect policy; bound the first
    // connection so a wrong address fails start-up instead of hanging it.
    let connected = tokio::time::timeout(timeout * 2, client.init()).await;
    match connected {
        Ok(Ok(_task)) => Ok(()),
        Ok(Err(e)) => {
            let _ = client.quit().await;
            Err(unavailable(e))
        }
        Err(_) => {
            let _ = client.quit().await;
            Err(StoreError::Unavailable("redis: connect timed out".into()))
        }
    }
}
