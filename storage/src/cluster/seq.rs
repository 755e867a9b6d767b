//! Per-inbox sequence counters in Redis, floored by a durable high-water
//! mark in CQL, so that losing Redis data can never make a seq be issued
//! twice.
//!
//! # Invariant
//! For every inbox: **every seq ever handed out is ≤ the `reserved` mark
//! durable in CQL (`inbox_heads`) at the moment it is handed out.**
//!
//! Two Redis keys per inbox, in one hash slot (`{inbox}` hash tag, so the
//! scripts work on Redis Cluster): the counter (last seq handed out) and
//! `res`, a copy of a CQL mark that was already durable when it was copied
//! (Redis `res` ≤ CQL `reserved`, always). [`ALLOC`] hands out
//! `counter + 1 ..= counter + n` only when that stays ≤ `res`, atomically in
//! Redis. Otherwise the allocator first raises the CQL mark with an LWT
//! (`UPDATE ... IF reserved < new`: it only ever rises) and copies the
//! confirmed value into `res`, then tries again.
//!
//! When the counter key is missing (first use, `FLUSHALL`, a restart or a
//! failover to an empty replica), the allocator reads the CQL mark at
//! `LOCAL_SERIAL` (so a Paxos round in progress on another node is
//! completed and seen) and sets the counter to it ([`FLOOR`], only if still
//! missing). By the invariant, every seq any node ever handed out, including
//! ones whose message write is still in flight on another node, is ≤ that
//! mark, so the next seq is new.
//!
//! # Gaps
//! The allocator reserves exactly what it hands out plus `headroom` (0 by
//! default), so after a Redis loss counting resumes right after the last
//! seq handed out. A seq is left unused (a gap in the inbox) only when:
//! - a message's idempotency claim or write failed after its seq was handed
//!   out (the store is failing; the send is refused as retryable, and the
//!   client's resend gets a new seq — unless its claim had landed, in which
//!   case the resend fills the original seq, see `cluster`),
//! - two nodes raced on the same resend (the loser's seq is unused),
//! - a node died between raising the mark and allocating, and Redis then
//!   lost its data, or `headroom > 0` and Redis lost its data (up to
//!   `headroom` seqs).
//!
//! Readers must therefore tolerate gaps.
//!
//! # What this does not cover
//! A Redis that comes back with an *older* counter than it handed out (an
//! RDB/AOF restore of a stale snapshot, or promotion of a lagging replica
//! with the key present) is not detected: the counter trusts an existing
//! key. Run the counters' Redis without persistence (a restart is then a
//! clean loss, which is covered) or with `appendfsync always` and
//! `WAIT`-acknowledged replication.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use fred::clients::Client;
use fred::types::scripts::Script;

use super::redis_error;
use crate::StoreError;
use crate::cql::Cql;

/// Hands out `n` seqs if the durable reservation covers them.
/// KEYS: counter, res. ARGV: n.
/// Returns `{0}` (counter missing), `{1, counter, res}` (reservation too
/// small) or `{2, last}` (seqs `last - n + 1 ..= last` are ours).
const ALLOC: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
local res = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = tonumber(cur) + tonumber(ARGV[1])
if last > res then return {1, tonumber(cur), res} end
redis.call('SET', KEYS[1], last)
return {2, last}
";

/// Records a durable CQL mark: sets the counter to it if the counter is
/// missing, and raises `res` to it. KEYS: counter, res. ARGV: mark.
const FLOOR: &str = r"
local mark = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], mark) end
local res = tonumber(redis.call('GET', KEYS[2]) or '0')
if mark > res then redis.call('SET', KEYS[2], mark) end
return 1
";

/// Rounds of allocate / raise before giving up under contention.
const MAX_ROUNDS: usize = 64;

/// Striped per-inbox locks: allocations for one inbox from one node go one
/// at a time, so a node's own callers do not fight over the CQL mark.
const STRIPES: usize = 64;

/// Allocates per-inbox seqs (see the module docs for the invariant).
pub(crate) struct Sequences {
    redis: Client,
    cql: Arc<Cql>,
    prefix: String,
    headroom: u64,
    alloc: Script,
    floor: Script,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Sequences {
    pub(crate) fn new(redis: Client, cql: Arc<Cql>, prefix: String, headroom: u64) -> Self {
        Sequences {
            redis,
            cql,
            prefix,
            headroom,
            alloc: Script::from_lua(ALLOC),
            floor: Script::from_lua(FLOOR),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn keys(&self, inbox: &str) -> Vec<String> {
        vec![
            format!("{}seq:{{{inbox}}}", self.prefix),
            format!("{}seqres:{{{inbox}}}", self.prefix),
        ]
    }

    /// Hands out `n` consecutive seqs of `inbox`; returns the first.
    pub(crate) async fn allocate(&self, inbox: &str, n: u64) -> Result<u64, StoreError> {
        let mut h = DefaultHasher::new();
        inbox.hash(&mut h);
        let _turn = self.stripes[(h.finish() % STRIPES as u64) as usize]
            .lock()
            .await;
        let keys = self.keys(inbox);
        for _ in 0..MAX_ROUNDS {
            let reply: Vec<i64> = self
                .alloc
                .evalsha_with_reload(&self.redis, keys.clone(), vec![n.to_string()])
                .await
                .map_err(redis_error)?;
            match reply.as_slice() {
                [2, last] => {
                    let last = u64::try_from(*last).map_err(|_| {
                        StoreError::Corrupt(format!("seq counter of {inbox}: {last}"))
                    })?;
                    return Ok(last + 1 - n);
                }
                [0] => {
                    let mark = self.cql.reserved_serial(inbox).await?;
                    tracing::info!(
                        inbox,
                        mark,
                        "seq counter missing in Redis; floored at the durable mark"
                    );
                    self.record(&keys, mark).await?;
                }
                [1, cur, res] => {
                    let cur = u64::try_from(*cur).unwrap_or(0);
                    let res = u64::try_from(*res).unwrap_or(0);
                    let want = (cur + n).max(res) + self.headroom;
                    let mark = self.cql.raise(inbox, want).await?;
                    self.record(&keys, mark).await?;
                }
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "unexpected seq script reply {other:?}"
                    )));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "seq allocation for {inbox} did not settle"
        )))
    }

    async fn record(&self, keys: &[String], mark: u64) -> Result<(), StoreError> {
        let _: i64 = self
            .floor
            .evalsha_with_reload(&self.redis, keys.to_vec(), vec![mark.to_string()])
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
