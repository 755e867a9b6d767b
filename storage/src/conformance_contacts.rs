//! The rules of friend requests, blocks and scheduled sends that every
//! backend must keep (run by [`im_conformance_tests!`](crate::im_conformance_tests)
//! with the other IM checks).

use bytes::Bytes;
use qim_proto::v1;

use crate::OpError;
use crate::conformance::unique;
use crate::conformance_im::{ImBackend, group_post, post_it};
use crate::contacts::{ContactOp, RequestLimits};
use crate::conversations::{group, user};
use crate::groups::{GroupLimits, GroupOp};
use crate::schedule::{Fired, Verdict};

fn request(other: &str, limits: RequestLimits) -> ContactOp {
    ContactOp::Request {
        other: other.to_owned(),
        message: "hi".into(),
        limits,
    }
}

/// One pending request per pair; no repeat within the cool-down after a
/// rejection; at most `max_pending` outgoing requests. A refused request
/// appends no event.
pub async fn friend_requests_follow_the_rules(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let c = &s.contacts;
    let (a, b) = (unique("a"), unique("b"));
    let limits = RequestLimits {
        cooldown_ms: 60_000,
        max_pending: 2,
    };
    let head = |u: String| {
        let messages = s.messages.clone();
        async move { messages.inbox_head(&u).await.expect("head") }
    };
    c.contact_apply(&a, request(&b, limits), 1_000)
        .await
        .expect("request");
    assert_eq!(head(b.clone()).await, 1);
    assert!(matches!(
        c.contact_apply(&a, request(&b, limits), 1_001).await,
        Err(OpError::Pending)
    ));
    assert_eq!(head(b.clone()).await, 1, "a duplicate makes no event");

    c.contact_apply(&b, ContactOp::Reject(a.clone()), 2_000)
        .await
        .expect("reject");
    match c.contact_apply(&a, request(&b, limits), 12_000).await {
        Err(OpError::Cooldown { retry_after_ms }) => assert_eq!(retry_after_ms, 50_000),
        other => panic!("expected a cool-down, got {other:?}"),
    }
    assert_eq!(head(b.clone()).await, 1, "a refused request makes no event");
    let listed = c.contacts(&a).await.expect("contacts");
    assert!(listed.outgoing.is_empty() && listed.friends.is_empty());
    c.contact_apply(&a, request(&b, limits), 62_001)
        .await
        .expect("after the cool-down");
    assert_eq!(head(b.clone()).await, 2);

    // The quota counts outgoing requests that wait (b's is one).
    let (c1, c2) = (unique("c1"), unique("c2"));
    c.contact_apply(&a, request(&c1, limits), 70_000)
        .await
        .expect("second pending");
    assert!(matches!(
        c.contact_apply(&a, request(&c2, limits), 70_001).await,
        Err(OpError::QuotaExceeded(_))
    ));
    assert_eq!(head(c2.clone()).await, 0);
    c.contact_apply(&c1, ContactOp::Accept(a.clone()), 70_002)
        .await
        .expect("accept");
    c.contact_apply(&a, request(&c2, limits), 70_003)
        .await
        .expect("an answer frees a place");
    let listed = c.contacts(&a).await.expect("contacts");
    assert_eq!(listed.friends, vec![c1.clone()]);
    assert_eq!(listed.outgoing.len(), 2);
}

/// A block drops pending requests both ways, refuses the blocked user's
/// requests, is indexed both ways, and keeps the blocked user's group
/// posts out of the blocker's inbox.
pub async fn blocks_drop_requests_and_keep_blockers_out_of_groups(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let c = &s.contacts;
    let (a, b, x) = (unique("a"), unique("b"), unique("x"));
    let limits = RequestLimits {
        cooldown_ms: 60_000,
        max_pending: 1,
    };
    c.contact_apply(&a, request(&b, limits), 1)
        .await
        .expect("request");
    c.contact_apply(&b, request(&x, RequestLimits::default()), 1)
        .await
        .expect("b asks x");
    c.contact_apply(&x, request(&b, RequestLimits::default()), 1)
        .await
        .expect("x's request accepts b's");
    c.contact_apply(&b, ContactOp::Block(a.clone()), 2)
        .await
        .expect("block");
    let (la, lb) = (
        c.contacts(&a).await.expect("a"),
        c.contacts(&b).await.expect("b"),
    );
    assert!(la.outgoing.is_empty() && lb.incoming.is_empty());
    assert_eq!(lb.blocked, vec![a.clone()]);
    assert_eq!(c.blocked(&b).await.expect("blocked"), vec![a.clone()]);
    assert_eq!(c.blockers(&a).await.expect("blockers"), vec![b.clone()]);
    let head_b = s.messages.inbox_head(&b).await.expect("head");
    assert!(matches!(
        c.contact_apply(&a, request(&b, limits), 3).await,
        Err(OpError::Blocked)
    ));
    assert_eq!(
        s.messages.inbox_head(&b).await.expect("head"),
        head_b,
        "no request event after a block"
    );
    // The dropped request no longer counts toward a's quota of one.
    c.contact_apply(&a, request(&x, limits), 4)
        .await
        .expect("a's place was freed");

    // A write-diffusion group: b gets no copy of a's posts.
    let g = unique("g");
    let create = GroupOp::Create {
        name: "g".into(),
        members: vec![b.clone(), x.clone()],
        invited: Vec::new(),
        join_policy: v1::JoinPolicy::InviteOnly,
        max_members: 0,
        public: false,
        now_ms: 5,
    };
    s.groups
        .group_apply(&g, &a, create, GroupLimits::with_threshold(100))
        .await
        .expect("create");
    let out = s
        .conversations
        .post(vec![group_post(&a, &g), group_post(&x, &g)])
        .await
        .expect("post");
    let inboxes = |i: usize| -> Vec<String> {
        let posted = out[i].as_ref().expect("posted");
        let mut v: Vec<String> = posted.copies.iter().map(|c| c.inbox.clone()).collect();
        v.sort();
        v
    };
    let mut expected = vec![a.clone(), x.clone()];
    expected.sort();
    assert_eq!(inboxes(0), expected, "the blocker gets no copy");
    assert_eq!(inboxes(1).len(), 3, "others' posts reach everyone");

    c.contact_apply(&b, ContactOp::Unblock(a.clone()), 6)
        .await
        .expect("unblock");
    assert!(c.blockers(&a).await.expect("blockers").is_empty());
    assert!(c.blocked(&b).await.expect("blocked").is_empty());
}

/// At most `max_pending` entries wait per sender; a refused entry posts
/// nothing, is removed, and tells its sender with a `ScheduleRefused`
/// event, whether the caller or the post refused it.
pub async fn schedules_are_bounded_and_refusals_are_told(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b, g) = (unique("a"), unique("b"), unique("g"));
    let entry = |to: v1::Peer, inboxes: Vec<String>| v1::ScheduledSend {
        id: unique("s"),
        deliver_at_ms: 1_000,
        sender: a.clone(),
        sender_device: "d".into(),
        send: Some(v1::Send {
            client_msg_id: unique("cm"),
            to: Some(to),
            body: Bytes::from_static(b"later"),
            kind: "text".into(),
            ..Default::default()
        }),
        inboxes,
    };
    let first = entry(user(&b), vec![b.clone()]);
    let second = entry(group(&g), Vec::new());
    s.schedules.schedule(first.clone(), 2).await.expect("first");
    s.schedules
        .schedule(second.clone(), 2)
        .await
        .expect("second");
    let third = entry(user(&b), vec![b.clone()]);
    assert!(matches!(
        s.schedules.schedule(third.clone(), 2).await,
        Err(OpError::QuotaExceeded(_))
    ));
    assert_eq!(s.schedules.pending(&a, 10).await.expect("count"), 2);
    assert_eq!(s.schedules.pending(&a, 1).await.expect("count"), 1);
    assert_eq!(s.schedules.pending(&b, 10).await.expect("count"), 0);

    // Refused by the caller (say the recipient blocked the sender since).
    let refuse = Verdict::Refuse {
        code: v1::ErrorCode::Blocked,
        message: "blocked".into(),
    };
    let Some(Fired::Refused(event)) = s
        .schedules
        .fire(&first.id, 2_000, refuse.clone())
        .await
        .expect("fire")
    else {
        panic!("refused");
    };
    assert_eq!(event.inbox, a);
    let told = match event.message.event.and_then(|e| e.kind) {
        Some(v1::inbox_event::Kind::ScheduleRefused(r)) => r,
        other => panic!("expected ScheduleRefused, got {other:?}"),
    };
    assert_eq!(told.schedule_id, first.id);
    assert_eq!(told.code, v1::ErrorCode::Blocked as i32);
    assert_eq!(
        told.client_msg_id,
        first.send.as_ref().expect("send").client_msg_id
    );
    assert_eq!(s.messages.inbox_head(&b).await.expect("head"), 0);
    assert!(
        s.schedules
            .fire(&first.id, 2_000, refuse)
            .await
            .expect("fire")
            .is_none(),
        "a refused entry is gone"
    );
    // Its place is free again.
    s.schedules.schedule(third, 2).await.expect("third");

    // Refused by the post: there is no group `g`.
    let Some(Fired::Refused(event)) = s
        .schedules
        .fire(&second.id, 2_000, post_it())
        .await
        .expect("fire")
    else {
        panic!("refused by the post");
    };
    match event.message.event.and_then(|e| e.kind) {
        Some(v1::inbox_event::Kind::ScheduleRefused(r)) => {
            assert_eq!(r.code, v1::ErrorCode::PermissionDenied as i32);
            assert_eq!(r.schedule_id, second.id);
        }
        other => panic!("expected ScheduleRefused, got {other:?}"),
    }
    assert_eq!(s.messages.inbox_head(&a).await.expect("head"), 2);
    assert_eq!(
        s.schedules.pending(&a, 10).await.expect("count"),
        1,
        "fired entries no longer count: only the third waits"
    );
}
