//! The node registry: each gateway node's address and load figures, live
//! while its heartbeats keep pushing its deadline forward.
//!
//! `{P:nodes}:alive` is a sorted set of node ids scored by deadline (ms);
//! `{P:nodes}:info` holds each node's figures. A heartbeat writes both in
//! one script; listing drops (and deletes) nodes past their deadline, so a
//! node that died without deregistering disappears one TTL after its last
//! heartbeat. Both keys share one hash tag: the registry is one slot, which
//! is fine for the tens to hundreds of nodes of a cluster.

use fred::interfaces::LuaInterface as _;

use super::{Redis, is_key_part, unavailable};
use crate::StoreError;

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id (id alphabet).
    pub id: String,
    /// Where clients connect (`host:port`, UDP/QUIC).
    pub addr: String,
    /// Where the node's route endpoint answers (`host:port`, HTTP).
    pub route_addr: String,
    /// Where clients connect over TLS on TCP (`host:port`); empty when the
    /// node serves QUIC only (or wrote a version-1 record).
    pub tcp_addr: String,
    /// Open client connections.
    pub connections: u64,
    /// Users with a session on the node.
    pub online_users: u64,
    /// Whether the node is draining (it takes no new clients).
    pub draining: bool,
    /// When the node started (ms since the Unix epoch).
    pub started_ms: i64,
    /// When this record was written (ms since the Unix epoch): a node's
    /// figures are as fresh as its last heartbeat.
    pub updated_ms: i64,
}

impl NodeInfo {
    fn encode(&self) -> String {
        format!(
            "2\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.id,
            self.addr,
            self.route_addr,
            self.connections,
            self.online_users,
            u8::from(self.draining),
            self.started_ms,
            self.updated_ms,
            self.tcp_addr
        )
    }

    fn decode(s: &str) -> Option<NodeInfo> {
        let f: Vec<&str> = s.split('\t').collect();
        // Version 1 (nodes that predate TLS on TCP) has no TCP address.
        let tcp_addr = match (f.first(), f.len()) {
            (Some(&"1"), 9) => "",
            (Some(&"2"), 10) => f[9],
            _ => return None,
        };
        Some(NodeInfo {
            id: f[1].to_owned(),
            addr: f[2].to_owned(),
            route_addr: f[3].to_owned(),
            tcp_addr: tcp_addr.to_owned(),
            connections: f[4].parse().ok()?,
            online_users: f[5].parse().ok()?,
            draining: f[6] == "1",
            started_ms: f[7].parse().ok()?,
            updated_ms: f[8].parse().ok()?,
        })
    }
}

/// KEYS: alive, info; ARGV: id, deadline, info.
const BEAT: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"#;

/// KEYS: alive, info; ARGV: now. Deletes expired nodes, returns the infos
/// of the live ones.
const LIVE: &str = r#"
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(dead) do redis.call('HDEL', KEYS[2], id) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(ids))
"#;

/// KEYS: alive, info; ARGV: id.
const LEAVE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

impl Redis {
    fn registry_keys(&self) -> Vec<String> {
        vec![self.key("nodes", ":alive"), self.key("nodes", ":info")]
    }

    /// Registers `info` (or renews it: a heartbeat), live until `now_ms +
    /// ttl_ms`.
    pub async fn heartbeat(
        &self,
        info: &NodeInfo,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        if !is_key_part(&info.id) {
            return Err(StoreError::Invalid(format!(
                "node id {:?} is not a valid id",
                info.id
            )));
        }
        let _: i64 = self
            .client
            .eval(
                BEAT,
                self.registry_keys(),
                vec![
                    info.id.clone(),
                    (now_ms + ttl_ms).to_string(),
                    info.encode(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes a node from the registry (graceful shutdown).
    pub async fn deregister(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client
            .eval(LEAVE, self.registry_keys(), vec![id.to_owned()])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The live nodes at `now_ms`, sorted by id. Records that cannot be
    /// decoded are skipped.
    pub async fn live_nodes(&self, now_ms: i64) -> Result<Vec<NodeInfo>, StoreError> {
        let infos: Vec<Option<String>> = self
            .client
            .eval(LIVE, self.registry_keys(), vec![now_ms.to_string()])
            .await
            .map_err(unavailable)?;
        let mut nodes: Vec<NodeInfo> = infos
            .into_iter()
            .flatten()
            .filter_map(|s| NodeInfo::decode(&s))
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_round_trips() {
        let info = NodeInfo {
            id: "n-1".into(),
            addr: "10.0.0.1:4433".into(),
            route_addr: "10.0.0.1:9090".into(),
            tcp_addr: "10.0.0.1:4433".into(),
            connections: 12,
            online_users: 10,
            draining: true,
            started_ms: 5,
            updated_ms: 9,
        };
        assert_eq!(NodeInfo::decode(&info.encode()), Some(info));
        assert_eq!(NodeInfo::decode("2\tfuture format"), None);
        assert_eq!(NodeInfo::decode("3\tfuture format"), None);
    }

    #[test]
    fn a_record_of_a_node_that_predates_tcp_has_no_tcp_address() {
        let old = "1\tn-1\t10.0.0.1:4433\t10.0.0.1:9090\t12\t10\t0\t5\t9";
        let info = NodeInfo::decode(old).expect("version 1 still reads");
        assert_eq!(info.tcp_addr, "");
        assert_eq!(info.addr, "10.0.0.1:4433");
        assert_eq!(info.updated_ms, 9);
    }
}
