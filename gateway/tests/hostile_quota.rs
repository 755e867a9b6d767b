//! Attacks on the per-user quotas and on the store's limits, through a real
//! gateway, with a bystander pair chatting through each:
//! - a send flood to a large write-diffusion group is refused
//!   `RATE_LIMITED` with `retry_after_ms` once the sender's copies bucket is
//!   empty, on every session of the user;
//! - a byte flood stops at `quotas.stored_bytes_per_day`
//!   (`QUOTA_EXCEEDED`), which `quota()` reports;
//! - a `client_msg_id` reused for another message is refused
//!   `IDEMPOTENCY_CONFLICT` and delivers nothing;
//! - a nearly full disk (embedded) refuses writes with `STORE_FULL` while
//!   deliveries, their acks and history reads go on, and writes resume when
//!   space is back, without a restart.

mod common;

use std::time::Duration;

use common::{Backend, Bystanders, PATIENCE, Raw, RawSession, TestGateway, assert_quiet, take};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode};
use qim_sdk::{Error, OutgoingMessage, Peer};

/// A raw session's chat stream and the server's ack stream.
struct Sender {
    _session: RawSession,
    chat: FramedSend,
    acks: FramedRecv,
    /// Kept open (unread): a dropped delivery stream ends the session.
    _delivery: FramedRecv,
}

impl Sender {
    async fn login(gw: &TestGateway, user: &str, device: &str) -> Sender {
        let session = Raw::login(gw, user, device, 0).await;
        let (acks, delivery) = session.raw.server_streams().await;
        let chat = session.raw.open_uni(StreamKind::Chat).await;
        Sender {
            _session: session,
            chat,
            acks,
            _delivery: delivery,
        }
    }

    async fn send(&mut self, send: &v1::Send) {
        self.chat.send(send).await.expect("write a send");
    }

    /// The next ack or nack.
    async fn answer(&mut self) -> server_answer::Answer {
        let ack = tokio::time::timeout(PATIENCE, self.acks.next::<v1::ServerAck>())
            .await
            .expect("an answer in time")
            .expect("ack stream")
            .and_then(|a| a.kind)
            .expect("an ack or a nack");
        server_answer::Answer(ack)
    }

    /// Sends `send` until it is acked (answers to it may be refusals that
    /// ask to wait); returns the ack.
    async fn send_until_acked(&mut self, send: &v1::Send) -> v1::SendAck {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.send(send).await;
            match self.answer().await.0 {
                v1::server_ack::Kind::Ack(ack) => return ack,
                v1::server_ack::Kind::Nack(nack) => {
                    assert!(nack.retryable, "{nack:?}");
                    assert!(tokio::time::Instant::now() < deadline, "never acked");
                    // Why a sleep: the wait the server asked for
                    // (retry_after_ms) is the subject, not a guess.
                    tokio::time::sleep(Duration::from_millis(u64::from(
                        nack.retry_after_ms.max(10),
                    )))
                    .await;
                }
            }
        }
    }
}

mod server_answer {
    use qim_proto::v1;

    /// One ack-stream frame.
    #[derive(Debug)]
    pub(super) struct Answer(pub(super) v1::server_ack::Kind);

    impl Answer {
        pub(super) fn nack(self) -> v1::SendNack {
            match self.0 {
                v1::server_ack::Kind::Nack(n) => n,
                v1::server_ack::Kind::Ack(a) => panic!("expected a refusal, got {a:?}"),
            }
        }
    }
}

fn to_group(id: &str, group: &str, body: &[u8]) -> v1::Send {
    let mut send = common::send_frame(id, "unused", body);
    send.to = Some(v1::Peer {
        target: Some(v1::peer::Target::Group(group.to_owned())),
    });
    send
}

fn rejected(err: &Error) -> Option<(ErrorCode, bool)> {
    match err {
        Error::Rejected {
            code, retryable, ..
        } => Some((*code, *retryable)),
        _ => None,
    }
}

/// A user floods a 50-member write-diffusion group: each send costs 50
/// copies, so after the burst (400 copies: 8 sends) the rest are refused
/// `RATE_LIMITED`, retryable, with a `retry_after_ms` that matches the
/// copies missing (50 at 10/s: up to 5 s), and the sends behind it on the
/// same stream `ORDER_HELD` (not stored before it); the user's other session is
/// refused as well (the bucket is the user's), and a send goes through
/// once the wait is over.
async fn a_send_flood_to_a_large_group_is_rate_limited_by_fan_out(backend: Backend) {
    let gw = TestGateway::start_on(backend, |c| {
        c.quotas.copies_per_second = 10;
        c.quotas.copies_burst = 400;
        // Members who let anyone add them: the group's size is the
        // subject here, not consent.
        c.groups.default_adds = "anyone".into();
    })
    .await;
    let by = Bystanders::start(&gw).await;
    let attacker = common::unique("flooder");
    let group = common::unique("big");
    let members: Vec<String> = (0..49).map(|i| format!("{group}-m{i}")).collect();
    let owner = gw.client(&attacker, "sdk").await;
    let info = owner
        .create_group(group.clone(), "big".into(), members)
        .await
        .expect("create");
    assert_eq!((info.member_count, info.read_diffusion), (50, false));

    let mut flood = Sender::login(&gw, &attacker, "flood").await;
    for i in 0..40 {
        flood
            .send(&to_group(&format!("f{i}"), &group, b"spam"))
            .await;
    }
    let mut acked = 0;
    let mut refused = Vec::new();
    for _ in 0..40 {
        match flood.answer().await.0 {
            v1::server_ack::Kind::Ack(_) => acked += 1,
            v1::server_ack::Kind::Nack(n) => refused.push(n),
        }
    }
    // The burst, plus what refilled while the flood was answered (10
    // copies a second: a fifth of a send).
    assert!((8..=9).contains(&acked), "acked {acked} of 40");
    // The first refusal is the quota's; it holds the stream, so the sends
    // after it are refused for order, not stored and not charged.
    let (first, held) = refused.split_first().expect("refusals");
    assert_eq!(first.code, ErrorCode::RateLimited as i32, "{first:?}");
    assert!(first.retryable);
    assert!(
        (1..=5_000).contains(&first.retry_after_ms),
        "50 copies at 10/s: at most 5 s, got {}",
        first.retry_after_ms
    );
    for nack in held {
        assert_eq!(nack.code, ErrorCode::OrderHeld as i32, "{nack:?}");
        assert!(nack.retryable);
    }
    // The user's other session draws from the same bucket.
    let mut other = Sender::login(&gw, &attacker, "other").await;
    other.send(&to_group("o1", &group, b"me too")).await;
    let nack = other.answer().await.nack();
    assert_eq!(nack.code, ErrorCode::RateLimited as i32);
    // After the wait it asked for, the refused send goes through (first:
    // the stream holds everything after it).
    other
        .send_until_acked(&to_group("o1", &group, b"me too"))
        .await;
    assert!(
        gw.metric("qim_quota_refusals_total{quota=\"sends_per_second\"}")
            .await
            >= 2.0
    );
    by.finish().await;
    owner.close().await;
}

/// A user sends large bodies until the day's stored bytes are used up: the
/// next send is refused `QUOTA_EXCEEDED`, not retryable, nothing past the
/// limit is stored, and `quota()` reports the limit and what was used.
async fn a_byte_flood_stops_at_the_days_stored_bytes(backend: Backend) {
    const LIMIT: u64 = 100 * 1024;
    let gw = TestGateway::start_on(backend, |c| {
        c.quotas.stored_bytes_per_day = LIMIT;
    })
    .await;
    let by = Bystanders::start(&gw).await;
    let attacker = common::unique("hoarder");
    let victim = common::unique("victim");
    let client = gw.client(&attacker, "sdk").await;
    let body = vec![b'x'; 16 * 1024];
    let mut sent = 0u64;
    let refusal = loop {
        let message = OutgoingMessage {
            to: victim.clone(),
            kind: "blob".into(),
            body: body.clone(),
            client_msg_id: None,
        };
        match client.send_message(message).await {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= LIMIT / 16 / 1024, "sent past the limit");
    };
    assert_eq!(
        rejected(&refusal),
        Some((ErrorCode::QuotaExceeded, false)),
        "{refusal:?}"
    );
    // Six of 16 KiB fit in 100 KiB.
    assert_eq!(sent, 6);
    let quotas = client.quota().await.expect("quota");
    let bytes = quotas
        .iter()
        .find(|q| q.name == "stored_bytes_per_day")
        .expect("stored bytes reported");
    assert_eq!((bytes.limit, bytes.used), (LIMIT, 6 * 16 * 1024));
    let rate = quotas
        .iter()
        .find(|q| q.name == "sends_per_second")
        .expect("send rate reported");
    assert_eq!(rate.limit, u64::from(gw.config.quotas.copies_per_second));
    for name in ["groups_owned", "pending_requests"] {
        assert!(quotas.iter().any(|q| q.name == name), "{name} reported");
    }
    // What is left of the day (4,096 bytes) still takes a small message,
    // and refuses one a byte too large.
    client
        .send(victim.clone(), "hi".into())
        .await
        .expect("4 bytes fit");
    let err = client
        .send_message(OutgoingMessage {
            to: victim.clone(),
            kind: "blob".into(),
            body: vec![b'y'; 4095],
            client_msg_id: None,
        })
        .await
        .expect_err("4,095 bytes do not fit in the 4,094 left");
    assert_eq!(rejected(&err), Some((ErrorCode::QuotaExceeded, false)));
    let reader = gw.client(&victim, "read").await;
    assert_eq!(take(&reader, 7).await.len(), 7);
    assert_quiet(&reader, Duration::from_millis(300)).await;
    assert!(
        gw.metric("qim_quota_refusals_total{quota=\"stored_bytes_per_day\"}")
            .await
            >= 2.0
    );
    by.finish().await;
    client.close().await;
    reader.close().await;
}

/// A `client_msg_id` sent again with another recipient or body is refused
/// `IDEMPOTENCY_CONFLICT` (not retryable): the first message stands, the
/// second reaches nobody. The same message again is still a duplicate,
/// answered with the first receipt.
async fn a_reused_client_msg_id_with_another_message_is_a_conflict(backend: Backend) {
    let gw = TestGateway::start_on(backend, |_| {}).await;
    let by = Bystanders::start(&gw).await;
    let (attacker, bob, carol) = (
        common::unique("reuser"),
        common::unique("bob"),
        common::unique("carol"),
    );
    let client = gw.client(&attacker, "sdk").await;
    let message = |to: &str, text: &str| OutgoingMessage {
        to: to.to_owned(),
        kind: "text".into(),
        body: text.as_bytes().to_vec(),
        client_msg_id: Some("same-id".into()),
    };
    let first = client
        .send_message(message(&bob, "hello bob"))
        .await
        .expect("first");
    for (to, text) in [(&carol, "hello bob"), (&bob, "changed")] {
        let err = client
            .send_message(message(to, text))
            .await
            .expect_err("a conflict");
        assert_eq!(
            rejected(&err),
            Some((ErrorCode::IdempotencyConflict, false)),
            "{err:?}"
        );
    }
    let again = client
        .send_message(message(&bob, "hello bob"))
        .await
        .expect("a resend");
    assert_eq!((again.msg_id, again.seq), (first.msg_id, first.seq));
    let bob = gw.client(&bob, "b").await;
    let got = take(&bob, 1).await;
    assert_eq!(common::text(&got[0]), "hello bob");
    assert_quiet(&bob, Duration::from_millis(300)).await;
    let carol = gw.client(&carol, "c").await;
    assert_quiet(&carol, Duration::from_millis(300)).await;
    by.finish().await;
    for c in [client, bob, carol] {
        c.close().await;
    }
}

on_both_backends!(
    a_send_flood_to_a_large_group_is_rate_limited_by_fan_out,
    a_byte_flood_stops_at_the_days_stored_bytes,
    a_reused_client_msg_id_with_another_message_is_a_conflict,
);

/// The embedded store's disk is nearly full (its floor set above what is
/// free): sends and rpc writes are refused `STORE_FULL`, retryable, with
/// `retry_after_ms`; a message stored before is still delivered and acked,
/// history is read; the gateway keeps running (no store failure, no
/// restart); when space is back, the refused send goes through and the
/// bystanders' held sends are delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_writes_and_keeps_serving_reads_and_acks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stores = qim_gateway::Stores::open_embedded(&dir.path().join("store"), 0).expect("open");
    let disk = stores.disk.clone().expect("an embedded store has a disk");
    let gw = TestGateway::start_embedded_on(dir, |_| {}, stores).await;
    let by = Bystanders::start(&gw).await;
    let (alice, bob) = (common::unique("alice"), common::unique("bob"));
    let alice_sdk = gw.client(&alice, "sdk").await;
    let before = alice_sdk
        .send(bob.clone(), "before the disk filled".into())
        .await
        .expect("stored");

    disk.set_min_free_bytes(disk.refresh().saturating_add(1 << 40));
    let mut raw = Sender::login(&gw, &alice, "raw").await;
    raw.send(&common::send_frame("full-1", &bob, b"while full"))
        .await;
    let nack = raw.answer().await.nack();
    assert_eq!(nack.code, ErrorCode::StoreFull as i32, "{nack:?}");
    assert!(nack.retryable && nack.retry_after_ms > 0);
    let err = alice_sdk
        .create_group(common::unique("g"), "g".into(), vec![])
        .await
        .expect_err("an rpc write is refused");
    assert_eq!(rejected(&err), Some((ErrorCode::StoreFull, true)));

    // Reads and acks: bob gets the stored message (and acks it by taking
    // it), and reads the conversation's history.
    let bob_sdk = gw.client(&bob, "b").await;
    let got = take(&bob_sdk, 1).await;
    assert_eq!(got[0].seq, before.seq);
    let page = bob_sdk
        .history(
            Peer::User(alice.clone()),
            qim_sdk::HistoryAnchor::End,
            false,
            10,
        )
        .await
        .expect("history is read while full");
    assert_eq!(page.messages.len(), 1);
    common::poll_until("qim_store_full is 1", || async {
        (gw.metric("qim_store_full").await == 1.0).then_some(())
    })
    .await;

    // Space is back: the same send goes through; the gateway never stopped.
    disk.set_min_free_bytes(1);
    raw.send_until_acked(&common::send_frame("full-1", &bob, b"while full"))
        .await;
    let got = take(&bob_sdk, 1).await;
    assert_eq!(common::text(&got[0]), "while full");
    by.finish().await;
    for c in [alice_sdk, bob_sdk] {
        c.close().await;
    }
}
