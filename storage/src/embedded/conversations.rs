//! The embedded backend's [`ConversationStore`]: posts, conversation records
//! and message operations, written by the same writer thread as appends.
//!
//! The writer takes posts and operations in arrival order. Consecutive posts
//! are staged into one fjall batch (one fsync); an operation first commits
//! the posts before it, then runs in a batch of its own, so it reads every
//! earlier write from disk. Conversation records touched by several
//! messages of one batch are kept in an overlay and written once.

use async_trait::async_trait;
use prost::Message as _;
use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::groups::{load_group, load_member};
use super::kv;
use super::sends::copies_of_msg_id;
use super::tables::{
    check_key_part, conv_msg_key, count_log_unread, decode_message, load_conv, message_key,
    prefixed, read_head, unavailable,
};
use super::writer::{Op, Request};
use crate::OpError;
use crate::conversations::{
    Applied, ConversationOp, ConversationPage, ConversationStore, HistoryAnchor, HistoryPage, Post,
    Posted, Walk, group_log, history_step, peer_key, preview, seq_bounds,
};
use crate::{StoreError, StoredMessage};

/// Conversations returned per page at most.
const MAX_PAGE: usize = 500;

/// History entries read at most per page.
const MAX_HISTORY: usize = 1000;

/// Walks seqs of one history in the asked direction, reading each
/// message, until the page is full (and one more shows there is more).
fn walk(
    keys: impl DoubleEndedIterator<Item = kv::Entry>,
    forward: bool,
    anchor: HistoryAnchor,
    limit: usize,
    cutoff_ms: i64,
    mut read: impl FnMut(&[u8], &[u8]) -> Result<Option<StoredMessage>, StoreError>,
) -> Result<HistoryPage, StoreError> {
    let keys: Box<dyn Iterator<Item = kv::Entry>> = if forward {
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
        let Some(copies) = copies_of_msg_id(&self.tables, msg_id)? else {
            return Err(OpError::NotFound);
        };
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
