//! Delivery timers: the gateway's retransmit of unacked deliveries, the
//! SDK's resend of unacked sends, and its skip of a gap in the inbox that
//! stays empty.

use std::pin::pin;
use std::time::Duration;

use qim_proto::preamble::StreamKind;
use qim_proto::v1;
use tokio::time::Instant;

use crate::common::{join_in_order, text};
use qim_sdk::ConnectionState;

use crate::harness::{Sim, assert_elapsed, beat, next_within};

/// The gateway's defaults: 5 s, doubling, at most 60 s.
const RETRANSMIT_TIMEOUTS_S: [u64; 6] = [5, 10, 20, 40, 60, 60];

#[tokio::test(start_paused = true)]
async fn an_unacked_delivery_comes_back_after_5_10_20_40_60_60_s_and_never_after_the_ack() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let bob = gw.raw_login("bob", "bob-raw", 0).await;
    // Bob stays alive for the minutes this takes, but never acks.
    let _beats = beat(&bob.raw.conn, Duration::from_secs(30));
    let (_acks, mut deliveries) = bob.raw.server_streams().await;
    let alice = gw.client("alice", "alice-phone").await;
    let receipt = alice
        .send("bob".into(), "are you there?".into())
        .await
        .expect("acked");

    let first = deliveries
        .next::<v1::Deliver>()
        .await
        .expect("frame")
        .expect("deliver");
    let sent = Instant::now();
    assert_eq!((first.seq, first.attempt), (receipt.seq, 0));
    let mut due = Duration::ZERO;
    for (attempt, timeout) in (1..).zip(RETRANSMIT_TIMEOUTS_S) {
        due += Duration::from_secs(timeout);
        let again = deliveries
            .next::<v1::Deliver>()
            .await
            .expect("frame")
            .expect("deliver");
        assert_eq!((again.seq, again.attempt), (receipt.seq, attempt));
        assert_eq!(again.message, first.message);
        assert_elapsed(sent, due, &format!("retransmit {attempt}"));
    }

    let mut ack_stream = bob.raw.open_uni(StreamKind::Ack).await;
    ack_stream
        .send(&v1::DeliveryAck {
            up_to_seq: receipt.seq,
            seqs: vec![],
        })
        .await
        .expect("ack");
    // Ten minutes: ten times the longest retransmit timeout.
    let extra =
        tokio::time::timeout(Duration::from_secs(600), deliveries.next::<v1::Deliver>()).await;
    assert!(extra.is_err(), "a delivery came after the ack: {extra:?}");
    assert!(gw.metric("qim_retransmits_total").await >= 6.0);
    gw.stop().await;
}

/// A seq that will never be stored (its write failed after the seq was
/// handed out) holds back the messages after it for exactly the client's
/// `gap_skip_after`, on an online device and on one that catches up, and
/// not a moment longer.
#[tokio::test(start_paused = true)]
async fn a_gap_that_stays_empty_is_skipped_after_gap_skip_after_and_not_before() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let skip_after = gw.client_config("bob", "bob-phone").gap_skip_after;
    assert_eq!(skip_after, Duration::from_secs(30), "the SDK's default");
    let alice = gw.client("alice", "alice-phone").await;
    let bob = gw.client("bob", "bob-phone").await;
    for i in 0..3 {
        alice
            .send("bob".into(), format!("m{i}"))
            .await
            .expect("acked");
    }
    for seq in 1..=3 {
        assert_eq!(next_within(&bob, Duration::from_secs(1)).await.seq, seq);
    }

    // Seqs 4 and 5 handed out, never written: what a failed write leaves.
    gw.store.burn_next("bob", 2);
    let receipt = alice
        .send("bob".into(), "after the gap".into())
        .await
        .expect("acked");
    assert_eq!(receipt.seq, 6);
    let sent = Instant::now();
    let held_back = bob.next_message_timeout(skip_after - Duration::from_millis(100));
    assert!(held_back.await.is_none(), "held back behind the gap");
    let got = next_within(&bob, Duration::from_secs(1)).await;
    assert_eq!((got.seq, text(&got)), (6, "after the gap".to_owned()));
    assert_elapsed(sent, skip_after, "the online device skips the gap");

    // A device that was offline all along: 1 to 3 at once, then the gap.
    let laptop = gw.client("bob", "bob-laptop").await;
    let caught_up = Instant::now();
    for seq in 1..=3 {
        assert_eq!(next_within(&laptop, Duration::from_secs(1)).await.seq, seq);
    }
    assert_elapsed(caught_up, Duration::ZERO, "what is there comes at once");
    let got = next_within(&laptop, skip_after + Duration::from_secs(1)).await;
    assert_eq!(got.seq, 6);
    assert_elapsed(
        caught_up,
        skip_after,
        "the catching-up device skips the gap",
    );
    assert!(
        bob.next_message_timeout(Duration::from_secs(60))
            .await
            .is_none(),
        "nothing twice"
    );
    alice.close().await;
    bob.close().await;
    laptop.close().await;
    gw.stop().await;
}

/// A send whose ack does not come within the SDK's `ack_timeout` (its
/// packets lost in a partition) is not written again on the same
/// connection: the client probes it at once, and when no pong comes within
/// `probe_timeout` it drops the connection, connects afresh once the
/// network is back and sends it there with the same id: stored and
/// delivered once.
#[tokio::test(start_paused = true)]
async fn an_ack_timeout_probes_and_the_send_goes_again_only_on_a_new_connection() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let config = gw.client_config("alice", "alice-phone");
    let (alice, alice_host) = gw.client_on_host("alice", "alice-phone").await;
    let bob = gw.client("bob", "bob-phone").await;
    // Simulated time: past the login's first ping and pong; the next is
    // due in 30 s.
    tokio::time::sleep(Duration::from_secs(1)).await;

    sim.net().partition(alice_host, gw.addr.ip());
    let sent = tokio::time::Instant::now();
    let mut send = pin!(alice.send("bob".into(), "once".into()));
    let early = config.ack_timeout - Duration::from_millis(10);
    let unacked = tokio::time::timeout(early, &mut send).await;
    assert!(unacked.is_err(), "no ack through a partition");
    assert_eq!(alice.state(), ConnectionState::Connected);
    // The ack timeout probes; the probe's deadline ends the connection.
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        let mut states = alice.watch_state();
        while states.current() == ConnectionState::Connected {
            states.changed().await.expect("client alive");
        }
    });
    tokio::select! {
        _ = &mut send => panic!("acked through a partition"),
        done = dropped => done.expect("the dead connection is dropped"),
    }
    assert_elapsed(
        sent,
        config.ack_timeout + config.probe_timeout,
        "dropped at the probe's deadline",
    );
    assert_eq!(
        alice.stats().sends_resent,
        0,
        "never written twice on the dead connection"
    );

    sim.net().heal();
    let receipt = tokio::time::timeout(Duration::from_secs(60), send)
        .await
        .expect("acked once the network is back")
        .expect("acked");
    assert_eq!(receipt.seq, 1);
    assert_eq!(
        text(&next_within(&bob, Duration::from_secs(1)).await),
        "once"
    );
    assert!(
        bob.next_message_timeout(Duration::from_secs(60))
            .await
            .is_none(),
        "stored once"
    );
    let stats = alice.stats();
    assert_eq!(stats.sessions, 2, "a new connection: {stats:?}");
    assert_eq!(stats.sends_resent, 1, "written again there: {stats:?}");
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}

/// Over a slow, lossy network (100 ms each way, the next three datagrams
/// lost outright, then 5% by a seeded draw) QUIC recovers every loss: all
/// messages arrive in order, each once.
#[tokio::test(start_paused = true)]
async fn over_a_slow_lossy_network_every_message_arrives_once_in_order() {
    let sim = Sim::new();
    sim.net().set_latency(Duration::from_millis(100));
    let gw = sim.gateway(|_| {}).await;
    let alice = gw.client("alice", "alice-phone").await;
    let bob = gw.client("bob", "bob-phone").await;
    sim.net().drop_next(3);
    sim.net().set_loss(0.05, 7);
    const N: usize = 100;
    let sends = join_in_order(
        (0..N)
            .map(|i| Box::pin(alice.send("bob".into(), format!("m{i}"))))
            .collect(),
    );
    for receipt in sends.await {
        receipt.expect("acked");
    }
    for i in 0..N {
        let got = next_within(&bob, Duration::from_secs(60)).await;
        assert_eq!(text(&got), format!("m{i}"));
    }
    assert!(
        bob.next_message_timeout(Duration::from_secs(60))
            .await
            .is_none(),
        "nothing twice"
    );
    let (delivered, dropped) = sim.net().counts();
    assert!(
        dropped > 3 && delivered > dropped * 10,
        "{delivered} delivered, {dropped} dropped"
    );
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}
