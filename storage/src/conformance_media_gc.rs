//! Checks of the collection of blobs no message carries (see
//! [`crate::media`], "Collection"): holds, recorded copies read back from
//! the message store, pending uploads, and claims among sweepers.

use bytes::Bytes;
use qim_proto::v1;

use crate::conformance::unique;
use crate::conformance_im::{ImBackend, post};
use crate::conversations::ConversationOp;
use crate::media::{BlobId, BlobMeta, COLLECT_LEASE_MS, Collect, CopyRef, PendingUpload, Scope};

fn meta(id: BlobId, now: i64) -> BlobMeta {
    BlobMeta {
        id,
        size: 10,
        media_type: "text/plain".into(),
        created_ms: now,
        image: None,
    }
}

/// A blob is collected only after its hold, with no recorded copy and no
/// pending upload; one claim wins among sweepers (a stale one is taken
/// over); a blob being collected reads as absent, cannot be held and
/// refuses uploads of its bytes; finishing removes every record.
pub async fn blobs_are_collected_only_when_free(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let m = &s.media;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let now = qim_proto::now_ms();
    let id = BlobId(rand::random());
    assert!(!m.hold(&id, now).await.expect("hold"), "no such blob");
    m.complete(&alice, &meta(id, now), now + 1_000)
        .await
        .expect("complete");
    assert!(!m.due_blobs(now, 100_000).await.expect("due").contains(&id));
    assert!(
        m.due_blobs(now + 1_000, 100_000)
            .await
            .expect("due")
            .contains(&id)
    );
    assert_eq!(
        m.begin_collect(&id, now, 1).await.expect("begin"),
        Collect::Held(now + 1_000)
    );
    assert!(m.hold(&id, now + 5_000).await.expect("hold"));
    assert!(
        m.hold(&id, now + 2_000)
            .await
            .expect("a hold never moves back")
    );
    assert_eq!(
        m.begin_collect(&id, now + 4_999, 1).await.expect("begin"),
        Collect::Held(now + 5_000)
    );
    let later = now + 10_000;

    let copy = CopyRef {
        inbox: bob.clone(),
        seq: 7,
    };
    m.add_copies(&id, std::slice::from_ref(&copy))
        .await
        .expect("copies");
    assert_eq!(m.copies(&id, 10).await.expect("copies"), vec![copy.clone()]);
    assert_eq!(
        m.begin_collect(&id, later, 1).await.expect("begin"),
        Collect::InUse
    );
    m.remove_copies(&id, std::slice::from_ref(&copy))
        .await
        .expect("remove");
    assert!(m.copies(&id, 10).await.expect("copies").is_empty());

    let pending = PendingUpload {
        user: bob.clone(),
        id,
        size: 10,
        media_type: "text/plain".into(),
        committed: 0,
        started_ms: now,
    };
    m.put_pending(&pending).await.expect("pending");
    assert_eq!(
        m.begin_collect(&id, later, 1).await.expect("begin"),
        Collect::InUse,
        "an upload of its bytes is pending"
    );
    m.remove_pending(&bob, &id).await.expect("remove");

    m.add_refs(&id, &[Scope::User(bob.clone())])
        .await
        .expect("refs");
    assert_eq!(
        m.begin_collect(&id, later, 1).await.expect("begin"),
        Collect::Claimed
    );
    assert_eq!(
        m.begin_collect(&id, later, 1).await.expect("again"),
        Collect::Claimed,
        "the same claim goes on"
    );
    assert_eq!(
        m.begin_collect(&id, later + 1, 2).await.expect("begin"),
        Collect::Busy,
        "another sweeper's claim"
    );
    assert_eq!(m.blob(&id).await.expect("read"), None, "reads as absent");
    assert!(!m.hold(&id, later).await.expect("hold"), "cannot be held");
    assert!(
        m.put_pending(&pending).await.is_err(),
        "uploads of its bytes wait"
    );
    assert_eq!(
        m.begin_collect(&id, later + COLLECT_LEASE_MS, 3)
            .await
            .expect("take over"),
        Collect::Claimed
    );
    m.finish_collect(&id, 1).await.expect("a lost claim");
    assert!(
        m.is_uploader(&id, &alice).await.expect("read"),
        "still there"
    );
    m.finish_collect(&id, 3).await.expect("finish");
    assert_eq!(m.blob(&id).await.expect("read"), None);
    assert!(!m.is_uploader(&id, &alice).await.expect("read"));
    assert!(
        !m.has_ref(&id, &Scope::User(bob.clone()))
            .await
            .expect("read")
    );
    assert!(
        !m.due_blobs(later * 2, 100_000)
            .await
            .expect("due")
            .contains(&id)
    );
    assert_eq!(
        m.begin_collect(&id, later, 4).await.expect("begin"),
        Collect::Gone
    );
    m.put_pending(&pending)
        .await
        .expect("the bytes may be uploaded again");
    m.remove_pending(&bob, &id).await.expect("remove");
}

fn attachment(id: &BlobId) -> v1::Attachment {
    v1::Attachment {
        blob_id: Bytes::copy_from_slice(&id.0),
        size: 10,
        media_type: "text/plain".into(),
        ..Default::default()
    }
}

/// A recorded copy carries its blob while it is stored, not recalled and
/// not deleted for its owner; another message's copies keep carrying it.
pub async fn copies_carry_blobs_until_recalled_or_deleted(backend: &dyn ImBackend) {
    let s = backend.open_im().await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let id = BlobId(rand::random());
    let mut to_bob = post(&alice, &bob, &[&bob, &alice], "one");
    to_bob.attachments = vec![attachment(&id)];
    let mut to_carol = post(&alice, &carol, &[&carol], "two");
    to_carol.attachments = vec![attachment(&id)];
    let posted = s
        .conversations
        .post(vec![to_bob, to_carol])
        .await
        .expect("post");
    let mut copies = Vec::new();
    for p in posted {
        let p = p.expect("posted");
        for c in &p.copies {
            assert_eq!(crate::media::carried_blobs(&c.message), vec![id]);
            copies.push((
                c.message.msg_id.clone(),
                CopyRef {
                    inbox: c.inbox.clone(),
                    seq: c.seq,
                },
            ));
        }
    }
    let carries = |c: CopyRef| {
        let messages = s.messages.clone();
        async move {
            crate::media::carries(messages.as_ref(), &id, &c)
                .await
                .expect("read")
        }
    };
    for (_, c) in &copies {
        assert!(carries(c.clone()).await, "{c:?} carries it");
    }
    let other = BlobId(rand::random());
    assert!(
        !crate::media::carries(s.messages.as_ref(), &other, &copies[0].1)
            .await
            .expect("read")
    );
    let beyond = CopyRef {
        seq: copies[0].1.seq + 100,
        ..copies[0].1.clone()
    };
    assert!(!carries(beyond).await, "no such copy");

    // Bob deletes his copy for himself: a tombstone carries nothing.
    let bobs = copies.iter().find(|(_, c)| c.inbox == bob).expect("bob's");
    s.conversations
        .apply(ConversationOp::Delete {
            user: bob.clone(),
            seq: bobs.1.seq,
            now_ms: qim_proto::now_ms(),
        })
        .await
        .expect("delete");
    assert!(!carries(bobs.1.clone()).await, "deleted for its owner");
    let alices = copies
        .iter()
        .find(|(_, c)| c.inbox == alice)
        .expect("alice's");
    assert!(carries(alices.1.clone()).await, "the sender's copy stays");

    // Alice recalls the message to Bob: no copy of it carries the blob.
    s.conversations
        .apply(ConversationOp::Recall {
            user: alice.clone(),
            msg_id: bobs.0.clone(),
            now_ms: qim_proto::now_ms(),
            window_ms: 60_000,
        })
        .await
        .expect("recall");
    assert!(!carries(alices.1.clone()).await, "recalled");
    let carols = copies
        .iter()
        .find(|(_, c)| c.inbox == carol)
        .expect("carol's");
    assert!(
        carries(carols.1.clone()).await,
        "the other message still carries it"
    );
}
