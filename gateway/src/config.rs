//! Gateway configuration: typed, documented at each field with its default,
//! layered (defaults, then a TOML file, then `QIM_<SECTION>__<FIELD>`
//! environment variables, then `--set section.field=value` flags) and
//! validated at start-up. `qim-gateway config --example` prints a commented
//! example generated from the same declarations, so docs cannot drift.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// An override is not of the form `section.field=value`.
    #[error("override {0:?} is not section.field=value")]
    Override(String),
    /// Values that do not fit together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Declares a config section once: the struct, its `Default`, and its part
/// of the generated example.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $name:literal => $Type:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $Type {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $Type {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $Type {
            fn write_example(out: &mut String) {
                out.push('\n');
                $( out.push_str(concat!("#", $sdoc, "\n")); )*
                out.push_str(concat!("[", $name, "]\n"));
                let defaults = Self::default();
                $(
                    $( out.push_str(concat!("#", $doc, "\n")); )*
                    out.push_str(&example_line(stringify!($field), &defaults.$field));
                )*
            }
        }
    };
}

fn example_line<T: Serialize>(name: &str, value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(value) => format!("{name} = {value}\n\n"),
        // `None` has no TOML form: show the key commented out.
        Err(_) => format!("# {name} = \n\n"),
    }
}

section! {
    /// Where the gateway listens and keeps its data.
    "server" => Server {
        /// UDP address of the QUIC endpoint.
        listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 4433)),
        /// Directory of the embedded store, development certificates and the development token
        /// secret.
        data_dir: PathBuf = PathBuf::from("qim-data"),
        /// Connections held at once; further connection attempts are refused (QUIC
        /// CONNECTION_REFUSED) and counted as SERVER_BUSY.
        max_connections: usize = 250_000,
        /// Name clients use to verify the certificate (printed at start-up).
        public_name: String = "localhost".to_owned(),
    }
}

section! {
    /// TLS. Without cert and key, development certificates are created under data_dir/certs.
    "tls" => Tls {
        /// PEM certificate chain (server certificate first).
        cert: Option<PathBuf> = None,
        /// PEM private key of the certificate.
        key: Option<PathBuf> = None,
        /// TLS sessions kept in memory for resumption: one single-use ticket per handshake (a
        /// replayed ticket, and so replayed 0-RTT data, is refused), local to this node. Keep it
        /// above the number of clients that may reconnect at once: beyond it the oldest tickets are
        /// evicted before they are used, and those clients make full handshakes. 0 disables
        /// resumption and 0-RTT.
        resumption_cache: usize = 65_536,
        /// Accept 0-RTT early data from resuming clients. Only the login (Hello) is served before
        /// the handshake completes; every other client stream waits for it.
        zero_rtt: bool = true,
    }
}

section! {
    /// Login.
    "auth" => Auth {
        /// File with the base64url token secret shared with your token issuer. Unset:
        /// data_dir/token-secret, created on first start (development only).
        secret_file: Option<PathBuf> = None,
        /// Milliseconds a client has after the handshake to send a valid Hello.
        login_timeout_ms: u64 = 10_000,
    }
}

section! {
    /// Heartbeats on the heartbeat stream.
    "heartbeat" => Heartbeat {
        /// Interval told to clients, in milliseconds.
        interval_ms: u32 = 30_000,
        /// Lowest interval an adaptive client may use.
        min_interval_ms: u32 = 10_000,
        /// Highest interval an adaptive client may use; clients are told at most 90% of
        /// quic.idle_timeout_ms.
        max_interval_ms: u32 = 300_000,
        /// Intervals without a Ping after which the server closes the session (HEARTBEAT_TIMEOUT).
        max_missed: u32 = 3,
    }
}

section! {
    /// The delivery engine.
    "delivery" => Delivery {
        /// Deliveries kept unacknowledged per device; the next wait for acks.
        window: u32 = 128,
        /// Milliseconds before an unacknowledged delivery is sent again.
        retransmit_initial_ms: u64 = 5_000,
        /// Upper bound of the doubling retransmit timeout.
        retransmit_max_ms: u64 = 60_000,
    }
}

section! {
    /// Limits on what clients send.
    "limits" => Limits {
        /// Largest frame accepted on any stream, in bytes.
        max_frame_bytes: u32 = 64 * 1024,
        /// Largest message body, in bytes (must leave room in a frame for the envelope).
        max_body_bytes: u32 = 48 * 1024,
        /// Sends stored in one batch per chat stream; bounds the work one client can queue.
        max_inflight_sends: u32 = 512,
        /// Sends a session may make per second, sustained (0: unlimited). A faster sender is slowed
        /// down (its chat stream waits), which keeps its messages in order.
        sends_per_second: u32 = 500,
        /// Sends a session may make in a burst above the sustained rate.
        sends_burst: u32 = 1000,
        /// Pings and rpc requests a session may make per second (0: unlimited); a flood closes the
        /// connection with RATE_LIMITED.
        requests_per_second: u32 = 50,
        /// Pings and rpc requests allowed in a burst.
        requests_burst: u32 = 100,
    }
}

section! {
    /// QUIC transport tuning.
    "quic" => Quic {
        /// Idle timeout in milliseconds; must exceed heartbeat.interval_ms * heartbeat.max_missed.
        idle_timeout_ms: u64 = 120_000,
        /// UDP socket receive buffer in bytes (the kernel default of ~208 KB drops packets under
        /// load).
        udp_recv_buffer: usize = 4 * 1024 * 1024,
        /// UDP socket send buffer in bytes.
        udp_send_buffer: usize = 4 * 1024 * 1024,
        /// Client-opened bidi streams at once (control, heartbeat, rpc requests). quinn
        /// preallocates state for the whole window.
        max_bidi_streams: u32 = 8,
        /// Client-opened uni streams at once (chat, ack).
        max_uni_streams: u32 = 4,
        /// Flow-control window per stream, in bytes.
        stream_receive_window: u32 = 256 * 1024,
        /// Flow-control window per connection, in bytes.
        receive_window: u32 = 1024 * 1024,
        /// Require address validation (a Retry round trip) before a handshake; use on untrusted
        /// networks.
        validate_addresses: bool = false,
        /// Send several packets of a connection in one syscall (UDP GSO). Faster for bulk sends,
        /// but each connection keeps a transmit buffer as large as its biggest burst (up to 10
        /// packets, ≈ 14 KiB) for its life; off keeps it at one packet (2.3 KiB less per idle
        /// connection in BENCHMARKS.md's sixth pass).
        segmentation_offload: bool = true,
        /// Probe for a path MTU above 1200 bytes (larger packets, and a larger transmit buffer per
        /// connection: 1.1 KiB more per idle connection with segmentation_offload off).
        mtu_discovery: bool = true,
        /// Bytes of unreliable QUIC datagrams buffered per connection (0: datagrams off; qim does
        /// not use them).
        datagram_receive_buffer: usize = 0,
        /// Read the UDP socket on a thread of its own (quinn's endpoint driver), so datagrams are
        /// taken off the socket while every worker is busy instead of overflowing its buffer. On 2
        /// cores shared with the load generator it ended the socket's drops in a reconnect storm
        /// but gained no speed (BENCHMARKS.md); for machines with a core to spare.
        receive_thread: bool = false,
    }
}

section! {
    /// Admin HTTP: health and Prometheus metrics.
    "admin" => Admin {
        /// TCP address of the admin HTTP server.
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9090)),
    }
}

section! {
    /// Graceful shutdown.
    "shutdown" => Shutdown {
        /// Milliseconds to wait for clients to leave after GoAway before closing them.
        drain_ms: u64 = 10_000,
        /// Clients are told to reconnect within this many milliseconds (each picks a random delay).
        reconnect_within_ms: u32 = 5_000,
    }
}

section! {
    /// Where messages, sequences and routes live. With neither redis nor cql set, the embedded
    /// store under server.data_dir is used (single node). With both, the node joins a cluster:
    /// routes, presence, sequence counters and cross-node queues in Redis, messages in
    /// ScyllaDB/Cassandra.
    "store" => Store {
        /// Redis URL, e.g. "redis://127.0.0.1:6379" (a Redis Cluster:
        /// "redis-cluster://host:port?node=host2:port2").
        redis: Option<String> = None,
        /// CQL contact points, comma separated, e.g. "127.0.0.1:9042" (ScyllaDB or Cassandra).
        cql: Option<String> = None,
        /// CQL keyspace of the messages, created by `qim-gateway migrate`.
        keyspace: String = "qim".to_owned(),
        /// Replication map `qim-gateway migrate` gives a new keyspace; production: e.g. "{'class':
        /// 'NetworkTopologyStrategy', 'dc1': 3}".
        replication: String = "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
        /// Days messages and idempotency keys are kept in CQL (a TTL on each row); 0 keeps them
        /// forever.
        retention_days: u32 = 0,
        /// Prefix of every Redis key (lets deployments share a Redis); must not contain '{'.
        key_prefix: String = "qim:".to_owned(),
        /// Seqs reserved in CQL beyond each allocation: fewer LWTs on busy inboxes, but up to this
        /// many seqs skipped after Redis loses its data.
        seq_headroom: u64 = 0,
        /// Milliseconds before a Redis or CQL request fails (the send is then refused as
        /// retryable).
        timeout_ms: u64 = 3_000,
        /// Milliseconds after which a seq handed out but never stored (a failed write) or expired
        /// counts as gone for good: sync then tells a client to skip it at once instead of waiting
        /// its gap_skip_after. At least the fill window (10 s, or three timeout_ms if longer),
        /// during which a resend may still fill it.
        gap_settle_ms: u64 = 30_000,
    }
}

impl Store {
    /// The cluster store's options, when both `redis` and `cql` are set.
    pub fn cluster_options(&self) -> Option<qim_storage::cluster::ClusterOptions> {
        let (redis, cql) = (self.redis.as_ref()?, self.cql.as_ref()?);
        let nodes = cql
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let timeout = std::time::Duration::from_millis(self.timeout_ms);
        let mut cql = qim_storage::cql::CqlOptions::new(nodes, self.keyspace.clone());
        cql.replication = self.replication.clone();
        cql.retention_days = self.retention_days;
        cql.request_timeout = timeout;
        let mut options = qim_storage::cluster::ClusterOptions::new(redis.clone(), cql);
        options.key_prefix = self.key_prefix.clone();
        options.seq_headroom = self.seq_headroom;
        options.redis_timeout = timeout;
        options.gap_settle = std::time::Duration::from_millis(self.gap_settle_ms);
        Some(options)
    }
}

section! {
    /// Cluster membership and routing (only with store.redis and store.cql).
    "cluster" => Cluster {
        /// This node's id in the registry; unset: derived from the public address.
        node_id: Option<String> = None,
        /// Address clients are sent to for this node ("host:port"); unset: server.public_name and
        /// the bound port.
        advertise: Option<String> = None,
        /// How the route endpoint picks a node for a user: "consistent-hash", "least-connections",
        /// "random" or "round-robin".
        strategy: String = "consistent-hash".to_owned(),
        /// Optional public TCP address of a listener serving only the route endpoint (GET
        /// /route?user=ID); the admin listener serves it too.
        route_listen: Option<SocketAddr> = None,
        /// Address of the route endpoint written to the registry ("host:port"); unset: route_listen
        /// (else admin.listen) with its bound port.
        route_advertise: Option<String> = None,
        /// Milliseconds a node stays in the registry without a heartbeat; heartbeats go every third
        /// of it.
        node_ttl_ms: u64 = 10_000,
        /// Milliseconds a user's route stays without a refresh; the node refreshes its sessions'
        /// routes every third of it.
        route_ttl_ms: u64 = 60_000,
        /// Cross-node hand-offs kept per node queue (approximately; the oldest are trimmed, their
        /// messages wait in the store).
        queue_max_len: u64 = 100_000,
        /// Prefix of every Redis key, so several clusters can share one Redis.
        key_prefix: String = "qim".to_owned(),
    }
}

section! {
    /// Instant-messaging features: conversations, read state, message operations.
    "im" => Im {
        /// Put a copy of every one-to-one message in the sender's own inbox too, so the sender's
        /// other devices see what was sent and the sender's conversation list shows it. Doubles the
        /// writes per message.
        sync_sent: bool = false,
        /// Milliseconds after sending within which a sender may recall a message
        /// (RECALL_WINDOW_PASSED after).
        recall_window_ms: u64 = 120_000,
        /// Users a message may mention at most.
        max_mentions: u32 = 50,
        /// Who may message whom one to one: "allow" (anyone not blocked) or "friends" (NOT_FRIENDS
        /// otherwise).
        direct_policy: String = "allow".to_owned(),
        /// Which devices of a user may be online together: "unlimited", "one-per-platform-class"
        /// (mobile, desktop, web: a login kicks the older session of its class) or "single" (a
        /// login kicks every other device). Kicked sessions are closed with KICKED and do not
        /// reconnect on their own; the same device logging in again only replaces its own earlier
        /// session.
        device_policy: String = "unlimited".to_owned(),
        /// Send the sender of a one-to-one message a delivery receipt (an inbox event naming the
        /// newest message received) when a device of the recipient acknowledges it. One extra inbox
        /// write per sender per acknowledged batch.
        delivery_receipts: bool = false,
        /// Milliseconds messages stay readable in conversation history; older ones are answered as
        /// expired (the history page says so instead of leaving a silent gap). 0 keeps them forever
        /// (on the cluster store: as long as store.retention_days keeps them, whichever is
        /// shorter).
        history_retention_ms: u64 = 0,
        /// How far ahead a message may be scheduled, in milliseconds.
        max_schedule_ahead_ms: u64 = 30 * 24 * 3_600_000,
    }
}

section! {
    /// Groups.
    "groups" => Groups {
        /// Groups with more members than this switch from write diffusion (a copy per member inbox)
        /// to read diffusion (one group log, pushed to online members, pulled by the rest). The
        /// switch is for good.
        read_diffusion_threshold: u32 = 500,
        /// Members a group may have at creation.
        max_members: u32 = 100_000,
    }
}

section! {
    /// Logging.
    "log" => Log {
        /// tracing filter directives, e.g. "info" or "qim_gateway=debug,info"; RUST_LOG overrides.
        filter: String = "info,fjall=warn,lsm_tree=warn".to_owned(),
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Config {
    pub server: Server,
    pub tls: Tls,
    pub auth: Auth,
    pub heartbeat: Heartbeat,
    pub delivery: Delivery,
    pub limits: Limits,
    pub quic: Quic,
    pub admin: Admin,
    pub shutdown: Shutdown,
    pub store: Store,
    pub cluster: Cluster,
    pub im: Im,
    pub groups: Groups,
    pub log: Log,
}

/// Prefix of environment overrides: `QIM_SERVER__LISTEN=0.0.0.0:5000`.
pub const ENV_PREFIX: &str = "QIM_";

impl Config {
    /// The commented example configuration, with every default.
    pub fn example() -> String {
        let mut out = String::from(
            "# qim-gateway configuration. Every value shown is the default.\n\
             # Environment: QIM_<SECTION>__<FIELD>=value; flags: --set section.field=value.\n",
        );
        Server::write_example(&mut out);
        Tls::write_example(&mut out);
        Auth::write_example(&mut out);
        Heartbeat::write_example(&mut out);
        Delivery::write_example(&mut out);
        Limits::write_example(&mut out);
        Quic::write_example(&mut out);
        Admin::write_example(&mut out);
        Shutdown::write_example(&mut out);
        Store::write_example(&mut out);
        Cluster::write_example(&mut out);
        Im::write_example(&mut out);
        Groups::write_example(&mut out);
        Log::write_example(&mut out);
        out
    }

    /// Builds the configuration: defaults, then `file`, then environment
    /// variables from `env`, then `overrides` (`section.field=value`).
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            set(
                &mut table,
                &section.to_lowercase(),
                &field.to_lowercase(),
                &value,
            );
        }
        for o in overrides {
            let (path, value) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            let (section, field) = path
                .split_once('.')
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            set(&mut table, section, field, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that must fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        let hb = &self.heartbeat;
        if hb.interval_ms == 0 || hb.max_missed == 0 {
            return invalid("heartbeat.interval_ms and heartbeat.max_missed must be above 0");
        }
        if !(hb.min_interval_ms <= hb.interval_ms && hb.interval_ms <= hb.max_interval_ms) {
            return invalid("heartbeat: need min_interval_ms <= interval_ms <= max_interval_ms");
        }
        if self.quic.idle_timeout_ms <= u64::from(hb.interval_ms) * u64::from(hb.max_missed) {
            return invalid(
                "quic.idle_timeout_ms must exceed heartbeat.interval_ms * heartbeat.max_missed",
            );
        }
        if self.limits.max_body_bytes.saturating_add(1024) > self.limits.max_frame_bytes {
            return invalid(
                "limits.max_body_bytes must be at least 1 KiB below limits.max_frame_bytes",
            );
        }
        if self.delivery.window == 0 || self.limits.max_inflight_sends == 0 {
            return invalid("delivery.window and limits.max_inflight_sends must be above 0");
        }
        if self.delivery.retransmit_initial_ms == 0
            || self.delivery.retransmit_max_ms < self.delivery.retransmit_initial_ms
        {
            return invalid("delivery: need 0 < retransmit_initial_ms <= retransmit_max_ms");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key go together");
        }
        if self.store.redis.is_some() != self.store.cql.is_some() {
            return invalid("store.redis and store.cql go together (a cluster needs both)");
        }
        if self.store.key_prefix.contains('{') {
            return invalid("store.key_prefix must not contain '{'");
        }
        let ks = &self.store.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.starts_with(|c: char| c.is_ascii_alphabetic())
            || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(
                "store.keyspace: letters, digits and _ only, starting with a letter, at most 48",
            );
        }
        if self.store.timeout_ms == 0 {
            return invalid("store.timeout_ms must be above 0");
        }
        let fill_window = qim_storage::cluster::fill_window(std::time::Duration::from_millis(
            self.store.timeout_ms,
        ));
        if u128::from(self.store.gap_settle_ms) < fill_window.as_millis() {
            return invalid(
                "store.gap_settle_ms must be at least the fill window (10000, or 3 × store.timeout_ms)",
            );
        }
        if self
            .store
            .cql
            .as_ref()
            .is_some_and(|c| c.split(',').all(|n| n.trim().is_empty()))
        {
            return invalid("store.cql needs at least one host:port");
        }
        if !matches!(
            self.cluster.strategy.as_str(),
            "consistent-hash" | "least-connections" | "random" | "round-robin"
        ) {
            return invalid(
                "cluster.strategy must be consistent-hash, least-connections, random or round-robin",
            );
        }
        if !matches!(
            self.im.device_policy.as_str(),
            "unlimited" | "one-per-platform-class" | "single"
        ) {
            return invalid("im.device_policy must be unlimited, one-per-platform-class or single");
        }
        if !matches!(self.im.direct_policy.as_str(), "allow" | "friends") {
            return invalid("im.direct_policy must be allow or friends");
        }
        if self.groups.max_members == 0 {
            return invalid("groups.max_members must be above 0");
        }
        let c = &self.cluster;
        if c.node_ttl_ms < 300 || c.route_ttl_ms < 300 {
            return invalid("cluster.node_ttl_ms and cluster.route_ttl_ms must be at least 300");
        }
        if c.queue_max_len < 100 {
            return invalid("cluster.queue_max_len must be at least 100");
        }
        if !qim_proto::ids::is_valid_id(&c.key_prefix) {
            return invalid("cluster.key_prefix must be 1-64 of [A-Za-z0-9._@-]");
        }
        if c.node_id
            .as_deref()
            .is_some_and(|id| !qim_proto::ids::is_valid_id(id))
        {
            return invalid("cluster.node_id must be 1-64 of [A-Za-z0-9._@-]");
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections must be above 0");
        }
        Ok(())
    }

    /// A configuration for tests: loopback, port 0, data in `data_dir`.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.data_dir = data_dir.into();
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.shutdown.drain_ms = 2_000;
        config
    }

    /// Milliseconds as a duration, for the `*_ms` fields.
    pub fn ms(value: impl Into<u64>) -> Duration {
        Duration::from_millis(value.into())
    }
}

/// Sets `section.field` to `value`, read as a TOML value when it parses as
/// one (numbers, booleans) and as a string otherwise.
fn set(table: &mut toml::Table, section: &str, field: &str, value: &str) {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(field.to_owned(), parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_the_defaults_and_mentions_every_field() {
        let example = Config::example();
        let parsed: Config = toml::from_str(&example).expect("example parses");
        assert_eq!(parsed, Config::default());
        let defaults = toml::Value::try_from(Config::default()).expect("serialize");
        for (section, fields) in defaults.as_table().expect("table") {
            assert!(example.contains(&format!("[{section}]")), "{section}");
            for field in fields.as_table().expect("section").keys() {
                assert!(
                    example.contains(&format!("\n{field} = ")),
                    "{section}.{field}"
                );
            }
        }
        assert!(
            example.contains("# cert = "),
            "unset options are shown commented"
        );
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("qim.toml");
        std::fs::write(
            &file,
            "[server]\nmax_connections = 10\npublic_name = \"file\"\n",
        )
        .expect("write");
        let env = vec![
            (
                "QIM_SERVER__PUBLIC_NAME".to_owned(),
                "env.example".to_owned(),
            ),
            ("QIM_DELIVERY__WINDOW".to_owned(), "7".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let config =
            Config::load(Some(&file), env, &["delivery.window=9".to_owned()]).expect("load");
        assert_eq!(config.server.max_connections, 10);
        assert_eq!(config.server.public_name, "env.example");
        assert_eq!(config.delivery.window, 9);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            Config::load(None, [], &["quic.idle_timeout_ms=1000".to_owned()]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::load(None, [], &["server.unknown=1".to_owned()]),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            Config::load(None, [], &["nodot=1".to_owned()]),
            Err(ConfigError::Override(_))
        ));
        // A settle window inside the fill window could skip a seq that a
        // resend still fills.
        let settle = |settle: u64, timeout: u64| {
            Config::load(
                None,
                [],
                &[
                    format!("store.gap_settle_ms={settle}"),
                    format!("store.timeout_ms={timeout}"),
                ],
            )
        };
        assert!(matches!(settle(9_999, 1_000), Err(ConfigError::Invalid(_))));
        assert!(settle(10_000, 1_000).is_ok());
        assert!(matches!(
            settle(20_000, 8_000),
            Err(ConfigError::Invalid(_))
        ));
        assert!(settle(24_000, 8_000).is_ok());
    }
}
