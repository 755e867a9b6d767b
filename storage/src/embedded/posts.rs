//! Posts on the embedded store: the writer stages consecutive posts into
//! one batch (one fsync), each copy with its conversation record, unread
//! mark, and send row (its idempotency record and `msg_id` index in one,
//! `sends.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;

use super::kv::Slice;
use super::sends::{Collision, SendId, earlier_send, msg_id_of, send_value};
use super::tables::{check_key_part, conv_msg_key, decode_message, message_key, unavailable};
use super::writer::{PostReply, Stage, Writer};
use crate::OpError;
use crate::conversations::{
    self, Post, Posted, conversation_of, counts_as_unread, peer_key, preview,
};
use crate::{StoreError, StoredMessage};

/// Users whose top conversation the writer keeps in memory before it forgets
/// them all (a forgotten user's next message rewrites one list row).
const MAX_TOPS: usize = 1 << 18;

impl Writer {
    pub(super) fn commit_posts(&mut self, posts: Vec<(Vec<Post>, PostReply)>) {
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
        // Emptied before the replies: each result is then its Arc's only
        // holder, and is moved out without a copy.
        pending.clear();
        self.scratch.posted = pending;
        match result {
            Ok(()) => {
                for (out, reply) in outs.into_iter().zip(replies) {
                    let out = out
                        .into_iter()
                        .map(|r| r.map(Arc::unwrap_or_clone))
                        .collect();
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
        pending: &mut HashMap<Vec<u8>, Arc<Posted>>,
        post: Post,
    ) -> Result<Result<Arc<Posted>, OpError>, StoreError> {
        check_key_part(&post.sender)?;
        let id = SendId::new(&post.sender, &post.client_msg_id);
        let digest = post.digest();
        if let Some(original) = pending.get(&id.idem) {
            // Posted by this group: its primary copy is as it was sent.
            let first = original.copies.first().map(|c| &c.message);
            if first.is_some_and(|m| {
                conversations::digest(&m.to.clone().unwrap_or_default(), &m.body) != digest
            }) {
                return Ok(Err(OpError::Conflict));
            }
            let mut original = Posted::clone(original);
            original.duplicate = true;
            return Ok(Ok(Arc::new(original)));
        }
        match earlier_send(&self.tables, &post.sender, &post.client_msg_id, &id)? {
            Err(Collision) => return Ok(Err(OpError::Conflict)),
            Ok(Some(sent)) => {
                if sent.digest.is_some_and(|d| d != digest) {
                    return Ok(Err(OpError::Conflict));
                }
                return Ok(Ok(Arc::new(Posted {
                    copies: sent.copies,
                    duplicate: true,
                })));
            }
            Ok(None) => {}
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
        let msg_id = msg_id_of(&id.key, post.server_time_ms);
        let message = post.to_message(msg_id);
        // Every copy stores the same bytes: encoded once, shared.
        let encoded = Slice::from(message.encode_to_vec());
        let mut copies = Vec::with_capacity(post.inboxes.len());
        // Each copy owns the message: a clone for all but the last.
        let messages = std::iter::repeat_n(message, post.inboxes.len());
        for (inbox, message) in std::mem::take(&mut post.inboxes).into_iter().zip(messages) {
            let seq = self.next_seq(&inbox)?;
            stage.batch.insert(
                &self.tables.messages,
                message_key(&inbox, seq),
                encoded.clone(),
            );
            let stored = StoredMessage {
                inbox,
                seq,
                message,
            };
            self.touch(stage, &stored)?;
            copies.push(stored);
        }
        let index: Vec<(String, u64)> = copies.iter().map(|c| (c.inbox.clone(), c.seq)).collect();
        stage.batch.insert(
            &self.tables.sends,
            id.key.to_vec(),
            send_value(Some(&digest), &index),
        );
        let posted = Arc::new(Posted {
            copies,
            duplicate: false,
        });
        pending.insert(id.idem, Arc::clone(&posted));
        Ok(Ok(posted))
    }

    pub(super) fn read_message(
        &self,
        inbox: &str,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let key = message_key(inbox, seq);
        match self.tables.messages.get(&key).map_err(unavailable)? {
            Some(value) => Ok(Some(decode_message(inbox, &key, &value)?)),
            None => Ok(None),
        }
    }

    /// Records a new copy in its owner's conversation.
    fn touch(&mut self, stage: &mut Stage, stored: &StoredMessage) -> Result<(), StoreError> {
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
            // One byte: held inline, no allocation.
            Slice::from(&[u8::from(unread)][..]),
        );
        let Some(conv) = self.conv(stage, owner, &peer, true)? else {
            return Ok(());
        };
        // Already on top of the list: it stays there, and its list row is
        // left alone. Any other conversation moves to the top. (A place of
        // 0 is a conversation never moved: new, or recreated after a
        // deletion.)
        let on_top = conv.place != 0 && self.tops.get(owner) == Some(&convkey);
        if !on_top {
            conv.place = stored.seq;
            if self.tops.len() >= MAX_TOPS {
                self.tops.clear();
            }
            self.tops.insert(owner.clone(), convkey);
        }
        let c = &mut conv.conv;
        c.last_message = Some(preview(&stored.message));
        c.last_seq = stored.seq;
        c.updated_ms = stored.message.server_time_ms;
        if unread {
            c.unread += 1;
        }
        Ok(())
    }
}
