//! History paging, the local store, delivery receipts and retention.

use super::*;

async fn history_pages_over_10000_messages_both_ways_and_from_a_time(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    use qim_sdk::HistoryAnchor;
    let gw = TestGateway::start_on(backend, |c| {
        c.limits.sends_per_second = 0;
        // 10,000 sends at once: history paging is the subject, not quotas.
        c.quotas.copies_per_second = 0;
    })
    .await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    const N: usize = 10_000;
    let started = std::time::Instant::now();
    let mut receipts = Vec::with_capacity(N);
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let sends = chunk
            .iter()
            .map(|i| {
                Box::pin(alice.send_message(OutgoingMessage {
                    to: n("bob"),
                    kind: "text".into(),
                    body: format!("h{i}").into_bytes(),
                    client_msg_id: None,
                }))
            })
            .collect();
        for r in common::join_in_order(sends).await {
            receipts.push(r.expect("acked"));
        }
    }
    eprintln!("{N} sends in {:?}", started.elapsed());
    // Some chat in another conversation, interleaved in bob's inbox.
    let carol = gw.client(&n("carol"), "carol-phone").await;
    carol.send(n("bob"), "other".into()).await.expect("send");

    let bob = gw.client(&n("bob"), "bob-phone").await;
    let started = std::time::Instant::now();
    let (mut back, mut anchor) = (Vec::with_capacity(N), HistoryAnchor::End);
    loop {
        let page = bob
            .history(user(&n("alice")), anchor, false, 400)
            .await
            .expect("page");
        let last = page.messages.last().map(|m| m.seq);
        back.extend(page.messages);
        match (page.more, last) {
            (true, Some(seq)) => anchor = HistoryAnchor::Seq(seq),
            _ => break,
        }
    }
    let texts: Vec<String> = back.iter().rev().map(text).collect();
    assert_eq!(texts.len(), N);
    assert!(
        texts.iter().enumerate().all(|(i, t)| *t == format!("h{i}")),
        "every message once, newest first"
    );
    assert!(back.windows(2).all(|w| w[0].seq > w[1].seq));

    let (mut fwd, mut anchor) = (Vec::with_capacity(N), HistoryAnchor::End);
    loop {
        let page = bob
            .history(user(&n("alice")), anchor, true, 400)
            .await
            .expect("page");
        let last = page.messages.last().map(|m| m.seq);
        fwd.extend(page.messages);
        match (page.more, last) {
            (true, Some(seq)) => anchor = HistoryAnchor::Seq(seq),
            _ => break,
        }
    }
    assert_eq!(fwd.len(), N);
    assert!(
        fwd.iter()
            .enumerate()
            .all(|(i, m)| text(m) == format!("h{i}"))
    );
    assert_eq!(
        fwd.iter().map(|m| m.seq).collect::<Vec<_>>(),
        receipts.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    eprintln!("paged {N} both ways in {:?}", started.elapsed());

    // From a time: the first message stored at or after it.
    let t = receipts[5000].server_time_ms;
    let page = bob
        .history(user(&n("alice")), HistoryAnchor::Time(t), true, 10)
        .await
        .expect("page");
    assert!(page.messages[0].server_time_ms >= t);
    let first = receipts
        .iter()
        .position(|r| r.server_time_ms >= t)
        .expect("exists");
    assert_eq!(page.messages[0].msg_id, receipts[first].msg_id);
    // The other conversation holds only its own message.
    let other = bob
        .history(user(&n("carol")), HistoryAnchor::End, false, 10)
        .await
        .expect("page");
    assert_eq!(
        other.messages.iter().map(text).collect::<Vec<_>>(),
        ["other"]
    );
    assert!(!other.more);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_keeps_history_and_search_offline() {
    use qim_sdk::HistoryAnchor;
    let gw = im_gateway(Backend::Embedded).await;
    let store_dir = tempfile::tempdir().expect("temp dir");
    let store = store_dir.path().join("bob").join("local.db");
    let mut config = gw.client_config("bob", "bob-phone");
    config.local_store = Some(store.clone());
    let bob = Client::connect(config).await.expect("connect");
    let alice = gw.client("alice", "alice-phone").await;
    let carol = gw.client("carol", "carol-phone").await;
    for i in 0..30 {
        let fruit = if i % 10 == 3 { " banana" } else { "" };
        alice
            .send("bob".into(), format!("alpha {i}{fruit}"))
            .await
            .expect("send");
    }
    carol
        .send("bob".into(), "carol says banana".into())
        .await
        .expect("send");
    let got = take(&bob, 31).await;
    let sent = bob
        .send("alice".into(), "bob answers cherry".into())
        .await
        .expect("send");

    // A recall, an edit and a delete-for-me change the local copies.
    let recalled = got
        .iter()
        .find(|m| text(m) == "alpha 13 banana")
        .expect("13");
    alice.recall(recalled.msg_id.clone()).await.expect("recall");
    alice
        .edit(got[5].msg_id.clone(), "alpha 5 kiwi".into())
        .await
        .expect("edit");
    let deleted = got
        .iter()
        .find(|m| text(m) == "alpha 23 banana")
        .expect("23");
    bob.delete_for_me(deleted.seq).await.expect("delete");
    let events = take(&bob, 3).await;
    assert!(events.iter().all(|m| m.event.is_some()), "{events:?}");
    bob.close().await;
    gw.stop().await;

    // Offline, on the same store: no server at all.
    let mut config = ClientConfig::new("127.0.0.1:9", "no-token", "bob-phone", Vec::new());
    config.local_store = Some(store);
    let offline = Client::open_offline(config).expect("open offline");
    assert!(offline.conversations(None, 10).await.is_err(), "no network");

    let texts =
        |page: &qim_sdk::HistoryPage| -> Vec<String> { page.messages.iter().map(text).collect() };
    // alice's conversation: 30 received (one deleted, one recalled) + 1 sent.
    let newest = offline
        .local_history(user("alice"), HistoryAnchor::End, false, 3)
        .expect("history");
    assert_eq!(
        texts(&newest),
        ["bob answers cherry", "alpha 29", "alpha 28"],
        "backward from the newest end, the sent message included"
    );
    assert!(newest.more);
    assert!(newest.messages[0].outgoing);
    assert_eq!(newest.messages[0].msg_id, sent.msg_id);
    // Page backward from seq to the oldest end, then forward again.
    let mut backward = Vec::new();
    let mut anchor = HistoryAnchor::Seq(newest.messages[2].seq);
    loop {
        let page = offline
            .local_history(user("alice"), anchor, false, 7)
            .expect("history");
        backward.extend(page.messages.iter().map(|m| (m.seq, text(m))));
        if !page.more {
            break;
        }
        anchor = HistoryAnchor::Seq(page.messages.last().expect("a page").seq);
    }
    let expected: Vec<(u64, String)> = got[..30]
        .iter()
        .rev()
        .skip(2)
        .filter(|m| m.msg_id != deleted.msg_id)
        .map(|m| {
            let t = if m.msg_id == recalled.msg_id {
                String::new()
            } else if m.msg_id == got[5].msg_id {
                "alpha 5 kiwi".into()
            } else {
                text(m)
            };
            (m.seq, t)
        })
        .collect();
    assert_eq!(backward, expected, "every page, no gap, no duplicate");
    let oldest = offline
        .local_history(user("alice"), HistoryAnchor::End, true, 2)
        .expect("history");
    assert_eq!(texts(&oldest), ["alpha 0", "alpha 1"]);
    let recalled_copy = offline
        .local_history(user("alice"), HistoryAnchor::Seq(recalled.seq - 1), true, 1)
        .expect("history")
        .messages
        .remove(0);
    assert!(recalled_copy.recalled && recalled_copy.body.is_empty());
    assert!(
        offline
            .local_history(user("alice"), HistoryAnchor::Seq(deleted.seq), false, 1)
            .is_err(),
        "a message deleted for me is gone locally"
    );
    let carols = offline
        .local_history(user("carol"), HistoryAnchor::End, false, 10)
        .expect("history");
    assert_eq!(texts(&carols), ["carol says banana"]);

    // Keyword search, newest first: the recalled and the deleted banana are
    // not found; edits are searched by their new text.
    let found = offline.search("BANANA", 10).expect("search");
    assert_eq!(
        texts_of(&found),
        ["carol says banana", "alpha 3 banana"],
        "case-insensitive, recalled and deleted left out"
    );
    assert_eq!(
        texts_of(&offline.search("kiwi", 10).expect("search")),
        ["alpha 5 kiwi"]
    );
    assert!(offline.search("alpha 5", 10).expect("search").len() == 1);
    assert!(
        offline
            .search("\"unbalanced* OR", 10)
            .expect("search")
            .is_empty()
    );
    assert_eq!(offline.search("alpha", 5).expect("search").len(), 5);
    offline.close().await;
}

fn texts_of(messages: &[qim_sdk::IncomingMessage]) -> Vec<String> {
    messages.iter().map(text).collect()
}

/// Delivery receipts `alice` gets, until one names `until` (copies of
/// her own sends skipped).
async fn receipts_until(alice: &Client, until: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let m = alice
            .next_message_timeout(common::PATIENCE)
            .await
            .expect("a delivery receipt");
        match m.event {
            Some(Event::DeliveryReceipt {
                recipient, msg_id, ..
            }) => {
                let done = msg_id == until;
                got.push((recipient, msg_id));
                if done {
                    return got;
                }
            }
            // Copies of its sends from its other devices.
            None if m.outgoing => {}
            other => panic!("expected a delivery receipt, got {other:?}"),
        }
    }
}

async fn delivery_receipts_tell_the_sender_what_reached_a_device(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = TestGateway::start_on(backend, |c| {
        c.im.sync_sent = true;
        c.im.delivery_receipts = true;
    })
    .await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    // Sent while bob is offline: no receipt yet.
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(alice.send(n("bob"), format!("m{i}")).await.expect("send"));
    }
    let phone = gw.client(&n("bob"), "bob-phone").await;
    assert_eq!(chats(&take(&phone, 3).await).len(), 3);
    let receipts = receipts_until(&alice, &sent[2].msg_id).await;
    let order: Vec<usize> = receipts
        .iter()
        .map(|(who, id)| {
            assert_eq!(who, &n("bob"));
            sent.iter()
                .position(|s| s.msg_id == *id)
                .expect("one of alice's")
        })
        .collect();
    assert!(
        order.is_sorted_by(|a, b| a < b),
        "receipts move forward: {order:?}"
    );

    // bob's second device receiving the same messages sends no receipt
    // again: the next one alice gets is for the next message.
    let laptop = gw.client(&n("bob"), "bob-laptop").await;
    assert_eq!(chats(&take(&laptop, 3).await).len(), 3);
    let next = alice.send(n("bob"), "m3".into()).await.expect("send");
    take(&phone, 1).await;
    assert_eq!(
        receipts_until(&alice, &next.msg_id).await,
        [(n("bob"), next.msg_id.clone())]
    );

    // A sender offline at delivery gets the receipt when it connects.
    alice.close().await;
    let from_carol = {
        let carol = gw.client(&n("carol"), "carol-phone").await;
        let r = carol.send(n("bob"), "c0".into()).await.expect("send");
        carol.close().await;
        r
    };
    take(&phone, 1).await;
    let carol = gw.client(&n("carol"), "carol-laptop").await;
    assert_eq!(
        receipts_until(&carol, &from_carol.msg_id).await,
        [(n("bob"), from_carol.msg_id.clone())]
    );
    gw.stop().await;
}

async fn history_across_the_retention_boundary_says_older_messages_expired(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    use qim_sdk::HistoryAnchor;
    const RETENTION_MS: u64 = 1_500;
    let gw = TestGateway::start_on(backend, |c| c.im.history_retention_ms = RETENTION_MS).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    let bob = gw.client(&n("bob"), "bob-phone").await;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(alice.send(n("bob"), format!("old{i}")).await.expect("send"));
    }
    let page = bob
        .history(user(&n("alice")), HistoryAnchor::End, false, 10)
        .await
        .expect("history");
    assert_eq!(
        (texts_of(&page.messages).len(), page.more, page.expired),
        (3, false, false),
        "within the retention: all there"
    );
    // Wait (bounded) until the retention has passed for the old messages.
    let page = common::poll_until("the old messages expire", || async {
        let page = bob
            .history(user(&n("alice")), HistoryAnchor::End, false, 10)
            .await
            .expect("history");
        page.messages.is_empty().then_some(page)
    })
    .await;
    assert!(page.expired, "no silent gap: {page:?}");
    let mut new = Vec::new();
    for i in 0..3 {
        new.push(alice.send(n("bob"), format!("new{i}")).await.expect("send"));
    }
    // Backward: the fresh messages page normally, the last page says the
    // rest expired.
    let first = bob
        .history(user(&n("alice")), HistoryAnchor::End, false, 2)
        .await
        .expect("history");
    assert_eq!(texts_of(&first.messages), ["new2", "new1"]);
    assert!(first.more && !first.expired);
    let second = bob
        .history(
            user(&n("alice")),
            HistoryAnchor::Seq(first.messages[1].seq),
            false,
            2,
        )
        .await
        .expect("history");
    assert_eq!(texts_of(&second.messages), ["new0"]);
    assert!(second.expired, "the boundary is reported: {second:?}");
    assert!(!second.more);
    // Forward from the oldest end or from an expired seq: expired ones
    // skipped and reported.
    for anchor in [HistoryAnchor::End, HistoryAnchor::Seq(old[0].seq)] {
        let forward = bob
            .history(user(&n("alice")), anchor, true, 10)
            .await
            .expect("history");
        assert_eq!(texts_of(&forward.messages), ["new0", "new1", "new2"]);
        assert!(forward.expired && !forward.more, "{forward:?}");
    }
    // Forward from a fresh message: nothing expired on that side.
    let after = bob
        .history(user(&n("alice")), HistoryAnchor::Seq(new[0].seq), true, 10)
        .await
        .expect("history");
    assert_eq!(texts_of(&after.messages), ["new1", "new2"]);
    assert!(!after.expired);
    gw.stop().await;
}

on_both_backends!(
    history_pages_over_10000_messages_both_ways_and_from_a_time,
    delivery_receipts_tell_the_sender_what_reached_a_device,
    history_across_the_retention_boundary_says_older_messages_expired,
);
