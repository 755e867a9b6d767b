//! The connections scenario against Centrifugo: each client opens a
//! WebSocket, sends the JSON protocol's `connect` command with an HS256
//! JWT (`sub` = its user id, valid for a day, like a qim token), waits for
//! the connect reply, then holds the connection and answers the server's
//! pings (an empty object `{}`, answered with `{}`; every 25 s by
//! Centrifugo's default, a client that misses one is disconnected).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::connections::{ConnArgs, Snapshot, costs};

/// The system's name in results.
pub(crate) const SYSTEM: &str = "centrifugo";

/// How long a client waits for its WebSocket and connect reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// tungstenite's read buffer, down from its 128 KiB default: an idle
/// client only ever reads pings, and 5,000 of them share the machine with
/// the server measured.
const READ_BUFFER: usize = 4 * 1024;

/// Where the server is and how clients authenticate.
#[derive(Clone, Debug)]
pub(crate) struct Server {
    /// `ws://host:port/connection/websocket`.
    pub(crate) url: String,
    /// The HMAC secret the server verifies connection tokens with.
    pub(crate) secret: Vec<u8>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

impl Server {
    /// An HS256 connection token for `user`, valid for a day.
    fn token(&self, user: &str) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let claims = Claims {
            sub: user,
            exp: now + 86_400,
        };
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )?)
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Opens the WebSocket and completes Centrifugo's connect command.
async fn connect(server: &Server, user: &str) -> Result<Ws> {
    let token = server.token(user)?;
    let rest = server
        .url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let tcp = TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(server.url.as_str(), tcp, Some(config)).await?;
    let command = json!({ "id": 1, "connect": { "token": token, "name": "qim-loadgen" } });
    ws.send(Message::text(command.to_string())).await?;
    loop {
        let message = ws
            .next()
            .await
            .context("closed before the connect reply")??;
        let text = match message {
            Message::Text(t) => t,
            Message::Close(c) => bail!("closed before the connect reply: {c:?}"),
            _ => continue,
        };
        // The JSON protocol may put several replies in one message, one a line.
        for line in text.as_str().lines().filter(|l| !l.trim().is_empty()) {
            let reply: Value = serde_json::from_str(line)?;
            if reply["id"] != 1 {
                continue;
            }
            if !reply["error"].is_null() {
                bail!("connect refused: {}", reply["error"]);
            }
            if reply["connect"].is_object() {
                return Ok(ws);
            }
            bail!("unexpected connect reply: {line}");
        }
    }
}

/// Holds a connected client: answers pings until `stop`. Returns false
/// when the connection was lost first.
async fn hold(mut ws: Ws, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        let message = tokio::select! {
            m = ws.next() => Some(m),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(message) = message else {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            return true;
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let pings = text.as_str().lines().filter(|l| l.trim() == "{}").count();
                for _ in 0..pings {
                    if ws.send(Message::text("{}")).await.is_err() {
                        return false;
                    }
                }
            }
            // WebSocket-level pings are answered by tungstenite itself.
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
            Some(Ok(_)) => {}
        }
    }
}

/// Runs the connections scenario on the server.
pub(crate) async fn connections(
    server: Server,
    args: ConnArgs,
    run_id: &str,
    concurrency: usize,
) -> Result<Value> {
    let before = Snapshot::take(&args.pid);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let lost = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.n {
        let (server, permits, ready, lost) = (
            server.clone(),
            Arc::clone(&permits),
            ready_tx.clone(),
            Arc::clone(&lost),
        );
        let mut stop = stop_rx.clone();
        let user = format!("{run_id}-c{i}");
        tasks.spawn(async move {
            let permit = permits.acquire_owned().await;
            let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&server, &user)).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    let _ = ready.send(Err(format!("{e:#}"))).await;
                    return;
                }
                Err(_) => {
                    let _ = ready.send(Err("connect timed out".into())).await;
                    return;
                }
            };
            drop(permit);
            let _ = ready.send(Ok(())).await;
            drop(ready);
            if !hold(ws, &mut stop).await {
                lost.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    drop(ready_tx);
    let (mut up, mut failed, mut errors) = (0u64, 0u64, Vec::new());
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => up += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
    }
    let ramp = started.elapsed();
    eprintln!("centrifugo connections: {up} up in {ramp:.1?}, {failed} failed; holding");
    // Let the last handshakes' transient buffers go before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_up = Snapshot::take(&args.pid);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = Snapshot::take(&args.pid);
    let dropped = lost.load(Ordering::Relaxed);
    if dropped > 0 {
        errors.push(format!("{dropped} connections lost while held"));
    }
    if failed > 0 {
        errors.push(format!("{failed} connects failed"));
    }
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let mut v = json!({
        "system": SYSTEM,
        "scenario": "connections",
        "connections": args.n,
        "connected": up,
        "failed": failed,
        "lost_while_held": dropped,
        "ramp_s": ramp.as_secs_f64(),
        "connects_per_s": up as f64 / ramp.as_secs_f64().max(1e-9),
        "ok": errors.is_empty(),
        "errors": errors,
    });
    crate::chat::merge(&mut v, costs(args.n, &before, &at_up, &after));
    Ok(v)
}
