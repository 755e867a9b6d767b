//! An attacker's tests of the admin API: every route without a key, with a
//! key of another scope, and with malformed input gets its typed refusal
//! (JSON `{"error": {"code", "message"}}`), while a bystander pair chats
//! unharmed; a flood of bad requests changes nothing stored.

mod common;

use common::{
    ADMIN_SECRET, Bystanders, MESSAGES_SECRET, READ_SECRET, TestGateway, http_json, http_request,
};
use serde_json::Value;

/// A route: method, path, the scope it needs, a valid body (POST), and
/// malformed requests with the code each must get.
struct Route {
    method: &'static str,
    path: &'static str,
    scope: &'static str,
    body: Option<&'static str>,
    bad: Vec<(String, Option<&'static str>, &'static str)>,
}

fn routes() -> Vec<Route> {
    let post = |path: &'static str, scope, body, bad| Route {
        method: "POST",
        path,
        scope,
        body: Some(body),
        bad,
    };
    let get = |path: &'static str, scope, bad| Route {
        method: "GET",
        path,
        scope,
        body: None,
        bad,
    };
    let at = |p: &str| p.to_owned();
    vec![
        get("/v1/nodes", "read", vec![]),
        get("/v1/counts", "read", vec![]),
        get(
            "/v1/presence?user=alice",
            "read",
            vec![
                (at("/v1/presence?user=bad%20id"), None, "bad_request"),
                (at("/v1/presence"), None, "bad_request"),
            ],
        ),
        post(
            "/v1/presence/query",
            "read",
            r#"{"users":["alice"]}"#,
            vec![
                (
                    at("/v1/presence/query"),
                    Some(r#"{"users":"alice"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/presence/query"),
                    Some(r#"{"users":["a b"]}"#),
                    "bad_request",
                ),
                (at("/v1/presence/query"), Some("not json"), "bad_request"),
            ],
        ),
        post(
            "/v1/users/alice/kick",
            "sessions",
            "{}",
            vec![
                (at("/v1/users/bad%20id/kick"), Some("{}"), "bad_request"),
                (
                    at("/v1/users/alice/kick?reason=boredom"),
                    Some("{}"),
                    "bad_request",
                ),
                (
                    at("/v1/users/alice/kick?device=a%20b"),
                    Some("{}"),
                    "bad_request",
                ),
            ],
        ),
        post(
            "/v1/users/alice/revoke-tokens",
            "sessions",
            "{}",
            vec![(
                at("/v1/users/bad%20id/revoke-tokens"),
                Some("{}"),
                "bad_request",
            )],
        ),
        post(
            "/v1/messages",
            "messages",
            r#"{"to_user":"alice","text":"hi","idempotency_key":"h1"}"#,
            vec![
                (
                    at("/v1/messages"),
                    Some(r#"{"to_user":"alice","text":"hi"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/messages"),
                    Some(r#"{"to_user":"alice","to_group":"g","text":"hi","idempotency_key":"x"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/messages"),
                    Some(r#"{"to_user":"a b","text":"hi","idempotency_key":"x"}"#),
                    "invalid_recipient",
                ),
                (
                    at("/v1/messages"),
                    Some(r#"{"to_user":"alice","text":"hi","idempotency_key":""}"#),
                    "invalid_argument",
                ),
                (
                    at("/v1/messages"),
                    Some(r#"{"from":"a b","to_user":"alice","text":"hi","idempotency_key":"x"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/messages"),
                    Some(r#"{"to_user":"alice","text":"hi","idempotency_key":"x","admin":true}"#),
                    "bad_request",
                ),
            ],
        ),
        post(
            "/v1/messages/batch",
            "messages",
            r#"{"to_users":["alice"],"text":"hi","idempotency_key":"b1"}"#,
            vec![
                (
                    at("/v1/messages/batch"),
                    Some(r#"{"to_users":[],"text":"hi","idempotency_key":"x"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/messages/batch"),
                    Some(r#"{"to_users":["a","a"],"text":"hi","idempotency_key":"x"}"#),
                    "bad_request",
                ),
            ],
        ),
        post(
            "/v1/notifications",
            "messages",
            r#"{"user":"alice","kind":"payment.result","data":{},"idempotency_key":"n1"}"#,
            vec![
                (
                    at("/v1/notifications"),
                    Some(r#"{"user":"alice","kind":"","data":{},"idempotency_key":"x"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/notifications"),
                    Some(r#"{"user":"alice","kind":"k","idempotency_key":"x"}"#),
                    "bad_request",
                ),
            ],
        ),
        post(
            "/v1/users",
            "users",
            r#"{"users":["alice"]}"#,
            vec![
                (at("/v1/users"), Some(r#"{"users":[]}"#), "bad_request"),
                (at("/v1/users"), Some(r#"{"users":["a b"]}"#), "bad_request"),
            ],
        ),
        get(
            "/v1/users/alice",
            "users",
            vec![(at("/v1/users/nobody"), None, "not_found")],
        ),
        post(
            "/v1/users/alice/disable",
            "users",
            "{}",
            vec![(at("/v1/users/nobody/disable"), Some("{}"), "not_found")],
        ),
        post(
            "/v1/users/alice/enable",
            "users",
            "{}",
            vec![(at("/v1/users/bad%20id/enable"), Some("{}"), "bad_request")],
        ),
        post(
            "/v1/broadcasts",
            "messages",
            r#"{"id":"hostile-b","text":"hi"}"#,
            vec![
                (
                    at("/v1/broadcasts"),
                    Some(r#"{"id":"a b","text":"hi"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/broadcasts"),
                    Some(r#"{"id":"x","text":"hi","resume_after":"a b"}"#),
                    "bad_request",
                ),
            ],
        ),
        get(
            "/v1/broadcasts/hostile-b",
            "messages",
            vec![(at("/v1/broadcasts/nosuch"), None, "not_found")],
        ),
        post(
            "/v1/groups",
            "groups",
            r#"{"group":"hostile-g","owner":"alice"}"#,
            vec![
                (
                    at("/v1/groups"),
                    Some(r#"{"group":"a b","owner":"alice"}"#),
                    "invalid_argument",
                ),
                (
                    at("/v1/groups"),
                    Some(r#"{"group":"g2","owner":"alice","join_policy":"any"}"#),
                    "bad_request",
                ),
                (
                    at("/v1/groups"),
                    Some(r#"{"group":"g2","owner":""}"#),
                    "bad_request",
                ),
            ],
        ),
        get(
            "/v1/groups/hostile-g",
            "groups",
            vec![(at("/v1/groups/nosuchgroup"), None, "not_found")],
        ),
        post(
            "/v1/groups/hostile-g/members",
            "groups",
            r#"{"users":["bob"]}"#,
            vec![
                (
                    at("/v1/groups/hostile-g/members"),
                    Some(r#"{"users":["a b"]}"#),
                    "invalid_argument",
                ),
                (
                    at("/v1/groups/nosuchgroup/members"),
                    Some(r#"{"users":["bob"]}"#),
                    "not_found",
                ),
            ],
        ),
        post(
            "/v1/groups/hostile-g/mute",
            "groups",
            r#"{"user":"bob","muted":true}"#,
            vec![(
                at("/v1/groups/hostile-g/mute"),
                Some(r#"{"user":"bob"}"#),
                "bad_request",
            )],
        ),
        post(
            "/v1/groups/hostile-g/members/remove",
            "groups",
            r#"{"users":["bob"]}"#,
            vec![(
                at("/v1/groups/hostile-g/members/remove"),
                Some(r#"{"users":"bob"}"#),
                "bad_request",
            )],
        ),
        post(
            "/v1/groups/hostile-g/dissolve",
            "groups",
            "{}",
            vec![(
                at("/v1/groups/bad%20id/dissolve"),
                Some("{}"),
                "bad_request",
            )],
        ),
        // Last: the deletion of the account the routes above used.
        Route {
            method: "DELETE",
            path: "/v1/users/alice",
            scope: "users",
            body: None,
            bad: vec![
                (at("/v1/users/bad%20id"), None, "bad_request"),
                (at("/v1/users/nobody"), None, "not_found"),
            ],
        },
    ]
}

/// The code of a typed refusal's body.
fn code_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON body: {body:?}"));
    v["error"]["code"].as_str().expect("error.code").to_owned()
}

/// Every route, in its order (the group is created before it is changed):
/// without a key (401 unauthorized), with a key that lacks its scope (403
/// forbidden), with malformed input (the listed code), and with a valid
/// request (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_missing_keys_wrong_scopes_and_bad_input() {
    // The failed-login limit has its own test (hostile_edge); here every
    // route is tried without a key from the same address.
    let gw = TestGateway::start_with(|c| {
        c.admin.auth_failures_per_minute = 10_000;
        c.groups.default_adds = "anyone".into();
    })
    .await;
    let api = gw.api.expect("api");
    let by = Bystanders::start(&gw).await;
    for route in routes() {
        let send = |key: Option<&'static str>, path: String, body: Option<&str>| {
            let method = route.method;
            let body = body.map(str::to_owned);
            async move {
                match body {
                    Some(body) => http_json(api, method, &path, key, &body).await,
                    None => http_request(api, method, &path, key).await,
                }
            }
        };
        let r = send(None, route.path.into(), route.body).await;
        assert_eq!(
            (r.status, code_of(&r.body)),
            (401, "unauthorized".into()),
            "{}",
            route.path
        );
        let wrong = if route.scope == "read" {
            MESSAGES_SECRET
        } else {
            READ_SECRET
        };
        let r = send(Some(wrong), route.path.into(), route.body).await;
        assert_eq!(
            (r.status, code_of(&r.body)),
            (403, "forbidden".into()),
            "{}",
            route.path
        );
        for (path, body, code) in &route.bad {
            let r = send(Some(ADMIN_SECRET), path.clone(), *body).await;
            assert!(
                (400..500).contains(&r.status),
                "{path} {body:?}: {} {}",
                r.status,
                r.body
            );
            assert_eq!(code_of(&r.body), *code, "{path} {body:?}");
        }
        // The valid body's fields as an array (serde would read a struct
        // from one, by position): the documented body is an object. (The
        // routes that read no body are sent `{}`.)
        if let Some(body) = route.body.filter(|b| *b != "{}") {
            let fields: serde_json::Map<String, Value> =
                serde_json::from_str(body).expect("a route's body is an object");
            let array = Value::Array(fields.into_iter().map(|(_, v)| v).collect()).to_string();
            let r = send(Some(ADMIN_SECRET), route.path.into(), Some(&array)).await;
            assert_eq!(
                (r.status, code_of(&r.body)),
                (400, "bad_request".into()),
                "{} {array}",
                route.path
            );
        }
        let r = send(Some(ADMIN_SECRET), route.path.into(), route.body).await;
        assert!(
            matches!(r.status, 200 | 202),
            "{}: {} {}",
            route.path,
            r.status,
            r.body
        );
    }
    // Paths and methods no route serves are typed too.
    let r = http_request(api, "GET", "/v1/nothing", Some(ADMIN_SECRET)).await;
    assert_eq!((r.status, code_of(&r.body)), (404, "not_found".into()));
    let r = http_request(api, "DELETE", "/v1/messages", Some(ADMIN_SECRET)).await;
    assert_eq!((r.status, code_of(&r.body)), (405, "bad_request".into()));
    by.finish().await;
}

/// A send as the system account cannot be made to impersonate a user
/// through the batch's derived keys: a batch and a single send with the
/// same key are separate messages, and a body over the server's limit is
/// refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_colliding_sends_are_refused_or_kept_apart() {
    let gw = TestGateway::start_with(|c| c.limits.max_body_bytes = 1_000).await;
    let by = Bystanders::start(&gw).await;
    let big = "x".repeat(2_000);
    let r = gw
        .api_json(
            "/v1/messages",
            &serde_json::json!({"to_user": "alice", "text": big, "idempotency_key": "big"})
                .to_string(),
        )
        .await;
    assert_eq!(
        (r.status, code_of(&r.body)),
        (413, "message_too_large".into())
    );
    let one = gw
        .api_json(
            "/v1/messages",
            r#"{"to_user":"carol","text":"a","idempotency_key":"same"}"#,
        )
        .await;
    let many = gw
        .api_json(
            "/v1/messages/batch",
            r#"{"to_users":["carol"],"text":"b","idempotency_key":"same"}"#,
        )
        .await;
    assert_eq!(
        (one.status, many.status),
        (200, 200),
        "{} {}",
        one.body,
        many.body
    );
    let one: Value = serde_json::from_str(&one.body).expect("json");
    let many: Value = serde_json::from_str(&many.body).expect("json");
    assert_ne!(one["msg_id"], many["results"][0]["sent"]["msg_id"]);
    by.finish().await;
}
