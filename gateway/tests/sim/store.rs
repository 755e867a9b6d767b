//! The simulated gateway's store: the embedded store with every call
//! [`held`] (no simulated time passes while it works), and a knob that
//! leaves seqs empty for good, as a write that failed after its seq was
//! handed out does.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use qim_proto::v1;
use qim_storage::contacts::{ContactOp, Relation};
use qim_storage::conversations::{
    Applied, ConversationOp, ConversationPage, HistoryAnchor, HistoryPage, Post, Posted,
};
use qim_storage::embedded::EmbeddedStore;
use qim_storage::groups::{GroupApplied, GroupLimits, GroupOp, List, Listed};
use qim_storage::media::{BlobId, BlobMeta, Collect, CopyRef, MediaStore, PendingUpload, Scope};
use qim_storage::quota::Charged;
use qim_storage::schedule::{Fired, Verdict};
use qim_storage::{
    AccountStore, Appended, ContactStore, ConversationStore, GroupStore, MessageStore, NewMessage,
    OpError, PresenceStore, QuotaStore, RevocationStore, ScheduleStore, StoreError, StoredMessage,
};

use crate::harness::held;

/// The embedded store, held, with burned seqs.
pub(crate) struct HeldStore {
    inner: EmbeddedStore,
    /// Per inbox: how many seqs the next write to it burns first.
    burn: Mutex<HashMap<String, u64>>,
    /// Burned seqs: stored to take the seq, never read back.
    hidden: Mutex<HashSet<(String, u64)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HeldStore {
    pub(crate) fn open(dir: &std::path::Path) -> HeldStore {
        HeldStore {
            inner: EmbeddedStore::open(dir).expect("open the store"),
            burn: Mutex::default(),
            hidden: Mutex::default(),
        }
    }

    /// The next write to `inbox` first hands out `n` seqs that are never
    /// written: the gap a node leaves when it dies between taking seqs and
    /// writing them. Readers never see those seqs, and the store never
    /// calls them settled.
    pub(crate) fn burn_next(&self, inbox: &str, n: u64) {
        lock(&self.burn).insert(inbox.to_owned(), n);
    }

    /// Burns the seqs asked for in the inboxes `message` is written to.
    async fn burn(&self, message: &NewMessage, inboxes: &[String]) -> Result<(), StoreError> {
        for inbox in inboxes {
            let Some(n) = lock(&self.burn).remove(inbox) else {
                continue;
            };
            let burned: Vec<NewMessage> = (0..n)
                .map(|i| NewMessage {
                    inbox: inbox.clone(),
                    client_msg_id: format!("burned-{}-{i}", message.client_msg_id),
                    ..message.clone()
                })
                .collect();
            for appended in self.inner.append(burned).await? {
                lock(&self.hidden).insert((appended.message.inbox, appended.message.seq));
            }
        }
        Ok(())
    }

    fn first_hidden(&self, inbox: &str) -> Option<u64> {
        lock(&self.hidden)
            .iter()
            .filter(|(i, _)| i == inbox)
            .map(|&(_, seq)| seq)
            .min()
    }
}

#[async_trait]
impl MessageStore for HeldStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        held(async {
            for message in &batch {
                self.burn(message, std::slice::from_ref(&message.inbox))
                    .await?;
            }
            self.inner.append(batch).await
        })
        .await
    }

    async fn read_inbox(
        &self,
        inbox: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut page = held(self.inner.read_inbox(inbox, after_seq, limit)).await?;
        let hidden = lock(&self.hidden);
        page.retain(|m| !hidden.contains(&(m.inbox.clone(), m.seq)));
        Ok(page)
    }

    async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError> {
        held(self.inner.inbox_head(inbox)).await
    }

    async fn settled_through(&self, inbox: &str, head: u64) -> Result<u64, StoreError> {
        let settled = held(self.inner.settled_through(inbox, head)).await?;
        Ok(match self.first_hidden(inbox) {
            Some(seq) => settled.min(seq - 1),
            None => settled,
        })
    }

    async fn save_cursor(&self, inbox: &str, device: &str, seq: u64) -> Result<(), StoreError> {
        held(self.inner.save_cursor(inbox, device, seq)).await
    }

    async fn load_cursor(&self, inbox: &str, device: &str) -> Result<Option<u64>, StoreError> {
        held(self.inner.load_cursor(inbox, device)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        held(self.inner.flush()).await
    }
}

#[async_trait]
impl ConversationStore for HeldStore {
    async fn post(&self, batch: Vec<Post>) -> Result<Vec<Result<Posted, OpError>>, StoreError> {
        held(async {
            for post in &batch {
                let message = NewMessage {
                    inbox: String::new(),
                    sender: post.sender.clone(),
                    sender_device: post.sender_device.clone(),
                    client_msg_id: post.client_msg_id.clone(),
                    to: post.to.clone(),
                    kind: post.kind.clone(),
                    body: post.body.clone(),
                    server_time_ms: post.server_time_ms,
                };
                self.burn(&message, &post.inboxes).await?;
            }
            self.inner.post(batch).await
        })
        .await
    }

    async fn conversations(
        &self,
        user: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<ConversationPage, StoreError> {
        held(self.inner.conversations(user, after, limit)).await
    }

    async fn conversation(
        &self,
        user: &str,
        peer: &v1::Peer,
    ) -> Result<Option<v1::Conversation>, StoreError> {
        held(self.inner.conversation(user, peer)).await
    }

    async fn apply(&self, op: ConversationOp) -> Result<Applied, OpError> {
        held(self.inner.apply(op)).await
    }

    async fn read_count(&self, user: &str, msg_id: &str) -> Result<(u32, u32), OpError> {
        held(self.inner.read_count(user, msg_id)).await
    }

    async fn history(
        &self,
        user: &str,
        peer: &v1::Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: usize,
    ) -> Result<HistoryPage, OpError> {
        held(self.inner.history(user, peer, anchor, forward, limit)).await
    }
}

#[async_trait]
impl GroupStore for HeldStore {
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        limits: GroupLimits,
    ) -> Result<GroupApplied, OpError> {
        held(self.inner.group_apply(group, by, op, limits)).await
    }

    async fn group(&self, group: &str) -> Result<Option<v1::GroupInfo>, StoreError> {
        held(self.inner.group(group)).await
    }

    async fn member(&self, group: &str, user: &str) -> Result<Option<v1::GroupMember>, StoreError> {
        held(self.inner.member(group, user)).await
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError> {
        held(self.inner.members(group, after, limit)).await
    }

    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        held(self.inner.user_groups(user)).await
    }

    async fn listed(
        &self,
        group: &str,
        list: List,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        held(self.inner.listed(group, list, after, limit)).await
    }

    async fn listing(
        &self,
        group: &str,
        list: List,
        user: &str,
    ) -> Result<Option<Listed>, StoreError> {
        held(self.inner.listing(group, list, user)).await
    }

    async fn invitations(&self, user: &str) -> Result<Vec<v1::GroupInvitation>, StoreError> {
        held(self.inner.invitations(user)).await
    }

    async fn listed_in(&self, user: &str) -> Result<Vec<String>, StoreError> {
        held(self.inner.listed_in(user)).await
    }

    async fn group_adds(&self, user: &str) -> Result<Option<v1::GroupAdds>, StoreError> {
        held(self.inner.group_adds(user)).await
    }

    async fn set_group_adds(&self, user: &str, adds: v1::GroupAdds) -> Result<(), StoreError> {
        held(self.inner.set_group_adds(user, adds)).await
    }
}

#[async_trait]
impl ContactStore for HeldStore {
    async fn contact_apply(
        &self,
        user: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        held(self.inner.contact_apply(user, op, now_ms)).await
    }

    async fn contacts(&self, user: &str) -> Result<v1::ContactsResponse, StoreError> {
        held(self.inner.contacts(user)).await
    }

    async fn relation(&self, from: &str, to: &str) -> Result<Relation, StoreError> {
        held(self.inner.relation(from, to)).await
    }

    async fn blocked(&self, user: &str) -> Result<Vec<String>, StoreError> {
        held(self.inner.blocked(user)).await
    }

    async fn blockers(&self, user: &str) -> Result<Vec<String>, StoreError> {
        held(self.inner.blockers(user)).await
    }
}

#[async_trait]
impl ScheduleStore for HeldStore {
    async fn schedule(&self, entry: v1::ScheduledSend, max_pending: usize) -> Result<(), OpError> {
        held(self.inner.schedule(entry, max_pending)).await
    }

    async fn pending(&self, user: &str, limit: usize) -> Result<usize, StoreError> {
        held(ScheduleStore::pending(&self.inner, user, limit)).await
    }

    async fn cancel(&self, user: &str, id: &str) -> Result<(), OpError> {
        held(self.inner.cancel(user, id)).await
    }

    async fn due(&self, now_ms: i64) -> Result<Vec<v1::ScheduledSend>, StoreError> {
        held(self.inner.due(now_ms)).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        held(self.inner.next_due()).await
    }

    async fn fire(
        &self,
        id: &str,
        now_ms: i64,
        verdict: Verdict,
    ) -> Result<Option<Fired>, StoreError> {
        held(self.inner.fire(id, now_ms, verdict)).await
    }
}

#[async_trait]
impl PresenceStore for HeldStore {
    async fn record_session(
        &self,
        user: &str,
        device: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(), StoreError> {
        held(self.inner.record_session(user, device, start_ms, end_ms)).await
    }

    async fn sessions(
        &self,
        user: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<v1::SessionSpan>, StoreError> {
        held(self.inner.sessions(user, from_ms, to_ms)).await
    }

    async fn last_seen(&self, user: &str) -> Result<i64, StoreError> {
        held(self.inner.last_seen(user)).await
    }
}

#[async_trait]
impl QuotaStore for HeldStore {
    async fn charge_stored_bytes(
        &self,
        user: &str,
        day: u32,
        bytes: u64,
        limit: u64,
    ) -> Result<Charged, StoreError> {
        held(self.inner.charge_stored_bytes(user, day, bytes, limit)).await
    }

    async fn stored_bytes(&self, user: &str, day: u32) -> Result<u64, StoreError> {
        held(self.inner.stored_bytes(user, day)).await
    }
}

#[async_trait]
impl RevocationStore for HeldStore {
    async fn revoke_tokens(&self, user: &str, before: u64) -> Result<u64, StoreError> {
        held(self.inner.revoke_tokens(user, before)).await
    }

    async fn tokens_revoked_before(&self, user: &str) -> Result<u64, StoreError> {
        held(self.inner.tokens_revoked_before(user)).await
    }
}

#[async_trait]
impl qim_storage::UserPurge for HeldStore {
    async fn purge_user(&self, user: &str, peers: &[String]) -> Result<(), StoreError> {
        held(self.inner.purge_user(user, peers)).await
    }
}

#[async_trait]
impl AccountStore for HeldStore {
    async fn register(&self, users: &[String], now_ms: i64) -> Result<u32, StoreError> {
        held(self.inner.register(users, now_ms)).await
    }

    async fn set_disabled(
        &self,
        user: &str,
        disabled: bool,
    ) -> Result<Option<qim_storage::accounts::Account>, StoreError> {
        held(self.inner.set_disabled(user, disabled)).await
    }

    async fn mark_deleted(
        &self,
        user: &str,
    ) -> Result<Option<qim_storage::accounts::Account>, StoreError> {
        held(self.inner.mark_deleted(user)).await
    }

    async fn account(
        &self,
        user: &str,
    ) -> Result<Option<qim_storage::accounts::Account>, StoreError> {
        held(self.inner.account(user)).await
    }

    async fn accounts_after(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        held(self.inner.accounts_after(after, limit)).await
    }
}

#[async_trait]
impl qim_storage::NotifyStore for HeldStore {
    async fn register_push_token(
        &self,
        user: &str,
        token: v1::PushToken,
        max_devices: usize,
    ) -> Result<(), OpError> {
        held(self.inner.register_push_token(user, token, max_devices)).await
    }

    async fn remove_push_token(
        &self,
        user: &str,
        device: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        held(self.inner.remove_push_token(user, device, only_if)).await
    }

    async fn push_tokens(&self, user: &str) -> Result<Vec<v1::PushToken>, StoreError> {
        held(self.inner.push_tokens(user)).await
    }

    async fn push_settings(&self, user: &str) -> Result<v1::PushSettingsResponse, StoreError> {
        held(self.inner.push_settings(user)).await
    }

    async fn set_push_settings(
        &self,
        user: &str,
        change: &v1::PushSettingsRequest,
        max_overrides: usize,
    ) -> Result<v1::PushSettingsResponse, OpError> {
        held(self.inner.set_push_settings(user, change, max_overrides)).await
    }

    async fn claim_push(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        held(self.inner.claim_push(key, ttl_ms)).await
    }
}

#[async_trait]
impl MediaStore for HeldStore {
    async fn blob(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        held(self.inner.blob(id)).await
    }

    async fn is_uploader(&self, id: &BlobId, user: &str) -> Result<bool, StoreError> {
        held(self.inner.is_uploader(id, user)).await
    }

    async fn add_uploader(&self, id: &BlobId, user: &str) -> Result<(), StoreError> {
        held(self.inner.add_uploader(id, user)).await
    }

    async fn pending(&self, user: &str, id: &BlobId) -> Result<Option<PendingUpload>, StoreError> {
        held(MediaStore::pending(&self.inner, user, id)).await
    }

    async fn pending_count(&self, user: &str, limit: usize) -> Result<usize, StoreError> {
        held(self.inner.pending_count(user, limit)).await
    }

    async fn put_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        held(self.inner.put_pending(upload)).await
    }

    async fn remove_pending(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        held(self.inner.remove_pending(user, id)).await
    }

    async fn stale_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingUpload>, StoreError> {
        held(self.inner.stale_pending(before_ms, limit)).await
    }

    async fn complete(&self, user: &str, blob: &BlobMeta, hold: i64) -> Result<(), StoreError> {
        held(self.inner.complete(user, blob, hold)).await
    }

    async fn add_refs(&self, id: &BlobId, scopes: &[Scope]) -> Result<(), StoreError> {
        held(self.inner.add_refs(id, scopes)).await
    }

    async fn has_ref(&self, id: &BlobId, scope: &Scope) -> Result<bool, StoreError> {
        held(self.inner.has_ref(id, scope)).await
    }

    async fn group_refs(&self, id: &BlobId, limit: usize) -> Result<Vec<String>, StoreError> {
        held(self.inner.group_refs(id, limit)).await
    }

    async fn hold(&self, id: &BlobId, until_ms: i64) -> Result<bool, StoreError> {
        held(self.inner.hold(id, until_ms)).await
    }

    async fn add_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError> {
        held(self.inner.add_copies(id, copies)).await
    }

    async fn copies(&self, id: &BlobId, limit: usize) -> Result<Vec<CopyRef>, StoreError> {
        held(self.inner.copies(id, limit)).await
    }

    async fn remove_copies(&self, id: &BlobId, copies: &[CopyRef]) -> Result<(), StoreError> {
        held(self.inner.remove_copies(id, copies)).await
    }

    async fn due_blobs(&self, now_ms: i64, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        held(self.inner.due_blobs(now_ms, limit)).await
    }

    async fn begin_collect(
        &self,
        id: &BlobId,
        now_ms: i64,
        claim: u64,
    ) -> Result<Collect, StoreError> {
        held(self.inner.begin_collect(id, now_ms, claim)).await
    }

    async fn finish_collect(&self, id: &BlobId, claim: u64) -> Result<(), StoreError> {
        held(self.inner.finish_collect(id, claim)).await
    }
}
