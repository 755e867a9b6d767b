//! A sender's order on the cluster store (Redis + CQL) under store faults:
//! no message of a sender is stored after that sender's later message to
//! the same conversation, whatever fails in between.
//!
//! Needs the local services: `QIM_TEST_CQL` and `QIM_TEST_REDIS` (`cargo
//! xtask test` starts them and sets both).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    Bystanders, PATIENCE, Raw, TestGateway, assert_quiet, required_env, send_frame, take, text,
    unique,
};
use qim_proto::io::FramedRecv;
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, server_ack};
use qim_sdk::OutgoingMessage;

/// The keyspace of these tests (and the chaos test's).
const KEYSPACE: &str = "qim_cluster_test";

/// A gateway on the cluster store, its CQL reached at `cql`.
async fn cluster_gateway(cql: &str) -> TestGateway {
    let cql_addr = required_env("QIM_TEST_CQL");
    common::migrate_keyspace(&cql_addr, KEYSPACE).await;
    let (redis, cql) = (required_env("QIM_TEST_REDIS"), cql.to_owned());
    TestGateway::start_with(move |c| {
        c.store.redis = Some(redis);
        c.store.cql = Some(cql);
        c.store.keyspace = KEYSPACE.to_owned();
        c.store.key_prefix = unique("qimtest:");
        c.store.key_prefix.push(':');
        c.store.timeout_ms = 1_000;
        common::cluster_secrets(c);
    })
    .await
}

/// The next answer on the ack stream.
async fn answer(acks: &mut FramedRecv) -> server_ack::Kind {
    tokio::time::timeout(PATIENCE, acks.next::<v1::ServerAck>())
        .await
        .expect("an answer in time")
        .expect("ack frame")
        .and_then(|a| a.kind)
        .expect("an ack or a nack")
}

fn nack_code(kind: &server_ack::Kind) -> Option<ErrorCode> {
    match kind {
        server_ack::Kind::Nack(n) => ErrorCode::try_from(n.code).ok(),
        server_ack::Kind::Ack(_) => None,
    }
}

/// A send refused as retryable (the store away) holds its chat stream: a
/// later send on it is refused with `ORDER_HELD` and not stored, even once
/// the store is back, until the refused one is sent again; then both are
/// stored in the order sent. SDK users chatting through the outage get
/// everything once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_as_retryable_holds_its_stream_so_nothing_overtakes_it() {
    let upstream: SocketAddr = required_env("QIM_TEST_CQL")
        .parse()
        .expect("QIM_TEST_CQL is host:port");
    let (proxy_addr, open) = common::proxy(upstream).await;
    let gw = cluster_gateway(&proxy_addr.to_string()).await;
    let bystanders = Bystanders::start(&gw).await;
    let (c, b) = (unique("carol"), unique("bob"));
    let bob = gw.client(&b, "bob-phone").await;
    let carol = Raw::login(&gw, &c, "carol-raw", 0).await;
    let (mut acks, _deliveries) = carol.raw.server_streams().await;
    let mut chat = carol.raw.open_uni(StreamKind::Chat).await;

    open.send_replace(false);
    chat.send(&send_frame("first", &b, b"first"))
        .await
        .expect("send");
    let refused = answer(&mut acks).await;
    assert_eq!(nack_code(&refused), Some(ErrorCode::StoreUnavailable));
    open.send_replace(true);

    // The store is back, but "second" may not overtake "first".
    chat.send(&send_frame("second", &b, b"second"))
        .await
        .expect("send");
    let held = answer(&mut acks).await;
    assert_eq!(nack_code(&held), Some(ErrorCode::OrderHeld), "{held:?}");
    let server_ack::Kind::Nack(held) = held else {
        unreachable!("checked above")
    };
    assert!(held.retryable, "a held send may be sent again");
    assert_quiet(&bob, Duration::from_millis(300)).await;

    // "first" again (until the store answers), then "second".
    let first = loop {
        chat.send(&send_frame("first", &b, b"first"))
            .await
            .expect("resend");
        match answer(&mut acks).await {
            server_ack::Kind::Ack(ack) => break ack,
            server_ack::Kind::Nack(n) if n.code == ErrorCode::StoreUnavailable as i32 => {}
            other => panic!("unexpected answer {other:?}"),
        }
    };
    chat.send(&send_frame("second", &b, b"second"))
        .await
        .expect("resend");
    let server_ack::Kind::Ack(second) = answer(&mut acks).await else {
        panic!("second is stored once first is")
    };
    assert!(first.seq < second.seq, "{first:?} {second:?}");
    let got: Vec<String> = take(&bob, 2).await.iter().map(text).collect();
    assert_eq!(got, ["first", "second"]);
    assert_quiet(&bob, Duration::from_millis(300)).await;
    bystanders.finish().await;
    bob.close().await;
    gw.stop().await;
}

/// Leaves what a node leaves when its write of a claimed send never lands:
/// the claim of `(sender, client_msg_id)` at `seq` of `inbox`, written
/// `age` ago, and no message.
async fn claim_unwritten(sender: &str, client_msg_id: &str, inbox: &str, seq: u64, age: Duration) {
    let session = qim_storage::cql::connect(&qim_storage::cql::CqlOptions::new(
        vec![required_env("QIM_TEST_CQL")],
        KEYSPACE,
    ))
    .await
    .expect("cql");
    let written_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .saturating_sub(age)
        .as_micros();
    session
        .query_unpaged(
            format!(
                "INSERT INTO {KEYSPACE}.idempotency (sender, client_msg_id, inbox, seq, msg_id) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP {written_us}"
            ),
            (
                sender,
                client_msg_id,
                inbox,
                i64::try_from(seq).expect("seq"),
                unique("lost-msg"),
            ),
        )
        .await
        .expect("write the claim");
}

fn to(user: &str, id: &str) -> OutgoingMessage {
    OutgoingMessage {
        to: user.to_owned(),
        kind: "text".into(),
        body: id.as_bytes().to_vec(),
        client_msg_id: Some(id.to_owned()),
    }
}

/// A send whose first attempt was claimed and never written, resent after
/// the fill window: when the sender's later message to the same recipient
/// is stored since, the resend is refused with `SEND_SUPERSEDED` (a new seq
/// would put it after that message) and nothing is stored; with no later
/// message of that sender there, it is stored at a new seq as before, also
/// when others wrote to the inbox in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resend_overtaken_by_the_senders_later_message_is_refused_not_reordered() {
    let cql_addr = required_env("QIM_TEST_CQL");
    let redis_url = required_env("QIM_TEST_REDIS");
    let gw = cluster_gateway(&cql_addr).await;
    let (a, b, d) = (unique("alice"), unique("bob"), unique("dave"));
    let alice = gw.client(&a, "alice-phone").await;
    let dave = gw.client(&d, "dave-phone").await;
    // The seqs claimed and never written stay gaps; bob's phone need not
    // sit them out (how gaps settle is not the subject here).
    let mut config = gw.client_config(&b, "bob-phone");
    config.gap_skip_after = Duration::from_millis(300);
    let bob = qim_sdk::Client::connect(config).await.expect("connect");
    let window = qim_storage::cluster::FILL_WINDOW_MIN;

    // alice's "lost" was claimed at bob's next seq by a node that died.
    // (The SDK sends it as a first attempt, since it never wrote it: the
    // store then takes a seq before it finds the claim, and that seq stays
    // a gap. Seqs are read from the acks for that reason.)
    let one = alice.send_message(to(&b, "one")).await.expect("acked");
    common::hand_out_unwritten(&gw, &cql_addr, &redis_url, &b, one.seq + 1).await;
    claim_unwritten(&a, "lost", &b, one.seq + 1, window * 2).await;
    let later = alice.send_message(to(&b, "later")).await.expect("acked");
    assert!(later.seq > one.seq + 1);
    let refused = alice.send_message(to(&b, "lost")).await;
    match refused {
        Err(qim_sdk::Error::Rejected {
            code, retryable, ..
        }) => {
            assert_eq!(code, ErrorCode::SendSuperseded);
            assert!(!retryable);
        }
        other => panic!("expected SEND_SUPERSEDED, got {other:?}"),
    }

    // dave's "late" was claimed at bob's next seq; only alice wrote since.
    let dave_one = dave.send_message(to(&b, "dave-one")).await.expect("acked");
    common::hand_out_unwritten(&gw, &cql_addr, &redis_url, &b, dave_one.seq + 1).await;
    claim_unwritten(&d, "late", &b, dave_one.seq + 1, window * 2).await;
    let alice_after = alice
        .send_message(to(&b, "alice-after"))
        .await
        .expect("acked");
    let late = dave.send_message(to(&b, "late")).await.expect("stored");
    assert!(late.seq > alice_after.seq, "at a new seq, after alice's");

    let got: Vec<(u64, String)> = take(&bob, 5)
        .await
        .iter()
        .map(|m| (m.seq, text(m)))
        .collect();
    assert_eq!(
        got,
        [
            (one.seq, "one".to_owned()),
            (later.seq, "later".to_owned()),
            (dave_one.seq, "dave-one".to_owned()),
            (alice_after.seq, "alice-after".to_owned()),
            (late.seq, "late".to_owned()),
        ]
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
    for client in [alice, dave, bob] {
        client.close().await;
    }
    gw.stop().await;
}

/// `Send.first_attempt` lets the cluster store skip looking for an earlier
/// attempt. A client that sets it on a resend (by mistake, or to leave
/// gaps in a recipient's inbox) still gets its message stored once, and
/// is believed once per session: its first wrong flag costs the recipient
/// one unused seq, the next ones nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_first_attempt_flag_stores_once_and_is_believed_once() {
    let gw = cluster_gateway(&required_env("QIM_TEST_CQL")).await;
    let (c, b) = (unique("carol"), unique("bob"));
    // The one unused seq stays a gap; bob's phone need not sit it out.
    let mut config = gw.client_config(&b, "bob-phone");
    config.gap_skip_after = Duration::from_millis(300);
    let bob = qim_sdk::Client::connect(config).await.expect("connect");
    let carol = Raw::login(&gw, &c, "carol-raw", 0).await;
    let (mut acks, _deliveries) = carol.raw.server_streams().await;
    let mut chat = carol.raw.open_uni(StreamKind::Chat).await;
    let mut send = async |id: &str, body: &str| {
        let frame = v1::Send {
            first_attempt: true,
            ..send_frame(id, &b, body.as_bytes())
        };
        chat.send(&frame).await.expect("send");
        match answer(&mut acks).await {
            server_ack::Kind::Ack(ack) => ack,
            other => panic!("{id}: {other:?}"),
        }
    };
    let one = send("one", "one").await;
    let again = send("one", "one").await;
    assert_eq!(
        (again.seq, &again.msg_id),
        (one.seq, &one.msg_id),
        "stored once"
    );
    let two = send("two", "two").await;
    assert_eq!(two.seq, one.seq + 2, "the first wrong flag was believed");
    let again = send("two", "two").await;
    assert_eq!(
        (again.seq, &again.msg_id),
        (two.seq, &two.msg_id),
        "stored once"
    );
    let three = send("three", "three").await;
    assert_eq!(three.seq, two.seq + 1, "later flags are not believed");

    let got: Vec<String> = take(&bob, 3).await.iter().map(text).collect();
    assert_eq!(got, ["one", "two", "three"]);
    assert_quiet(&bob, Duration::from_millis(300)).await;
    bob.close().await;
    gw.stop().await;
}
