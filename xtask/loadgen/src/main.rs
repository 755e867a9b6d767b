//! `qim-loadgen`: simulates many qim clients against a running gateway, in a
//! process of its own, and measures what they get.
//!
//! # Layout
//! - [`qim`]: a lean client (login, streams, heartbeat) — connections share
//!   a few quinn endpoints (UDP sockets), so 100k+ fit in one process.
//! - [`connections`], [`chat`], [`reconnect`], [`fanout`]: the qim
//!   scenarios.
//! - [`echo`]: the raw quinn echo baseline (server and client).
//! - [`mqtt`]: the chat and connections scenarios against an MQTT broker
//!   with QoS 1.
//! - [`soak`]: latency per window, server samples and a count of an
//!   embedded store's rows, for soak runs.
//! - [`nats`]: the chat scenario against NATS JetStream (durable).
//! - [`centrifugo`]: the connections scenario against Centrifugo
//!   (WebSocket, JWT-authenticated clients).
//! - [`charts`]: PNG charts from a bench summary.
//! - [`stats`]: `/proc` readings, histograms, timestamped bodies.
//! - [`syncprobe`]: small synced writes timed beside large synced files,
//!   the disk's part of the store's tail.
//!
//! Every scenario prints progress on stderr and one `RESULT {json}` line on
//! stdout; the process exits non-zero when the run failed its checks
//! (`"ok": false`).

mod backlog;
mod centrifugo;
mod charts;
mod chat;
mod connections;
mod echo;
mod fanout;
mod mqtt;
mod nats;
mod qim;
mod reconnect;
mod soak;
mod stats;
mod syncprobe;
mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "qim-loadgen", about = "qim load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Tokio worker threads (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
}

/// How to reach and log in to a qim gateway.
#[derive(clap::Args, Clone, Debug)]
struct GatewayArgs {
    /// The gateway's QUIC address; a cluster's nodes comma separated
    /// (each user goes to one of them, picked by a hash of its id).
    #[arg(long, value_delimiter = ',', required = true)]
    gateway: Vec<SocketAddr>,
    /// Log in over TLS on TCP to these addresses instead of QUIC (one per
    /// `--gateway` address, in the same order).
    #[arg(long, value_delimiter = ',')]
    tcp: Vec<SocketAddr>,
    /// PEM CA the gateway's certificate is verified against.
    #[arg(long)]
    ca: PathBuf,
    /// The gateway's token secret file (tokens are minted with it).
    #[arg(long)]
    secret: PathBuf,
    /// Name the certificate is checked against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Client UDP sockets the connections are spread over.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Prefix of user ids (default: random, so runs never collide).
    #[arg(long)]
    run_id: Option<String>,
}

/// How to reach an MQTT broker.
#[derive(clap::Args, Clone, Debug)]
struct BrokerArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long)]
    port: u16,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Ramp to N logged-in clients with heartbeats, hold, measure cost.
    Connections {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        args: connections::ConnArgs,
    },
    /// Sender/receiver pairs; throughput, latency, exactly-once in order.
    Chat {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        args: chat::ChatArgs,
    },
    /// N clients drop at once and reconnect; time until all are synced.
    Reconnect {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        args: reconnect::ReconnectArgs,
    },
    /// A group of M online members; senders post; every member gets
    /// every message once, in order.
    Fanout {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        args: fanout::FanoutArgs,
    },
    /// Serve the raw quinn echo baseline.
    EchoServer {
        /// UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Directory for its development certificates.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Drive the echo server like a chat run (same connection count).
    Echo {
        /// The echo server's address.
        #[arg(long)]
        server: SocketAddr,
        /// Its CA certificate.
        #[arg(long)]
        ca: PathBuf,
        /// Client UDP sockets.
        #[arg(long, default_value_t = 4)]
        endpoints: usize,
        #[command(flatten)]
        args: chat::ChatArgs,
    },
    /// The chat scenario against an MQTT broker (QoS 1).
    MqttChat {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        args: chat::ChatArgs,
    },
    /// The chat scenario against NATS JetStream (file stream, durable
    /// consumers).
    NatsChat {
        /// The NATS server's URL.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[command(flatten)]
        args: chat::ChatArgs,
    },
    /// The connections scenario against an MQTT broker.
    MqttConnections {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        args: connections::ConnArgs,
    },
    /// The connections scenario against Centrifugo (WebSocket clients
    /// with HS256 connection tokens).
    CentrifugoConnections {
        /// The server's WebSocket endpoint.
        #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
        url: String,
        /// File holding the HMAC secret the server verifies tokens with
        /// (`client.token.hmac_secret_key`).
        #[arg(long)]
        secret: PathBuf,
        /// Connects in flight at once.
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        #[command(flatten)]
        args: connections::ConnArgs,
    },
    /// Count the rows and key + value bytes per keyspace of a stopped
    /// gateway's embedded store.
    StoreRows {
        /// The store directory (`<data dir>/store`).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Time small writes and `fdatasync`s in a directory while another
    /// thread writes and syncs large files (no gateway).
    SyncProbe(syncprobe::ProbeArgs),
    /// Draw PNG charts from a bench summary (JSON array of results).
    Charts {
        /// The summary file.
        #[arg(long)]
        summary: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A TrueType font for the labels.
        #[arg(
            long,
            default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
        )]
        font: PathBuf,
    },
}

/// The gateway's allocator: the load generator shares the machine's cores
/// with the server it measures, and glibc malloc was 10–13% of its CPU in
/// a reconnect storm, time the server did not get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        builder.worker_threads(cli.threads);
    }
    let runtime = builder.enable_all().build()?;
    let result = runtime.block_on(run(cli.command))?;
    let Some(result) = result else {
        return Ok(());
    };
    println!("RESULT {result}");
    if result["ok"].as_bool() != Some(true) {
        anyhow::bail!("run failed its checks: {}", result["errors"]);
    }
    Ok(())
}

fn run_id(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| format!("lg{:08x}", rand::random::<u32>()))
}

/// Target and endpoints for a qim scenario.
fn connect_side(
    g: &GatewayArgs,
    resumption: bool,
    sessions: usize,
) -> Result<(qim::Target, Arc<qim::Endpoints>)> {
    let ca = std::fs::read(&g.ca).with_context(|| g.ca.display().to_string())?;
    let mut target = qim::Target::new(g.gateway.clone(), g.server_name.clone(), &g.secret)?;
    if !g.tcp.is_empty() {
        target = target.over_tcp(g.tcp.clone(), &ca)?;
    }
    let config = qim::client_config(&ca, resumption, sessions)?;
    let endpoints = qim::Endpoints::bind(g.endpoints, target.addrs[0], config)?;
    Ok((target, Arc::new(endpoints)))
}

async fn run(command: Command) -> Result<Option<serde_json::Value>> {
    Ok(Some(match command {
        Command::Connections { gateway, args } => {
            let (target, endpoints) = connect_side(&gateway, true, 256)?;
            let id = run_id(&gateway.run_id);
            connections::run(target, endpoints, args, &id, gateway.connect_concurrency).await?
        }
        Command::Chat { gateway, args } => {
            let (target, endpoints) = connect_side(&gateway, true, 256)?;
            let id = run_id(&gateway.run_id);
            chat::run(target, endpoints, args, &id, gateway.connect_concurrency).await?
        }
        Command::Reconnect { gateway, args } => {
            let (target, endpoints) = connect_side(&gateway, false, 0)?;
            let id = run_id(&gateway.run_id);
            let ca = std::fs::read(&gateway.ca)?;
            let resumption = args.resumption;
            let per_client = move || qim::client_config(&ca, resumption, 4);
            let concurrency = gateway.connect_concurrency;
            reconnect::run(target, endpoints, args, &id, concurrency, per_client).await?
        }
        Command::Fanout { gateway, args } => {
            let (target, endpoints) = connect_side(&gateway, true, 256)?;
            let id = run_id(&gateway.run_id);
            fanout::run(target, endpoints, args, &id, gateway.connect_concurrency).await?
        }
        Command::EchoServer { listen, dir } => {
            echo::serve(listen, &dir).await?;
            return Ok(None);
        }
        Command::Echo {
            server,
            ca,
            endpoints,
            args,
        } => {
            let ca = std::fs::read(&ca).with_context(|| ca.display().to_string())?;
            let config = qim::client_config(&ca, true, 256)?;
            let endpoints = Arc::new(qim::Endpoints::bind(endpoints, server, config)?);
            echo::run(server, "localhost", endpoints, args).await?
        }
        Command::MqttChat { broker, args } => {
            let b = mqtt::Broker {
                host: broker.host,
                port: broker.port,
            };
            mqtt::chat(b, args, &run_id(&None)).await?
        }
        Command::NatsChat { url, args } => nats::chat(&url, args, &run_id(&None)).await?,
        Command::MqttConnections { broker, args } => {
            let b = mqtt::Broker {
                host: broker.host,
                port: broker.port,
            };
            mqtt::connections(b, args, &run_id(&None), broker.connect_concurrency).await?
        }
        Command::CentrifugoConnections {
            url,
            secret,
            connect_concurrency,
            args,
        } => {
            let secret =
                std::fs::read_to_string(&secret).with_context(|| secret.display().to_string())?;
            let server = centrifugo::Server {
                url,
                secret: secret.trim().as_bytes().to_vec(),
            };
            centrifugo::connections(server, args, &run_id(&None), connect_concurrency).await?
        }
        Command::StoreRows { dir } => {
            let mut rows = soak::store_rows(&dir)?;
            chat::merge(&mut rows, serde_json::json!({ "ok": true }));
            rows
        }
        Command::SyncProbe(args) => syncprobe::run(args)?,
        Command::Charts { summary, out, font } => {
            charts::draw(&summary, &out, &font)?;
            return Ok(None);
        }
    }))
}
