//! The reconnect storm: N clients are online, one message waits for each
//! (delivered but not yet acknowledged), then all connections drop at once
//! and every client reconnects, logs in with its resume point and takes its
//! message again. Measures the time until every client is back and synced
//! and checks that none lost its message.
//!
//! "With resumption" means TLS session resumption on the reconnect: each
//! client keeps its own session tickets, as a phone does (a cache shared by
//! all simulated clients would hold a few tickets per server name only).
//! The protocol-level resume (`resume_from` in Hello) is always used, and
//! with resumption the Hello goes out as 0-RTT early data, as the SDK sends
//! it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, server_ack};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::qim::{Endpoints, Session, Target, login, login_with};
use crate::stats;

/// Parameters of the reconnect storm.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ReconnectArgs {
    /// Clients that drop and reconnect together.
    #[arg(long, default_value_t = 1000)]
    pub(crate) n: usize,
    /// Keep TLS session tickets and resume with them on reconnect.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) resumption: bool,
}

/// Logs in `n` clients with bounded concurrency; index order.
async fn login_all(
    target: &Target,
    endpoints: &Arc<Endpoints>,
    users: &[String],
    configs: &[Option<quinn::ClientConfig>],
    concurrency: usize,
) -> Result<Vec<Session>> {
    let logins = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let (target, endpoints, logins, user, config) = (
            target.clone(),
            Arc::clone(endpoints),
            Arc::clone(&logins),
            user.clone(),
            configs[i].clone(),
        );
        tasks.spawn(async move {
            let _permit = logins.acquire_owned().await?;
            let s = login_with(endpoints.pick(), config, &target, &user, "d", 0).await?;
            anyhow::Ok((i, s))
        });
    }
    let mut sessions: Vec<Option<Session>> = (0..users.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, s) = done??;
        sessions[i] = Some(s);
    }
    sessions
        .into_iter()
        .map(|s| s.context("missing session"))
        .collect()
}

/// Runs the reconnect storm.
///
/// `client_config` makes one client's configuration (with its own session
/// cache when resumption is on).
pub(crate) async fn run(
    target: Target,
    endpoints: Arc<Endpoints>,
    args: ReconnectArgs,
    run_id: &str,
    concurrency: usize,
    client_config: impl Fn() -> Result<quinn::ClientConfig>,
) -> Result<Value> {
    let users: Vec<String> = (0..args.n).map(|i| format!("{run_id}-k{i}")).collect();
    let configs: Vec<Option<quinn::ClientConfig>> = (0..args.n)
        .map(|_| client_config().map(Some))
        .collect::<Result<_>>()?;
    let t = Instant::now();
    let sessions = login_all(&target, &endpoints, &users, &configs, concurrency).await?;
    eprintln!("reconnect: {} online in {:.1?}", args.n, t.elapsed());

    // One message for each, delivered now (the clients do not ack it).
    let sender = login(endpoints.pick(), &target, &format!("{run_id}-ks"), "d", 0).await?;
    let mut acks = sender.server_streams().await?.acks;
    let mut chat = sender.open_uni(StreamKind::Chat).await?;
    let writer = {
        let users = users.clone();
        async move {
            for (i, user) in users.iter().enumerate() {
                chat.queue(&v1::Send {
                    client_msg_id: i.to_string(),
                    to: Some(v1::Peer {
                        target: Some(v1::peer::Target::User(user.clone())),
                    }),
                    body: stats::body(i as u64, 0, 32).into(),
                    kind: "text".into(),
                    ..Default::default()
                })?;
                if i % 64 == 63 {
                    chat.flush().await?;
                }
            }
            chat.flush().await?;
            anyhow::Ok(chat)
        }
    };
    let reader = async {
        for _ in 0..users.len() {
            match acks.next::<v1::ServerAck>().await? {
                Some(v1::ServerAck {
                    kind: Some(server_ack::Kind::Ack(_)),
                }) => {}
                other => bail!("send not acked: {other:?}"),
            }
        }
        anyhow::Ok(())
    };
    let (chat, read) = tokio::join!(writer, reader);
    let _chat = chat?;
    read?;
    eprintln!("reconnect: one message stored for each; dropping all");

    // The storm.
    let storm = Instant::now();
    for s in &sessions {
        s.conn.close(ErrorCode::NoError, b"network change");
    }
    drop(sessions);
    let logins = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let (target, endpoints, logins, user, config) = (
            target.clone(),
            Arc::clone(&endpoints),
            Arc::clone(&logins),
            user.clone(),
            configs[i].clone(),
        );
        tasks.spawn(async move {
            let permit = logins.acquire_owned().await?;
            let session = login_with(endpoints.pick(), config, &target, &user, "d", 0).await?;
            let handshake = storm.elapsed();
            drop(permit);
            let mut deliveries = session.server_streams().await?.deliveries;
            let d = deliveries
                .next::<v1::Deliver>()
                .await?
                .context("delivery stream ended")?;
            let body = d.message.as_ref().map(|m| &m.body[..]).unwrap_or(&[]);
            let (index, _) = stats::parse_body(body).context("short body")?;
            if d.seq != 1 || index != i as u64 {
                bail!("client {i} got seq {} message {index}", d.seq);
            }
            let mut acks = session.open_uni(StreamKind::Ack).await?;
            acks.send(&v1::DeliveryAck {
                up_to_seq: 1,
                seqs: Vec::new(),
            })
            .await?;
            anyhow::Ok((session, handshake, storm.elapsed()))
        });
    }
    let (mut back, mut failed, mut errors) = (Vec::new(), 0u64, Vec::new());
    let (mut last_handshake, mut last_synced) = (Duration::ZERO, Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok((session, handshake, synced)) => {
                last_handshake = last_handshake.max(handshake);
                last_synced = last_synced.max(synced);
                back.push(session);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    if failed > 0 {
        errors.push(format!("{failed} clients did not come back synced"));
    }
    let zero_rtt = back.iter().filter(|s| s.zero_rtt).count();
    eprintln!(
        "reconnect: {} back and synced in {last_synced:.2?} ({zero_rtt} logged in with 0-RTT)",
        back.len()
    );
    for s in &back {
        s.conn.close(ErrorCode::NoError, b"done");
    }
    Ok(json!({
        "system": "qim",
        "scenario": "reconnect",
        "connections": args.n,
        "tls_resumption": args.resumption,
        "back": back.len(),
        "zero_rtt_logins": zero_rtt,
        "failed": failed,
        "all_logged_in_s": last_handshake.as_secs_f64(),
        "all_synced_s": last_synced.as_secs_f64(),
        "handshakes_per_s": back.len() as f64 / last_handshake.as_secs_f64().max(1e-9),
        "ok": errors.is_empty(),
        "errors": errors,
    }))
}
