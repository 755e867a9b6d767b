//! The embedded backend's [`UserPurge`]: one batch, synced, over every
//! keyspace that holds the user's records or names the user (keys as the
//! other files of this directory describe them).
//!
//! Written directly (not through the writer thread), like accounts: a
//! deletion is rare, and the account is a tombstone before it runs, so
//! the user's own sessions write nothing more. A peer's write racing with
//! the purge (a message sent to the deleted id at that moment) may leave a
//! record behind; a repeated deletion removes it. The writer's cached
//! inbox head of the user stays until the cache is dropped: no seq of the
//! deleted inbox is handed out twice while it runs.

use super::kv::{Batch, Table};
use async_trait::async_trait;

use super::EmbeddedStore;
use super::media::pending_prefix;
use super::sends::rows_of_sender;
use super::tables::{
    Tables, check_key_part, conv_key, conv_msg_prefix, load_record, prefixed, unavailable,
};
use crate::StoreError;
use crate::accounts::check_user;
use crate::deletion::UserPurge;

/// Adds the removal of every key of `ks` starting with `prefix`.
fn remove_prefix(batch: &mut Batch, ks: &Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = Vec::new();
    for guard in ks.prefix(prefix) {
        let (key, _) = guard.into_inner().map_err(unavailable)?;
        batch.remove(ks, key.to_vec());
        keys.push(key.to_vec());
    }
    Ok(keys)
}

fn purge(t: &Tables, user: &str, peers: &[String]) -> Result<(), StoreError> {
    let mut batch = t.db.batch();
    let mine = prefixed(user, 0);
    // The inbox, its cursors, the conversation list and its indexes, the
    // idempotency keys of the user's sends, receipts, counters, sessions,
    // invitations, contact rows of the user's side.
    for ks in [
        &t.messages,
        &t.cursors,
        &t.conversations,
        &t.conv_order,
        &t.conv_msgs,
        &t.idempotency,
        &t.receipts,
        &t.quota_bytes,
        &t.sessions_log,
        &t.invitations,
        &t.user_groups,
        &t.contacts,
        &t.blocks,
        &t.blocked_by,
        &t.outgoing,
        &t.rejections,
        &t.push_tokens,
    ] {
        remove_prefix(&mut batch, ks, &mine)?;
    }
    for ks in [&t.settings, &t.push_settings, &t.last_seen, &t.revoked] {
        batch.remove(ks, user.as_bytes().to_vec());
    }
    // The user's send rows (the idempotency records and msg_id index of
    // what the user sent).
    for key in rows_of_sender(t, user)? {
        batch.remove(&t.sends, key);
    }
    // Scheduled sends: the owner index names them.
    for key in remove_prefix(&mut batch, &t.schedule_owners, &mine)? {
        let id = key.get(mine.len()..).unwrap_or_default().to_vec();
        if let Some(at) = t.schedule_ids.get(&id).map_err(unavailable)? {
            batch.remove(&t.scheduled, at.to_vec());
        }
        batch.remove(&t.schedule_ids, id);
    }
    remove_prefix(&mut batch, &t.media, &pending_prefix(user))?;
    // The other side of each relation.
    let convkey = format!("u:{user}");
    for peer in peers {
        check_key_part(peer)?;
        if let Some(record) = load_record(&t.conversations, peer, &convkey)? {
            batch.remove(&t.conv_order, record.order_key(peer, &convkey));
        }
        batch.remove(&t.conversations, conv_key(peer, &convkey));
        remove_prefix(&mut batch, &t.conv_msgs, &conv_msg_prefix(peer, &convkey))?;
        for ks in [
            &t.contacts,
            &t.blocks,
            &t.blocked_by,
            &t.outgoing,
            &t.rejections,
        ] {
            batch.remove(ks, conv_key(peer, user));
        }
    }
    batch.commit().map_err(unavailable)?;
    t.db.sync().map_err(unavailable)
}

#[async_trait]
impl UserPurge for EmbeddedStore {
    async fn purge_user(&self, user: &str, peers: &[String]) -> Result<(), StoreError> {
        check_user(user)?;
        check_key_part(user)?;
        let (t, user, peers) = (self.tables.clone(), user.to_owned(), peers.to_vec());
        // Before and after: a count charged while the rows go is not
        // written back by the writer (a deleted account sends nothing more).
        self.counts.forget_user(&user);
        let purged = tokio::task::spawn_blocking(move || {
            purge(&t, &user, &peers)?;
            Ok::<_, StoreError>(user)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("purge task: {e}")))??;
        self.counts.forget_user(&purged);
        Ok(())
    }
}
