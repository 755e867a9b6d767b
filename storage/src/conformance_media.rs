//! Checks every backend's [`MediaStore`](crate::media::MediaStore) must
//! pass: pending uploads with their committed offsets, publication, the
//! uploaders, references, and what survives a reopen.

use crate::conformance::unique;
use crate::conformance_im::ImBackend;
use crate::media::{BlobId, BlobMeta, ImageInfo, PendingUpload, Scope};

fn random_id() -> BlobId {
    BlobId(rand::random())
}

/// Pending uploads move their offset, count per user, go stale by start
/// time; completing one publishes the blob (the first record stays) and
/// makes the user an uploader; references say who may read; all of it
/// survives a reopen.
pub async fn media_records_follow_uploads_and_references(backend: &dyn ImBackend) {
    let (alice, bob, group) = (unique("alice"), unique("bob"), unique("g"));
    let id = random_id();
    let started_ms = qim_proto::now_ms() - 10_000;
    {
        let s = backend.open_im().await;
        let m = &s.media;
        assert_eq!(m.pending(&alice, &id).await.expect("read"), None);
        let mut p = PendingUpload {
            user: alice.clone(),
            id,
            size: 1000,
            media_type: "image/png".into(),
            committed: 0,
            started_ms,
        };
        m.put_pending(&p).await.expect("pending");
        p.committed = 600;
        m.put_pending(&p).await.expect("offset moves");
        assert_eq!(m.pending(&alice, &id).await.expect("read"), Some(p.clone()));
        assert_eq!(m.pending_count(&alice, 10).await.expect("count"), 1);
        assert_eq!(m.pending_count(&bob, 10).await.expect("count"), 0);
        let stale = m
            .stale_pending(started_ms + 1, 100_000)
            .await
            .expect("stale");
        assert!(stale.contains(&p), "started before the bound: stale");
        let stale = m.stale_pending(started_ms, 100_000).await.expect("stale");
        assert!(!stale.contains(&p), "started at the bound: not stale");

        assert_eq!(m.blob(&id).await.expect("read"), None);
        let meta = BlobMeta {
            id,
            size: 1000,
            media_type: "image/png".into(),
            created_ms: started_ms + 5,
            image: Some(ImageInfo {
                width: 4032,
                height: 3024,
                thumbnail: BlobId::of(b"a thumbnail"),
            }),
        };
        m.complete(&alice, &meta, started_ms)
            .await
            .expect("complete");
        assert_eq!(m.blob(&id).await.expect("read"), Some(meta.clone()));
        assert_eq!(m.pending(&alice, &id).await.expect("read"), None);
        assert!(m.is_uploader(&id, &alice).await.expect("read"));
        assert!(!m.is_uploader(&id, &bob).await.expect("read"));
        let other = BlobMeta {
            media_type: "image/gif".into(),
            created_ms: started_ms + 9,
            image: None,
            ..meta.clone()
        };
        m.complete(&bob, &other, started_ms)
            .await
            .expect("a second uploader");
        assert_eq!(
            m.blob(&id).await.expect("read"),
            Some(meta.clone()),
            "the first record stays"
        );
        assert!(m.is_uploader(&id, &bob).await.expect("read"));

        let (bob_scope, group_scope) = (Scope::User(bob.clone()), Scope::Group(group.clone()));
        assert!(!m.has_ref(&id, &bob_scope).await.expect("read"));
        m.add_refs(&id, &[bob_scope.clone(), group_scope.clone()])
            .await
            .expect("refs");
        assert!(m.has_ref(&id, &bob_scope).await.expect("read"));
        assert!(m.has_ref(&id, &group_scope).await.expect("read"));
        assert!(
            !m.has_ref(&id, &Scope::User(alice.clone()))
                .await
                .expect("read")
        );
        assert_eq!(
            m.group_refs(&id, 10).await.expect("groups"),
            vec![group.clone()]
        );
        assert!(
            m.group_refs(&random_id(), 10)
                .await
                .expect("groups")
                .is_empty()
        );

        let gone = PendingUpload {
            id: random_id(),
            ..p
        };
        m.put_pending(&gone).await.expect("pending");
        m.remove_pending(&alice, &gone.id).await.expect("remove");
        assert_eq!(m.pending(&alice, &gone.id).await.expect("read"), None);
    }
    let s = backend.open_im().await;
    assert_eq!(
        s.media.blob(&id).await.expect("read").map(|b| b.size),
        Some(1000)
    );
    assert!(s.media.is_uploader(&id, &alice).await.expect("read"));
    assert!(s.media.has_ref(&id, &Scope::User(bob)).await.expect("read"));
}
