//! Webhooks against a real local HTTP server that checks every request's
//! signature (`x-qim-timestamp`, `x-qim-signature`): after-send and
//! presence events arrive signed; a webhook that is down does not delay
//! chat and its events arrive once it is back, across a gateway restart;
//! the before-send hook refuses, rewrites and times out under both failure
//! policies; the before-offline-push hook cancels and rewrites; and a
//! hostile endpoint (huge, slow, garbage answers) neither stalls nor
//! crashes the gateway.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Bystanders, PATIENCE, TestGateway, poll_until, take, text, unique};
use qim_gateway::Config;
use qim_sdk::{Error, ErrorCode, PushProvider};
use serde_json::{Value, json};

const SECRET: &str = "a webhook secret of at least thirty-two bytes";

/// What the endpoint saw.
#[derive(Default)]
struct Seen {
    /// Events POSTed to /events, in arrival order.
    events: Vec<Value>,
    /// Notifications POSTed to /bridge (the push bridge).
    pushes: Vec<Value>,
    /// Requests whose signature did not verify.
    bad_signatures: usize,
}

struct Endpoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    changed: tokio::sync::watch::Sender<u64>,
}

type Shared = (Arc<Mutex<Seen>>, tokio::sync::watch::Sender<u64>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Verifies the signature as a business backend would: HMAC-SHA256 of
/// "<timestamp>.<body>", hex, compared in constant time; a timestamp
/// within five minutes.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("x-qim-timestamp"), header("x-qim-signature")) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<u64>() else {
        return false;
    };
    if qim_gateway::auth::unix_now().abs_diff(ts_num) > 300 {
        return false;
    }
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut message = format!("{ts}.").into_bytes();
    message.extend_from_slice(body);
    ring::hmac::verify(&key, &message, &tag).is_ok()
}

fn checked(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    if !verified(headers, body) {
        lock(&shared.0).bad_signatures += 1;
        shared.1.send_modify(|n| *n += 1);
        return None;
    }
    serde_json::from_slice(body).ok()
}

fn answer(v: Value) -> Response {
    (StatusCode::OK, v.to_string()).into_response()
}

async fn events(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(event) = checked(&shared, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    lock(&shared.0).events.push(event);
    shared.1.send_modify(|n| *n += 1);
    answer(json!({}))
}

async fn bridge(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(push) = checked(&shared, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    lock(&shared.0).pushes.push(push);
    shared.1.send_modify(|n| *n += 1);
    answer(json!({}))
}

/// An answer that never comes.
async fn never() -> Response {
    std::future::pending::<()>().await;
    StatusCode::OK.into_response()
}

/// The before-send hook: acts on the text of the send.
async fn before_send(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(request) = checked(&shared, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    assert_eq!(request["type"], "before_send");
    let text = request["data"]["text"].as_str().unwrap_or("").to_owned();
    if text.contains("refuse") {
        return answer(json!({"action": "refuse", "reason": "not here"}));
    }
    if text.contains("rewrite") {
        return answer(json!({"action": "rewrite", "text": "rewritten"}));
    }
    hostile(&text)
        .await
        .unwrap_or_else(|| answer(json!({"action": "allow"})))
}

/// What a hostile endpoint answers to a text naming an attack.
async fn hostile(text: &str) -> Option<Response> {
    Some(match text {
        "slow" => never().await,
        "garbage" => (StatusCode::OK, "<html>not json").into_response(),
        "bad action" => answer(json!({"action": "explode"})),
        "empty change" => answer(json!({"action": "rewrite"})),
        "server error" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "huge declared" => (StatusCode::OK, vec![b' '; 4 << 20]).into_response(),
        "huge stream" => {
            // An endless answer with no length: the reader must stop.
            let chunks = futures_util::stream::repeat_with(|| {
                Ok::<_, Infallible>(Bytes::from(vec![b' '; 64 << 10]))
            });
            Response::new(Body::from_stream(chunks))
        }
        _ => return None,
    })
}

/// The before-push hook: acts on the notification's text.
async fn before_push(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(request) = checked(&shared, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let text = request["data"]["body"].as_str().unwrap_or("").to_owned();
    if text.contains("cancel") {
        return answer(json!({"action": "cancel"}));
    }
    if text.contains("rewrite") {
        return answer(json!({"action": "rewrite", "title": "Chat", "text": "New message"}));
    }
    answer(json!({"action": "allow"}))
}

impl Endpoint {
    /// Serves on `addr` (port 0: any).
    async fn serve(addr: SocketAddr) -> Endpoint {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared: Shared = (Arc::clone(&seen), changed.clone());
        let app = axum::Router::new()
            .route("/events", axum::routing::post(events))
            .route("/bridge", axum::routing::post(bridge))
            .route("/never", axum::routing::post(never))
            .route("/before-send", axum::routing::post(before_send))
            .route("/before-push", axum::routing::post(before_push))
            .with_state(shared);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Endpoint {
            addr,
            seen,
            changed,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `check` holds of what the endpoint saw.
    async fn wait<T>(&self, what: &str, mut check: impl FnMut(&Seen) -> Option<T>) -> T {
        let mut changed = self.changed.subscribe();
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(found) = check(&lock(&self.seen)) {
                    return found;
                }
                if changed.changed().await.is_err() {
                    panic!("the endpoint stopped");
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting: {what}"))
    }

    /// The after-send events' texts, once `n` arrived.
    async fn after_sends(&self, n: usize) -> Vec<Value> {
        self.wait(&format!("{n} after-send events"), |seen| {
            let found: Vec<Value> = seen
                .events
                .iter()
                .filter(|e| e["type"] == "after_send")
                .cloned()
                .collect();
            (found.len() >= n).then_some(found)
        })
        .await
    }
}

/// A file with [`SECRET`], kept as long as the returned directory.
fn secret_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("webhook-secret");
    std::fs::write(&path, SECRET).expect("write secret");
    (dir, path)
}

fn fast_retries(c: &mut Config) {
    c.webhooks.retry_initial_ms = 10;
    c.webhooks.retry_max_ms = 100;
}

/// A send's refusal code.
fn refused(result: Result<qim_sdk::SendReceipt, Error>) -> (ErrorCode, String) {
    match result {
        Err(Error::Rejected {
            code,
            message,
            retryable: false,
        }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn sessions_open(gw: &TestGateway, n: usize) {
    poll_until(&format!("{n} sessions open"), || async {
        (gw.metric("qim_sessions_open").await as usize == n).then_some(())
    })
    .await;
}

/// Messages (in order), presence changes and group changes reach the
/// events URL, each signed.
#[tokio::test]
async fn after_send_and_presence_events_arrive_signed() {
    let endpoint = Endpoint::serve("127.0.0.1:0".parse().expect("addr")).await;
    let (_keep, secret) = secret_file();
    let url = endpoint.url("/events");
    let gw = TestGateway::start_with(move |c| {
        c.webhooks.events_url = Some(url);
        c.webhooks.secret_file = Some(secret);
    })
    .await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let a = gw.client(&alice, "phone").await;
    let b = gw.client(&bob, "phone").await;
    for i in 0..3 {
        a.send(bob.clone(), format!("hello {i}"))
            .await
            .expect("send");
    }
    take(&b, 3).await;
    let sent = endpoint.after_sends(3).await;
    let texts: Vec<&str> = sent
        .iter()
        .filter_map(|e| e["data"]["text"].as_str())
        .collect();
    assert_eq!(texts, ["hello 0", "hello 1", "hello 2"]);
    let first = &sent[0];
    assert_eq!(first["data"]["from"], alice.as_str());
    assert_eq!(first["data"]["to"]["user"], bob.as_str());
    assert_eq!(first["data"]["kind"], "text");
    assert!(
        first["data"]["msg_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(first["id"].as_str().map(str::len), Some(32));

    let group = unique("team");
    a.create_group(group.clone(), "Team".into(), vec![bob.clone()])
        .await
        .expect("create");
    let created = endpoint
        .wait("the group's event", |seen| {
            seen.events
                .iter()
                .find(|e| e["type"] == "group_changed" && e["data"]["group"] == group.as_str())
                .cloned()
        })
        .await;
    assert_eq!(
        (
            created["data"]["op"].as_str(),
            created["data"]["by"].as_str()
        ),
        (Some("create"), Some(alice.as_str()))
    );
    let named = |field: &str| {
        created["data"][field]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        named("added").contains(&json!(bob)) || named("invited").contains(&json!(bob)),
        "{created}"
    );

    b.close().await;
    endpoint
        .wait("bob's offline event", |seen| {
            seen.events
                .iter()
                .find(|e| e["type"] == "user_offline" && e["data"]["user"] == bob.as_str())
                .cloned()
        })
        .await;
    let online: Vec<String> = lock(&endpoint.seen)
        .events
        .iter()
        .filter(|e| e["type"] == "user_online")
        .filter_map(|e| e["data"]["user"].as_str().map(str::to_owned))
        .collect();
    assert!(
        online.contains(&alice) && online.contains(&bob),
        "{online:?}"
    );
    assert_eq!(lock(&endpoint.seen).bad_signatures, 0);
    assert!(
        gw.metric("qim_webhook_calls_total{event=\"after_send\",outcome=\"delivered\"}")
            .await
            >= 3.0
    );
    a.close().await;
    gw.stop().await;
}

/// With the events URL unreachable, sends are acknowledged and delivered
/// at once; the events wait on disk through a restart of the gateway and
/// arrive in order, once, when the URL answers again.
#[tokio::test]
async fn a_down_webhook_delays_no_chat_and_its_events_survive_a_restart() {
    // A port nothing listens on until the endpoint comes back.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (_keep, secret) = secret_file();
    let url = format!("http://{addr}/events");
    let gw = TestGateway::start_with(move |c| {
        c.webhooks.events_url = Some(url);
        c.webhooks.secret_file = Some(secret);
        fast_retries(c);
    })
    .await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let a = gw.client(&alice, "phone").await;
    let b = gw.client(&bob, "phone").await;
    for i in 0..5 {
        let started = tokio::time::Instant::now();
        a.send(bob.clone(), format!("queued {i}"))
            .await
            .expect("send");
        let got = take(&b, 1).await;
        assert_eq!(text(&got[0]), format!("queued {i}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a down webhook delayed a send: {:?}",
            started.elapsed()
        );
    }
    poll_until("delivery attempts failing", || async {
        (gw.metric("qim_webhook_calls_total{event=\"user_online\",outcome=\"unreachable\"}")
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    a.close().await;
    b.close().await;
    let gw = gw.restart().await;
    assert!(gw.metric("qim_webhook_queue").await >= 5.0);

    let endpoint = Endpoint::serve(addr).await;
    let sent = endpoint.after_sends(5).await;
    let texts: Vec<&str> = sent
        .iter()
        .filter_map(|e| e["data"]["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["queued 0", "queued 1", "queued 2", "queued 3", "queued 4"]
    );
    // The offline events of the sessions the restart ended were queued too.
    endpoint
        .wait("both offline events", |seen| {
            let offline = seen
                .events
                .iter()
                .filter(|e| e["type"] == "user_offline")
                .count();
            (offline >= 2).then_some(())
        })
        .await;
    poll_until("the queue empty", || async {
        (gw.metric("qim_webhook_queue").await == 0.0).then_some(())
    })
    .await;
    let ids: std::collections::HashSet<String> = lock(&endpoint.seen)
        .events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        ids.len(),
        lock(&endpoint.seen).events.len(),
        "no event twice"
    );
    gw.stop().await;
}

/// The before-send hook under `failure_policy`: refusals reach the sender
/// with their reason, rewrites reach the recipient, and a hook that does
/// not answer in time or answers garbage lets the send through (open) or
/// refuses it (closed).
async fn before_send_under(policy: &str) {
    let endpoint = Endpoint::serve("127.0.0.1:0".parse().expect("addr")).await;
    let (_keep, secret) = secret_file();
    let url = endpoint.url("/before-send");
    let policy_owned = policy.to_owned();
    let gw = TestGateway::start_with(move |c| {
        c.webhooks.before_send_url = Some(url);
        c.webhooks.secret_file = Some(secret);
        c.webhooks.hook_timeout_ms = 300;
        c.webhooks.failure_policy = policy_owned;
    })
    .await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let a = gw.client(&alice, "phone").await;
    let b = gw.client(&bob, "phone").await;

    a.send(bob.clone(), "fine".into()).await.expect("allowed");
    let (code, message) = refused(a.send(bob.clone(), "please refuse".into()).await);
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::RefusedByBusiness, "not here")
    );
    a.send(bob.clone(), "please rewrite".into())
        .await
        .expect("rewritten");
    let got = take(&b, 2).await;
    assert_eq!([text(&got[0]), text(&got[1])], ["fine", "rewritten"]);

    for failing in ["slow", "garbage", "server error"] {
        let started = tokio::time::Instant::now();
        let result = a.send(bob.clone(), failing.into()).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{failing} stalled the send"
        );
        if policy == "open" {
            result.expect("fail-open lets it through");
            assert_eq!(text(&take(&b, 1).await[0]), failing);
        } else {
            assert_eq!(refused(result).0, ErrorCode::RefusedByBusiness);
        }
    }
    for outcome in [
        "allow",
        "refuse",
        "rewrite",
        "timeout",
        "invalid",
        "error_status",
    ] {
        let name =
            format!("qim_webhook_calls_total{{event=\"before_send\",outcome=\"{outcome}\"}}");
        assert_eq!(gw.metric(&name).await, 1.0, "{name}");
    }
    assert_eq!(lock(&endpoint.seen).bad_signatures, 0);
    a.close().await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn before_send_fail_open() {
    before_send_under("open").await;
}

#[tokio::test]
async fn before_send_fail_closed() {
    before_send_under("closed").await;
}

/// The before-push hook cancels one notification and rewrites another;
/// the third goes out as decided (through the push bridge, signed the
/// same way).
#[tokio::test]
async fn before_offline_push_cancels_and_rewrites() {
    let endpoint = Endpoint::serve("127.0.0.1:0".parse().expect("addr")).await;
    let (_keep, secret) = secret_file();
    let (hook, bridge) = (endpoint.url("/before-push"), endpoint.url("/bridge"));
    let gw = TestGateway::start_with(move |c| {
        c.webhooks.before_push_url = Some(hook);
        c.webhooks.secret_file = Some(secret.clone());
        c.notify.bridge_url = Some(bridge);
        c.notify.bridge_secret_file = Some(secret);
    })
    .await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let a = gw.client(&alice, "phone").await;
    let tablet = gw.client(&bob, "tablet").await;
    tablet
        .register_push_token(
            PushProvider::Bridge,
            "bridge-token-1".into(),
            "com.example".into(),
            false,
        )
        .await
        .expect("register");
    tablet.close().await;
    sessions_open(&gw, 1).await;

    a.send(bob.clone(), "please cancel".into())
        .await
        .expect("send");
    poll_until("the push cancelled", || async {
        (gw.metric("qim_pushes_not_sent_total{reason=\"cancelled_by_hook\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    a.send(bob.clone(), "please rewrite".into())
        .await
        .expect("send");
    let first = endpoint
        .wait("the rewritten push", |seen| seen.pushes.first().cloned())
        .await;
    assert_eq!(
        (first["title"].as_str(), first["body"].as_str()),
        (Some("Chat"), Some("New message"))
    );
    assert_eq!(first["token"], "bridge-token-1");
    a.send(bob.clone(), "plain".into()).await.expect("send");
    let second = endpoint
        .wait("the plain push", |seen| seen.pushes.get(1).cloned())
        .await;
    assert_eq!(second["body"], "plain");
    assert_eq!(lock(&endpoint.seen).pushes.len(), 2);
    assert_eq!(lock(&endpoint.seen).bad_signatures, 0);
    for outcome in ["cancel", "rewrite", "allow"] {
        let name =
            format!("qim_webhook_calls_total{{event=\"before_push\",outcome=\"{outcome}\"}}");
        assert_eq!(gw.metric(&name).await, 1.0, "{name}");
    }
    a.close().await;
    gw.stop().await;
}

/// An attacker's endpoint (or a broken one): answers of megabytes, with
/// and without a length, that never end, that never come, garbage and
/// made-up actions, for the before-send hook; an events URL that never
/// answers, with a small queue. Sends are answered within the hook's
/// bound, the bystanders' chat goes on in order, the queue drops what does
/// not fit (counted), and the gateway stops cleanly.
#[tokio::test]
async fn a_hostile_webhook_cannot_stall_or_crash_the_gateway() {
    let endpoint = Endpoint::serve("127.0.0.1:0".parse().expect("addr")).await;
    let (_keep, secret) = secret_file();
    let (hook, events) = (endpoint.url("/before-send"), endpoint.url("/never"));
    let gw = TestGateway::start_with(move |c| {
        c.webhooks.before_send_url = Some(hook);
        c.webhooks.events_url = Some(events);
        c.webhooks.secret_file = Some(secret);
        c.webhooks.hook_timeout_ms = 300;
        c.webhooks.timeout_ms = 200;
        c.webhooks.queue = 8;
        fast_retries(c);
    })
    .await;
    let bystanders = Bystanders::start(&gw).await;
    let (mallory, bob) = (unique("mallory"), unique("bob"));
    let m = gw.client(&mallory, "phone").await;
    let b = gw.client(&bob, "phone").await;
    let attacks = [
        "huge declared",
        "huge stream",
        "slow",
        "garbage",
        "bad action",
        "empty change",
    ];
    for attack in attacks {
        let started = tokio::time::Instant::now();
        m.send(bob.clone(), attack.into())
            .await
            .unwrap_or_else(|e| panic!("{attack}: fail-open lets it through: {e}"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{attack} stalled the send"
        );
        assert_eq!(text(&take(&b, 1).await[0]), attack);
    }
    let count = |outcome: &str| {
        format!("qim_webhook_calls_total{{event=\"before_send\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(gw.metric(&count("too_large")).await, 2.0);
    assert_eq!(gw.metric(&count("timeout")).await, 1.0);
    assert_eq!(gw.metric(&count("invalid")).await, 3.0);
    poll_until("events dropped for a full queue", || async {
        (gw.metric("qim_webhook_dropped_total{reason=\"queue_full\"}")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert!(
        gw.metric("qim_webhook_calls_total{event=\"user_online\",outcome=\"timeout\"}")
            .await
            >= 1.0
    );
    bystanders.finish().await;
    m.close().await;
    b.close().await;
    gw.stop().await;
}
