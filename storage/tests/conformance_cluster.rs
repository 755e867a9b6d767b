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
