//! Recovery on a bad network: a phone that only receives, behind a NAT
//! that rebinds it, on a lossy network.

use std::time::Duration;

use qim_sdk::OutgoingMessage;
use tokio::time::Instant;

use crate::common::text;
use crate::harness::Sim;

/// Bob only receives (his app takes what comes; his SDK acks it). His NAT
/// gives him a new public port with his next datagram four times while
/// alice writes to him, one message every 250 ms, on a network with 30 ms
/// of latency each way that loses 5% of the datagrams. After one of the
/// rebindings his next 12 datagrams are lost as well. Two traps wait for
/// a phone that only receives: the gateway's validation of his new address
/// fails and quinn falls back to the old, dead one; or the gateway moved to
/// his new address on an ack alone, its padded PATH_CHALLENGE there was
/// lost, and anti-amplification lets it send nothing more until he sends.
/// Either way nothing reaches him and he sends nothing. His SDK probes when
/// it sees the server validating his address, and once when traffic goes
/// quiet; the probe's ping moves the connection back (or, unanswered, the
/// SDK connects afresh). Every message arrives in order, once, within 3 s
/// (before the quiet probe, about 1 run in 60 left a message waiting 26 s
/// for the heartbeat, and 1 in 6 waited 5.3 s).
#[tokio::test(start_paused = true)]
async fn a_receive_only_phone_behind_a_rebinding_nat_with_5_percent_loss_is_never_left_on_a_dead_path()
 {
    const N: usize = 80;
    const EVERY: Duration = Duration::from_millis(250);
    let bound = Duration::from_secs(3);
    let sim = Sim::new();
    sim.net().set_latency(Duration::from_millis(30));
    let gw = sim.gateway(|_| {}).await;
    let alice = gw.client("alice", "alice-phone").await;
    let (bob, bob_host) = gw.client_on_host("bob", "bob-phone").await;
    sim.net().set_loss(0.05, 15);

    let receiver = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            match tokio::time::timeout(Duration::from_secs(60), bob.next_message()).await {
                Ok(Some(m)) => got.push((text(&m), Instant::now())),
                Ok(None) => panic!("bob's client closed"),
                Err(_) => panic!("only {} of {N} messages arrived", got.len()),
            }
        }
        (bob, got)
    });
    let mut sent_at = Vec::with_capacity(N);
    for i in 0..N {
        match i {
            10 | 50 | 70 => sim.net().rebind_on_next_send(bob_host, 0),
            // The rebinding whose path validation fails.
            30 => sim.net().rebind_on_next_send(bob_host, 12),
            _ => {}
        }
        sent_at.push(Instant::now());
        alice
            .enqueue(OutgoingMessage {
                to: "bob".into(),
                kind: "text".into(),
                body: format!("m{i}").into_bytes(),
                client_msg_id: None,
            })
            .expect("enqueue");
        // Why a sleep: the pace of alice's writing is the subject, on the
        // simulated clock (the test starts paused).
        tokio::time::sleep(EVERY).await;
    }
    let (bob, got) = receiver.await.expect("receiver");
    let texts: Vec<String> = got.iter().map(|g| g.0.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want, "every message, in order, once");
    let latencies: Vec<Duration> = got
        .iter()
        .zip(&sent_at)
        .map(|((_, at), sent)| *at - *sent)
        .collect();
    let (worst, i) = latencies
        .iter()
        .enumerate()
        .map(|(i, l)| (*l, i))
        .max()
        .expect("messages");
    let stats = bob.stats();
    let migrations = gw.metric("qim_migrations_total").await;
    let fallbacks = gw.metric("qim_path_fallbacks_total").await;
    println!(
        "slowest message m{i}: {worst:?}; bob: {stats:?}; gateway: {migrations} migrations, {fallbacks} fallbacks; net (delivered, dropped): {:?}",
        sim.net().counts()
    );
    assert!(worst <= bound, "m{i} took {worst:?}");
    assert!(
        bob.next_message_timeout(Duration::from_secs(10))
            .await
            .is_none(),
        "nothing twice"
    );
    // How many of the four rebindings the gateway counts (and whether it
    // sees the fall-back) depends on which frames the loss lets through
    // and whether the client reconnected first: at least one is counted.
    assert!(migrations >= 1.0, "the gateway saw {migrations} migrations");
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}
