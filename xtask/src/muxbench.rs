//! `cargo xtask bench-mux`: the stream multiplexers that could carry qim's
//! streams over one TLS 1.3 connection on TCP, side by side on loopback.
//!
//! - `yamux`: yamux 0.14 as it is, one yamux stream per logical stream;
//! - `qim`: the transport qim ships (`qim_proto::transport::mux`: yamux
//!   with the write scheduler in front, the bulk stream at the media
//!   priority -10);
//! - `h2`: one HTTP/2 connection (`h2` 0.4), one request whose request and
//!   response bodies are the two halves of a logical stream;
//! - `ws`: one WebSocket connection (tokio-tungstenite), a multiplexer of
//!   its own on top: each binary message is a 4-byte stream id and a piece
//!   of at most 16 KiB (the message's length is the piece's length; an
//!   empty piece ends the stream). It has no per-stream flow control and
//!   sends the pieces of all streams first come first served.
//!
//! Every multiplexer gets 256 KiB of per-stream window where it has one.
//! The server runs in a child process (`--serve`), so the round trips go
//! through the kernel between two processes as a client's would. For each
//! multiplexer: (a) 64-byte request/response round trips on one stream,
//! the connection otherwise idle; (b) the same while a second stream
//! uploads flat out; (c) one stream's upload throughput alone; (d) the RSS
//! per idle connection of the server and of the client (a fresh server
//! process and a fresh client process holding `--connections`
//! connections, each with one stream open after one round trip).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::{Bytes, BytesMut};
use qim_proto::transport::mux::{Limits, Role};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::compat::{FuturesAsyncReadCompatExt as _, TokioAsyncReadCompatExt as _};

mod ws;
use ws::{WS_PIECE, WS_STREAM_QUEUE, WsMux, WsTx, ws_mux};

/// Size of the request/response frames of (a) and (b).
const SMALL: usize = 64;
/// One write of the bulk streams.
const BULK_WRITE: usize = 64 * 1024;
/// Per-stream receive window of h2 (yamux's default, and qim's).
const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection receive window of h2.
const CONN_WINDOW: u32 = 16 << 20;
/// First byte of a stream: the server echoes what follows.
const MODE_ECHO: u8 = b'E';
/// First byte of a stream: the server reads to the end, then answers the
/// count of bytes read (8 bytes, big endian).
const MODE_SINK: u8 = b'S';
const ENV_CERT: &str = "QIM_MUXBENCH_CERT";
const ENV_KEY: &str = "QIM_MUXBENCH_KEY";

/// Arguments of `cargo xtask bench-mux`.
#[derive(clap::Args, Debug)]
pub(crate) struct MuxBenchArgs {
    /// Round trips measured in (a) and in (b).
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// MiB uploaded in (c).
    #[arg(long, default_value_t = 256)]
    bulk_mib: u64,
    /// Idle connections held in (d).
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Multiplexers to measure.
    #[arg(long, value_delimiter = ',', default_value = "yamux,qim,h2,ws")]
    kinds: Vec<Kind>,
    /// TCP_NOTSENT_LOWAT in KiB on every socket, both ends (0: not set).
    #[arg(long, default_value_t = 0)]
    notsent_lowat: u32,
    /// Internal: serve this multiplexer on a loopback port (printed).
    #[arg(long, hide = true)]
    serve: Option<Kind>,
    /// Internal: hold `--connections` idle connections to `--addr`.
    #[arg(long, hide = true)]
    idle_client: Option<Kind>,
    /// Internal: the server of `--idle-client`.
    #[arg(long, hide = true)]
    addr: Option<SocketAddr>,
}

/// A multiplexer under test.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// yamux 0.14 as it is.
    Yamux,
    /// qim's transport: yamux with its write scheduler.
    Qim,
    /// HTTP/2 (h2 0.4).
    H2,
    /// WebSocket with a stream-id framing on top.
    Ws,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Yamux => "yamux 0.14",
            Kind::Qim => "qim mux (yamux + scheduler)",
            Kind::H2 => "HTTP/2 (h2 0.4)",
            Kind::Ws => "WebSocket + id framing",
        }
    }
    fn arg(self) -> &'static str {
        match self {
            Kind::Yamux => "yamux",
            Kind::Qim => "qim",
            Kind::H2 => "h2",
            Kind::Ws => "ws",
        }
    }
}

pub(crate) fn bench_mux(args: MuxBenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    if let Some(kind) = args.serve {
        return rt.block_on(serve(kind, args.notsent_lowat));
    }
    if let Some(kind) = args.idle_client {
        let addr = args.addr.context("--idle-client needs --addr")?;
        return rt.block_on(idle_client(
            kind,
            addr,
            args.connections,
            args.notsent_lowat,
        ));
    }
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .context("self-signed certificate")?;
    // The children read the certificate and key from their environment.
    let pem = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let mut rows = Vec::new();
    for &kind in &args.kinds {
        eprintln!("bench-mux: {}", kind.name());
        let row = rt.block_on(measure(kind, &args, &pem))?;
        eprintln!("  {row:?}");
        rows.push((kind, row));
    }
    print_table(&args, &rows);
    Ok(())
}

#[derive(Debug, Default)]
struct Row {
    idle: Percentiles,
    loaded: Percentiles,
    loaded_bulk_mib_s: f64,
    bulk_mib_s: f64,
    server_kib_per_conn: f64,
    client_kib_per_conn: f64,
}

#[derive(Debug, Default)]
struct Percentiles {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

fn print_table(args: &MuxBenchArgs, rows: &[(Kind, Row)]) {
    println!(
        "| multiplexer | (a) RTT p50 / p99 / max, idle (µs) | (b) RTT p50 / p99 / max, beside a bulk upload (µs) | (b) bulk meanwhile (MiB/s) | (c) one stream's upload (MiB/s) | (d) RSS per idle connection, server / client (KiB) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (kind, r) in rows {
        println!(
            "| {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.0} | {:.0} | {:.1} / {:.1} |",
            kind.name(),
            r.idle.p50_us,
            r.idle.p99_us,
            r.idle.max_us,
            r.loaded.p50_us,
            r.loaded.p99_us,
            r.loaded.max_us,
            r.loaded_bulk_mib_s,
            r.bulk_mib_s,
            r.server_kib_per_conn,
            r.client_kib_per_conn,
        );
    }
    println!(
        "\n{} round trips of {SMALL} B per latency column; {} MiB in (c); {} idle connections in (d); TCP_NOTSENT_LOWAT {}.",
        args.round_trips,
        args.bulk_mib,
        args.connections,
        match args.notsent_lowat {
            0 => "not set".to_string(),
            k => format!("{k} KiB"),
        }
    );
}

/// A child process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bench-mux --serve kind` and returns it with the address it
/// listens on.
fn spawn_server(kind: Kind, lowat: u32, pem: &(String, String)) -> Result<(Kill, SocketAddr)> {
    let exe = std::env::current_exe().context("current executable")?;
    let mut child = Kill(
        Command::new(exe)
            .args(["bench-mux", "--serve", kind.arg()])
            .args(["--notsent-lowat", &lowat.to_string()])
            .env(ENV_CERT, &pem.0)
            .env(ENV_KEY, &pem.1)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the bench-mux server")?,
    );
    let stdout = child.0.stdout.take().context("server stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .context("server printed no address")?
        .parse()
        .context("server address")?;
    Ok((child, addr))
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

async fn measure(kind: Kind, args: &MuxBenchArgs, pem: &(String, String)) -> Result<Row> {
    let mut row = Row::default();
    {
        let (_server, addr) = spawn_server(kind, args.notsent_lowat, pem)?;
        let tls = client_tls(&pem.0)?;
        let client = Client::connect(kind, addr, &tls, args.notsent_lowat).await?;
        // (a) round trips on an idle connection.
        let (mut tx, mut rx) = client.open().await?;
        tx.send(Bytes::from_static(&[MODE_ECHO])).await?;
        round_trips(&mut tx, &mut rx, 200).await?;
        row.idle = percentiles(round_trips(&mut tx, &mut rx, args.round_trips).await?);
        // (b) the same beside a flat-out upload on a second stream.
        let (mut btx, mut brx) = client.open().await?;
        if let Tx::Qim(s) = &btx {
            s.set_priority(-10);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (going_tx, going) = oneshot::channel();
        let bulk = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move { upload(&mut btx, &mut brx, None, Some(stop), Some(going_tx)).await }
        });
        going.await.context("bulk upload did not start")?;
        row.loaded = percentiles(round_trips(&mut tx, &mut rx, args.round_trips).await?);
        stop.store(true, Ordering::Relaxed);
        row.loaded_bulk_mib_s = bulk.await.context("bulk task")??;
        // (c) one stream's upload alone.
        let (mut ctx, mut crx) = client.open().await?;
        row.bulk_mib_s = upload(&mut ctx, &mut crx, Some(args.bulk_mib << 20), None, None).await?;
        tx.finish().await?;
    }
    // (d) idle connections: a fresh server and a fresh client process.
    let (server, addr) = spawn_server(kind, args.notsent_lowat, pem)?;
    let server_pid = server.0.id().to_string();
    let server_before = rss_kib(&server_pid)?;
    let exe = std::env::current_exe().context("current executable")?;
    let mut idle = Kill(
        Command::new(exe)
            .args(["bench-mux", "--idle-client", kind.arg()])
            .args(["--addr", &addr.to_string()])
            .args(["--connections", &args.connections.to_string()])
            .args(["--notsent-lowat", &args.notsent_lowat.to_string()])
            .env(ENV_CERT, &pem.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the idle client")?,
    );
    let stdout = idle.0.stdout.take().context("idle client stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::process::ChildStdout::from_std(stdout)?)
        .read_line(&mut line)
        .await?;
    let mut client = line
        .split_whitespace()
        .filter_map(|v| v.parse::<u64>().ok());
    let (Some(client_before), Some(client_after)) = (client.next(), client.next()) else {
        bail!("idle client printed {line:?}");
    };
    let server_after = rss_kib(&server_pid)?;
    let n = args.connections.max(1) as f64;
    row.server_kib_per_conn = server_after.saturating_sub(server_before) as f64 / n;
    row.client_kib_per_conn = client_after.saturating_sub(client_before) as f64 / n;
    drop(idle.0.stdin.take());
    drop(idle);
    drop(server);
    Ok(row)
}

/// `n` round trips of [`SMALL`] bytes on an echo stream.
async fn round_trips(tx: &mut Tx, rx: &mut Rx, n: usize) -> Result<Vec<Duration>> {
    let frame = Bytes::from(vec![7u8; SMALL]);
    let mut got = BytesMut::new();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        tx.send(frame.clone()).await?;
        while got.len() < SMALL {
            let more = rx.recv().await?.context("echo stream ended")?;
            got.extend_from_slice(&more);
        }
        let _ = got.split_to(SMALL);
        samples.push(start.elapsed());
    }
    Ok(samples)
}

/// Uploads to a sink stream: `total` bytes, or until `stop`; tells
/// `going` once 8 MiB are out. Returns MiB/s by the server's count.
async fn upload(
    tx: &mut Tx,
    rx: &mut Rx,
    total: Option<u64>,
    stop: Option<Arc<AtomicBool>>,
    going: Option<oneshot::Sender<()>>,
) -> Result<f64> {
    let chunk = Bytes::from(vec![1u8; BULK_WRITE]);
    let mut going = going;
    let start = Instant::now();
    tx.send(Bytes::from_static(&[MODE_SINK])).await?;
    let mut sent = 0u64;
    loop {
        if total.is_some_and(|t| sent >= t)
            || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
        {
            break;
        }
        tx.send(chunk.clone()).await?;
        sent += BULK_WRITE as u64;
        if sent >= 8 << 20
            && let Some(g) = going.take()
        {
            let _ = g.send(());
        }
    }
    tx.finish().await?;
    let mut answer = BytesMut::new();
    while answer.len() < 8 {
        let more = rx.recv().await?.context("sink stream ended")?;
        answer.extend_from_slice(&more);
    }
    let counted = u64::from_be_bytes(answer[..8].try_into().context("count")?);
    if counted != sent {
        bail!("server counted {counted} bytes, {sent} were sent");
    }
    Ok(counted as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

/// No Nagle delay (as the gateway and the SDK), and TCP_NOTSENT_LOWAT when
/// asked for.
fn tune(tcp: &TcpStream, lowat_kib: u32) -> Result<()> {
    tcp.set_nodelay(true)?;
    if lowat_kib > 0 {
        socket2::SockRef::from(tcp).set_tcp_notsent_lowat(lowat_kib * 1024)?;
    }
    Ok(())
}

// --- TLS ---------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(qim_proto::tls::crypto_provider())
}

fn client_tls(cert_pem: &str) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("certificate")?)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn server_tls() -> Result<TlsAcceptor> {
    let cert = std::env::var(ENV_CERT).context(ENV_CERT)?;
    let key = std::env::var(ENV_KEY).context(ENV_KEY)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).context("certificate")?],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).context("key")?,
        )?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

type ClientIo = tokio_rustls::client::TlsStream<TcpStream>;
type ServerIo = tokio_rustls::server::TlsStream<TcpStream>;

// --- streams -----------------------------------------------------------------

type YamuxIo = tokio_util::compat::Compat<yamux::Stream>;

/// The sending half of a logical stream.
enum Tx {
    Yamux(tokio::io::WriteHalf<YamuxIo>),
    Qim(qim_proto::transport::SendStream),
    H2(h2::SendStream<Bytes>),
    Ws(WsTx),
}

/// The receiving half of a logical stream.
enum Rx {
    Yamux(tokio::io::ReadHalf<YamuxIo>),
    Qim(qim_proto::transport::RecvStream),
    H2(h2::RecvStream),
    Ws(mpsc::Receiver<Bytes>),
}

impl Tx {
    async fn send(&mut self, mut data: Bytes) -> Result<()> {
        match self {
            Tx::Yamux(s) => {
                s.write_all(&data).await?;
                s.flush().await?;
            }
            Tx::Qim(s) => s.write_all(data).await?,
            Tx::H2(s) => {
                while !data.is_empty() {
                    s.reserve_capacity(data.len());
                    let cap = std::future::poll_fn(|cx| s.poll_capacity(cx))
                        .await
                        .context("h2 stream closed")??;
                    if cap > 0 {
                        s.send_data(data.split_to(cap.min(data.len())), false)?;
                    }
                }
            }
            Tx::Ws(s) => {
                while !data.is_empty() {
                    let piece = data.split_to(WS_PIECE.min(data.len()));
                    s.out.send((s.id, piece)).await.context("ws writer gone")?;
                }
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        match self {
            Tx::Yamux(s) => s.shutdown().await?,
            Tx::Qim(s) => s.finish(),
            Tx::H2(s) => s.send_data(Bytes::new(), true)?,
            Tx::Ws(s) => s
                .out
                .send((s.id, Bytes::new()))
                .await
                .context("ws writer gone")?,
        }
        Ok(())
    }
}

impl Rx {
    /// The next bytes received, `None` at the end of the stream.
    async fn recv(&mut self) -> Result<Option<Bytes>> {
        Ok(match self {
            Rx::Yamux(s) => {
                let mut buf = BytesMut::zeroed(BULK_WRITE);
                let n = s.read(&mut buf).await?;
                (n > 0).then(|| buf.split_to(n).freeze())
            }
            Rx::Qim(s) => {
                let mut buf = BytesMut::with_capacity(BULK_WRITE);
                let more =
                    std::future::poll_fn(|cx| s.poll_read_into(cx, &mut buf, BULK_WRITE)).await?;
                more.then(|| buf.freeze())
            }
            Rx::H2(s) => match s.data().await {
                Some(data) => {
                    let data = data?;
                    s.flow_control().release_capacity(data.len())?;
                    Some(data)
                }
                None => None,
            },
            Rx::Ws(s) => s.recv().await,
        })
    }
}

fn split_yamux(s: yamux::Stream) -> (Tx, Rx) {
    let (r, w) = tokio::io::split(s.compat());
    (Tx::Yamux(w), Rx::Yamux(r))
}

// --- clients -----------------------------------------------------------------

type YamuxOpen = oneshot::Sender<std::result::Result<yamux::Stream, yamux::ConnectionError>>;

/// The client end of one connection.
enum Client {
    Yamux(mpsc::UnboundedSender<YamuxOpen>),
    Qim(qim_proto::transport::Connection),
    H2(h2::client::SendRequest<Bytes>),
    Ws(WsMux),
}

impl Client {
    async fn connect(
        kind: Kind,
        addr: SocketAddr,
        tls: &TlsConnector,
        lowat: u32,
    ) -> Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        tune(&tcp, lowat)?;
        let io: ClientIo = tls.connect(ServerName::try_from("localhost")?, tcp).await?;
        Ok(match kind {
            Kind::Yamux => Client::Yamux(yamux_client(io)),
            Kind::Qim => Client::Qim(qim_proto::transport::mux::connect(
                io,
                Role::Client,
                addr,
                Limits { bidi: 16, uni: 16 },
            )),
            Kind::H2 => {
                let (send, conn) = h2::client::Builder::new()
                    .initial_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONN_WINDOW)
                    .handshake(io)
                    .await?;
                tokio::spawn(conn);
                Client::H2(send)
            }
            Kind::Ws => {
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    "wss://localhost/mux",
                    io,
                    Some(ws::config()),
                )
                .await?;
                Client::Ws(ws_mux(ws, None))
            }
        })
    }

    async fn open(&self) -> Result<(Tx, Rx)> {
        Ok(match self {
            Client::Yamux(open) => {
                let (tx, rx) = oneshot::channel();
                open.send(tx).ok().context("yamux connection gone")?;
                split_yamux(rx.await.context("yamux connection gone")??)
            }
            Client::Qim(conn) => {
                let (tx, rx) = conn.open_bi().await?;
                (Tx::Qim(tx), Rx::Qim(rx))
            }
            Client::H2(send) => {
                let mut send = send.clone().ready().await?;
                let request = http::Request::post("https://localhost/stream").body(())?;
                let (response, tx) = send.send_request(request, false)?;
                let rx = response.await?.into_body();
                (Tx::H2(tx), Rx::H2(rx))
            }
            Client::Ws(mux) => {
                let id = mux.next_id.fetch_add(2, Ordering::Relaxed) as u32;
                let (tx, rx) = mpsc::channel(WS_STREAM_QUEUE);
                mux.streams
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert(id, tx);
                (
                    Tx::Ws(WsTx {
                        id,
                        out: mux.out.clone(),
                    }),
                    Rx::Ws(rx),
                )
            }
        })
    }
}

/// Drives a yamux client connection on a task; streams are asked for on the
/// returned channel.
fn yamux_client(io: ClientIo) -> mpsc::UnboundedSender<YamuxOpen> {
    let (open, mut asks) = mpsc::unbounded_channel::<YamuxOpen>();
    let mut conn =
        yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Client);
    tokio::spawn(async move {
        let mut waiting: std::collections::VecDeque<YamuxOpen> = Default::default();
        std::future::poll_fn(|cx| {
            loop {
                let mut progress = false;
                while let std::task::Poll::Ready(Some(ask)) = asks.poll_recv(cx) {
                    waiting.push_back(ask);
                }
                if !waiting.is_empty()
                    && let std::task::Poll::Ready(stream) = conn.poll_new_outbound(cx)
                    && let Some(ask) = waiting.pop_front()
                {
                    let _ = ask.send(stream);
                    progress = true;
                }
                match conn.poll_next_inbound(cx) {
                    std::task::Poll::Ready(Some(Ok(_))) => progress = true,
                    std::task::Poll::Ready(_) => return std::task::Poll::Ready(()),
                    std::task::Poll::Pending => {}
                }
                if !progress {
                    return std::task::Poll::Pending;
                }
            }
        })
        .await;
    });
    open
}

/// The idle-connection child: `n` connections, each with one echo stream
/// after one round trip; prints its RSS before and after, then holds them
/// until its standard input closes.
async fn idle_client(kind: Kind, addr: SocketAddr, n: usize, lowat: u32) -> Result<()> {
    let tls = client_tls(&std::env::var(ENV_CERT).context(ENV_CERT)?)?;
    let pid = std::process::id().to_string();
    let before = rss_kib(&pid)?;
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (tls, permits) = (tls.clone(), Arc::clone(&permits));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let client = Client::connect(kind, addr, &tls, lowat).await?;
            let (mut tx, mut rx) = client.open().await?;
            tx.send(Bytes::from_static(&[MODE_ECHO])).await?;
            round_trips(&mut tx, &mut rx, 1).await?;
            anyhow::Ok((client, tx, rx))
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        held.push(done??);
    }
    let after = rss_kib(&pid)?;
    println!("{before} {after}");
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await? > 0 {}
    drop(held);
    Ok(())
}

// --- server ------------------------------------------------------------------

async fn serve(kind: Kind, lowat: u32) -> Result<()> {
    let tls = server_tls()?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, remote) = listener.accept().await?;
        let tls = tls.clone();
        tokio::spawn(async move {
            if tune(&tcp, lowat).is_err() {
                return;
            }
            let Ok(io) = tls.accept(tcp).await else {
                return;
            };
            // A connection ends with an error when the client process
            // exits without closing it; the client checks every answer.
            let _ = serve_connection(kind, io, remote).await;
        });
    }
}

async fn serve_connection(kind: Kind, io: ServerIo, remote: SocketAddr) -> Result<()> {
    match kind {
        Kind::Yamux => {
            let mut conn =
                yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Server);
            while let Some(stream) = std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                tokio::spawn(handle(split_yamux(stream?)));
            }
        }
        Kind::Qim => {
            let conn = qim_proto::transport::mux::connect(
                io,
                Role::Server,
                remote,
                Limits { bidi: 16, uni: 16 },
            );
            while let Ok((tx, rx)) = conn.accept_bi().await {
                tokio::spawn(handle((Tx::Qim(tx), Rx::Qim(rx))));
            }
        }
        Kind::H2 => {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .handshake::<_, Bytes>(io)
                .await?;
            while let Some(request) = conn.accept().await {
                let (request, mut respond) = request?;
                let tx = respond.send_response(http::Response::new(()), false)?;
                tokio::spawn(handle((Tx::H2(tx), Rx::H2(request.into_body()))));
            }
        }
        Kind::Ws => {
            let ws = tokio_tungstenite::accept_async_with_config(io, Some(ws::config())).await?;
            let (accepted, mut accept) = mpsc::channel(16);
            let _mux = ws_mux(ws, Some(accepted));
            while let Some(stream) = accept.recv().await {
                tokio::spawn(handle(stream));
            }
        }
    }
    Ok(())
}

/// Serves one logical stream: echo or sink by its first byte.
async fn handle((mut tx, mut rx): (Tx, Rx)) -> Result<()> {
    let Some(mut first) = rx.recv().await? else {
        return Ok(());
    };
    let mode = first.split_to(1);
    match mode.first() {
        Some(&MODE_ECHO) => {
            let mut data = first;
            loop {
                if !data.is_empty() {
                    tx.send(data).await?;
                }
                match rx.recv().await? {
                    Some(more) => data = more,
                    None => break,
                }
            }
        }
        Some(&MODE_SINK) => {
            let mut count = first.len() as u64;
            while let Some(more) = rx.recv().await? {
                count += more.len() as u64;
            }
            tx.send(Bytes::copy_from_slice(&count.to_be_bytes()))
                .await?;
        }
        _ => bail!("unknown stream mode"),
    }
    tx.finish().await
}
