//! IM features through a real gateway with real SDK clients: conversation
//! lists, exact unread counts across devices and reconnects, read state
//! synced to other devices, recall, edit, delete-for-me, replies and
//! mentions.

mod common;

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

async fn friend_requests_blocks_and_the_friends_only_policy(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = TestGateway::start_on(backend, |c| c.im.direct_policy = "friends".into()).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    let bob = gw.client(&n("bob"), "bob-phone").await;
    let code = |e: qim_sdk::Error| match e {
        qim_sdk::Error::Rejected {
            code, retryable, ..
        } => (code, retryable),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let err = alice
        .send(n("bob"), "hi stranger".into())
        .await
        .expect_err("not friends");
    assert_eq!(code(err), (ErrorCode::NotFriends, false));

    let mine = alice
        .request_friend(n("bob"), "it's alice from work".into())
        .await
        .expect("request");
    assert_eq!(mine.outgoing, [n("bob")]);
    let event = take(&bob, 1).await.remove(0);
    assert_eq!(
        event.event,
        Some(Event::FriendRequest {
            from: n("alice"),
            message: "it's alice from work".into()
        })
    );
    let pending = bob.contacts().await.expect("contacts");
    assert_eq!(pending.incoming.len(), 1);
    assert_eq!(
        (
            pending.incoming[0].user.as_str(),
            pending.incoming[0].message.as_str()
        ),
        (n("alice").as_str(), "it's alice from work")
    );
    let accepted = bob.accept_friend(n("alice")).await.expect("accept");
    assert_eq!(accepted.friends, [n("alice")]);
    assert_eq!(
        take(&alice, 1).await.remove(0).event,
        Some(Event::FriendResponse {
            from: n("bob"),
            accepted: true
        })
    );
    assert_eq!(
        alice.contacts().await.expect("contacts").friends,
        [n("bob")]
    );
    alice
        .send(n("bob"), "hi friend".into())
        .await
        .expect("friends may write");
    assert_eq!(text(&take(&bob, 1).await[0]), "hi friend");

    // A rejected request leaves no friendship.
    let carol = gw.client(&n("carol"), "carol-phone").await;
    carol
        .request_friend(n("bob"), "hello?".into())
        .await
        .expect("request");
    take(&bob, 1).await;
    let after = bob.reject_friend(n("carol")).await.expect("reject");
    assert!(after.incoming.is_empty() && !after.friends.contains(&n("carol")));
    assert_eq!(
        take(&carol, 1).await.remove(0).event,
        Some(Event::FriendResponse {
            from: n("bob"),
            accepted: false
        })
    );
    let err = bob
        .accept_friend(n("carol"))
        .await
        .expect_err("nothing to accept");
    assert_eq!(code(err).0, ErrorCode::NotFound);

    // Blocking refuses the blocked user's messages, typed, and ends the friendship.
    let blocked = bob.block(n("alice")).await.expect("block");
    assert_eq!(blocked.blocked, [n("alice")]);
    assert!(blocked.friends.is_empty());
    let err = alice
        .send(n("bob"), "are you there?".into())
        .await
        .expect_err("blocked");
    assert_eq!(code(err), (ErrorCode::Blocked, false));
    let err = alice
        .request_friend(n("bob"), "again".into())
        .await
        .expect_err("blocked");
    assert_eq!(code(err).0, ErrorCode::Blocked);
    assert_quiet(&bob, Duration::from_millis(200)).await;
    bob.unblock(n("alice")).await.expect("unblock");
    let err = alice
        .send(n("bob"), "still not friends".into())
        .await
        .expect_err("policy");
    assert_eq!(code(err).0, ErrorCode::NotFriends);
    gw.stop().await;
}

async fn with_the_open_policy_only_blocks_refuse(backend: Backend) {
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let alice = gw.client(&n("alice"), "alice-phone").await;
    let bob = gw.client(&n("bob"), "bob-phone").await;
    alice
        .send(n("bob"), "hi".into())
        .await
        .expect("anyone may write");
    bob.block(n("alice")).await.expect("block");
    let err = alice
        .send(n("bob"), "hi again".into())
        .await
        .expect_err("blocked");
    assert!(
        matches!(
            err,
            qim_sdk::Error::Rejected {
                code: ErrorCode::Blocked,
                ..
            }
        ),
        "{err:?}"
    );
    bob.send(n("alice"), "I can still write".into())
        .await
        .expect("blocks are one-way");
    assert_eq!(take(&bob, 1).await.len(), 1);
    gw.stop().await;
}

async fn device(gw: &TestGateway, user: &str, device: &str, platform: qim_sdk::Platform) -> Client {
    let mut config = gw.client_config(user, device);
    config.platform = platform;
    Client::connect(config).await.expect("connect")
}

fn kicked(e: &qim_sdk::Error) -> bool {
    matches!(
        e,
        qim_sdk::Error::Rejected {
            code: ErrorCode::Kicked,
            retryable: false,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_policies_unlimited_one_per_class_and_single() {
    use qim_sdk::Platform;
    // Unlimited: every device stays and gets every message.
    let gw = TestGateway::start().await;
    let a = device(&gw, "bob", "android", Platform::Android).await;
    let i = device(&gw, "bob", "iphone", Platform::Ios).await;
    let d = device(&gw, "bob", "desk", Platform::Desktop).await;
    let alice = gw.client("alice", "alice-phone").await;
    alice
        .send("bob".into(), "to all".into())
        .await
        .expect("send");
    for c in [&a, &i, &d] {
        assert_eq!(text(&take(c, 1).await[0]), "to all");
    }
    gw.stop().await;

    // One per platform class: the newer phone kicks the older, the desktop stays.
    let gw =
        TestGateway::start_with(|c| c.im.device_policy = "one-per-platform-class".into()).await;
    let a = device(&gw, "bob", "android", Platform::Android).await;
    let d = device(&gw, "bob", "desk", Platform::Desktop).await;
    let i = device(&gw, "bob", "iphone", Platform::Ios).await;
    let why = stopped(&a).await;
    assert!(kicked(&why), "{why:?}");
    let alice = gw.client("alice", "alice-phone").await;
    alice
        .send("bob".into(), "after the kick".into())
        .await
        .expect("send");
    assert_eq!(text(&take(&i, 1).await[0]), "after the kick");
    assert_eq!(text(&take(&d, 1).await[0]), "after the kick");
    // The kicked device does not come back on its own.
    assert_eq!(a.state(), qim_sdk::ConnectionState::Closed);
    assert_eq!(a.stats().sessions, 1);
    assert!(
        a.next_message_timeout(Duration::from_millis(200))
            .await
            .is_none()
    );
    assert_eq!(i.state(), qim_sdk::ConnectionState::Connected);
    gw.stop().await;

    // Single: any new device kicks every other.
    let gw = TestGateway::start_with(|c| c.im.device_policy = "single".into()).await;
    let d = device(&gw, "bob", "desk", Platform::Desktop).await;
    let w = device(&gw, "bob", "browser", Platform::Web).await;
    assert!(kicked(&stopped(&d).await));
    let alice = gw.client("alice", "alice-phone").await;
    alice
        .send("bob".into(), "only one".into())
        .await
        .expect("send");
    assert_eq!(text(&take(&w, 1).await[0]), "only one");
    assert_eq!(d.stats().sessions, 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnecting_after_a_blip_is_not_kicked_by_its_own_earlier_session() {
    let gw = TestGateway::start_with(|c| c.im.device_policy = "single".into()).await;
    // The session from before the blip is still open on the server.
    let before = common::Raw::login(&gw, "bob", "phone", 0).await;
    // The same device reconnects.
    let mut config = gw.client_config("bob", "phone");
    config.platform = qim_sdk::Platform::Android;
    let phone = Client::connect(config).await.expect("reconnect");
    assert_eq!(
        before.raw.closed_with().await,
        ErrorCode::Replaced,
        "only the stale session ends"
    );
    let alice = gw.client("alice", "alice-phone").await;
    alice
        .send("bob".into(), "still here".into())
        .await
        .expect("send");
    assert_eq!(text(&take(&phone, 1).await[0]), "still here");
    assert_eq!(phone.state(), qim_sdk::ConnectionState::Connected);
    assert_eq!(phone.stats().sessions, 1, "never kicked, never reconnected");
    assert!(phone.last_error().is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_friends_is_pushed_within_a_second_and_typing_is_never_stored() {
    use qim_sdk::{PresenceStatus, Signal};
    let gw = TestGateway::start().await;
    let alice = gw.client("alice", "alice-phone").await;
    let phone = gw.client("bob", "bob-phone").await;
    alice
        .request_friend("bob".into(), "hi".into())
        .await
        .expect("request");
    phone.accept_friend("alice".into()).await.expect("accept");
    take(&phone, 1).await;
    take(&alice, 1).await;
    let quiet = Duration::from_millis(200);
    let status = alice
        .subscribe_presence(vec!["bob".into()])
        .await
        .expect("subscribe");
    assert!(status[0].online);
    phone.close().await;
    match alice.next_signal(common::PATIENCE).await {
        Some(Signal::Presence(p)) => assert!(!p.online && p.last_seen_ms > 0, "{p:?}"),
        other => panic!("expected bob offline, got {other:?}"),
    }
    let now = alice.presence(vec!["bob".into()]).await.expect("presence");
    assert!(!now[0].online && now[0].last_seen_ms > 0, "{now:?}");

    let started = std::time::Instant::now();
    let phone = gw.client("bob", "bob-phone").await;
    let signal = alice
        .next_signal(Duration::from_secs(1))
        .await
        .expect("within a second");
    assert_eq!(
        signal,
        Signal::Presence(PresenceStatus {
            user: "bob".into(),
            online: true,
            last_seen_ms: 0
        })
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // Aggregated over devices: a second device on and off changes nothing.
    let laptop = gw.client("bob", "bob-laptop").await;
    assert_eq!(alice.next_signal(quiet).await, None);
    laptop.close().await;
    assert_eq!(alice.next_signal(quiet).await, None);
    phone.close().await;
    match alice.next_signal(common::PATIENCE).await {
        Some(Signal::Presence(p)) => assert!(!p.online && p.last_seen_ms > 0, "{p:?}"),
        other => panic!("expected bob offline, got {other:?}"),
    }

    // Only friends see presence.
    let carol = gw.client("carol", "carol-phone").await;
    let err = carol
        .presence(vec!["bob".into()])
        .await
        .expect_err("not a friend");
    assert!(matches!(
        err,
        qim_sdk::Error::Rejected {
            code: ErrorCode::PermissionDenied,
            ..
        }
    ));

    // Online time: each session's start and end.
    let phone = gw.client("bob", "bob-phone").await;
    let spans = phone.online_time(0, i64::MAX).await.expect("online time");
    let laptop_spans: Vec<_> = spans.iter().filter(|s| s.device == "bob-laptop").collect();
    assert_eq!(laptop_spans.len(), 1);
    assert!(laptop_spans[0].end_ms >= laptop_spans[0].start_ms && laptop_spans[0].end_ms > 0);
    assert!(spans.iter().filter(|s| s.device == "bob-phone").count() >= 2);

    // Typing reaches the online recipient and is never stored.
    let history = take(&phone, 1).await;
    assert!(matches!(
        history[0].event,
        Some(Event::FriendRequest { .. })
    ));
    alice
        .typing(Peer::User("bob".into()), true)
        .await
        .expect("typing");
    assert_eq!(
        phone.next_signal(common::PATIENCE).await,
        Some(Signal::Typing {
            conversation: user("alice"),
            from: "alice".into(),
            typing: true
        })
    );
    assert_quiet(&phone, quiet).await;
    let later = gw.client("bob", "bob-tablet").await;
    assert_eq!(
        later.next_signal(quiet).await,
        None,
        "not stored for later devices"
    );
    gw.stop().await;
}

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
    unread_counts_stay_exact_across_offline_devices_and_reconnects,
    conversation_list_pages_in_order,
    recall_and_edit_reach_online_and_offline_recipients,
    recall_after_the_window_is_refused,
    replies_quote_and_mentions_are_flagged_for_the_mentioned,
    history_pages_over_10000_messages_both_ways_and_from_a_time,
    delivery_receipts_tell_the_sender_what_reached_a_device,
    history_across_the_retention_boundary_says_older_messages_expired,
    friend_requests_blocks_and_the_friends_only_policy,
    with_the_open_policy_only_blocks_refuse,
);
