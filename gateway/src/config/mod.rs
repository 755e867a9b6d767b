//! Gateway configuration: typed, documented at each field with its default,
//! layered (defaults, then a TOML file, then `QIM_<SECTION>__<FIELD>`
//! environment variables, then `--set section.field=value` flags) and
//! validated at start-up. `qim-gateway config --example` prints a commented
//! example generated from the same declarations, so docs cannot drift.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod backend;
mod sections;
mod transport;
pub use backend::Backend;
mod notify;
pub use notify::Notify;
mod media;
pub use media::{Media, S3SecretError};
mod webhooks;
pub use sections::*;
pub use transport::Transport;
pub use webhooks::Webhooks;

/// Why a configuration was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// An override is not of the form `section.field=value`.
    #[error("override {0:?} is not section.field=value")]
    Override(String),
    /// Values that do not fit together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Config {
    pub server: Server,
    pub tls: Tls,
    pub auth: Auth,
    pub heartbeat: Heartbeat,
    pub delivery: Delivery,
    pub limits: Limits,
    pub quic: Quic,
    pub transport: Transport,
    pub admin: Admin,
    pub shutdown: Shutdown,
    pub store: Store,
    pub cluster: Cluster,
    pub im: Im,
    pub groups: Groups,
    pub quotas: Quotas,
    pub log: Log,
    pub backend: Backend,
    pub notify: Notify,
    pub media: Media,
    pub webhooks: Webhooks,
}

/// Prefix of environment overrides: `QIM_SERVER__LISTEN=0.0.0.0:5000`.
pub const ENV_PREFIX: &str = "QIM_";

impl Config {
    /// The commented example configuration, with every default.
    pub fn example() -> String {
        let mut out = String::from(
            "# qim-gateway configuration. Every value shown is the default.\n\
             # Environment: QIM_<SECTION>__<FIELD>=value; flags: --set section.field=value.\n",
        );
        Server::write_example(&mut out);
        Tls::write_example(&mut out);
        Auth::write_example(&mut out);
        Heartbeat::write_example(&mut out);
        Delivery::write_example(&mut out);
        Limits::write_example(&mut out);
        Quic::write_example(&mut out);
        Transport::write_example(&mut out);
        Admin::write_example(&mut out);
        Shutdown::write_example(&mut out);
        Store::write_example(&mut out);
        Cluster::write_example(&mut out);
        Im::write_example(&mut out);
        Groups::write_example(&mut out);
        Quotas::write_example(&mut out);
        Log::write_example(&mut out);
        Backend::write_example(&mut out);
        Notify::write_example(&mut out);
        Media::write_example(&mut out);
        Webhooks::write_example(&mut out);
        out
    }

    /// Builds the configuration: defaults, then `file`, then environment
    /// variables from `env`, then `overrides` (`section.field=value`).
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            set(
                &mut table,
                &section.to_lowercase(),
                &field.to_lowercase(),
                &value,
            );
        }
        for o in overrides {
            let (path, value) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            let (section, field) = path
                .split_once('.')
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            set(&mut table, section, field, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that must fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        self.transport.validate().map_err(ConfigError::Invalid)?;
        if let Err(e) = self.backend.validate() {
            return invalid(e);
        }
        let hb = &self.heartbeat;
        if hb.interval_ms == 0 || hb.max_missed == 0 {
            return invalid("heartbeat.interval_ms and heartbeat.max_missed must be above 0");
        }
        if !(hb.min_interval_ms <= hb.interval_ms && hb.interval_ms <= hb.max_interval_ms) {
            return invalid("heartbeat: need min_interval_ms <= interval_ms <= max_interval_ms");
        }
        if self.quic.idle_timeout_ms <= u64::from(hb.interval_ms) * u64::from(hb.max_missed) {
            return invalid(
                "quic.idle_timeout_ms must exceed heartbeat.interval_ms * heartbeat.max_missed",
            );
        }
        if self.limits.max_body_bytes.saturating_add(1024) > self.limits.max_frame_bytes {
            return invalid(
                "limits.max_body_bytes must be at least 1 KiB below limits.max_frame_bytes",
            );
        }
        self.media.validate(self.limits.max_frame_bytes)?;
        if self.delivery.window == 0 || self.limits.max_inflight_sends == 0 {
            return invalid("delivery.window and limits.max_inflight_sends must be above 0");
        }
        if self.delivery.retransmit_initial_ms == 0
            || self.delivery.retransmit_max_ms < self.delivery.retransmit_initial_ms
        {
            return invalid("delivery: need 0 < retransmit_initial_ms <= retransmit_max_ms");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key go together");
        }
        if self.store.redis.is_some() != self.store.cql.is_some() {
            return invalid("store.redis and store.cql go together (a cluster needs both)");
        }
        if let Err(e) = self.store.engine() {
            return Err(ConfigError::Invalid(format!("store.engine: {e}")));
        }
        if self.store.key_prefix.contains('{') {
            return invalid("store.key_prefix must not contain '{'");
        }
        let ks = &self.store.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.starts_with(|c: char| c.is_ascii_alphabetic())
            || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(
                "store.keyspace: letters, digits and _ only, starting with a letter, at most 48",
            );
        }
        if self.store.timeout_ms == 0 {
            return invalid("store.timeout_ms must be above 0");
        }
        let fill_window = qim_storage::cluster::fill_window(std::time::Duration::from_millis(
            self.store.timeout_ms,
        ));
        if u128::from(self.store.gap_settle_ms) < fill_window.as_millis() {
            return invalid(
                "store.gap_settle_ms must be at least the fill window (5000, or 3 × store.timeout_ms)",
            );
        }
        if self
            .store
            .cql
            .as_ref()
            .is_some_and(|c| c.split(',').all(|n| n.trim().is_empty()))
        {
            return invalid("store.cql needs at least one host:port");
        }
        if !matches!(
            self.cluster.strategy.as_str(),
            "consistent-hash" | "least-connections" | "random" | "round-robin"
        ) {
            return invalid(
                "cluster.strategy must be consistent-hash, least-connections, random or round-robin",
            );
        }
        if !matches!(
            self.im.device_policy.as_str(),
            "unlimited" | "one-per-platform-class" | "single"
        ) {
            return invalid("im.device_policy must be unlimited, one-per-platform-class or single");
        }
        if !matches!(self.im.direct_policy.as_str(), "allow" | "friends") {
            return invalid("im.direct_policy must be allow or friends");
        }
        if self.groups.max_members == 0 {
            return invalid("groups.max_members must be above 0");
        }
        if !matches!(
            self.groups.default_adds.as_str(),
            "anyone" | "contacts" | "nobody"
        ) {
            return invalid("groups.default_adds must be anyone, contacts or nobody");
        }
        let c = &self.cluster;
        if c.node_ttl_ms < 300 || c.route_ttl_ms < 300 {
            return invalid("cluster.node_ttl_ms and cluster.route_ttl_ms must be at least 300");
        }
        if c.queue_max_len < 100 {
            return invalid("cluster.queue_max_len must be at least 100");
        }
        if !qim_proto::ids::is_valid_id(&c.key_prefix) {
            return invalid("cluster.key_prefix must be 1-64 of [A-Za-z0-9._@-]");
        }
        if c.node_id
            .as_deref()
            .is_some_and(|id| !qim_proto::ids::is_valid_id(id))
        {
            return invalid("cluster.node_id must be 1-64 of [A-Za-z0-9._@-]");
        }
        if self.quic.handshake_timeout_ms == 0 || self.quic.max_pending_handshakes == 0 {
            return invalid(
                "quic.handshake_timeout_ms and quic.max_pending_handshakes must be above 0",
            );
        }
        if self.limits.chat_backlog_bytes == 0 {
            return invalid("limits.chat_backlog_bytes must be above 0");
        }
        if self.admin.auth_failures_per_minute == 0 {
            return invalid("admin.auth_failures_per_minute must be above 0");
        }
        self.notify.validate()?;
        self.webhooks.validate()?;
        self.validate_auth()?;
        if self.server.max_connections == 0 {
            return invalid("server.max_connections must be above 0");
        }
        Ok(())
    }

    /// The token keys: ids, the signing key, and a configured secret on a
    /// cluster node (a per-node development secret would refuse every
    /// token another node's issuer minted). The files are read at start.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        let auth = &self.auth;
        if !auth.keys.is_empty() && auth.secret_file.is_some() {
            return invalid("auth.secret_file and auth.keys: configure one".into());
        }
        if let Some(id) = auth.keys.keys().find(|id| !is_valid_key_id(id)) {
            return invalid(format!(
                "auth.keys: key id {id:?} is not 1-32 of [A-Za-z0-9_-]"
            ));
        }
        match &auth.signing_key {
            Some(id) if !auth.keys.contains_key(id) => {
                return invalid(format!("auth.signing_key {id:?} is not in auth.keys"));
            }
            None if auth.keys.len() > 1 => {
                return invalid("auth.signing_key must name one of several auth.keys".into());
            }
            _ => {}
        }
        if self.store.redis.is_some() && auth.keys.is_empty() && auth.secret_file.is_none() {
            return invalid(
                "a cluster node (store.redis) needs auth.secret_file or auth.keys, the same on every node"
                    .into(),
            );
        }
        Ok(())
    }

    /// A configuration for tests: loopback, port 0, data in `data_dir`.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.data_dir = data_dir.into();
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.shutdown.drain_ms = 2_000;
        config
    }

    /// Milliseconds as a duration, for the `*_ms` fields.
    pub fn ms(value: impl Into<u64>) -> Duration {
        Duration::from_millis(value.into())
    }
}

/// Sets `section.field` to `value`, read as a TOML value when it parses as
/// one (numbers, booleans) and as a string otherwise.
/// Whether `id` may name a token key (`auth.keys`): 1-32 of `[A-Za-z0-9_-]` (no `.`).
pub fn is_valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn set(table: &mut toml::Table, section: &str, field: &str, value: &str) {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(field.to_owned(), parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_the_defaults_and_mentions_every_field() {
        let example = Config::example();
        let parsed: Config = toml::from_str(&example).expect("example parses");
        assert_eq!(parsed, Config::default());
        let defaults = toml::Value::try_from(Config::default()).expect("serialize");
        for (section, fields) in defaults.as_table().expect("table") {
            assert!(example.contains(&format!("[{section}]")), "{section}");
            for field in fields.as_table().expect("section").keys() {
                assert!(
                    example.contains(&format!("\n{field} = ")),
                    "{section}.{field}"
                );
            }
        }
        assert!(
            example.contains("# cert = "),
            "unset options are shown commented"
        );
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("qim.toml");
        std::fs::write(
            &file,
            "[server]\nmax_connections = 10\npublic_name = \"file\"\n",
        )
        .expect("write");
        let env = vec![
            (
                "QIM_SERVER__PUBLIC_NAME".to_owned(),
                "env.example".to_owned(),
            ),
            ("QIM_DELIVERY__WINDOW".to_owned(), "7".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let config =
            Config::load(Some(&file), env, &["delivery.window=9".to_owned()]).expect("load");
        assert_eq!(config.server.max_connections, 10);
        assert_eq!(config.server.public_name, "env.example");
        assert_eq!(config.delivery.window, 9);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            Config::load(None, [], &["quic.idle_timeout_ms=1000".to_owned()]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::load(None, [], &["server.unknown=1".to_owned()]),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            Config::load(None, [], &["nodot=1".to_owned()]),
            Err(ConfigError::Override(_))
        ));
        // Webhooks: a URL needs the secret; a known policy; http(s) only.
        let hooks = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
            Config::load(None, [], &sets)
        };
        for bad in [
            &["webhooks.events_url=http://h/e"][..],
            &["webhooks.failure_policy=maybe"],
            &["webhooks.queue=0"],
            &["webhooks.events_url=ftp://h/e", "webhooks.secret_file=/s"],
        ] {
            assert!(
                matches!(hooks(bad), Err(ConfigError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(hooks(&["webhooks.events_url=https://h/e", "webhooks.secret_file=/s"]).is_ok());
        // A settle window inside the fill window could skip a seq that a
        // resend still fills.
        let settle = |settle: u64, timeout: u64| {
            Config::load(
                None,
                [],
                &[
                    format!("store.gap_settle_ms={settle}"),
                    format!("store.timeout_ms={timeout}"),
                ],
            )
        };
        assert!(matches!(settle(4_999, 1_000), Err(ConfigError::Invalid(_))));
        assert!(settle(5_000, 1_000).is_ok());
        assert!(matches!(
            settle(20_000, 8_000),
            Err(ConfigError::Invalid(_))
        ));
        assert!(settle(24_000, 8_000).is_ok());
        // The embedded store's engine is one of the three.
        let engine = |e: &str| Config::load(None, [], &[format!("store.engine=\"{e}\"")]);
        assert!(matches!(engine("rocks"), Err(ConfigError::Invalid(_))));
        for e in ["fjall", "redb", "sqlite"] {
            assert!(engine(e).is_ok(), "{e}");
        }
    }
}
