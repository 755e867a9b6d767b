//! Deleting a user ([`Stores::delete_user`](crate::Stores::delete_user)):
//! every backend leaves nothing of the user behind, on the user's side or
//! the peers', and a repeat is harmless (run by
//! [`im_conformance_tests!`](crate::im_conformance_tests)).

use bytes::Bytes;
use qim_proto::v1;

use crate::conformance::unique;
use crate::conformance_im::{ImBackend, post};
use crate::contacts::{ContactOp, RequestLimits};
use crate::conversations::{ConversationOp, user};
use crate::groups::{GroupLimits, GroupOp, List};
use crate::media::{BlobId, PendingUpload};

fn create(members: &[&str]) -> GroupOp {
    create_with(members, v1::JoinPolicy::InviteOnly)
}

fn create_with(members: &[&str], join_policy: v1::JoinPolicy) -> GroupOp {
    GroupOp::Create {
        name: "g".into(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        invited: Vec::new(),
        join_policy,
        max_members: 0,
        public: false,
        now_ms: 1,
    }
}

fn request(other: &str) -> ContactOp {
    ContactOp::Request {
        other: other.to_owned(),
        message: "hi".into(),
        limits: RequestLimits {
            cooldown_ms: 0,
            max_pending: 10,
        },
    }
}

/// A user with records of every kind is deleted: nothing of them is left
/// (inbox, cursors, conversations on both sides, contacts both ways,
/// groups, groups' invited, join-request and ban lists, push tokens and
/// settings, schedules, pending uploads, stored bytes), owned groups are handed over or dissolved, the account is a
/// tombstone that registration does not revive, and a repeat succeeds.
pub async fn a_deleted_user_leaves_nothing_behind(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let [a, b, c, d, e, f] = ["a", "b", "c", "d", "e", "f"].map(unique);
    let (shared, alone, theirs) = (unique("g"), unique("g"), unique("g"));
    let limits = GroupLimits::with_threshold(100);
    s.accounts
        .register(&[a.clone(), b.clone()], 1)
        .await
        .expect("register");
    // Messages both ways, a read cursor, a flag, a device cursor.
    for (from, to) in [(&a, &b), (&b, &a)] {
        s.conversations
            .post(vec![post(from, to, &[to.as_str(), from.as_str()], "hello")])
            .await
            .expect("post")
            .into_iter()
            .next()
            .expect("one")
            .expect("posted");
    }
    let now = qim_proto::now_ms();
    s.conversations
        .apply(ConversationOp::MarkRead {
            user: a.clone(),
            conversation: user(&b),
            up_to_seq: 1,
            now_ms: now,
        })
        .await
        .expect("read");
    s.conversations
        .apply(ConversationOp::SetFlags {
            user: a.clone(),
            conversation: user(&b),
            pinned: Some(true),
            muted: None,
            now_ms: now,
        })
        .await
        .expect("flags");
    s.messages
        .save_cursor(&a, "phone", 2)
        .await
        .expect("cursor");
    // Contacts: a friend, a request each way, a block each way.
    let c_ = &s.contacts;
    c_.contact_apply(&a, request(&b), 1).await.expect("request");
    c_.contact_apply(&b, ContactOp::Accept(a.clone()), 2)
        .await
        .expect("accept");
    c_.contact_apply(&a, request(&c), 3)
        .await
        .expect("outgoing");
    c_.contact_apply(&d, request(&a), 4)
        .await
        .expect("incoming");
    c_.contact_apply(&a, ContactOp::Block(e.clone()), 5)
        .await
        .expect("block");
    c_.contact_apply(&f, ContactOp::Block(a.clone()), 6)
        .await
        .expect("blocked by");
    // Groups: one owned with a member, one owned alone, one of someone else.
    let g = &s.groups;
    g.group_apply(&shared, &a, create(&[&b, &c]), limits)
        .await
        .expect("shared");
    g.group_apply(
        &shared,
        &a,
        GroupOp::SetRole(c.clone(), v1::GroupRole::Admin),
        limits,
    )
    .await
    .expect("admin");
    g.group_apply(&alone, &a, create(&[]), limits)
        .await
        .expect("alone");
    g.group_apply(&theirs, &b, create(&[&a]), limits)
        .await
        .expect("theirs");
    // Lists: invited to one group, asking to join one, banned from one.
    let lists = [unique("g"), unique("g"), unique("g")];
    let [invited, asking, banned] = &lists;
    g.group_apply(invited, &b, create(&[]), limits)
        .await
        .expect("invited");
    let invite = GroupOp::Invite {
        add: Vec::new(),
        invite: vec![a.clone()],
    };
    g.group_apply(invited, &b, invite, limits)
        .await
        .expect("invite");
    let approval = create_with(&[], v1::JoinPolicy::Approval);
    g.group_apply(asking, &b, approval, limits)
        .await
        .expect("asking");
    g.group_apply(asking, &a, GroupOp::Join, limits)
        .await
        .expect("ask");
    g.group_apply(banned, &c, create(&[&a]), limits)
        .await
        .expect("banned");
    g.group_apply(banned, &c, GroupOp::Ban(vec![a.clone()]), limits)
        .await
        .expect("ban");
    for (group, list) in [
        (invited, List::Invited),
        (asking, List::Requested),
        (banned, List::Banned),
    ] {
        let on = g.listing(group, list, &a).await.expect("listing");
        assert!(on.is_some(), "{list:?} before the deletion");
    }
    // Push, schedules, stored bytes, a pending upload.
    s.notify
        .register_push_token(
            &a,
            v1::PushToken {
                device: "phone".into(),
                provider: v1::PushProvider::Apns as i32,
                token: unique("tok"),
                app_id: "com.example.chat".into(),
                sandbox: false,
                updated_ms: 1,
            },
            4,
        )
        .await
        .expect("token");
    s.notify
        .set_push_settings(
            &a,
            &v1::PushSettingsRequest {
                preview: Some(false),
                conversations: vec![v1::PreviewOverride {
                    conversation: Some(user(&b)),
                    preview: Some(true),
                }],
            },
            16,
        )
        .await
        .expect("settings");
    s.schedules
        .schedule(
            v1::ScheduledSend {
                id: unique("sch"),
                deliver_at_ms: now + 3_600_000,
                sender: a.clone(),
                sender_device: "phone".into(),
                send: Some(v1::Send {
                    client_msg_id: unique("cm"),
                    to: Some(user(&b)),
                    body: Bytes::from_static(b"later"),
                    kind: "text".into(),
                    ..Default::default()
                }),
                inboxes: vec![b.clone()],
            },
            10,
        )
        .await
        .expect("schedule");
    let day = crate::quota::utc_day(now);
    s.quotas
        .charge_stored_bytes(&a, day, 500, 10_000)
        .await
        .expect("charge");
    let blob = BlobId(rand::random());
    s.media
        .put_pending(&PendingUpload {
            user: a.clone(),
            id: blob,
            size: 10,
            media_type: "image/png".into(),
            committed: 0,
            started_ms: now,
        })
        .await
        .expect("pending");

    let deleted = s
        .delete_user(&a, limits)
        .await
        .expect("delete")
        .expect("registered");
    assert!(deleted.account.deleted);
    assert_eq!((deleted.groups_left, deleted.groups_dissolved), (2, 1));
    assert_left_nothing(
        &s,
        [&a, &b, &c, &d, &e, &f],
        [&shared, &alone, &theirs],
        day,
        &blob,
    )
    .await;
    assert_off_every_list(&s, &a, &lists).await;
    // The tombstone is read with the relation a send reads.
    let to_deleted = s.contacts.relation(&b, &a).await.expect("relation");
    assert!(to_deleted.deleted && !to_deleted.friends, "{to_deleted:?}");
    let to_live = s.contacts.relation(&a, &b).await.expect("relation");
    assert!(!to_live.deleted, "{to_live:?}");

    // A repeat finishes (here: finds nothing to do); the id stays deleted.
    assert!(s.delete_user(&a, limits).await.expect("again").is_some());
    assert_eq!(
        s.accounts
            .register(std::slice::from_ref(&a), 2)
            .await
            .expect("reg"),
        0
    );
    let account = s.accounts.account(&a).await.expect("read").expect("kept");
    assert!(account.deleted && account.disabled);
    assert!(
        s.accounts
            .set_disabled(&a, false)
            .await
            .expect("enable")
            .is_some_and(|x| x.deleted),
        "enabling does not revive a deleted account"
    );
    let listed = s
        .accounts
        .accounts_after("", 1_000_000)
        .await
        .expect("list");
    assert!(!listed.contains(&a) && listed.contains(&b));
    assert!(
        s.delete_user(&unique("never"), limits)
            .await
            .expect("unknown")
            .is_none()
    );
}

async fn assert_left_nothing(
    s: &crate::Stores,
    [a, b, c, d, e, f]: [&String; 6],
    [shared, alone, theirs]: [&String; 3],
    day: u32,
    blob: &BlobId,
) {
    assert!(
        s.messages
            .read_inbox(a, 0, 100)
            .await
            .expect("inbox")
            .is_empty()
    );
    assert_eq!(
        s.messages.load_cursor(a, "phone").await.expect("cursor"),
        None
    );
    let list = s
        .conversations
        .conversations(a, &[], 100)
        .await
        .expect("list");
    assert!(list.conversations.is_empty(), "{list:?}");
    let peer_side = s.conversations.conversation(b, &user(a)).await.expect("b");
    assert_eq!(peer_side, None, "the peer's conversation with the user");
    let mine = s.contacts.contacts(a).await.expect("contacts");
    assert_eq!(mine, v1::ContactsResponse::default());
    assert!(s.contacts.blockers(a).await.expect("blockers").is_empty());
    assert!(s.contacts.blocked(a).await.expect("blocked").is_empty());
    let named = |r: &v1::ContactsResponse| {
        r.friends.contains(a)
            || r.blocked.contains(a)
            || r.outgoing.contains(a)
            || r.incoming.iter().any(|p| &p.user == a)
    };
    for peer in [b, c, d, e, f] {
        let theirs = s.contacts.contacts(peer).await.expect("peer contacts");
        assert!(!named(&theirs), "{peer} still names the user: {theirs:?}");
        let blockers = s.contacts.blockers(peer).await.expect("peer blockers");
        assert!(!blockers.contains(a), "{peer} still blocked by the user");
    }
    assert!(s.groups.user_groups(a).await.expect("groups").is_empty());
    for group in [shared, alone, theirs] {
        assert_eq!(s.groups.member(group, a).await.expect("member"), None);
    }
    let info = s.groups.group(shared).await.expect("read").expect("kept");
    assert_eq!(info.owner, *c, "handed over to the admin");
    assert!(!info.dissolved);
    let info = s.groups.group(alone).await.expect("read").expect("kept");
    assert!(info.dissolved, "a group the user was alone in is dissolved");
    assert!(s.notify.push_tokens(a).await.expect("tokens").is_empty());
    let settings = s.notify.push_settings(a).await.expect("settings");
    assert!(settings.preview && settings.conversations.is_empty());
    assert_eq!(s.schedules.pending(a, 10).await.expect("pending"), 0);
    assert_eq!(s.quotas.stored_bytes(a, day).await.expect("bytes"), 0);
    assert_eq!(s.media.pending(a, blob).await.expect("upload"), None);
    assert_eq!(s.media.pending_count(a, 10).await.expect("uploads"), 0);
    assert!(s.groups.invitations(a).await.expect("inv").is_empty());
}

/// `user` is on none of the three lists of any of `groups`, by entry and
/// in the lists' pages, and no group is left listing them.
async fn assert_off_every_list(s: &crate::Stores, user: &String, groups: &[String; 3]) {
    for group in groups {
        for list in [List::Invited, List::Requested, List::Banned] {
            let entry = s.groups.listing(group, list, user).await.expect("listing");
            assert_eq!(entry, None, "{group} still lists the user as {list:?}");
            let page = s.groups.listed(group, list, "", 100).await.expect("list");
            assert!(
                page.iter().all(|l| &l.user != user),
                "{group} {list:?}: {page:?}"
            );
        }
        let info = s.groups.group(group).await.expect("read").expect("kept");
        assert!(!info.dissolved, "the group goes on for the others");
    }
    assert!(s.groups.invitations(user).await.expect("inv").is_empty());
}
