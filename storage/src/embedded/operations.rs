//! Conversation operations on the embedded store (mark read, delivery
//! receipts, flags, recall, edit, delete for me): each runs in a batch of its
//! own after the posts before it are committed, so it reads every earlier
//! write from disk.

use prost::Message as _;
use qim_proto::v1;

use super::groups::{load_group, load_member};
use super::sends::copies_of_msg_id;
use super::tables::{
    check_key_part, conv_msg_key, count_log_unread, message_key, prefixed, read_head, unavailable,
};
use super::writer::{Stage, Writer};
use crate::OpError;
use crate::StoreError;
use crate::conversations::{
    Applied, ConversationOp, Rewrite, conversation_of, group_log, peer_key, preview, tombstone,
};

impl Writer {
    /// Whether the conversation entry at `key` is a copy that counts as
    /// unread (its value is `[1]`).
    pub(super) fn counts_as_unread(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .tables
            .conv_msgs
            .get(key)
            .map_err(unavailable)?
            .as_deref()
            == Some(&[1][..]))
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

    pub(super) fn apply_op(&mut self, op: ConversationOp) -> Result<Applied, OpError> {
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
                let mut key = prefixed(&recipient, msg_id.len());
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
        let Some(copies) = copies_of_msg_id(&self.tables, msg_id)? else {
            return Err(OpError::NotFound);
        };
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
