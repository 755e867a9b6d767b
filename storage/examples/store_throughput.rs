//! Durable append throughput of the embedded store through the
//! `MessageStore` trait, with the gateway's write pattern: many concurrent
//! callers, each appending small batches in order.
//!
//! `cargo run --release -p qim-storage --example store_throughput`

use std::sync::Arc;
use std::time::Instant;

use qim_proto::v1;
use qim_storage::embedded::EmbeddedStore;
use qim_storage::{MessageStore, NewMessage};

const WRITERS: usize = 32;
const BATCHES: usize = 400;
const BATCH: usize = 16;
const BODY: usize = 200;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let batch = (0..BATCH)
                    .map(|i| NewMessage {
                        inbox: format!("user{}", (w * 7 + i) % 200),
                        sender: format!("sender{w}"),
                        sender_device: "d".into(),
                        client_msg_id: format!("{b}-{i}"),
                        to: v1::Peer::default(),
                        kind: "text".into(),
                        body: vec![b'x'; BODY].into(),
                        server_time_ms: 0,
                    })
                    .collect();
                store.append(batch).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let elapsed = started.elapsed();
    let total = WRITERS * BATCHES * BATCH;
    println!(
        "durable appends: {total} messages of {BODY} B from {WRITERS} concurrent writers in {elapsed:.2?}: {:.0} messages/s",
        total as f64 / elapsed.as_secs_f64()
    );
    let reads = 2000;
    let started = Instant::now();
    for i in 0..reads {
        let inbox = format!("user{}", i % 200);
        let head = store.inbox_head(&inbox).await.expect("head");
        let page = store
            .read_inbox(&inbox, head.saturating_sub(100), 100)
            .await
            .expect("read");
        assert!(!page.is_empty());
    }
    println!(
        "catch-up read (head + last up to 100 of an inbox): {:.1} µs each",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(reads)
    );
}
