//! `qim-desktop`: chat with qim in a terminal. See the crate docs and
//! docs/desktop.md.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use qim_desktop::datadir::DataDir;
use qim_desktop::model::{MAX_PENDING_REQUESTS, Model};
use qim_desktop::settings::{Args, Settings};
use qim_desktop::{term, worker};
use tokio::sync::mpsc;

/// Inputs from the worker waiting for the UI at most.
const INPUT_BUFFER: usize = 4096;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = worker::now_ms() / 1000;
    let settings = Settings::resolve(args, u64::try_from(now).unwrap_or(0))?;
    let data = DataDir::open(&settings.data_dir)
        .with_context(|| format!("data directory {}", settings.data_dir.display()))?;
    let _lock = data.lock().map_err(|e| anyhow::anyhow!("{e}"))?;
    let log = settings.log.clone().unwrap_or_else(|| data.log());
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("log file {}", log.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,qim_sdk=info".into()),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log_file))
        .init();

    let (client, resumed_from) = worker::start(&settings, &data)
        .await
        .context("starting the client")?;
    let (inputs_tx, inputs) = mpsc::channel(INPUT_BUFFER);
    let (requests, requests_rx) = mpsc::channel(MAX_PENDING_REQUESTS);
    worker::spawn(std::sync::Arc::clone(&client), data, inputs_tx, requests_rx);
    let prefix = format!("{:08x}", rand_prefix());
    let model = Model::new(&settings.user, worker::now_ms(), resumed_from, &prefix);
    let result = term::run(model, inputs, requests).await;
    // Sends still queued stay in the outbox journal for the next start.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    result.context("terminal")
}

/// A per-run prefix for send ids (ids must never repeat across runs: the
/// server takes a repeated id for a resend).
fn rand_prefix() -> u64 {
    let id = qim_sdk::new_client_msg_id();
    u64::from_str_radix(&id[..16.min(id.len())], 16).unwrap_or_else(|_| worker::now_ms() as u64)
}
