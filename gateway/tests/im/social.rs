//! Contacts and their policies, device policies, presence and typing.

use super::*;

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

on_both_backends!(
    friend_requests_blocks_and_the_friends_only_policy,
    with_the_open_policy_only_blocks_refuse,
);
