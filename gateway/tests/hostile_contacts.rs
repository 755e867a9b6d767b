//! Attacks through contacts, blocks, presence and scheduled sends, each
//! with a bystander pair chatting through it, on both backends (and across
//! two cluster nodes where a signal must cross them): friend request spam,
//! a blocked user asking again, a blocked user's burst of sends mixed with
//! sends to others, presence watched after an unfriend or a
//! block, a blocked user reaching the blocker through a shared group, a
//! scheduled send that falls due after a block, and schedules beyond the
//! quota.

mod common;

use std::time::Duration;

use common::{Backend, Bystanders, PATIENCE, TestGateway, assert_quiet, take, text, unique};
use qim_gateway::Config;
use qim_sdk::{Client, ErrorCode, Event, HistoryAnchor, Peer, Signal};

/// The gateways of a test: one embedded gateway, or two nodes of one
/// cluster (sharing Redis key prefixes and the keyspace).
struct Nodes {
    first: TestGateway,
    second: Option<TestGateway>,
}

impl Nodes {
    async fn start(backend: Backend, adjust: impl Fn(&mut Config) + Clone) -> Nodes {
        match backend {
            Backend::Embedded => Nodes {
                first: TestGateway::start_on(backend, adjust).await,
                second: None,
            },
            Backend::Cluster => {
                let store_prefix = format!("{}:", unique("qimtest:"));
                let cluster_prefix = unique("qimtest-");
                let on_node = move |c: &mut Config| {
                    c.store.key_prefix = store_prefix.clone();
                    c.cluster.key_prefix = cluster_prefix.clone();
                    adjust(c);
                };
                let first = TestGateway::start_on(backend, on_node.clone()).await;
                let second = TestGateway::start_on(backend, on_node).await;
                Nodes {
                    first,
                    second: Some(second),
                }
            }
        }
    }

    /// The first node.
    fn a(&self) -> &TestGateway {
        &self.first
    }

    /// The second node (the same gateway on the embedded backend).
    fn b(&self) -> &TestGateway {
        self.second.as_ref().unwrap_or(&self.first)
    }

    async fn stop(self) {
        if let Some(second) = self.second {
            second.stop().await;
        }
        self.first.stop().await;
    }
}

/// A gateway with bystanders chatting, an attacker and a victim online.
struct Scene {
    gw: TestGateway,
    bystanders: Bystanders,
    attacker: String,
    victim: String,
    a: Client,
    v: Client,
}

impl Scene {
    async fn start(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Scene {
        let gw = TestGateway::start_on(backend, adjust).await;
        let bystanders = Bystanders::start(&gw).await;
        let (attacker, victim) = (unique("attacker"), unique("victim"));
        let a = gw.client(&attacker, "phone").await;
        let v = gw.client(&victim, "phone").await;
        Scene {
            gw,
            bystanders,
            attacker,
            victim,
            a,
            v,
        }
    }

    /// Checks the bystanders got everything and stops.
    async fn finish(self) {
        self.bystanders.finish().await;
        self.a.close().await;
        self.v.close().await;
        self.gw.stop().await;
    }
}

fn refused_with(result: Result<impl std::fmt::Debug, qim_sdk::Error>, want: ErrorCode) {
    match result {
        Err(qim_sdk::Error::Rejected { code, .. }) if code == want => {}
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

/// Makes `a` and `b` friends and takes the request and the answer.
async fn befriend(a: (&str, &Client), b: (&str, &Client)) {
    a.1.request_friend(b.0.to_owned(), "hi".into())
        .await
        .expect("request");
    b.1.accept_friend(a.0.to_owned()).await.expect("accept");
    take(a.1, 1).await;
    take(b.1, 1).await;
}

/// The next event of `client` that `want` accepts (skipping the rest);
/// fails after PATIENCE.
async fn next_event(client: &Client, what: &str, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = client.next_message_timeout(left).await else {
            panic!("no {what} within {PATIENCE:?}");
        };
        if let Some(event) = m.event
            && want(&event)
        {
            return event;
        }
    }
}

/// Duplicate requests, a request again within the cool-down after a
/// rejection, and requests beyond the pending quota are refused, typed, and
/// the victim hears of none of them.
async fn friend_request_spam_is_refused(backend: Backend) {
    let s = Scene::start(backend, |c| {
        c.quotas.pending_requests = 3;
        c.im.friend_request_cooldown_ms = 600_000;
    })
    .await;

    s.a.request_friend(s.victim.clone(), "hi".into())
        .await
        .expect("the first request");
    let got = take(&s.v, 1).await;
    assert!(matches!(
        &got[0].event,
        Some(Event::FriendRequest { from, .. }) if *from == s.attacker
    ));
    for _ in 0..5 {
        refused_with(
            s.a.request_friend(s.victim.clone(), "hi again".into())
                .await,
            ErrorCode::AlreadyExists,
        );
    }
    s.v.reject_friend(s.attacker.clone()).await.expect("reject");
    assert!(matches!(
        take(&s.a, 1).await[0].event,
        Some(Event::FriendResponse {
            accepted: false,
            ..
        })
    ));
    for _ in 0..5 {
        refused_with(
            s.a.request_friend(s.victim.clone(), "please".into()).await,
            ErrorCode::Cooldown,
        );
    }
    assert_quiet(&s.v, Duration::from_millis(300)).await;

    // Beyond the quota of pending requests.
    let others: Vec<String> = (0..4).map(|i| unique(&format!("other{i}"))).collect();
    for other in &others[..3] {
        s.a.request_friend(other.clone(), "hi".into())
            .await
            .expect("within the quota");
    }
    refused_with(
        s.a.request_friend(others[3].clone(), "hi".into()).await,
        ErrorCode::QuotaExceeded,
    );
    let mine = s.a.contacts().await.expect("contacts");
    assert_eq!(mine.outgoing.len(), 3);
    // An answer frees a place.
    let first = s.gw.client(&others[0], "phone").await;
    first
        .reject_friend(s.attacker.clone())
        .await
        .expect("reject");
    s.a.request_friend(others[3].clone(), "hi".into())
        .await
        .expect("a place was freed");

    first.close().await;
    s.finish().await;
}

/// A blocked user's request is refused BLOCKED and never reaches the
/// blocker; a block drops the pending requests between the two, both ways.
async fn a_blocked_user_cannot_request(backend: Backend) {
    let s = Scene::start(backend, |_| {}).await;
    s.a.request_friend(s.victim.clone(), "hi".into())
        .await
        .expect("request");
    take(&s.v, 1).await;
    s.v.request_friend(unique("someone"), "hi".into())
        .await
        .expect("the s.victim's own request");
    let blocked = s.v.block(s.attacker.clone()).await.expect("block");
    assert!(
        blocked.incoming.is_empty(),
        "the pending request is dropped"
    );
    assert!(s.a.contacts().await.expect("contacts").outgoing.is_empty());
    for _ in 0..5 {
        refused_with(
            s.a.request_friend(s.victim.clone(), "let me in".into())
                .await,
            ErrorCode::Blocked,
        );
    }
    assert_quiet(&s.v, Duration::from_millis(300)).await;
    s.finish().await;
}

/// Sends written at once, to a blocker and to someone else in turn (read
/// by the server as one batch or a few): every one to the blocker is
/// refused BLOCKED and none reaches them; the others all arrive, once, in
/// order.
async fn a_blocked_user_sending_in_bursts_reaches_only_the_others(backend: Backend) {
    let s = Scene::start(backend, |_| {}).await;
    let other = unique("other");
    let o = s.gw.client(&other, "phone").await;
    s.v.block(s.attacker.clone()).await.expect("block");
    let sends = (0..16).map(|n| {
        let to = if n % 2 == 0 { &s.victim } else { &other };
        s.a.send(to.clone(), format!("burst {n}"))
    });
    let results = futures_util::future::join_all(sends).await;
    for (n, result) in results.into_iter().enumerate() {
        if n % 2 == 0 {
            refused_with(result, ErrorCode::Blocked);
        } else {
            result.unwrap_or_else(|e| panic!("burst {n} to the other user: {e:?}"));
        }
    }
    let got: Vec<String> = take(&o, 8).await.iter().map(text).collect();
    let want: Vec<String> = (0..16)
        .filter(|n| n % 2 == 1)
        .map(|n| format!("burst {n}"))
        .collect();
    assert_eq!(got, want);
    assert_quiet(&o, Duration::from_millis(300)).await;
    assert_quiet(&s.v, Duration::from_millis(300)).await;
    o.close().await;
    s.finish().await;
}

/// After an unfriend and after a block, the ex-friend and the blocked user
/// get no presence change of the other (also from another node), while a
/// friend still does; neither may ask for it.
async fn presence_ends_with_the_friendship_and_with_a_block(backend: Backend) {
    let nodes = Nodes::start(backend, |_| {}).await;
    let (na, nb) = (nodes.a(), nodes.b());
    let bystanders = Bystanders::start(na).await;
    let [alice, bob, eve, carol, dave] = ["alice", "bob", "eve", "carol", "dave"].map(unique);
    let alice_c = na.client(&alice, "phone").await;
    let dave_c = na.client(&dave, "phone").await;
    let bob_c = nb.client(&bob, "phone").await;
    let eve_c = nb.client(&eve, "phone").await;
    let carol_c = nb.client(&carol, "phone").await;
    for (name, client) in [(&bob, &bob_c), (&eve, &eve_c), (&carol, &carol_c)] {
        befriend((&alice, &alice_c), (name, client)).await;
        let now = client
            .subscribe_presence(vec![alice.clone()])
            .await
            .expect("subscribe");
        assert!(now[0].online);
    }

    alice_c.remove_friend(bob.clone()).await.expect("unfriend");
    alice_c.block(eve.clone()).await.expect("block");
    for c in [&bob_c, &eve_c] {
        refused_with(
            c.presence(vec![alice.clone()]).await,
            ErrorCode::PermissionDenied,
        );
        refused_with(
            c.subscribe_presence(vec![alice.clone()]).await,
            ErrorCode::PermissionDenied,
        );
    }

    let alice_c = {
        alice_c.close().await;
        // The friend on the other node hears alice go offline...
        match carol_c.next_signal(PATIENCE).await {
            Some(Signal::Presence(p)) => assert!(p.user == alice && !p.online, "{p:?}"),
            other => panic!("expected alice offline, got {other:?}"),
        }
        // ...and back online.
        let again = na.client(&alice, "phone").await;
        match carol_c.next_signal(PATIENCE).await {
            Some(Signal::Presence(p)) => assert!(p.user == alice && p.online, "{p:?}"),
            other => panic!("expected alice online, got {other:?}"),
        }
        again
    };
    // Signals to one session keep their order: had either change reached
    // the ex-friend or the blocked user, it would come before this.
    for (name, client) in [(&bob, &bob_c), (&eve, &eve_c)] {
        dave_c
            .typing(Peer::User(name.clone()), true)
            .await
            .expect("typing");
        match client.next_signal(PATIENCE).await {
            Some(Signal::Typing { from, .. }) => assert_eq!(from, dave),
            other => panic!("{name} got {other:?} instead of dave's typing"),
        }
    }

    bystanders.finish().await;
    for c in [alice_c, dave_c, bob_c, eve_c, carol_c] {
        c.close().await;
    }
    nodes.stop().await;
}

/// Texts `client` receives until `marker` (inclusive), group events aside.
async fn texts_until(client: &Client, marker: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let Some(m) = client.next_message_timeout(PATIENCE).await else {
            panic!("{marker:?} did not arrive; got {texts:?}");
        };
        if m.event.is_some() {
            continue;
        }
        let t = text(&m);
        texts.push(t.clone());
        if t == marker {
            return texts;
        }
    }
}

/// The texts of a group's newest history page as `client` sees it.
async fn group_history(client: &Client, group: &str) -> Vec<String> {
    client
        .history(Peer::Group(group.to_owned()), HistoryAnchor::End, false, 50)
        .await
        .expect("history")
        .messages
        .iter()
        .map(text)
        .collect()
}

/// A user the blocker blocked reaches them through no shared group: a
/// write-diffusion group makes no copy for the blocker, a read-diffusion
/// group neither pushes it nor shows it in pulls or history, while the
/// other members get it.
async fn a_blocked_user_does_not_reach_the_blocker_through_a_group(backend: Backend) {
    let nodes = Nodes::start(backend, |c| {
        c.groups.read_diffusion_threshold = 3;
        // Users who let anyone add them: blocks inside a group are the
        // subject here; adding a blocker is refused (hostile_groups).
        c.groups.default_adds = "anyone".into();
    })
    .await;
    let (na, nb) = (nodes.a(), nodes.b());
    let bystanders = Bystanders::start(na).await;
    let [attacker, victim, carol, dave] = ["attacker", "victim", "carol", "dave"].map(unique);
    let a = na.client(&attacker, "phone").await;
    let v = nb.client(&victim, "phone").await;
    let c = na.client(&carol, "phone").await;
    v.block(attacker.clone()).await.expect("block");

    for (members, label) in [
        (vec![victim.clone(), attacker.clone()], "write"),
        (vec![victim.clone(), attacker.clone(), dave.clone()], "read"),
    ] {
        let group = unique("g");
        let info = c
            .create_group(group.clone(), group.clone(), members)
            .await
            .expect("create");
        assert_eq!(info.read_diffusion, label == "read");
        let spam = format!("spam via {label}");
        let marker = format!("marker {label}");
        a.send_group(group.clone(), spam.clone())
            .await
            .expect("the attacker's group send is accepted");
        assert_eq!(texts_until(&c, &spam).await.last(), Some(&spam));
        c.send_group(group.clone(), marker.clone())
            .await
            .expect("send");
        let seen = texts_until(&v, &marker).await;
        assert!(!seen.contains(&spam), "{label}: the blocker got {seen:?}");
        let theirs = group_history(&v, &group).await;
        assert!(
            theirs.contains(&marker) && !theirs.contains(&spam),
            "{label}: {theirs:?}"
        );
        assert!(
            group_history(&c, &group).await.contains(&spam),
            "{label}: others see it"
        );
    }
    assert_quiet(&v, Duration::from_millis(300)).await;

    bystanders.finish().await;
    for client in [a, v, c] {
        client.close().await;
    }
    nodes.stop().await;
}

/// A send scheduled before the recipient blocked its sender is refused
/// when it falls due: nothing reaches the recipient and the sender gets a
/// ScheduleRefused event naming BLOCKED.
async fn a_scheduled_send_after_a_block_is_refused_and_told(backend: Backend) {
    let s = Scene::start(backend, |_| {}).await;
    let id =
        s.a.schedule(
            Peer::User(s.victim.clone()),
            "surprise".into(),
            qim_proto::now_ms() + 1_000,
        )
        .await
        .expect("schedule");
    s.v.block(s.attacker.clone()).await.expect("block");
    let event = next_event(&s.a, "ScheduleRefused", |e| {
        matches!(e, Event::ScheduleRefused { .. })
    })
    .await;
    let Event::ScheduleRefused {
        schedule_id,
        to,
        code,
        ..
    } = event
    else {
        unreachable!("matched above");
    };
    assert_eq!(schedule_id, id);
    assert_eq!(to, Peer::User(s.victim.clone()));
    assert_eq!(code, ErrorCode::Blocked as i32);
    assert_quiet(&s.v, Duration::from_millis(300)).await;
    refused_with(s.a.cancel_scheduled(id).await, ErrorCode::NotFound);
    s.finish().await;
}

/// Scheduled sends beyond the pending quota are refused QUOTA_EXCEEDED; a
/// cancel frees a place.
async fn schedules_beyond_the_quota_are_refused(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| c.quotas.pending_schedules = 3).await;
    let bystanders = Bystanders::start(&gw).await;
    let (attacker, victim) = (unique("attacker"), unique("victim"));
    let a = gw.client(&attacker, "phone").await;
    let later = qim_proto::now_ms() + 3_600_000;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            a.schedule(Peer::User(victim.clone()), format!("m{i}"), later)
                .await
                .expect("within the quota"),
        );
    }
    for _ in 0..5 {
        refused_with(
            a.schedule(Peer::User(victim.clone()), "more".into(), later)
                .await,
            ErrorCode::QuotaExceeded,
        );
    }
    assert_eq!(
        gw.metric("qim_quota_refusals_total{quota=\"pending_schedules\"}")
            .await,
        5.0
    );
    a.cancel_scheduled(ids[0].clone()).await.expect("cancel");
    a.schedule(Peer::User(victim.clone()), "again".into(), later)
        .await
        .expect("a place was freed");
    bystanders.finish().await;
    a.close().await;
    gw.stop().await;
}

on_both_backends!(
    friend_request_spam_is_refused,
    a_blocked_user_cannot_request,
    a_blocked_user_sending_in_bursts_reaches_only_the_others,
    presence_ends_with_the_friendship_and_with_a_block,
    a_blocked_user_does_not_reach_the_blocker_through_a_group,
    a_scheduled_send_after_a_block_is_refused_and_told,
    schedules_beyond_the_quota_are_refused,
);
