//! Centrifugo for `cargo xtask bench`: the WebSocket peer of the idle
//! connections scenario.
//!
//! `centrifugo` is built once from the Go module proxy (`go install
//! github.com/centrifugal/centrifugo/v6@vCENTRIFUGO_VERSION`, module cache
//! and binary under the services cache, see `services::cache_dir`) and
//! reused after (stripped and with its version set, as the release
//! builds are linked). Each bench run starts its own instance on a free port:
//! WebSocket transport (JSON protocol, no compression), clients
//! authenticated with HS256 connection tokens (`client.token.hmac_secret_key`,
//! a random secret per run), the in-memory engine (nothing to persist for
//! idle connections), and the server's default ping interval (25 s, pong
//! timeout 8 s).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The Centrifugo release built from the Go module proxy.
pub(crate) const CENTRIFUGO_VERSION: &str = "6.9.1";

/// The system's name in results (the load generator's).
pub(crate) const SYSTEM: &str = "centrifugo";

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the cached `centrifugo`, building it once when missing.
pub(crate) fn ensure_server() -> Result<PathBuf> {
    let cache = crate::services::cache_dir()?;
    let bin_dir = cache.join(format!("centrifugo-{CENTRIFUGO_VERSION}/bin"));
    let bin = bin_dir.join("centrifugo");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("building centrifugo {CENTRIFUGO_VERSION} from the Go module proxy (once)");
    let t0 = Instant::now();
    std::fs::create_dir_all(&bin_dir)?;
    crate::nats::go_install(
        &format!("github.com/centrifugal/centrifugo/v6@v{CENTRIFUGO_VERSION}"),
        // As the project's release builds link it: stripped, the version set.
        &[&format!(
            "-ldflags=-s -w -X github.com/centrifugal/centrifugo/v6/internal/build.Version={CENTRIFUGO_VERSION}"
        )],
        &cache,
        &bin_dir,
    )?;
    if !bin.is_file() {
        bail!("go install centrifugo v{CENTRIFUGO_VERSION} left no binary");
    }
    eprintln!(
        "built centrifugo in {:.0} s: {}",
        t0.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(bin)
}

/// The server's version line (`centrifugo version`).
pub(crate) fn version() -> String {
    ensure_server()
        .ok()
        .and_then(|bin| Command::new(bin).arg("version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A random secret, hex encoded.
fn random_secret() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A centrifugo started for a run; killed when dropped.
pub(crate) struct RunningCentrifugo {
    child: std::process::Child,
    port: u16,
    /// The file holding the token secret (for the load generator).
    pub(crate) secret_file: PathBuf,
}

impl RunningCentrifugo {
    /// Starts `centrifugo` with a generated config under `dir` on a free
    /// port and waits until it listens.
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        let bin = ensure_server()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let secret = random_secret()?;
        let secret_file = dir.join("token-secret");
        std::fs::write(&secret_file, &secret)?;
        // Everything else is the server's default: the WebSocket transport
        // at /connection/websocket, the in-memory engine, pings every 25 s.
        let config = serde_json::json!({
            "http_server": { "address": "127.0.0.1", "port": port },
            "client": { "token": { "hmac_secret_key": secret } },
            "log": { "level": "error" },
            "usage_stats": { "disabled": true },
        });
        let conf = dir.join("config.json");
        std::fs::write(&conf, serde_json::to_string_pretty(&config)?)?;
        let log = dir.join("centrifugo.log");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&conf)
            .current_dir(dir)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("centrifugo.stderr"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            port,
            secret_file,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_millis(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline || server.child.try_wait()?.is_some() {
                bail!("centrifugo did not listen on {port}; see {}", log.display());
            }
            // Why a sleep: polling a port that has no readiness event.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// The WebSocket endpoint clients connect to.
    pub(crate) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/connection/websocket", self.port)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningCentrifugo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
