//! Conversation operations on the cluster store (mark read, delivery
//! receipts, flags, recall, edit, delete for me), each one logged batch
//! (see `conversations.rs` for the design).

use qim_proto::v1;

use super::conversations::key_of;
use super::{ClusterStore, Pending, bounded};
use crate::OpError;
use crate::conversations::{
    Applied, ConversationOp, Rewrite, conversation_of, group_log, preview, tombstone,
};
use crate::cql::writes::Writes;
use crate::{StoreError, StoredMessage};

impl ClusterStore {
    /// [`ConversationStore::apply`](crate::ConversationStore::apply) of the
    /// cluster store.
    pub(super) async fn apply_op(&self, op: ConversationOp) -> Result<Applied, OpError> {
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
}
