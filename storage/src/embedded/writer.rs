//! The writer thread: it owns sequence assignment and every write of the
//! embedded store, and commits what is waiting in groups (see the group
//! commit section of [the module](super)). Appends are staged here; the IM
//! requests ([`Request`]) are staged into a [`Stage`] by the file of their
//! concern (`posts.rs`, `operations.rs`, `groups.rs`, `contacts.rs`,
//! `schedule.rs`, `sweeper.rs`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use prost::Message as _;
use qim_proto::v1;
use tokio::sync::{mpsc, oneshot};

use super::kv;
use super::quota::Counts;
use super::sends::{Collision, SendId, earlier_send, msg_id_of, send_value};
use super::space::DiskSpace;
use super::tables::{
    Tables, check_key_part, conv_key, encode_record, load_record, message_key, order_key,
    read_head, unavailable,
};
use crate::OpError;
use crate::StoreError;
use crate::conversations::{Applied, ConversationOp, Post, Posted, event_message, peer_key};
use crate::model::{Appended, NewMessage, StoredMessage};

/// Most messages committed by one disk sync.
pub const MAX_BATCH: usize = 4096;

/// Inbox heads cached by the writer before the cache is dropped and refilled
/// from disk (bounds memory with many users).
const MAX_CACHED_HEADS: usize = 1 << 20;

/// Answers an append.
pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// What the writer thread is asked to do.
pub(super) enum Op {
    Append(Vec<NewMessage>, Reply),
    /// Committed with the next group, without a sync of its own.
    Cursor(Vec<u8>, u64, oneshot::Sender<Result<(), StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Posts, conversation operations and the other IM requests.
    Im(Box<Request>),
    /// The count under this quota key moved (`quota.rs`): written with
    /// the next group from what [`Counts`] holds, without a sync of its own.
    Quota(Vec<u8>),
}

pub(super) type PostReply = oneshot::Sender<Result<Vec<Result<Posted, OpError>>, StoreError>>;
type GroupReply = oneshot::Sender<Result<crate::groups::GroupApplied, OpError>>;

/// An IM request for the writer thread.
pub(super) enum Request {
    Post(Vec<Post>, PostReply),
    Apply(ConversationOp, oneshot::Sender<Result<Applied, OpError>>),
    Group {
        group: String,
        by: String,
        op: crate::groups::GroupOp,
        limits: crate::groups::GroupLimits,
        reply: GroupReply,
    },
    Contact {
        user: String,
        op: crate::contacts::ContactOp,
        now_ms: i64,
        reply: oneshot::Sender<Result<Applied, OpError>>,
    },
    Schedule(ScheduleRequest),
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

/// What firing an entry did, `None` when it was gone already.
type FireReply = Result<Option<crate::schedule::Fired>, StoreError>;

/// A schedule request for the writer.
pub(super) enum ScheduleRequest {
    Add(
        Box<v1::ScheduledSend>,
        usize,
        oneshot::Sender<Result<(), OpError>>,
    ),
    Cancel(String, String, oneshot::Sender<Result<(), OpError>>),
    Fire(
        String,
        i64,
        crate::schedule::Verdict,
        oneshot::Sender<FireReply>,
    ),
}

impl ScheduleRequest {
    pub(super) fn fail(self, error: StoreError) {
        match self {
            ScheduleRequest::Add(_, _, reply) => {
                let _ = reply.send(Err(OpError::Store(error)));
            }
            ScheduleRequest::Cancel(_, _, reply) => {
                let _ = reply.send(Err(OpError::Store(error)));
            }
            ScheduleRequest::Fire(_, _, _, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Owns sequence assignment and all message writes.
pub(super) struct Writer {
    pub(super) tables: Tables,
    /// The free space under the store; writes wait for it.
    disk: Arc<DiskSpace>,
    /// Set when a commit failed; every later write fails with it.
    pub(super) failed: Option<String>,
    /// Newest seq per inbox, loaded from disk on first use.
    pub(super) heads: HashMap<String, u64>,
    /// Per user, the conversation last given a place in the user's list:
    /// the one on top of it (`posts.rs`). A user missing is not known.
    pub(super) tops: HashMap<String, String>,
    /// Emptied maps kept for the next commit.
    pub(super) scratch: Scratch,
    /// Quota counts charged in memory, written with the groups.
    counts: Arc<Counts>,
    /// Keys of the counts that moved since the last written group, with
    /// how many charges each.
    quotas: HashMap<Vec<u8>, u32>,
}

impl Writer {
    pub(super) fn new(tables: Tables, disk: Arc<DiskSpace>, counts: Arc<Counts>) -> Self {
        Self {
            tables,
            disk,
            counts,
            quotas: HashMap::new(),
            failed: None,
            heads: HashMap::new(),
            tops: HashMap::new(),
            scratch: Scratch::default(),
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends: Vec<(Vec<NewMessage>, Reply)> = Vec::new();
            let mut cursors: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut cursor_replies = Vec::new();
            let mut flushes = Vec::new();
            let mut ims = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Append(batch, reply) => {
                        count += batch.len();
                        appends.push((batch, reply));
                    }
                    Op::Cursor(key, seq, reply) => {
                        cursors.insert(key, seq);
                        cursor_replies.push(reply);
                    }
                    Op::Flush(reply) => flushes.push(reply),
                    Op::Im(request) => {
                        count += 1;
                        ims.push(*request);
                    }
                    Op::Quota(key) => *self.quotas.entry(key).or_default() += 1,
                }
                if count < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if let Some(reason) = &self.failed {
                let error = StoreError::Failed(reason.clone());
                for reply in flushes {
                    let _ = reply.send(Err(error.clone()));
                }
                refuse(error, appends, cursor_replies, ims);
                continue;
            }
            // Refused before fjall sees them: a write that fails for want
            // of space would poison the database (see `space.rs`).
            if let Err(full) = self.disk.check() {
                refuse(full, appends, cursor_replies, ims);
                // What is buffered is small (quota counts): the floor
                // leaves room for it. Quota rows wait for a group that is
                // written.
                self.persist(flushes);
                continue;
            }
            let cursors_saved = self.commit(appends, cursors, !flushes.is_empty());
            self.commit_im(ims);
            for reply in cursor_replies {
                let _ = reply.send(cursors_saved.clone());
            }
            self.persist(flushes);
        }
    }

    /// Syncs the journal for `flushes`, and answers them.
    fn persist(&self, flushes: Vec<oneshot::Sender<Result<(), StoreError>>>) {
        if flushes.is_empty() {
            return;
        }
        let synced = self.tables.db.sync().map_err(unavailable);
        for reply in flushes {
            let _ = reply.send(synced.clone());
        }
    }

    /// Writes every waiting request in one batch, durable before visible,
    /// then answers.
    fn commit(
        &mut self,
        appends: Vec<(Vec<NewMessage>, Reply)>,
        cursors: HashMap<Vec<u8>, u64>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if appends.is_empty() && cursors.is_empty() && self.quotas.is_empty() {
            return Ok(());
        }
        let quotas = std::mem::take(&mut self.quotas);
        if self.heads.len() > MAX_CACHED_HEADS {
            self.heads.clear();
        }
        let mut batch = self.tables.db.batch();
        for (key, seq) in cursors {
            batch.insert(&self.tables.cursors, key, seq.to_be_bytes().to_vec());
        }
        for (key, used) in self.counts.to_write(&quotas) {
            batch.insert(&self.tables.quota_bytes, key, used.to_be_bytes().to_vec());
        }
        // Idempotency keys written by this group, not yet on disk.
        let mut pending: HashMap<Vec<u8>, StoredMessage> = HashMap::new();
        let mut staged = Vec::with_capacity(appends.len());
        for (messages, reply) in appends {
            match self.stage_append(&mut batch, &mut pending, messages) {
                Ok(out) => staged.push((out, reply)),
                Err(e) => {
                    tracing::warn!(error = %e, "append refused; the rest of the group goes on");
                    let _ = reply.send(Err(e));
                }
            }
        }
        let durable = !staged.is_empty() || sync;
        let batch = if durable { batch.durable() } else { batch };
        match batch.commit().map_err(unavailable) {
            Ok(()) => {
                self.counts.written(&quotas);
                for (out, reply) in staged {
                    let _ = reply.send(Ok(out));
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; nothing of the group is acknowledged, and the store takes no more writes until restarted");
                let error = StoreError::Failed(e.to_string());
                self.failed = Some(e.to_string());
                for (_, reply) in staged {
                    let _ = reply.send(Err(error.clone()));
                }
                Err(error)
            }
        }
    }

    /// Stages one caller's messages; on failure nothing of them is staged
    /// and the heads they moved are put back.
    fn stage_append(
        &mut self,
        batch: &mut kv::Batch,
        pending: &mut HashMap<Vec<u8>, StoredMessage>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut inserts = Vec::new();
        let mut undo_heads: Vec<(String, Option<u64>)> = Vec::new();
        let mut new_keys = Vec::new();
        let mut out = Vec::with_capacity(messages.len());
        let mut result = Ok(());
        for new in messages {
            match self.stage(pending, &mut inserts, &mut undo_heads, &mut new_keys, new) {
                Ok(appended) => out.push(appended),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for (inbox, head) in undo_heads.into_iter().rev() {
                match head {
                    Some(head) => self.heads.insert(inbox, head),
                    None => self.heads.remove(&inbox),
                };
            }
            for key in new_keys {
                pending.remove(&key);
            }
            return Err(e);
        }
        for (table, key, value) in inserts {
            let keyspace = match table {
                Table::Messages => &self.tables.messages,
                Table::Sends => &self.tables.sends,
            };
            batch.insert(keyspace, key, value);
        }
        Ok(out)
    }

    fn stage(
        &mut self,
        pending: &mut HashMap<Vec<u8>, StoredMessage>,
        inserts: &mut Vec<(Table, Vec<u8>, Vec<u8>)>,
        undo_heads: &mut Vec<(String, Option<u64>)>,
        new_keys: &mut Vec<Vec<u8>>,
        new: NewMessage,
    ) -> Result<Appended, StoreError> {
        let id = SendId::new(&new.sender, &new.client_msg_id);
        if let Some(original) = pending.get(&id.idem) {
            return Ok(Appended {
                message: original.clone(),
                duplicate: true,
            });
        }
        match earlier_send(&self.tables, &new.sender, &new.client_msg_id, &id)? {
            Err(Collision) => {
                return Err(StoreError::Invalid(
                    "client_msg_id collides with another send's; use another".into(),
                ));
            }
            Ok(Some(sent)) => {
                if let Some(original) = sent.copies.into_iter().next() {
                    return Ok(Appended {
                        message: original,
                        duplicate: true,
                    });
                }
                return Err(StoreError::Corrupt(
                    "send record without its message".into(),
                ));
            }
            Ok(None) => {}
        }
        let cached = self.heads.get(&new.inbox).copied();
        let head = match cached {
            Some(head) => head,
            None => read_head(&self.tables.messages, &new.inbox)?,
        };
        let seq = head + 1;
        undo_heads.push((new.inbox.clone(), cached));
        self.heads.insert(new.inbox.clone(), seq);
        let msg_id = msg_id_of(&id.key, new.server_time_ms);
        let stored = StoredMessage::from_new(new, seq, msg_id);
        let key = message_key(&stored.inbox, seq);
        inserts.push((Table::Messages, key, stored.message.encode_to_vec()));
        inserts.push((
            Table::Sends,
            id.key.to_vec(),
            send_value(None, &[(stored.inbox.clone(), seq)]),
        ));
        pending.insert(id.idem.clone(), stored.clone());
        new_keys.push(id.idem);
        Ok(Appended {
            message: stored,
            duplicate: false,
        })
    }
}

/// Answers every write of a group with `error`.
fn refuse(
    error: StoreError,
    appends: Vec<(Vec<NewMessage>, Reply)>,
    cursor_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    ims: Vec<Request>,
) {
    for (_, reply) in appends {
        let _ = reply.send(Err(error.clone()));
    }
    for reply in cursor_replies {
        let _ = reply.send(Err(error.clone()));
    }
    for request in ims {
        request.fail(error.clone());
    }
}

/// Which keyspace a staged insert goes to.
enum Table {
    Messages,
    Sends,
}

/// A conversation record being changed, with where it sat in the list on
/// disk.
pub(super) struct Conv {
    pub(super) conv: v1::Conversation,
    /// Its place in the owner's list ([`ConvRecord`]).
    pub(super) place: u64,
    pub(super) on_disk_order: Option<Vec<u8>>,
}

/// Batch rows a one-to-one post usually writes: a message, a conversation
/// entry and a conversation record in each of two inboxes (the recipient's
/// and the sender's sync copy), and the send row; list rows only for a
/// conversation that moves to the top of its owner's list.
const ROWS_PER_POST: usize = 8;

/// One atomic write of the IM layer.
pub(super) struct Stage {
    pub(super) batch: kv::Batch,
    pub(super) convs: HashMap<(String, String), Conv>,
}

/// Maps the writer keeps from one commit to the next, emptied, so a commit
/// does not allocate them afresh: new pages for them (zeroed by the kernel
/// on first touch) were 7% of the writer thread's time at a fixed 38,772
/// messages/s. (The batch's own vector cannot be kept: fjall consumes it.)
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) convs: HashMap<(String, String), Conv>,
    pub(super) posted: HashMap<Vec<u8>, Arc<Posted>>,
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
                    limits,
                    reply,
                } => {
                    self.commit_posts(std::mem::take(&mut posts));
                    let result = match &self.failed {
                        Some(reason) => Err(OpError::Store(StoreError::Failed(reason.clone()))),
                        None => self.group_op(&group, &by, op, limits),
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

    pub(super) fn new_stage(&mut self) -> Stage {
        self.new_stage_for(0)
    }

    /// A stage sized for `posts` posts: a batch grows one entry at a time,
    /// and regrowing a group commit of hundreds of posts (a few rows per
    /// copy) was 12% of the writer thread's time in a flat-out chat run.
    pub(super) fn new_stage_for(&mut self, posts: usize) -> Stage {
        Stage {
            batch: self
                .tables
                .db
                .batch_with_capacity(posts.saturating_mul(ROWS_PER_POST)),
            convs: std::mem::take(&mut self.scratch.convs),
        }
    }

    pub(super) fn next_seq(&mut self, inbox: &str) -> Result<u64, StoreError> {
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
            let order = order_key(&user, conv.conv.pinned, conv.place, &convkey);
            if conv.on_disk_order.as_ref() != Some(&order) {
                if let Some(old) = conv.on_disk_order {
                    batch.remove(&self.tables.conv_order, old);
                }
                batch.insert(&self.tables.conv_order, order, Vec::new());
            }
            batch.insert(
                &self.tables.conversations,
                conv_key(&user, &convkey),
                encode_record(&conv.conv, conv.place),
            );
        }
        self.scratch.convs = convs;
        let batch = batch.durable();
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
        self.tops.clear();
    }

    /// The conversation record of `(user, convkey)`, loaded into the stage.
    pub(super) fn conv<'s>(
        &self,
        stage: &'s mut Stage,
        user: &str,
        peer: &v1::Peer,
        create: bool,
    ) -> Result<Option<&'s mut Conv>, StoreError> {
        let convkey = peer_key(peer).ok_or_else(|| StoreError::Invalid("empty peer".into()))?;
        check_key_part(&convkey)?;
        let vacant = match stage.convs.entry((user.to_owned(), convkey)) {
            Entry::Occupied(staged) => return Ok(Some(staged.into_mut())),
            Entry::Vacant(vacant) => vacant,
        };
        let convkey = &vacant.key().1;
        let conv = match load_record(&self.tables.conversations, user, convkey)? {
            Some(record) => Conv {
                on_disk_order: Some(record.order_key(user, convkey)),
                conv: record.conv,
                place: record.place,
            },
            None if create => Conv {
                conv: v1::Conversation {
                    peer: Some(peer.clone()),
                    ..Default::default()
                },
                place: 0,
                on_disk_order: None,
            },
            None => return Ok(None),
        };
        Ok(Some(vacant.insert(conv)))
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
}
