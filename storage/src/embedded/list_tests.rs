//! The conversation list's order on the embedded store: newest message
//! first (pinned ones before the rest), kept through events, pins and a
//! reopened store, with the list row of the conversation on top left alone
//! by a message to it.

use bytes::Bytes;
use prost::Message as _;
use qim_proto::v1;

use super::EmbeddedStore;
use super::tables::{conv_key, prefixed};
use crate::conversations::{ConversationOp, ConversationStore, Post};

fn peer(user: &str) -> v1::Peer {
    v1::Peer {
        target: Some(v1::peer::Target::User(user.to_owned())),
    }
}

/// Sends `from` → `to` a message with a new client id; its seq in `to`'s inbox.
async fn send(store: &EmbeddedStore, from: &str, to: &str) -> u64 {
    let post = Post {
        sender: from.to_owned(),
        sender_device: "d".into(),
        client_msg_id: format!("m-{}", next_id()),
        to: peer(to),
        kind: "text".into(),
        body: Bytes::from_static(b"hi"),
        server_time_ms: qim_proto::now_ms(),
        inboxes: vec![to.to_owned(), from.to_owned()],
        ..Post::default()
    };
    let mut out = store.post(vec![post]).await.expect("store answers");
    let posted = out.pop().expect("one answer").expect("posted");
    assert!(!posted.duplicate);
    posted
        .copies
        .iter()
        .find(|c| c.inbox == to)
        .map(|c| c.seq)
        .expect("a copy for the addressee")
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `user`'s conversation list, by peer name, as a client pages it.
async fn list(store: &EmbeddedStore, user: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = store.conversations(user, &after, 2).await.expect("list");
        for c in &page.conversations {
            match c.peer.as_ref().and_then(|p| p.target.as_ref()) {
                Some(v1::peer::Target::User(u)) => names.push(u.clone()),
                other => panic!("unexpected peer {other:?}"),
            }
        }
        if page.next.is_empty() {
            return names;
        }
        after = page.next;
    }
}

/// The list as the wire records order it: pinned first, then newest
/// `last_seq` first. The store's own order must agree with it.
async fn by_records(store: &EmbeddedStore, user: &str) -> Vec<String> {
    let mut convs = Vec::new();
    for name in list(store, user).await {
        let c = store
            .conversation(user, &peer(&name))
            .await
            .expect("read")
            .expect("exists");
        convs.push((c.pinned, c.last_seq, name));
    }
    convs.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
    convs.into_iter().map(|(_, _, n)| n).collect()
}

/// `user`'s rows in the list table, as stored.
fn rows(store: &EmbeddedStore, user: &str) -> Vec<Vec<u8>> {
    store
        .tables
        .conv_order
        .prefix(prefixed(user, 0))
        .map(|g| g.key().expect("row").to_vec())
        .collect()
}

async fn expect_list(store: &EmbeddedStore, user: &str, want: &[&str]) {
    let got = list(store, user).await;
    assert_eq!(got, want, "list order");
    assert_eq!(by_records(store, user).await, want, "agrees with last_seq");
    assert_eq!(rows(store, user).len(), want.len(), "one list row each");
}

/// A new store where `u` has had a message from `a`, `b`, then `c`.
async fn u_hears_from_a_b_c() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    for from in ["a", "b", "c"] {
        send(&store, from, "u").await;
    }
    (dir, store)
}

#[tokio::test]
async fn the_list_follows_the_newest_message_and_the_top_row_stays() {
    let (dir, store) = u_hears_from_a_b_c().await;
    expect_list(&store, "u", &["c", "b", "a"]).await;

    // Messages both ways in the conversation on top leave every row.
    let before = rows(&store, "u");
    send(&store, "c", "u").await;
    send(&store, "u", "c").await;
    assert_eq!(
        rows(&store, "u"),
        before,
        "top conversation's row rewritten"
    );
    expect_list(&store, "u", &["c", "b", "a"]).await;

    // A message to another conversation moves it to the top.
    send(&store, "a", "u").await;
    expect_list(&store, "u", &["a", "c", "b"]).await;
    assert_ne!(rows(&store, "u"), before);

    // Events in u's inbox (reading b: a read state for u, a receipt for
    // b) do not unseat the conversation on top.
    let head = send(&store, "b", "u").await;
    send(&store, "a", "u").await;
    store
        .apply(ConversationOp::MarkRead {
            user: "u".into(),
            conversation: peer("b"),
            up_to_seq: head,
            now_ms: 1,
        })
        .await
        .expect("read");
    let before = rows(&store, "u");
    send(&store, "a", "u").await;
    assert_eq!(rows(&store, "u"), before, "an event unseated the top");
    expect_list(&store, "u", &["a", "b", "c"]).await;

    // A pinned conversation leads; order within each part still follows
    // the newest message.
    store
        .apply(ConversationOp::SetFlags {
            user: "u".into(),
            conversation: peer("c"),
            pinned: Some(true),
            muted: None,
            now_ms: 1,
        })
        .await
        .expect("pin");
    expect_list(&store, "u", &["c", "a", "b"]).await;
    send(&store, "b", "u").await;
    expect_list(&store, "u", &["c", "b", "a"]).await;
    send(&store, "c", "u").await;
    expect_list(&store, "u", &["c", "b", "a"]).await;

    // Reopened: the places were kept, and the writer learns the top anew.
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    expect_list(&store, "u", &["c", "b", "a"]).await;
    send(&store, "a", "u").await;
    expect_list(&store, "u", &["c", "a", "b"]).await;
    let before = rows(&store, "u");
    send(&store, "a", "u").await;
    assert_eq!(rows(&store, "u"), before);
    expect_list(&store, "u", &["c", "a", "b"]).await;
}

/// A store written before places were kept holds records without one and
/// list rows keyed by `last_seq`: its lists keep their order and gain no
/// second row per conversation.
#[tokio::test]
async fn records_without_a_place_sit_at_their_newest_message() {
    let (dir, store) = u_hears_from_a_b_c().await;
    send(&store, "a", "u").await;
    // As an earlier store wrote them: the wire record alone, with a list
    // row at its last_seq (which is where these places are).
    for name in ["a", "b", "c"] {
        let c = store
            .conversation("u", &peer(name))
            .await
            .expect("read")
            .expect("exists");
        let key = conv_key("u", &format!("u:{name}"));
        let stored = store.tables.conversations.get(&key).expect("read");
        assert_ne!(stored.as_deref(), Some(&c.encode_to_vec()[..]));
        store
            .tables
            .conversations
            .insert(key, c.encode_to_vec())
            .expect("write");
    }
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    expect_list(&store, "u", &["a", "c", "b"]).await;
    send(&store, "b", "u").await;
    expect_list(&store, "u", &["b", "a", "c"]).await;
    send(&store, "c", "u").await;
    send(&store, "c", "u").await;
    expect_list(&store, "u", &["c", "b", "a"]).await;
}
