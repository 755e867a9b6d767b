//! Which node a user should connect to: the route endpoint's strategies,
//! sans-IO (the live nodes and their load figures come in as arguments,
//! randomness from a seedable generator), so they are tested exactly.
//!
//! - **consistent-hash**: a hash ring with [`VNODES`] virtual nodes per
//!   node; a user maps to the first point at or after the hash of their id.
//!   Adding or removing one of N nodes moves about 1/N of the users, and
//!   only to or from that node. The ring is rebuilt only when the set of
//!   nodes changes.
//! - **least-connections**: the node with the fewest connections in its
//!   last heartbeat plus the users this picker has sent it since that
//!   heartbeat (figures are seconds old; without that correction a burst of
//!   lookups would all go to the same node).
//! - **random**: uniform over the live nodes.
//! - **round-robin**: the live nodes in id order, one after the other.
//!
//! Draining nodes are never picked.

use std::collections::HashMap;
use std::str::FromStr;

use qim_storage::redis::nodes::NodeInfo;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Virtual nodes per node on the hash ring: enough for an even spread
/// (the busiest of 3–10 nodes gets within ~10% of its share).
pub const VNODES: u32 = 160;

/// How the route endpoint picks a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Hash ring over the live nodes: the same user goes to the same node.
    ConsistentHash,
    /// The node with the fewest connections.
    LeastConnections,
    /// Any node, uniformly.
    Random,
    /// Each node in turn.
    RoundRobin,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "consistent-hash" => Strategy::ConsistentHash,
            "least-connections" => Strategy::LeastConnections,
            "random" => Strategy::Random,
            "round-robin" => Strategy::RoundRobin,
            other => return Err(format!("unknown strategy {other:?}")),
        })
    }
}

impl Strategy {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::ConsistentHash => "consistent-hash",
            Strategy::LeastConnections => "least-connections",
            Strategy::Random => "random",
            Strategy::RoundRobin => "round-robin",
        }
    }
}

/// 64-bit FNV-1a followed by the splitmix64 finaliser: stable across
/// processes and versions (the ring must agree on every node), and well
/// spread for short, similar keys.
pub fn hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hash ring of one set of nodes.
#[derive(Debug, Default)]
struct Ring {
    /// The node ids it was built from, sorted.
    ids: Vec<String>,
    /// (point, node id), sorted by point.
    points: Vec<(u64, String)>,
}

impl Ring {
    fn build(ids: Vec<String>) -> Ring {
        let mut points = Vec::with_capacity(ids.len() * VNODES as usize);
        for id in &ids {
            for v in 0..VNODES {
                points.push((hash(&format!("{id}#{v}")), id.clone()));
            }
        }
        points.sort();
        Ring { ids, points }
    }

    fn lookup(&self, user: &str) -> Option<&str> {
        let h = hash(user);
        let at = self.points.partition_point(|(p, _)| *p < h);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map(|(_, id)| id.as_str())
    }
}

/// Picks nodes under one strategy; keeps the state a strategy needs (ring,
/// round-robin position, assignments since the last load report).
#[derive(Debug)]
pub struct Picker {
    strategy: Strategy,
    ring: Ring,
    next: u64,
    rng: StdRng,
    /// Node id → (the report's `updated_ms`, users sent there since).
    sent: HashMap<String, (i64, u64)>,
}

impl Picker {
    /// A picker with a random seed.
    pub fn new(strategy: Strategy) -> Self {
        Self::seeded(strategy, rand::random())
    }

    /// A picker whose random choices are determined by `seed` (tests).
    pub fn seeded(strategy: Strategy, seed: u64) -> Self {
        Self {
            strategy,
            ring: Ring::default(),
            next: 0,
            rng: StdRng::seed_from_u64(seed),
            sent: HashMap::new(),
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The node `user` should connect to among `nodes` (live nodes, any
    /// order), or `None` when no node takes clients.
    pub fn pick<'a>(&mut self, user: &str, nodes: &'a [NodeInfo]) -> Option<&'a NodeInfo> {
        let mut open: Vec<&NodeInfo> = nodes.iter().filter(|n| !n.draining).collect();
        if open.is_empty() {
            return None;
        }
        open.sort_by(|a, b| a.id.cmp(&b.id));
        let chosen = match self.strategy {
            Strategy::ConsistentHash => {
                let ids: Vec<String> = open.iter().map(|n| n.id.clone()).collect();
                if ids != self.ring.ids {
                    self.ring = Ring::build(ids);
                }
                let id = self.ring.lookup(user)?;
                open.iter().position(|n| n.id == id)?
            }
            Strategy::LeastConnections => {
                self.sent.retain(|id, _| open.iter().any(|n| &n.id == id));
                let load = |sent: &HashMap<String, (i64, u64)>, n: &NodeInfo| {
                    let extra = match sent.get(&n.id) {
                        Some((at, count)) if *at == n.updated_ms => *count,
                        _ => 0,
                    };
                    n.connections.saturating_add(extra)
                };
                let (i, _) = open
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, n)| load(&self.sent, n))?;
                let n = open[i];
                let entry = self.sent.entry(n.id.clone()).or_insert((n.updated_ms, 0));
                if entry.0 != n.updated_ms {
                    *entry = (n.updated_ms, 0);
                }
                entry.1 += 1;
                i
            }
            Strategy::Random => self.rng.random_range(0..open.len()),
            Strategy::RoundRobin => {
                let i = (self.next % open.len() as u64) as usize;
                self.next = self.next.wrapping_add(1);
                i
            }
        };
        Some(open[chosen])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connections: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            addr: format!("{id}:4433"),
            route_addr: format!("{id}:9090"),
            tcp_addr: String::new(),
            connections,
            online_users: 0,
            draining: false,
            started_ms: 0,
            updated_ms: 1,
        }
    }

    fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter().map(|id| node(id, 0)).collect()
    }

    const USERS: usize = 5_000;

    fn users() -> impl Iterator<Item = String> {
        (0..USERS).map(|i| format!("user-{i}"))
    }

    fn assign(picker: &mut Picker, nodes: &[NodeInfo]) -> Vec<String> {
        users()
            .map(|u| picker.pick(&u, nodes).expect("a node").id.clone())
            .collect()
    }

    fn counts(assigned: &[String]) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for id in assigned {
            *c.entry(id.clone()).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn consistent_hash_spreads_evenly_and_moves_about_one_nth_on_change() {
        let four = nodes(&["a", "b", "c", "d"]);
        let mut picker = Picker::seeded(Strategy::ConsistentHash, 1);
        let before = assign(&mut picker, &four);
        for (id, n) in counts(&before) {
            let share = n as f64 / USERS as f64;
            assert!((0.20..=0.30).contains(&share), "{id} has {share}");
        }
        // Stable: the same users land on the same nodes, whatever the order
        // the nodes are listed in, and in a fresh picker.
        let mut reversed = four.clone();
        reversed.reverse();
        assert_eq!(
            assign(&mut Picker::seeded(Strategy::ConsistentHash, 2), &reversed),
            before
        );

        // A fifth node takes about 1/5 of the users, all from the others.
        let five = nodes(&["a", "b", "c", "d", "e"]);
        let after = assign(&mut picker, &five);
        let moved: Vec<usize> = (0..USERS).filter(|&i| before[i] != after[i]).collect();
        let fraction = moved.len() as f64 / USERS as f64;
        assert!((0.15..=0.25).contains(&fraction), "moved {fraction}");
        assert!(
            moved.iter().all(|&i| after[i] == "e"),
            "users only move to the new node"
        );

        // Removing a node moves only its users, about 1/4 of them all.
        let three = nodes(&["a", "c", "d"]);
        let removed = assign(&mut picker, &three);
        for i in 0..USERS {
            if before[i] != "b" {
                assert_eq!(removed[i], before[i], "user {i} stays put");
            }
        }
        let fraction = before.iter().filter(|id| *id == "b").count() as f64 / USERS as f64;
        assert!((0.20..=0.30).contains(&fraction), "moved {fraction}");
    }

    #[test]
    fn least_connections_fills_the_least_loaded_first_and_evens_out() {
        let mut loaded = vec![node("a", 300), node("b", 0), node("c", 100)];
        let mut picker = Picker::seeded(Strategy::LeastConnections, 1);
        assert_eq!(picker.pick("first", &loaded).expect("node").id, "b");
        let mut totals: HashMap<String, u64> = loaded
            .iter()
            .map(|n| (n.id.clone(), n.connections))
            .collect();
        *totals.get_mut("b").expect("b") += 1;
        for u in users().take(2_999) {
            let id = picker.pick(&u, &loaded).expect("node").id.clone();
            *totals.get_mut(&id).expect("known") += 1;
        }
        // 400 + 3000 connections over 3 nodes: 1133 or 1134 each.
        let (min, max) = (
            totals.values().min().copied().unwrap_or(0),
            totals.values().max().copied().unwrap_or(0),
        );
        assert!(max - min <= 1, "{totals:?}");
        // A new load report replaces what the picker counted.
        loaded[0].connections = 0;
        loaded[0].updated_ms = 2;
        loaded[1].updated_ms = 2;
        loaded[1].connections = 5_000;
        loaded[2].updated_ms = 2;
        loaded[2].connections = 5_000;
        assert_eq!(picker.pick("next", &loaded).expect("node").id, "a");
    }

    #[test]
    fn round_robin_is_exactly_even() {
        let three = nodes(&["a", "b", "c"]);
        let c = counts(&assign(
            &mut Picker::seeded(Strategy::RoundRobin, 1),
            &three,
        ));
        let mut sizes: Vec<usize> = c.values().copied().collect();
        sizes.sort();
        // 5000 = 1666 + 1667 + 1667.
        assert_eq!(sizes, [1_666, 1_667, 1_667]);
    }

    #[test]
    fn random_is_roughly_even_and_reproducible() {
        let three = nodes(&["a", "b", "c"]);
        let first = assign(&mut Picker::seeded(Strategy::Random, 42), &three);
        // Seeded: the outcome is fixed, so the tolerance cannot flake; it
        // is ~4.5 standard deviations of a fair split.
        for (id, n) in counts(&first) {
            assert!((1_500..=1_834).contains(&n), "{id}: {n}");
        }
        assert_eq!(
            first,
            assign(&mut Picker::seeded(Strategy::Random, 42), &three)
        );
        assert_ne!(
            first,
            assign(&mut Picker::seeded(Strategy::Random, 43), &three)
        );
    }

    #[test]
    fn draining_nodes_are_skipped_and_no_node_is_none() {
        let mut two = nodes(&["a", "b"]);
        two[0].draining = true;
        for strategy in [
            "consistent-hash",
            "least-connections",
            "random",
            "round-robin",
        ] {
            let mut picker = Picker::seeded(strategy.parse().expect("strategy"), 7);
            assert_eq!(picker.strategy().name(), strategy);
            for u in users().take(50) {
                assert_eq!(picker.pick(&u, &two).expect("node").id, "b");
            }
            assert!(picker.pick("x", &[]).is_none());
        }
        assert!("nope".parse::<Strategy>().is_err());
    }
}
