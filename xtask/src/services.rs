//! `cargo xtask services up|down|status`: a local Redis, a local CQL
//! server and a local S3-compatible object store for development and tests.
//!
//! - **Redis**: Debian's `redis-server` (installed with apt when missing),
//!   run as our own instance on `127.0.0.1:6390` (not the distro service),
//!   without persistence: tests own their data through key prefixes.
//! - **CQL**: Apache Cassandra 5.0 from Maven Central (ScyllaDB is on no
//!   registry reachable here; both speak the same CQL protocol), resolved
//!   once with `mvn dependency:copy-dependencies` from a generated minimal
//!   pom, run on Java 17 with the JVM options of Cassandra's
//!   `conf/jvm17-server.options`, listening for CQL on `127.0.0.1:9042`.
//!   The `cassandra.yaml` written here is tuned for a small test box: a 1 GiB
//!   heap, one token, no gossip settle wait, no snapshots on drop/truncate,
//!   and `cassandra.unsafesystem` so schema changes skip the system-table
//!   flush (a dev server's schema is recreated by `qim-gateway migrate`).
//! - **S3**: S3Proxy from Maven Central with its filesystem backend on
//!   `127.0.0.1:9390`, bucket `qim-test` (see `s3server`, which says why
//!   this server), for the media blobs of a gateway cluster.
//!
//! Everything (downloads, data, logs, pid files) lives under
//! `$QIM_CACHE_DIR`, by default `$HOME/.cache/qim/services`: outside the
//! clone, so a fresh CI clone on the same machine reuses the download.
//!
//! Invariants: `up` is idempotent (a service that already answers is left
//! alone) and returns only once Redis answers `PING` and the CQL server
//! answers a protocol `OPTIONS` request and S3Proxy answers HTTP, polling with a deadline (no fixed
//! sleeps). `down` stops only processes whose pid files `up` wrote.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::s3server::{self, S3_ADDR};

/// Cassandra release taken from Maven Central.
const CASSANDRA_VERSION: &str = "5.0.9";
/// Address of the development Redis.
pub(crate) const REDIS_ADDR: &str = "127.0.0.1:6390";
/// Address of the development CQL server.
pub(crate) const CQL_ADDR: &str = "127.0.0.1:9042";
/// Cassandra's inter-node port (one node, loopback only).
const CASSANDRA_STORAGE_PORT: u16 = 7000;
/// How long `up` waits for Redis to answer.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `up` waits for Cassandra (a cold first start creates the
/// system keyspaces; on 2 cores that takes tens of seconds).
const CQL_START_TIMEOUT: Duration = Duration::from_secs(240);
/// How long `down` waits for a process to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What `cargo xtask services` does.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Action {
    /// Install (once) and start Redis, Cassandra and S3Proxy; wait until all answer.
    Up,
    /// Stop what `up` started.
    Down,
    /// Show whether each service answers.
    Status,
}

/// Which services `up` started itself (so a caller can stop only those).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Started {
    /// Redis was started by this call.
    pub(crate) redis: bool,
    /// Cassandra was started by this call.
    pub(crate) cql: bool,
    /// The S3 server was started by this call.
    pub(crate) s3: bool,
}

impl Started {
    /// True when this call started anything.
    pub(crate) fn any(self) -> bool {
        self.redis || self.cql || self.s3
    }
}

/// Runs `cargo xtask services <action>`.
pub(crate) fn run(action: Action) -> Result<()> {
    match action {
        Action::Up => up().map(|_| ()),
        Action::Down => down(Started {
            redis: true,
            cql: true,
            s3: true,
        }),
        Action::Status => status(),
    }
}

/// The cache directory: `$QIM_CACHE_DIR` or `$HOME/.cache/qim/services`.
pub(crate) fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("QIM_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither QIM_CACHE_DIR nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/qim/services"))
}

/// Starts whatever is not running yet and waits for both services.
pub(crate) fn up() -> Result<Started> {
    let cache = cache_dir()?;
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let t0 = Instant::now();
    let mut started = Started::default();

    if redis_ping(REDIS_ADDR) {
        println!("redis     already running at redis://{REDIS_ADDR}");
    } else {
        start_redis(&cache)?;
        started.redis = true;
    }
    let cassandra_pid = read_pid(&cache.join("run/cassandra/cassandra.pid")).filter(|p| alive(*p));
    if cql_ready(CQL_ADDR) {
        println!("cassandra already running at {CQL_ADDR}");
    } else if let Some(pid) = cassandra_pid {
        // Started by an earlier `up` that is still starting: wait for it,
        // do not start a second one (the caller that started it stops it).
        println!("cassandra starting (pid {pid}); waiting");
        let log = cache.join("run/cassandra/logs/system.log");
        wait_for("cassandra", CQL_START_TIMEOUT, || {
            if !alive(pid) {
                bail!("cassandra exited during start-up; see {}", log.display());
            }
            Ok(cql_ready(CQL_ADDR))
        })?;
    } else {
        let lib = install_cassandra(&cache)?;
        start_cassandra(&cache, &lib)?;
        started.cql = true;
    }
    let s3_pid = read_pid(&s3server::pid_file(&cache)).filter(|p| alive(*p));
    if s3server::ready(S3_ADDR) {
        println!("s3        already running at http://{S3_ADDR}");
    } else if s3_pid.is_none() {
        let lib = s3server::install(&cache)?;
        s3server::start(&cache, &lib)?;
        started.s3 = true;
    }
    if started.s3 || s3_pid.is_some() {
        // Ours, just started or still starting from an earlier `up`.
        wait_for("s3proxy", s3server::S3_START_TIMEOUT, || {
            if let Some(pid) = read_pid(&s3server::pid_file(&cache))
                && !alive(pid)
            {
                bail!(
                    "s3proxy exited during start-up; see {}",
                    s3server::log_file(&cache).display()
                );
            }
            Ok(s3server::ready(S3_ADDR))
        })?;
        println!(
            "s3        up at http://{S3_ADDR} (bucket {})",
            s3server::S3_BUCKET
        );
    }

    if started.redis {
        wait_for_bool("redis", REDIS_START_TIMEOUT, || redis_ping(REDIS_ADDR))?;
        println!("redis     up at redis://{REDIS_ADDR}");
    }
    if started.cql {
        let log = cache.join("run/cassandra/logs/system.log");
        wait_for("cassandra", CQL_START_TIMEOUT, || {
            if let Some(pid) = read_pid(&cache.join("run/cassandra/cassandra.pid"))
                && !alive(pid)
            {
                return Err(anyhow::anyhow!(
                    "cassandra exited during start-up; see {} and {}",
                    log.display(),
                    cache.join("run/cassandra/stdout.log").display()
                ));
            }
            Ok(cql_ready(CQL_ADDR))
        })?;
        println!("cassandra up at {CQL_ADDR} (CQL)");
    }
    println!(
        "services ready in {:.1} s: QIM_TEST_REDIS=redis://{REDIS_ADDR} QIM_TEST_CQL={CQL_ADDR} QIM_TEST_S3={}",
        t0.elapsed().as_secs_f64(),
        s3server::test_url()
    );
    Ok(started)
}

/// Stops the services named in `which` that have a pid file of ours.
pub(crate) fn down(which: Started) -> Result<()> {
    let cache = cache_dir()?;
    if which.redis {
        stop("redis", &cache.join("run/redis/redis.pid"))?;
    }
    if which.cql {
        stop("cassandra", &cache.join("run/cassandra/cassandra.pid"))?;
    }
    if which.s3 {
        stop("s3", &s3server::pid_file(&cache))?;
    }
    Ok(())
}

fn status() -> Result<()> {
    let cache = cache_dir()?;
    let show = |name: &str, addr: &str, up: bool, pid_file: PathBuf| {
        let pid = read_pid(&pid_file)
            .filter(|p| alive(*p))
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        let state = if up { "up" } else { "down" };
        println!("{name:<9} {state:<4} {addr}{pid}");
    };
    show(
        "redis",
        &format!("redis://{REDIS_ADDR}"),
        redis_ping(REDIS_ADDR),
        cache.join("run/redis/redis.pid"),
    );
    show(
        "cassandra",
        CQL_ADDR,
        cql_ready(CQL_ADDR),
        cache.join("run/cassandra/cassandra.pid"),
    );
    show(
        "s3",
        &format!("http://{S3_ADDR}"),
        s3server::ready(S3_ADDR),
        s3server::pid_file(&cache),
    );
    println!("cache     {}", cache.display());
    Ok(())
}

// --- Redis ---------------------------------------------------------------

fn start_redis(cache: &Path) -> Result<()> {
    let server = ensure_redis_server()?;
    let dir = cache.join("run/redis");
    fs::create_dir_all(&dir)?;
    let port = REDIS_ADDR.rsplit(':').next().unwrap_or("6390");
    let status = Command::new(server)
        .arg("--bind")
        .arg("127.0.0.1")
        .args(["--port", port])
        .arg("--dir")
        .arg(&dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(["--daemonize", "yes", "--save", "", "--appendonly", "no"])
        .args(["--protected-mode", "yes"])
        .stdin(Stdio::null())
        .status()
        .context("starting redis-server")?;
    if !status.success() {
        bail!(
            "redis-server failed ({status}); see {}",
            dir.join("redis.log").display()
        );
    }
    Ok(())
}

/// Path of `redis-server`, installing Debian's package when it is missing.
pub(crate) fn ensure_redis_server() -> Result<PathBuf> {
    if let Some(p) = which("redis-server") {
        return Ok(p);
    }
    eprintln!("installing redis-server with apt-get (once)");
    let _ = Command::new("apt-get").arg("update").status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "redis-server"])
        .status()
        .context("apt-get install redis-server")?;
    if !status.success() {
        bail!("apt-get install -y redis-server failed: {status}");
    }
    which("redis-server").context("redis-server still missing after apt-get install")
}

/// True when a Redis at `addr` answers `PING` with `+PONG`.
fn redis_ping(addr: &str) -> bool {
    let Ok(mut s) = connect(addr) else {
        return false;
    };
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// --- Cassandra -----------------------------------------------------------

/// Resolves Cassandra and its runtime dependencies into the cache (once);
/// returns the directory holding the jars.
fn install_cassandra(cache: &Path) -> Result<PathBuf> {
    let home = cache.join(format!("cassandra-{CASSANDRA_VERSION}"));
    let lib = home.join("lib");
    let done = home.join(".complete");
    if done.exists() {
        return Ok(lib);
    }
    let java = java()?;
    let mvn = which("mvn").context(
        "mvn not found: install Maven (apt-get install -y maven) to fetch Cassandra from Maven Central",
    )?;
    eprintln!("fetching Apache Cassandra {CASSANDRA_VERSION} from Maven Central (once)");
    let t0 = Instant::now();
    fs::create_dir_all(&home)?;
    let pom = home.join("pom.xml");
    fs::write(
        &pom,
        format!(
            r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>qim.dev</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{CASSANDRA_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"#
        ),
    )?;
    let _ = fs::remove_dir_all(&lib);
    let status = Command::new(mvn)
        .current_dir(&home)
        .args(["-q", "-B", "-Dstyle.color=never", "-f"])
        .arg(&pom)
        .arg(format!("-Dmaven.repo.local={}", cache.join("m2").display()))
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", lib.display()))
        .env("JAVA_HOME", java_home(&java))
        .status()
        .context("running mvn")?;
    if !status.success() {
        bail!("mvn dependency:copy-dependencies for cassandra-all {CASSANDRA_VERSION} failed");
    }
    if !lib
        .join(format!("cassandra-all-{CASSANDRA_VERSION}.jar"))
        .exists()
    {
        bail!("cassandra-all jar missing in {} after mvn", lib.display());
    }
    fs::write(&done, CASSANDRA_VERSION)?;
    eprintln!(
        "fetched Cassandra in {:.1} s into {}",
        t0.elapsed().as_secs_f64(),
        lib.display()
    );
    Ok(lib)
}

fn start_cassandra(cache: &Path, lib: &Path) -> Result<()> {
    let java = java()?;
    let run = cache.join("run/cassandra");
    for sub in [
        "data",
        "commitlog",
        "saved_caches",
        "hints",
        "cdc_raw",
        "logs",
        "conf",
    ] {
        fs::create_dir_all(run.join(sub))?;
    }
    let conf = run.join("conf");
    fs::write(conf.join("cassandra.yaml"), cassandra_yaml(&run))?;
    fs::write(conf.join("logback.xml"), LOGBACK_XML)?;

    let mut classpath = vec![conf.display().to_string()];
    let mut jars: Vec<PathBuf> = fs::read_dir(lib)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jar"))
        .collect();
    jars.sort();
    classpath.extend(jars.iter().map(|j| j.display().to_string()));

    let stdout = fs::File::create(run.join("stdout.log"))?;
    let stderr = stdout.try_clone()?;
    let mut cmd = Command::new(&java);
    cmd.args(JVM_OPTIONS)
        .args(["-Xms1G", "-Xmx1G", "-Xss256k"])
        .arg(format!(
            "-javaagent:{}",
            lib.join("jamm-0.4.0.jar").display()
        ))
        .arg(format!(
            "-Dcassandra.config=file://{}",
            conf.join("cassandra.yaml").display()
        ))
        .arg(format!(
            "-Dlogback.configurationFile={}",
            conf.join("logback.xml").display()
        ))
        .arg(format!("-Dcassandra.logdir={}", run.join("logs").display()))
        .arg(format!("-Dcassandra.storagedir={}", run.display()))
        .args([
            "-Dcassandra-foreground=yes",
            // One node: nothing to gossip with, nothing to wait for.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.superuser_setup_delay_ms=0",
            // Skip the system-table flush on every schema change: a dev
            // server's schema is recreated by `qim-gateway migrate`.
            "-Dcassandra.unsafesystem=true",
        ])
        .arg("-cp")
        .arg(classpath.join(":"))
        .arg("org.apache.cassandra.service.CassandraDaemon")
        .current_dir(&run)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Own process group: Ctrl-C on the terminal that ran `up` does not
        // reach the server.
        .process_group(0);
    let child = cmd.spawn().context("starting java for cassandra")?;
    fs::write(run.join("cassandra.pid"), child.id().to_string())?;
    Ok(())
}

/// JVM options from Cassandra 5.0's `conf/jvm17-server.options` (GC, module
/// access for Java 17, netty) plus the common ones from `jvm-server.options`.
const JVM_OPTIONS: &[&str] = &[
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports",
    "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports",
    "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports",
    "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports",
    "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports",
    "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens",
    "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    // From jvm-server.options.
    "-ea",
    "-XX:+UseThreadPriorities",
    "-XX:+CrashOnOutOfMemoryError",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
];

fn cassandra_yaml(run: &Path) -> String {
    let d = |sub: &str| run.join(sub).display().to_string();
    let (host, port) = CQL_ADDR.split_once(':').unwrap_or(("127.0.0.1", "9042"));
    format!(
        r#"# Written by `cargo xtask services up`: one Cassandra node for development
# and tests on a small machine. Not a production configuration.
cluster_name: qim-dev
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{host}:{CASSANDRA_STORAGE_PORT}"
listen_address: {host}
rpc_address: {host}
storage_port: {CASSANDRA_STORAGE_PORT}
native_transport_port: {port}
start_native_transport: true
endpoint_snitch: SimpleSnitch
storage_compatibility_mode: NONE
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
data_file_directories:
  - {data}
commitlog_directory: {commitlog}
saved_caches_directory: {saved_caches}
hints_directory: {hints}
cdc_raw_directory: {cdc_raw}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
commitlog_total_space: 512MiB
disk_failure_policy: stop
commit_failure_policy: stop
hinted_handoff_enabled: false
auto_snapshot: false
snapshot_before_compaction: false
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 4
concurrent_compactors: 1
compaction_throughput: 64MiB/s
key_cache_size: 16MiB
memtable_heap_space: 256MiB
memtable_offheap_space: 256MiB
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 640KiB
read_request_timeout: 5000ms
range_request_timeout: 10000ms
write_request_timeout: 2000ms
cas_contention_timeout: 1000ms
truncate_request_timeout: 60000ms
request_timeout: 10000ms
"#,
        data = d("data"),
        commitlog = d("commitlog"),
        saved_caches = d("saved_caches"),
        hints = d("hints"),
        cdc_raw = d("cdc_raw"),
    )
}

const LOGBACK_XML: &str = r#"<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.SizeAndTimeBasedRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%d{yyyy-MM-dd}.%i.zip</fileNamePattern>
      <maxFileSize>20MB</maxFileSize>
      <maxHistory>3</maxHistory>
      <totalSizeCap>100MB</totalSizeCap>
    </rollingPolicy>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
"#;

/// True when the server at `addr` answers a CQL v4 `OPTIONS` request with
/// `SUPPORTED`: the native transport is up, which Cassandra starts last.
fn cql_ready(addr: &str) -> bool {
    let Ok(mut s) = connect(addr) else {
        return false;
    };
    // Header: version 4 request, no flags, stream 0, opcode OPTIONS (5),
    // body length 0.
    if s.write_all(&[0x04, 0, 0, 0, 0x05, 0, 0, 0, 0]).is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    s.read_exact(&mut header).is_ok() && header[0] == 0x84 && header[4] == 0x06
}

/// Java 17: `$JAVA_HOME/bin/java`, Debian's Java 17, or `java` on the path.
pub(crate) fn java() -> Result<PathBuf> {
    let candidates = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .into_iter()
        .chain([PathBuf::from("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")])
        .chain(which("java"));
    for java in candidates {
        if java_major(&java) == Some(17) {
            return Ok(java);
        }
    }
    bail!(
        "Cassandra {CASSANDRA_VERSION} needs Java 17: install it (apt-get install -y openjdk-17-jre-headless) or set JAVA_HOME"
    )
}

fn java_major(java: &Path) -> Option<u32> {
    let out = Command::new(java).arg("-version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split('"').nth(1)?;
    version.split('.').next()?.parse().ok()
}

pub(crate) fn java_home(java: &Path) -> PathBuf {
    fs::canonicalize(java)
        .ok()
        .and_then(|j| j.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr"))
}

// --- processes -----------------------------------------------------------

pub(crate) fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other("bad address"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Polls `ready` until it returns true or `timeout` passes.
fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} did not answer within {} s", timeout.as_secs());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn wait_for_bool(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    wait_for(what, timeout, || Ok(ready()))
}

fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // `kill -0` reports whether the process exists; a zombie child of
    // another process counts as gone once its /proc entry says so.
    let status = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    match status {
        Some(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        None => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn stop(name: &str, pid_file: &Path) -> Result<()> {
    let Some(pid) = read_pid(pid_file) else {
        println!("{name:<9} not started by services up");
        return Ok(());
    };
    if !alive(pid) {
        let _ = fs::remove_file(pid_file);
        println!("{name:<9} not running");
        return Ok(());
    }
    signal(pid, "TERM");
    if wait_for_bool(name, STOP_TIMEOUT, || !alive(pid)).is_err() {
        eprintln!("{name} did not stop on SIGTERM; sending SIGKILL");
        signal(pid, "KILL");
        wait_for_bool(name, Duration::from_secs(10), || !alive(pid))?;
    }
    let _ = fs::remove_file(pid_file);
    println!("{name:<9} stopped (pid {pid})");
    Ok(())
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
