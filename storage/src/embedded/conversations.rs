//! The embedded backend's [`ConversationStore`]: posts, conversation records
//! and message operations, written by the same writer thread as appends.
//!
//! The writer takes posts and operations in arrival order. Consecutive posts
//! are staged into one fjall batch (one fsync); an operation first commits
//! the posts before it, then runs in a batch of its own, so it reads every
//! earlier write from disk. Conversation records touched by several
//! messages of one batch are kept in an overlay and written once.
//!
//! # Keys (besides the message, idempotency and cursor keys)
//! - `conversations`: `[len][user][convkey]` → protobuf `v1.Conversation`.
//! - `conv_order`: `[len][user][0 = pinned | 1][!last_seq u64 BE][convkey]`
//!   → empty; a prefix scan lists conversations in list order.
//! - `conv_msgs`: `[len][user][len][convkey][seq u64 BE]` → one byte, 1 when
//!   the copy counts as unread above the read cursor (from someone else,
//!   not recalled or deleted), else 0. Unread counts are recounted from it.
//! - `msg_ids`: `[msg_id]` → the copies, `([len][inbox][seq u64 BE])*`.

use std::collections::HashMap;

use async_trait::async_trait;
use fjall::PersistMode;
use prost::Message as _;
use qim_proto::v1;
use tokio::sync::oneshot;

use super::groups::{load_group, load_member};
use super::{
    EmbeddedStore, Op, Writer, check_key_part, decode_message, idempotency_key, message_key,
    prefixed, read_head, split_message_key, unavailable,
};
use crate::conversations::{
    Applied, ConversationOp, ConversationPage, ConversationStore, HistoryAnchor, HistoryPage,
    OpError, Post, Posted, Rewrite, Walk, conversation_of, counts_as_unread, event_message,
    group_log, history_step, peer_key, preview, seq_bounds, tombstone,
};
use crate::model::new_msg_id;
use crate::{StoreError, StoredMessage};

/// Conversations returned per page at most.
const MAX_PAGE: usize = 500;

type PostReply = oneshot::Sender<Result<Vec<Result<Posted, OpError>>, StoreError>>;
type GroupReply = oneshot::Sender<Result<v1::GroupInfo, OpError>>;

/// A request for the writer thread.
pub(super) enum Request {
    Post(Vec<Post>, PostReply),
    Apply(ConversationOp, oneshot::Sender<Result<Applied, OpError>>),
    Group {
        group: String,
        by: String,
        op: crate::groups::GroupOp,
        threshold: u32,
        reply: GroupReply,
    },
    Contact {
        user: String,
        op: crate::contacts::ContactOp,
        now_ms: i64,
        reply: oneshot::Sender<Result<Applied, OpError>>,
    },
    Schedule(super::schedule::Request),
    /// Deletes expired messages (see [`Writer::sweep`]).
    Sweep {
        cutoff_ms: i64,
        from: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<Swept, StoreError>>,
    },
}

/// What one sweep step deleted, and where the next one starts (`None`:
/// the whole store was looked at).
pub(super) type Swept = (usize, Option<Vec<u8>>);

/// Messages one sweep step deletes at most (one commit).
const SWEEP_STEP: usize = 1000;

impl Request {
    pub(super) fn fail(self, error: StoreError) {
        match self {
            Request::Post(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Request::Apply(_, reply) => {
                let _ = reply.send(Err(OpError::Store(error)));
            }
            Request::Group { reply, .. } => {
                let _ = reply.send(Err(OpError::Store(error)));
            }
            Request::Contact { reply, .. } => {
                let _ = reply.send(Err(OpError::Store(error)));
            }
            Request::Schedule(request) => request.fail(error),
            Request::Sweep { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

pub(super) fn conv_key(user: &str, convkey: &str) -> Vec<u8> {
    let mut key = prefixed(user, convkey.len());
    key.extend_from_slice(convkey.as_bytes());
    key
}

pub(super) fn order_key(user: &str, conv: &v1::Conversation, convkey: &str) -> Vec<u8> {
    let mut key = prefixed(user, 9 + convkey.len());
    key.push(if conv.pinned { 0 } else { 1 });
    key.extend_from_slice(&(!conv.last_seq).to_be_bytes());
    key.extend_from_slice(convkey.as_bytes());
    key
}

fn conv_msg_prefix(user: &str, convkey: &str) -> Vec<u8> {
    let mut key = prefixed(user, 1 + convkey.len() + 8);
    key.push(convkey.len() as u8);
    key.extend_from_slice(convkey.as_bytes());
    key
}

fn conv_msg_key(user: &str, convkey: &str, seq: u64) -> Vec<u8> {
    let mut key = conv_msg_prefix(user, convkey);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn encode_copies(copies: &[(String, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (inbox, seq) in copies {
        out.push(inbox.len() as u8);
        out.extend_from_slice(inbox.as_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
    }
    out
}

fn decode_copies(mut bytes: &[u8]) -> Result<Vec<(String, u64)>, StoreError> {
    let corrupt = || StoreError::Corrupt("bad msg_id index entry".into());
    let mut out = Vec::new();
    while let Some((&len, rest)) = bytes.split_first() {
        let len = usize::from(len);
        if rest.len() < len + 8 {
            return Err(corrupt());
        }
        let inbox = std::str::from_utf8(&rest[..len]).map_err(|_| corrupt())?;
        let seq: [u8; 8] = rest[len..len + 8].try_into().map_err(|_| corrupt())?;
        out.push((inbox.to_owned(), u64::from_be_bytes(seq)));
        bytes = &rest[len + 8..];
    }
    Ok(out)
}

/// A conversation record being changed, with where it sat in the list on
/// disk.
struct Conv {
    conv: v1::Conversation,
    on_disk_order: Option<Vec<u8>>,
}

/// Batch rows a one-to-one post usually writes: a message and a
/// conversation entry in each of two inboxes (the recipient's and the
/// sender's sync copy), unread and order rows, the idempotency key and the
/// message id index.
const ROWS_PER_POST: usize = 8;

/// One atomic write of the IM layer.
pub(super) struct Stage {
    pub(super) batch: fjall::OwnedWriteBatch,
    convs: HashMap<(String, String), Conv>,
}

/// Maps the writer keeps from one commit to the next, emptied, so a commit
/// does not allocate them afresh: new pages for them (zeroed by the kernel
/// on first touch) were 7% of the writer thread's time at a fixed 38,772
/// messages/s. (The batch's own vector cannot be kept: fjall consumes it.)
#[derive(Default)]
pub(super) struct Scratch {
    convs: HashMap<(String, String), Conv>,
    posted: HashMap<Vec<u8>, Posted>,
}

impl Writer {
    /// Handles the IM requests of one group in arrival order.
    pub(super) fn commit_im(&mut self, requests: Vec<Request>) {
        let mut posts = Vec::new();
        for request in requests {
            match request {
                Request::Post(batch, reply) => posts.push((batch, reply)),
                Request::Apply(op, reply) => {
                    self.commit_posts(std::mem::take(&mut posts));
                    let result = match &self.failed {
                        Some(reason) => Err(OpError::Store(StoreError::Failed(reason.clone()))),
                        None => self.apply_op(op),
                    };
                    let _ = reply.send(result);
                }
                Request::Group {
                    group,
                    by,
                    op,
                    threshold,
                    reply,
                } => {
                    self.commit_posts(std::mem::take(&mut posts));
                    let result = match &self.failed {
                        Some(reason) => Err(OpError::Store(StoreError::Failed(reason.clone()))),
                        None => self.group_op(&group, &by, op, threshold),
                    };
                    let _ = reply.send(result);
                }
                Request::Contact {
                    user,
                    op,
                    now_ms,
                    reply,
                } => {
                    self.commit_posts(std::mem::take(&mut posts));
                    let result = match &self.failed {
                        Some(reason) => Err(OpError::Store(StoreError::Failed(reason.clone()))),
                        None => self.contact_op(&user, op, now_ms),
                    };
                    let _ = reply.send(result);
                }
                Request::Schedule(request) => {
                    self.commit_posts(std::mem::take(&mut posts));
                    match &self.failed {
                        Some(reason) => request.fail(StoreError::Failed(reason.clone())),
                        None => self.schedule_op(request),
                    }
                }
                Request::Sweep {
                    cutoff_ms,
                    from,
                    reply,
                } => {
                    self.commit_posts(std::mem::take(&mut posts));
                    let result = match &self.failed {
                        Some(reason) => Err(StoreError::Failed(reason.clone())),
                        None => self.sweep(cutoff_ms, from),
                    };
                    let _ = reply.send(result);
                }
            }
        }
        self.commit_posts(posts);
    }

    /// Deletes messages stored before `cutoff_ms`, inbox by inbox in key
    /// order from `from`, at most [`SWEEP_STEP`] in one durable commit.
    ///
    /// - An inbox's newest message is never deleted: it holds the inbox's
    ///   head, from which the next seq is counted (deleting it would let a
    ///   seq be issued twice).
    /// - Within an inbox, deletion stops at the first message that is not
    ///   expired (seqs follow time).
    /// - A deleted copy that counted as unread is taken off its
    ///   conversation's unread count; its conversation index entry stays
    ///   (marked read), so history knows something was there and answers
    ///   "older messages expired" rather than leaving a silent gap.
    /// - Its idempotency key goes too: a resend after the retention is a
    ///   new message.
    pub(super) fn sweep(
        &mut self,
        cutoff_ms: i64,
        from: Option<Vec<u8>>,
    ) -> Result<Swept, StoreError> {
        use std::ops::Bound;
        let t = self.tables.clone();
        let mut stage = self.new_stage();
        let mut deleted = 0;
        let mut start = from.map_or(Bound::Unbounded, Bound::Included);
        let next = loop {
            let Some(guard) = t.messages.range((start.clone(), Bound::Unbounded)).next() else {
                break None;
            };
            let (first, _) = guard.into_inner().map_err(unavailable)?;
            let len = usize::from(*first.first().unwrap_or(&0));
            if first.len() != 1 + len + 8 {
                return Err(StoreError::Corrupt("bad message key".into()));
            }
            let prefix = first[..1 + len].to_vec();
            let inbox = String::from_utf8_lossy(&prefix[1..]).into_owned();
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xff; 8]);
            let newest = t
                .messages
                .prefix(&prefix)
                .next_back()
                .map(|g| g.into_inner().map(|(k, _)| k))
                .transpose()
                .map_err(unavailable)?;
            let mut resume = None;
            for guard in t.messages.prefix(&prefix) {
                let (key, value) = guard.into_inner().map_err(unavailable)?;
                if Some(&key) == newest.as_ref() {
                    break;
                }
                if deleted == SWEEP_STEP {
                    resume = Some(key.to_vec());
                    break;
                }
                let m = decode_message(&inbox, &key, &value)?;
                if m.message.server_time_ms >= cutoff_ms {
                    break;
                }
                stage.batch.remove(&t.messages, key.to_vec());
                if m.message.event.is_none() && !m.message.client_msg_id.is_empty() {
                    stage.batch.remove(
                        &t.idempotency,
                        super::idempotency_key(&m.message.from_user, &m.message.client_msg_id),
                    );
                }
                if !inbox.starts_with('#') {
                    self.expire_copy(&mut stage, &m)?;
                }
                deleted += 1;
            }
            if let Some(resume) = resume {
                break Some(resume);
            }
            start = Bound::Excluded(end);
        };
        if deleted > 0 {
            self.commit_stage(stage)?;
        }
        Ok((deleted, next))
    }

    /// An expired copy leaves its conversation's unread count.
    fn expire_copy(&self, stage: &mut Stage, m: &StoredMessage) -> Result<(), StoreError> {
        let peer = conversation_of(&m.inbox, &m.message);
        let Some(convkey) = peer_key(&peer) else {
            return Ok(());
        };
        let key = conv_msg_key(&m.inbox, &convkey, m.seq);
        let was_unread = self.counts_as_unread(&key)?;
        if !was_unread {
            return Ok(());
        }
        stage.batch.insert(&self.tables.conv_msgs, key, vec![0]);
        if let Some(conv) = self.conv(stage, &m.inbox, &peer, false)? {
            if m.seq > conv.conv.read_seq {
                conv.conv.unread = conv.conv.unread.saturating_sub(1);
            }
        }
        Ok(())
    }

    pub(super) fn new_stage(&mut self) -> Stage {
        self.new_stage_for(0)
    }

    /// Whether the conversation entry at `key` is a copy that counts as
    /// unread (its value is `[1]`).
    fn counts_as_unread(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .tables
            .conv_msgs
            .get(key)
            .map_err(unavailable)?
            .as_deref()
            == Some(&[1][..]))
    }

    /// A stage sized for `posts` posts: a batch grows one entry at a time,
    /// and regrowing a group commit of hundreds of posts (a few rows per
    /// copy) was 12% of the writer thread's time in a flat-out chat run.
    fn new_stage_for(&mut self, posts: usize) -> Stage {
        Stage {
            batch: fjall::OwnedWriteBatch::with_capacity(
                self.tables.db.clone(),
                posts.saturating_mul(ROWS_PER_POST),
            ),
            convs: std::mem::take(&mut self.scratch.convs),
        }
    }

    fn next_seq(&mut self, inbox: &str) -> Result<u64, StoreError> {
        let head = match self.heads.get(inbox) {
            Some(head) => *head,
            None => read_head(&self.tables.messages, inbox)?,
        };
        self.heads.insert(inbox.to_owned(), head + 1);
        Ok(head + 1)
    }

    /// Writes the stage durably; on failure the store takes no more writes.
    pub(super) fn commit_stage(&mut self, stage: Stage) -> Result<(), StoreError> {
        let Stage {
            mut batch,
            mut convs,
        } = stage;
        for ((user, convkey), conv) in convs.drain() {
            let order = order_key(&user, &conv.conv, &convkey);
            if let Some(old) = conv.on_disk_order {
                if old != order {
                    batch.remove(&self.tables.conv_order, old);
                }
            }
            batch.insert(&self.tables.conv_order, order, Vec::new());
            batch.insert(
                &self.tables.conversations,
                conv_key(&user, &convkey),
                conv.conv.encode_to_vec(),
            );
        }
        self.scratch.convs = convs;
        let batch = batch.durability(Some(PersistMode::SyncAll));
        batch.commit().map_err(|e| {
            tracing::error!(error = %e, "store commit failed; the store takes no more writes until restarted");
            self.failed = Some(e.to_string());
            StoreError::Failed(e.to_string())
        })
    }

    /// A staging error leaves seq heads advanced for nothing: forget them,
    /// they are reloaded from disk.
    pub(super) fn abandon_stage(&mut self) {
        self.heads.clear();
    }

    fn commit_posts(&mut self, posts: Vec<(Vec<Post>, PostReply)>) {
        if posts.is_empty() {
            return;
        }
        if let Some(reason) = &self.failed {
            let error = StoreError::Failed(reason.clone());
            for (_, reply) in posts {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        let mut stage = self.new_stage_for(posts.iter().map(|(batch, _)| batch.len()).sum());
        let mut pending = std::mem::take(&mut self.scratch.posted);
        let mut outs = Vec::with_capacity(posts.len());
        let mut replies = Vec::with_capacity(posts.len());
        let mut failure = None;
        for (batch, reply) in posts {
            replies.push(reply);
            if failure.is_some() {
                continue;
            }
            let mut out = Vec::with_capacity(batch.len());
            for post in batch {
                match self.stage_post(&mut stage, &mut pending, post) {
                    Ok(result) => out.push(result),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            outs.push(out);
        }
        let result = match failure {
            Some(e) => {
                tracing::warn!(error = %e, "posts refused: staging failed");
                self.abandon_stage();
                Err(e)
            }
            None => self.commit_stage(stage),
        };
        pending.clear();
        self.scratch.posted = pending;
        match result {
            Ok(()) => {
                for (out, reply) in outs.into_iter().zip(replies) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    pub(super) fn stage_post(
        &mut self,
        stage: &mut Stage,
        pending: &mut HashMap<Vec<u8>, Posted>,
        post: Post,
    ) -> Result<Result<Posted, OpError>, StoreError> {
        check_key_part(&post.sender)?;
        let idem_key = idempotency_key(&post.sender, &post.client_msg_id);
        if let Some(original) = pending.get(&idem_key) {
            let mut original = original.clone();
            original.duplicate = true;
            return Ok(Ok(original));
        }
        if let Some(msg_key) = self
            .tables
            .idempotency
            .get(&idem_key)
            .map_err(unavailable)?
        {
            let copies = self.copies_of_key(&msg_key)?;
            return Ok(Ok(Posted {
                copies,
                duplicate: true,
            }));
        }
        let mut post = post;
        if post.inboxes.is_empty() {
            match self.group_inboxes(&post)? {
                Ok(inboxes) => post.inboxes = inboxes,
                Err(refused) => return Ok(Err(refused)),
            }
        }
        for inbox in &post.inboxes {
            check_key_part(inbox)?;
        }
        let msg_id = new_msg_id(post.server_time_ms);
        let message = post.to_message(msg_id.clone());
        let mut copies = Vec::with_capacity(post.inboxes.len());
        for inbox in &post.inboxes {
            let seq = self.next_seq(inbox)?;
            let stored = StoredMessage {
                inbox: inbox.clone(),
                seq,
                message: message.clone(),
            };
            stage.batch.insert(
                &self.tables.messages,
                message_key(inbox, seq),
                stored.message.encode_to_vec(),
            );
            self.touch(stage, &stored)?;
            copies.push(stored);
        }
        let index: Vec<(String, u64)> = copies.iter().map(|c| (c.inbox.clone(), c.seq)).collect();
        stage.batch.insert(
            &self.tables.idempotency,
            idem_key.clone(),
            message_key(&copies[0].inbox, copies[0].seq),
        );
        stage.batch.insert(
            &self.tables.msg_ids,
            msg_id.into_bytes(),
            encode_copies(&index),
        );
        let posted = Posted {
            copies,
            duplicate: false,
        };
        pending.insert(idem_key, posted.clone());
        Ok(Ok(posted))
    }

    /// Every copy of the message stored under `msg_key` (the primary).
    fn copies_of_key(&self, msg_key: &[u8]) -> Result<Vec<StoredMessage>, StoreError> {
        let (inbox, seq) = split_message_key(msg_key)?;
        let primary = self
            .read_message(&inbox, seq)?
            .ok_or_else(|| StoreError::Corrupt("idempotency key without its message".into()))?;
        let Some(index) = self
            .tables
            .msg_ids
            .get(primary.message.msg_id.as_bytes())
            .map_err(unavailable)?
        else {
            // Stored by `append`, which keeps one copy and no index.
            return Ok(vec![primary]);
        };
        let mut out = Vec::new();
        for (inbox, seq) in decode_copies(&index)? {
            if let Some(copy) = self.read_message(&inbox, seq)? {
                out.push(copy);
            }
        }
        Ok(out)
    }

    fn read_message(&self, inbox: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let key = message_key(inbox, seq);
        match self.tables.messages.get(&key).map_err(unavailable)? {
            Some(value) => Ok(Some(decode_message(inbox, &key, &value)?)),
            None => Ok(None),
        }
    }

    /// The conversation record of `(user, convkey)`, loaded into the stage.
    fn conv<'s>(
        &self,
        stage: &'s mut Stage,
        user: &str,
        peer: &v1::Peer,
        create: bool,
    ) -> Result<Option<&'s mut Conv>, StoreError> {
        let convkey = peer_key(peer).ok_or_else(|| StoreError::Invalid("empty peer".into()))?;
        check_key_part(&convkey)?;
        let id = (user.to_owned(), convkey.clone());
        if !stage.convs.contains_key(&id) {
            let loaded = load_conv(&self.tables.conversations, user, &convkey)?;
            let conv = match loaded {
                Some(conv) => Conv {
                    on_disk_order: Some(order_key(user, &conv, &convkey)),
                    conv,
                },
                None if create => Conv {
                    conv: v1::Conversation {
                        peer: Some(peer.clone()),
                        ..Default::default()
                    },
                    on_disk_order: None,
                },
                None => return Ok(None),
            };
            stage.convs.insert(id.clone(), conv);
        }
        Ok(stage.convs.get_mut(&id))
    }

    /// Records a new copy in its owner's conversation.
    fn touch(&self, stage: &mut Stage, stored: &StoredMessage) -> Result<(), StoreError> {
        let owner = &stored.inbox;
        if owner.starts_with('#') {
            // A group log has no conversations of its own.
            return Ok(());
        }
        let peer = conversation_of(owner, &stored.message);
        let unread = counts_as_unread(owner, &stored.message);
        let convkey = peer_key(&peer).ok_or_else(|| StoreError::Invalid("empty peer".into()))?;
        stage.batch.insert(
            &self.tables.conv_msgs,
            conv_msg_key(owner, &convkey, stored.seq),
            vec![u8::from(unread)],
        );
        let Some(conv) = self.conv(stage, owner, &peer, true)? else {
            return Ok(());
        };
        let c = &mut conv.conv;
        c.last_message = Some(preview(&stored.message));
        c.last_seq = stored.seq;
        c.updated_ms = stored.message.server_time_ms;
        if unread {
            c.unread += 1;
        }
        Ok(())
    }

    /// Appends an event to `inbox` in the stage.
    pub(super) fn stage_event(
        &mut self,
        stage: &mut Stage,
        inbox: &str,
        from_user: &str,
        event: v1::inbox_event::Kind,
        now_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        check_key_part(inbox)?;
        let seq = self.next_seq(inbox)?;
        let stored = StoredMessage {
            inbox: inbox.to_owned(),
            seq,
            message: event_message(from_user, event, now_ms),
        };
        stage.batch.insert(
            &self.tables.messages,
            message_key(inbox, seq),
            stored.message.encode_to_vec(),
        );
        Ok(stored)
    }

    /// Unread copies of a conversation above `after`.
    fn count_unread(&self, user: &str, convkey: &str, after: u64) -> Result<u32, StoreError> {
        let start = conv_msg_key(user, convkey, after.saturating_add(1));
        let end = conv_msg_key(user, convkey, u64::MAX);
        let mut n: u32 = 0;
        for guard in self.tables.conv_msgs.range(start..=end) {
            let (_, value) = guard.into_inner().map_err(unavailable)?;
            if value.first() == Some(&1) {
                n = n.saturating_add(1);
            }
        }
        Ok(n)
    }

    fn apply_op(&mut self, op: ConversationOp) -> Result<Applied, OpError> {
        let mut stage = self.new_stage();
        let result = self.stage_op(&mut stage, op);
        match result {
            Ok(applied) => {
                self.commit_stage(stage)?;
                Ok(applied)
            }
            Err(e) => {
                self.abandon_stage();
                Err(e)
            }
        }
    }

    fn stage_op(&mut self, stage: &mut Stage, op: ConversationOp) -> Result<Applied, OpError> {
        match op {
            ConversationOp::MarkRead {
                user,
                conversation,
                up_to_seq,
                now_ms,
            } => {
                check_key_part(&user)?;
                if let Some(v1::peer::Target::Group(group)) = conversation.target.as_ref() {
                    if let Some(info) = load_group(&self.tables.groups, group)? {
                        if info.read_diffusion {
                            let group = group.clone();
                            return self.mark_group_read(
                                stage,
                                &user,
                                &group,
                                conversation,
                                up_to_seq,
                                now_ms,
                            );
                        }
                    }
                }
                let convkey = peer_key(&conversation).ok_or(OpError::NotFound)?;
                let Some(conv) = self.conv(stage, &user, &conversation, false)? else {
                    return Err(OpError::NotFound);
                };
                let up_to = up_to_seq.min(conv.conv.last_seq);
                if up_to <= conv.conv.read_seq {
                    let conversation = conv.conv.clone();
                    // Nothing changes: write nothing.
                    stage.convs.clear();
                    return Ok(Applied {
                        conversation: Some(conversation),
                        ..Applied::default()
                    });
                }
                let unread = self.count_unread(&user, &convkey, up_to)?;
                let Some(conv) = self.conv(stage, &user, &conversation, false)? else {
                    return Err(OpError::NotFound);
                };
                conv.conv.read_seq = up_to;
                conv.conv.unread = unread;
                let snapshot = conv.conv.clone();
                let other = match conversation.target.as_ref() {
                    Some(v1::peer::Target::User(other)) if *other != user => Some(other.clone()),
                    _ => None,
                };
                let event = v1::inbox_event::Kind::Read(v1::ReadState {
                    conversation: Some(conversation),
                    read_seq: up_to,
                    unread,
                });
                let stored = self.stage_event(stage, &user, &user, event, now_ms)?;
                let mut events = vec![stored.clone()];
                // A read receipt for the other user: the newest message of
                // theirs read now.
                if let Some(other) = other {
                    let start = conv_msg_key(&user, &convkey, 1);
                    let end = conv_msg_key(&user, &convkey, up_to);
                    let mut newest = None;
                    for guard in self.tables.conv_msgs.range(start..=end).rev() {
                        let (key, _) = guard.into_inner().map_err(unavailable)?;
                        let seq: [u8; 8] = key[key.len() - 8..].try_into().map_err(|_| {
                            StoreError::Corrupt("bad conversation index key".into())
                        })?;
                        if let Some(m) = self.read_message(&user, u64::from_be_bytes(seq))? {
                            if m.message.from_user == other && m.message.event.is_none() {
                                newest = Some(m);
                                break;
                            }
                        }
                    }
                    if let Some(m) = newest {
                        let receipt = v1::inbox_event::Kind::ReadReceipt(v1::ReadReceipt {
                            reader: user.clone(),
                            msg_id: m.message.msg_id.clone(),
                            sent_ms: m.message.server_time_ms,
                        });
                        events.push(self.stage_event(stage, &other, &user, receipt, now_ms)?);
                    }
                }
                Ok(Applied {
                    event_seq: stored.seq,
                    events,
                    conversation: Some(snapshot),
                    ..Applied::default()
                })
            }
            ConversationOp::Delivered {
                recipient,
                sender,
                msg_id,
                sent_ms,
                now_ms,
            } => {
                check_key_part(&recipient)?;
                let mut key = super::prefixed(&recipient, msg_id.len());
                key.extend_from_slice(msg_id.as_bytes());
                if self
                    .tables
                    .receipts
                    .contains_key(&key)
                    .map_err(unavailable)?
                {
                    return Ok(Applied::default());
                }
                stage.batch.insert(&self.tables.receipts, key, Vec::new());
                let receipt = crate::conversations::delivery_receipt(&recipient, msg_id, sent_ms);
                let stored = self.stage_event(stage, &sender, &recipient, receipt, now_ms)?;
                Ok(Applied::appended(vec![stored]))
            }
            ConversationOp::SetFlags {
                user,
                conversation,
                pinned,
                muted,
                now_ms,
            } => {
                check_key_part(&user)?;
                let Some(conv) = self.conv(stage, &user, &conversation, false)? else {
                    return Err(OpError::NotFound);
                };
                let before = (conv.conv.pinned, conv.conv.muted);
                if let Some(p) = pinned {
                    conv.conv.pinned = p;
                }
                if let Some(m) = muted {
                    conv.conv.muted = m;
                }
                let after = (conv.conv.pinned, conv.conv.muted);
                let snapshot = conv.conv.clone();
                if before == after {
                    stage.convs.clear();
                    return Ok(Applied {
                        conversation: Some(snapshot),
                        ..Applied::default()
                    });
                }
                let event = v1::inbox_event::Kind::Flags(v1::ConversationFlags {
                    conversation: Some(conversation),
                    pinned: after.0,
                    muted: after.1,
                });
                let stored = self.stage_event(stage, &user, &user, event, now_ms)?;
                Ok(Applied {
                    event_seq: stored.seq,
                    events: vec![stored],
                    conversation: Some(snapshot),
                    ..Applied::default()
                })
            }
            op @ (ConversationOp::Recall { .. } | ConversationOp::Edit { .. }) => {
                self.rewrite(stage, &op)
            }
            ConversationOp::Delete { user, seq, now_ms } => {
                check_key_part(&user)?;
                let Some(mut stored) = self.read_message(&user, seq)? else {
                    return Err(OpError::NotFound);
                };
                if stored.message.event.is_some() {
                    return Err(OpError::NotFound);
                }
                let peer = conversation_of(&user, &stored.message);
                let convkey = peer_key(&peer).ok_or(OpError::NotFound)?;
                let (stone, deleted) = tombstone(&stored.message, peer.clone(), seq);
                stored.message = stone;
                stage.batch.insert(
                    &self.tables.messages,
                    message_key(&user, seq),
                    stored.message.encode_to_vec(),
                );
                self.uncount(stage, &user, &peer, &convkey, seq, None)?;
                let rewritten = vec![stored.clone()];
                let event = self.stage_event(
                    stage,
                    &user,
                    &user,
                    v1::inbox_event::Kind::Deleted(deleted),
                    now_ms,
                )?;
                let conversation = self
                    .conv(stage, &user, &peer, false)?
                    .map(|c| c.conv.clone());
                Ok(Applied {
                    event_seq: event.seq,
                    events: vec![event],
                    rewritten,
                    conversation,
                })
            }
        }
    }

    /// `mark_read` of a read-diffusion group: `up_to_seq` is a seq of the
    /// group's log; every write-diffused message before the switch counts as
    /// read too.
    fn mark_group_read(
        &mut self,
        stage: &mut Stage,
        user: &str,
        group: &str,
        conversation: v1::Peer,
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let Some(member) = load_member(&self.tables.members, group, user)? else {
            return Err(OpError::NotAMember);
        };
        let log = group_log(group);
        let head = match self.heads.get(&log) {
            Some(h) => *h,
            None => read_head(&self.tables.messages, &log)?,
        };
        let Some(conv) = self.conv(stage, user, &conversation, true)? else {
            return Err(OpError::NotFound);
        };
        let read = conv
            .conv
            .group_read_seq
            .max(up_to_seq.min(head))
            .max(member.joined_seq);
        let changed = read != conv.conv.group_read_seq || conv.conv.unread != 0;
        conv.conv.group_read_seq = read;
        conv.conv.read_seq = conv.conv.last_seq;
        conv.conv.unread = 0;
        let mut snapshot = conv.conv.clone();
        let unread = count_log_unread(&self.tables.messages, &log, user, read)?;
        snapshot.unread = unread;
        snapshot.group_head = head;
        if !changed {
            stage.convs.clear();
            return Ok(Applied {
                conversation: Some(snapshot),
                ..Applied::default()
            });
        }
        let event = v1::inbox_event::Kind::Read(v1::ReadState {
            conversation: Some(conversation),
            read_seq: read,
            unread,
        });
        let stored = self.stage_event(stage, user, user, event, now_ms)?;
        Ok(Applied {
            event_seq: stored.seq,
            events: vec![stored],
            conversation: Some(snapshot),
            ..Applied::default()
        })
    }

    /// Marks the copy at `seq` as no longer unread (recalled or deleted),
    /// fixing the owner's unread count, and replaces `last_message` if the
    /// copy was the newest.
    fn uncount(
        &self,
        stage: &mut Stage,
        owner: &str,
        peer: &v1::Peer,
        convkey: &str,
        seq: u64,
        replacement: Option<&v1::Message>,
    ) -> Result<(), StoreError> {
        let key = conv_msg_key(owner, convkey, seq);
        let was_unread = self.counts_as_unread(&key)?;
        stage.batch.insert(&self.tables.conv_msgs, key, vec![0]);
        if let Some(conv) = self.conv(stage, owner, peer, false)? {
            if was_unread && seq > conv.conv.read_seq {
                conv.conv.unread = conv.conv.unread.saturating_sub(1);
            }
            if conv.conv.last_seq == seq {
                conv.conv.last_message = replacement.map(preview);
            }
        }
        Ok(())
    }

    /// Recall and edit: rewrites every copy of `msg_id` and tells every
    /// inbox that held one, and the sender's.
    fn rewrite(&mut self, stage: &mut Stage, op: &ConversationOp) -> Result<Applied, OpError> {
        let (user, msg_id, now_ms) = Rewrite::target(op)?;
        check_key_part(user)?;
        let Some(index) = self
            .tables
            .msg_ids
            .get(msg_id.as_bytes())
            .map_err(unavailable)?
        else {
            return Err(OpError::NotFound);
        };
        let copies = decode_copies(&index)?;
        let mut stored = Vec::with_capacity(copies.len());
        for (inbox, seq) in copies {
            if let Some(copy) = self.read_message(&inbox, seq)? {
                stored.push(copy);
            }
        }
        let Some(first) = stored.first() else {
            return Err(OpError::NotFound);
        };
        if first.message.from_user != user {
            return Err(OpError::NotSender);
        }
        let rewrite = Rewrite::checked(op, &first.message)?;
        let mut applied = Applied::default();
        let mut sender_told = false;
        for mut copy in stored {
            rewrite.apply(&mut copy.message, now_ms);
            stage.batch.insert(
                &self.tables.messages,
                message_key(&copy.inbox, copy.seq),
                copy.message.encode_to_vec(),
            );
            let owner = copy.inbox.clone();
            let peer = conversation_of(&owner, &copy.message);
            let convkey = peer_key(&peer).ok_or(OpError::NotFound)?;
            match &rewrite {
                Rewrite::Recall => {
                    self.uncount(
                        stage,
                        &owner,
                        &peer,
                        &convkey,
                        copy.seq,
                        Some(&copy.message),
                    )?;
                }
                Rewrite::Edit { .. } => {
                    if let Some(conv) = self.conv(stage, &owner, &peer, false)? {
                        if conv.conv.last_seq == copy.seq {
                            conv.conv.last_message = Some(preview(&copy.message));
                        }
                    }
                }
            }
            let event = rewrite.event(peer, &copy);
            let event = self.stage_event(stage, &owner, user, event, now_ms)?;
            if owner == user {
                sender_told = true;
                applied.event_seq = event.seq;
                applied.conversation = self
                    .conv(
                        stage,
                        &owner,
                        &conversation_of(&owner, &copy.message),
                        false,
                    )?
                    .map(|c| c.conv.clone());
            }
            applied.events.push(event);
            applied.rewritten.push(copy);
        }
        if !sender_told {
            // Without a copy of their own, the sender's other devices still
            // learn.
            let event = rewrite.sender_event(user, msg_id, &applied.events);
            let event = self.stage_event(stage, user, user, event, now_ms)?;
            applied.event_seq = event.seq;
            applied.events.push(event);
        }
        Ok(applied)
    }
}

/// History entries read at most per page.
const MAX_HISTORY: usize = 1000;

/// Walks seqs of one history in the asked direction, reading each
/// message, until the page is full (and one more shows there is more).
fn walk(
    keys: impl DoubleEndedIterator<Item = fjall::Guard>,
    forward: bool,
    anchor: HistoryAnchor,
    limit: usize,
    cutoff_ms: i64,
    mut read: impl FnMut(&[u8], &[u8]) -> Result<Option<StoredMessage>, StoreError>,
) -> Result<HistoryPage, StoreError> {
    let keys: Box<dyn Iterator<Item = fjall::Guard>> = if forward {
        Box::new(keys)
    } else {
        Box::new(keys.rev())
    };
    let mut page = HistoryPage::default();
    for guard in keys {
        let (key, value) = guard.into_inner().map_err(unavailable)?;
        let Some(m) = read(&key, &value)? else {
            // Indexed but gone: deleted by the retention sweep.
            page.expired = true;
            if forward {
                continue;
            }
            break;
        };
        if history_step(&mut page, m, forward, anchor, limit, cutoff_ms) == Walk::Done {
            break;
        }
    }
    Ok(page)
}

/// Messages of a group log after `after` that count as unread for `user`.
fn count_log_unread(
    messages: &fjall::Keyspace,
    log: &str,
    user: &str,
    after: u64,
) -> Result<u32, StoreError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(0);
    };
    let mut n: u32 = 0;
    for guard in messages.range(message_key(log, first)..=message_key(log, u64::MAX)) {
        let (_, value) = guard.into_inner().map_err(unavailable)?;
        let m =
            v1::Message::decode(value.as_ref()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if counts_as_unread(user, &m) {
            n = n.saturating_add(1);
        }
    }
    Ok(n)
}

impl EmbeddedStore {
    /// Completes a read-diffusion group's conversation from its log: the
    /// log's unread messages, head and newest message.
    fn fill_group(&self, user: &str, conv: &mut v1::Conversation) -> Result<(), StoreError> {
        let Some(v1::peer::Target::Group(group)) =
            conv.peer.as_ref().and_then(|p| p.target.as_ref())
        else {
            return Ok(());
        };
        let Some(info) = load_group(&self.tables.groups, group)? else {
            return Ok(());
        };
        if !info.read_diffusion {
            return Ok(());
        }
        let joined =
            load_member(&self.tables.members, group, user)?.map_or(u64::MAX, |m| m.joined_seq);
        let log = group_log(group);
        let head = read_head(&self.tables.messages, &log)?;
        let after = conv.group_read_seq.max(joined);
        conv.unread =
            conv.unread
                .saturating_add(count_log_unread(&self.tables.messages, &log, user, after)?);
        conv.group_head = head;
        if head > joined && head > 0 {
            let key = message_key(&log, head);
            if let Some(value) = self.tables.messages.get(&key).map_err(unavailable)? {
                let m = decode_message(&log, &key, &value)?;
                conv.last_message = Some(preview(&m.message));
            }
        }
        Ok(())
    }
}

fn load_conv(
    conversations: &fjall::Keyspace,
    user: &str,
    convkey: &str,
) -> Result<Option<v1::Conversation>, StoreError> {
    match conversations
        .get(conv_key(user, convkey))
        .map_err(unavailable)?
    {
        Some(value) => v1::Conversation::decode(value.as_ref())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string())),
        None => Ok(None),
    }
}

#[async_trait]
impl ConversationStore for EmbeddedStore {
    async fn post(&self, batch: Vec<Post>) -> Result<Vec<Result<Posted, OpError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Im(Box::new(Request::Post(batch, tx))), rx)
            .await
    }

    async fn conversations(
        &self,
        user: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<ConversationPage, StoreError> {
        check_key_part(user)?;
        let limit = limit.clamp(1, MAX_PAGE);
        let prefix = prefixed(user, 0);
        let mut start = prefix.clone();
        start.extend_from_slice(after);
        if !after.is_empty() {
            // The smallest key after `after` itself.
            start.push(0);
        }
        let mut end = prefix.clone();
        end.push(2);
        let mut page = ConversationPage::default();
        let mut last = Vec::new();
        for guard in self.tables.conv_order.range(start..end) {
            let (key, _) = guard.into_inner().map_err(unavailable)?;
            if page.conversations.len() == limit {
                page.next = std::mem::take(&mut last);
                break;
            }
            let suffix = key.get(prefix.len()..).unwrap_or_default();
            let convkey = suffix
                .get(9..)
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(|| StoreError::Corrupt("bad conversation order key".into()))?;
            if let Some(mut conv) = load_conv(&self.tables.conversations, user, convkey)? {
                self.fill_group(user, &mut conv)?;
                page.conversations.push(conv);
            }
            last = suffix.to_vec();
        }
        Ok(page)
    }

    async fn conversation(
        &self,
        user: &str,
        peer: &v1::Peer,
    ) -> Result<Option<v1::Conversation>, StoreError> {
        check_key_part(user)?;
        let Some(convkey) = peer_key(peer) else {
            return Ok(None);
        };
        check_key_part(&convkey)?;
        let mut conv = load_conv(&self.tables.conversations, user, &convkey)?;
        if conv.is_none() && matches!(peer.target, Some(v1::peer::Target::Group(_))) {
            // A read-diffusion group the member has not touched yet.
            if let Some(v1::peer::Target::Group(g)) = &peer.target {
                if load_member(&self.tables.members, g, user)?.is_some() {
                    conv = Some(v1::Conversation {
                        peer: Some(peer.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        if let Some(conv) = conv.as_mut() {
            self.fill_group(user, conv)?;
        }
        Ok(conv)
    }

    async fn history(
        &self,
        user: &str,
        peer: &v1::Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: usize,
    ) -> Result<HistoryPage, OpError> {
        check_key_part(user)?;
        let limit = limit.clamp(1, MAX_HISTORY);
        let cutoff_ms = self.history_cutoff_ms();
        if let Some(v1::peer::Target::Group(g)) = peer.target.as_ref() {
            check_key_part(g)?;
            if load_group(&self.tables.groups, g)?.is_some_and(|i| i.read_diffusion) {
                let Some(member) = load_member(&self.tables.members, g, user)? else {
                    return Err(OpError::NotAMember);
                };
                let log = group_log(g);
                let Some((lo, hi)) = seq_bounds(anchor, forward, member.joined_seq + 1) else {
                    return Ok(HistoryPage::default());
                };
                let keys = self
                    .tables
                    .messages
                    .range(message_key(&log, lo)..=message_key(&log, hi));
                return Ok(walk(
                    keys,
                    forward,
                    anchor,
                    limit,
                    cutoff_ms,
                    |key, value| decode_message(&log, key, value).map(Some),
                )?);
            }
        }
        let convkey = peer_key(peer).ok_or(OpError::NotFound)?;
        check_key_part(&convkey)?;
        let Some((lo, hi)) = seq_bounds(anchor, forward, 1) else {
            return Ok(HistoryPage::default());
        };
        let keys = self
            .tables
            .conv_msgs
            .range(conv_msg_key(user, &convkey, lo)..=conv_msg_key(user, &convkey, hi));
        let messages = self.tables.messages.clone();
        Ok(walk(keys, forward, anchor, limit, cutoff_ms, |key, _| {
            let seq: [u8; 8] = key[key.len() - 8..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("bad conversation index key".into()))?;
            let seq = u64::from_be_bytes(seq);
            let mkey = message_key(user, seq);
            match messages.get(&mkey).map_err(unavailable)? {
                Some(value) => decode_message(user, &mkey, &value).map(Some),
                None => Ok(None),
            }
        })?)
    }

    async fn read_count(&self, user: &str, msg_id: &str) -> Result<(u32, u32), OpError> {
        check_key_part(user)?;
        let Some(index) = self
            .tables
            .msg_ids
            .get(msg_id.as_bytes())
            .map_err(unavailable)?
        else {
            return Err(OpError::NotFound);
        };
        let copies = decode_copies(&index)?;
        let Some((first_inbox, first_seq)) = copies.first().cloned() else {
            return Err(OpError::NotFound);
        };
        let key = message_key(&first_inbox, first_seq);
        let Some(value) = self.tables.messages.get(&key).map_err(unavailable)? else {
            return Err(OpError::NotFound);
        };
        let message = decode_message(&first_inbox, &key, &value)?.message;
        if message.from_user != user {
            return Err(OpError::NotSender);
        }
        let Some(v1::peer::Target::Group(g)) = message.to.as_ref().and_then(|p| p.target.as_ref())
        else {
            return Err(OpError::NotFound);
        };
        let convkey = format!("g:{g}");
        let (mut read, mut total) = (0u32, 0u32);
        if let Some(log_group) = first_inbox.strip_prefix('#') {
            // Read diffusion: each member's cursor in the log.
            let prefix = prefixed(log_group, 0);
            for guard in self.tables.members.prefix(&prefix) {
                let (_, value) = guard.into_inner().map_err(unavailable)?;
                let m = v1::GroupMember::decode(value.as_ref())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if m.user == user || m.joined_seq >= first_seq {
                    continue;
                }
                total += 1;
                let conv = load_conv(&self.tables.conversations, &m.user, &convkey)?;
                if conv.is_some_and(|c| c.group_read_seq >= first_seq) {
                    read += 1;
                }
            }
        } else {
            // Write diffusion: each member's cursor against their copy.
            for (inbox, seq) in copies {
                if inbox == user {
                    continue;
                }
                total += 1;
                let conv = load_conv(&self.tables.conversations, &inbox, &convkey)?;
                if conv.is_some_and(|c| c.read_seq >= seq) {
                    read += 1;
                }
            }
        }
        Ok((read, total))
    }

    async fn apply(&self, op: ConversationOp) -> Result<Applied, OpError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Im(Box::new(Request::Apply(op, tx))))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
