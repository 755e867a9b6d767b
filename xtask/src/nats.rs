//! NATS JetStream for `cargo xtask bench`: the durable peer.
//!
//! `nats-server` is built once from the Go module proxy (`go install
//! github.com/nats-io/nats-server/v2@NATS_VERSION`, module cache and binary
//! under the services cache, see `services::cache_dir`) and reused after.
//! Each bench run starts its own instance on a free port with JetStream on
//! a file store under the run's directory and `sync_interval: always`: a
//! publish is acknowledged only after the stream's write is fsynced, the
//! durability qim's embedded store gives a send before its ack.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The nats-server release built from the Go module proxy.
pub(crate) const NATS_VERSION: &str = "2.15.3";

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The Go toolchain: `go` on the path or the usual install location.
pub(crate) fn go() -> Result<PathBuf> {
    crate::services::which("go")
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|p| p.is_file()))
        .context("go not found: nats-server is built from the Go module proxy with `go install`")
}

/// Path of the cached `nats-server`, building it once when missing.
pub(crate) fn ensure_server() -> Result<PathBuf> {
    let cache = crate::services::cache_dir()?;
    let bin_dir = cache.join(format!("nats-server-{NATS_VERSION}/bin"));
    let bin = bin_dir.join("nats-server");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("building nats-server {NATS_VERSION} from the Go module proxy (once)");
    let t0 = Instant::now();
    std::fs::create_dir_all(&bin_dir)?;
    go_install(
        &format!("github.com/nats-io/nats-server/v2@v{NATS_VERSION}"),
        &[],
        &cache,
        &bin_dir,
    )?;
    if !bin.is_file() {
        bail!("go install nats-server v{NATS_VERSION} left no binary");
    }
    eprintln!(
        "built nats-server in {:.0} s: {}",
        t0.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(bin)
}

/// `go install PACKAGE` with `flags`, its module cache under `cache` and
/// its binary into `bin_dir`; pure Go, on the machine's own toolchain.
pub(crate) fn go_install(
    package: &str,
    flags: &[&str],
    cache: &Path,
    bin_dir: &Path,
) -> Result<()> {
    let status = Command::new(go()?)
        .arg("install")
        .args(flags)
        .arg(package)
        .env("GOPATH", cache.join("go"))
        .env("GOBIN", bin_dir)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .status()
        .context("running go install")?;
    if !status.success() {
        bail!("go install {package} failed ({status})");
    }
    Ok(())
}

/// The server's version line (`nats-server --version`).
pub(crate) fn version() -> String {
    ensure_server()
        .ok()
        .and_then(|bin| Command::new(bin).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A nats-server started for a run; killed when dropped.
pub(crate) struct RunningNats {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl RunningNats {
    /// Starts `nats-server` with JetStream (file store under `dir`,
    /// `sync_interval: always`) on a free port and waits until it listens.
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        let bin = ensure_server()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 max_payload: 1MB\n\
                 jetstream {{\n\
                 \x20 store_dir: \"{}\"\n\
                 \x20 # fsync every write before it is acknowledged (durable, like qim's store)\n\
                 \x20 sync_interval: always\n\
                 \x20 max_memory_store: 256MB\n\
                 \x20 max_file_store: 64GB\n\
                 }}\n",
                dir.join("jetstream").display()
            ),
        )?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_millis(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline || server.child.try_wait()?.is_some() {
                bail!(
                    "nats-server did not listen on {port}; see {}",
                    dir.join("nats.log").display()
                );
            }
            // Why a sleep: polling a port that has no readiness event.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// The URL clients connect to.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
