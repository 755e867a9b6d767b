//! What phones need, end to end over real QUIC: the connection survives a
//! network change (migration), reconnects resume the TLS session with a
//! 0-RTT login, and unsent messages survive the app being killed.

mod common;

use std::time::Duration;

use common::{PATIENCE, TestGateway, assert_quiet, take, text};
use qim_sdk::{Client, ClientEvent, OutboxStatus, OutgoingMessage};

/// Waits until a gateway metric satisfies `ok` (metrics are updated by the
/// gateway's tasks, a moment after the client sees the effect).
async fn wait_metric(gw: &TestGateway, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let ok = &ok;
    common::poll_until(name, || async move {
        let value = gw.metric(name).await;
        ok(value).then_some(value)
    })
    .await
}

fn message(to: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage {
        to: to.into(),
        kind: "text".into(),
        body: body.as_bytes().to_vec(),
        client_msg_id: None,
    }
}

/// Waits for the `Sent` event of each id; returns the receipts' seqs.
async fn sent(events: &mut qim_sdk::Events, ids: &[String]) -> Vec<u64> {
    let mut seqs = vec![None; ids.len()];
    while seqs.iter().any(Option::is_none) {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("outbox events in time")
            .expect("client alive");
        if let ClientEvent::Outbox {
            client_msg_id,
            status: OutboxStatus::Sent(receipt),
        } = event
        {
            if let Some(i) = ids.iter().position(|id| *id == client_msg_id) {
                seqs[i] = Some(receipt.seq);
            }
        }
    }
    seqs.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_change_migrates_the_connection_and_loses_nothing() {
    let gw = TestGateway::start().await;
    let alice = gw.client("alice", "phone").await;
    let bob = gw.client("bob", "laptop").await;
    let handshakes = gw.metric("qim_connections_total").await;
    let session = alice.session_id();
    let before = alice.local_addr().expect("bound");
    assert!(!session.is_empty());

    // Alice keeps sending while her network changes under her.
    let sender = {
        let alice = std::sync::Arc::new(alice);
        let a = std::sync::Arc::clone(&alice);
        let task = tokio::spawn(async move {
            for i in 0..30 {
                a.send("bob".into(), format!("m{i}")).await.expect("send");
            }
        });
        (alice, task)
    };
    let (alice, task) = sender;
    let first = take(&bob, 10).await;
    alice.network_changed().expect("rebind");
    let after = alice.local_addr().expect("bound");
    assert_ne!(before.port(), after.port(), "a new UDP socket");
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("sends finish")
        .expect("sender");
    let rest = take(&bob, 20).await;
    let got: Vec<String> = first.iter().chain(&rest).map(text).collect();
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "every message once, in order");
    assert_quiet(&bob, Duration::from_millis(300)).await;

    // The server reaches her at the new address too.
    bob.send("alice".into(), "you moved".into())
        .await
        .expect("reply");
    assert_eq!(text(&take(&alice, 1).await[0]), "you moved");

    // Same connection, same session, no new handshake; the server saw the
    // client's address change.
    assert_eq!(alice.session_id(), session);
    let stats = alice.stats();
    assert_eq!(stats.sessions, 1, "no reconnect: {stats:?}");
    assert_eq!(stats.migrations, 1);
    assert_eq!(gw.metric("qim_connections_total").await, handshakes);
    wait_metric(&gw, "qim_migrations_total", |v| v >= 1.0).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resume_with_0rtt_and_deliver_everything_either_way() {
    for resumption in [true, false] {
        let gw = TestGateway::start().await;
        let mut config = gw.client_config("alice", "phone");
        config.resumption = resumption;
        let alice = Client::connect(config).await.expect("connect");
        let bob = gw.client("bob", "laptop").await;
        let mut expected_at_alice = Vec::new();
        let mut expected_at_bob = Vec::new();
        for round in 0..3 {
            // Bob writes while alice is between connections.
            let note = format!("to alice {round}");
            let bob_send = bob.send("alice".into(), note.clone());
            let (sent, reconnected) = tokio::join!(bob_send, alice.reconnect());
            sent.expect("bob's send");
            reconnected.expect("reconnect");
            expected_at_alice.push(note);
            let note = format!("to bob {round}");
            alice.send("bob".into(), note.clone()).await.expect("send");
            expected_at_bob.push(note);
        }
        let at_alice: Vec<String> = take(&alice, 3).await.iter().map(text).collect();
        let at_bob: Vec<String> = take(&bob, 3).await.iter().map(text).collect();
        assert_eq!(at_alice, expected_at_alice, "resumption {resumption}");
        assert_eq!(at_bob, expected_at_bob, "resumption {resumption}");
        assert_quiet(&alice, Duration::from_millis(200)).await;

        let stats = alice.stats();
        assert_eq!(stats.sessions, 4, "{stats:?}");
        let resumed = gw.metric("qim_tls_resumptions_total").await;
        if resumption {
            // Every reconnect resumed and had its 0-RTT login accepted.
            assert_eq!(stats.zero_rtt_accepted, 3, "{stats:?}");
            assert!(resumed >= 3.0, "server resumed {resumed}");
        } else {
            assert_eq!(stats.zero_rtt_accepted, 0, "{stats:?}");
            assert_eq!(resumed, 0.0);
        }
        alice.close().await;
        bob.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_cache_of_n_sessions_resumes_n_clients() {
    // Four tickets for four phones. Handing out two tickets per handshake
    // would keep only the last two phones' tickets, and each full
    // handshake on reconnect would evict the next phone's ticket.
    const PHONES: usize = 4;
    let gw = TestGateway::start_with(|c| c.tls.resumption_cache = PHONES).await;
    let mut phones = Vec::new();
    for i in 0..PHONES {
        let mut config = gw.client_config(&format!("phone{i}"), "phone");
        config.resumption = true;
        let phone = Client::connect(config).await.expect("connect");
        // An acked send: the handshake is complete, so its ticket is in.
        phone
            .send("sink".into(), "hello".into())
            .await
            .expect("send");
        phones.push(phone);
    }
    for phone in &phones {
        phone.reconnect().await.expect("reconnect");
        phone
            .send("sink".into(), "again".into())
            .await
            .expect("send");
    }
    for phone in &phones {
        let stats = phone.stats();
        assert_eq!(stats.zero_rtt_accepted, 1, "{stats:?}");
    }
    let resumed = wait_metric(&gw, "qim_tls_resumptions_total", |v| v >= PHONES as f64).await;
    assert_eq!(resumed, PHONES as f64);
    for phone in phones {
        phone.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_restart_and_delivers_exactly_once() {
    let gw = TestGateway::start().await;
    let dave = gw.client("dave", "phone").await;
    let dir = tempfile::tempdir().expect("dir");
    // Offline: a port that swallows every packet.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut offline = gw.client_config("carol", "phone");
    offline.server = black_hole.local_addr().expect("addr").to_string();
    offline.data_dir = Some(dir.path().to_owned());

    let carol = Client::start(offline).await.expect("start offline");
    let mut events = carol.events();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            carol
                .enqueue(message("dave", &format!("queued {i}")))
                .expect("enqueue"),
        );
    }
    // A caller that gives up waiting: with a data directory the message
    // still goes out later.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        carol.send_message(OutgoingMessage {
            client_msg_id: Some("given-up-1".into()),
            ..message("dave", "queued 3")
        }),
    )
    .await;
    assert!(gave_up.is_err(), "nothing can be acked offline");
    ids.push("given-up-1".into());
    for id in &ids {
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(ClientEvent::Outbox {
                client_msg_id,
                status: OutboxStatus::Sending,
            })) => assert_eq!(&client_msg_id, id),
            other => panic!("expected Sending for {id}, got {other:?}"),
        }
    }
    // The app is killed.
    carol.close().await;
    drop(carol);

    // Next start, network back: everything goes out, once.
    let mut online = gw.client_config("carol", "phone");
    online.data_dir = Some(dir.path().to_owned());
    let carol = Client::connect(online.clone()).await.expect("connect");
    let mut events = carol.events();
    let seqs = sent(&mut events, &ids).await;
    let got = take(&dave, 4).await;
    assert_eq!(
        got.iter()
            .map(|m| m.client_msg_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(text(&got[3]), "queued 3");
    assert_quiet(&dave, Duration::from_millis(300)).await;

    // A crash after the server stored a send but before the app recorded
    // the ack: the next start sends it again, the server answers with the
    // original ack, and dave still has it once.
    let journal = dir.path().join("outbox.journal");
    let id = carol
        .enqueue(message("dave", "stored once"))
        .expect("enqueue");
    let before_ack = std::fs::read(&journal).expect("journal");
    let first = sent(&mut events, std::slice::from_ref(&id)).await;
    assert_eq!(text(&take(&dave, 1).await[0]), "stored once");
    carol.close().await;
    drop(carol);
    std::fs::write(&journal, before_ack).expect("restore the pre-ack journal");
    let carol = Client::connect(online).await.expect("connect again");
    let mut events = carol.events();
    let again = sent(&mut events, std::slice::from_ref(&id)).await;
    assert_eq!(again, first, "the server's original ack");
    assert_quiet(&dave, Duration::from_millis(300)).await;
    carol.close().await;
    dave.close().await;
    drop(black_hole);
}

/// A UDP relay between client and gateway that can refuse new client
/// addresses: what a network that loses the migrated path looks like.
struct Relay {
    addr: std::net::SocketAddr,
    accept_new: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        use std::collections::HashMap;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let front = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("relay bind"),
        );
        let addr = front.local_addr().expect("relay addr");
        let accept_new = Arc::new(AtomicBool::new(true));
        let accept = Arc::clone(&accept_new);
        let task = tokio::spawn(async move {
            let mut peers: HashMap<std::net::SocketAddr, Arc<tokio::net::UdpSocket>> =
                HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let mut back = tokio::task::JoinSet::new();
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let socket = match peers.get(&from) {
                    Some(s) => Arc::clone(s),
                    None if accept.load(Ordering::SeqCst) => {
                        let s = Arc::new(
                            tokio::net::UdpSocket::bind("127.0.0.1:0")
                                .await
                                .expect("bind"),
                        );
                        s.connect(upstream).await.expect("connect");
                        let (s2, front2) = (Arc::clone(&s), Arc::clone(&front));
                        back.spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = s2.recv(&mut buf).await {
                                let _ = front2.send_to(&buf[..n], from).await;
                            }
                        });
                        peers.insert(from, Arc::clone(&s));
                        s
                    }
                    None => continue,
                };
                let _ = socket.send(&buf[..n]).await;
            }
        });
        Relay {
            addr,
            accept_new,
            task,
        }
    }

    fn accept_new(&self, yes: bool) {
        self.accept_new
            .store(yes, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_falls_back_to_a_new_connection() {
    let gw = TestGateway::start().await;
    let relay = Relay::start(gw.addr).await;
    let mut config = gw.client_config("alice", "phone");
    config.server = relay.addr.to_string();
    config.migration_timeout = Duration::from_millis(300);
    let alice = Client::connect(config).await.expect("connect");
    let bob = gw.client("bob", "laptop").await;
    let mut states = alice.watch_state();
    alice
        .send("bob".into(), "before".into())
        .await
        .expect("send");

    // The new network drops the migrated path.
    relay.accept_new(false);
    alice.network_changed().expect("rebind");
    loop {
        let state = tokio::time::timeout(PATIENCE, states.changed())
            .await
            .expect("the client notices the dead path")
            .expect("client alive");
        if state != qim_sdk::ConnectionState::Connected {
            break;
        }
    }
    // Sent while the path is down; goes out on the new connection.
    let pending = alice.enqueue(message("bob", "during")).expect("enqueue");
    relay.accept_new(true);
    let mut events = alice.events();
    sent(&mut events, std::slice::from_ref(&pending)).await;
    let got: Vec<String> = take(&bob, 2).await.iter().map(text).collect();
    assert_eq!(got, ["before", "during"]);
    assert_quiet(&bob, Duration::from_millis(200)).await;
    let stats = alice.stats();
    assert_eq!(stats.sessions, 2, "a fresh connection: {stats:?}");
    assert_eq!(alice.state(), qim_sdk::ConnectionState::Connected);
    alice.close().await;
    bob.close().await;
}
