//! The storage conformance suite against the embedded backend.

use std::sync::Arc;

use async_trait::async_trait;
use qim_storage::MessageStore;
use qim_storage::conformance::Backend;
use qim_storage::embedded::EmbeddedStore;

struct Embedded {
    dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&self) -> Arc<dyn MessageStore> {
        // fjall holds a lock on the directory until the previous instance is
        // dropped; conformance checks drop before reopening.
        Arc::new(EmbeddedStore::open(self.dir.path()).expect("open store"))
    }
}

qim_storage::conformance_tests!(Embedded::new());

#[async_trait]
impl qim_storage::conformance_im::ImBackend for Embedded {
    async fn open_im(&self) -> qim_storage::Stores {
        qim_storage::Stores::open_embedded(self.dir.path(), 0).expect("open store")
    }
}

mod im {
    use super::Embedded;
    qim_storage::im_conformance_tests!(Embedded::new());
}

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
