//! The configuration's sections: each declared once, with its fields, their
//! docs and defaults, and its part of the generated example.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
            pub(super) fn write_example(out: &mut String) {
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

/// Other section files of this module declare theirs with it too.
pub(super) use section;

/// One field of the example: `name = value`, or commented out when unset.
pub(super) fn example_line<T: Serialize>(name: &str, value: &T) -> String {
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
        /// File with the token secret shared with your token issuer (base64, at least 32 bytes
        /// decoded), key id "default". Neither this nor keys set: data_dir/token-secret, created
        /// once on first start (single node only; a cluster node refuses to start without keys).
        secret_file: Option<PathBuf> = None,
        /// Token keys by id (1-32 of [A-Za-z0-9_-]) for rotation: { k2025 = "/etc/qim/k2025",
        /// k2026 = "/etc/qim/k2026" }. Each verifies tokens naming its id; removing one refuses
        /// its tokens (BAD_TOKEN) from the next start. Not together with secret_file.
        keys: BTreeMap<String, PathBuf> = BTreeMap::new(),
        /// The id in keys that `qim-gateway token` signs with (required with several keys).
        signing_key: Option<String> = None,
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
        /// Bytes of Send frames one chat stream reads ahead of the store (the batch being stored
        /// and those waiting, e.g. while the session is over sends_per_second); beyond it the
        /// stream is not read, and QUIC flow control holds the client back. At most this plus
        /// one frame per stream.
        chat_backlog_bytes: u32 = 256 * 1024,
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
        /// Send several packets of a connection in one syscall (UDP GSO). Each connection then
        /// keeps a transmit buffer as large as its biggest burst (up to 10 packets, ≈ 14 KiB) for
        /// its life; off keeps it at one packet: 2 KiB less RSS per idle connection, with no
        /// difference beyond the noise in chat throughput or handshakes per second (BENCHMARKS.md,
        /// "Idle connections beside Centrifugo"). Bulk sends (large sync pages, media downloads) then take a
        /// syscall per packet: a backlog download runs at 0.3-0.45 of the speed on the same CPU
        /// (BENCHMARKS.md, "A backlog download with and without GSO"); turn it on for nodes that
        /// serve many of those.
        segmentation_offload: bool = false,
        /// Probe for a path MTU above 1200 bytes (larger packets, and a larger transmit buffer per
        /// connection: 1.1 KiB more per idle connection with segmentation_offload off).
        mtu_discovery: bool = true,
        /// Bytes of unreliable QUIC datagrams buffered per connection (0: datagrams off; qim does
        /// not use them).
        datagram_receive_buffer: usize = 0,
        /// Milliseconds a QUIC handshake may take, from the client's first packet to its completion;
        /// a slower (or stalled, or spoofed) handshake is dropped and counted in
        /// qim_handshakes_timed_out_total.
        handshake_timeout_ms: u64 = 5_000,
        /// Handshakes in progress at once; beyond it new connection attempts are refused. Only a
        /// completed handshake takes one of server.max_connections.
        max_pending_handshakes: usize = 4_096,
        /// Above this many handshakes in progress, a connection attempt from an address not yet
        /// validated is answered with a QUIC Retry (address validation), so spoofed source
        /// addresses cannot hold handshake slots; counted in qim_retries_sent_total. 0: always (as
        /// validate_addresses).
        retry_above_pending: usize = 256,
        /// Read the UDP socket on a thread of its own (quinn's endpoint driver), so datagrams are
        /// taken off the socket while every worker is busy instead of overflowing its buffer. On 2
        /// cores shared with the load generator it ended the socket's drops in a reconnect storm
        /// but gained no speed (BENCHMARKS.md); for machines with a core to spare.
        receive_thread: bool = false,
        /// File with the base64url endpoint secret (at least 32 bytes) that the connection-ID and
        /// stateless-reset keys are derived from. Give every node of a cluster the same file:
        /// then a restarted node, or another one, answers a client's packet of a connection it
        /// does not hold with a stateless reset, and the client reconnects at once instead of
        /// waiting out a timeout. Unset: data_dir/endpoint-secret, created on first start (a
        /// single node only: a cluster node refuses to start without it).
        endpoint_secret_file: Option<PathBuf> = None,
        /// Microseconds between two stateless resets; packets of unknown connections that arrive
        /// sooner get none. After a restart every old client needs one, and their retransmissions
        /// arrive in bursts (a burst is read at one instant: with quinn's default of 20 ms, one
        /// client of a burst of 25 was reset and the others waited for their next retransmission,
        /// seconds later). 0: no limit; a reset is always smaller than the packet that caused it,
        /// so resets cannot amplify or loop.
        reset_interval_us: u64 = 0,
    }
}

section! {
    /// Admin HTTP, on two listeners: an unauthenticated one for health, Prometheus metrics and the
    /// route endpoint (keep it on a private network), and the authenticated admin API (/v1/...)
    /// that listens only when keys_file is set. See docs/security-edges.md, "Admin API and metrics".
    "admin" => Admin {
        /// TCP address of the health, metrics and route listener (no authentication).
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9090)),
        /// TCP address of the admin API (/v1/...); it listens only when keys_file is set.
        api_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9091)),
        /// TOML file of admin API keys: [[key]] tables with id, secret_sha256 (hex SHA-256 of the
        /// secret) or secret (at least 32 characters), and scopes ("read", "sessions", "messages", "groups", "users"). Unset: the
        /// admin API does not listen.
        keys_file: Option<PathBuf> = None,
        /// Failed admin API authentications allowed per remote IP address per minute (also the
        /// burst); beyond it the address is answered 429 with Retry-After, whatever key it sends.
        auth_failures_per_minute: u32 = 10,
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
        /// Embedded store: bytes that must stay free on the data directory's file system; below
        /// it every write (sends, rpc writes, cursors) is refused with STORE_FULL (retryable)
        /// while reads and delivery acks go on. Checked with statvfs at most every 250 ms. Keep it
        /// above what the store writes in that time plus its memtables (up to 64 MiB each); 0: no
        /// check.
        min_free_bytes: u64 = 256 << 20,
        /// Embedded store engine: "fjall" (a log-structured merge tree), "redb" (a copy-on-write
        /// B-tree) or "sqlite" (SQLite in WAL mode). Each commits sends in groups and fsyncs
        /// before they are acked. A store directory keeps the engine that wrote it: opening it
        /// with another is refused. BENCHMARKS "Embedded store engines" compares them.
        engine: String = "fjall".to_owned(),
        /// Embedded store, fjall engine: the block cache in MiB (data blocks read back; every
        /// table's filter and index blocks are held in memory besides, about 4% of the data).
        cache_mb: u64 = 256,
        /// Embedded store: every write goes first to the store's own append-only log, and a
        /// group commit is made durable by one sync of that log; the engine syncs only at
        /// checkpoints (every 64 MiB of log), in the background. At open, what the log holds past
        /// its checkpoint is applied again. Off, the engine's own sync makes each group commit
        /// durable. A log found in a store opened with it off is replayed, then removed.
        /// BENCHMARKS "The store's own log, and the engines run again" compares the two.
        log: bool = false,
        /// Milliseconds after which a seq handed out but never stored (a failed write) or expired
        /// counts as gone for good: sync then tells a client to skip it at once instead of waiting
        /// its gap_skip_after (clients ask again every second while they wait). At least the
        /// fill window (5 s, or three timeout_ms if longer), during which a resend may still fill
        /// it. A missing seq is known settled between one and 1.25 windows after it was handed
        /// out.
        gap_settle_ms: u64 = 10_000,
    }
}

impl Store {
    /// The embedded store's engine (`engine`).
    pub fn engine(&self) -> Result<qim_storage::embedded::Engine, String> {
        self.engine.parse()
    }

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
        /// Route endpoint requests (GET /route) one remote IP address may make per second, on
        /// either listener; beyond it the answer is 429 with Retry-After. 0: unlimited.
        route_requests_per_second: u32 = 20,
        /// Route endpoint requests one remote IP address may make in a burst.
        route_requests_burst: u32 = 50,
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
        /// Milliseconds after a rejected friend request before the requester may ask the same user
        /// again (COOLDOWN with retry_after_ms before).
        friend_request_cooldown_ms: u64 = 24 * 3_600_000,
    }
}

section! {
    /// Groups.
    "groups" => Groups {
        /// Groups with more members than this switch from write diffusion (a copy per member inbox)
        /// to read diffusion (one group log, pushed to online members, pulled by the rest). The
        /// switch is for good.
        read_diffusion_threshold: u32 = 500,
        /// Members a group may have, pending invitations included; a group's own limit
        /// (CreateGroupRequest.max_members, GroupSettings) is at most this.
        max_members: u32 = 100_000,
        /// Who may add a user to a group without an invitation, for users who never chose
        /// (SettingsRequest.group_adds): "anyone", "contacts" (friends add, others invite) or
        /// "nobody" (every add is an invitation).
        default_adds: String = "contacts".to_owned(),
        /// Join requests one approval group may have waiting at once; more are refused with
        /// QUOTA_EXCEEDED until admins answer some.
        max_join_requests: u32 = 100,
    }
}

section! {
    /// Per-user quotas. A refusal is typed (RATE_LIMITED with retry_after_ms for rates,
    /// QUOTA_EXCEEDED for amounts) and counted in qim_quota_refusals_total.
    "quotas" => Quotas {
        /// Inbox copies a user's sends may create per second, on average: a one-to-one message
        /// costs one copy (two with im.sync_sent), a write-diffusion group message one per member,
        /// a read-diffusion group message one (0: unlimited). Beyond it sends are refused
        /// RATE_LIMITED with retry_after_ms. One bucket per user per node, shared by the user's
        /// sessions on that node.
        copies_per_second: u32 = 1_000,
        /// Inbox copies a user may create in a burst above the average.
        copies_burst: u32 = 5_000,
        /// Bytes a user's messages may add to the store per UTC day (body size times copies),
        /// counted in the store (shared by every node); beyond it QUOTA_EXCEEDED.
        stored_bytes_per_day: u64 = 1 << 30,
        /// Groups a user may own at once.
        groups_owned: u32 = 100,
        /// Scheduled sends a user may have waiting at once.
        pending_schedules: u32 = 100,
        /// Friend requests and group invitations a user may have waiting for an answer at once.
        pending_requests: u32 = 100,
    }
}

section! {
    /// Logging.
    "log" => Log {
        /// tracing filter directives, e.g. "info" or "qim_gateway=debug,info"; RUST_LOG overrides.
        filter: String = "info,fjall=warn,lsm_tree=warn".to_owned(),
    }
}
