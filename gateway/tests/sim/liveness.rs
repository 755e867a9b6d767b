//! Liveness timers: the login timeout, the heartbeat deadline, the drain
//! deadline, and the SDK's pong timeout, reconnect backoff and resume.

use std::time::Duration;

use qim_proto::v1::{self, ErrorCode};
use qim_sdk::ConnectionState;
use tokio::time::Instant;

use crate::common::text;
use crate::harness::{Sim, assert_elapsed, beat, close_code, next_within, state_within};

#[tokio::test(start_paused = true)]
async fn a_client_that_never_says_hello_is_closed_at_the_login_timeout() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let raw = gw.raw().await;
    let connected = Instant::now();
    assert_eq!(close_code(&raw.conn).await, ErrorCode::LoginTimeout);
    let login_timeout = Duration::from_millis(qim_gateway::Config::default().auth.login_timeout_ms);
    assert_elapsed(connected, login_timeout, "closed");
    gw.stop().await;
}

/// With the defaults (a beat every 30 s, 3 missed), a client that logs in
/// and never pings is closed 90 s after its login; an SDK client beating
/// alongside is never dropped.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_beating_is_closed_at_interval_times_max_missed() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let hb = qim_gateway::Config::default().heartbeat;
    let beating = gw.client("erin", "erin-phone").await;

    let silent = gw.raw_login("mallory", "m-silent", 0).await;
    let logged_in = Instant::now();
    assert_eq!(
        close_code(&silent.raw.conn).await,
        ErrorCode::HeartbeatTimeout
    );
    let bound = Duration::from_millis(u64::from(hb.interval_ms * hb.max_missed));
    assert_elapsed(logged_in, bound, "the silent client is closed");

    // Ten more minutes: the beating client is still on its first session.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(beating.state(), ConnectionState::Connected);
    assert_eq!(beating.stats().sessions, 1, "never dropped");
    let alice = gw.client("alice", "alice-phone").await;
    alice
        .send("erin".into(), "still there?".into())
        .await
        .expect("acked");
    let got = next_within(&beating, Duration::from_secs(1)).await;
    assert_eq!(text(&got), "still there?");
    assert_eq!(gw.metric("qim_heartbeat_timeouts_total").await, 1.0);
    gw.stop().await;
}

/// On shutdown, clients that leave on GoAway end the drain at once: the
/// gateway does not wait out `shutdown.drain_ms`, and the clients go on
/// reconnecting rather than stopping.
#[tokio::test(start_paused = true)]
async fn shutdown_tells_clients_to_move_and_drains_without_waiting_out_the_deadline() {
    let sim = Sim::new();
    let gw = sim
        .gateway(|c| c.shutdown.drain_ms = qim_gateway::Config::default().shutdown.drain_ms)
        .await;
    let alice = gw.client("alice", "alice-phone").await;
    let bob = gw.client("bob", "bob-phone").await;
    alice
        .send("bob".into(), "before shutdown".into())
        .await
        .expect("acked");
    next_within(&bob, Duration::from_secs(1)).await;

    let stopping = Instant::now();
    gw.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "drain took {:?}",
        stopping.elapsed()
    );
    let state = state_within(&bob, Duration::from_secs(1), |s| {
        s != ConnectionState::Connected
    })
    .await;
    assert_ne!(state, ConnectionState::Closed, "a GoAway is not the end");
}

/// A client that ignores the GoAway is closed with SHUTTING_DOWN when the
/// drain deadline passes, and not before.
#[tokio::test(start_paused = true)]
async fn a_client_that_ignores_go_away_is_closed_at_the_drain_deadline() {
    let sim = Sim::new();
    let drain = Duration::from_secs(10);
    let gw = sim
        .gateway(|c| c.shutdown.drain_ms = u64::try_from(drain.as_millis()).expect("ms"))
        .await;
    let mut stubborn = gw.raw_login("bob", "bob-raw", 0).await;
    let _beats = beat(&stubborn.raw.conn, Duration::from_secs(30));
    let stopping = tokio::spawn(gw.stop());

    let go_away = stubborn
        .control_recv
        .next::<v1::ServerControl>()
        .await
        .expect("frame")
        .and_then(|c| c.kind);
    assert!(
        matches!(go_away, Some(v1::server_control::Kind::GoAway(_))),
        "{go_away:?}"
    );
    let told = Instant::now();
    assert_eq!(
        close_code(&stubborn.raw.conn).await,
        ErrorCode::ShuttingDown
    );
    assert_elapsed(told, drain, "closed at the drain deadline");
    stopping.await.expect("the gateway stops");
}

/// A partition that outlasts the SDK's pong timeout: the client notices
/// within one heartbeat interval plus the pong timeout, retries with
/// backoff while the network is down, and after the partition heals logs
/// in again and gets what was sent meanwhile, once and in order.
#[tokio::test(start_paused = true)]
async fn after_a_partition_the_client_reconnects_with_backoff_and_resumes_exactly_once() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let config = gw.client_config("bob", "bob-phone");
    let alice = gw.client("alice", "alice-phone").await;
    let (bob, bob_host) = gw.client_on_host("bob", "bob-phone").await;
    // The SDK pings at login, after a spell of traffic, then every
    // heartbeat interval.
    let logged_in = Instant::now();
    alice
        .send("bob".into(), "before".into())
        .await
        .expect("acked");
    assert_eq!(
        text(&next_within(&bob, Duration::from_secs(1)).await),
        "before"
    );

    // Why a sleep: the client must be idle when the partition comes (its
    // one probe after the traffic answered), so that the heartbeat is what
    // notices it; a partition right after traffic is the next test's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.net().partition(bob_host, gw.addr.ip());
    for i in 0..3 {
        alice
            .send("bob".into(), format!("during {i}"))
            .await
            .expect("acked");
    }
    // The last ping was the one probe after "before" arrived; the next
    // goes unanswered.
    let noticed = config.quiet_probe_after + bob.heartbeat_interval() + config.pong_timeout;
    state_within(&bob, noticed + Duration::from_secs(1), |s| {
        s != ConnectionState::Connected
    })
    .await;
    assert_elapsed(logged_in, noticed, "the client notices the dead connection");

    // Down for five minutes: attempts fail, the backoff grows to its cap.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_ne!(bob.state(), ConnectionState::Connected);
    sim.net().heal();
    // At worst an attempt under way times out, then the longest backoff.
    state_within(&bob, config.connect_timeout + config.reconnect_max, |s| {
        s == ConnectionState::Connected
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(text(&next_within(&bob, Duration::from_secs(1)).await));
    }
    assert_eq!(got, ["during 0", "during 1", "during 2"]);
    assert!(
        bob.next_message_timeout(Duration::from_secs(60))
            .await
            .is_none(),
        "nothing twice"
    );
    assert_eq!(bob.stats().sessions, 2);
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}

/// A client that only receives and loses its path right after traffic
/// notices within `quiet_probe_after` + `probe_timeout` (its one probe
/// after the traffic goes unanswered), not at its next heartbeat, and gets
/// what was sent meanwhile on its next connection, once.
#[tokio::test(start_paused = true)]
async fn a_path_lost_right_after_traffic_is_noticed_by_the_quiet_probe() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let config = gw.client_config("bob", "bob-phone");
    let alice = gw.client("alice", "alice-phone").await;
    let (bob, bob_host) = gw.client_on_host("bob", "bob-phone").await;
    alice
        .send("bob".into(), "before".into())
        .await
        .expect("acked");
    assert_eq!(
        text(&next_within(&bob, Duration::from_secs(1)).await),
        "before"
    );
    let received = Instant::now();
    sim.net().partition(bob_host, gw.addr.ip());
    alice
        .send("bob".into(), "during".into())
        .await
        .expect("acked");
    let noticed = config.quiet_probe_after + config.probe_timeout;
    state_within(&bob, noticed + Duration::from_secs(1), |s| {
        s != ConnectionState::Connected
    })
    .await;
    assert_elapsed(received, noticed, "the quiet probe notices the lost path");
    assert!(noticed < bob.heartbeat_interval());
    sim.net().heal();
    assert_eq!(
        text(&next_within(&bob, config.reconnect_max).await),
        "during"
    );
    assert!(
        bob.next_message_timeout(Duration::from_secs(10))
            .await
            .is_none(),
        "nothing twice"
    );
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}

/// A NAT rebinding (the client's public port changes under it) is carried
/// by QUIC's migration: same connection, same session, nothing lost.
#[tokio::test(start_paused = true)]
async fn a_nat_rebinding_keeps_the_session_and_loses_nothing() {
    let sim = Sim::new();
    let gw = sim.gateway(|_| {}).await;
    let alice = gw.client("alice", "alice-phone").await;
    let (bob, bob_host) = gw.client_on_host("bob", "bob-phone").await;
    alice
        .send("bob".into(), "before".into())
        .await
        .expect("acked");
    next_within(&bob, Duration::from_secs(1)).await;

    assert_eq!(sim.net().rebind_host(bob_host).len(), 1);
    // Bob speaks first from the new address (his next beat), then hears.
    tokio::time::sleep(bob.heartbeat_interval()).await;
    alice
        .send("bob".into(), "after".into())
        .await
        .expect("acked");
    assert_eq!(
        text(&next_within(&bob, Duration::from_secs(1)).await),
        "after"
    );
    assert_eq!(bob.state(), ConnectionState::Connected);
    assert_eq!(bob.stats().sessions, 1, "no new session");
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}
