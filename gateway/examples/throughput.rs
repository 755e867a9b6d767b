//! End-to-end throughput on one machine: a gateway (embedded store) in this
//! process and P sender/receiver pairs of real SDK clients over loopback
//! QUIC. Each message is stored durably before its ack, delivered, taken by
//! the receiver and acknowledged back; receivers check that every message
//! arrives once and in order. A quick probe; the benchmark suite is
//! `cargo xtask bench`'s job.
//!
//! `cargo run --release -p qim-gateway --example throughput -- --messages 20000 --pairs 8`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use qim_gateway::auth::unix_now;
use qim_gateway::{Config, Gateway};
use qim_sdk::{Client, ClientConfig};

#[derive(Parser)]
struct Args {
    /// Messages per pair.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// Sends each sender keeps in flight.
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(dir.path());
    config.limits.sends_per_second = 0;
    let gateway = Gateway::bind(config).await?;
    let info = gateway.info().clone();
    let key = gateway.token_key();
    tokio::spawn(gateway.run(std::future::pending()));
    let ca = std::fs::read(info.dev_ca.context("dev CA")?)?;
    let client_config = |user: &str| -> Result<ClientConfig> {
        let token = key.mint(user, unix_now() + 3600)?;
        let mut c = ClientConfig::new(
            info.quic_addr.to_string(),
            token,
            format!("{user}-d"),
            ca.clone(),
        );
        c.max_pending_sends = args.in_flight;
        c.max_sends_in_flight = args.in_flight;
        Ok(c)
    };

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for p in 0..args.pairs {
        senders.push((
            Arc::new(Client::connect(client_config(&format!("a{p}"))?).await?),
            format!("b{p}"),
        ));
        receivers.push(Client::connect(client_config(&format!("b{p}"))?).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (sender, to) in senders {
        let (n, in_flight) = (args.messages, args.in_flight);
        tasks.spawn(async move {
            let mut sends = tokio::task::JoinSet::new();
            for i in 0..n {
                let (sender, to) = (Arc::clone(&sender), to.clone());
                sends.spawn(async move { sender.send(to, format!("m{i}")).await });
                if sends.len() >= in_flight {
                    if let Some(done) = sends.join_next().await {
                        done??;
                    }
                }
            }
            while let Some(done) = sends.join_next().await {
                done??;
            }
            anyhow::Ok(())
        });
    }
    for receiver in receivers {
        let n = args.messages;
        tasks.spawn(async move {
            for expected in 1..=n as u64 {
                let m = receiver.next_message().await.context("receiver closed")?;
                ensure!(m.seq == expected, "seq {} where {expected} was due", m.seq);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let total = args.messages * args.pairs;
    println!(
        "{total} messages over {} pairs in {elapsed:.2?}: {:.0} messages/s, each durable, delivered and acked once, in order",
        args.pairs,
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
