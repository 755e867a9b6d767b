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
//!   out (the store is failing; the send is refused as retryable and the
//!   client's resend gets a new seq; if the claim had landed, the resend
//!   fills the claimed seq within the fill window, see `cluster`),
//! - two nodes raced on the same resend (the loser's seq is unused),
//! - Redis died (or the command timed out) after counting an allocation but
//!   before its answer arrived: the caller cannot know, refuses the send,
//!   and those seqs stay unused,
//! - a node died between raising the mark and allocating, and Redis then
//!   lost its data, or `headroom > 0` and Redis lost its data (up to
//!   `headroom` seqs).
//!
//! Readers must therefore tolerate gaps: the gateway's catch-up reads skip
//! them, and the SDK skips a gap that the server keeps confirming empty for
//! its `gap_skip_after` (30 s, longer than the fill window), so a permanent
//! gap never holds back the messages after it.
//!
//! A gap also becomes *settled* once its seqs were handed out longer ago
//! than the settle window (`gap_settle`, 30 s by default, at least the fill
//! window): a third key per inbox, the settle record, keeps when seqs were
//! handed out ([`SETTLED`]), and a sync tells the client that every missing
//! seq up to there is gone for good, so it skips the gap at once. That is
//! what a device back after messages expired (or after a failed write long
//! ago) needs: without it, it waited `gap_skip_after` before seeing anything
//! newer. A Redis that lost its data knows nothing settled until the window
//! has passed again; clients then fall back to waiting.
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

use crate::StoreError;
use crate::cql::Cql;
use crate::redis::unavailable;

/// Hands out `n` seqs if the durable reservation covers them, and keeps
/// the inbox's settle record (see [`SETTLED`]).
/// KEYS: counter, res, settle record. ARGV: n, settle window (ms).
/// Returns `{0}` (counter missing), `{1, counter, res}` (reservation too
/// small) or `{2, last}` (seqs `last - n + 1 ..= last` are ours).
const ALLOC: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
local res = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = tonumber(cur) + tonumber(ARGV[1])
if last > res then return {1, tonumber(cur), res} end
redis.call('SET', KEYS[1], last)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local i = tonumber(redis.call('HGET', KEYS[3], 'i') or '0')
local at = tonumber(redis.call('HGET', KEYS[3], 'a' .. i) or '-1')
if at < 0 or now - at >= tonumber(ARGV[2]) / 4 then
  i = (i + 1) % 6
  redis.call('HSET', KEYS[3], 'i', i, 'a' .. i, now, 's' .. i, last)
end
redis.call('HSET', KEYS[3], 'last', now)
return {2, last}
";

/// The highest seq of an inbox handed out at least the settle window ago:
/// every seq up to it whose message is not stored by now never will be
/// (its write failed or its row expired). The settle record holds when
/// the last allocation happened (`last`) and a ring of six checkpoints
/// `(a<i>, s<i>)`: "every seq up to `s<i>` was handed out by `a<i>`", a new
/// one at most every quarter window, so one of them is at most a quarter
/// window younger than any seq and a missing seq is known settled at most
/// 1.25 windows after it was handed out (at least four checkpoints are
/// younger than a window, the older two always cover it).
/// KEYS: counter, settle record. ARGV: settle window (ms). Returns the seq
/// (0 when nothing is known, e.g. after Redis lost its data).
const SETTLED: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local last = redis.call('HGET', KEYS[2], 'last')
if last and now - tonumber(last) >= window then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
local best = 0
for i = 0, 5 do
  local r = redis.call('HMGET', KEYS[2], 'a' .. i, 's' .. i)
  if r[1] and now - tonumber(r[1]) >= window and tonumber(r[2]) > best then
    best = tonumber(r[2])
  end
end
return best
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
    /// Milliseconds after which a seq handed out is settled (see [`SETTLED`]).
    settle_window_ms: u64,
    alloc: Script,
    floor: Script,
    settled: Script,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Sequences {
    pub(crate) fn new(
        redis: Client,
        cql: Arc<Cql>,
        prefix: String,
        headroom: u64,
        settle_window: std::time::Duration,
    ) -> Self {
        Sequences {
            redis,
            cql,
            prefix,
            headroom,
            settle_window_ms: u64::try_from(settle_window.as_millis()).unwrap_or(u64::MAX),
            alloc: Script::from_lua(ALLOC),
            floor: Script::from_lua(FLOOR),
            settled: Script::from_lua(SETTLED),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The counter, `res` and the settle record of `inbox`.
    fn keys(&self, inbox: &str) -> [String; 3] {
        [
            format!("{}seq:{{{inbox}}}", self.prefix),
            format!("{}seqres:{{{inbox}}}", self.prefix),
            format!("{}seqset:{{{inbox}}}", self.prefix),
        ]
    }

    /// The highest seq of `inbox` handed out at least the settle window
    /// ago (0 if unknown): any seq up to it that a read started after this
    /// call does not find is gone for good.
    pub(crate) async fn settled(&self, inbox: &str) -> Result<u64, StoreError> {
        let [counter, _, record] = self.keys(inbox);
        let settled: i64 = self
            .settled
            .evalsha_with_reload(
                &self.redis,
                vec![counter, record],
                vec![self.settle_window_ms.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(settled).unwrap_or(0))
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
                .evalsha_with_reload(
                    &self.redis,
                    keys.to_vec(),
                    vec![n.to_string(), self.settle_window_ms.to_string()],
                )
                .await
                .map_err(unavailable)?;
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
            .evalsha_with_reload(&self.redis, keys[..2].to_vec(), vec![mark.to_string()])
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
