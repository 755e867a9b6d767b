//! Attacks on the group trust boundary, on both backends, each with a
//! bystander pair chatting through it: joining an invite-only group,
//! rejoining after removal or a ban, overfilling a group by every path,
//! reading a private group from outside, reaching a user who blocked the
//! attacker (or who lets nobody add them) through a group, owning groups
//! beyond the quota, and a member doing an admin's work. Each refusal is
//! asserted by its wire code.

mod common;

use std::time::Duration;

use common::{Backend, Bystanders, Raw, TestGateway, assert_quiet, take, text, unique};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, rpc_request, rpc_response};
use qim_sdk::{
    Client, ErrorCode, Event, GroupAdds, GroupChange, GroupList, GroupRole, JoinPolicy, NewGroup,
};

fn code<T: std::fmt::Debug>(result: Result<T, qim_sdk::Error>) -> ErrorCode {
    match result {
        Err(qim_sdk::Error::Rejected { code, .. }) => code,
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

/// A user on `gw` under a name unique to this run, and the name.
async fn user(gw: &TestGateway, name: &str) -> (Client, String) {
    let id = unique(name);
    (gw.client(&id, "phone").await, id)
}

/// Lets anyone add `client` to groups.
async fn open_to_adds(client: &Client) {
    let set = client
        .group_adds(Some(GroupAdds::Anyone))
        .await
        .expect("setting");
    assert_eq!(set, GroupAdds::Anyone);
}

fn settings(policy: Option<JoinPolicy>, max: Option<u32>) -> GroupChange {
    GroupChange::Settings {
        join_policy: policy,
        max_members: max,
        public: None,
    }
}

/// `owner` sets the group's join policy.
async fn set_policy(owner: &Client, group: &str, policy: JoinPolicy) {
    owner
        .change_group(group.to_owned(), settings(Some(policy), None))
        .await
        .expect("set the join policy");
}

/// `client` joins an open group.
async fn join(client: &Client, group: &str) {
    client
        .change_group(group.to_owned(), GroupChange::Join)
        .await
        .expect("join an open group");
}

/// The next inbox entry of `client`, which must be an event.
async fn next_event(client: &Client) -> Event {
    let entry = take(client, 1).await.remove(0);
    entry.event.expect("an event")
}

/// One raw rpc exchange of a logged-in raw session.
async fn raw_rpc(session: &common::RawSession, kind: rpc_request::Kind) -> rpc_response::Kind {
    let (send, recv) = session.raw.conn.open_bi().await.expect("rpc");
    let mut send = FramedSend::new(send, StreamKind::Rpc, 64 * 1024);
    let mut recv = FramedRecv::new(recv, 64 * 1024);
    send.send(&v1::RpcRequest { kind: Some(kind) })
        .await
        .expect("request");
    recv.next::<v1::RpcResponse>()
        .await
        .expect("response")
        .and_then(|r| r.kind)
        .expect("an answer")
}

fn rpc_code(answer: &rpc_response::Kind) -> ErrorCode {
    match answer {
        rpc_response::Kind::Error(e) => ErrorCode::try_from(e.code).expect("a known code"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn invite_only_and_rejoins_are_refused(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let bystanders = Bystanders::start(&gw).await;
    let (owner, _) = user(&gw, "owner").await;
    let (bob, bob_id) = user(&gw, "bob").await;
    let (mallory, mallory_id) = user(&gw, "mallory").await;
    open_to_adds(&bob).await;
    let g = unique("club");
    let info = owner
        .create_group(g.clone(), "Club".into(), vec![bob_id.clone()])
        .await
        .expect("create");
    assert_eq!(
        (info.join_policy, info.member_count, info.public),
        (JoinPolicy::InviteOnly, 2, false)
    );

    // The attack: join an invite-only group, and post into it.
    assert_eq!(
        code(mallory.change_group(g.clone(), GroupChange::Join).await),
        ErrorCode::InviteOnly
    );
    assert_eq!(
        code(mallory.send_group(g.clone(), "hi".into()).await),
        ErrorCode::NotAMember
    );

    // Open for a moment: mallory joins, is removed, and the group is
    // invite-only again: no rejoin.
    set_policy(&owner, &g, JoinPolicy::Open).await;
    join(&mallory, &g).await;
    owner
        .change_group(g.clone(), GroupChange::Remove(vec![mallory_id.clone()]))
        .await
        .expect("remove");
    set_policy(&owner, &g, JoinPolicy::InviteOnly).await;
    assert_eq!(
        code(mallory.change_group(g.clone(), GroupChange::Join).await),
        ErrorCode::InviteOnly
    );

    // Banned from an open group: removed at once, stops receiving, and
    // cannot join, ask, be added or invited until unbanned.
    set_policy(&owner, &g, JoinPolicy::Open).await;
    join(&mallory, &g).await;
    owner
        .change_group(g.clone(), GroupChange::Ban(vec![mallory_id.clone()]))
        .await
        .expect("ban");
    owner
        .send_group(g.clone(), "after the ban".into())
        .await
        .expect("send");
    assert_eq!(text(&take(&bob, 1).await[0]), "after the ban");
    assert_quiet(&mallory, Duration::from_millis(300)).await;
    assert_eq!(
        code(mallory.change_group(g.clone(), GroupChange::Join).await),
        ErrorCode::Banned
    );
    open_to_adds(&mallory).await;
    assert_eq!(
        code(
            owner
                .change_group(g.clone(), GroupChange::Invite(vec![mallory_id.clone()]))
                .await
        ),
        ErrorCode::Banned
    );
    set_policy(&owner, &g, JoinPolicy::Approval).await;
    assert_eq!(
        code(mallory.change_group(g.clone(), GroupChange::Join).await),
        ErrorCode::Banned
    );
    let (banned, _) = owner
        .group_list(g.clone(), GroupList::Banned, String::new(), 10)
        .await
        .expect("bans");
    assert_eq!(banned.len(), 1);
    assert_eq!(banned[0].user, mallory_id);
    assert_eq!(
        code(
            mallory
                .group_list(g.clone(), GroupList::Banned, String::new(), 10)
                .await
        ),
        ErrorCode::NotFound,
        "a private group's lists are not for outsiders"
    );
    bystanders.finish().await;
    gw.stop().await;
}

async fn the_member_limit_holds_on_every_path(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let bystanders = Bystanders::start(&gw).await;
    let (owner, _) = user(&gw, "owner").await;
    let (a, a_id) = user(&gw, "a").await;
    let (b, b_id) = user(&gw, "b").await;
    let (c, c_id) = user(&gw, "c").await;
    let (d, d_id) = user(&gw, "d").await;
    open_to_adds(&a).await;
    let g = unique("small");
    // Owner, a added, b (not a friend) invited: 3 of 3 places.
    let made = owner
        .create_group_with(NewGroup {
            group: g.clone(),
            name: "Small".into(),
            members: vec![a_id.clone(), b_id.clone()],
            max_members: 3,
            ..NewGroup::default()
        })
        .await
        .expect("create");
    assert_eq!(made.invited, vec![b_id.clone()]);
    assert_eq!((made.group.member_count, made.group.max_members), (2, 3));
    open_to_adds(&c).await;
    assert_eq!(
        code(
            a.change_group(g.clone(), GroupChange::Invite(vec![c_id.clone()]))
                .await
        ),
        ErrorCode::GroupFull,
        "invite"
    );
    set_policy(&owner, &g, JoinPolicy::Open).await;
    assert_eq!(
        code(c.change_group(g.clone(), GroupChange::Join).await),
        ErrorCode::GroupFull,
        "join"
    );
    // The invitation holds its place: accepting it fits.
    let accepted = b
        .update_group(g.clone(), GroupChange::AcceptInvitation)
        .await
        .expect("accept");
    assert_eq!(accepted.group.member_count, 3);
    assert_eq!(
        code(owner.change_group(g.clone(), settings(None, Some(2))).await),
        ErrorCode::InvalidArgument,
        "never below the members it has"
    );

    // Approval: two ask for one free place; approving both is refused.
    owner
        .change_group(g.clone(), settings(Some(JoinPolicy::Approval), Some(4)))
        .await
        .expect("approval, 4 places");
    for asker in [&c, &d] {
        let asked = asker
            .update_group(g.clone(), GroupChange::Join)
            .await
            .expect("ask");
        assert!(asked.requested && asked.group.member_count == 3);
    }
    assert_eq!(
        code(
            owner
                .change_group(
                    g.clone(),
                    GroupChange::Approve(vec![c_id.clone(), d_id.clone()])
                )
                .await
        ),
        ErrorCode::GroupFull,
        "approve"
    );
    let approved = owner
        .change_group(g.clone(), GroupChange::Approve(vec![c_id.clone()]))
        .await
        .expect("one fits");
    assert_eq!(approved.member_count, 4);

    // Accept: an invitation holds its place from the invite on, so a
    // later invite cannot take it, and accepting always fits.
    let g2 = unique("tiny");
    let made = owner
        .create_group_with(NewGroup {
            group: g2.clone(),
            name: "Tiny".into(),
            members: vec![d_id.clone()],
            max_members: 2,
            ..NewGroup::default()
        })
        .await
        .expect("create");
    assert_eq!(made.invited, vec![d_id.clone()]);
    assert_eq!(
        code(
            owner
                .change_group(g2.clone(), GroupChange::Invite(vec![c_id.clone()]))
                .await
        ),
        ErrorCode::GroupFull,
        "the invitation holds the last place"
    );
    d.change_group(g2.clone(), GroupChange::AcceptInvitation)
        .await
        .expect("accept");
    assert_eq!(
        code(
            owner
                .create_group_with(NewGroup {
                    group: unique("huge"),
                    name: "Huge".into(),
                    max_members: gw.config.groups.max_members + 1,
                    ..NewGroup::default()
                })
                .await
        ),
        ErrorCode::InvalidArgument,
        "never above the server's limit"
    );
    bystanders.finish().await;
    gw.stop().await;
}

async fn a_private_group_shows_nothing_to_outsiders(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let bystanders = Bystanders::start(&gw).await;
    let (owner, _) = user(&gw, "owner").await;
    let (mallory, _) = user(&gw, "mallory").await;
    let g = unique("secret");
    owner
        .create_group(g.clone(), "Secret plans".into(), vec![])
        .await
        .expect("create");
    owner
        .send_group(g.clone(), "the plan".into())
        .await
        .expect("send");

    // Info, members and the log: the same NOT_FOUND as a missing group.
    for group in [g.clone(), unique("missing")] {
        assert_eq!(
            code(mallory.group_info(group.clone()).await),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(
                mallory
                    .group_members(group.clone(), String::new(), 10)
                    .await
            ),
            ErrorCode::NotFound
        );
    }
    let raw = Raw::login(&gw, &unique("raw-mallory"), "raw", 0).await;
    let pull = raw_rpc(
        &raw,
        rpc_request::Kind::GroupSync(v1::GroupSyncRequest {
            group: g.clone(),
            after_seq: 0,
            limit: 100,
        }),
    )
    .await;
    assert_eq!(rpc_code(&pull), ErrorCode::NotFound);
    let invited = raw_rpc(
        &raw,
        rpc_request::Kind::Members(v1::MembersRequest {
            group: g.clone(),
            list: v1::MemberList::Invited as i32,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(rpc_code(&invited), ErrorCode::NotFound);

    // Public: the info is for anyone, the lists still for members.
    owner
        .change_group(
            g.clone(),
            GroupChange::Settings {
                join_policy: None,
                max_members: None,
                public: Some(true),
            },
        )
        .await
        .expect("public");
    let info = mallory.group_info(g.clone()).await.expect("public info");
    assert_eq!((info.name.as_str(), info.public), ("Secret plans", true));
    assert_eq!(
        code(mallory.group_members(g.clone(), String::new(), 10).await),
        ErrorCode::NotAMember
    );
    bystanders.finish().await;
    gw.stop().await;
}

async fn blocks_and_consent_keep_users_out_of_groups(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| c.quotas.pending_requests = 3).await;
    let bystanders = Bystanders::start(&gw).await;
    let (mallory, mallory_id) = user(&gw, "mallory").await;
    let (victim, victim_id) = user(&gw, "victim").await;
    let (nora, nora_id) = user(&gw, "nora").await;
    let (friend, friend_id) = user(&gw, "friend").await;
    open_to_adds(&victim).await;
    victim.block(mallory_id.clone()).await.expect("block");

    // A blocked user reaches the blocker neither by create nor by invite.
    assert_eq!(
        code(
            mallory
                .create_group(unique("trap"), "Trap".into(), vec![victim_id.clone()])
                .await
        ),
        ErrorCode::Blocked
    );
    let g = unique("bait");
    mallory
        .create_group(g.clone(), "Bait".into(), vec![])
        .await
        .expect("create");
    assert_eq!(
        code(
            mallory
                .change_group(g.clone(), GroupChange::Invite(vec![victim_id.clone()]))
                .await
        ),
        ErrorCode::Blocked
    );
    assert!(victim.group_invitations().await.expect("none").is_empty());
    assert_quiet(&victim, Duration::from_millis(300)).await;

    // "Nobody" is never added directly, not even by a friend: invited.
    assert_eq!(
        nora.group_adds(Some(GroupAdds::Nobody)).await.expect("set"),
        GroupAdds::Nobody
    );
    friend
        .request_friend(nora_id.clone(), "hi".into())
        .await
        .expect("request");
    assert!(matches!(
        next_event(&nora).await,
        Event::FriendRequest { .. }
    ));
    nora.accept_friend(friend_id.clone()).await.expect("accept");
    let made = friend
        .create_group_with(NewGroup {
            group: unique("party"),
            name: "Party".into(),
            members: vec![nora_id.clone()],
            ..NewGroup::default()
        })
        .await
        .expect("create");
    assert_eq!(made.invited, vec![nora_id.clone()]);
    assert_eq!(made.group.member_count, 1);
    match next_event(&nora).await {
        Event::GroupInvitation { group, by, .. } => {
            assert_eq!((group, by), (made.group.id.clone(), friend_id.clone()));
        }
        other => panic!("expected an invitation, got {other:?}"),
    }

    // Invitations are bounded per invitee: an attacker cannot fill a
    // user's store (quotas.pending_requests = 3; one is the friend's).
    for _ in 0..2 {
        mallory
            .create_group_with(NewGroup {
                group: unique("spam"),
                name: "Spam".into(),
                members: vec![nora_id.clone()],
                ..NewGroup::default()
            })
            .await
            .expect("within the bound");
    }
    assert_eq!(
        code(
            mallory
                .create_group_with(NewGroup {
                    group: unique("spam"),
                    name: "Spam".into(),
                    members: vec![nora_id.clone()],
                    ..NewGroup::default()
                })
                .await
        ),
        ErrorCode::QuotaExceeded
    );
    let pending = nora.group_invitations().await.expect("list");
    assert_eq!(pending.len(), 3);
    assert_eq!(
        gw.metric("qim_quota_refusals_total{quota=\"pending_requests\"}")
            .await,
        1.0
    );
    // Declined spam frees its place; the friend's invitation is accepted.
    for invitation in pending.iter().filter(|i| i.by != friend_id) {
        nora.change_group(invitation.group.clone(), GroupChange::DeclineInvitation)
            .await
            .expect("decline");
    }
    let joined = nora
        .change_group(made.group.id.clone(), GroupChange::AcceptInvitation)
        .await
        .expect("accept");
    assert_eq!(joined.member_count, 2);
    assert!(nora.group_invitations().await.expect("list").is_empty());
    bystanders.finish().await;
    gw.stop().await;
}

async fn owning_groups_beyond_the_quota_is_refused(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| c.quotas.groups_owned = 2).await;
    let bystanders = Bystanders::start(&gw).await;
    let (mallory, mallory_id) = user(&gw, "mallory").await;
    let (other, _) = user(&gw, "other").await;
    open_to_adds(&mallory).await;
    for _ in 0..2 {
        mallory
            .create_group(unique("mine"), "Mine".into(), vec![])
            .await
            .expect("within the quota");
    }
    assert_eq!(
        code(
            mallory
                .create_group(unique("mine"), "Mine".into(), vec![])
                .await
        ),
        ErrorCode::QuotaExceeded
    );
    let theirs = unique("theirs");
    other
        .create_group(theirs.clone(), "Theirs".into(), vec![mallory_id.clone()])
        .await
        .expect("create");
    assert_eq!(
        code(
            other
                .change_group(theirs, GroupChange::SetRole(mallory_id, GroupRole::Owner))
                .await
        ),
        ErrorCode::QuotaExceeded,
        "no hand-over to a user at the quota"
    );
    // Both refusals are counted under the quota's config name.
    assert_eq!(
        gw.metric("qim_quota_refusals_total{quota=\"groups_owned\"}")
            .await,
        2.0
    );
    bystanders.finish().await;
    gw.stop().await;
}

async fn a_member_does_no_admin_work(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let bystanders = Bystanders::start(&gw).await;
    let (owner, owner_id) = user(&gw, "owner").await;
    let (mallory, mallory_id) = user(&gw, "mallory").await;
    let (eve, eve_id) = user(&gw, "eve").await;
    open_to_adds(&mallory).await;
    let g = unique("guild");
    owner
        .create_group_with(NewGroup {
            group: g.clone(),
            name: "Guild".into(),
            members: vec![mallory_id.clone()],
            join_policy: JoinPolicy::Approval,
            ..NewGroup::default()
        })
        .await
        .expect("create");
    let asked = eve
        .update_group(g.clone(), GroupChange::Join)
        .await
        .expect("ask");
    assert!(asked.requested);
    match next_event(&owner).await {
        Event::JoinRequest { group, user, .. } => {
            assert_eq!((group, user), (g.clone(), eve_id.clone()))
        }
        other => panic!("expected a join request, got {other:?}"),
    }
    for attack in [
        GroupChange::Approve(vec![eve_id.clone()]),
        GroupChange::Deny(vec![eve_id.clone()]),
        GroupChange::Ban(vec![owner_id.clone()]),
        GroupChange::Unban(vec![eve_id.clone()]),
        settings(Some(JoinPolicy::Open), None),
    ] {
        assert_eq!(
            code(mallory.change_group(g.clone(), attack.clone()).await),
            ErrorCode::PermissionDenied,
            "{attack:?}"
        );
    }
    for list in [GroupList::JoinRequests, GroupList::Banned] {
        assert_eq!(
            code(mallory.group_list(g.clone(), list, String::new(), 10).await),
            ErrorCode::PermissionDenied
        );
    }
    assert_eq!(
        code(
            eve.change_group(g.clone(), GroupChange::Approve(vec![eve_id.clone()]))
                .await
        ),
        ErrorCode::NotAMember,
        "nor does the asker approve itself"
    );
    let (requests, _) = owner
        .group_list(g.clone(), GroupList::JoinRequests, String::new(), 10)
        .await
        .expect("requests");
    assert_eq!(requests.len(), 1);
    owner
        .change_group(g.clone(), GroupChange::Approve(vec![eve_id.clone()]))
        .await
        .expect("approve");
    match next_event(&eve).await {
        Event::JoinAnswer { group, accepted } => assert_eq!((group, accepted), (g.clone(), true)),
        other => panic!("expected an answer, got {other:?}"),
    }
    owner
        .send_group(g.clone(), "welcome".into())
        .await
        .expect("send");
    assert_eq!(text(&take(&eve, 1).await[0]), "welcome");
    bystanders.finish().await;
    gw.stop().await;
}

on_both_backends!(
    invite_only_and_rejoins_are_refused,
    the_member_limit_holds_on_every_path,
    a_private_group_shows_nothing_to_outsiders,
    blocks_and_consent_keep_users_out_of_groups,
    owning_groups_beyond_the_quota_is_refused,
    a_member_does_no_admin_work,
);
