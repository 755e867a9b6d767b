//! Groups through a real gateway with real SDK clients: membership, roles
//! and mutes enforced on send, removal stops delivery at once, and
//! read-diffusion groups (one log, pushed to online members, pulled by the
//! rest) including a group that crosses the threshold while messages flow.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Backend, PATIENCE, TestGateway, assert_quiet, take, text};
use qim_sdk::{Client, ErrorCode, GroupChange, GroupRole, MessageExtras, OutgoingMessage, Peer};

fn rejected(err: &qim_sdk::Error) -> Option<ErrorCode> {
    match err {
        qim_sdk::Error::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

async fn unread(client: &Client, peer: &Peer) -> u32 {
    client
        .all_conversations()
        .await
        .expect("list")
        .into_iter()
        .find(|c| &c.peer == peer)
        .map_or(0, |c| c.unread)
}

async fn members_send_muted_and_strangers_are_refused_removed_stop_receiving(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    // Names unique per run: cluster tests share one keyspace.
    let run = common::unique("-");
    let n = |name: &str| format!("{name}{run}");
    let owner = gw.client(&n("owner"), "o1").await;
    let bob = gw.client(&n("bob"), "b1").await;
    let carol = gw.client(&n("carol"), "c1").await;
    let dave = gw.client(&n("dave"), "d1").await;
    let g = n("team");
    let peer = Peer::Group(g.clone());
    // Bob and carol let anyone add them (the default is friends only).
    for member in [&bob, &carol] {
        let set = member
            .group_adds(Some(qim_sdk::GroupAdds::Anyone))
            .await
            .expect("setting");
        assert_eq!(set, qim_sdk::GroupAdds::Anyone);
    }
    let info = owner
        .create_group(g.clone(), "Team".into(), vec![n("bob"), n("carol")])
        .await
        .expect("create");
    assert_eq!((info.member_count, info.read_diffusion), (3, false));
    let err = dave
        .create_group(g.clone(), "again".into(), vec![])
        .await
        .expect_err("taken");
    assert_eq!(rejected(&err), Some(ErrorCode::AlreadyExists));

    let hello = owner
        .send_group(g.clone(), "hello team".into())
        .await
        .expect("send");
    for member in [&bob, &carol] {
        let m = take(member, 1).await.remove(0);
        assert_eq!(
            (text(&m), m.conversation.clone()),
            ("hello team".to_owned(), peer.clone())
        );
        assert_eq!(m.group_seq, 0, "write diffusion: an inbox message");
    }
    assert_eq!(unread(&bob, &peer).await, 1);
    assert_eq!(
        owner.read_count(hello.msg_id.clone()).await.expect("count"),
        (0, 2)
    );
    let bob_copy = bob
        .history(peer.clone(), qim_sdk::HistoryAnchor::End, false, 1)
        .await
        .expect("history");
    bob.mark_read(peer.clone(), bob_copy.messages[0].seq)
        .await
        .expect("mark");
    assert_eq!(unread(&bob, &peer).await, 0);
    assert_eq!(
        owner.read_count(hello.msg_id.clone()).await.expect("count"),
        (1, 2),
        "read by 1 of 2"
    );
    take(&bob, 1).await; // bob's own read event

    // Strangers, muted members and @all by a member are refused, typed.
    let err = dave
        .send_group(g.clone(), "let me in".into())
        .await
        .expect_err("stranger");
    assert_eq!(rejected(&err), Some(ErrorCode::NotAMember));
    owner
        .change_group(g.clone(), GroupChange::MuteMember(n("carol"), true))
        .await
        .expect("mute");
    let err = carol
        .send_group(g.clone(), "hm".into())
        .await
        .expect_err("muted");
    assert_eq!(rejected(&err), Some(ErrorCode::Muted));
    let err = bob
        .change_group(g.clone(), GroupChange::MuteMember(n("owner"), true))
        .await
        .expect_err("members do not mute");
    assert_eq!(rejected(&err), Some(ErrorCode::PermissionDenied));
    owner
        .change_group(g.clone(), GroupChange::MuteAll(true))
        .await
        .expect("mute all");
    let err = bob
        .send_group(g.clone(), "hm".into())
        .await
        .expect_err("all muted");
    assert_eq!(rejected(&err), Some(ErrorCode::Muted));
    owner
        .change_group(g.clone(), GroupChange::MuteAll(false))
        .await
        .expect("unmute all");
    let all = OutgoingMessage {
        to: String::new(),
        kind: "text".into(),
        body: b"@all".to_vec(),
        client_msg_id: None,
    };
    let everyone = MessageExtras {
        mention_all: true,
        ..MessageExtras::default()
    };
    let err = bob
        .send_group_with(g.clone(), all.clone(), everyone.clone())
        .await
        .expect_err("@all is for admins");
    assert_eq!(rejected(&err), Some(ErrorCode::PermissionDenied));
    owner
        .change_group(g.clone(), GroupChange::SetRole(n("bob"), GroupRole::Admin))
        .await
        .expect("promote");
    bob.send_group_with(g.clone(), all, everyone)
        .await
        .expect("admin @all");
    let m = take(&carol, 1).await.remove(0);
    assert!(m.mentions_me && m.mention_all);
    assert_eq!(take(&owner, 1).await[0].from_user, n("bob"));

    // Members page by user id.
    let (first, next) = owner
        .group_members(g.clone(), String::new(), 2)
        .await
        .expect("page");
    assert_eq!(
        first.iter().map(|m| m.user.clone()).collect::<Vec<_>>(),
        [n("bob"), n("carol")]
    );
    assert_eq!(first[0].role, GroupRole::Admin);
    let (rest, _) = owner
        .group_members(g.clone(), next.expect("more"), 2)
        .await
        .expect("page");
    assert_eq!(
        rest.iter().map(|m| m.user.clone()).collect::<Vec<_>>(),
        [n("owner")]
    );

    // A removed member gets nothing after the removal and cannot send.
    owner
        .change_group(g.clone(), GroupChange::Remove(vec![n("carol")]))
        .await
        .expect("remove");
    owner
        .send_group(g.clone(), "after carol".into())
        .await
        .expect("send");
    assert_eq!(text(&take(&bob, 1).await[0]), "after carol");
    assert_quiet(&carol, Duration::from_millis(300)).await;
    let err = carol
        .send_group(g.clone(), "still here?".into())
        .await
        .expect_err("removed");
    assert_eq!(rejected(&err), Some(ErrorCode::NotAMember));

    // Dissolved: nobody sends.
    let err = bob
        .change_group(g.clone(), GroupChange::Dissolve)
        .await
        .expect_err("owner only");
    assert_eq!(rejected(&err), Some(ErrorCode::PermissionDenied));
    owner
        .change_group(g.clone(), GroupChange::Dissolve)
        .await
        .expect("dissolve");
    let err = owner
        .send_group(g.clone(), "anyone?".into())
        .await
        .expect_err("dissolved");
    assert_eq!(rejected(&err), Some(ErrorCode::InvalidRecipient));
    gw.stop().await;
}

/// Read diffusion at size: 2,000 members, 200 of them connected with the
/// real SDK, 100 messages.
async fn read_diffusion_group_of_2000_delivers_to_200_online_once_in_order(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| {
        c.groups.read_diffusion_threshold = 100;
        c.groups.default_adds = "anyone".into();
    })
    .await;
    const MEMBERS: usize = 2000;
    const ONLINE: usize = 200;
    const MESSAGES: usize = 100;
    let run = common::unique("-");
    let g = format!("big{run}");
    let owner = gw.client(&format!("owner{run}"), "o1").await;
    let members: Vec<String> = (0..MEMBERS - 1).map(|i| format!("m{i:04}{run}")).collect();
    let info = owner
        .create_group(g.clone(), "Big".into(), members.clone())
        .await
        .expect("create");
    assert_eq!(
        (info.member_count, info.read_diffusion),
        (MEMBERS as u32, true)
    );

    let started = std::time::Instant::now();
    let mut online = Vec::with_capacity(ONLINE);
    for m in &members[..ONLINE] {
        online.push(gw.client(m, "phone").await);
    }
    eprintln!("{ONLINE} clients connected in {:?}", started.elapsed());

    let started = std::time::Instant::now();
    let mut sent = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let receipt = owner
            .send_group(g.clone(), format!("g{i}"))
            .await
            .expect("send");
        assert_eq!(receipt.seq, i as u64 + 1, "one log, one seq per message");
        sent.push(receipt);
    }
    let group_peer = &Peer::Group(g.clone());
    let receivers = online.iter().map(|c| async move {
        let got = take(c, MESSAGES).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.group_seq).collect();
        assert_eq!(
            seqs,
            (1..=MESSAGES as u64).collect::<Vec<_>>(),
            "all, once, in order"
        );
        assert!(
            got.iter()
                .all(|m| m.seq == 0 && m.conversation == *group_peer)
        );
        assert_eq!(text(&got[MESSAGES - 1]), format!("g{}", MESSAGES - 1));
    });
    tokio::time::timeout(PATIENCE * 3, futures_join_all(receivers))
        .await
        .expect("every online member got everything");
    eprintln!(
        "{MESSAGES} messages to {ONLINE} members in {:?}",
        started.elapsed()
    );
    for c in &online {
        assert_quiet(c, Duration::from_millis(1)).await;
    }
    assert_quiet(&online[0], Duration::from_millis(200)).await;

    // Unread counts come from the member's cursor in the log.
    let peer = Peer::Group(g.clone());
    assert_eq!(unread(&online[0], &peer).await, MESSAGES as u32);
    let c = online[0].mark_read(peer.clone(), 60).await.expect("mark");
    assert_eq!((c.unread, c.group_read_seq), (40, 60));
    assert_eq!(unread(&online[0], &peer).await, 40);
    online[1].mark_read(peer.clone(), 100).await.expect("mark");
    // Read counts from the members' cursors: "read by 2 of 1999".
    let count = |i: usize| owner.read_count(sent[i].msg_id.clone());
    assert_eq!(count(49).await.expect("count"), (2, MEMBERS as u32 - 1));
    assert_eq!(count(79).await.expect("count"), (1, MEMBERS as u32 - 1));
    assert_eq!(
        unread(&owner, &peer).await,
        0,
        "own messages are never unread"
    );

    // History pages over the group's log.
    let page = online[1]
        .history(peer.clone(), qim_sdk::HistoryAnchor::End, false, 30)
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (71..=100).rev().collect::<Vec<u64>>()
    );
    assert!(page.more);

    // An offline member catches up by pulling, from where it joined.
    let late = gw.client(&members[MEMBERS - 2], "phone").await;
    assert_eq!(unread(&late, &peer).await, MESSAGES as u32);
    let got = take(&late, MESSAGES).await;
    assert_eq!(
        got.iter().map(|m| m.group_seq).collect::<Vec<_>>(),
        (1..=MESSAGES as u64).collect::<Vec<_>>()
    );
    assert_quiet(&late, Duration::from_millis(200)).await;
    gw.stop().await;
}

/// Awaits all futures concurrently.
async fn futures_join_all<F: std::future::Future<Output = ()>>(
    futures: impl IntoIterator<Item = F>,
) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    common::join_in_order(set).await;
}

async fn a_group_crossing_the_threshold_while_sending_loses_and_doubles_nothing(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| {
        c.groups.read_diffusion_threshold = 5;
        c.groups.default_adds = "anyone".into();
    })
    .await;
    let run = common::unique("-");
    let g = format!("growing{run}");
    let owner = gw.client(&format!("owner{run}"), "o1").await;
    let early: Vec<String> = (0..3).map(|i| format!("early{i}{run}")).collect();
    owner
        .create_group(g.clone(), "Growing".into(), early.clone())
        .await
        .expect("create");
    let mut readers = Vec::new();
    for u in &early {
        readers.push(gw.client(u, "phone").await);
    }
    const N: usize = 60;
    // A few in write diffusion first, then the rest while the group grows.
    for i in 0..5 {
        owner
            .send_group(g.clone(), format!("n{i}"))
            .await
            .expect("send");
    }
    let sender = async {
        for i in 5..N {
            owner
                .send_group(g.clone(), format!("n{i}"))
                .await
                .expect("send");
        }
    };
    let grower = async {
        // Invite one member at a time while the messages flow: the group
        // passes 5 members (the threshold) on the third invite.
        for i in 0..6 {
            owner
                .change_group(
                    g.clone(),
                    GroupChange::Invite(vec![format!("late{i}{run}")]),
                )
                .await
                .expect("invite");
        }
    };
    tokio::join!(sender, grower);
    let info = owner.group_info(g.clone()).await.expect("info");
    assert!(info.read_diffusion && info.member_count == 10);

    for reader in &readers {
        let got = take(reader, N).await;
        let texts: Vec<String> = got.iter().map(text).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for t in &texts {
            *counts.entry(t.as_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), N, "every message arrived");
        assert!(counts.values().all(|&c| c == 1), "none twice");
        // Inbox copies (before the switch) and log entries (after) are each
        // in send order, and every inbox copy was sent before every log entry.
        let inbox: Vec<usize> = got
            .iter()
            .filter(|m| m.group_seq == 0)
            .map(|m| num(&text(m)))
            .collect();
        let log: Vec<usize> = got
            .iter()
            .filter(|m| m.group_seq > 0)
            .map(|m| num(&text(m)))
            .collect();
        assert!(inbox.windows(2).all(|w| w[0] < w[1]), "{inbox:?}");
        assert!(log.windows(2).all(|w| w[0] < w[1]), "{log:?}");
        assert!(
            !log.is_empty() && inbox.len() >= 5,
            "the group switched while sending"
        );
        if let (Some(a), Some(b)) = (inbox.last(), log.first()) {
            assert!(a < b);
        }
        assert_eq!(inbox.len() + log.len(), N);
        assert_quiet(reader, Duration::from_millis(100)).await;
    }
    gw.stop().await;
}

fn num(t: &str) -> usize {
    t.trim_start_matches('n').parse().expect("n<i>")
}

on_both_backends!(
    members_send_muted_and_strangers_are_refused_removed_stop_receiving,
    read_diffusion_group_of_2000_delivers_to_200_online_once_in_order,
    a_group_crossing_the_threshold_while_sending_loses_and_doubles_nothing,
);
