//! The rules of offline push that every backend must keep (run by
//! [`im_conformance_tests!`](crate::im_conformance_tests) with the other IM
//! checks): push tokens, preview settings and push claims.

use qim_proto::v1;

use crate::OpError;
use crate::Quota;
use crate::conformance::unique;
use crate::conformance_im::ImBackend;
use crate::conversations::{group, user};
use crate::notify::preview_of;

fn token(device: &str, value: &str) -> v1::PushToken {
    v1::PushToken {
        device: device.to_owned(),
        provider: v1::PushProvider::Apns as i32,
        token: value.to_owned(),
        app_id: "com.example.chat".to_owned(),
        sandbox: false,
        updated_ms: 1_000,
    }
}

fn devices(tokens: &[v1::PushToken]) -> Vec<(String, String)> {
    let mut out: Vec<_> = tokens
        .iter()
        .map(|t| (t.device.clone(), t.token.clone()))
        .collect();
    out.sort();
    out
}

/// One token per device, replaced by a new registration; at most
/// `max_devices` devices (a refused registration stores nothing); a token
/// registered on another device (of another user) leaves its former
/// holder; a removal naming an old token keeps the newer one; all of it
/// survives a reopen.
pub async fn push_tokens_are_per_device_bounded_and_move(backend: &dyn ImBackend) {
    let (a, b) = (unique("pa"), unique("pb"));
    let (t1, t2, t3) = (unique("tok"), unique("tok"), unique("tok"));
    {
        let s = backend.open_im().await;
        let n = &s.notify;
        assert!(n.push_tokens(&a).await.expect("read").is_empty());
        n.register_push_token(&a, token("phone", &t1), 2)
            .await
            .expect("register");
        n.register_push_token(&a, token("phone", &t2), 2)
            .await
            .expect("replace");
        n.register_push_token(&a, token("tablet", &t3), 2)
            .await
            .expect("second device");
        assert!(matches!(
            n.register_push_token(&a, token("laptop", &unique("tok")), 2)
                .await,
            Err(OpError::QuotaExceeded(crate::Quota::PushDevices))
        ));
        n.register_push_token(&a, token("phone", &t1), 2)
            .await
            .expect("a device's own token may always change");
        assert_eq!(
            devices(&n.push_tokens(&a).await.expect("read")),
            [("phone".into(), t1.clone()), ("tablet".into(), t3.clone())]
        );
        let stored = n.push_tokens(&a).await.expect("read");
        assert_eq!(stored[0].app_id, "com.example.chat");
        assert_eq!(stored[0].provider, v1::PushProvider::Apns as i32);

        // The tablet is handed to b: the token leaves a.
        n.register_push_token(&b, token("tablet-b", &t3), 2)
            .await
            .expect("register");
        assert_eq!(
            devices(&n.push_tokens(&a).await.expect("read")),
            [("phone".into(), t1.clone())]
        );
        // A provider reports t2 (phone's old token) unregistered: phone keeps t1.
        assert!(
            !n.remove_push_token(&a, "phone", Some(&t2))
                .await
                .expect("remove")
        );
        assert!(
            n.register_push_token(&a, token("bad id", "x"), 2)
                .await
                .is_err()
        );
    }
    let s = backend.open_im().await;
    let n = &s.notify;
    assert_eq!(
        devices(&n.push_tokens(&a).await.expect("read")),
        [("phone".into(), t1.clone())],
        "tokens survive a reopen"
    );
    assert_eq!(
        devices(&n.push_tokens(&b).await.expect("read")),
        [("tablet-b".into(), t3.clone())]
    );
    assert!(
        n.remove_push_token(&a, "phone", Some(&t1))
            .await
            .expect("remove")
    );
    assert!(n.push_tokens(&a).await.expect("read").is_empty());
    assert!(
        !n.remove_push_token(&a, "phone", None)
            .await
            .expect("remove"),
        "nothing left to remove"
    );
    // The token a removed is free: registering it again anywhere works,
    // and it is read back although a was just read to hold none.
    n.register_push_token(&a, token("phone", &t1), 2)
        .await
        .expect("register again");
    assert_eq!(
        devices(&n.push_tokens(&a).await.expect("read")),
        [("phone".into(), t1.clone())],
        "a token registered after an empty read is found"
    );
}

/// Preview is on by default; the user's flag and per-conversation flags
/// are kept, removed when unset, bounded, and survive a reopen.
pub async fn push_settings_are_kept_and_bounded(backend: &dyn ImBackend) {
    let u = unique("ps");
    let over = |peer: v1::Peer, preview: Option<bool>| v1::PreviewOverride {
        conversation: Some(peer),
        preview,
    };
    {
        let s = backend.open_im().await;
        let n = &s.notify;
        let fresh = n.push_settings(&u).await.expect("read");
        assert!(fresh.preview && fresh.conversations.is_empty());
        let set = n
            .set_push_settings(
                &u,
                &v1::PushSettingsRequest {
                    preview: None,
                    conversations: vec![
                        over(user("boss"), Some(false)),
                        over(group("team"), Some(true)),
                    ],
                },
                2,
            )
            .await
            .expect("set");
        assert!(set.preview);
        assert!(!preview_of(&set, &user("boss")));
        assert!(preview_of(&set, &user("friend")));
        assert!(matches!(
            n.set_push_settings(
                &u,
                &v1::PushSettingsRequest {
                    preview: None,
                    conversations: vec![over(user("third"), Some(false))],
                },
                2,
            )
            .await,
            Err(OpError::QuotaExceeded(Quota::PreviewOverrides))
        ));
        let set = n
            .set_push_settings(
                &u,
                &v1::PushSettingsRequest {
                    preview: Some(false),
                    conversations: vec![over(group("team"), None)],
                },
                2,
            )
            .await
            .expect("set");
        assert!(!set.preview);
        assert_eq!(set.conversations.len(), 1);
        assert!(!preview_of(&set, &group("team")), "back to the user's flag");
        assert!(
            n.set_push_settings(
                &u,
                &v1::PushSettingsRequest {
                    preview: None,
                    conversations: vec![v1::PreviewOverride {
                        conversation: None,
                        preview: Some(true),
                    }],
                },
                2,
            )
            .await
            .is_err(),
            "an override names a conversation"
        );
    }
    let s = backend.open_im().await;
    let kept = s.notify.push_settings(&u).await.expect("read");
    assert!(!kept.preview);
    assert_eq!(kept.conversations.len(), 1);
    assert!(!preview_of(&kept, &user("boss")));
}

/// A claim is won once, whichever instance of the store asks.
pub async fn push_claims_are_won_once(backend: &dyn ImBackend) {
    let key = unique("claim");
    let s = backend.open_im().await;
    assert!(s.notify.claim_push(&key, 60_000).await.expect("claim"));
    assert!(!s.notify.claim_push(&key, 60_000).await.expect("claim"));
    assert!(
        s.notify
            .claim_push(&unique("claim"), 60_000)
            .await
            .expect("claim"),
        "another key is free"
    );
}
