//! UDP blocked or starved between a client and the gateway: the SDK gets
//! its session over TLS on TCP, keeps every guarantee there, and moves back
//! to QUIC when UDP works again.
//!
//! The client reaches the gateway's QUIC port through [`UdpProxy`], an
//! in-process forwarder that passes, drops everything, or drops all but
//! QUIC's long-header packets (the handshake passes, then nothing).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use qim_sdk::{Client, ClientConfig, ClientEvent, Transport};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    DropAll,
    /// Passes QUIC long-header packets (Initial, Handshake, 0-RTT), drops
    /// the short-header ones that carry the session.
    DropAfterHandshake,
}

fn passes(mode: Mode, datagram: &[u8]) -> bool {
    match mode {
        Mode::Pass => true,
        Mode::DropAll => false,
        Mode::DropAfterHandshake => datagram.first().is_some_and(|b| b & 0x80 != 0),
    }
}

/// A UDP forwarder in front of the gateway's QUIC port.
struct UdpProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpProxy {
    async fn start(upstream: SocketAddr, mode: Mode) -> UdpProxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy"));
        let addr = front.local_addr().expect("proxy addr");
        let (mode, modes) = watch::channel(mode);
        let task = tokio::spawn(async move {
            // One upstream socket per client address, each with a task
            // relaying the gateway's answers back.
            let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                if !passes(*modes.borrow(), &buf[..n]) {
                    continue;
                }
                let known = flows.lock().expect("flows").get(&from).cloned();
                let back = match known {
                    Some(back) => back,
                    None => {
                        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
                        back.connect(upstream).await.expect("connect upstream");
                        flows.lock().expect("flows").insert(from, Arc::clone(&back));
                        let (front, back2, modes) =
                            (Arc::clone(&front), Arc::clone(&back), modes.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back2.recv(&mut buf).await {
                                if passes(*modes.borrow(), &buf[..n]) {
                                    let _ = front.send_to(&buf[..n], from).await;
                                }
                            }
                        });
                        back
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        UdpProxy { addr, mode, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client of `user` whose QUIC goes through `proxy` (TCP goes straight
/// to the gateway's TCP port).
fn through(gw: &TestGateway, proxy: &UdpProxy, user: &str) -> ClientConfig {
    let mut config = gw.client_config(user, "phone");
    config.server = proxy.addr.to_string();
    config.tcp_port = gw.tcp.map(|a| a.port());
    config
}

/// Waits for a `Connected(transport)` event.
async fn connected_over(events: &mut qim_sdk::Events, transport: Transport, within: Duration) {
    tokio::time::timeout(within, async {
        loop {
            match events.next().await {
                Some(ClientEvent::Connected(t)) if t == transport => return,
                Some(_) => {}
                None => panic!("the client is gone"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no session over {transport:?} within {within:?}"));
}

/// Sends `n` numbered messages from `from` to `to`, each acked.
async fn send_numbered(from: &Client, to: &str, tag: &str, range: std::ops::Range<usize>) {
    for i in range {
        from.send(to.to_owned(), format!("{tag} {i}"))
            .await
            .expect("send acked");
    }
}

async fn assert_received(client: &Client, tag: &str, n: usize) {
    let got: Vec<String> = take(client, n).await.iter().map(text).collect();
    let want: Vec<String> = (0..n).map(|i| format!("{tag} {i}")).collect();
    assert_eq!(got, want, "every message, in order, once");
    assert_quiet(client, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn with_udp_blocked_the_sdk_logs_in_over_tcp_within_a_second_and_chats_with_every_guarantee()
{
    let gw = TestGateway::start().await;
    let proxy = UdpProxy::start(gw.addr, Mode::DropAll).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let started = Instant::now();
    let a = Client::connect(through(&gw, &proxy, &alice))
        .await
        .expect("connect over TCP");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "logged in after {took:?}");
    assert_eq!(a.transport(), Some(Transport::Tcp));
    let b = gw.client(&bob, "phone").await;
    assert_eq!(b.transport(), Some(Transport::Quic), "bob's UDP works");

    tokio::join!(
        send_numbered(&a, &bob, "a", 0..30),
        send_numbered(&b, &alice, "b", 0..30)
    );
    assert_received(&b, "a", 30).await;
    assert_received(&a, "b", 30).await;

    // A second login on the same network goes to TCP first: no 250 ms
    // spent on QUIC again.
    a.reconnect().await.expect("reconnect");
    assert_eq!(a.transport(), Some(Transport::Tcp));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn when_udp_comes_back_the_session_moves_to_quic_without_losing_or_doubling_a_message() {
    let gw = TestGateway::start().await;
    let proxy = UdpProxy::start(gw.addr, Mode::DropAll).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut config = through(&gw, &proxy, &alice);
    config.quic_retry_min = Duration::from_millis(200);
    config.quic_retry_max = Duration::from_millis(400);
    let a = Arc::new(Client::connect(config).await.expect("connect"));
    let mut events = a.events();
    assert_eq!(a.transport(), Some(Transport::Tcp));
    let b = Arc::new(gw.client(&bob, "phone").await);

    // Both chat all along; UDP comes back in the middle.
    const N: usize = 60;
    let chat = {
        let (a, b, alice, bob) = (Arc::clone(&a), Arc::clone(&b), alice.clone(), bob.clone());
        tokio::spawn(async move {
            for i in 0..N {
                tokio::join!(
                    send_numbered(&a, &bob, "a", i..i + 1),
                    send_numbered(&b, &alice, "b", i..i + 1)
                );
                // Why a sleep: it is the subject (a chat at a steady pace
                // across the switch), not a wait for an outcome.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    proxy.set(Mode::Pass);
    connected_over(&mut events, Transport::Quic, Duration::from_secs(5)).await;
    chat.await.expect("chat");
    assert_eq!(a.transport(), Some(Transport::Quic));
    assert_received(&b, "a", N).await;
    assert_received(&a, "b", N).await;
}

#[tokio::test]
async fn when_quic_carries_nothing_after_its_handshake_the_sdk_falls_back_to_tcp_within_5_s() {
    let gw = TestGateway::start().await;
    let proxy = UdpProxy::start(gw.addr, Mode::Pass).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let a = Client::connect(through(&gw, &proxy, &alice))
        .await
        .expect("connect");
    let mut events = a.events();
    assert_eq!(a.transport(), Some(Transport::Quic));
    let b = gw.client(&bob, "phone").await;

    // The network starts eating everything but handshakes.
    proxy.set(Mode::DropAfterHandshake);
    let started = Instant::now();
    let sent = tokio::spawn({
        let bob = bob.clone();
        async move {
            a.send(bob, "through the stall".to_owned())
                .await
                .expect("acked");
            a
        }
    });
    connected_over(&mut events, Transport::Tcp, Duration::from_secs(5)).await;
    let a = sent.await.expect("send task");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "fell back after {took:?}");
    let got = take(&b, 1).await;
    assert_eq!(text(&got[0]), "through the stall");
    assert_quiet(&b, Duration::from_millis(300)).await;

    // A new login on this network goes straight to TCP, and a QUIC that
    // logs in but never answers is also left within the bound.
    let c = Client::connect(through(&gw, &proxy, &unique("carol")))
        .await
        .expect("connect");
    assert_eq!(c.transport(), Some(Transport::Tcp));
    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test]
async fn a_fresh_client_whose_quic_stalls_after_the_handshake_logs_in_over_tcp() {
    let gw = TestGateway::start().await;
    let proxy = UdpProxy::start(gw.addr, Mode::DropAfterHandshake).await;
    let started = Instant::now();
    let a = Client::connect(through(&gw, &proxy, &unique("alice")))
        .await
        .expect("connect");
    let took = started.elapsed();
    assert_eq!(a.transport(), Some(Transport::Tcp));
    assert!(took < Duration::from_secs(1), "logged in after {took:?}");
    a.close().await;
}

#[tokio::test]
async fn tcp_sessions_resume_their_tls_session_on_reconnect() {
    let gw = TestGateway::start().await;
    let mut config = gw.client_config(&unique("alice"), "phone");
    config.transport = qim_sdk::TransportPolicy::TcpOnly;
    let a = Client::connect(config).await.expect("connect");
    assert_eq!(a.transport(), Some(Transport::Tcp));
    let before = gw.metric("qim_tls_resumptions_total").await;
    a.reconnect().await.expect("reconnect");
    assert_eq!(a.transport(), Some(Transport::Tcp));
    let after = gw.metric("qim_tls_resumptions_total").await;
    assert!(
        after > before,
        "the second TLS handshake resumed ({before} -> {after})"
    );
    a.close().await;
}
