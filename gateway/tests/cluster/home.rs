//! The way back to the first server: a client that started on a fallback
//! (its first node was down) moves back once that node answers, while it
//! sends, without losing, doubling, reordering or resending a message.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_back_to_its_restarted_first_node_mid_traffic_resending_nothing() {
    let shared = Shared::new();
    let b = Node::start(&shared, "b", |_| {}).await;
    let a = Node::start(&shared, "a", |_| {}).await;
    let (a_addr, a_id) = (a.addr, a.id.clone());
    a.stop().await;

    let bob = shared.client(&[b.addr], "bob", "bob-phone").await;
    let mut config = shared.client_config(&[a_addr, b.addr], "alice", "alice-phone");
    config.home_return_after = Duration::from_millis(300);
    let alice = Arc::new(Client::connect(config).await.expect("connect"));
    let bob_id = shared.user("bob");
    let b_id = b.id.clone();
    wait_nodes(b.api, "alice and bob on b", |nodes| {
        nodes.iter().any(|n| n.id == b_id && n.connections == 2)
    })
    .await;

    // alice sends to bob all along; her first node comes back meanwhile.
    let moved = Arc::new(AtomicBool::new(false));
    let sender = {
        let (alice, moved, bob_id) = (Arc::clone(&alice), Arc::clone(&moved), bob_id.clone());
        tokio::spawn(async move {
            let mut after_move = 0;
            let mut i = 0;
            while after_move < 100 {
                let body = format!("alice-bob-{i}");
                alice
                    .send_message(to(&bob_id, body.clone(), body))
                    .await
                    .unwrap_or_else(|e| panic!("send {i} failed: {e}"));
                i += 1;
                if moved.load(Ordering::Relaxed) {
                    after_move += 1;
                }
            }
            i
        })
    };
    let a = Node::start(&shared, "a", |c| c.server.listen = a_addr).await;
    assert_eq!(a.id, a_id, "the restarted node has its old id");
    wait_nodes(b.api, "alice back on a", |nodes| {
        nodes.iter().any(|n| n.id == a_id && n.connections == 1)
            && nodes.iter().any(|n| n.id == b_id && n.connections == 1)
    })
    .await;
    moved.store(true, Ordering::Relaxed);
    let sent = tokio::time::timeout(PATIENCE * 2, sender)
        .await
        .expect("the sender finishes")
        .expect("sender");

    let got = take(&bob, sent).await;
    check_inbox("bob-phone", &got, sent);
    assert_quiet(&bob, Duration::from_millis(300)).await;
    let stats = alice.stats();
    assert_eq!(stats.sessions, 2, "one move: fallback, then back");
    assert_eq!(
        stats.sends_resent, 0,
        "the session drained before the move: nothing was written twice"
    );
    a.stop().await;
    b.stop().await;
}
