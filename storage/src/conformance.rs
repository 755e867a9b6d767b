//! Checks every [`MessageStore`] backend must pass, run unchanged against
//! each one with [`conformance_tests!`](crate::conformance_tests).
//!
//! Every check uses inbox and sender names with a random suffix, so backends
//! that share one database between tests (Redis, a CQL cluster) need no
//! cleanup between checks.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use qim_proto::v1;

use crate::{MessageStore, NewMessage};

/// Opens the store under test. `open` may be called again after the previous
/// instance was dropped, and must then see the same data (persistence).
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens (or reopens) the store.
    async fn open(&self) -> Arc<dyn MessageStore>;
}

/// A name unique to one check run.
pub fn unique(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

/// A message for `inbox` from `sender` with a fresh client id.
pub fn message(inbox: &str, sender: &str, body: &str) -> NewMessage {
    message_with_id(inbox, sender, &unique("cm"), body)
}

/// A message with a chosen client id.
pub fn message_with_id(inbox: &str, sender: &str, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        inbox: inbox.to_owned(),
        sender: sender.to_owned(),
        sender_device: "dev-1".to_owned(),
        client_msg_id: client_msg_id.to_owned(),
        to: v1::Peer {
            target: Some(v1::peer::Target::User(inbox.to_owned())),
        },
        kind: "text".to_owned(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        server_time_ms: 1_700_000_000_000,
    }
}

fn bodies(messages: &[crate::StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.message.body).into_owned())
        .collect()
}

/// Seqs start at 1 and rise by one per message, independently per inbox.
pub async fn seqs_are_consecutive_per_inbox(backend: &dyn Backend) {
    let store = backend.open().await;
    let (a, b, s) = (unique("a"), unique("b"), unique("s"));
    for i in 0..5u64 {
        let out = store
            .append(vec![message(&a, &s, "x"), message(&b, &s, "y")])
            .await
            .expect("append");
        assert_eq!(out[0].message.seq, i + 1);
        assert_eq!(out[1].message.seq, i + 1);
        assert!(!out[0].duplicate && !out[1].duplicate);
    }
    assert_eq!(store.inbox_head(&a).await.expect("head"), 5);
    assert_eq!(store.inbox_head(&b).await.expect("head"), 5);
}

/// A batch keeps its order, and every field survives the round trip.
pub async fn batch_order_and_fields_survive(backend: &dyn Backend) {
    let store = backend.open().await;
    let (inbox, sender) = (unique("in"), unique("s"));
    let batch: Vec<_> = (0..50)
        .map(|i| message(&inbox, &sender, &format!("m{i}")))
        .collect();
    let sent = batch.clone();
    let out = store.append(batch).await.expect("append");
    let seqs: Vec<u64> = out.iter().map(|a| a.message.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let read = store.read_inbox(&inbox, 0, 100).await.expect("read");
    assert_eq!(read.len(), 50);
    for (got, (new, appended)) in read.iter().zip(sent.iter().zip(&out)) {
        assert_eq!(got, &appended.message);
        assert_eq!(got.inbox, inbox);
        assert_eq!(got.message.from_user, new.sender);
        assert_eq!(got.message.from_device, new.sender_device);
        assert_eq!(got.message.client_msg_id, new.client_msg_id);
        assert_eq!(got.message.body, new.body);
        assert_eq!(got.message.kind, new.kind);
        assert_eq!(got.message.to.as_ref(), Some(&new.to));
        assert_eq!(got.message.server_time_ms, new.server_time_ms);
        assert_eq!(got.message.msg_id.len(), 32);
    }
    let ids: HashSet<_> = read.iter().map(|m| m.message.msg_id.clone()).collect();
    assert_eq!(ids.len(), 50, "message ids are unique");
}

/// A resent `(sender, client_msg_id)` returns the original and stores
/// nothing, in a later batch or in the same one.
pub async fn client_msg_id_is_idempotent(backend: &dyn Backend) {
    let store = backend.open().await;
    let (inbox, sender) = (unique("in"), unique("s"));
    let first = store
        .append(vec![message_with_id(&inbox, &sender, "cm-1", "original")])
        .await
        .expect("append");
    let again = store
        .append(vec![message_with_id(&inbox, &sender, "cm-1", "changed")])
        .await
        .expect("append");
    assert!(again[0].duplicate);
    assert_eq!(again[0].message, first[0].message);
    assert_eq!(&again[0].message.message.body[..], b"original");

    let same_batch = store
        .append(vec![
            message_with_id(&inbox, &sender, "cm-2", "two"),
            message_with_id(&inbox, &sender, "cm-2", "two again"),
        ])
        .await
        .expect("append");
    assert!(!same_batch[0].duplicate);
    assert!(same_batch[1].duplicate);
    assert_eq!(same_batch[0].message, same_batch[1].message);

    // Another sender may use the same client id.
    let other = store
        .append(vec![message_with_id(&inbox, &unique("t"), "cm-1", "other")])
        .await
        .expect("append");
    assert!(!other[0].duplicate);
    assert_eq!(other[0].message.seq, 3);
    assert_eq!(store.inbox_head(&inbox).await.expect("head"), 3);
    assert_eq!(
        bodies(&store.read_inbox(&inbox, 0, 10).await.expect("read")),
        ["original", "two", "other"]
    );
}

/// Reads page through an inbox by seq.
pub async fn reads_page_by_seq(backend: &dyn Backend) {
    let store = backend.open().await;
    let (inbox, sender) = (unique("in"), unique("s"));
    let batch = (1..=25)
        .map(|i| message(&inbox, &sender, &format!("{i}")))
        .collect();
    store.append(batch).await.expect("append");
    let page = |after, limit| {
        let store = Arc::clone(&store);
        let inbox = inbox.clone();
        async move {
            store
                .read_inbox(&inbox, after, limit)
                .await
                .expect("read")
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(page(10, 10).await, (11..=20).collect::<Vec<_>>());
    assert_eq!(page(20, 10).await, (21..=25).collect::<Vec<_>>());
    assert!(page(25, 10).await.is_empty());
    assert!(page(u64::MAX, 10).await.is_empty());
    assert!(page(3, 0).await.is_empty());

    let empty = unique("nobody");
    assert_eq!(store.inbox_head(&empty).await.expect("head"), 0);
    assert!(
        store
            .read_inbox(&empty, 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
}

/// Cursors are kept per device.
pub async fn cursors_are_per_device(backend: &dyn Backend) {
    let store = backend.open().await;
    let inbox = unique("in");
    assert_eq!(
        store.load_cursor(&inbox, "phone").await.expect("load"),
        None
    );
    store.save_cursor(&inbox, "phone", 5).await.expect("save");
    store.save_cursor(&inbox, "laptop", 2).await.expect("save");
    store.save_cursor(&inbox, "phone", 7).await.expect("save");
    assert_eq!(
        store.load_cursor(&inbox, "phone").await.expect("load"),
        Some(7)
    );
    assert_eq!(
        store.load_cursor(&inbox, "laptop").await.expect("load"),
        Some(2)
    );
}

/// Concurrent appends to one inbox get unique, gap-free seqs, and each
/// caller's batch stays in order.
pub async fn concurrent_appends_never_share_a_seq(backend: &dyn Backend) {
    let store = backend.open().await;
    let inbox = unique("in");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        let inbox = inbox.clone();
        tasks.push(tokio::spawn(async move {
            let sender = unique(&format!("s{t}"));
            let mut seqs = Vec::new();
            for round in 0..10 {
                let batch = (0..5)
                    .map(|i| message(&inbox, &sender, &format!("{t}-{round}-{i}")))
                    .collect();
                let out = store.append(batch).await.expect("append");
                seqs.extend(out.iter().map(|a| a.message.seq));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.expect("task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a sender's order is kept"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
}

/// After the store is closed and reopened, data, heads and idempotency keys
/// are all still there, and no seq is issued twice.
pub async fn data_survives_reopen(backend: &dyn Backend) {
    let (inbox, sender) = (unique("in"), unique("s"));
    {
        let store = backend.open().await;
        let batch = (0..10)
            .map(|i| message_with_id(&inbox, &sender, &format!("c{i}"), &format!("{i}")))
            .collect();
        store.append(batch).await.expect("append");
        store.save_cursor(&inbox, "phone", 4).await.expect("save");
        store.flush().await.expect("flush");
    }
    let store = backend.open().await;
    assert_eq!(store.inbox_head(&inbox).await.expect("head"), 10);
    assert_eq!(
        store.read_inbox(&inbox, 0, 100).await.expect("read").len(),
        10
    );
    assert_eq!(
        store.load_cursor(&inbox, "phone").await.expect("load"),
        Some(4)
    );
    let again = store
        .append(vec![
            message_with_id(&inbox, &sender, "c3", "3 again"),
            message_with_id(&inbox, &sender, "c10", "10"),
        ])
        .await
        .expect("append");
    assert!(again[0].duplicate);
    assert_eq!(again[0].message.seq, 4);
    assert!(!again[1].duplicate);
    assert_eq!(again[1].message.seq, 11);
}

/// Expands to one `#[tokio::test]` per conformance check, each against the
/// backend built by `$backend` (an expression whose value implements
/// [`Backend`]).
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(@each $backend;
            seqs_are_consecutive_per_inbox,
            batch_order_and_fields_survive,
            client_msg_id_is_idempotent,
            reads_page_by_seq,
            cursors_are_per_device,
            concurrent_appends_never_share_a_seq,
            data_survives_reopen,
        );
    };
    (@each $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend;
                $crate::conformance::$check(&backend).await;
            }
        )*
    };
}
