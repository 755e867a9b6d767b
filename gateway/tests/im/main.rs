//! IM features through a real gateway with real SDK clients: conversation
//! lists, exact unread counts across devices and reconnects, read state
//! synced to other devices, recall, edit, delete-for-me, replies and
//! mentions.

// The session futures of the SDK and gateway nest deeply; the tests
// moved into modules passed the default query depth.
#![recursion_limit = "256"]

#[path = "../common/mod.rs"]
mod common;
mod history;
mod social;

use std::time::Duration;

use common::{Backend, TestGateway, assert_quiet, stopped, take, text};
use qim_sdk::{
    Client, ClientConfig, Conversation, ErrorCode, Event, MessageExtras, OutgoingMessage, Peer,
    Quote,
};

async fn im_gateway(backend: Backend) -> TestGateway {
    TestGateway::start_on(backend, |c| c.im.sync_sent = true).await
}

async fn conversation(client: &Client, peer: &Peer) -> Conversation {
    client
        .all_conversations()
        .await
        .expect("conversations")
        .into_iter()
        .find(|c| &c.peer == peer)
        .unwrap_or_else(|| panic!("no conversation with {peer:?}"))
}

fn user(id: &str) -> Peer {
    Peer::User(id.into())
}

/// Chat messages only (events skipped), as (seq, text).
fn chats(messages: &[qim_sdk::IncomingMessage]) -> Vec<(u64, String)> {
    messages
        .iter()
        .filter(|m| m.event.is_none())
        .map(|m| (m.seq, text(m)))
        .collect()
}

async fn unread_counts_stay_exact_across_offline_devices_and_reconnects(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = im_gateway(backend).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    // Bob is offline while alice and carol write.
    for i in 0..5 {
        alice.send(n("bob"), format!("a{i}")).await.expect("send");
    }
    let carol = gw.client(&n("carol"), "carol-phone").await;
    carol.send(n("bob"), "c0".into()).await.expect("send");

    let phone = gw.client(&n("bob"), "bob-phone").await;
    let list = phone.all_conversations().await.expect("list");
    assert_eq!(
        list.iter()
            .map(|c| (c.peer.clone(), c.unread))
            .collect::<Vec<_>>(),
        [(user(&n("carol")), 1), (user(&n("alice")), 5)],
        "newest activity first, unread counted while offline"
    );
    let from_alice = conversation(&phone, &user(&n("alice"))).await;
    let last = from_alice.last_message.expect("last message");
    assert_eq!(
        (text(&last), last.from_user.clone()),
        ("a4".to_owned(), n("alice"))
    );

    let got = take(&phone, 6).await;
    let alice_seqs: Vec<u64> = got
        .iter()
        .filter(|m| m.from_user == n("alice"))
        .map(|m| m.seq)
        .collect();
    assert_eq!(alice_seqs.len(), 5);
    assert!(got.iter().all(|m| m.conversation == user(&m.from_user)));

    // Reading part of a conversation leaves the rest unread, exactly.
    let read = phone
        .mark_read(user(&n("alice")), alice_seqs[2])
        .await
        .expect("mark");
    assert_eq!((read.read_seq, read.unread), (alice_seqs[2], 2));
    // Never backwards.
    let again = phone
        .mark_read(user(&n("alice")), alice_seqs[0])
        .await
        .expect("mark");
    assert_eq!((again.read_seq, again.unread), (alice_seqs[2], 2));
    let read = phone
        .mark_read(user(&n("alice")), alice_seqs[4])
        .await
        .expect("mark");
    assert_eq!(read.unread, 0);
    assert_eq!(
        conversation(&phone, &user(&n("carol"))).await.unread,
        1,
        "other conversations untouched"
    );

    // The phone's own inbox carries the read events for the other devices.
    let events = take(&phone, 2).await;
    assert!(matches!(
        &events[1].event,
        Some(Event::Read { conversation, read_seq, unread: 0 }) if *conversation == user(&n("alice")) && *read_seq == alice_seqs[4]
    ));

    // A second device that connects afterwards sees the read state, both in
    // the list and as events after the messages.
    let laptop = gw.client(&n("bob"), "bob-laptop").await;
    assert_eq!(conversation(&laptop, &user(&n("alice"))).await.unread, 0);
    assert_eq!(conversation(&laptop, &user(&n("carol"))).await.unread, 1);
    let synced = take(&laptop, 8).await;
    assert_eq!(chats(&synced).len(), 6);
    let reads: Vec<(u64, u32)> = synced
        .iter()
        .filter_map(|m| match &m.event {
            Some(Event::Read {
                read_seq, unread, ..
            }) => Some((*read_seq, *unread)),
            _ => None,
        })
        .collect();
    assert_eq!(reads, [(alice_seqs[2], 2), (alice_seqs[4], 0)]);
    assert_quiet(&laptop, Duration::from_millis(200)).await;

    // Exact across a reconnect and new messages.
    phone.close().await;
    laptop.close().await;
    alice.send(n("bob"), "a5".into()).await.expect("send");
    alice.send(n("bob"), "a6".into()).await.expect("send");
    let phone = gw.client(&n("bob"), "bob-phone").await;
    let c = conversation(&phone, &user(&n("alice"))).await;
    assert_eq!((c.unread, c.read_seq), (2, alice_seqs[4]));
    assert_eq!(
        phone.all_conversations().await.expect("list")[0].peer,
        user(&n("alice")),
        "alice is newest again"
    );

    // The sender's side: its own conversation has the messages, none unread,
    // and the sender's other device got copies of what was sent.
    let a = conversation(&alice, &user(&n("bob"))).await;
    assert_eq!(a.unread, 0);
    assert_eq!(
        a.last_message.map(|m| (text(&m), m.outgoing)),
        Some(("a6".to_owned(), true))
    );
    let tablet = gw.client(&n("alice"), "alice-tablet").await;
    // Copies of what was sent, with bob's two read receipts in between.
    let synced = take(&tablet, 9).await;
    let copies: Vec<_> = synced.iter().filter(|m| m.event.is_none()).collect();
    assert!(
        copies
            .iter()
            .all(|m| m.outgoing && m.conversation == user(&n("bob")))
    );
    assert_eq!(
        copies.iter().map(|m| text(m)).collect::<Vec<_>>(),
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6"]
    );
    // The sending device itself does not get its own sends back, only the
    // read receipts: bob read up to a2, then a4.
    let receipts: Vec<String> = take(&alice, 2)
        .await
        .into_iter()
        .map(|m| match m.event {
            Some(Event::ReadReceipt { reader, msg_id, .. }) if reader == n("bob") => msg_id,
            other => panic!("expected a read receipt, got {other:?}"),
        })
        .collect();
    let sent: Vec<&qim_sdk::IncomingMessage> = copies.clone();
    assert_eq!(receipts, [sent[2].msg_id.clone(), sent[4].msg_id.clone()]);
    assert_quiet(&alice, Duration::from_millis(200)).await;

    // Pinning moves a conversation to the top of the list and syncs.
    let pinned = phone
        .set_flags(user(&n("carol")), Some(true), None)
        .await
        .expect("pin");
    assert!(pinned.pinned);
    let list = phone.all_conversations().await.expect("list");
    assert_eq!(list[0].peer, user(&n("carol")));
    let err = phone
        .mark_read(user(&n("nobody")), 5)
        .await
        .expect_err("no such conversation");
    assert!(
        matches!(
            err,
            qim_sdk::Error::Rejected {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    gw.stop().await;
}

async fn conversation_list_pages_in_order(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = im_gateway(backend).await;
    let bob = gw.client(&n("bob"), "bob-phone").await;
    const N: usize = 25;
    let mut senders = Vec::new();
    for i in 0..N {
        let c = gw.client(&format!("u{i}{run}"), "d").await;
        c.send(n("bob"), format!("from u{i}")).await.expect("send");
        senders.push(c);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = bob.conversations(after, 7).await.expect("page");
        assert!(page.conversations.len() <= 7);
        seen.extend(page.conversations.into_iter().map(|c| c.peer));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<Peer> = (0..N).rev().map(|i| user(&format!("u{i}{run}"))).collect();
    assert_eq!(seen, expected, "every conversation once, newest first");
    gw.stop().await;
}

async fn recall_and_edit_reach_online_and_offline_recipients(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = TestGateway::start_on(backend, |c| c.im.sync_sent = true).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    let bob = gw.client(&n("bob"), "bob-phone").await;
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(alice.send(n("bob"), format!("m{i}")).await.expect("send"));
    }
    let got = take(&bob, 3).await;
    assert_eq!(conversation(&bob, &user(&n("alice"))).await.unread, 3);

    // Recall of an unread message: the online device gets the event, the
    // unread count drops.
    let recalled_id = got[1].msg_id.clone();
    assert_eq!(recalled_id, receipts[1].msg_id, "one msg_id for every copy");
    alice.recall(recalled_id.clone()).await.expect("recall");
    let event = take(&bob, 1).await.remove(0);
    assert!(
        matches!(
            &event.event,
            Some(Event::Recalled { msg_id, seq, by_user, .. }) if *msg_id == recalled_id && *seq == got[1].seq && *by_user == n("alice")
        ),
        "{event:?}"
    );
    let c = conversation(&bob, &user(&n("alice"))).await;
    assert_eq!(c.unread, 2);

    // Edit: the new text and the edited flag.
    alice
        .edit(got[2].msg_id.clone(), "m2, corrected".into())
        .await
        .expect("edit");
    let event = take(&bob, 1).await.remove(0);
    match &event.event {
        Some(Event::Edited {
            seq,
            body,
            edited_at_ms,
            ..
        }) => {
            assert_eq!(*seq, got[2].seq);
            assert_eq!(body, b"m2, corrected");
            assert!(*edited_at_ms > 0);
        }
        other => panic!("expected an edit, got {other:?}"),
    }
    let c = conversation(&bob, &user(&n("alice"))).await;
    let last = c.last_message.expect("last");
    assert_eq!(
        (text(&last), last.edited_at_ms > 0),
        ("m2, corrected".to_owned(), true)
    );

    // Only the sender recalls; a second recall is refused with its own code.
    let err = bob
        .recall(got[0].msg_id.clone())
        .await
        .expect_err("not the sender");
    assert!(
        matches!(
            err,
            qim_sdk::Error::Rejected {
                code: ErrorCode::PermissionDenied,
                ..
            }
        ),
        "{err:?}"
    );
    let err = alice.recall(recalled_id.clone()).await.expect_err("twice");
    assert!(
        matches!(
            err,
            qim_sdk::Error::Rejected {
                code: ErrorCode::AlreadyRecalled,
                ..
            }
        ),
        "{err:?}"
    );
    let err = alice
        .recall("no-such-message".into())
        .await
        .expect_err("unknown");
    assert!(
        matches!(
            err,
            qim_sdk::Error::Rejected {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err:?}"
    );

    // A device that was offline sees the stored messages already changed,
    // then the events.
    let laptop = gw.client(&n("bob"), "bob-laptop").await;
    let synced = take(&laptop, 5).await;
    assert_eq!(synced[0].body, b"m0");
    assert!(synced[1].recalled && synced[1].body.is_empty());
    assert_eq!(
        (text(&synced[2]), synced[2].edited_at_ms > 0),
        ("m2, corrected".to_owned(), true)
    );
    assert!(matches!(synced[3].event, Some(Event::Recalled { .. })));
    assert!(matches!(synced[4].event, Some(Event::Edited { .. })));

    // The sender's other device learns too.
    let tablet = gw.client(&n("alice"), "alice-tablet").await;
    let mine = take(&tablet, 5).await;
    assert!(mine[1].recalled);
    assert!(matches!(mine[3].event, Some(Event::Recalled { .. })));

    // Delete for me: only bob's copy changes; unread drops if it was unread.
    bob.delete_for_me(got[0].seq).await.expect("delete");
    let c = conversation(&bob, &user(&n("alice"))).await;
    assert_eq!(c.unread, 1, "m0 deleted, m1 recalled: only m2 is unread");
    assert!(matches!(
        take(&laptop, 1).await.pop().map(|m| m.event),
        Some(Some(Event::Deleted { .. }))
    ));
    assert_eq!(conversation(&alice, &user(&n("bob"))).await.unread, 0);
    gw.stop().await;
}

async fn recall_after_the_window_is_refused(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = TestGateway::start_on(backend, |c| c.im.recall_window_ms = 0).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    let receipt = alice.send(n("bob"), "too late".into()).await.expect("send");
    // The window is zero: any recall once the server clock has moved on
    // comes too late.
    while qim_proto::now_ms() <= receipt.server_time_ms {
        tokio::task::yield_now().await;
    }
    let err = alice
        .recall(receipt.msg_id.clone())
        .await
        .expect_err("too late");
    assert!(
        matches!(
            err,
            qim_sdk::Error::Rejected {
                code: ErrorCode::RecallWindowPassed,
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    let bob = gw.client(&n("bob"), "bob-phone").await;
    let got = take(&bob, 1).await;
    assert!(!got[0].recalled);
    assert_eq!(text(&got[0]), "too late");
    gw.stop().await;
}

async fn replies_quote_and_mentions_are_flagged_for_the_mentioned(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = im_gateway(backend).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    let bob = gw.client(&n("bob"), "bob-phone").await;
    alice
        .send(n("bob"), "question?".into())
        .await
        .expect("send");
    let question = take(&bob, 1).await.remove(0);
    let reply = OutgoingMessage {
        to: n("alice"),
        kind: "text".into(),
        body: b"answer, @alice".to_vec(),
        client_msg_id: None,
    };
    bob.send_with(
        reply,
        MessageExtras {
            reply_to: Some(Quote {
                msg_id: question.msg_id.clone(),
                from_user: n("alice"),
                kind: "text".into(),
                excerpt: question.body.repeat(100),
            }),
            mentions: vec![n("alice")],
            mention_all: false,
            attachments: Vec::new(),
        },
    )
    .await
    .expect("reply");
    let got = take(&alice, 1).await.remove(0);
    let quote = got.reply_to.expect("quote");
    assert_eq!(quote.msg_id, question.msg_id);
    assert_eq!(quote.excerpt.len(), 256, "excerpts are cut to 256 bytes");
    assert!(got.mentions_me);
    assert_eq!(got.mentions, [n("alice")]);

    alice
        .send(n("bob"), "no mention".into())
        .await
        .expect("send");
    assert!(!take(&bob, 1).await[0].mentions_me);
    gw.stop().await;
}

on_both_backends!(
    unread_counts_stay_exact_across_offline_devices_and_reconnects,
    conversation_list_pages_in_order,
    recall_and_edit_reach_online_and_offline_recipients,
    recall_after_the_window_is_refused,
    replies_quote_and_mentions_are_flagged_for_the_mentioned,
);
