//! The storage conformance suite against the cluster backend: Redis
//! (`QIM_TEST_REDIS`) and a CQL server (`QIM_TEST_CQL`), as started by
//! `cargo xtask services up`.
//!
//! All checks of this binary share one keyspace (creating a keyspace takes
//! seconds on Cassandra; the suite's names are unique per check), and each
//! check gets its own Redis key prefix.

use std::sync::Arc;

use async_trait::async_trait;
use qim_storage::MessageStore;
use qim_storage::cluster::{ClusterOptions, ClusterStore};
use qim_storage::conformance::Backend;
use qim_storage::cql::{self, CqlOptions};

const KEYSPACE: &str = "qim_conformance";

struct Cluster {
    options: ClusterOptions,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the local services \
             (`cargo xtask services up`, then e.g. QIM_TEST_REDIS=redis://127.0.0.1:6390 \
             QIM_TEST_CQL=127.0.0.1:9042; `cargo xtask test` sets both)"
        )
    })
}

impl Cluster {
    fn new() -> Self {
        let cql = CqlOptions::new(vec![required_env("QIM_TEST_CQL")], KEYSPACE);
        let mut options = ClusterOptions::new(required_env("QIM_TEST_REDIS"), cql);
        options.key_prefix = format!("qimtest:{:08x}:", rand::random::<u32>());
        Self { options }
    }
}

#[async_trait]
impl Backend for Cluster {
    async fn open(&self) -> Arc<dyn MessageStore> {
        cql::connect_and_migrate(&self.options.cql)
            .await
            .expect("migrate the test keyspace");
        Arc::new(
            ClusterStore::connect(&self.options)
                .await
                .expect("connect to Redis and CQL"),
        )
    }
}

qim_storage::conformance_tests!(Cluster::new());

#[async_trait]
impl qim_storage::conformance_im::ImBackend for Cluster {
    async fn open_im(&self) -> qim_storage::Stores {
        cql::connect_and_migrate(&self.options.cql)
            .await
            .expect("migrate the test keyspace");
        qim_storage::Stores::connect_cluster(&self.options, 0)
            .await
            .expect("connect to Redis and CQL")
    }
}

/// Every IM check, unchanged, on the cluster backend.
mod im {
    use super::Cluster;
    qim_storage::im_conformance_tests!(Cluster::new());
}

/// Two stores (two gateway nodes) append to one inbox while the Redis
/// counter keys are deleted again and again (a Redis losing its data): no
/// seq is issued twice and every acknowledged message is readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loss_never_reissues_a_seq() {
    use qim_storage::conformance::{message, unique};
    let backend = Cluster::new();
    let (a, b) = (backend.open().await, backend.open().await);
    let inbox = unique("in");
    let redis = qim_storage::cluster::connect_redis(
        &backend.options.redis_url,
        std::time::Duration::from_secs(2),
    )
    .await
    .expect("redis");
    let keys = vec![
        format!("{}seq:{{{inbox}}}", backend.options.key_prefix),
        format!("{}seqres:{{{inbox}}}", backend.options.key_prefix),
    ];
    // Each finished batch asks for a wipe: the counter is lost many times,
    // between and during other appends.
    let (wipe_tx, mut wipe_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let wiper = tokio::spawn(async move {
        use fred::interfaces::KeysInterface as _;
        let mut wipes = 0u32;
        while wipe_rx.recv().await.is_some() {
            let _: i64 = redis.del(keys.clone()).await.expect("del");
            wipes += 1;
        }
        wipes
    });
    let mut tasks = Vec::new();
    for (n, store) in [a, b].into_iter().enumerate() {
        let inbox = inbox.clone();
        let wipe = wipe_tx.clone();
        tasks.push(tokio::spawn(async move {
            let sender = unique(&format!("s{n}"));
            let mut seqs = Vec::new();
            for round in 0..20 {
                let batch = (0..3)
                    .map(|i| message(&inbox, &sender, &format!("{n}-{round}-{i}")))
                    .collect();
                let out = store.append(batch).await.expect("append");
                seqs.extend(out.iter().map(|m| m.message.seq));
                if round % 2 == n {
                    wipe.send(()).expect("wiper");
                }
            }
            (store, seqs)
        }));
    }
    let mut all = Vec::new();
    let mut store = None;
    for t in tasks {
        let (s, seqs) = t.await.expect("task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a sender's order is kept"
        );
        all.extend(seqs);
        store = Some(s);
    }
    drop(wipe_tx);
    let wipes = wiper.await.expect("wiper");
    assert_eq!(wipes, 20, "the counter was wiped during the appends");
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 120, "no seq issued twice");
    let store = store.expect("a store");
    let read = store.read_inbox(&inbox, 0, 1000).await.expect("read");
    let read_seqs: Vec<u64> = read.iter().map(|m| m.seq).collect();
    assert_eq!(read_seqs, sorted, "every acknowledged message is stored");
    assert_eq!(
        store.inbox_head(&inbox).await.expect("head"),
        *sorted.last().expect("seqs")
    );
}

/// The same resend stored through two nodes at once is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resends_on_two_nodes_store_once() {
    use qim_storage::conformance::{message_with_id, unique};
    let backend = Cluster::new();
    let (a, b) = (backend.open().await, backend.open().await);
    let (inbox, sender) = (unique("in"), unique("s"));
    for round in 0..10 {
        let id = format!("cm-{round}");
        let (ra, rb) = tokio::join!(
            a.append(vec![message_with_id(&inbox, &sender, &id, "x")]),
            b.append(vec![message_with_id(&inbox, &sender, &id, "x")]),
        );
        let (ra, rb) = (ra.expect("append a"), rb.expect("append b"));
        assert_eq!(ra[0].message, rb[0].message, "both answer the same message");
        assert!(
            ra[0].duplicate != rb[0].duplicate,
            "exactly one stored it (round {round})"
        );
    }
    let read = a.read_inbox(&inbox, 0, 100).await.expect("read");
    assert_eq!(read.len(), 10, "each resend stored once");
}

/// Reads and heads cross partition (bucket) boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cross_bucket_boundaries() {
    use qim_storage::conformance::{message, unique};
    let backend = Cluster::new();
    cql::connect_and_migrate(&backend.options.cql)
        .await
        .expect("migrate the test keyspace");
    let store = ClusterStore::connect(&backend.options)
        .await
        .expect("connect");
    let (inbox, sender) = (unique("in"), unique("s"));
    // Start the inbox just below the end of its first bucket.
    let start = cql::SEQS_PER_BUCKET - 6;
    store
        .cql_session()
        .query_unpaged(
            "INSERT INTO inbox_heads (inbox, reserved) VALUES (?, ?)",
            (&inbox, start as i64),
        )
        .await
        .expect("set mark");
    let batch = (0..20)
        .map(|i| message(&inbox, &sender, &format!("{i}")))
        .collect();
    let out = store.append(batch).await.expect("append");
    let seqs: Vec<u64> = out.iter().map(|m| m.message.seq).collect();
    assert_eq!(seqs, (start + 1..=start + 20).collect::<Vec<_>>());
    let read: Vec<u64> = store
        .read_inbox(&inbox, 0, 100)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(read, seqs, "one read spans both buckets");
    let page: Vec<u64> = store
        .read_inbox(&inbox, start + 3, 5)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(page, (start + 4..=start + 8).collect::<Vec<_>>());
    assert_eq!(store.inbox_head(&inbox).await.expect("head"), start + 20);
}

/// A message whose seq was claimed but whose write failed is stored by the
/// client's resend: at the claimed seq while the claim is young, at a new
/// seq once clients may have skipped the empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_stores_a_message_whose_first_write_failed() {
    use fred::interfaces::KeysInterface as _;
    use qim_storage::conformance::{message, message_with_id, unique};
    let backend = Cluster::new();
    cql::connect_and_migrate(&backend.options.cql)
        .await
        .expect("migrate the test keyspace");
    let store = ClusterStore::connect(&backend.options)
        .await
        .expect("connect");
    let redis = store.redis().clone();
    let (inbox, sender) = (unique("in"), unique("s"));
    store
        .append(vec![message(&inbox, &sender, "first")])
        .await
        .expect("append");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    // Seq 2 claimed a minute ago, seq 3 just now; neither written.
    for (seq, id, written) in [
        (2i64, "lost-old", now_us - 60_000_000),
        (3, "lost-new", now_us),
    ] {
        store
            .cql_session()
            .query_unpaged(
                "INSERT INTO idempotency (sender, client_msg_id, inbox, seq, msg_id) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                (&sender, id, &inbox, seq, format!("{id:0>32}"), written),
            )
            .await
            .expect("claim");
    }
    store
        .cql_session()
        .query_unpaged(
            "UPDATE inbox_heads SET reserved = 3 WHERE inbox = ?",
            (&inbox,),
        )
        .await
        .expect("mark");
    let prefix = &backend.options.key_prefix;
    for key in [
        format!("{prefix}seq:{{{inbox}}}"),
        format!("{prefix}seqres:{{{inbox}}}"),
    ] {
        let _: () = redis.set(key, 3, None, None, false).await.expect("set");
    }

    let young = store
        .append(vec![message_with_id(&inbox, &sender, "lost-new", "three")])
        .await
        .expect("resend");
    assert!(young[0].duplicate);
    assert_eq!(young[0].message.seq, 3, "a young claim is filled in place");
    let old = store
        .append(vec![message_with_id(&inbox, &sender, "lost-old", "two")])
        .await
        .expect("resend");
    assert!(old[0].duplicate);
    assert_eq!(old[0].message.seq, 4, "an old claim moves to a new seq");
    assert_eq!(
        old[0].message.message.msg_id,
        format!("{:0>32}", "lost-old")
    );
    let again = store
        .append(vec![message_with_id(&inbox, &sender, "lost-old", "two")])
        .await
        .expect("resend");
    assert_eq!(again[0].message, old[0].message, "stored once");
    let read: Vec<(u64, String)> = store
        .read_inbox(&inbox, 0, 10)
        .await
        .expect("read")
        .iter()
        .map(|m| (m.seq, String::from_utf8_lossy(&m.message.body).into_owned()))
        .collect();
    assert_eq!(
        read,
        [
            (1, "first".to_owned()),
            (3, "three".to_owned()),
            (4, "two".to_owned())
        ]
    );
}
