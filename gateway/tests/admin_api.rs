//! The business backend's admin API with real SDK clients: a payment
//! result notified once on every device, sends as a user (their rules
//! apply) and as the system account, idempotency, batches with a result
//! per recipient, kicks whose reason reaches the SDK, presence and counts,
//! group administration, account deletion, and the OpenAPI document.

mod common;

use std::time::Duration;

use common::{Backend, PATIENCE, TestGateway, assert_quiet, stopped, take, text, unique};
use qim_sdk::{Error, KickReason};
use serde_json::{Value, json};

/// The JSON answer of a POST, asserting its status.
async fn post(gw: &TestGateway, path: &str, body: &Value, status: u16) -> Value {
    let r = gw.api_json(path, &body.to_string()).await;
    assert_eq!(r.status, status, "{path}: {}", r.body);
    serde_json::from_str(&r.body).expect("a JSON answer")
}

/// The JSON answer of a GET with the every-scope key, asserting 200.
async fn get(gw: &TestGateway, path: &str) -> Value {
    let (status, body) = gw.api_get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("a JSON answer")
}

/// The payment provider calls the business back; the business notifies the
/// user through the admin API, and the provider's retry of the callback
/// notifies nobody twice. Both online devices get it once; a device that
/// was offline gets it once when it connects.
async fn payment_result_reaches_every_device_once(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let alice = unique("alice");
    let phone = gw.client(&alice, "phone").await;
    let laptop = gw.client(&alice, "laptop").await;
    let notify = json!({
        "user": alice,
        "kind": "payment.result",
        "data": {"order": "o-17", "status": "paid", "amount": 1999},
        "idempotency_key": unique("stripe-evt-1-"),
    });
    let first = post(&gw, "/v1/notifications", &notify, 200).await;
    // The provider retries its callback: the same key, the same answer.
    let again = post(&gw, "/v1/notifications", &notify, 200).await;
    assert_eq!(first, again, "a repeated callback stores nothing new");
    for device in [&phone, &laptop] {
        let got = take(device, 1).await;
        let m = &got[0];
        assert_eq!(m.from_user, "system");
        assert_eq!(m.kind, "payment.result");
        assert_eq!(m.msg_id, first["msg_id"].as_str().expect("msg_id"));
        let data: Value = serde_json::from_slice(&m.body).expect("JSON body");
        assert_eq!(data["status"], "paid");
        assert_quiet(device, Duration::from_millis(300)).await;
    }
    let tablet = gw.client(&alice, "tablet").await;
    let got = take(&tablet, 1).await;
    assert_eq!(got[0].kind, "payment.result");
    assert_quiet(&tablet, Duration::from_millis(300)).await;
    for c in [phone, laptop, tablet] {
        c.close().await;
    }
}

/// A send as a user obeys that user's rules; the system account's does
/// not. The same key with another content is a conflict.
async fn sends_as_a_user_keep_its_rules(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let a = gw.client(&alice, "phone").await;
    let key = unique("k1-");
    let send =
        json!({"from": bob, "to_user": alice, "text": "hello from bob", "idempotency_key": key});
    let sent = post(&gw, "/v1/messages", &send, 200).await;
    let got = take(&a, 1).await;
    assert_eq!(
        (got[0].from_user.as_str(), text(&got[0]).as_str()),
        (bob.as_str(), "hello from bob")
    );
    assert_eq!(post(&gw, "/v1/messages", &send, 200).await, sent);
    let changed = json!({"from": bob, "to_user": alice, "text": "other", "idempotency_key": key});
    let refused = post(&gw, "/v1/messages", &changed, 409).await;
    assert_eq!(refused["error"]["code"], "idempotency_conflict");
    a.block(bob.clone()).await.expect("block");
    let blocked =
        json!({"from": bob, "to_user": alice, "text": "still?", "idempotency_key": unique("k2-")});
    let refused = post(&gw, "/v1/messages", &blocked, 403).await;
    assert_eq!(refused["error"]["code"], "blocked");
    let system = json!({"to_user": alice, "kind": "notice", "text": "maintenance at 2am", "idempotency_key": unique("n1-")});
    post(&gw, "/v1/messages", &system, 200).await;
    let got = take(&a, 1).await;
    assert_eq!(
        (got[0].from_user.as_str(), got[0].kind.as_str()),
        ("system", "notice")
    );
    assert_quiet(&a, Duration::from_millis(300)).await;
    a.close().await;
}

/// A batch answers each recipient; the same batch again stores nothing
/// new.
async fn batches_answer_each_recipient(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let users: Vec<String> = (0..3).map(|i| unique(&format!("u{i}-"))).collect();
    let clients = futures_util::future::join_all(users.iter().map(|u| gw.client(u, "phone"))).await;
    let mut to: Vec<Value> = users.iter().map(|u| json!(u)).collect();
    to.push(json!("not a valid id"));
    let batch = json!({"to_users": to, "text": "promo", "idempotency_key": unique("campaign-7-")});
    let answer = post(&gw, "/v1/messages/batch", &batch, 200).await;
    assert_eq!(
        (answer["sent"].as_u64(), answer["failed"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(answer["results"][3]["error"]["code"], "invalid_recipient");
    assert_eq!(answer["results"][3]["error"]["retryable"], false);
    assert_eq!(post(&gw, "/v1/messages/batch", &batch, 200).await, answer);
    for (client, result) in clients
        .iter()
        .zip(answer["results"].as_array().expect("results"))
    {
        let got = take(client, 1).await;
        assert_eq!(text(&got[0]), "promo");
        assert_eq!(
            got[0].msg_id,
            result["sent"]["msg_id"].as_str().expect("msg_id")
        );
        assert_quiet(client, Duration::from_millis(200)).await;
    }
    for c in clients {
        c.close().await;
    }
}

/// A kick of one device ends only that device's session, and its SDK
/// learns why; a kick of every device reaches each of them.
async fn kicks_tell_the_sdk_why(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let alice = unique("alice");
    let phone = gw.client(&alice, "phone").await;
    let laptop = gw.client(&alice, "laptop").await;
    let r = post(
        &gw,
        &format!("/v1/users/{alice}/kick?device=phone&reason=security"),
        &json!({}),
        200,
    )
    .await;
    assert_eq!(r["kicked"], 1);
    match stopped(&phone).await {
        Error::Kicked { reason, .. } => assert_eq!(reason, KickReason::Security),
        other => panic!("expected a kick for security, got {other:?}"),
    }
    // The laptop is still online: a notification reaches it.
    let notify =
        json!({"user": alice, "kind": "k", "data": 1, "idempotency_key": unique("after-kick-")});
    post(&gw, "/v1/notifications", &notify, 200).await;
    assert_eq!(take(&laptop, 1).await[0].kind, "k");
    let r = post(
        &gw,
        &format!("/v1/users/{alice}/kick?reason=account_disabled"),
        &json!({}),
        200,
    )
    .await;
    assert_eq!(r["kicked"], 1);
    match stopped(&laptop).await {
        Error::Kicked { reason, .. } => assert_eq!(reason, KickReason::AccountDisabled),
        other => panic!("expected a kick for a disabled account, got {other:?}"),
    }
    // The session's route leaves Redis as the session ends, after the close.
    common::poll_until("alice is offline after the kicks", || async {
        let presence = get(&gw, &format!("/v1/presence?user={alice}")).await;
        (presence["online"] == false).then_some(())
    })
    .await;
}

/// Presence of many users and the counts of the node and the cluster.
async fn presence_and_counts(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let phone = gw.client(&alice, "phone").await;
    let laptop = gw.client(&alice, "laptop").await;
    let answer = post(
        &gw,
        "/v1/presence/query",
        &json!({"users": [alice, bob]}),
        200,
    )
    .await;
    assert_eq!(answer[0]["online"], true);
    assert_eq!(answer[0]["devices"], json!(["laptop", "phone"]));
    assert_eq!(answer[1]["online"], false);
    let counts = get(&gw, "/v1/counts").await;
    assert!(counts["nodes"].as_u64() >= Some(1), "{counts}");
    assert!(
        counts["this_node"]["online_users"].as_u64() >= Some(1),
        "{counts}"
    );
    assert!(
        counts["this_node"]["connections"].as_u64() >= Some(2),
        "{counts}"
    );
    // The cluster's sums come from the node registry, which each node
    // refreshes with its heartbeat.
    common::poll_until("the cluster counts alice's connections", || async {
        let counts = get(&gw, "/v1/counts").await;
        (counts["online_users"].as_u64() >= Some(1) && counts["connections"].as_u64() >= Some(2))
            .then_some(())
    })
    .await;
    phone.close().await;
    laptop.close().await;
}

/// The business creates a group for an owner, posts in it as a member,
/// mutes a member (whose SDK send is then refused), removes one (who stops
/// receiving) and dissolves it.
async fn groups_administered_for_the_business(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| c.groups.default_adds = "anyone".into()).await;
    let (owner, m1, m2) = (unique("owner"), unique("m1-"), unique("m2-"));
    let group = unique("g");
    let c1 = gw.client(&m1, "phone").await;
    let c2 = gw.client(&m2, "phone").await;
    let created = post(
        &gw,
        "/v1/groups",
        &json!({"group": group, "owner": owner, "name": "Team", "members": [m1, m2]}),
        200,
    )
    .await;
    assert_eq!(
        (created["member_count"].as_u64(), created["owner"].as_str()),
        (Some(3), Some(owner.as_str()))
    );
    let taken = post(
        &gw,
        "/v1/groups",
        &json!({"group": group, "owner": owner}),
        409,
    )
    .await;
    assert_eq!(taken["error"]["code"], "already_exists");
    let send = json!({"from": owner, "to_group": group, "text": "welcome", "idempotency_key": unique("w1-")});
    post(&gw, "/v1/messages", &send, 200).await;
    for c in [&c1, &c2] {
        assert_eq!(text(&take(c, 1).await[0]), "welcome");
    }
    post(
        &gw,
        &format!("/v1/groups/{group}/mute"),
        &json!({"user": m1, "muted": true}),
        200,
    )
    .await;
    match c1.send_group(group.clone(), "may I?".into()).await {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, qim_sdk::ErrorCode::Muted),
        other => panic!("a muted member's send: {other:?}"),
    }
    let removed = post(
        &gw,
        &format!("/v1/groups/{group}/members/remove"),
        &json!({"users": [m2]}),
        200,
    )
    .await;
    assert_eq!(removed["member_count"], 2);
    let info = get(&gw, &format!("/v1/groups/{group}")).await;
    assert_eq!(info["member_count"], 2);
    post(
        &gw,
        &format!("/v1/groups/{group}/dissolve"),
        &json!({}),
        200,
    )
    .await;
    let gone = gw.api_get(&format!("/v1/groups/{group}")).await;
    assert_eq!(gone.0, 404, "{}", gone.1);
    let after = json!({"from": owner, "to_group": group, "text": "anyone?", "idempotency_key": unique("w2-")});
    let refused = post(&gw, "/v1/messages", &after, 400).await;
    assert_eq!(refused["error"]["code"], "invalid_recipient");
    // m2 was removed before the dissolve: it got nothing after "welcome"
    // but the removal's own notice, if any; never the later traffic.
    let late = tokio::time::timeout(Duration::from_millis(300), c2.next_message()).await;
    if let Ok(Some(m)) = late {
        assert!(
            m.event.is_some(),
            "only events after the removal, got {m:?}"
        );
    }
    c1.close().await;
    c2.close().await;
}

/// A disabled account's live sessions end with the reason, its logins are
/// refused with `USER_DISABLED`, and it logs in again once enabled.
async fn disabled_accounts_cannot_log_in(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let alice = unique("alice");
    let phone = gw.client(&alice, "phone").await;
    let r = post(&gw, "/v1/users", &json!({"users": [alice]}), 200).await;
    assert_eq!(r["registered"], 1);
    assert_eq!(
        post(&gw, "/v1/users", &json!({"users": [alice]}), 200).await["registered"],
        0
    );
    let r = post(&gw, &format!("/v1/users/{alice}/disable"), &json!({}), 200).await;
    assert_eq!(r["disabled"], true);
    match stopped(&phone).await {
        Error::Kicked { reason, .. } => assert_eq!(reason, KickReason::AccountDisabled),
        other => panic!("expected a kick for a disabled account, got {other:?}"),
    }
    match qim_sdk::Client::connect(gw.client_config(&alice, "laptop")).await {
        Err(Error::Rejected {
            code, retryable, ..
        }) => {
            assert_eq!((code, retryable), (qim_sdk::ErrorCode::UserDisabled, false));
        }
        other => panic!(
            "a disabled account's login: {:?}",
            other.map(|_| "connected")
        ),
    }
    assert_eq!(
        get(&gw, &format!("/v1/users/{alice}")).await["disabled"],
        true
    );
    post(&gw, &format!("/v1/users/{alice}/enable"), &json!({}), 200).await;
    let laptop = gw.client(&alice, "laptop").await;
    laptop.close().await;
    let missing = gw.api_get(&format!("/v1/users/{}", unique("nobody"))).await;
    assert_eq!(missing.0, 404, "{}", missing.1);
}

/// A broadcast reaches every registered user once (the online ones live),
/// paced and with its progress visible; started again with the same id
/// after a restart, it stores nothing twice and nobody receives it twice.
async fn broadcast_reaches_every_registered_user_once(backend: Backend) {
    // The cluster backend's stores claim each copy's key with a CQL
    // lightweight transaction: fewer users keep the test short there.
    let total = match backend {
        Backend::Embedded => 10_000,
        Backend::Cluster => 1_000,
    };
    let gw = TestGateway::start_on(backend, |c| {
        c.backend.broadcast_per_second = 1_000_000;
        c.backend.broadcast_page = 1_000;
    })
    .await;
    let prefix = unique("bc");
    let users: Vec<String> = (0..total).map(|i| format!("{prefix}-{i:05}")).collect();
    for chunk in users.chunks(1_000) {
        let r = post(&gw, "/v1/users", &json!({"users": chunk}), 200).await;
        assert_eq!(r["registered"].as_u64(), Some(chunk.len() as u64));
    }
    let online: Vec<&String> = users.iter().step_by(total / 20).collect();
    let clients =
        futures_util::future::join_all(online.iter().map(|u| gw.client(u, "phone"))).await;
    let id = unique("launch");
    let start = json!({"id": id, "kind": "announcement", "text": "we launched"});
    let started = post(&gw, "/v1/broadcasts", &start, 202).await;
    assert_eq!(started["state"], "running");
    let done = common::poll_until("the broadcast finishes", || async {
        let p = get(&gw, &format!("/v1/broadcasts/{id}")).await;
        (p["state"] == "done").then_some(p)
    })
    .await;
    assert_eq!(
        (
            done["reached"].as_u64(),
            done["sent"].as_u64(),
            done["failed"].as_u64()
        ),
        (Some(total as u64), Some(total as u64), Some(0)),
        "{done}"
    );
    assert_eq!(done["cursor"], json!(users.last()));
    // Each recipient's copy is its own post (its own msg_id).
    let mut first_id = None;
    for c in &clients {
        let got = take(c, 1).await;
        assert_eq!(
            (got[0].kind.as_str(), got[0].from_user.as_str()),
            ("announcement", "system")
        );
        first_id.get_or_insert_with(|| got[0].msg_id.clone());
        assert_quiet(c, Duration::from_millis(100)).await;
    }
    let first_id = first_id.expect("online users");
    // The same id again: its progress, nothing sent.
    assert_eq!(
        post(&gw, "/v1/broadcasts", &start, 200).await["state"],
        "done"
    );
    for c in clients {
        c.close().await;
    }
    // After a restart this node has forgotten it: it runs again, and every
    // copy is found stored already.
    let gw = gw.restart().await;
    let again = post(&gw, "/v1/broadcasts", &start, 202).await;
    assert_eq!(again["state"], "running");
    let watcher = gw.client(online[0], "phone").await;
    let done = common::poll_until("the resumed broadcast finishes", || async {
        let p = get(&gw, &format!("/v1/broadcasts/{id}")).await;
        (p["state"] == "done").then_some(p)
    })
    .await;
    assert_eq!(done["sent"].as_u64(), Some(total as u64), "{done}");
    // A new client reads the inbox from its start: the one copy stored by
    // the first run, nothing stored twice.
    let got = take(&watcher, 1).await;
    assert_eq!((got[0].seq, got[0].msg_id.as_str()), (1, first_id.as_str()));
    assert_quiet(&watcher, Duration::from_millis(300)).await;
    watcher.close().await;
}

/// Deleting an account: refused without a key, with a lesser scope, for a
/// bad id and an unknown user (typed); a live session ends with the reason
/// `ACCOUNT_DELETED`, the token can no longer log in (`USER_DELETED`), the
/// friend's contacts and conversation list no longer show the user, the id
/// is not registered again, and a repeated delete succeeds.
async fn deleted_accounts_are_gone_for_everyone(backend: Backend) {
    use common::{ADMIN_SECRET, MESSAGES_SECRET, READ_SECRET, http_request};
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let api = gw.api.expect("api");
    let (alice, bob) = (unique("alice"), unique("bob"));
    post(&gw, "/v1/users", &json!({"users": [alice, bob]}), 200).await;
    let phone = gw.client(&alice, "phone").await;
    let pal = gw.client(&bob, "phone").await;
    phone
        .request_friend(bob.clone(), "hi".into())
        .await
        .expect("request");
    let contacts = pal.accept_friend(alice.clone()).await.expect("accept");
    assert!(contacts.friends.contains(&alice));
    phone.send(bob.clone(), "hello".into()).await.expect("send");
    let got = take(&pal, 1).await;
    assert_eq!(got[0].from_user, alice);
    let path = format!("/v1/users/{alice}");
    let code = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).expect("JSON");
        v["error"]["code"].as_str().expect("code").to_owned()
    };
    for (key, status, want) in [
        (None, 401, "unauthorized"),
        (Some(READ_SECRET), 403, "forbidden"),
        (Some(MESSAGES_SECRET), 403, "forbidden"),
    ] {
        let r = http_request(api, "DELETE", &path, key).await;
        assert_eq!((r.status, code(&r.body)), (status, want.into()), "{key:?}");
    }
    let r = http_request(api, "DELETE", "/v1/users/bad%20id", Some(ADMIN_SECRET)).await;
    assert_eq!((r.status, code(&r.body)), (400, "bad_request".into()));
    let nobody = format!("/v1/users/{}", unique("nobody"));
    let r = http_request(api, "DELETE", &nobody, Some(ADMIN_SECRET)).await;
    assert_eq!((r.status, code(&r.body)), (404, "not_found".into()));
    assert_eq!(
        get(&gw, &path).await["deleted"],
        false,
        "the refusals changed nothing"
    );

    let r = http_request(api, "DELETE", &path, Some(ADMIN_SECRET)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(done["peers"], 1);
    match stopped(&phone).await {
        Error::Kicked { reason, .. } => assert_eq!(reason, KickReason::AccountDeleted),
        other => panic!("expected a kick for a deleted account, got {other:?}"),
    }
    match qim_sdk::Client::connect(gw.client_config(&alice, "laptop")).await {
        Err(Error::Rejected {
            code, retryable, ..
        }) => assert_eq!((code, retryable), (qim_sdk::ErrorCode::UserDeleted, false)),
        other => panic!(
            "a deleted account's login: {:?}",
            other.map(|_| "connected")
        ),
    }
    let contacts = pal.contacts().await.expect("contacts");
    assert!(!contacts.friends.contains(&alice), "{contacts:?}");
    let list = pal.conversations(None, 100).await.expect("list");
    assert!(
        list.conversations
            .iter()
            .all(|c| c.peer != qim_sdk::Peer::User(alice.clone())),
        "the friend's list still shows the deleted user"
    );
    let view = get(&gw, &path).await;
    assert_eq!(
        (&view["deleted"], &view["disabled"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(
        post(&gw, "/v1/users", &json!({"users": [alice]}), 200).await["registered"],
        0,
        "a deleted id is not registered again"
    );
    let again = http_request(api, "DELETE", &path, Some(ADMIN_SECRET)).await;
    assert_eq!(again.status, 200, "a repeat finishes: {}", again.body);
    pal.close().await;
}

on_both_backends!(
    deleted_accounts_are_gone_for_everyone,
    disabled_accounts_cannot_log_in,
    broadcast_reaches_every_registered_user_once,
    payment_result_reaches_every_device_once,
    sends_as_a_user_keep_its_rules,
    batches_answer_each_recipient,
    kicks_tell_the_sdk_why,
    presence_and_counts,
    groups_administered_for_the_business,
);

/// The OpenAPI document is served without a key and names every route.
#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let gw = TestGateway::start().await;
    let api = gw.api.expect("api");
    let r = tokio::time::timeout(
        PATIENCE,
        common::http_request(api, "GET", "/v1/openapi.json", None),
    )
    .await
    .expect("in time");
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.body).expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/v1/nodes",
        "/v1/counts",
        "/v1/presence",
        "/v1/presence/query",
        "/v1/users/{user}/kick",
        "/v1/users/{user}/revoke-tokens",
        "/v1/messages",
        "/v1/messages/batch",
        "/v1/notifications",
        "/v1/groups",
        "/v1/groups/{group}",
        "/v1/groups/{group}/members",
        "/v1/groups/{group}/members/remove",
        "/v1/groups/{group}/mute",
        "/v1/groups/{group}/dissolve",
        "/v1/broadcasts",
        "/v1/broadcasts/{id}",
        "/v1/users",
        "/v1/users/{user}",
        "/v1/users/{user}/disable",
        "/v1/users/{user}/enable",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(
        doc["paths"]["/v1/users/{user}"]["delete"].is_object(),
        "DELETE /v1/users/{{user}} is documented"
    );
    assert!(doc["components"]["securitySchemes"]["admin_key"].is_object());
    // Every id in a path is documented with the alphabet the API checks,
    // so a client (or a fuzzer) can tell a valid one before it asks.
    let mut ids = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" {
                    ids += 1;
                    assert_eq!(
                        param["schema"]["pattern"], "^[A-Za-z0-9._@-]{1,64}$",
                        "{method} {path}: {}",
                        param["name"]
                    );
                }
            }
        }
    }
    assert!(ids >= 12, "{ids} path parameters");
}
