//! Attacks on push tokens, on both backends, each with a bystander pair
//! chatting through it: registering or removing a token for another user's
//! device, oversized and malformed tokens, registrations past the device
//! quota, and a flood of registrations. Each is refused with its code and
//! leaves the victim's token as it was.

mod common;

use common::{Backend, Bystanders, Raw, TestGateway, unique};
use qim_proto::v1::{self, ErrorCode, push_token_request::Op, rpc_request, rpc_response};
use qim_sdk::{Client, PushProvider};

const MAX_DEVICES: u32 = 2;
const WRITES_PER_MINUTE: u32 = 6;
const MAX_TOKEN_BYTES: u32 = 200;

fn apns(device: &str, token: &str) -> Op {
    Op::Register(v1::PushToken {
        device: device.to_owned(),
        provider: v1::PushProvider::Apns as i32,
        token: token.to_owned(),
        app_id: "com.example.chat".to_owned(),
        sandbox: false,
        updated_ms: 0,
    })
}

fn request(op: Op) -> rpc_request::Kind {
    rpc_request::Kind::PushToken(v1::PushTokenRequest { op: Some(op) })
}

/// The refusal's code and wait, or panics with what came instead.
fn refusal(answer: rpc_response::Kind) -> (ErrorCode, u32) {
    match answer {
        rpc_response::Kind::Error(e) => (e.code(), e.retry_after_ms),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn tokens(answer: rpc_response::Kind) -> Vec<v1::PushToken> {
    match answer {
        rpc_response::Kind::PushToken(r) => r.tokens,
        other => panic!("expected the token list, got {other:?}"),
    }
}

async fn victim_tokens(victim: &Client) -> Vec<(String, String)> {
    victim
        .push_tokens()
        .await
        .expect("the victim lists its tokens")
        .into_iter()
        .map(|t| (t.device, t.token))
        .collect()
}

/// An attacker tries to take over, remove or flood around a victim's push
/// token: every attempt is refused with its code, the victim keeps its
/// token, and the bystanders' chat goes on.
async fn push_token_attacks_are_refused(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| {
        c.notify.max_devices = MAX_DEVICES;
        c.notify.token_writes_per_minute = WRITES_PER_MINUTE;
        c.notify.max_token_bytes = MAX_TOKEN_BYTES;
    })
    .await;
    let bystanders = Bystanders::start(&gw).await;
    let (victim_user, attacker) = (unique("victim"), unique("attacker"));
    let victim = gw.client(&victim_user, "victim-phone").await;
    let victim_token = "ab".repeat(32);
    victim
        .register_push_token(
            PushProvider::Apns,
            victim_token.clone(),
            "com.example.chat".into(),
            false,
        )
        .await
        .expect("the victim registers its token");
    let mine = vec![("victim-phone".to_owned(), victim_token.clone())];
    assert_eq!(victim_tokens(&victim).await, mine);

    let raw = Raw::login(&gw, &attacker, "attacker-phone", 0).await;
    // Another user's device, by name: refused, whatever the op.
    let (code, _) = refusal(
        raw.rpc(request(apns("victim-phone", &"cd".repeat(32))))
            .await,
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    let (code, _) = refusal(
        raw.rpc(request(Op::Unregister("victim-phone".into())))
            .await,
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    // Oversized, malformed, unknown provider, bad app id.
    let oversized = "e".repeat(MAX_TOKEN_BYTES as usize + 2);
    for op in [
        apns("", &oversized),
        apns("", ""),
        apns("", "zz not hex"),
        Op::Register(v1::PushToken {
            provider: v1::PushProvider::Unspecified as i32,
            token: "ab".repeat(32),
            app_id: "com.example.chat".into(),
            ..v1::PushToken::default()
        }),
        Op::Register(v1::PushToken {
            provider: v1::PushProvider::Fcm as i32,
            token: "fcm-token".into(),
            app_id: "x".repeat(500),
            ..v1::PushToken::default()
        }),
    ] {
        let (code, _) = refusal(raw.rpc(request(op)).await);
        assert_eq!(code, ErrorCode::InvalidArgument);
    }
    // The attacker's own listing shows nothing of the victim.
    assert!(tokens(raw.rpc(request(Op::List(true))).await).is_empty());

    // Devices past the quota: the attacker logs in on one device more.
    let mut sessions = vec![raw];
    for i in 1..=MAX_DEVICES {
        sessions.push(Raw::login(&gw, &attacker, &format!("attacker-{i}"), 0).await);
    }
    for (i, s) in sessions[..MAX_DEVICES as usize].iter().enumerate() {
        let listed = tokens(
            s.rpc(request(apns("", &format!("{:064x}", 0x5000 + i))))
                .await,
        );
        assert!(listed.len() <= MAX_DEVICES as usize);
    }
    let (code, _) = refusal(
        sessions[MAX_DEVICES as usize]
            .rpc(request(apns("", &"ef".repeat(32))))
            .await,
    );
    assert_eq!(code, ErrorCode::QuotaExceeded, "one device past the quota");

    // A flood of registrations from one device: past the per-user rate,
    // RATE_LIMITED with the wait.
    let mut refused = None;
    for i in 0..2 * WRITES_PER_MINUTE {
        match sessions[0]
            .rpc(request(apns("", &format!("{i:064x}"))))
            .await
        {
            rpc_response::Kind::PushToken(_) => {}
            other => {
                refused = Some((i, refusal(other)));
                break;
            }
        }
    }
    let (at, (code, wait)) = refused.expect("the flood is refused");
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(wait > 0, "the refusal says how long to wait");
    assert!(
        at < WRITES_PER_MINUTE,
        "refused within the burst of {WRITES_PER_MINUTE} (at {at})"
    );

    // The victim's token is as it was; its own change still works.
    assert_eq!(victim_tokens(&victim).await, mine);
    victim
        .unregister_push_token()
        .await
        .expect("the victim removes its own token");
    assert!(victim_tokens(&victim).await.is_empty());
    bystanders.finish().await;
    victim.close().await;
    gw.stop().await;
}

/// A token registered on another device (the phone changed hands, or an
/// attacker replays a token it saw) moves there: the former holder stops
/// getting its notifications; logout removes a device's token; a listing
/// shows only the requesting device's token value.
async fn a_token_has_one_holder_and_logout_removes_it(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let (ann, ben) = (unique("ann"), unique("ben"));
    let ann_phone = gw.client(&ann, "phone").await;
    let ann_tablet = gw.client(&ann, "tablet").await;
    let shared = "0f".repeat(32);
    register(&ann_phone, &shared).await;
    let listed = register(&ann_tablet, &"1e".repeat(32)).await;
    let shown: Vec<(String, bool)> = listed
        .iter()
        .map(|t| (t.device.clone(), t.token.is_empty()))
        .collect();
    assert_eq!(
        shown,
        [("phone".to_owned(), true), ("tablet".to_owned(), false)],
        "only the requesting device's token value is shown"
    );

    // The phone is handed to ben, who logs in and registers the same token.
    let ben_phone = gw.client(&ben, "phone").await;
    register(&ben_phone, &shared).await;
    let ann_left: Vec<String> = ann_tablet
        .push_tokens()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.device)
        .collect();
    assert_eq!(ann_left, ["tablet"], "the token left ann's phone");

    ann_tablet.logout().await.expect("logout");
    let ann_left = ann_phone.push_tokens().await.expect("list");
    assert!(ann_left.is_empty(), "logout removed the tablet's token");
    assert_eq!(ben_phone.push_tokens().await.expect("list").len(), 1);
    ann_phone.close().await;
    ben_phone.close().await;
    gw.stop().await;
}

async fn register(client: &Client, token: &str) -> Vec<qim_sdk::PushToken> {
    client
        .register_push_token(
            PushProvider::Apns,
            token.to_owned(),
            "com.example.chat".into(),
            false,
        )
        .await
        .expect("register")
}

on_both_backends!(
    push_token_attacks_are_refused,
    a_token_has_one_holder_and_logout_removes_it,
);
