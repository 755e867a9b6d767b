//! Chat from a terminal.
//!
//! ```text
//! cargo run --release -p qim-gateway                      # terminal 1
//! cargo run -p qim-sdk --example chat -- --user alice     # terminal 2
//! cargo run -p qim-sdk --example chat -- --user bob       # terminal 3
//! ```
//! Type `@bob hello` to write to bob (he becomes the default peer), then
//! plain lines. `/quit` leaves. Without `--token`, the example mints a
//! development token with the gateway's development secret
//! (`qim-data/token-secret`); real apps get tokens from their backend.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use qim_sdk::{Client, ClientConfig, ConnectionState};
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[derive(Parser)]
struct Args {
    /// Your user id.
    #[arg(long)]
    user: String,
    /// Default peer to write to.
    #[arg(long)]
    to: Option<String>,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: String,
    /// Name on the gateway's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// CA that signed the gateway's certificate.
    #[arg(long, default_value = "qim-data/certs/ca.pem")]
    ca: PathBuf,
    /// Login token; minted from --dev-secret when absent.
    #[arg(long, env = "QIM_TOKEN")]
    token: Option<String>,
    /// The gateway's development token secret.
    #[arg(long, default_value = "qim-data/token-secret")]
    dev_secret: PathBuf,
    /// Device id (defaults to `<user>-cli`).
    #[arg(long)]
    device: Option<String>,
    /// Last seq already seen, to resume from.
    #[arg(long, default_value_t = 0)]
    resume_from: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token = match args.token {
        Some(token) => token,
        None => {
            let key = qim_gateway::auth::TokenKey::load(&args.dev_secret).with_context(|| {
                format!(
                    "no --token and no development secret at {}",
                    args.dev_secret.display()
                )
            })?;
            key.mint(&args.user, qim_gateway::auth::unix_now() + 24 * 3600)?
        }
    };
    let ca =
        std::fs::read(&args.ca).with_context(|| format!("reading CA {}", args.ca.display()))?;
    let device = args.device.unwrap_or_else(|| format!("{}-cli", args.user));
    let mut config = ClientConfig::new(args.server, token, device, ca);
    config.server_name = args.server_name;
    config.resume_from = args.resume_from;
    let client = std::sync::Arc::new(Client::connect(config).await?);
    println!(
        "logged in as {}. Write `@peer text`, or plain text to the last peer; /quit to leave.",
        client.user_id()
    );

    let receiver = std::sync::Arc::clone(&client);
    tokio::spawn(async move {
        while let Some(m) = receiver.next_message().await {
            println!(
                "[{}] {}: {}",
                m.seq,
                m.from_user,
                String::from_utf8_lossy(&m.body)
            );
        }
    });
    let mut states = client.watch_state();
    tokio::spawn(async move {
        while let Some(state) = states.changed().await {
            if state != ConnectionState::Connected {
                eprintln!("({state:?})");
            }
        }
    });

    let mut peer = args.to;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" {
            break;
        }
        let text = match line.strip_prefix('@').and_then(|rest| rest.split_once(' ')) {
            Some((to, text)) => {
                peer = Some(to.to_owned());
                text.to_owned()
            }
            None => line.to_owned(),
        };
        let Some(to) = peer.clone() else {
            eprintln!("no peer yet: write `@user text`");
            continue;
        };
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            match client.send(to.clone(), text).await {
                Ok(receipt) => eprintln!("(stored for {to} as seq {})", receipt.seq),
                Err(e) => eprintln!("(not sent to {to}: {e})"),
            }
        });
    }
    client.close().await;
    Ok(())
}
