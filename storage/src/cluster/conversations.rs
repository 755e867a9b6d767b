//! The cluster backend's [`ConversationStore`]: posts, conversations,
//! unread counts and message operations over CQL, with seqs from the same
//! per-inbox allocator as `append` (see `seq.rs`).
//!
//! # Design
//! CQL has no transactions across partitions, and several gateway nodes
//! write at once, so nothing is kept that would need a read-modify-write
//! of shared state:
//! - **No stored unread count.** Each copy that counts as unread (from
//!   someone else, not recalled, not deleted) has a row in
//!   `im_conv_unread (owner, peer, seq)`, written in the same logged batch
//!   as the copy and deleted in the same batch as its recall or deletion.
//!   The unread count is `COUNT` of the rows above the read cursor: exact
//!   by construction, whatever the order of concurrent writes.
//! - **No stored last message.** `im_conv_messages` indexes every copy of
//!   a conversation by seq (newest first); the newest row is `last_seq`,
//!   and `last_message` is that copy read from the inbox, so a recall,
//!   edit or deletion of the newest copy shows without a second write.
//! - **Monotonic cursors without compare-and-set.** The read cursor is
//!   written `USING TIMESTAMP <cursor>`: the highest cursor wins whatever
//!   order writes arrive in; a `mark_read` at or below the cursor writes
//!   nothing. Flags are plain last-writer-wins cells.
//! - **Atomicity.** A call's rows (copies, indexes, events, cursor) are one
//!   logged batch: once any of it is applied the batch log completes the
//!   rest, even across a coordinator crash. A batch is split only between
//!   whole copies when it would pass the server's batch size limit (a large
//!   body to a large write-diffusion group); each copy with its indexes
//!   stays atomic, and a resend of the post rewrites any copy missing (see
//!   below).
//! - **Durable before visible.** Calls return after their batches are
//!   written at `LOCAL_QUORUM`; seqs come from the allocator, so a seq a
//!   crash loses is a gap, never reused.
//! - **Idempotency** shares `append`'s claim (`idempotency`, an LWT on
//!   `(sender, client_msg_id)`). The claim is taken before the copies are
//!   written; a resend that finds the claim reads the copies through
//!   `im_msg_copies` and writes again any copy that is missing (same seq,
//!   same msg_id) while the claim is younger than the fill window, so a
//!   post that failed half way is completed by its resend.
//!
//! # Costs
//! A conversation read is three queries (the row, the newest index row and
//! its message, and a `COUNT` over the unread rows above the cursor: cheap
//! while unread counts are small, linear in them). A list page reads every
//! conversation of the user (bounded concurrency) and sorts in memory:
//! pinned first, then `last_seq` descending; the paging cursor is the sort
//! key of the last entry. A read-diffusion group adds reading its log above
//! the member's cursor to count unread. History reads the index in pages
//! and each message by key, concurrently.
//!
//! # Retention
//! With `retention_days`, copies and indexes expire by CQL TTL. History
//! treats messages older than the retention (or than the history retention
//! set with [`ClusterStore::set_history_retention_ms`], whichever is
//! shorter) as expired, and once they are gone from disk, a page that
//! reaches the oldest remaining copy reports `expired` when the
//! conversation's oldest message (`im_conversations.oldest_ms`) is past the
//! retention.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use futures_util::stream;
use qim_proto::v1;

use super::{ClusterStore, Pending, bounded};
use crate::OpError;
use crate::conversations::{
    Applied, ConversationOp, ConversationPage, ConversationStore, HistoryAnchor, HistoryPage, Post,
    Posted, Walk, counts_as_unread, event_message, group, group_log, history_step, peer_key,
    preview, seq_bounds, user,
};
use crate::cql::im::ConvRow;
use crate::{StoreError, StoredMessage};

/// Conversations returned per page at most.
const MAX_PAGE: usize = 500;

/// History entries returned per page at most.
const MAX_HISTORY: usize = 1000;

/// Reads one history page keeps in flight.
const READS: usize = 64;

/// The peer of a stored peer key.
fn peer_of_key(key: &str) -> Option<v1::Peer> {
    match key.split_once(':')? {
        ("u", id) => Some(user(id)),
        ("g", id) => Some(group(id)),
        _ => None,
    }
}

pub(super) fn key_of(peer: &v1::Peer) -> Result<String, OpError> {
    peer_key(peer).ok_or(OpError::NotFound)
}

/// The list order of a conversation: pinned first, then newest activity.
fn order_key(conv: &v1::Conversation, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(if conv.pinned { 0 } else { 1 });
    out.extend_from_slice(&(!conv.last_seq).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

impl ClusterStore {
    /// Sets how long messages stay readable in conversation history
    /// (milliseconds; 0: as long as `retention_days` keeps them). History
    /// pages stop at older messages and say so
    /// ([`HistoryPage::expired`]).
    pub fn set_history_retention_ms(&self, ms: u64) {
        self.history_retention_ms.store(ms, Ordering::Relaxed);
    }

    /// Messages older than this (ms since the epoch) are expired.
    fn history_cutoff_ms(&self) -> i64 {
        let now = qim_proto::now_ms();
        let by_history = match self.history_retention_ms.load(Ordering::Relaxed) {
            0 => i64::MIN,
            ms => now.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
        };
        by_history.max(self.ttl_cutoff_ms(now))
    }

    /// Messages older than this are gone (or going) by CQL TTL.
    fn ttl_cutoff_ms(&self, now: i64) -> i64 {
        match self.retention_ms {
            0 => i64::MIN,
            ms => now.saturating_sub(ms),
        }
    }

    /// Allocates one seq in `inbox` and builds the event stored there.
    pub(super) async fn event(
        &self,
        inbox: &str,
        from_user: &str,
        event: v1::inbox_event::Kind,
        now_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        let seq = self.seqs.allocate(inbox, 1).await?;
        Ok(StoredMessage {
            inbox: inbox.to_owned(),
            seq,
            message: event_message(from_user, event, now_ms),
        })
    }

    /// A conversation as the user sees it, from its row.
    pub(super) async fn build(
        &self,
        owner: &str,
        row: ConvRow,
    ) -> Result<Option<v1::Conversation>, StoreError> {
        let Some(peer) = peer_of_key(&row.peer) else {
            return Ok(None);
        };
        let mut conv = v1::Conversation {
            peer: Some(peer),
            read_seq: row.read_seq,
            pinned: row.pinned,
            muted: row.muted,
            updated_ms: row.created_ms,
            ..Default::default()
        };
        let (last, unread) = tokio::try_join!(
            self.cql.conv_last(owner, &row.peer),
            self.cql.conv_unread(owner, &row.peer, row.read_seq),
        )?;
        conv.unread = unread;
        if let Some(last) = last {
            conv.last_seq = last;
            if let Some(m) = self.cql.read_one(owner, last).await? {
                conv.updated_ms = m.message.server_time_ms;
                if m.message.event.is_none() {
                    conv.last_message = Some(preview(&m.message));
                }
            }
        }
        self.fill_group(owner, &mut conv).await?;
        Ok(Some(conv))
    }

    /// Completes a read-diffusion group's conversation from its log: the
    /// log's unread messages, head, newest message and the member's cursor.
    async fn fill_group(&self, owner: &str, conv: &mut v1::Conversation) -> Result<(), StoreError> {
        let Some(v1::peer::Target::Group(g)) = conv.peer.as_ref().and_then(|p| p.target.clone())
        else {
            return Ok(());
        };
        let Some((info, _)) = self.cql.group(&g, false).await? else {
            return Ok(());
        };
        if !info.read_diffusion {
            return Ok(());
        }
        let log = group_log(&g);
        let (member, head, cursor) = tokio::try_join!(
            self.cql.member(&g, owner),
            self.cql.inbox_head(&log),
            self.cql.group_cursor(&g, owner),
        )?;
        let joined = member.map_or(u64::MAX, |m| m.joined_seq);
        let after = cursor.max(joined);
        conv.group_read_seq = cursor;
        conv.unread = conv
            .unread
            .saturating_add(self.log_unread(&log, owner, after).await?);
        conv.group_head = head;
        if head > joined && head > 0 {
            if let Some(m) = self.cql.read_one(&log, head).await? {
                conv.last_message = Some(preview(&m.message));
            }
        }
        Ok(())
    }

    /// Messages of a group log after `after` that count as unread for
    /// `owner`.
    pub(super) async fn log_unread(
        &self,
        log: &str,
        owner: &str,
        after: u64,
    ) -> Result<u32, StoreError> {
        let mut n: u32 = 0;
        let mut from = after;
        loop {
            let page = self.cql.read_inbox(log, from, 1000).await?;
            let Some(last) = page.last() else {
                return Ok(n);
            };
            from = last.seq;
            let full = page.len() == 1000;
            n = n.saturating_add(
                page.iter()
                    .filter(|m| counts_as_unread(owner, &m.message))
                    .count() as u32,
            );
            if !full {
                return Ok(n);
            }
        }
    }

    /// The conversation now, for answers.
    pub(super) async fn current(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<v1::Conversation>, StoreError> {
        match self.cql.conv_row(owner, key).await? {
            Some(row) => self.build(owner, row).await,
            None => Ok(None),
        }
    }

    /// History of a read-diffusion group: its log after the member joined.
    async fn log_history(
        &self,
        log: &str,
        joined: u64,
        anchor: HistoryAnchor,
        forward: bool,
        limit: usize,
        cutoff_ms: i64,
    ) -> Result<HistoryPage, StoreError> {
        let mut page = HistoryPage::default();
        let Some((lo, hi)) = seq_bounds(anchor, forward, joined + 1) else {
            return Ok(page);
        };
        let chunk = limit + 1;
        let (mut lo, mut hi) = (lo, hi);
        loop {
            let got = if forward {
                let mut got = self.cql.read_inbox(log, lo - 1, chunk).await?;
                got.retain(|m| m.seq <= hi);
                got
            } else {
                self.cql.read_inbox_desc(log, lo, hi, chunk).await?
            };
            let Some(last) = got.last().map(|m| m.seq) else {
                return Ok(page);
            };
            let full = got.len() == chunk;
            for m in got {
                if history_step(&mut page, m, forward, anchor, limit, cutoff_ms) == Walk::Done {
                    return Ok(page);
                }
            }
            if !full {
                return Ok(page);
            }
            if forward {
                lo = last + 1;
            } else if last <= lo {
                return Ok(page);
            } else {
                hi = last - 1;
            }
        }
    }

    /// History of a conversation: its index, then each copy by key.
    async fn conv_history(
        &self,
        owner: &str,
        key: &str,
        anchor: HistoryAnchor,
        forward: bool,
        limit: usize,
        cutoff_ms: i64,
    ) -> Result<HistoryPage, StoreError> {
        let mut page = HistoryPage::default();
        let Some((mut lo, mut hi)) = seq_bounds(anchor, forward, 1) else {
            return Ok(page);
        };
        let chunk = limit + 1;
        loop {
            let seqs = self
                .cql
                .conv_seqs(owner, key, lo, hi, forward, chunk)
                .await?;
            let Some(&last) = seqs.last() else {
                break;
            };
            let full = seqs.len() == chunk;
            let reads: Vec<Pending<'_, Option<StoredMessage>>> = seqs
                .iter()
                .map(|&seq| Box::pin(self.cql.read_one(owner, seq)) as Pending<'_, _>)
                .collect();
            let mut reads = stream::iter(reads).buffered(READS);
            while let Some(m) = reads.next().await {
                let Some(m) = m? else {
                    continue;
                };
                if history_step(&mut page, m, forward, anchor, limit, cutoff_ms) == Walk::Done {
                    return Ok(page);
                }
            }
            if !full {
                break;
            }
            if forward {
                lo = last + 1;
            } else if last <= lo {
                break;
            } else {
                hi = last - 1;
            }
        }
        // The walk reached the oldest copy left: older ones may have
        // expired from disk already.
        let from_oldest = !forward || matches!(anchor, HistoryAnchor::End | HistoryAnchor::Time(_));
        if from_oldest && !page.expired {
            let cutoff = self.ttl_cutoff_ms(qim_proto::now_ms());
            if let Some(row) = self.cql.conv_row(owner, key).await? {
                if row.oldest_ms.is_some_and(|t| t < cutoff) {
                    page.expired = true;
                }
            }
        }
        Ok(page)
    }
}

#[async_trait]
impl ConversationStore for ClusterStore {
    async fn post(&self, batch: Vec<Post>) -> Result<Vec<Result<Posted, OpError>>, StoreError> {
        self.post_batch(batch).await
    }

    async fn conversations(
        &self,
        user_id: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<ConversationPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let rows = self.cql.conv_rows(user_id).await?;
        let builds: Vec<Pending<'_, Option<(Vec<u8>, v1::Conversation)>>> = rows
            .into_iter()
            .map(|row| {
                Box::pin(async move {
                    let key = row.peer.clone();
                    Ok(self
                        .build(user_id, row)
                        .await?
                        .map(|c| (order_key(&c, &key), c)))
                }) as Pending<'_, _>
            })
            .collect();
        let mut all: Vec<(Vec<u8>, v1::Conversation)> = bounded(builds)
            .await?
            .into_iter()
            .flatten()
            .filter(|(k, _)| after.is_empty() || k.as_slice() > after)
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut page = ConversationPage::default();
        let more = all.len() > limit;
        all.truncate(limit);
        if more {
            page.next = all.last().map(|(k, _)| k.clone()).unwrap_or_default();
        }
        page.conversations = all.into_iter().map(|(_, c)| c).collect();
        Ok(page)
    }

    async fn conversation(
        &self,
        user_id: &str,
        peer: &v1::Peer,
    ) -> Result<Option<v1::Conversation>, StoreError> {
        let Some(key) = peer_key(peer) else {
            return Ok(None);
        };
        match self.cql.conv_row(user_id, &key).await? {
            Some(row) => self.build(user_id, row).await,
            None => {
                // A read-diffusion group the member has not touched yet.
                let Some(v1::peer::Target::Group(g)) = peer.target.as_ref() else {
                    return Ok(None);
                };
                if self.cql.member(g, user_id).await?.is_none() {
                    return Ok(None);
                }
                let row = ConvRow {
                    peer: key,
                    ..ConvRow::default()
                };
                self.build(user_id, row).await
            }
        }
    }

    async fn apply(&self, op: ConversationOp) -> Result<Applied, OpError> {
        self.apply_op(op).await
    }

    async fn read_count(&self, user_id: &str, msg_id: &str) -> Result<(u32, u32), OpError> {
        let copies = self.cql.copies(msg_id).await?;
        let Some((first_inbox, first_seq)) = copies.first().cloned() else {
            return Err(OpError::NotFound);
        };
        let Some(first) = self.cql.read_one(&first_inbox, first_seq).await? else {
            return Err(OpError::NotFound);
        };
        if first.message.from_user != user_id {
            return Err(OpError::NotSender);
        }
        let Some(v1::peer::Target::Group(g)) =
            first.message.to.as_ref().and_then(|p| p.target.as_ref())
        else {
            return Err(OpError::NotFound);
        };
        let (mut read, mut total) = (0u32, 0u32);
        if first_inbox.starts_with('#') {
            // Read diffusion: each member's cursor in the log.
            let cursors: HashMap<String, u64> =
                self.cql.group_cursors(g).await?.into_iter().collect();
            for m in self.cql.members(g, "", usize::MAX >> 2).await? {
                if m.user == user_id || m.joined_seq >= first_seq {
                    continue;
                }
                total += 1;
                if cursors.get(&m.user).is_some_and(|&c| c >= first_seq) {
                    read += 1;
                }
            }
        } else {
            // Write diffusion: each member's cursor against their copy.
            let key = format!("g:{g}");
            let others: Vec<(String, u64)> =
                copies.into_iter().filter(|(i, _)| i != user_id).collect();
            let rows: Vec<Pending<'_, Option<ConvRow>>> = others
                .iter()
                .map(|(inbox, _)| Box::pin(self.cql.conv_row(inbox, &key)) as Pending<'_, _>)
                .collect();
            for ((_, seq), row) in others.iter().zip(bounded(rows).await?) {
                total += 1;
                if row.is_some_and(|r| r.read_seq >= *seq) {
                    read += 1;
                }
            }
        }
        Ok((read, total))
    }

    async fn history(
        &self,
        user_id: &str,
        peer: &v1::Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: usize,
    ) -> Result<HistoryPage, OpError> {
        let limit = limit.clamp(1, MAX_HISTORY);
        let cutoff_ms = self.history_cutoff_ms();
        if let Some(v1::peer::Target::Group(g)) = peer.target.as_ref() {
            if self
                .cql
                .group(g, false)
                .await?
                .is_some_and(|(i, _)| i.read_diffusion)
            {
                let Some(member) = self.cql.member(g, user_id).await? else {
                    return Err(OpError::NotAMember);
                };
                return Ok(self
                    .log_history(
                        &group_log(g),
                        member.joined_seq,
                        anchor,
                        forward,
                        limit,
                        cutoff_ms,
                    )
                    .await?);
            }
        }
        let key = key_of(peer)?;
        Ok(self
            .conv_history(user_id, &key, anchor, forward, limit, cutoff_ms)
            .await?)
    }
}
