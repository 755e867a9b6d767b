//! The group trust rules every backend keeps (join policies, join
//! requests, invitations, bans, member limits, owned groups, the
//! group-adds setting), run by [`im_conformance_tests!`](crate::im_conformance_tests).

use qim_proto::v1;

use crate::OpError;
use crate::StoreError;
use crate::Stores;
use crate::conformance::unique;
use crate::conformance_im::ImBackend;
use crate::groups::{GroupApplied, GroupLimits, GroupOp, List};

/// Small limits, so each is reached in a few steps.
const LIMITS: GroupLimits = GroupLimits {
    threshold: 100,
    max_members: 5,
    groups_owned: 2,
    invitations_per_user: 2,
    join_requests: 2,
};

fn create(members: &[&str], invited: &[&str], policy: v1::JoinPolicy, max: u32) -> GroupOp {
    let owned = |users: &[&str]| users.iter().map(|u| (*u).to_owned()).collect();
    GroupOp::Create {
        name: "g".into(),
        members: owned(members),
        invited: owned(invited),
        join_policy: policy,
        max_members: max,
        public: false,
        now_ms: 1,
    }
}

fn users(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

fn policy(p: v1::JoinPolicy) -> GroupOp {
    GroupOp::Settings(v1::GroupSettings {
        join_policy: Some(p as i32),
        ..Default::default()
    })
}

fn max_members(n: u32) -> GroupOp {
    GroupOp::Settings(v1::GroupSettings {
        max_members: Some(n),
        ..Default::default()
    })
}

async fn apply(s: &Stores, g: &str, by: &str, op: GroupOp) -> Result<GroupApplied, OpError> {
    s.groups.group_apply(g, by, op, LIMITS).await
}

async fn is_member(s: &Stores, g: &str, user: &str) -> bool {
    s.groups.member(g, user).await.expect("member").is_some()
}

async fn listed(s: &Stores, g: &str, list: List) -> Vec<String> {
    s.groups
        .listed(g, list, "", 100)
        .await
        .expect("listed")
        .into_iter()
        .map(|l| l.user)
        .collect()
}

/// Invite-only refuses joins; open admits; approval makes a request that
/// reaches the admins and that only an admin answers.
pub async fn groups_admit_by_policy_and_approval(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (g, owner, m, x, y) = (
        unique("g"),
        unique("o"),
        unique("m"),
        unique("x"),
        unique("y"),
    );
    apply(
        &s,
        &g,
        &owner,
        create(&[&m], &[], v1::JoinPolicy::InviteOnly, 0),
    )
    .await
    .expect("create");
    let refused = apply(&s, &g, &x, GroupOp::Join).await;
    assert!(matches!(refused, Err(OpError::InviteOnly)), "{refused:?}");
    assert!(!is_member(&s, &g, &x).await);
    let refused = apply(&s, &g, &m, policy(v1::JoinPolicy::Open)).await;
    assert!(
        matches!(refused, Err(OpError::NotAllowed)),
        "a member sets no policy"
    );

    apply(&s, &g, &owner, policy(v1::JoinPolicy::Open))
        .await
        .expect("open");
    let joined = apply(&s, &g, &x, GroupOp::Join).await.expect("join");
    assert_eq!(joined.added, [x.as_str()]);

    apply(&s, &g, &owner, policy(v1::JoinPolicy::Approval))
        .await
        .expect("approval");
    let asked = apply(&s, &g, &y, GroupOp::Join).await.expect("ask");
    assert!(asked.requested && asked.added.is_empty());
    assert!(!is_member(&s, &g, &y).await);
    let to: Vec<&str> = asked.events.iter().map(|e| e.inbox.as_str()).collect();
    assert_eq!(to, [owner.as_str()], "the request reaches the admins");
    assert!(matches!(
        asked.events[0].message.event.as_ref().and_then(|e| e.kind.as_ref()),
        Some(v1::inbox_event::Kind::JoinRequest(r)) if r.user == y
    ));
    assert_eq!(listed(&s, &g, List::Requested).await, [y.as_str()]);
    let refused = apply(&s, &g, &m, GroupOp::Approve(users(&[&y]))).await;
    assert!(
        matches!(refused, Err(OpError::NotAllowed)),
        "members do not approve"
    );
    let approved = apply(&s, &g, &owner, GroupOp::Approve(users(&[&y])))
        .await
        .expect("approve");
    assert_eq!(approved.added, [y.as_str()]);
    assert_eq!(approved.events[0].inbox, y, "the asker hears the answer");
    assert!(listed(&s, &g, List::Requested).await.is_empty());

    let z = unique("z");
    apply(&s, &g, &z, GroupOp::Join).await.expect("ask");
    let denied = apply(&s, &g, &owner, GroupOp::Deny(users(&[&z])))
        .await
        .expect("deny");
    assert!(denied.added.is_empty() && !is_member(&s, &g, &z).await);
    assert!(matches!(
        denied.events[0].message.event.as_ref().and_then(|e| e.kind.as_ref()),
        Some(v1::inbox_event::Kind::JoinAnswer(a)) if !a.accepted
    ));
}

/// A ban removes the member, and the banned user cannot join, ask, be
/// added or invited, or accept an old invitation, until unbanned.
pub async fn groups_bans_survive_leave_and_block_every_path(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (g, owner, m, v) = (unique("g"), unique("o"), unique("m"), unique("v"));
    apply(
        &s,
        &g,
        &owner,
        create(&[&m], &[&v], v1::JoinPolicy::Open, 0),
    )
    .await
    .expect("create");
    let refused = apply(&s, &g, &m, GroupOp::Ban(users(&[&owner]))).await;
    assert!(
        matches!(refused, Err(OpError::NotAllowed)),
        "members do not ban"
    );
    let banned = apply(&s, &g, &owner, GroupOp::Ban(users(&[&m, &v])))
        .await
        .expect("ban");
    assert_eq!(banned.removed, [m.as_str()]);
    assert!(!is_member(&s, &g, &m).await);
    assert_eq!(listed(&s, &g, List::Banned).await.len(), 2);
    let refused = apply(&s, &g, &m, GroupOp::Join).await;
    assert!(matches!(refused, Err(OpError::Banned)), "{refused:?}");
    let refused = apply(&s, &g, &v, GroupOp::AcceptInvitation).await;
    assert!(matches!(refused, Err(OpError::Banned)), "{refused:?}");
    let add = GroupOp::Invite {
        add: users(&[&m]),
        invite: Vec::new(),
    };
    assert!(matches!(
        apply(&s, &g, &owner, add).await,
        Err(OpError::Banned)
    ));
    let invite = GroupOp::Invite {
        add: Vec::new(),
        invite: users(&[&m]),
    };
    assert!(matches!(
        apply(&s, &g, &owner, invite).await,
        Err(OpError::Banned)
    ));
    apply(&s, &g, &owner, policy(v1::JoinPolicy::Approval))
        .await
        .expect("approval");
    assert!(matches!(
        apply(&s, &g, &m, GroupOp::Join).await,
        Err(OpError::Banned)
    ));
    apply(&s, &g, &owner, GroupOp::Unban(users(&[&m])))
        .await
        .expect("unban");
    let asked = apply(&s, &g, &m, GroupOp::Join).await.expect("ask");
    assert!(asked.requested);
}

/// Members and invitations together stay within the group's limit on
/// every path that adds one; the limit is at most the server's and never
/// below what the group has; join requests per group are bounded.
pub async fn groups_limit_members_and_invitations_on_every_path(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (g, owner, a, b, c, d, e) = (
        unique("g"),
        unique("o"),
        unique("a"),
        unique("b"),
        unique("c"),
        unique("d"),
        unique("e"),
    );
    let refused = apply(&s, &g, &owner, create(&[], &[], v1::JoinPolicy::Open, 6)).await;
    assert!(
        matches!(refused, Err(OpError::Store(StoreError::Invalid(_)))),
        "above the server's limit"
    );
    let refused = apply(
        &s,
        &g,
        &owner,
        create(&[&a, &b, &c], &[], v1::JoinPolicy::Open, 3),
    )
    .await;
    assert!(matches!(refused, Err(OpError::GroupFull)), "{refused:?}");
    let made = apply(
        &s,
        &g,
        &owner,
        create(&[&a], &[&b], v1::JoinPolicy::Open, 3),
    )
    .await
    .expect("create");
    assert_eq!(
        (made.info.member_count, made.invited.clone()),
        (2, vec![b.clone()])
    );
    for op in [
        GroupOp::Invite {
            add: users(&[&c]),
            invite: Vec::new(),
        },
        GroupOp::Invite {
            add: Vec::new(),
            invite: users(&[&c]),
        },
    ] {
        let refused = apply(&s, &g, &owner, op).await;
        assert!(matches!(refused, Err(OpError::GroupFull)), "{refused:?}");
    }
    let refused = apply(&s, &g, &c, GroupOp::Join).await;
    assert!(matches!(refused, Err(OpError::GroupFull)), "{refused:?}");
    let accepted = apply(&s, &g, &b, GroupOp::AcceptInvitation)
        .await
        .expect("an invitation holds its place");
    assert_eq!(accepted.info.member_count, 3);
    let refused = apply(&s, &g, &owner, max_members(2)).await;
    assert!(matches!(
        refused,
        Err(OpError::Store(StoreError::Invalid(_)))
    ));

    apply(&s, &g, &owner, max_members(0))
        .await
        .expect("the server's");
    apply(&s, &g, &owner, policy(v1::JoinPolicy::Approval))
        .await
        .expect("approval");
    apply(&s, &g, &c, GroupOp::Join).await.expect("ask");
    apply(&s, &g, &d, GroupOp::Join).await.expect("ask");
    let refused = apply(&s, &g, &e, GroupOp::Join).await;
    assert!(
        matches!(refused, Err(OpError::QuotaExceeded(_))),
        "requests are bounded"
    );
    apply(&s, &g, &owner, max_members(4)).await.expect("lower");
    let refused = apply(&s, &g, &owner, GroupOp::Approve(users(&[&c, &d]))).await;
    assert!(matches!(refused, Err(OpError::GroupFull)), "{refused:?}");
    assert!(!is_member(&s, &g, &c).await && !is_member(&s, &g, &d).await);
    apply(&s, &g, &owner, GroupOp::Approve(users(&[&c])))
        .await
        .expect("one fits");
}

/// An invitation waits for the invitee: listed for them, accepted or
/// declined once; an invitee holds a bounded number at once.
pub async fn groups_invitations_are_accepted_declined_and_bounded(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (g1, g2, g3, owner, v) = (
        unique("g"),
        unique("g"),
        unique("g"),
        unique("o"),
        unique("v"),
    );
    let made = apply(
        &s,
        &g1,
        &owner,
        create(&[], &[&v], v1::JoinPolicy::InviteOnly, 0),
    )
    .await
    .expect("create");
    assert_eq!(made.invited, [v.as_str()]);
    assert_eq!(made.events.len(), 1);
    assert_eq!(made.events[0].inbox, v, "the invitee is told");
    assert!(!is_member(&s, &g1, &v).await);
    assert_eq!(listed(&s, &g1, List::Invited).await, [v.as_str()]);
    let mine = s.groups.invitations(&v).await.expect("invitations");
    assert_eq!((mine.len(), mine[0].by.clone()), (1, owner.clone()));
    apply(
        &s,
        &g2,
        &owner,
        create(&[], &[&v], v1::JoinPolicy::InviteOnly, 0),
    )
    .await
    .expect("second");
    let refused = apply(
        &s,
        &g3,
        &owner,
        create(&[], &[&v], v1::JoinPolicy::InviteOnly, 0),
    )
    .await;
    assert!(
        matches!(refused, Err(OpError::QuotaExceeded(_))),
        "{refused:?}"
    );

    apply(&s, &g1, &v, GroupOp::DeclineInvitation)
        .await
        .expect("decline");
    let again = apply(&s, &g1, &v, GroupOp::DeclineInvitation).await;
    assert!(matches!(again, Err(OpError::NotFound)));
    let refused = apply(&s, &g1, &v, GroupOp::AcceptInvitation).await;
    assert!(
        matches!(refused, Err(OpError::NotFound)),
        "declined is gone"
    );
    // A join with a pending invitation accepts it, in an invite-only group.
    let joined = apply(&s, &g2, &v, GroupOp::Join).await.expect("accept");
    assert_eq!(joined.added, [v.as_str()]);
    assert!(s.groups.invitations(&v).await.expect("none").is_empty());
}

/// A user owns at most `groups_owned` groups: creating and receiving
/// ownership beyond it are refused; a dissolved group frees its place.
pub async fn groups_owned_are_limited(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (owner, other) = (unique("o"), unique("p"));
    let (g1, g2, g3, theirs) = (unique("g"), unique("g"), unique("g"), unique("g"));
    for g in [&g1, &g2] {
        apply(&s, g, &owner, create(&[], &[], v1::JoinPolicy::Open, 0))
            .await
            .expect("create");
    }
    let refused = apply(&s, &g3, &owner, create(&[], &[], v1::JoinPolicy::Open, 0)).await;
    assert!(
        matches!(refused, Err(OpError::QuotaExceeded(_))),
        "{refused:?}"
    );
    apply(
        &s,
        &theirs,
        &other,
        create(&[&owner], &[], v1::JoinPolicy::Open, 0),
    )
    .await
    .expect("theirs");
    let hand_over = GroupOp::SetRole(owner.clone(), v1::GroupRole::Owner);
    let refused = apply(&s, &theirs, &other, hand_over).await;
    assert!(
        matches!(refused, Err(OpError::QuotaExceeded(_))),
        "{refused:?}"
    );
    apply(&s, &g1, &owner, GroupOp::Dissolve)
        .await
        .expect("dissolve");
    apply(&s, &g3, &owner, create(&[], &[], v1::JoinPolicy::Open, 0))
        .await
        .expect("a place freed");
}

/// Who may add a user is unset until set, and durable.
pub async fn group_adds_setting_is_durable(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let u = unique("u");
    assert_eq!(s.groups.group_adds(&u).await.expect("read"), None);
    s.groups
        .set_group_adds(&u, v1::GroupAdds::Nobody)
        .await
        .expect("set");
    drop(s);
    let s = backend.open_im().await;
    assert_eq!(
        s.groups.group_adds(&u).await.expect("read"),
        Some(v1::GroupAdds::Nobody)
    );
}
