//! Offline push against local providers: one HTTP/2 server over TLS that
//! speaks the APNs request format (checking the ES256 provider token's
//! signature, `kid` and `iss`, the topic, push type, priority and collapse
//! id, the payload's shape) and FCM's HTTP v1 API with its OAuth2 token
//! endpoint (checking the RS256 assertion of the service account and the
//! bearer token), with a real gateway and real SDK clients: a device
//! online, a device offline, a muted conversation, a preview turned off,
//! tokens the providers call invalid, and a provider that fails before it
//! accepts.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Backend, TestGateway, poll_until, unique};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, Version};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use qim_sdk::{Client, Peer, PreviewSetting, PushProvider};
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde_json::Value;

const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const BUNDLE: &str = "com.example.chat";
const PROJECT: &str = "example-project";
const EMAIL: &str = "push@example-project.iam.gserviceaccount.com";
const ACCESS: &str = "ya29.local-test-token";

/// One notification a provider accepted.
#[derive(Debug, Clone, PartialEq)]
struct Push {
    token: String,
    badge: u64,
    collapse: String,
    title: Option<String>,
    body: String,
}

/// What the local providers saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<Push>,
    /// Requests refused for breaking a rule a real provider checks.
    violations: Vec<String>,
    /// Attempts per token.
    attempts: HashMap<String, u32>,
}

struct Providers {
    url: String,
    ca: std::path::PathBuf,
    seen: Arc<Mutex<Seen>>,
    /// Tokens answered as unregistered.
    gone: Arc<Mutex<HashSet<String>>>,
    /// Tokens answered 503 this many times before being accepted.
    flaky: Arc<Mutex<HashMap<String, u32>>>,
}

struct Keys {
    apns_public: DecodingKey,
    fcm_public: DecodingKey,
    token_url: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r
}

fn header<'a>(req: &'a Request<hyper::body::Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl Providers {
    /// Starts the providers on 127.0.0.1 with a development certificate;
    /// writes the gateway's key files into `dir`.
    async fn start(dir: &std::path::Path) -> (Providers, std::path::PathBuf, std::path::PathBuf) {
        let certs = qim_gateway::tls::write_dev_certs(
            &dir.join("provider-certs"),
            &qim_gateway::tls::DevCertSpec::default(),
        )
        .expect("certs");
        let chain = qim_gateway::tls::load_chain(&certs.server_cert).expect("chain");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&certs.server_key).expect("key");
        use rustls_pki_types::pem::PemObject as _;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().expect("addr").port()
        );

        // APNs: a P-256 key (.p8). FCM: a service account with an RSA key.
        let apns_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
        let p8 = dir.join("apns.p8");
        std::fs::write(&p8, apns_key.serialize_pem()).expect("write p8");
        let mut rng = rsa::rand_core::OsRng;
        let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa");
        let private_pem = rsa_key.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let public_pem = rsa_key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("public pem");
        let token_url = format!("{url}/token");
        let account = dir.join("service-account.json");
        std::fs::write(
            &account,
            serde_json::json!({
                "type": "service_account",
                "project_id": PROJECT,
                "client_email": EMAIL,
                "private_key": private_pem.as_str(),
                "token_uri": token_url,
            })
            .to_string(),
        )
        .expect("write account");
        let keys = Arc::new(Keys {
            apns_public: DecodingKey::from_ec_pem(apns_key.public_key_pem().as_bytes())
                .expect("apns public"),
            fcm_public: DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("fcm public"),
            token_url,
        });
        let providers = Providers {
            url,
            ca: certs.ca_cert.clone(),
            seen: Arc::default(),
            gone: Arc::default(),
            flaky: Arc::default(),
        };
        let state = (
            Arc::clone(&providers.seen),
            Arc::clone(&providers.gone),
            Arc::clone(&providers.flaky),
            keys,
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            let (seen, gone, flaky, keys) = state;
                            Ok::<_, Infallible>(answer(req, &seen, &gone, &flaky, &keys).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        (providers, p8, account)
    }

    fn accepted(&self) -> Vec<Push> {
        lock(&self.seen).accepted.clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Push> {
        poll_until(&format!("{n} pushes accepted"), || async {
            let seen = self.accepted();
            (seen.len() >= n).then_some(seen)
        })
        .await
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: &Mutex<Seen>,
    gone: &Mutex<HashSet<String>>,
    flaky: &Mutex<HashMap<String, u32>>,
    keys: &Keys,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let violation = |what: String| {
        lock(seen).violations.push(what.clone());
        reply(400, serde_json::json!({ "reason": what }))
    };
    if req.version() != Version::HTTP_2 {
        return violation(format!("HTTP version {:?}", req.version()));
    }
    if let Some(token) = path.strip_prefix("/3/device/") {
        // APNs.
        let token = token.to_owned();
        let jwt = header(&req, "authorization")
            .strip_prefix("bearer ")
            .unwrap_or("")
            .to_owned();
        let kid = jsonwebtoken::decode_header(&jwt).ok().and_then(|h| h.kid);
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.required_spec_claims = HashSet::from(["iss".to_owned(), "iat".to_owned()]);
        v.set_issuer(&[TEAM]);
        let claims = jsonwebtoken::decode::<Value>(&jwt, &keys.apns_public, &v);
        let iat = claims
            .as_ref()
            .ok()
            .and_then(|c| c.claims["iat"].as_u64())
            .unwrap_or(0);
        let now = qim_gateway::auth::unix_now();
        if claims.is_err() || kid.as_deref() != Some(KEY_ID) || iat + 3600 < now || iat > now + 60 {
            return reply(403, serde_json::json!({ "reason": "InvalidProviderToken" }));
        }
        for (name, want) in [
            ("apns-topic", BUNDLE),
            ("apns-push-type", "alert"),
            ("apns-priority", "10"),
        ] {
            if header(&req, name) != want {
                return violation(format!("{name}: {:?}", header(&req, name)));
            }
        }
        let collapse = header(&req, "apns-collapse-id").to_owned();
        if collapse.is_empty() || collapse.len() > 64 {
            return violation(format!("apns-collapse-id {collapse:?}"));
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
            return violation("payload is not JSON".into());
        };
        let aps = &payload["aps"];
        let (Some(badge), Some(text)) = (aps["badge"].as_u64(), aps["alert"]["body"].as_str())
        else {
            return violation(format!("aps {aps}"));
        };
        *lock(seen).attempts.entry(token.clone()).or_default() += 1;
        if lock(gone).contains(&token) {
            return reply(
                410,
                serde_json::json!({ "reason": "Unregistered", "timestamp": now * 1000 }),
            );
        }
        if let Some(left) = lock(flaky).get_mut(&token).filter(|n| **n > 0) {
            *left -= 1;
            return reply(503, serde_json::json!({ "reason": "ServiceUnavailable" }));
        }
        lock(seen).accepted.push(Push {
            token,
            badge,
            collapse,
            title: aps["alert"]["title"].as_str().map(str::to_owned),
            body: text.to_owned(),
        });
        return reply(200, serde_json::json!({}));
    }
    if path == "/token" {
        // OAuth2: the service account's RS256 assertion for an access token.
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form = String::from_utf8_lossy(&body).into_owned();
        let assertion = form
            .split('&')
            .find_map(|kv| kv.strip_prefix("assertion="))
            .unwrap_or("");
        if !form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
            return violation(format!("token request {form}"));
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[EMAIL]);
        v.set_audience(&[keys.token_url.as_str()]);
        match jsonwebtoken::decode::<Value>(assertion, &keys.fcm_public, &v) {
            Ok(c) if c.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging" => {
                return reply(
                    200,
                    serde_json::json!({
                        "access_token": ACCESS, "expires_in": 3599, "token_type": "Bearer",
                    }),
                );
            }
            other => return violation(format!("assertion {other:?}")),
        }
    }
    if path == format!("/v1/projects/{PROJECT}/messages:send") {
        if header(&req, "authorization") != format!("Bearer {ACCESS}") {
            return reply(
                401,
                serde_json::json!({ "error": { "code": 401, "status": "UNAUTHENTICATED" } }),
            );
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
            return violation("message is not JSON".into());
        };
        let m = &payload["message"];
        let android = &m["android"];
        let (Some(token), Some(collapse), Some(badge), Some(text)) = (
            m["token"].as_str(),
            android["collapse_key"].as_str(),
            android["notification"]["notification_count"].as_u64(),
            m["notification"]["body"].as_str(),
        ) else {
            return violation(format!("message {m}"));
        };
        if android["notification"]["tag"].as_str() != Some(collapse) {
            return violation(format!("tag {android}"));
        }
        *lock(seen).attempts.entry(token.to_owned()).or_default() += 1;
        if lock(gone).contains(token) {
            return reply(
                404,
                serde_json::json!({ "error": {
                    "code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                    "details": [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED" }],
                }}),
            );
        }
        lock(seen).accepted.push(Push {
            token: token.to_owned(),
            badge,
            collapse: collapse.to_owned(),
            title: m["notification"]["title"].as_str().map(str::to_owned),
            body: text.to_owned(),
        });
        return reply(
            200,
            serde_json::json!({ "name": format!("projects/{PROJECT}/messages/1") }),
        );
    }
    violation(format!("no such endpoint {path}"))
}

/// Points the gateway's push at the local providers.
fn use_providers(
    c: &mut qim_gateway::Config,
    p8: std::path::PathBuf,
    account: std::path::PathBuf,
    url: String,
    ca: std::path::PathBuf,
) {
    let n = &mut c.notify;
    n.apns_key_file = Some(p8);
    n.apns_key_id = KEY_ID.into();
    n.apns_team_id = TEAM.into();
    n.apns_url = url.clone();
    n.apns_sandbox_url = url.clone();
    n.fcm_service_account_file = Some(account);
    n.fcm_url = url;
    n.ca_file = Some(ca);
}

async fn register(client: &Client, provider: PushProvider, token: &str) {
    let app = match provider {
        PushProvider::Fcm => PROJECT,
        _ => BUNDLE,
    };
    client
        .register_push_token(provider, token.to_owned(), app.into(), false)
        .await
        .expect("register");
}

/// Waits until the gateway holds `n` sessions (a closed client's session
/// ends on the server a moment after `close` returns).
async fn sessions_open(gw: &TestGateway, n: usize) {
    poll_until(&format!("{n} sessions open"), || async {
        (gw.metric("qim_sessions_open").await as usize == n).then_some(())
    })
    .await;
}

fn push(token: &str, badge: u64, collapse: &str, title: Option<&str>, body: &str) -> Push {
    Push {
        token: token.to_owned(),
        badge,
        collapse: collapse.to_owned(),
        title: title.map(str::to_owned),
        body: body.to_owned(),
    }
}

/// A user with a phone online and a tablet offline, one muted
/// conversation and, later, one without preview: exactly the expected
/// pushes, each with the exact badge; the online phone gets none until it
/// goes offline; a provider failing twice delivers once; tokens the
/// providers call unregistered are removed.
async fn offline_devices_get_exact_pushes(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (providers, p8, account) = Providers::start(dir.path()).await;
    let (url, ca) = (providers.url.clone(), providers.ca.clone());
    let gw = TestGateway::start_on(backend, move |c| {
        use_providers(c, p8, account, url, ca);
        c.notify.retry_initial_ms = 10;
        c.notify.retry_max_ms = 50;
    })
    .await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let a = gw.client(&alice, "a-phone").await;
    let c = gw.client(&carol, "c-phone").await;
    let phone = gw.client(&bob, "phone").await;
    // Carol's conversation is muted: her message counts as unread but never
    // pushes nor counts in the badge.
    c.send(bob.clone(), "from carol".into())
        .await
        .expect("send");
    phone.next_message().await.expect("carol's message");
    phone
        .set_flags(Peer::User(carol.clone()), None, Some(true))
        .await
        .expect("mute");
    let (apns, fcm) = ("a1".repeat(32), format!("fcm:{}", "t".repeat(140)));
    register(&phone, PushProvider::Apns, &apns).await;
    let tablet = gw.client(&bob, "tablet").await;
    register(&tablet, PushProvider::Fcm, &fcm).await;
    tablet.close().await;
    sessions_open(&gw, 3).await;
    // The first push takes twice 503 before APNs accepts it.
    lock(&providers.flaky).insert(apns.clone(), 2);

    // Each push is awaited before the next send: a badge is the unread
    // total when the push is decided.
    let conv = format!("u:{alice}");
    a.send(bob.clone(), "hello 1".into()).await.expect("send");
    providers.wait_for(1).await;
    c.send(bob.clone(), "muted 1".into()).await.expect("send");
    a.send(bob.clone(), "hello 2".into()).await.expect("send");
    let want = vec![
        push(&fcm, 1, &conv, Some(&alice), "hello 1"),
        push(&fcm, 2, &conv, Some(&alice), "hello 2"),
    ];
    assert_eq!(providers.wait_for(2).await, want);
    // The phone was online for each: counted, not pushed.
    poll_until("the phone's skips counted", || async {
        (gw.metric("qim_pushes_not_sent_total{reason=\"online\"}")
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    assert!(
        gw.metric("qim_pushes_not_sent_total{reason=\"muted\"}")
            .await
            >= 1.0
    );

    // No preview for alice's conversation; the phone goes offline.
    phone
        .push_settings(
            None,
            vec![PreviewSetting {
                conversation: Peer::User(alice.clone()),
                preview: Some(false),
            }],
        )
        .await
        .expect("settings");
    phone.close().await;
    sessions_open(&gw, 2).await;
    a.send(bob.clone(), "secret".into()).await.expect("send");
    let got = providers.wait_for(4).await;
    let mut last: Vec<Push> = got[2..].to_vec();
    last.sort_by(|x, y| x.token.cmp(&y.token));
    assert_eq!(
        last,
        [
            push(&apns, 3, &conv, None, "New message"),
            push(&fcm, 3, &conv, None, "New message"),
        ]
    );
    assert_eq!(
        lock(&providers.seen).attempts.get(&apns),
        Some(&3),
        "two 503s, then accepted once"
    );

    // Invalid tokens: APNs 410 Unregistered, FCM UNREGISTERED; removed.
    let (dave, erin) = (unique("dave"), unique("erin"));
    let (dead_apns, dead_fcm) = ("d0".repeat(32), "fcm:dead".to_owned());
    for (user, provider, token) in [
        (&dave, PushProvider::Apns, &dead_apns),
        (&erin, PushProvider::Fcm, &dead_fcm),
    ] {
        lock(&providers.gone).insert(token.clone());
        let device = gw.client(user, "old-phone").await;
        register(&device, provider, token).await;
        device.close().await;
        sessions_open(&gw, 2).await;
        a.send(user.clone(), "are you there?".into())
            .await
            .expect("send");
    }
    poll_until("both invalid tokens reported", || async {
        (gw.metric("qim_pushes_not_sent_total{reason=\"token_unregistered\"}")
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    for user in [&dave, &erin] {
        let device = gw.client(user, "new-phone").await;
        assert!(
            device.push_tokens().await.expect("list").is_empty(),
            "{user}'s invalid token was removed"
        );
        device.close().await;
    }
    assert_eq!(providers.accepted().len(), 4, "nothing else was pushed");
    assert!(
        lock(&providers.seen).violations.is_empty(),
        "{:?}",
        lock(&providers.seen).violations
    );
    for client in [a, c] {
        client.close().await;
    }
    gw.stop().await;
}

on_both_backends!(offline_devices_get_exact_pushes);

/// Two nodes of one cluster: an offline device gets exactly one push per
/// message whichever node stored it, with the exact badge; once it is
/// online on one node, sends stored by the other push nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_each_message_is_pushed_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (providers, p8, account) = Providers::start(dir.path()).await;
    let (url, ca) = (providers.url.clone(), providers.ca.clone());
    let one = TestGateway::start_on(Backend::Cluster, move |c| {
        use_providers(c, p8, account, url, ca);
    })
    .await;
    let two = common::start_peer(&one).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let on_one = one.client(&alice, "a-phone").await;
    let on_two = two.client(&alice, "a-laptop").await;
    let phone = two.client(&bob, "phone").await;
    let apns = "b2".repeat(32);
    register(&phone, PushProvider::Apns, &apns).await;
    phone.close().await;
    sessions_open(&two, 1).await;

    let conv = format!("u:{alice}");
    on_one
        .send(bob.clone(), "stored by one".into())
        .await
        .expect("send");
    providers.wait_for(1).await;
    on_two
        .send(bob.clone(), "stored by two".into())
        .await
        .expect("send");
    providers.wait_for(2).await;

    // The phone comes back on node one; node two stores the next message.
    let phone = one.client(&bob, "phone").await;
    let online_before = one
        .metric("qim_pushes_not_sent_total{reason=\"online\"}")
        .await
        + two
            .metric("qim_pushes_not_sent_total{reason=\"online\"}")
            .await;
    on_two
        .send(bob.clone(), "while online".into())
        .await
        .expect("send");
    poll_until("the online phone's skip counted", || async {
        let online = one
            .metric("qim_pushes_not_sent_total{reason=\"online\"}")
            .await
            + two
                .metric("qim_pushes_not_sent_total{reason=\"online\"}")
                .await;
        (online > online_before).then_some(())
    })
    .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = phone.next_message().await.expect("bob's messages");
        got.push(common::text(&m));
    }
    assert_eq!(got, ["stored by one", "stored by two", "while online"]);
    assert_eq!(
        providers.accepted(),
        [
            push(&apns, 1, &conv, Some(&alice), "stored by one"),
            push(&apns, 2, &conv, Some(&alice), "stored by two"),
        ],
        "one push per message, none for the online phone"
    );
    assert_eq!(lock(&providers.seen).attempts.get(&apns), Some(&2));
    assert!(
        lock(&providers.seen).violations.is_empty(),
        "{:?}",
        lock(&providers.seen).violations
    );
    for client in [on_one, on_two, phone] {
        client.close().await;
    }
    two.stop().await;
    one.stop().await;
}
