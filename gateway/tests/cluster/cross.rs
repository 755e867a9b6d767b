//! Presence, typing, groups and device policies across nodes.

use super::*;

/// Presence and typing across nodes: alice on node a watches bob, whose
/// devices come and go on nodes b and a; each transition of his aggregate
/// reaches her within a second, the second device changes nothing, and
/// typing crosses nodes without being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_nodes_within_a_second() {
    let shared = Shared::new();
    let a = Node::start_im(&shared, "a").await;
    let b = Node::start_im(&shared, "b").await;
    let (alice_id, bob_id) = (shared.user("alice"), shared.user("bob"));
    let alice = shared.client(&[a.addr], "alice", "alice-phone").await;
    let phone = shared.client(&[b.addr], "bob", "bob-phone").await;
    alice
        .request_friend(bob_id.clone(), "hi".into())
        .await
        .expect("request across nodes");
    // The request event is handed to bob's node and pushed live.
    let request = take(&phone, 1).await;
    assert!(matches!(
        request[0].event,
        Some(qim_sdk::Event::FriendRequest { .. })
    ));
    phone.accept_friend(alice_id.clone()).await.expect("accept");
    take(&alice, 1).await;

    let status = alice
        .subscribe_presence(vec![bob_id.clone()])
        .await
        .expect("subscribe");
    assert!(status[0].online, "bob is online on the other node");
    let second = Duration::from_secs(1);
    phone.close().await;
    let off = presence_change(&alice, second).await;
    assert!(
        off.user == bob_id && !off.online && off.last_seen_ms > 0,
        "{off:?}"
    );
    let phone = shared.client(&[b.addr], "bob", "bob-phone").await;
    let on = presence_change(&alice, second).await;
    assert!(on.user == bob_id && on.online, "{on:?}");
    // A new client instance (no local state) syncs the inbox again.
    let again = take(&phone, 1).await;
    assert!(matches!(
        again[0].event,
        Some(qim_sdk::Event::FriendRequest { .. })
    ));

    // A second device (on alice's node) and its leaving change nothing.
    let laptop = shared.client(&[a.addr], "bob", "bob-laptop").await;
    let quiet = Duration::from_millis(300);
    assert_eq!(alice.next_signal(quiet).await, None);
    laptop.close().await;
    assert_eq!(alice.next_signal(quiet).await, None);
    let now = alice.presence(vec![bob_id.clone()]).await.expect("query");
    assert!(now[0].online, "the phone is still on: {now:?}");

    // Typing from node a reaches bob on node b, and is never stored.
    alice
        .typing(qim_sdk::Peer::User(bob_id.clone()), true)
        .await
        .expect("typing");
    match phone.next_signal(second).await {
        Some(qim_sdk::Signal::Typing { from, typing, .. }) => {
            assert!(from == alice_id && typing);
        }
        other => panic!("expected typing, got {other:?}"),
    }
    assert_quiet(&phone, quiet).await;

    phone.close().await;
    let off = presence_change(&alice, second).await;
    assert!(!off.online && off.last_seen_ms > 0, "{off:?}");
    alice.close().await;
    a.stop().await;
    b.stop().await;
}

/// Groups across nodes in both delivery modes: the sender is on node a,
/// the members on node b. Write-diffusion copies reach them through the
/// node queues, read-diffusion log entries through the signal channel;
/// either way each member gets every message once, in order, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_members_on_other_nodes_in_both_modes() {
    let shared = Shared::new();
    // Members are added, not invited: the test is about delivery.
    let threshold = |c: &mut Config| {
        c.groups.read_diffusion_threshold = 4;
        c.groups.default_adds = "anyone".into();
    };
    let a = Node::start_im_with(&shared, "a", threshold).await;
    let b = Node::start_im_with(&shared, "b", threshold).await;
    let owner = shared.client(&[a.addr], "owner", "o").await;
    let names = ["m1", "m2", "m3", "m4", "m5"];
    let mut members = Vec::new();
    for name in names {
        members.push(shared.client(&[b.addr], name, "phone").await);
    }
    let ids = |n: usize| {
        names[..n]
            .iter()
            .map(|m| shared.user(m))
            .collect::<Vec<_>>()
    };
    let small = shared.user("small");
    let big = shared.user("big");
    let info = owner
        .create_group(small.clone(), "Small".into(), ids(2))
        .await
        .expect("create");
    assert!(!info.read_diffusion, "3 members: write diffusion");
    let info = owner
        .create_group(big.clone(), "Big".into(), ids(5))
        .await
        .expect("create");
    assert!(info.read_diffusion, "6 members: read diffusion");
    const N: usize = 20;
    for i in 0..N {
        owner
            .send_group(small.clone(), format!("s{i}"))
            .await
            .expect("send");
        owner
            .send_group(big.clone(), format!("b{i}"))
            .await
            .expect("send");
    }
    for (k, member) in members.iter().enumerate() {
        let want_small = k < 2;
        let n = if want_small { 2 * N } else { N };
        let got = take(member, n).await;
        let of = |g: &str| {
            got.iter()
                .filter(|m| m.conversation == qim_sdk::Peer::Group(g.to_owned()))
                .map(text)
                .collect::<Vec<_>>()
        };
        let bigs: Vec<String> = (0..N).map(|i| format!("b{i}")).collect();
        assert_eq!(
            of(&big),
            bigs,
            "member {k}: the read-diffusion log, in order"
        );
        if want_small {
            let smalls: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
            assert_eq!(of(&small), smalls, "member {k}: the copies, in order");
        }
        assert_quiet(member, Duration::from_millis(100)).await;
    }
    // A member removed through node a stops receiving on node b at once.
    owner
        .change_group(
            big.clone(),
            qim_sdk::GroupChange::Remove(vec![shared.user("m5")]),
        )
        .await
        .expect("remove");
    owner
        .send_group(big.clone(), "after".into())
        .await
        .expect("send");
    for member in &members[..4] {
        assert_eq!(text(&take(member, 1).await[0]), "after");
    }
    assert_quiet(&members[4], Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

/// One device per platform class holds across nodes: bob's iPhone logging
/// in on node b kicks his Android phone on node a (KICKED, for good), his
/// desktop on node a stays, and both live devices get what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_policy_kicks_across_nodes() {
    let shared = Shared::new();
    let policy = |c: &mut Config| c.im.device_policy = "one-per-platform-class".into();
    let a = Node::start_im_with(&shared, "a", policy).await;
    let b = Node::start_im_with(&shared, "b", policy).await;
    let device = |addr: SocketAddr, name: &str, platform: qim_sdk::Platform| {
        let mut config = shared.client_config(&[addr], "bob", name);
        config.platform = platform;
        Client::connect(config)
    };
    let android = device(a.addr, "android", qim_sdk::Platform::Android)
        .await
        .expect("connect");
    let desk = device(a.addr, "desk", qim_sdk::Platform::Desktop)
        .await
        .expect("connect");
    let iphone = device(b.addr, "iphone", qim_sdk::Platform::Ios)
        .await
        .expect("connect");
    let why = stopped(&android).await;
    assert!(
        matches!(
            why,
            qim_sdk::Error::Rejected {
                code: qim_proto::v1::ErrorCode::Kicked,
                retryable: false,
                ..
            }
        ),
        "{why:?}"
    );
    let alice = shared.client(&[b.addr], "alice", "alice-phone").await;
    alice
        .send_message(to(
            &shared.user("bob"),
            "p1".into(),
            "after the kick".into(),
        ))
        .await
        .expect("send");
    assert_eq!(text(&take(&iphone, 1).await[0]), "after the kick");
    assert_eq!(text(&take(&desk, 1).await[0]), "after the kick");
    assert_eq!(android.state(), ConnectionState::Closed);
    assert_eq!(android.stats().sessions, 1, "never came back on its own");
    assert_eq!(desk.state(), ConnectionState::Connected);
    a.stop().await;
    b.stop().await;
}
