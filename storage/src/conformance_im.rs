//! Checks every backend of the IM traits ([`ConversationStore`](crate::ConversationStore),
//! [`GroupStore`](crate::GroupStore), [`ContactStore`](crate::ContactStore),
//! [`ScheduleStore`](crate::ScheduleStore), [`RevocationStore`](crate::RevocationStore)) must pass, run
//! unchanged against each one with [`im_conformance_tests!`](crate::im_conformance_tests).
//! Names carry a random suffix, so a shared database needs no cleanup.

use async_trait::async_trait;
use bytes::Bytes;
use qim_proto::v1;

use crate::OpError;
use crate::Stores;
use crate::conformance::unique;
use crate::contacts::{ContactOp, RequestLimits};
use crate::conversations::{ConversationOp, HistoryAnchor, Post, group, group_log, user};
use crate::groups::{GroupLimits, GroupOp};
use crate::schedule::{Fired, Verdict};

/// Opens the backend under test.
#[async_trait]
pub trait ImBackend: Send + Sync {
    /// Opens (or reopens) the stores.
    async fn open_im(&self) -> Stores;
}

pub(crate) fn post(from: &str, to: &str, inboxes: &[&str], body: &str) -> Post {
    Post {
        sender: from.to_owned(),
        sender_device: "d".into(),
        client_msg_id: unique("cm"),
        to: user(to),
        kind: "text".into(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        server_time_ms: qim_proto::now_ms(),
        inboxes: inboxes.iter().map(|s| (*s).to_owned()).collect(),
        ..Post::default()
    }
}

/// A post of `from` to group `g` (the store resolves the inboxes).
pub(crate) fn group_post(from: &str, g: &str) -> Post {
    Post {
        to: group(g),
        inboxes: Vec::new(),
        ..post(from, "unused", &[], "hi")
    }
}

/// Copies share a msg_id; conversations count unread exactly; mark_read
/// recounts, appends one event, and never moves back.
pub async fn posts_update_conversations_and_mark_read_is_exact(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b) = (unique("a"), unique("b"));
    let mut seqs = Vec::new();
    for i in 0..4 {
        let out = s
            .conversations
            .post(vec![post(&a, &b, &[&b, &a], &format!("m{i}"))])
            .await
            .expect("post");
        let posted = out.into_iter().next().expect("one").expect("posted");
        assert_eq!(posted.copies.len(), 2);
        assert_eq!(
            posted.copies[0].message.msg_id,
            posted.copies[1].message.msg_id
        );
        seqs.push(posted.copies[0].seq);
    }
    let conv = s
        .conversations
        .conversation(&b, &user(&a))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!((conv.unread, conv.last_seq), (4, seqs[3]));
    let mine = s
        .conversations
        .conversation(&a, &user(&b))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(mine.unread, 0, "own messages are never unread");
    let op = |up_to| ConversationOp::MarkRead {
        user: b.clone(),
        conversation: user(&a),
        up_to_seq: up_to,
        now_ms: 1,
    };
    let applied = s.conversations.apply(op(seqs[1])).await.expect("mark");
    assert_eq!(applied.conversation.as_ref().map(|c| c.unread), Some(2));
    // The read state for b's other devices, in b's inbox, and a read
    // receipt for a (whose message was read), in a's inbox.
    assert_eq!(applied.events.len(), 2, "read event and read receipt");
    assert_eq!(applied.events[0].inbox, b);
    assert_eq!(applied.events[1].inbox, a);
    assert_eq!(
        s.messages.inbox_head(&a).await.expect("head"),
        applied.events[1].seq
    );
    assert_eq!(
        s.messages.inbox_head(&b).await.expect("head"),
        applied.event_seq
    );
    let back = s.conversations.apply(op(seqs[0])).await.expect("mark");
    assert_eq!(
        back.conversation.map(|c| (c.read_seq, c.unread)),
        Some((seqs[1], 2))
    );
    assert!(back.events.is_empty(), "no change, no event");
    let page = s
        .conversations
        .conversations(&b, &[], 10)
        .await
        .expect("list");
    assert_eq!(page.conversations.len(), 1);
}

/// A recall removes an unread copy from the count; only the sender
/// recalls, once, within the window.
pub async fn recall_is_exact_and_guarded(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b) = (unique("a"), unique("b"));
    let out = s
        .conversations
        .post(vec![post(&a, &b, &[&b], "x"), post(&a, &b, &[&b], "y")])
        .await
        .expect("post");
    let first = out[0].as_ref().expect("posted").copies[0].clone();
    let recall = |who: &str, window| ConversationOp::Recall {
        user: who.to_owned(),
        msg_id: first.message.msg_id.clone(),
        now_ms: first.message.server_time_ms + 10,
        window_ms: window,
    };
    assert!(matches!(
        s.conversations.apply(recall(&b, 1000)).await,
        Err(OpError::NotSender)
    ));
    assert!(matches!(
        s.conversations.apply(recall(&a, 5)).await,
        Err(OpError::WindowPassed)
    ));
    s.conversations
        .apply(recall(&a, 1000))
        .await
        .expect("recall");
    assert!(matches!(
        s.conversations.apply(recall(&a, 1000)).await,
        Err(OpError::Recalled)
    ));
    let conv = s
        .conversations
        .conversation(&b, &user(&a))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(conv.unread, 1);
    let stored = s.messages.read_inbox(&b, 0, 10).await.expect("read");
    assert!(stored[0].message.recalled && stored[0].message.body.is_empty());
    let history = s
        .conversations
        .history(&b, &user(&a), HistoryAnchor::End, false, 10)
        .await
        .expect("history");
    assert_eq!(history.entries.len(), 2);
}

/// Group posts resolve members in the same write: refusals are typed;
/// past the threshold, posts go to the group log.
pub async fn groups_check_members_and_switch_to_read_diffusion(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (g, owner, m1, m2, stranger) = (
        unique("g"),
        unique("o"),
        unique("m1"),
        unique("m2"),
        unique("x"),
    );
    let create = GroupOp::Create {
        name: "g".into(),
        members: vec![m1.clone()],
        invited: Vec::new(),
        join_policy: v1::JoinPolicy::InviteOnly,
        max_members: 0,
        public: false,
        now_ms: 1,
    };
    let limits = GroupLimits::with_threshold(2);
    let info = s
        .groups
        .group_apply(&g, &owner, create, limits)
        .await
        .expect("create")
        .info;
    assert!(!info.read_diffusion);
    let to_group = |from: &str| group_post(from, &g);
    let out = s
        .conversations
        .post(vec![to_group(&owner), to_group(&stranger)])
        .await
        .expect("post");
    assert_eq!(
        out[0].as_ref().expect("member").copies.len(),
        2,
        "write diffusion: a copy per member"
    );
    assert!(matches!(out[1], Err(OpError::NotAMember)));
    let add = GroupOp::Invite {
        add: vec![m2.clone()],
        invite: Vec::new(),
    };
    let info = s
        .groups
        .group_apply(&g, &owner, add, limits)
        .await
        .expect("invite")
        .info;
    assert!(info.read_diffusion && info.member_count == 3);
    let out = s
        .conversations
        .post(vec![to_group(&m2)])
        .await
        .expect("post");
    let copies = &out[0].as_ref().expect("posted").copies;
    assert_eq!(
        (copies.len(), copies[0].inbox.clone(), copies[0].seq),
        (1, group_log(&g), 1)
    );
    s.groups
        .group_apply(&g, &owner, GroupOp::MuteMember(m2.clone(), true), limits)
        .await
        .expect("mute");
    let out = s
        .conversations
        .post(vec![to_group(&m2)])
        .await
        .expect("post");
    assert!(matches!(out[0], Err(OpError::Muted)));
    assert_eq!(
        s.groups.members(&g, "", 10).await.expect("members").len(),
        3
    );
}

/// Contacts: a request and its acceptance make friends on both sides; a
/// block is one-way.
pub async fn contacts_requests_and_blocks(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b) = (unique("a"), unique("b"));
    let req = ContactOp::Request {
        other: b.clone(),
        message: "hi".into(),
        limits: RequestLimits::default(),
    };
    let applied = s.contacts.contact_apply(&a, req, 1).await.expect("request");
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].inbox, b);
    s.contacts
        .contact_apply(&b, ContactOp::Accept(a.clone()), 2)
        .await
        .expect("accept");
    assert!(s.contacts.relation(&a, &b).await.expect("rel").friends);
    assert!(s.contacts.relation(&b, &a).await.expect("rel").friends);
    s.contacts
        .contact_apply(&b, ContactOp::Block(a.clone()), 3)
        .await
        .expect("block");
    let r = s.contacts.relation(&a, &b).await.expect("rel");
    assert!(r.blocked && !r.friends);
    assert!(
        !s.contacts.relation(&b, &a).await.expect("rel").blocked,
        "one-way"
    );
}

/// The verdict of a fire that posts (a refused post is told as
/// `PERMISSION_DENIED`).
pub(crate) fn post_it() -> Verdict {
    Verdict::Post(|e| (v1::ErrorCode::PermissionDenied, e.to_string()))
}

/// A scheduled send fires once; a cancelled one never fires.
pub async fn schedules_fire_once_and_cancel_wins(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b) = (unique("a"), unique("b"));
    let entry = |id: &str, at| v1::ScheduledSend {
        id: id.to_owned(),
        deliver_at_ms: at,
        sender: a.clone(),
        sender_device: "d".into(),
        send: Some(v1::Send {
            client_msg_id: unique("cm"),
            to: Some(user(&b)),
            body: Bytes::from_static(b"later"),
            kind: "text".into(),
            ..Default::default()
        }),
        inboxes: vec![b.clone()],
    };
    let (keep, drop) = (unique("keep"), unique("drop"));
    s.schedules
        .schedule(entry(&keep, 1_000), 100)
        .await
        .expect("schedule");
    s.schedules
        .schedule(entry(&drop, 1_000), 100)
        .await
        .expect("schedule");
    assert!(
        matches!(s.schedules.cancel(&b, &drop).await, Err(OpError::NotFound)),
        "only the sender cancels"
    );
    s.schedules.cancel(&a, &drop).await.expect("cancel");
    assert!(
        s.schedules
            .fire(&drop, 2_000, post_it())
            .await
            .expect("fire")
            .is_none()
    );
    let Some(Fired::Posted(fired)) = s
        .schedules
        .fire(&keep, 2_000, post_it())
        .await
        .expect("fire")
    else {
        panic!("pending, and posted");
    };
    assert_eq!(fired.copies[0].inbox, b);
    assert!(
        s.schedules
            .fire(&keep, 2_000, post_it())
            .await
            .expect("fire")
            .is_none(),
        "once"
    );
    assert_eq!(s.messages.inbox_head(&b).await.expect("head"), 1);
}

/// A delivery receipt is appended once per (recipient, msg_id), however
/// many devices acknowledge the message.
pub async fn delivery_receipts_are_appended_once(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b) = (unique("a"), unique("b"));
    let posted = s
        .conversations
        .post(vec![post(&a, &b, &[&b], "hi")])
        .await
        .expect("post")
        .remove(0)
        .expect("posted");
    let msg_id = posted.copies[0].message.msg_id.clone();
    let delivered = || ConversationOp::Delivered {
        recipient: b.clone(),
        sender: a.clone(),
        msg_id: msg_id.clone(),
        sent_ms: 1,
        now_ms: qim_proto::now_ms(),
    };
    let first = s.conversations.apply(delivered()).await.expect("receipt");
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].inbox, a);
    let again = s.conversations.apply(delivered()).await.expect("receipt");
    assert!(again.events.is_empty(), "a second device adds no receipt");
    assert_eq!(s.messages.inbox_head(&a).await.expect("head"), 1);
}

/// A `client_msg_id` posted again with the same recipient and body is a
/// duplicate (the first copies back); with another recipient or body it is
/// a conflict that stores nothing, whether the first post was stored
/// earlier or is in the same batch.
pub async fn a_reused_client_msg_id_with_another_message_is_a_conflict(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let first = post(&a, &b, &[&b], "first");
    let again = |to: &str, body: &str| Post {
        client_msg_id: first.client_msg_id.clone(),
        ..post(&a, to, &[to], body)
    };
    let out = s
        .conversations
        .post(vec![first.clone(), again(&b, "other body")])
        .await
        .expect("post");
    let stored = out[0].as_ref().expect("first stored").copies[0].clone();
    assert!(
        matches!(out[1], Err(OpError::Conflict)),
        "same batch, other body: {:?}",
        out[1]
    );
    let out = s
        .conversations
        .post(vec![again(&b, "first"), again(&c, "first"), again(&b, "x")])
        .await
        .expect("post");
    let resend = out[0].as_ref().expect("a resend is a duplicate");
    assert!(resend.duplicate);
    assert_eq!(
        (resend.copies[0].seq, &resend.copies[0].message.msg_id),
        (stored.seq, &stored.message.msg_id)
    );
    assert!(matches!(out[1], Err(OpError::Conflict)), "other recipient");
    assert!(matches!(out[2], Err(OpError::Conflict)), "other body");
    assert_eq!(s.messages.inbox_head(&b).await.expect("head"), stored.seq);
    assert_eq!(
        s.messages.inbox_head(&c).await.expect("head"),
        0,
        "a conflict stores nothing"
    );
}

/// A post that claims to be a first attempt but is not (a client's flag
/// wrong, or a liar's) is still stored once: the resend gets the first
/// copies back, another body is a conflict, and no inbox gains a message.
pub async fn a_wrong_first_attempt_flag_stores_nothing_twice(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let first = Post {
        first_attempt: true,
        ..post(&a, &b, &[&b], "first")
    };
    let again = |to: &str, body: &str| Post {
        client_msg_id: first.client_msg_id.clone(),
        first_attempt: true,
        ..post(&a, to, &[to], body)
    };
    let out = s
        .conversations
        .post(vec![first.clone()])
        .await
        .expect("post");
    let stored = out[0].as_ref().expect("first stored").copies[0].clone();
    assert!(!out[0].as_ref().expect("first stored").duplicate);
    let out = s
        .conversations
        .post(vec![again(&b, "first"), again(&c, "first")])
        .await
        .expect("post");
    let resend = out[0].as_ref().expect("a resend is a duplicate");
    assert!(resend.duplicate);
    assert_eq!(
        (resend.copies[0].seq, &resend.copies[0].message.msg_id),
        (stored.seq, &stored.message.msg_id)
    );
    assert!(matches!(out[1], Err(OpError::Conflict)), "other recipient");
    let in_b = s.messages.read_inbox(&b, 0, 100).await.expect("read b");
    assert_eq!(in_b.len(), 1, "stored once: {in_b:?}");
    let in_c = s.messages.read_inbox(&c, 0, 100).await.expect("read c");
    assert!(in_c.is_empty(), "a conflict stores nothing: {in_c:?}");
}

/// Stored bytes are counted per user and UTC day, charges past the limit
/// are refused and add nothing, and the counts survive a reopen.
pub async fn stored_bytes_are_counted_per_user_and_day(backend: &dyn ImBackend) {
    use crate::quota::Charged;
    let (a, b) = (unique("a"), unique("b"));
    let day = crate::quota::utc_day(qim_proto::now_ms());
    {
        let s = backend.open_im().await;
        let q = &s.quotas;
        assert_eq!(q.stored_bytes(&a, day).await.expect("read"), 0);
        let charge = |user: &str, day: u32, bytes: u64| {
            let q = std::sync::Arc::clone(q);
            let user = user.to_owned();
            async move { q.charge_stored_bytes(&user, day, bytes, 1_000).await }
        };
        assert_eq!(
            charge(&a, day, 600).await.expect("charge"),
            Charged::Taken { used: 600 }
        );
        assert_eq!(
            charge(&a, day, 500).await.expect("charge"),
            Charged::Refused { used: 600 }
        );
        assert_eq!(
            charge(&a, day, 400).await.expect("charge"),
            Charged::Taken { used: 1_000 }
        );
        assert_eq!(
            charge(&a, day + 1, 900).await.expect("charge"),
            Charged::Taken { used: 900 },
            "a new day counts from zero"
        );
        assert_eq!(
            charge(&b, day, 1).await.expect("charge"),
            Charged::Taken { used: 1 },
            "per user"
        );
        // Concurrent charges: exactly as many fit as the limit allows.
        let c = unique("c");
        let all = futures_util::future::join_all((0..20).map(|_| charge(&c, day, 100))).await;
        let taken = all
            .iter()
            .filter(|r| matches!(r, Ok(Charged::Taken { .. })))
            .count();
        assert_eq!(taken, 10);
    }
    let s = backend.open_im().await;
    assert_eq!(s.quotas.stored_bytes(&a, day).await.expect("read"), 1_000);
    assert_eq!(s.quotas.stored_bytes(&a, day + 1).await.expect("read"), 900);
}

/// A user's token revocation mark starts at 0, only rises, is seen by
/// another instance of the store at once, and survives a reopen.
pub async fn token_revocations_only_rise_and_survive_reopen(backend: &dyn ImBackend) {
    let (user, other) = (unique("rv"), unique("rv"));
    {
        let s = backend.open_im().await;
        let r = &s.revocations;
        assert_eq!(r.tokens_revoked_before(&user).await.expect("read"), 0);
        assert_eq!(r.revoke_tokens(&user, 1_000).await.expect("revoke"), 1_000);
        assert_eq!(
            r.revoke_tokens(&user, 500).await.expect("revoke"),
            1_000,
            "an earlier time does not lower the mark"
        );
        assert_eq!(r.revoke_tokens(&user, 2_000).await.expect("revoke"), 2_000);
        assert_eq!(r.tokens_revoked_before(&other).await.expect("read"), 0);
        assert!(r.revoke_tokens("bad id", 1).await.is_err());
    }
    let s = backend.open_im().await;
    assert_eq!(
        s.revocations
            .tokens_revoked_before(&user)
            .await
            .expect("read"),
        2_000
    );
}

/// Registration is idempotent, an account's disabled flag is durable
/// across a reopen, and accounts list in id order from a cursor.
pub async fn accounts_register_disable_and_list_in_order(backend: &dyn ImBackend) {
    let u = unique("acct");
    let id = |s: &str| format!("{u}{s}");
    {
        let s = backend.open_im().await;
        let a = &s.accounts;
        assert_eq!(a.account(&id("a")).await.expect("read"), None);
        let first = vec![id("c"), id("a"), id("b")];
        assert_eq!(a.register(&first, 1_000).await.expect("register"), 3);
        assert_eq!(
            a.register(&[id("a"), id("d")], 2_000).await.expect("again"),
            1,
            "a registered user is left as it is"
        );
        let acct = a
            .account(&id("a"))
            .await
            .expect("read")
            .expect("registered");
        assert_eq!((acct.registered_ms, acct.disabled), (1_000, false));
        let off = a.set_disabled(&id("b"), true).await.expect("disable");
        assert_eq!(off.map(|x| x.disabled), Some(true));
        assert_eq!(
            a.set_disabled(&id("zz"), true).await.expect("unknown"),
            None
        );
        assert!(a.register(&["bad id".to_owned()], 1).await.is_err());
        assert_eq!(
            a.accounts_after(&u, 2).await.expect("list"),
            vec![id("a"), id("b")]
        );
        assert_eq!(
            a.accounts_after(&id("b"), 2).await.expect("list"),
            vec![id("c"), id("d")]
        );
    }
    let s = backend.open_im().await;
    let b = s
        .accounts
        .account(&id("b"))
        .await
        .expect("read")
        .expect("registered");
    assert!(b.disabled, "the flag survives a reopen");
    let b = s
        .accounts
        .set_disabled(&id("b"), false)
        .await
        .expect("enable");
    assert_eq!(b.map(|x| x.disabled), Some(false));
}

/// Runs every IM check against a backend: `im_conformance_tests!(MyBackend::new())`.
#[macro_export]
macro_rules! im_conformance_tests {
    ($backend:expr) => {
        $crate::im_conformance_tests!(@each $backend;
            conformance_im::posts_update_conversations_and_mark_read_is_exact,
            conformance_im::recall_is_exact_and_guarded,
            conformance_im::groups_check_members_and_switch_to_read_diffusion,
            conformance_im::contacts_requests_and_blocks,
            conformance_im::schedules_fire_once_and_cancel_wins,
            conformance_im::delivery_receipts_are_appended_once,
            conformance_im::a_reused_client_msg_id_with_another_message_is_a_conflict,
            conformance_im::a_wrong_first_attempt_flag_stores_nothing_twice,
            conformance_im::stored_bytes_are_counted_per_user_and_day,
            conformance_groups::groups_admit_by_policy_and_approval,
            conformance_groups::groups_bans_survive_leave_and_block_every_path,
            conformance_groups::groups_limit_members_and_invitations_on_every_path,
            conformance_groups::groups_invitations_are_accepted_declined_and_bounded,
            conformance_groups::groups_owned_are_limited,
            conformance_groups::group_adds_setting_is_durable,
            conformance_contacts::friend_requests_follow_the_rules,
            conformance_contacts::blocks_drop_requests_and_keep_blockers_out_of_groups,
            conformance_contacts::schedules_are_bounded_and_refusals_are_told,
            conformance_im::token_revocations_only_rise_and_survive_reopen,
            conformance_im::accounts_register_disable_and_list_in_order,
            conformance_notify::push_tokens_are_per_device_bounded_and_move,
            conformance_notify::push_settings_are_kept_and_bounded,
            conformance_notify::push_claims_are_won_once,
            conformance_media::media_records_follow_uploads_and_references,
            conformance_media_gc::blobs_are_collected_only_when_free,
            conformance_media_gc::copies_carry_blobs_until_recalled_or_deleted,
            conformance_deletion::a_deleted_user_leaves_nothing_behind,
        );
    };
    (@each $backend:expr; $($module:ident :: $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend;
                $crate::$module::$check(&backend).await;
            }
        )*
    };
}
