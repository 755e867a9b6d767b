//! Where to connect and who to be: command-line flags over a TOML config
//! file over defaults that work with a development gateway on this
//! machine (`cargo run -p qim-gateway`, data in `qim-data/`).
//!
//! ```toml
//! # ~/.config/qim-desktop/config.toml (or --config <file>)
//! server = "chat.example.com:4433"
//! fallback_servers = ["chat2.example.com:4433"]
//! server_name = "chat.example.com"
//! ca = "ca.pem"                # relative paths: from this file's folder
//! token_file = "token"         # or token = "qim2…"; or dev_secret + user
//! user = "alice"
//! device = "alice-laptop"
//! data_dir = "/home/alice/.local/share/qim-desktop/alice"
//! ```

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::devtoken;

/// The flags.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "qim-desktop", version, about = "qim chat in the terminal")]
pub struct Args {
    /// Config file (TOML); default `$XDG_CONFIG_HOME/qim-desktop/config.toml`
    /// when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Gateway address, `host:port` (default 127.0.0.1:4433).
    #[arg(long)]
    pub server: Option<String>,
    /// Name on the gateway's certificate (default `localhost`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// CA that signed the gateway's certificate (default
    /// `qim-data/certs/ca.pem`).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Login token (from your backend).
    #[arg(long, env = "QIM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the login token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Development only: the gateway's token secret, to mint a token for
    /// `--user` (default `qim-data/token-secret` when no token is given).
    #[arg(long)]
    pub dev_secret: Option<PathBuf>,
    /// Your user id (needed with a development secret; else read from the
    /// token).
    #[arg(long)]
    pub user: Option<String>,
    /// This installation's device id (default `<user>-desktop`).
    #[arg(long)]
    pub device: Option<String>,
    /// Where the outbox, the local store and the resume point live
    /// (default `$XDG_DATA_HOME/qim-desktop/<user>`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log file (logs never go to the terminal the UI draws on).
    #[arg(long)]
    pub log: Option<PathBuf>,
}

/// The config file's fields (all optional; flags win).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    #[serde(default)]
    fallback_servers: Vec<String>,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    dev_secret: Option<PathBuf>,
    user: Option<String>,
    device: Option<String>,
    data_dir: Option<PathBuf>,
    log: Option<PathBuf>,
}

/// Everything needed to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Gateway address.
    pub server: String,
    /// Other gateways of the cluster.
    pub fallback_servers: Vec<String>,
    /// Name on its certificate.
    pub server_name: String,
    /// The CA's PEM bytes.
    pub ca_pem: Vec<u8>,
    /// The login token.
    pub token: String,
    /// The user (as far as the token says).
    pub user: String,
    /// This device.
    pub device: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Log file.
    pub log: Option<PathBuf>,
}

/// Why the client cannot start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The CA file could not be read.
    #[error("CA file {path}: {source}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No token was given and none could be minted.
    #[error("no token: pass --token or --token-file, or --dev-secret with --user ({0})")]
    Token(String),
    /// The user or device id is not a valid id.
    #[error("not a valid id: {0:?} (1-64 of A-Z a-z 0-9 . _ @ -)")]
    BadId(String),
    /// No data directory could be chosen.
    #[error("no data directory: pass --data-dir (no HOME or XDG_DATA_HOME)")]
    NoDataDir,
}

/// Token lifetime when minted from a development secret.
const DEV_TOKEN_SECS: u64 = 7 * 24 * 3600;

impl Settings {
    /// Resolves flags, the config file and defaults; mints a development
    /// token at `now` (unix seconds) when that is the way asked.
    pub fn resolve(args: Args, now: u64) -> Result<Settings, SettingsError> {
        let (file, base) = load_file(args.config.as_deref())?;
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let server = args
            .server
            .or(file.server)
            .unwrap_or_else(|| "127.0.0.1:4433".to_owned());
        let server_name = args
            .server_name
            .or(file.server_name)
            .unwrap_or_else(|| "localhost".to_owned());
        let ca = args
            .ca
            .or(file.ca.map(rel))
            .unwrap_or_else(|| PathBuf::from("qim-data/certs/ca.pem"));
        let ca_pem = std::fs::read(&ca).map_err(|source| SettingsError::Ca {
            path: ca.clone(),
            source,
        })?;
        let user_arg = args.user.or(file.user);
        let token = match (
            args.token,
            args.token_file,
            file.token,
            file.token_file.map(rel),
        ) {
            (Some(t), ..) => t,
            (None, Some(path), ..) => read_token(&path)?,
            (None, None, Some(t), _) => t,
            (None, None, None, Some(path)) => read_token(&path)?,
            (None, None, None, None) => {
                let secret = args
                    .dev_secret
                    .or(file.dev_secret.map(rel))
                    .unwrap_or_else(|| PathBuf::from("qim-data/token-secret"));
                let user = user_arg
                    .clone()
                    .ok_or_else(|| SettingsError::Token("no --user to mint for".into()))?;
                devtoken::mint_from_file(&secret, &user, now, DEV_TOKEN_SECS)
                    .map_err(|e| SettingsError::Token(format!("{}: {e}", secret.display())))?
            }
        };
        let token = token.trim().to_owned();
        let user = user_arg
            .or_else(|| devtoken::user_of(&token))
            .unwrap_or_else(|| "me".to_owned());
        if !devtoken::valid_id(&user) {
            return Err(SettingsError::BadId(user));
        }
        let device = args
            .device
            .or(file.device)
            .unwrap_or_else(|| format!("{}-desktop", short(&user)));
        if !devtoken::valid_id(&device) {
            return Err(SettingsError::BadId(device));
        }
        let data_dir = match args.data_dir.or(file.data_dir.map(rel)) {
            Some(dir) => dir,
            None => default_data_dir()?.join(&user),
        };
        Ok(Settings {
            server,
            fallback_servers: file.fallback_servers,
            server_name,
            ca_pem,
            token,
            user,
            device,
            data_dir,
            log: args.log.or(file.log.map(rel)),
        })
    }
}

/// `user` cut so `<user>-desktop` stays a valid id.
fn short(user: &str) -> &str {
    let end = user.char_indices().nth(56).map_or(user.len(), |(i, _)| i);
    &user[..end]
}

fn read_token(path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| SettingsError::Token(format!("{}: {e}", path.display())))
}

/// The config file and the folder its relative paths start from.
fn load_file(path: Option<&Path>) -> Result<(FileConfig, PathBuf), SettingsError> {
    let (path, required) = match path {
        Some(p) => (p.to_owned(), true),
        None => match config_home() {
            Some(dir) => (dir.join("qim-desktop/config.toml"), false),
            None => return Ok((FileConfig::default(), PathBuf::new())),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((FileConfig::default(), PathBuf::new()));
        }
        Err(e) => {
            return Err(SettingsError::File {
                path,
                reason: e.to_string(),
            });
        }
    };
    let file: FileConfig = toml::from_str(&text).map_err(|e| SettingsError::File {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    Ok((file, base))
}

fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

fn default_data_dir() -> Result<PathBuf, SettingsError> {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("qim-desktop"))
        .ok_or(SettingsError::NoDataDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_relative_paths_start_at_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), b"PEM").expect("ca");
        std::fs::write(dir.path().join("secret"), "B".repeat(44)).expect("secret");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "server = \"file:1\"\nca = \"ca.pem\"\ndev_secret = \"secret\"\nuser = \"alice\"\n",
        )
        .expect("config");
        let args = Args {
            config: Some(config.clone()),
            server: Some("flag:2".into()),
            data_dir: Some(dir.path().join("data")),
            ..Args::default()
        };
        let s = Settings::resolve(args, 1_000).expect("resolve");
        assert_eq!(s.server, "flag:2");
        assert_eq!(s.ca_pem, b"PEM");
        assert_eq!(s.user, "alice");
        assert_eq!(s.device, "alice-desktop");
        assert_eq!(devtoken::user_of(&s.token).as_deref(), Some("alice"));

        std::fs::write(&config, "colour = \"blue\"\n").expect("config");
        let bad = Settings::resolve(
            Args {
                config: Some(config),
                ..Args::default()
            },
            0,
        );
        assert!(matches!(bad, Err(SettingsError::File { .. })), "{bad:?}");
    }
}
