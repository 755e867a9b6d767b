//! [`CqlOptions`]: how to reach the CQL cluster and where the schema lives.

use std::time::Duration;

/// How to reach the CQL cluster and where the schema lives.
#[derive(Debug, Clone)]
pub struct CqlOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding the tables.
    pub keyspace: String,
    /// The keyspace's replication map, used by [`migrate`](super::migrate) when it creates
    /// the keyspace, e.g. `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Days messages and idempotency keys are kept; 0 keeps them forever.
    pub retention_days: u32,
    /// Time after which a CQL request fails as unavailable.
    pub request_timeout: Duration,
}

impl CqlOptions {
    /// Options for `nodes` and `keyspace` with the defaults of a single-node
    /// development server (replication factor 1, no retention).
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        CqlOptions {
            nodes,
            keyspace: keyspace.into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            retention_days: 0,
            request_timeout: Duration::from_secs(5),
        }
    }

    pub(super) fn ttl_seconds(&self) -> i32 {
        i32::try_from(u64::from(self.retention_days) * 86_400).unwrap_or(i32::MAX)
    }
}
