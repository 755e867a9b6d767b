//! `qim-gateway`: runs the gateway (the default), mints development tokens,
//! makes development certificates, creates or upgrades the CQL schema
//! (`migrate`), prints the example configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use qim_gateway::Gateway;

/// A thread-caching allocator: glibc malloc was 23–36% of the gateway's
/// CPU under load (BENCHMARKS.md), with many small short-lived buffers per
/// message handed between tasks on different threads.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use qim_gateway::auth::{TokenKey, TokenKeys, unix_now};
use qim_gateway::config::Config;
use qim_gateway::tls::{self, DevCertSpec};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "qim-gateway",
    version,
    about = "qim: QUIC instant-messaging gateway"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "QIM_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override one setting: `section.field=value` (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE", global = true)]
    set: Vec<String>,
    /// QUIC listen address (server.listen).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Admin HTTP listen address (admin.listen).
    #[arg(long, global = true)]
    admin_listen: Option<SocketAddr>,
    /// Data directory (server.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Redis URL of the cluster (store.redis).
    #[arg(long, global = true)]
    redis: Option<String>,
    /// CQL contact points of the cluster, comma separated (store.cql).
    #[arg(long, global = true)]
    cql: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Mint a login token with the configured secret (development and tests;
    /// production tokens come from your own backend).
    Token {
        /// The user the token logs in.
        #[arg(long, short)]
        user: String,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
    /// Make a development CA and server certificate.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Generator settings (names, validity), e.g. certs/dev-certs.toml.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Create the endpoint secret file (32 random bytes, base64url, mode
    /// 0600) unless it exists: give every node of a cluster the same file
    /// as quic.endpoint_secret_file.
    EndpointSecret {
        /// The file.
        #[arg(long, default_value = "endpoint-secret")]
        out: PathBuf,
    },
    /// Create or upgrade the CQL schema (store.cql, store.keyspace,
    /// store.replication); safe to run again and from several nodes.
    Migrate,
    /// Print the configuration.
    Config {
        /// Print a commented example with every default instead of the
        /// effective configuration.
        #[arg(long)]
        example: bool,
    },
}

impl Cli {
    fn load_config(&self) -> Result<Config> {
        let mut overrides = self.set.clone();
        if let Some(listen) = self.listen {
            overrides.push(format!("server.listen=\"{listen}\""));
        }
        if let Some(listen) = self.admin_listen {
            overrides.push(format!("admin.listen=\"{listen}\""));
        }
        if let Some(dir) = &self.data_dir {
            overrides.push(format!(
                "server.data_dir={}",
                toml_string(&dir.display().to_string())
            ));
        }
        if let Some(url) = &self.redis {
            overrides.push(format!("store.redis={}", toml_string(url)));
        }
        if let Some(points) = &self.cql {
            overrides.push(format!("store.cql={}", toml_string(points)));
        }
        Ok(Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &overrides,
        )?)
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        None | Some(Command::Serve) => serve(cli.load_config()?),
        Some(Command::Token { user, ttl_hours }) => {
            let config = cli.load_config()?;
            let key = minting_key(&config)?;
            let token = key.mint(user, unix_now() + ttl_hours * 3600)?;
            println!("{token}");
            Ok(())
        }
        Some(Command::EndpointSecret { out }) => {
            if qim_gateway::create_endpoint_secret(out)
                .with_context(|| format!("endpoint secret {}", out.display()))?
            {
                eprintln!("created endpoint secret {}", out.display());
            }
            Ok(())
        }
        Some(Command::Certs { out, spec }) => {
            let spec = match spec {
                Some(path) => toml::from_str(
                    &std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
                )
                .with_context(|| path.display().to_string())?,
                None => DevCertSpec::default(),
            };
            let paths = tls::write_dev_certs(out, &spec)?;
            println!(
                "CA certificate (give to clients): {}",
                paths.ca_cert.display()
            );
            println!(
                "server chain:                     {}",
                paths.server_cert.display()
            );
            println!(
                "server key:                       {}",
                paths.server_key.display()
            );
            println!(
                "use with: --set tls.cert={} --set tls.key={}",
                toml_string(&paths.server_cert.display().to_string()),
                toml_string(&paths.server_key.display().to_string())
            );
            Ok(())
        }
        Some(Command::Migrate) => migrate(cli.load_config()?),
        Some(Command::Config { example }) => {
            if *example {
                print!("{}", Config::example());
            } else {
                print!("{}", toml::to_string_pretty(&cli.load_config()?)?);
            }
            Ok(())
        }
    }
}

/// The key `token` signs with: the signing key of `auth.keys`, else the
/// `auth.secret_file` or development secret, created (32 random bytes,
/// mode 0600) when the file does not exist yet, so a cluster's shared
/// secret can be made before its nodes start.
fn minting_key(config: &Config) -> Result<TokenKey> {
    if !config.auth.keys.is_empty() {
        let (keys, _): (TokenKeys, _) = qim_gateway::auth::keys_from_config(config)
            .map_err(|(path, e)| anyhow::anyhow!("token key {}: {e}", path.display()))?;
        return Ok(keys.signing().clone());
    }
    let path = config
        .auth
        .secret_file
        .clone()
        .unwrap_or_else(|| qim_gateway::auth::dev_secret_path(config));
    let (key, created) = TokenKey::load_or_create(&path)
        .with_context(|| format!("token secret {}", path.display()))?;
    if created {
        eprintln!("created token secret {}", path.display());
    }
    Ok(key)
}

fn serve(config: Config) -> Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.filter))
        .context("log.filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let gateway = Gateway::bind(config).await?;
        let info = gateway.info().clone();
        let port = info.quic_addr.port();
        println!("qim gateway listening on {} (QUIC, ALPN qim/1); health and metrics http://{}", info.quic_addr, info.admin_addr);
        match info.api_addr {
            Some(api) => println!("  admin API:       http://{api}/v1/ (keys from admin.keys_file)"),
            None => println!("  admin API:       off (set admin.keys_file to turn it on)"),
        }
        if let Some(ca) = &info.dev_ca {
            println!("  development CA:  {} (clients verify the server against it, name {:?})", ca.display(), info.public_name);
        }
        if let Some(secret) = &info.dev_secret {
            println!("  token secret:    {} (development; mint: cargo run -p qim-gateway -- token --user alice)", secret.display());
        }
        println!("  try it:          cargo run -p qim-sdk --example chat -- --server 127.0.0.1:{port} --user alice");
        // One machine-readable line for scripts and tests.
        let tcp = info.tcp_addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let api = info.api_addr.map(|a| format!(" api={a}")).unwrap_or_default();
        println!("READY quic={} admin={} tcp={tcp}{api}", info.quic_addr, info.admin_addr);
        gateway.run(shutdown_signal()).await?;
        Ok(())
    })
}

fn migrate(config: Config) -> Result<()> {
    let options = config
        .store
        .cluster_options()
        .context("migrate needs store.redis and store.cql (--redis, --cql)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let before = runtime.block_on(qim_storage::cql::connect_and_migrate(&options.cql))?;
    let now = qim_storage::cql::SCHEMA_VERSION;
    if before == now {
        println!(
            "keyspace {} already at schema version {now}",
            options.cql.keyspace
        );
    } else {
        println!(
            "keyspace {} migrated from schema version {before} to {now}",
            options.cql.keyspace
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
