//! Measures reconnect time with and without TLS session resumption (and the
//! 0-RTT login it allows), and the cost of a network change handled by
//! connection migration, against an in-process gateway on loopback.
//!
//! ```sh
//! cargo run --release -p qim-sdk --example reconnect -- --rounds 200
//! ```
//!
//! A reconnect is timed from [`Client::reconnect`] to the next login
//! (Welcome received), followed by one send acknowledged by the server.
//! On loopback the round trip is tiny, so the difference shown is mostly
//! CPU (certificate verification and signatures skipped on resumption);
//! on a phone network each round trip saved by 0-RTT adds its RTT.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use qim_gateway::auth::unix_now;
use qim_sdk::{Client, ClientConfig};

#[derive(Parser)]
struct Args {
    /// Reconnects per mode.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:>9.2?}  p90 {:>9.2?}  min {:>9.2?}",
        at(0.5),
        at(0.9),
        at(0.0)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let gateway = qim_gateway::Gateway::bind(qim_gateway::Config::for_tests(dir.path())).await?;
    let info = gateway.info().clone();
    let key = gateway.token_key();
    let ca = std::fs::read(info.dev_ca.as_ref().context("dev CA")?)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));

    for resumption in [false, true] {
        let mut config = ClientConfig::new(
            info.quic_addr.to_string(),
            key.mint("alice", unix_now() + 3600)?,
            "bench-phone",
            ca.clone(),
        );
        config.resumption = resumption;
        let client = Client::connect(config).await?;
        client.send("bob".into(), "warm up".into()).await?;
        let mut samples = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            let started = Instant::now();
            client.reconnect().await?;
            client.send("bob".into(), "hello".into()).await?;
            samples.push(started.elapsed());
        }
        let stats = client.stats();
        println!(
            "reconnect + first ack, resumption {:<5}: {}  (0-RTT logins accepted: {}/{})",
            resumption,
            summary(samples),
            stats.zero_rtt_accepted,
            args.rounds
        );
        client.close().await;
    }

    let mut config = ClientConfig::new(
        info.quic_addr.to_string(),
        key.mint("alice", unix_now() + 3600)?,
        "bench-phone",
        ca,
    );
    config.resumption = true;
    let client = Client::connect(config).await?;
    let mut samples = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let started = Instant::now();
        client.network_changed()?;
        client.send("bob".into(), "moved".into()).await?;
        samples.push(started.elapsed());
    }
    println!(
        "network change (migration) + first ack     : {}  (sessions: {})",
        summary(samples),
        client.stats().sessions
    );
    client.close().await;
    let _ = stop.send(());
    server.await??;
    Ok(())
}
