//! The storage conformance suite against the embedded backend, on each of
//! its engines, and on fjall with the store's own log on.

use std::sync::Arc;

use async_trait::async_trait;
use qim_storage::MessageStore;
use qim_storage::conformance::Backend;
use qim_storage::embedded::{EmbeddedStore, Engine, StoreOptions};

struct Embedded {
    dir: tempfile::TempDir,
    options: StoreOptions,
}

impl Embedded {
    fn new((engine, log): (Engine, bool)) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            options: StoreOptions {
                engine,
                log,
                ..Default::default()
            },
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&self) -> Arc<dyn MessageStore> {
        // The engines hold a lock on their files until the previous instance
        // is dropped; conformance checks drop before reopening.
        Arc::new(
            EmbeddedStore::open_with_options(self.dir.path(), &self.options).expect("open store"),
        )
    }
}

#[async_trait]
impl qim_storage::conformance_im::ImBackend for Embedded {
    async fn open_im(&self) -> qim_storage::Stores {
        qim_storage::Stores::open_embedded_on(self.dir.path(), &self.options, 0)
            .expect("open store")
    }
}

/// Both suites on each engine, one module per engine.
macro_rules! on_engines {
    ($($name:ident => $engine:expr),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                qim_storage::conformance_tests!(Embedded::new($engine));

                mod im {
                    use super::*;
                    qim_storage::im_conformance_tests!(Embedded::new($engine));
                }
            }
        )*
    };
}

on_engines!(
    fjall => (Engine::Fjall, false),
    redb => (Engine::Redb, false),
    sqlite => (Engine::Sqlite, false),
    fjall_with_the_store_log => (Engine::Fjall, true),
);

/// The retention sweep deletes expired messages from disk, keeps each
/// inbox's newest (its head), takes them off unread counts, and history
/// says "older messages expired" where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_sweep_deletes_expired_messages_and_keeps_counts_exact() {
    use bytes::Bytes;
    use qim_storage::conversations::{ConversationStore, HistoryAnchor, Post, user};
    use qim_storage::model::NewMessage;

    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let now = qim_proto::now_ms();
    let old = now - 3 * 86_400_000;
    let post = |id: &str, at: i64| Post {
        sender: "alice".into(),
        sender_device: "d".into(),
        client_msg_id: id.into(),
        to: user("bob"),
        kind: "text".into(),
        body: Bytes::from(id.to_owned()),
        server_time_ms: at,
        inboxes: vec!["bob".into()],
        ..Post::default()
    };
    let batch = vec![
        post("o1", old),
        post("o2", old),
        post("o3", old),
        post("n1", now),
        post("n2", now),
    ];
    for result in store.post(batch).await.expect("post") {
        result.expect("posted");
    }
    let note = |id: &str| NewMessage {
        inbox: "carol".into(),
        sender: "alice".into(),
        sender_device: "d".into(),
        client_msg_id: id.into(),
        to: user("carol"),
        kind: "text".into(),
        body: Bytes::new(),
        server_time_ms: old,
    };
    store
        .append(vec![note("c1"), note("c2")])
        .await
        .expect("append");
    assert_eq!(unread(&store, "bob", "alice").await, 5);

    store.set_history_retention_ms(86_400_000);
    assert_eq!(
        store.sweep_expired().await.expect("sweep"),
        4,
        "bob's three old messages and carol's older one"
    );
    let seqs =
        |v: Vec<qim_storage::StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.read_inbox("bob", 0, 100).await.expect("read")),
        [4, 5]
    );
    assert_eq!(
        unread(&store, "bob", "alice").await,
        2,
        "expired messages are no longer unread"
    );
    let page = store
        .history("bob", &user("alice"), HistoryAnchor::End, false, 10)
        .await
        .expect("history");
    assert_eq!(page.entries.len(), 2);
    assert!(page.expired, "the boundary is reported, not a silent gap");

    // Carol's newest stays (it holds her head): the next seq is 3, not 1.
    assert_eq!(
        seqs(store.read_inbox("carol", 0, 100).await.expect("read")),
        [2]
    );
    let mut fresh = note("c3");
    fresh.server_time_ms = now;
    let appended = store.append(vec![fresh]).await.expect("append");
    assert_eq!(appended[0].message.seq, 3);
    // An expired message's key is gone with it: a resend is new.
    let again = store.append(vec![note("c1")]).await.expect("append");
    assert!(!again[0].duplicate);
    assert_eq!(again[0].message.seq, 4);
    assert_eq!(
        store.sweep_expired().await.expect("sweep"),
        1,
        "carol's seq 2, no longer her newest; the sweep stops at seq 3"
    );
}

async fn unread(store: &EmbeddedStore, owner: &str, peer: &str) -> u32 {
    use qim_storage::conversations::{ConversationStore, user};
    store
        .conversation(owner, &user(peer))
        .await
        .expect("read")
        .expect("conversation")
        .unread
}

/// Below the floor of free space every write is refused as `Full`
/// (retryable, not fatal) before it reaches the database; reads go on, and
/// once the floor is met again writes succeed without a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_writes_and_recovers_without_a_restart() {
    use qim_storage::StoreError;
    use qim_storage::conformance::message;

    let dir = tempfile::tempdir().expect("temp dir");
    let stores = qim_storage::Stores::open_embedded(dir.path(), 0).expect("open");
    let disk = stores.disk.clone().expect("the embedded store has a disk");
    let before = stores
        .messages
        .append(vec![message("bob", "alice", "before")])
        .await
        .expect("append");
    // A floor above what is free: the disk counts as nearly full.
    disk.set_min_free_bytes(disk.refresh().saturating_add(1 << 40));
    let refused = stores
        .messages
        .append(vec![message("bob", "alice", "while full")])
        .await;
    match refused {
        Err(e @ StoreError::Full(_)) => assert!(e.is_retryable() && !e.is_fatal()),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(matches!(
        stores.messages.save_cursor("bob", "d1", 1).await,
        Err(StoreError::Full(_))
    ));
    let day = qim_storage::quota::utc_day(qim_proto::now_ms());
    assert!(matches!(
        stores.quotas.charge_stored_bytes("alice", day, 1, 10).await,
        Err(StoreError::Full(_))
    ));
    let read = stores
        .messages
        .read_inbox("bob", 0, 10)
        .await
        .expect("read");
    assert_eq!(read.len(), 1, "reads go on");
    assert_eq!(read[0].seq, before[0].message.seq);
    disk.set_min_free_bytes(1);
    let after = stores
        .messages
        .append(vec![message("bob", "alice", "after")])
        .await
        .expect("writes resume");
    assert_eq!(after[0].message.seq, before[0].message.seq + 1);
}
