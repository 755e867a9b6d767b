//! Attacks on deleted accounts, with a bystander pair chatting through
//! each, on both backends: a hostile client keeps sending to a deleted id
//! (messages, friend requests, blocks, group creates and invites), and the
//! business backend's API sends to it and as it. Every attempt gets the
//! typed `USER_DELETED` (HTTP 410 `user_deleted`), nothing is stored for
//! the deleted id, and the bystanders' chat goes on. Also the limit of
//! deletions at once, held open deterministically by a gated purge.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{
    ADMIN_SECRET, Backend, Bystanders, PATIENCE, TestGateway, assert_quiet, http_request, stopped,
    take, unique,
};
use qim_sdk::{Error, ErrorCode, GroupChange, Peer};
use qim_storage::{StoreError, UserPurge};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

/// The JSON answer of a POST, asserting its status.
async fn post(gw: &TestGateway, path: &str, body: &Value, status: u16) -> Value {
    let r = gw.api_json(path, &body.to_string()).await;
    assert_eq!(r.status, status, "{path}: {}", r.body);
    serde_json::from_str(&r.body).expect("a JSON answer")
}

fn deleted(result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(Error::Rejected {
            code, retryable, ..
        }) => assert_eq!((code, retryable), (ErrorCode::UserDeleted, false)),
        other => panic!("expected USER_DELETED, got {other:?}"),
    }
}

/// A gateway on `backend`, and its stores to look into.
async fn start(backend: Backend) -> (TestGateway, qim_storage::Stores) {
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().expect("temp dir");
            let stores = qim_gateway::Stores::open_embedded(&dir.path().join("store"), 0)
                .expect("open the store");
            let gw = TestGateway::start_embedded_on(dir, |_| {}, stores.clone()).await;
            (gw, stores)
        }
        Backend::Cluster => {
            let gw = TestGateway::start_on(backend, |_| {}).await;
            let options = gw.config.store.cluster_options().expect("a cluster");
            let stores = qim_storage::Stores::connect_cluster(&options, 0)
                .await
                .expect("connect to the cluster's store");
            (gw, stores)
        }
    }
}

/// A hostile client and the business backend address a deleted id in
/// every way they can: each is refused with `USER_DELETED`, nothing is
/// stored under the deleted id (inbox, conversations, contacts, groups),
/// the attacker's conversation list does not get the id back, a batch refuses only that recipient, and bystanders are
/// unaffected.
async fn everything_addressed_to_a_deleted_id_is_refused(backend: Backend) {
    let (gw, stores) = start(backend).await;
    let (gone, mallory, carol) = (unique("gone"), unique("mallory"), unique("carol"));
    post(
        &gw,
        "/v1/users",
        &json!({"users": [gone, mallory, carol]}),
        200,
    )
    .await;
    let bystanders = Bystanders::start(&gw).await;
    let victim = gw.client(&gone, "phone").await;
    let phone = gw.client(&mallory, "phone").await;
    let friend = gw.client(&carol, "phone").await;
    phone
        .send(gone.clone(), "before".into())
        .await
        .expect("send");
    take(&victim, 1).await;

    let path = format!("/v1/users/{gone}");
    let r = http_request(gw.api.expect("api"), "DELETE", &path, Some(ADMIN_SECRET)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    stopped(&victim).await;

    // The client side: messages, friend requests, blocks, groups.
    for i in 0..5 {
        deleted(phone.send(gone.clone(), format!("after {i}")).await);
    }
    deleted(phone.request_friend(gone.clone(), "hi".into()).await);
    deleted(phone.block(gone.clone()).await);
    let group = unique("g");
    deleted(
        phone
            .create_group(group.clone(), "g".into(), vec![gone.clone()])
            .await,
    );
    phone
        .create_group(group.clone(), "g".into(), Vec::new())
        .await
        .expect("a group with a live member");
    deleted(
        phone
            .change_group(group.clone(), GroupChange::Invite(vec![gone.clone()]))
            .await,
    );

    // The business backend: as a user, as the system account, in a batch,
    // a notification, as the deleted user, a group add.
    let gone_code = |v: &Value| v["error"]["code"].as_str().map(str::to_owned);
    for from in [Some(mallory.as_str()), None] {
        let mut send = json!({"to_user": gone, "text": "x", "idempotency_key": unique("k")});
        if let Some(from) = from {
            send["from"] = json!(from);
        }
        let refused = post(&gw, "/v1/messages", &send, 410).await;
        assert_eq!(gone_code(&refused).as_deref(), Some("user_deleted"));
    }
    let notify =
        json!({"user": gone, "kind": "payment.result", "data": {}, "idempotency_key": unique("k")});
    post(&gw, "/v1/notifications", &notify, 410).await;
    let batch = json!({"to_users": [gone, carol], "text": "news", "idempotency_key": unique("b")});
    let results = post(&gw, "/v1/messages/batch", &batch, 200).await;
    assert_eq!(
        (results["sent"].as_u64(), results["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let refused = &results["results"][0];
    assert_eq!(refused["user"], json!(gone));
    assert_eq!(refused["error"]["code"], "user_deleted");
    assert_eq!(refused["error"]["retryable"], false);
    assert!(
        results["results"][1]["sent"]["msg_id"].is_string(),
        "{results}"
    );
    let as_gone =
        json!({"from": gone, "to_user": carol, "text": "boo", "idempotency_key": unique("k")});
    let refused = post(&gw, "/v1/messages", &as_gone, 410).await;
    assert_eq!(gone_code(&refused).as_deref(), Some("user_deleted"));
    let add = json!({"users": [gone]});
    post(&gw, &format!("/v1/groups/{group}/members"), &add, 410).await;
    let create = json!({"group": unique("g"), "owner": gone, "members": [carol]});
    post(&gw, "/v1/groups", &create, 410).await;

    // Nothing was stored: the attacker's list has no conversation with the
    // id, the live recipient of the batch got exactly its one message, and
    // the deleted inbox is empty.
    let list = phone.conversations(None, 100).await.expect("list");
    assert!(
        list.conversations
            .iter()
            .all(|c| c.peer != Peer::User(gone.clone())),
        "a refused send brought the conversation back: {list:?}"
    );
    let got = take(&friend, 1).await;
    assert_eq!(got[0].from_user, "system");
    assert_quiet(&friend, Duration::from_millis(300)).await;
    let inbox = stores
        .messages
        .read_inbox(&gone, 0, 100)
        .await
        .expect("read");
    assert!(inbox.is_empty(), "the deleted inbox came back: {inbox:?}");
    assert_eq!(
        stores
            .messages
            .load_cursor(&gone, "phone")
            .await
            .expect("cursor"),
        None
    );
    let convs = stores
        .conversations
        .conversations(&gone, &[], 100)
        .await
        .expect("list");
    assert!(convs.conversations.is_empty(), "{convs:?}");
    let contacts = stores.contacts.contacts(&gone).await.expect("contacts");
    assert_eq!(contacts, qim_proto::v1::ContactsResponse::default());
    assert!(
        stores
            .contacts
            .blockers(&gone)
            .await
            .expect("blockers")
            .is_empty()
    );
    assert!(
        stores
            .groups
            .user_groups(&gone)
            .await
            .expect("groups")
            .is_empty()
    );
    assert!(
        stores
            .groups
            .invitations(&gone)
            .await
            .expect("inv")
            .is_empty()
    );
    bystanders.finish().await;
    for c in [phone, friend] {
        c.close().await;
    }
}

on_both_backends!(everything_addressed_to_a_deleted_id_is_refused);

/// A purge that tells when it starts and waits for the test's word.
struct GatedPurge {
    inner: Arc<dyn UserPurge>,
    entered: mpsc::UnboundedSender<String>,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl UserPurge for GatedPurge {
    async fn purge_user(&self, user: &str, peers: &[String]) -> Result<(), StoreError> {
        let _ = self.entered.send(user.to_owned());
        let pass = self
            .gate
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("gate closed".into()))?;
        pass.forget();
        self.inner.purge_user(user, peers).await
    }
}

/// Four deletions held open in their purge hold every turn: a fifth is
/// refused at once with 429, `Retry-After` and the typed body, and changes
/// nothing; once they finish, the turns are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_deletion_at_once_gets_a_typed_429() {
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let gated = Arc::clone(&gate);
    let gw = TestGateway::start_with_stores(
        |_| {},
        move |config| {
            let mut stores =
                qim_storage::Stores::open_embedded(&config.server.data_dir.join("store"), 0)
                    .expect("store");
            stores.purge = Arc::new(GatedPurge {
                inner: stores.purge,
                entered,
                gate: gated,
            });
            stores
        },
    )
    .await;
    let api = gw.api.expect("api");
    let users: Vec<String> = (0..6).map(|i| unique(&format!("d{i}"))).collect();
    post(&gw, "/v1/users", &json!({ "users": users }), 200).await;
    let mut running = Vec::new();
    for user in &users[..4] {
        let path = format!("/v1/users/{user}");
        running.push(tokio::spawn(async move {
            http_request(api, "DELETE", &path, Some(ADMIN_SECRET)).await
        }));
    }
    for _ in 0..4 {
        tokio::time::timeout(PATIENCE, entries.recv())
            .await
            .expect("a deletion reaches its purge")
            .expect("entered");
    }
    let fifth = format!("/v1/users/{}", users[4]);
    let r = http_request(api, "DELETE", &fifth, Some(ADMIN_SECRET)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.head.contains("retry-after: 1"), "{}", r.head);
    let body: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["error"]["code"], "rate_limited");
    let (status, view) = gw.api_get(&fifth).await;
    assert_eq!(status, 200);
    let view: Value = serde_json::from_str(&view).expect("JSON");
    assert_eq!(view["deleted"], false, "a refused deletion changed nothing");

    gate.add_permits(4);
    for deletion in running {
        let r = deletion.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    gate.add_permits(1);
    let r = http_request(api, "DELETE", &fifth, Some(ADMIN_SECRET)).await;
    assert_eq!(r.status, 200, "the turns are back: {}", r.body);
    gw.stop().await;
}
