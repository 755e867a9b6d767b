//! Chat between nodes, sessions moving between them, and the route endpoint.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_pair_chats_and_every_device_gets_everything_once_in_order() {
    let shared = Shared::new();
    let a = Node::start(&shared, "a", |_| {}).await;
    let b = Node::start(&shared, "b", |_| {}).await;
    let c = Node::start(&shared, "c", |_| {}).await;
    wait_nodes(a.api, "three nodes registered", |n| n.len() == 3).await;

    let alice = Arc::new(shared.client(&[a.addr], "alice", "alice-phone").await);
    let bob = Arc::new(shared.client(&[b.addr], "bob", "bob-phone").await);
    // bob has a second device, on another node than his first.
    let bob_laptop = shared.client(&[a.addr], "bob", "bob-laptop").await;
    let carol = Arc::new(shared.client(&[c.addr], "carol", "carol-phone").await);

    const N: usize = 60;
    let mut sends = tokio::task::JoinSet::new();
    let senders = [
        (shared.user("alice"), Arc::clone(&alice)),
        (shared.user("bob"), Arc::clone(&bob)),
        (shared.user("carol"), Arc::clone(&carol)),
    ];
    for (from, client) in &senders {
        for (recipient, _) in &senders {
            if from == recipient {
                continue;
            }
            // One task per ordered pair, each waiting for every ack in
            // turn: that pair's order is the order sent.
            let client = Arc::clone(client);
            let (from, recipient) = (from.to_string(), recipient.to_string());
            sends.spawn(async move {
                for i in 0..N {
                    let body = format!("{from}-{recipient}-{i}");
                    client
                        .send_message(to(&recipient, body.clone(), body))
                        .await
                        .expect("acked");
                }
            });
        }
    }
    while let Some(done) = sends.join_next().await {
        done.expect("sender");
    }
    for (device, client) in [
        ("alice-phone", &*alice),
        ("bob-phone", &*bob),
        ("bob-laptop", &bob_laptop),
        ("carol-phone", &*carol),
    ] {
        let got = take(client, 2 * N).await;
        check_inbox(device, &got, 2 * N);
        assert_quiet(client, Duration::from_millis(300)).await;
    }
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_logging_in_on_another_node_replaces_its_older_session() {
    let shared = Shared::new();
    let a = Node::start(&shared, "a", |_| {}).await;
    let b = Node::start(&shared, "b", |_| {}).await;
    let first = shared.client(&[a.addr], "dave", "dave-phone").await;
    let second = shared.client(&[b.addr], "dave", "dave-phone").await;
    let error = stopped(&first).await;
    assert!(
        matches!(
            error,
            qim_sdk::Error::Rejected {
                code: qim_proto::v1::ErrorCode::Replaced,
                ..
            }
        ),
        "ended with REPLACED: {error:?}"
    );
    // The newer session stays: it comes up (the driver reports Connected
    // right after `connect` returns) and is not refused.
    let mut state = second.watch_state();
    tokio::time::timeout(PATIENCE, async {
        while state.current() != ConnectionState::Connected {
            state.changed().await;
        }
    })
    .await
    .expect("the newer session is up");
    assert_eq!(second.last_error(), None);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_endpoint_answers_under_each_strategy() {
    let shared = Shared::new();
    let strategies = [
        "consistent-hash",
        "least-connections",
        "random",
        "round-robin",
    ];
    let mut nodes = Vec::new();
    for (i, strategy) in strategies.iter().enumerate() {
        nodes.push(
            Node::start(&shared, &format!("n{i}"), |c| {
                c.cluster.strategy = (*strategy).to_owned();
            })
            .await,
        );
    }
    let admins: HashMap<&str, SocketAddr> = strategies
        .iter()
        .zip(&nodes)
        .map(|(s, n)| (*s, n.admin))
        .collect();
    let admin = |s: &str| admins[s];
    wait_nodes(nodes[0].api, "four nodes", |n| n.len() == 4).await;
    let registry = live_nodes(nodes[0].api).await;
    let ids: Vec<String> = registry.iter().map(|n| n.id.clone()).collect();

    const USERS: usize = 400;
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();

    // Consistent hash: what the ring over the registered nodes says, from
    // every lookup, and spread over all nodes.
    let mut ring = Picker::seeded(Strategy::ConsistentHash, 0);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        let got = route(admin("consistent-hash"), user).await;
        assert_eq!(got, ring.pick(user, &registry).expect("node").id, "{user}");
        *counts.entry(got).or_default() += 1;
    }
    for id in &ids {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!(
            (40..=180).contains(&n),
            "consistent hash gave {id} {n} of {USERS}"
        );
    }
    assert_eq!(
        route(admin("consistent-hash"), "u7").await,
        route(admin("consistent-hash"), "u7").await
    );

    // Round robin: exactly even.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        *counts
            .entry(route(admin("round-robin"), user).await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|&n| n == USERS / 4), "{counts:?}");

    // Random: every node, none far from a quarter (expected 100, sd 8.7).
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        *counts
            .entry(route(admin("random"), user).await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|&n| (40..=160).contains(&n)),
        "{counts:?}"
    );

    // Least connections: load one node with clients; once its heartbeat
    // reports them, lookups go to the others.
    let busy = &nodes[0];
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(
            shared
                .client(&[busy.addr], &format!("load{i}"), "phone")
                .await,
        );
    }
    wait_nodes(busy.api, "the busy node reports its load", |n| {
        n.iter().any(|n| n.id == busy.id && n.connections >= 3)
    })
    .await;
    let mut picked = Vec::new();
    for user in users.iter().take(9) {
        picked.push(route(admin("least-connections"), user).await);
    }
    assert!(
        !picked.contains(&busy.id),
        "the loaded node is not picked: {picked:?}"
    );
    picked.sort();
    picked.dedup();
    assert!(picked.len() >= 2, "spread over the idle nodes: {picked:?}");

    // Bad input gets a typed error.
    let (status, body) = http_get(admin("random"), "/route?user=has%20space").await;
    assert_eq!(status, 400, "{body}");

    // A node that leaves gracefully is gone from the registry at once.
    let leaving = nodes.pop().expect("node");
    let gone = leaving.id.clone();
    leaving.stop().await;
    // Deregistered before `run` returned, not by TTL expiry.
    let left = live_nodes(nodes[0].api).await;
    assert!(
        left.len() == 3 && left.iter().all(|n| n.id != gone),
        "{left:?}"
    );
    for user in users.iter().take(50) {
        assert_ne!(route(admin("random"), user).await, gone);
    }
    for client in clients {
        client.close().await;
    }
    for node in nodes {
        node.stop().await;
    }
}
