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
use crate::conversations::{
    Applied, ConversationOp, ConversationPage, ConversationStore, HistoryAnchor, HistoryPage,
    OpError, Post, Posted, Rewrite, Walk, conversation_of, counts_as_unread, event_message, group,
    group_log, history_step, peer_key, preview, seq_bounds, tombstone, user,
};
use crate::cql::Claim;
use crate::cql::im::{ConvRow, Writes};
use crate::groups::check_post;
use crate::model::new_msg_id;
use crate::{StoreError, StoredMessage};

/// Conversations returned per page at most.
const MAX_PAGE: usize = 500;

/// History entries returned per page at most.
const MAX_HISTORY: usize = 1000;

/// Reads one history page keeps in flight.
const READS: usize = 64;

/// Retries of a post's claim and writes after its seqs were taken.
const RETRIES: usize = 2;

/// Rounds a group post retries when the group changed under it.
const GROUP_ROUNDS: usize = 16;

/// The peer of a stored peer key.
fn peer_of_key(key: &str) -> Option<v1::Peer> {
    match key.split_once(':')? {
        ("u", id) => Some(user(id)),
        ("g", id) => Some(group(id)),
        _ => None,
    }
}

fn key_of(peer: &v1::Peer) -> Result<String, OpError> {
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

/// What happens to one post of a batch.
enum Plan {
    SameAs(usize),
    Resend(Claim),
    Refused(OpError),
    New,
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

    /// Where a group post goes: every member's inbox (the sender's first)
    /// or the group's log, decided at a group version that a lightweight
    /// transaction confirms, so the post is ordered with group changes.
    async fn group_inboxes(&self, post: &Post) -> Result<Result<Vec<String>, OpError>, StoreError> {
        let Some(v1::peer::Target::Group(g)) = post.to.target.as_ref() else {
            return Err(StoreError::Invalid(
                "a post needs at least one inbox".into(),
            ));
        };
        for _ in 0..GROUP_ROUNDS {
            let Some((info, version)) = self.cql.group(g, false).await? else {
                return Ok(Err(OpError::NotFound));
            };
            let member = self.cql.member(g, &post.sender).await?;
            if let Err(refused) = check_post(&info, member.as_ref(), post.mention_all) {
                return Ok(Err(refused));
            }
            let inboxes = if info.read_diffusion {
                vec![group_log(g)]
            } else {
                let mut inboxes = vec![post.sender.clone()];
                for m in self.cql.members(g, "", usize::MAX >> 2).await? {
                    if m.user != post.sender {
                        inboxes.push(m.user);
                    }
                }
                inboxes
            };
            if self.cql.group_check(g, version).await? {
                return Ok(Ok(inboxes));
            }
            tracing::debug!(group = %g, "group changed under a post; resolving again");
        }
        Err(StoreError::Unavailable(format!(
            "group {g} changes too fast to post"
        )))
    }

    /// The rows of one new copy.
    fn write_copy(&self, w: &mut Writes, copy: &StoredMessage) -> Result<(), StoreError> {
        w.unit();
        self.cql.w_message(w, copy)?;
        if copy.inbox.starts_with('#') {
            // A group log has no conversations of its own.
            return Ok(());
        }
        let peer = conversation_of(&copy.inbox, &copy.message);
        let key = peer_key(&peer).ok_or_else(|| StoreError::Invalid("empty peer".into()))?;
        self.cql.w_copy(
            w,
            &copy.inbox,
            &key,
            copy.seq,
            counts_as_unread(&copy.inbox, &copy.message),
            copy.message.server_time_ms,
        )
    }

    /// Stores a new post at `seqs` (one per inbox), after claiming its key.
    async fn store_post(&self, post: &Post, seqs: &[u64]) -> Result<Posted, StoreError> {
        let msg_id = new_msg_id(post.server_time_ms);
        let message = post.to_message(msg_id.clone());
        let copies: Vec<StoredMessage> = post
            .inboxes
            .iter()
            .zip(seqs)
            .map(|(inbox, &seq)| StoredMessage {
                inbox: inbox.clone(),
                seq,
                message: message.clone(),
            })
            .collect();
        let claim = Claim {
            inbox: copies[0].inbox.clone(),
            seq: copies[0].seq,
            msg_id: msg_id.clone(),
            written_us: 0,
        };
        // Seqs are taken: a failure now would leave them as gaps, so
        // transient failures are retried here (both steps are idempotent).
        let mut tries = 0;
        let theirs = loop {
            match self
                .cql
                .claim(&post.sender, &post.client_msg_id, &claim)
                .await
            {
                Ok(theirs) => break theirs,
                Err(e) if e.is_retryable() && tries < RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, "retrying an idempotency claim");
                }
                Err(e) => return Err(e),
            }
        };
        match theirs {
            // Our own claim, applied by an attempt whose answer was lost.
            Some(theirs) if theirs.msg_id == msg_id => {}
            Some(theirs) => {
                tracing::debug!(sender = %post.sender, "lost a resend race; seqs unused");
                return self.resend_post(post, theirs).await;
            }
            None => {}
        }
        let mut tries = 0;
        loop {
            match self.write_post(&msg_id, &copies).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() && tries < RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, "retrying a post's writes");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Posted {
            copies,
            duplicate: false,
        })
    }

    async fn write_post(&self, msg_id: &str, copies: &[StoredMessage]) -> Result<(), StoreError> {
        let mut w = Writes::default();
        let index: Vec<(String, u64)> = copies.iter().map(|c| (c.inbox.clone(), c.seq)).collect();
        self.cql.w_copies(&mut w, msg_id, &index)?;
        for copy in copies {
            self.write_copy(&mut w, copy)?;
        }
        self.cql.commit(w).await
    }

    /// A resend of a claimed post: the stored copies, completed if the
    /// first attempt failed part way (within the fill window, at the
    /// claimed seqs; later, a post never written is stored at new seqs).
    async fn resend_post(&self, post: &Post, claim: Claim) -> Result<Posted, StoreError> {
        let index = self.cql.copies(&claim.msg_id).await?;
        let index = if index.is_empty() {
            vec![(claim.inbox.clone(), claim.seq)]
        } else {
            index
        };
        let reads: Vec<Pending<'_, Option<StoredMessage>>> = index
            .iter()
            .map(|(inbox, seq)| Box::pin(self.cql.read_one(inbox, *seq)) as Pending<'_, _>)
            .collect();
        let found = bounded(reads).await?;
        if found.iter().all(Option::is_some) {
            return Ok(Posted {
                copies: found.into_iter().flatten().collect(),
                duplicate: true,
            });
        }
        if claim.inbox != post.inboxes.first().cloned().unwrap_or_default() {
            return Err(StoreError::Unavailable(format!(
                "post {}/{} claimed for another inbox is not stored yet",
                post.sender, post.client_msg_id
            )));
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let window_us = i64::try_from(self.fill_window.as_micros()).unwrap_or(i64::MAX);
        let message = post.to_message(claim.msg_id.clone());
        let young = now_us.saturating_sub(claim.written_us) < window_us;
        let copies: Vec<StoredMessage> = if young || found.iter().any(Option::is_some) {
            // Complete in place: the missing copies at their claimed seqs
            // (only the primary is known when the index never landed).
            let mut index = index;
            if index.len() < post.inboxes.len() && found.iter().all(Option::is_none) {
                for inbox in &post.inboxes[index.len()..] {
                    index.push((inbox.clone(), self.seqs.allocate(inbox, 1).await?));
                }
            }
            index
                .into_iter()
                .map(|(inbox, seq)| StoredMessage {
                    inbox,
                    seq,
                    message: message.clone(),
                })
                .collect()
        } else {
            let mut copies = Vec::with_capacity(post.inboxes.len());
            for inbox in &post.inboxes {
                copies.push(StoredMessage {
                    inbox: inbox.clone(),
                    seq: self.seqs.allocate(inbox, 1).await?,
                    message: message.clone(),
                });
            }
            if !self
                .cql
                .move_claim(&post.sender, &post.client_msg_id, claim.seq, copies[0].seq)
                .await?
            {
                return Err(StoreError::Unavailable(format!(
                    "post {}/{} is being stored by another node",
                    post.sender, post.client_msg_id
                )));
            }
            copies
        };
        tracing::info!(sender = %post.sender, "storing a resend whose first write failed");
        self.write_post(&claim.msg_id, &copies).await?;
        Ok(Posted {
            copies,
            duplicate: true,
        })
    }

    /// A conversation as the user sees it, from its row.
    async fn build(
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
    async fn log_unread(&self, log: &str, owner: &str, after: u64) -> Result<u32, StoreError> {
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
    async fn current(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<v1::Conversation>, StoreError> {
        match self.cql.conv_row(owner, key).await? {
            Some(row) => self.build(owner, row).await,
            None => Ok(None),
        }
    }

    async fn mark_read(
        &self,
        user_id: String,
        conversation: v1::Peer,
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        if let Some(v1::peer::Target::Group(g)) = conversation.target.as_ref() {
            if self
                .cql
                .group(g, false)
                .await?
                .is_some_and(|(i, _)| i.read_diffusion)
            {
                let g = g.clone();
                return self
                    .mark_group_read(&user_id, &g, conversation, up_to_seq, now_ms)
                    .await;
            }
        }
        let key = key_of(&conversation)?;
        let Some(row) = self.cql.conv_row(&user_id, &key).await? else {
            return Err(OpError::NotFound);
        };
        let read_before = row.read_seq;
        let Some(mut snapshot) = self.build(&user_id, row).await? else {
            return Err(OpError::NotFound);
        };
        let up_to = up_to_seq.min(snapshot.last_seq);
        if up_to <= read_before {
            return Ok(Applied {
                conversation: Some(snapshot),
                ..Applied::default()
            });
        }
        let unread = self.cql.conv_unread(&user_id, &key, up_to).await?;
        snapshot.read_seq = up_to;
        snapshot.unread = unread;
        let mut w = Writes::default();
        self.cql.w_read_seq(&mut w, &user_id, &key, up_to)?;
        let event = v1::inbox_event::Kind::Read(v1::ReadState {
            conversation: Some(conversation.clone()),
            read_seq: up_to,
            unread,
        });
        let stored = self.event(&user_id, &user_id, event, now_ms).await?;
        self.cql.w_message(&mut w, &stored)?;
        let mut events = vec![stored.clone()];
        // A read receipt for the other user: the newest message of theirs
        // read now.
        if let Some(v1::peer::Target::User(other)) = conversation.target.as_ref() {
            if *other != user_id {
                if let Some(m) = self.newest_from(&user_id, &key, other, up_to).await? {
                    let receipt = v1::inbox_event::Kind::ReadReceipt(v1::ReadReceipt {
                        reader: user_id.clone(),
                        msg_id: m.message.msg_id.clone(),
                        sent_ms: m.message.server_time_ms,
                    });
                    let stored = self.event(other, &user_id, receipt, now_ms).await?;
                    self.cql.w_message(&mut w, &stored)?;
                    events.push(stored);
                }
            }
        }
        self.cql.commit(w).await?;
        Ok(Applied {
            event_seq: stored.seq,
            events,
            conversation: Some(snapshot),
            ..Applied::default()
        })
    }

    /// The newest chat message from `from` at or below `up_to` in a
    /// conversation.
    async fn newest_from(
        &self,
        owner: &str,
        key: &str,
        from: &str,
        up_to: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let mut hi = up_to;
        while hi > 0 {
            let seqs = self.cql.conv_seqs(owner, key, 1, hi, false, 50).await?;
            for &seq in &seqs {
                if let Some(m) = self.cql.read_one(owner, seq).await? {
                    if m.message.from_user == from && m.message.event.is_none() {
                        return Ok(Some(m));
                    }
                }
            }
            match seqs.last() {
                Some(&last) if seqs.len() == 50 => hi = last.saturating_sub(1),
                _ => break,
            }
        }
        Ok(None)
    }

    /// `mark_read` of a read-diffusion group: `up_to_seq` is a seq of the
    /// group's log; every write-diffused copy before the switch counts as
    /// read too.
    async fn mark_group_read(
        &self,
        user_id: &str,
        g: &str,
        conversation: v1::Peer,
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let Some(member) = self.cql.member(g, user_id).await? else {
            return Err(OpError::NotAMember);
        };
        let key = key_of(&conversation)?;
        let log = group_log(g);
        let (head, cursor, row, last) = tokio::try_join!(
            self.cql.inbox_head(&log),
            self.cql.group_cursor(g, user_id),
            self.cql.conv_row(user_id, &key),
            self.cql.conv_last(user_id, &key),
        )?;
        let row = row.unwrap_or_default();
        let last = last.unwrap_or(0);
        let inbox_unread = self.cql.conv_unread(user_id, &key, row.read_seq).await?;
        let read = cursor.max(up_to_seq.min(head)).max(member.joined_seq);
        let unread = self.log_unread(&log, user_id, read).await?;
        let snapshot = v1::Conversation {
            peer: Some(conversation.clone()),
            last_seq: last,
            read_seq: last.max(row.read_seq),
            unread,
            pinned: row.pinned,
            muted: row.muted,
            group_read_seq: read,
            group_head: head,
            ..Default::default()
        };
        let mut snapshot = snapshot;
        if head > member.joined_seq && head > 0 {
            if let Some(m) = self.cql.read_one(&log, head).await? {
                snapshot.updated_ms = m.message.server_time_ms;
                snapshot.last_message = Some(preview(&m.message));
            }
        }
        if read == cursor && inbox_unread == 0 {
            return Ok(Applied {
                conversation: Some(snapshot),
                ..Applied::default()
            });
        }
        let mut w = Writes::default();
        self.cql.w_group_cursor(&mut w, g, user_id, read)?;
        if last > row.read_seq {
            self.cql.w_read_seq(&mut w, user_id, &key, last)?;
        }
        let event = v1::inbox_event::Kind::Read(v1::ReadState {
            conversation: Some(conversation),
            read_seq: read,
            unread,
        });
        let stored = self.event(user_id, user_id, event, now_ms).await?;
        self.cql.w_message(&mut w, &stored)?;
        self.cql.commit(w).await?;
        Ok(Applied {
            event_seq: stored.seq,
            events: vec![stored],
            conversation: Some(snapshot),
            ..Applied::default()
        })
    }

    async fn set_flags(
        &self,
        user_id: String,
        conversation: v1::Peer,
        pinned: Option<bool>,
        muted: Option<bool>,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let key = key_of(&conversation)?;
        let Some(row) = self.cql.conv_row(&user_id, &key).await? else {
            return Err(OpError::NotFound);
        };
        let before = (row.pinned, row.muted);
        let after = (pinned.unwrap_or(row.pinned), muted.unwrap_or(row.muted));
        let Some(mut snapshot) = self.build(&user_id, row).await? else {
            return Err(OpError::NotFound);
        };
        (snapshot.pinned, snapshot.muted) = after;
        if before == after {
            return Ok(Applied {
                conversation: Some(snapshot),
                ..Applied::default()
            });
        }
        let mut w = Writes::default();
        self.cql.w_flags(&mut w, &user_id, &key, after.0, after.1);
        let event = v1::inbox_event::Kind::Flags(v1::ConversationFlags {
            conversation: Some(conversation),
            pinned: after.0,
            muted: after.1,
        });
        let stored = self.event(&user_id, &user_id, event, now_ms).await?;
        self.cql.w_message(&mut w, &stored)?;
        self.cql.commit(w).await?;
        Ok(Applied {
            event_seq: stored.seq,
            events: vec![stored],
            conversation: Some(snapshot),
            ..Applied::default()
        })
    }

    /// Recall and edit: rewrites every copy of the message and tells every
    /// inbox that held one, and the sender's, in one batch.
    async fn rewrite(&self, op: &ConversationOp) -> Result<Applied, OpError> {
        let (user_id, msg_id, now_ms) = Rewrite::target(op)?;
        let index = self.cql.copies(msg_id).await?;
        let reads: Vec<Pending<'_, Option<StoredMessage>>> = index
            .iter()
            .map(|(inbox, seq)| Box::pin(self.cql.read_one(inbox, *seq)) as Pending<'_, _>)
            .collect();
        let stored: Vec<StoredMessage> = bounded(reads).await?.into_iter().flatten().collect();
        let Some(first) = stored.first() else {
            return Err(OpError::NotFound);
        };
        if first.message.from_user != user_id {
            return Err(OpError::NotSender);
        }
        let rewrite = Rewrite::checked(op, &first.message)?;
        let mut w = Writes::default();
        let mut applied = Applied::default();
        let mut own_key = None;
        let events: Vec<Pending<'_, StoredMessage>> = stored
            .iter()
            .map(|copy| {
                let mut copy = copy.clone();
                rewrite.apply(&mut copy.message, now_ms);
                let peer = conversation_of(&copy.inbox, &copy.message);
                let event = rewrite.event(peer, &copy);
                Box::pin(async move { self.event(&copy.inbox, user_id, event, now_ms).await })
                    as Pending<'_, _>
            })
            .collect();
        let events = bounded(events).await?;
        for (mut copy, event) in stored.into_iter().zip(events) {
            rewrite.apply(&mut copy.message, now_ms);
            self.cql.w_message(&mut w, &copy)?;
            let peer = conversation_of(&copy.inbox, &copy.message);
            let key = key_of(&peer)?;
            if matches!(rewrite, Rewrite::Recall) && !copy.inbox.starts_with('#') {
                self.cql.w_not_unread(&mut w, &copy.inbox, &key, copy.seq)?;
            }
            self.cql.w_message(&mut w, &event)?;
            if copy.inbox == user_id {
                applied.event_seq = event.seq;
                own_key = Some(key);
            }
            applied.events.push(event);
            applied.rewritten.push(copy);
        }
        if own_key.is_none() {
            let event = rewrite.sender_event(user_id, msg_id, &applied.events);
            let event = self.event(user_id, user_id, event, now_ms).await?;
            self.cql.w_message(&mut w, &event)?;
            applied.event_seq = event.seq;
            applied.events.push(event);
        }
        self.cql.commit(w).await?;
        if let Some(key) = own_key {
            applied.conversation = self.current(user_id, &key).await?;
        }
        Ok(applied)
    }

    async fn delete(&self, user_id: String, seq: u64, now_ms: i64) -> Result<Applied, OpError> {
        let Some(mut stored) = self.cql.read_one(&user_id, seq).await? else {
            return Err(OpError::NotFound);
        };
        if stored.message.event.is_some() {
            return Err(OpError::NotFound);
        }
        let peer = conversation_of(&user_id, &stored.message);
        let key = key_of(&peer)?;
        let (stone, deleted) = tombstone(&stored.message, peer, seq);
        stored.message = stone;
        let mut w = Writes::default();
        self.cql.w_message(&mut w, &stored)?;
        self.cql.w_not_unread(&mut w, &user_id, &key, seq)?;
        let event = self
            .event(
                &user_id,
                &user_id,
                v1::inbox_event::Kind::Deleted(deleted),
                now_ms,
            )
            .await?;
        self.cql.w_message(&mut w, &event)?;
        self.cql.commit(w).await?;
        Ok(Applied {
            event_seq: event.seq,
            events: vec![event],
            rewritten: vec![stored],
            conversation: self.current(&user_id, &key).await?,
        })
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
        // Copies inside the batch, then earlier claims.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        let mut plans: Vec<Option<Plan>> = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            match first.get(&(p.sender.as_str(), p.client_msg_id.as_str())) {
                Some(&j) => plans.push(Some(Plan::SameAs(j))),
                None => {
                    first.insert((&p.sender, &p.client_msg_id), i);
                    plans.push(None);
                }
            }
        }
        let mut unique = Vec::new();
        let mut lookups: Vec<Pending<'_, Option<Claim>>> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            if plans[i].is_none() {
                unique.push(i);
                lookups.push(Box::pin(self.cql.read_claim(
                    &p.sender,
                    &p.client_msg_id,
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
        // Group posts are resolved (and ordered with group changes) in
        // batch order.
        let mut posts = batch;
        for (i, post) in posts.iter_mut().enumerate() {
            if !matches!(plans[i], Some(Plan::New)) {
                continue;
            }
            if post.inboxes.is_empty() {
                match self.group_inboxes(post).await? {
                    Ok(inboxes) => post.inboxes = inboxes,
                    Err(refused) => plans[i] = Some(Plan::Refused(refused)),
                }
            }
        }
        // Seqs per inbox, in batch order.
        let mut per_inbox: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for (i, post) in posts.iter().enumerate() {
            if matches!(plans[i], Some(Plan::New)) {
                for (k, inbox) in post.inboxes.iter().enumerate() {
                    per_inbox.entry(inbox.as_str()).or_default().push((i, k));
                }
            }
        }
        let inboxes: Vec<(&str, &Vec<(usize, usize)>)> =
            per_inbox.iter().map(|(k, v)| (*k, v)).collect();
        let allocations: Vec<Pending<'_, u64>> = inboxes
            .iter()
            .map(|(inbox, idx)| {
                Box::pin(self.seqs.allocate(inbox, idx.len() as u64)) as Pending<'_, _>
            })
            .collect();
        let mut seqs: Vec<Vec<u64>> = posts.iter().map(|p| vec![0; p.inboxes.len()]).collect();
        for ((_, idx), first_seq) in inboxes.iter().zip(bounded(allocations).await?) {
            for (n, &(i, k)) in idx.iter().enumerate() {
                seqs[i][k] = first_seq + n as u64;
            }
        }
        // Claim and write; resends answered (and completed) from the store.
        let work: Vec<Pending<'_, Option<Result<Posted, OpError>>>> = posts
            .iter()
            .enumerate()
            .map(|(i, post)| {
                let seqs = &seqs[i];
                let fut: Pending<'_, _> = match plans[i].take() {
                    Some(Plan::New) => Box::pin(async move {
                        if post.inboxes.is_empty() {
                            return Err(StoreError::Invalid(
                                "a post needs at least one inbox".into(),
                            ));
                        }
                        Ok(Some(Ok(self.store_post(post, seqs).await?)))
                    }),
                    Some(Plan::Resend(claim)) => {
                        Box::pin(async move { Ok(Some(Ok(self.resend_post(post, claim).await?))) })
                    }
                    Some(Plan::Refused(e)) => Box::pin(async move { Ok(Some(Err(e))) }),
                    Some(Plan::SameAs(j)) => {
                        plans[i] = Some(Plan::SameAs(j));
                        Box::pin(async { Ok(None) })
                    }
                    None => Box::pin(async { Ok(None) }),
                };
                fut
            })
            .collect();
        let mut out: Vec<Result<Posted, OpError>> = Vec::with_capacity(posts.len());
        for (i, result) in bounded(work).await?.into_iter().enumerate() {
            let result = match (result, &plans[i]) {
                (Some(r), _) => r,
                (None, Some(Plan::SameAs(j))) => match &out[*j] {
                    Ok(posted) => Ok(Posted {
                        copies: posted.copies.clone(),
                        duplicate: true,
                    }),
                    Err(e) => Err(e.clone()),
                },
                (None, _) => return Err(StoreError::Invalid("post planning failed".into())),
            };
            out.push(result);
        }
        Ok(out)
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
        match op {
            ConversationOp::MarkRead {
                user,
                conversation,
                up_to_seq,
                now_ms,
            } => self.mark_read(user, conversation, up_to_seq, now_ms).await,
            ConversationOp::Delivered {
                recipient,
                sender,
                msg_id,
                sent_ms,
                now_ms,
            } => {
                // Once per (recipient, msg_id), whichever device and node
                // acknowledged it first.
                let claimed = self
                    .social
                    .exec(
                        &self.social.receipt_claim,
                        (recipient.as_str(), msg_id.as_str()),
                    )
                    .await?;
                if !crate::cql::social::applied(claimed)? {
                    return Ok(Applied::default());
                }
                let receipt = crate::conversations::delivery_receipt(&recipient, msg_id, sent_ms);
                let stored = self.event(&sender, &recipient, receipt, now_ms).await?;
                self.cql.insert_message(&stored).await?;
                Ok(Applied::appended(vec![stored]))
            }
            ConversationOp::SetFlags {
                user,
                conversation,
                pinned,
                muted,
                now_ms,
            } => {
                self.set_flags(user, conversation, pinned, muted, now_ms)
                    .await
            }
            op @ (ConversationOp::Recall { .. } | ConversationOp::Edit { .. }) => {
                self.rewrite(&op).await
            }
            ConversationOp::Delete { user, seq, now_ms } => self.delete(user, seq, now_ms).await,
        }
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
