//! The raw quinn baseline: an echo server with the gateway's TLS and
//! transport settings, and a client that keeps a window of fixed-size
//! records in flight on one bidi stream per connection. Its round trips per
//! second are the transport's ceiling in this harness; a qim message costs
//! two such exchanges (send → ack, deliver → delivery ack).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::{Buf as _, BytesMut};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use crate::chat::{ChatArgs, Received, summarize};
use crate::qim::{Endpoints, udp_socket};
use crate::stats;

/// Serves echo on `listen` until the process ends; prints `READY quic=…
/// ca=…` once bound.
pub(crate) async fn serve(listen: SocketAddr, dir: &Path) -> Result<()> {
    let spec = qim_gateway::tls::DevCertSpec::default();
    let (paths, _) = qim_gateway::tls::ensure_dev_certs(dir, &spec)?;
    // The gateway's default TLS settings (session resumption included).
    let t = qim_gateway::config::Tls::default();
    let resumption = qim_gateway::tls::Resumption {
        cache: t.resumption_cache,
        zero_rtt: t.zero_rtt,
        resumed: Default::default(),
    };
    let tls = qim_gateway::tls::server_config(&paths.server_cert, &paths.server_key, &resumption)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The gateway's default transport settings.
    let q = qim_gateway::config::Quic::default();
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(q.max_bidi_streams.into())
        .max_concurrent_uni_streams(q.max_uni_streams.into())
        .stream_receive_window(q.stream_receive_window.into())
        .receive_window(q.receive_window.into())
        .keep_alive_interval(None);
    server.transport_config(Arc::new(transport));
    let socket = udp_socket(listen, q.udp_recv_buffer)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    println!(
        "READY quic={} ca={}",
        endpoint.local_addr()?,
        paths.ca_cert.display()
    );
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                        if send.write_chunk(chunk.bytes).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    Ok(())
}

/// Runs the echo client: `pairs * 2` connections, each with its own stream
/// and window, for the same time as a chat run.
pub(crate) async fn run(
    server: SocketAddr,
    server_name: &str,
    endpoints: Arc<Endpoints>,
    args: ChatArgs,
) -> Result<Value> {
    let connections = args.pairs * 2;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(
            endpoints
                .pick()
                .connect(server, server_name)?
                .await
                .context("echo handshake")?,
        );
    }
    eprintln!("echo: {connections} connections up");
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let args = args.clone();
        tasks.spawn(async move {
            let r = one(&conn, &args, args.phased(start, i)).await;
            conn.close(0u32.into(), b"done");
            r
        });
    }
    let (mut sent, mut received, mut errors) = (0, Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok((n, r)) => {
                sent += n;
                received.push(r);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Each connection is one "sender"; report per connection.
    let mut v = summarize(
        "quinn-echo",
        &args,
        start,
        (sent, sent),
        received,
        errors,
        true,
    );
    crate::chat::merge(&mut v, serde_json::json!({ "scenario": "echo" }));
    Ok(v)
}

async fn one(conn: &quinn::Connection, args: &ChatArgs, start: Instant) -> Result<(u64, Received)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let size = args.body_bytes.max(16);
    let window = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let (total_tx, mut total_rx) = watch::channel(None::<u64>);
    let reader = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let mut r = Received {
                latency: Some(stats::histogram()),
                ..Received::default()
            };
            let mut buf = BytesMut::new();
            let latency = r.latency.get_or_insert_with(stats::histogram);
            loop {
                while buf.len() >= size {
                    let (index, sent_ns) =
                        stats::parse_body(&buf[..size]).context("short record")?;
                    if index != r.delivered {
                        anyhow::bail!("record {index} where {} was due", r.delivered);
                    }
                    stats::record(latency, sent_ns);
                    r.delivered += 1;
                    buf.advance(size);
                    window.add_permits(1);
                }
                r.last = Some(Instant::now());
                if total_rx.borrow().is_some_and(|t| r.delivered >= t) {
                    return Ok(r);
                }
                tokio::select! {
                    chunk = recv.read_chunk(64 * 1024, true) => match chunk? {
                        Some(c) => buf.extend_from_slice(&c.bytes),
                        None => anyhow::bail!("echo stream ended"),
                    },
                    _ = total_rx.changed() => {}
                }
            }
        })
    };
    tokio::time::sleep_until(start.into()).await;
    let mut n = 0u64;
    let mut out = BytesMut::new();
    while args.more(start, n) {
        if let Some(due) = args.due(start, n) {
            tokio::time::sleep_until(due.into()).await;
        }
        window.acquire().await?.forget();
        let mut batch = 0;
        loop {
            let sent_ns = args.due(start, n).map_or_else(stats::now_ns, stats::ns_of);
            out.extend_from_slice(&stats::body(n, sent_ns, size));
            n += 1;
            batch += 1;
            let ready = args.more(start, n)
                && batch < 64
                && args.due(start, n).is_none_or(|d| d <= Instant::now());
            if !ready {
                break;
            }
            match window.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        send.write_chunk(out.split().freeze()).await?;
    }
    total_tx.send_replace(Some(n));
    let settle = Duration::from_secs_f64(args.settle_seconds);
    let r = tokio::time::timeout(settle, reader)
        .await
        .context("echo replies late")???;
    Ok((n, r))
}
