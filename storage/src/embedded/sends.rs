//! One row per send: the idempotency record and the message-id index in
//! one.
//!
//! # Key
//! `sends`: ten bytes, and the low 80 bits of the send's `msg_id` are those
//! same ten bytes ([`msg_id_with_tail`]):
//! - for a time-ordered `client_msg_id` (the SDK's,
//!   [`qim_proto::ids::time_ordered_client_msg_id`]):
//!   `[h16(sender) u16 BE][id's time in ms, low 24 bits BE][low 40 bits of h64(sender, client_msg_id)]`;
//! - for any other id: `[h16(sender) u16 BE][h64(sender, client_msg_id) u64 BE]`,
//!   as every send was keyed before time-ordered ids.
//!
//! So the row is found from either side:
//! - a resend names `(sender, client_msg_id)`: the same id gives the same
//!   key;
//! - a recall, edit or read count names the `msg_id`: take its tail.
//!
//! A sender's sends with time-ordered ids sit next to each other in time
//! order, so a new send's key lands beside the sender's last one, in
//! memory that is still warm: looking it up (is it a resend?) and adding
//! it cost less than at a random place among all the rows (BENCHMARKS,
//! "Send rows in time order"). The 24-bit time wraps every 4.7 hours, which
//! only moves where rows go: a memtable holds minutes of sends. Within one
//! sender's millisecond, 40 bits of hash tell sends apart; once the clock
//! has wrapped, a sender's rows at one time value are told apart by those
//! 40 bits too, which leaves a new send as likely to meet an earlier one's
//! key as the 64-bit hash did. A collision is refused, as below.
//!
//! The hashes are xxh3 (stable across versions, as they are stored).
//! Either way the row is only taken as the send's after its primary copy
//! was read and matched (the same sender and client id, or the same
//! `msg_id`), so a hash collision never lets one send answer for another:
//! a colliding resend is refused as a conflict and a colliding id is not
//! found. Rows of one sender share the two-byte prefix, so deleting an
//! account reads 1/65,536 of the rows to find its own.
//!
//! The hash is not keyed: to make another user's send collide with one of
//! its own, an attacker would have to know that user's `client_msg_id`
//! before it is sent (the SDK draws 128 random bits); a collision with a
//! send already stored refuses only the attacker's own.
//!
//! # Value
//! `[1][digest 16]` or `[0]` (an append, which keeps no digest), then the
//! copies, `([len][inbox][seq u64 BE])*`, the primary first.
//!
//! # Earlier stores
//! Stores written before this row kept two: `idempotency`
//! (`[len][sender][client_msg_id]` → primary key and digest) and `msg_ids`
//! (`[msg_id]` → copies). If either holds rows when the store opens
//! ([`Tables::legacy`]), a miss here is looked up there too, and sweeping
//! or deleting removes both; a new store never reads them.

use qim_proto::ids::client_msg_id_time;
use xxhash_rust::xxh3::xxh3_64;

use super::kv::Batch;
use super::tables::{
    Tables, decode_copies, decode_message, encode_copies, idempotency_key, message_key,
    split_idempotency_value, split_message_key, unavailable,
};
use crate::conversations::DIGEST_BYTES;
use crate::model::msg_id_with_tail;
use crate::{StoreError, StoredMessage};

/// The bytes of a send row's key.
pub(super) const SEND_KEY_BYTES: usize = 10;

/// A send row's key.
pub(super) type SendKey = [u8; SEND_KEY_BYTES];

/// The two bytes every row of `sender` starts with.
pub(super) fn sender_prefix(sender: &str) -> [u8; 2] {
    ((xxh3_64(sender.as_bytes()) >> 48) as u16).to_be_bytes()
}

/// The row of `(sender, client_msg_id)`.
pub(super) fn send_key(sender: &str, client_msg_id: &str) -> SendKey {
    SendId::new(sender, client_msg_id).key
}

/// A send's names, made once per send: its row's key, and the bytes the
/// writer's batch of new sends is keyed by (the same as an earlier store's
/// idempotency key).
pub(super) struct SendId {
    pub(super) key: SendKey,
    /// `[len][sender][client_msg_id]`.
    pub(super) idem: Vec<u8>,
}

impl SendId {
    pub(super) fn new(sender: &str, client_msg_id: &str) -> Self {
        // The sender's length first, so `("ab", "c")` and `("a", "bc")` differ.
        let idem = idempotency_key(sender, client_msg_id);
        let hash = xxh3_64(&idem).to_be_bytes();
        let mut key = [0u8; SEND_KEY_BYTES];
        key[..2].copy_from_slice(&sender_prefix(sender));
        match client_msg_id_time(client_msg_id) {
            Some(ms) => {
                let slot = (ms as u32).to_be_bytes();
                key[2..5].copy_from_slice(&slot[1..]);
                key[5..].copy_from_slice(&hash[3..]);
            }
            None => key[2..].copy_from_slice(&hash),
        }
        Self { key, idem }
    }
}

/// The `msg_id` of a new send stored under `key`.
pub(super) fn msg_id_of(key: &SendKey, now_ms: i64) -> String {
    let mut tail = [0u8; 16];
    tail[16 - SEND_KEY_BYTES..].copy_from_slice(key);
    msg_id_with_tail(now_ms, u128::from_be_bytes(tail))
}

/// The row a `msg_id` would be stored under, if it has the shape of one.
fn key_of_msg_id(msg_id: &str) -> Option<SendKey> {
    if msg_id.len() != 32 {
        return None;
    }
    let id = u128::from_str_radix(msg_id, 16).ok()?;
    let bytes = id.to_be_bytes();
    bytes[16 - SEND_KEY_BYTES..].try_into().ok()
}

/// A send row's value.
pub(super) fn send_value(digest: Option<&[u8; DIGEST_BYTES]>, copies: &[(String, u64)]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + DIGEST_BYTES + 24 * copies.len());
    match digest {
        Some(d) => {
            value.push(1);
            value.extend_from_slice(d);
        }
        None => value.push(0),
    }
    value.extend_from_slice(&encode_copies(copies));
    value
}

/// What a send row (or an earlier store's records) says of a send.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) digest: Option<[u8; DIGEST_BYTES]>,
    /// The copies still stored, the primary first.
    pub(super) copies: Vec<StoredMessage>,
}

/// A send row's digest, if it keeps one, and its copies (inbox, seq).
type SendRow = (Option<[u8; DIGEST_BYTES]>, Vec<(String, u64)>);

fn split_send_value(value: &[u8]) -> Result<SendRow, StoreError> {
    let corrupt = || StoreError::Corrupt("bad send record".into());
    let (&flag, rest) = value.split_first().ok_or_else(corrupt)?;
    let (digest, rest) = match flag {
        0 => (None, rest),
        1 => {
            let (d, rest) = rest.split_at_checked(DIGEST_BYTES).ok_or_else(corrupt)?;
            (Some(d.try_into().map_err(|_| corrupt())?), rest)
        }
        _ => return Err(corrupt()),
    };
    Ok((digest, decode_copies(rest)?))
}

fn read_copy(t: &Tables, inbox: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
    let key = message_key(inbox, seq);
    match t.messages.get(&key).map_err(unavailable)? {
        Some(value) => Ok(Some(decode_message(inbox, &key, &value)?)),
        None => Ok(None),
    }
}

fn read_copies(t: &Tables, copies: &[(String, u64)]) -> Result<Vec<StoredMessage>, StoreError> {
    let mut out = Vec::with_capacity(copies.len());
    for (inbox, seq) in copies {
        if let Some(copy) = read_copy(t, inbox, *seq)? {
            out.push(copy);
        }
    }
    Ok(out)
}

/// What a resend of `(sender, client_msg_id)` finds: `Ok(None)` for a new
/// send, `Err(Collision)` inside for a row of another send under the same
/// hash (refused as a conflict).
pub(super) fn earlier_send(
    t: &Tables,
    sender: &str,
    client_msg_id: &str,
    id: &SendId,
) -> Result<Result<Option<Sent>, Collision>, StoreError> {
    if let Some(value) = t.sends.get(id.key).map_err(unavailable)? {
        let (digest, copies) = split_send_value(&value)?;
        let copies = read_copies(t, &copies)?;
        return Ok(match copies.first() {
            Some(first)
                if first.message.from_user != sender
                    || first.message.client_msg_id != client_msg_id =>
            {
                tracing::warn!(
                    sender,
                    "two sends share a send row's hash; the later is refused"
                );
                Err(Collision)
            }
            _ => Ok(Some(Sent { digest, copies })),
        });
    }
    if !t.legacy {
        return Ok(Ok(None));
    }
    let Some(record) = t.idempotency.get(&id.idem).map_err(unavailable)? else {
        return Ok(Ok(None));
    };
    let (msg_key, digest) = split_idempotency_value(&record)?;
    let (inbox, seq) = split_message_key(msg_key)?;
    let primary = read_copy(t, &inbox, seq)?
        .ok_or_else(|| StoreError::Corrupt("idempotency key without its message".into()))?;
    let copies = match t
        .msg_ids
        .get(primary.message.msg_id.as_bytes())
        .map_err(unavailable)?
    {
        Some(index) => read_copies(t, &decode_copies(&index)?)?,
        // Stored by `append`, which keeps one copy and no index.
        None => vec![primary],
    };
    Ok(Ok(Some(Sent { digest, copies })))
}

/// Two sends under one hash: the later is refused.
#[derive(Debug)]
pub(super) struct Collision;

/// The copies of the send `msg_id` names, primary first (as stored: some
/// may have been deleted since), or `None`.
pub(super) fn copies_of_msg_id(
    t: &Tables,
    msg_id: &str,
) -> Result<Option<Vec<(String, u64)>>, StoreError> {
    if let Some(key) = key_of_msg_id(msg_id) {
        if let Some(value) = t.sends.get(key).map_err(unavailable)? {
            let (_, copies) = split_send_value(&value)?;
            // The first copy still stored says whose row this is (the
            // primary may be gone with its inbox's account).
            for (inbox, seq) in &copies {
                if let Some(copy) = read_copy(t, inbox, *seq)? {
                    if copy.message.msg_id == msg_id {
                        return Ok(Some(copies));
                    }
                    break;
                }
            }
        }
    }
    if !t.legacy {
        return Ok(None);
    }
    match t.msg_ids.get(msg_id.as_bytes()).map_err(unavailable)? {
        Some(index) => Ok(Some(decode_copies(&index)?)),
        None => Ok(None),
    }
}

/// Removes the send row of `m` (a stored copy) into `batch`: its send is
/// forgotten, and a resend is a new message.
pub(super) fn forget_send(t: &Tables, batch: &mut Batch, m: &StoredMessage) {
    let (sender, client) = (&m.message.from_user, &m.message.client_msg_id);
    batch.remove(&t.sends, send_key(sender, client).to_vec());
    if t.legacy {
        batch.remove(&t.idempotency, idempotency_key(sender, client));
        batch.remove(&t.msg_ids, m.message.msg_id.as_bytes().to_vec());
    }
}

/// The keys of `user`'s send rows: those under the user's prefix whose
/// first copy still stored was sent by the user, and those none of whose
/// copies is stored any more (they name nothing, whoever sent them).
pub(super) fn rows_of_sender(t: &Tables, user: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = Vec::new();
    for guard in t.sends.prefix(sender_prefix(user)) {
        let (key, value) = guard.into_inner().map_err(unavailable)?;
        let (_, copies) = split_send_value(&value)?;
        let mut owner = None;
        for (inbox, seq) in &copies {
            if let Some(copy) = read_copy(t, inbox, *seq)? {
                owner = Some(copy.message.from_user);
                break;
            }
        }
        if owner.is_none_or(|owner| owner == user) {
            keys.push(key.to_vec());
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversations::{ConversationOp, ConversationStore, Post};
    use crate::deletion::UserPurge;
    use crate::embedded::EmbeddedStore;
    use bytes::Bytes;
    use prost::Message as _;
    use qim_proto::v1;

    fn post(from: &str, to: &str, client: &str, body: &str) -> Post {
        Post {
            sender: from.to_owned(),
            sender_device: "d".into(),
            client_msg_id: client.to_owned(),
            to: v1::Peer {
                target: Some(v1::peer::Target::User(to.to_owned())),
            },
            kind: "text".into(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            server_time_ms: qim_proto::now_ms(),
            inboxes: vec![to.to_owned()],
            ..Post::default()
        }
    }

    fn recall(user: &str, msg_id: &str) -> ConversationOp {
        ConversationOp::Recall {
            user: user.to_owned(),
            msg_id: msg_id.to_owned(),
            now_ms: qim_proto::now_ms(),
            window_ms: 60_000,
        }
    }

    async fn send(store: &EmbeddedStore, p: Post) -> crate::conversations::Posted {
        let mut out = store.post(vec![p]).await.expect("store answers");
        out.pop().expect("one answer").expect("posted")
    }

    /// A send writes one row, found again by a resend and by its msg_id,
    /// and nothing into the keyspaces earlier stores used.
    #[tokio::test]
    async fn one_row_answers_a_resend_and_a_recall() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert!(!store.tables.legacy);
        let first = send(&store, post("alice", "bob", "c-1", "hi")).await;
        assert!(!first.duplicate);
        let again = send(&store, post("alice", "bob", "c-1", "hi")).await;
        assert!(again.duplicate);
        assert_eq!(again.copies, first.copies);
        let changed = store
            .post(vec![post("alice", "bob", "c-1", "other")])
            .await
            .expect("store answers");
        assert!(matches!(changed[..], [Err(crate::OpError::Conflict)]));
        let id = first.copies[0].message.msg_id.clone();
        assert!(matches!(
            store.apply(recall("bob", &id)).await,
            Err(crate::OpError::NotSender)
        ));
        // An id of the same row with another time is not this send's.
        let other_time = format!("{:012x}{}", 1u64, &id[12..]);
        assert!(matches!(
            store.apply(recall("alice", &other_time)).await,
            Err(crate::OpError::NotFound)
        ));
        store.apply(recall("alice", &id)).await.expect("recalled");
        assert_eq!(store.tables.sends.len().expect("count"), 1);
        assert!(store.tables.idempotency.is_empty().expect("count"));
        assert!(store.tables.msg_ids.is_empty().expect("count"));
    }

    /// A send whose row key is taken by another sender's send (a hash
    /// collision, forced here by writing the row) is refused as a
    /// conflict; the other send keeps its row and its resends.
    #[tokio::test]
    async fn a_colliding_send_is_refused_and_takes_nothing_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let alices = send(&store, post("alice", "bob", "a-1", "hi")).await;
        let row = store
            .tables
            .sends
            .get(send_key("alice", "a-1"))
            .expect("read")
            .expect("row");
        store
            .tables
            .sends
            .insert(send_key("mallory", "m-1"), row)
            .expect("write");
        let out = store
            .post(vec![post("mallory", "bob", "m-1", "hi")])
            .await
            .expect("store answers");
        assert!(matches!(out[..], [Err(crate::OpError::Conflict)]));
        let again = send(&store, post("alice", "bob", "a-1", "hi")).await;
        assert!(again.duplicate);
        assert_eq!(again.copies, alices.copies);
    }

    /// With the addressee's copy gone with its account, the sender's own
    /// copy still answers for the send: it can be recalled.
    #[tokio::test]
    async fn a_send_is_found_by_its_id_after_its_primary_copy_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let mut p = post("alice", "bob", "a-1", "hi");
        p.inboxes.push("alice".into());
        let sent = send(&store, p).await;
        assert_eq!(sent.copies.len(), 2);
        store
            .purge_user("bob", &["alice".to_owned()])
            .await
            .expect("purged");
        let id = sent.copies[0].message.msg_id.clone();
        store.apply(recall("alice", &id)).await.expect("recalled");
    }

    /// Deleting an account removes its send rows and no one else's.
    #[tokio::test]
    async fn a_purge_removes_the_users_send_rows_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        for i in 0..3 {
            send(&store, post("alice", "bob", &format!("a-{i}"), "x")).await;
        }
        let bobs = send(&store, post("bob", "carol", "b-1", "y")).await;
        store
            .purge_user("alice", &["bob".to_owned()])
            .await
            .expect("purged");
        assert_eq!(store.tables.sends.len().expect("count"), 1);
        let again = send(&store, post("bob", "carol", "b-1", "y")).await;
        assert!(again.duplicate);
        assert_eq!(again.copies, bobs.copies);
        assert!(
            !send(&store, post("alice", "bob", "a-0", "x"))
                .await
                .duplicate
        );
    }

    /// A store written before send rows keeps answering resends and
    /// recalls of what it holds, and writes new sends the new way.
    #[tokio::test]
    async fn an_earlier_stores_records_are_still_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_id = crate::model::new_msg_id(qim_proto::now_ms());
        let old = post("alice", "bob", "old-1", "hi").to_message(old_id.clone());
        let digest = post("alice", "bob", "old-1", "hi").digest();
        {
            let db = fjall::Database::builder(dir.path()).open().expect("db");
            let ks = |n: &str| {
                db.keyspace(n, fjall::KeyspaceCreateOptions::default)
                    .expect("keyspace")
            };
            let mkey = message_key("bob", 1);
            ks("messages")
                .insert(&mkey, old.encode_to_vec())
                .expect("write");
            let mut record = mkey.clone();
            record.extend_from_slice(&digest);
            ks("idempotency")
                .insert(idempotency_key("alice", "old-1"), record)
                .expect("write");
            ks("msg_ids")
                .insert(old_id.as_bytes(), encode_copies(&[("bob".to_owned(), 1)]))
                .expect("write");
            db.persist(fjall::PersistMode::SyncAll).expect("sync");
        }
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert!(store.tables.legacy);
        let again = send(&store, post("alice", "bob", "old-1", "hi")).await;
        assert!(again.duplicate);
        assert_eq!(again.copies[0].message.msg_id, old_id);
        assert_eq!(again.copies[0].seq, 1);
        let new = send(&store, post("alice", "bob", "new-1", "hi")).await;
        assert_eq!(new.copies[0].seq, 2);
        assert_eq!(store.tables.sends.len().expect("count"), 1);
        store
            .apply(recall("alice", &old_id))
            .await
            .expect("recalled");
        let new_id = new.copies[0].message.msg_id.clone();
        store
            .apply(recall("alice", &new_id))
            .await
            .expect("recalled");
    }

    /// Sends with time-ordered ids sit among their sender's rows in time
    /// order, whatever order they came in; each answers its resends,
    /// refuses a changed one and is found by its `msg_id`. An id of any
    /// other form keeps the key every send had before, so the rows of an
    /// earlier store still answer.
    #[tokio::test]
    async fn time_ordered_ids_keep_a_senders_rows_in_time_order() {
        use qim_proto::ids::time_ordered_client_msg_id;
        let t0 = 1_764_770_000_000;
        let ids: Vec<String> = (0..5u64)
            .map(|i| time_ordered_client_msg_id(t0 + i * 1000, u128::from(5 - i) << 70))
            .collect();
        let keys: Vec<SendKey> = ids.iter().map(|id| send_key("alice", id)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in time order");
        assert!(keys.iter().all(|k| k[..2] == sender_prefix("alice")));
        let twin = time_ordered_client_msg_id(t0, 1);
        assert_ne!(send_key("alice", &twin), keys[0], "same time, another id");
        let old = "0123456789abcdef0123456789abcdef";
        let mut before = [0u8; SEND_KEY_BYTES];
        before[..2].copy_from_slice(&sender_prefix("alice"));
        before[2..].copy_from_slice(&xxh3_64(&idempotency_key("alice", old)).to_be_bytes());
        assert_eq!(send_key("alice", old), before);

        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let mut sent = Vec::new();
        for id in ids.iter().rev() {
            sent.push(send(&store, post("alice", "bob", id, "hi")).await);
        }
        let rows: Vec<Vec<u8>> = store
            .tables
            .sends
            .iter()
            .map(|g| g.key().expect("row").to_vec())
            .collect();
        assert_eq!(rows, keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
        for (id, first) in ids.iter().rev().zip(&sent) {
            let again = send(&store, post("alice", "bob", id, "hi")).await;
            assert!(again.duplicate);
            assert_eq!(again.copies, first.copies);
            let changed = store
                .post(vec![post("alice", "bob", id, "other")])
                .await
                .expect("store answers");
            assert!(matches!(changed[..], [Err(crate::OpError::Conflict)]));
        }
        for first in &sent {
            let id = first.copies[0].message.msg_id.clone();
            store.apply(recall("alice", &id)).await.expect("recalled");
        }
    }

    #[test]
    fn a_msg_id_names_the_row_its_send_is_stored_under() {
        let key = send_key("alice", "c-1");
        let id = msg_id_of(&key, 1_700_000_000_000);
        assert_eq!(id.len(), 32);
        assert_eq!(key_of_msg_id(&id), Some(key));
        // The time leads, so ids still sort by time.
        assert!(msg_id_of(&key, 1_700_000_000_001) > id);
        assert_eq!(key[..2], sender_prefix("alice"));
        assert_ne!(send_key("ab", "c"), send_key("a", "bc"));
        assert_eq!(key_of_msg_id("not hex at all, thirty-two chars"), None);
        assert_eq!(key_of_msg_id("abc"), None);
    }

    #[test]
    fn a_send_value_round_trips_with_and_without_a_digest() {
        let copies = vec![("bob".to_owned(), 7), ("alice".to_owned(), 9)];
        let digest = [3u8; DIGEST_BYTES];
        let (d, c) = split_send_value(&send_value(Some(&digest), &copies)).expect("decodes");
        assert_eq!((d, c), (Some(digest), copies.clone()));
        let (d, c) = split_send_value(&send_value(None, &copies[..1])).expect("decodes");
        assert_eq!((d, c), (None, copies[..1].to_vec()));
        assert!(split_send_value(&[1, 2, 3]).is_err());
        assert!(split_send_value(&[]).is_err());
        assert!(split_send_value(&[9]).is_err());
    }
}
