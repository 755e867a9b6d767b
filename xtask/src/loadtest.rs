//! `cargo xtask loadtest <scenario>`: a release gateway (embedded store, its
//! own data directory, random ports, development certificates and token
//! secret) and the load generator `qim-loadgen` in a separate process; or
//! the load generator alone against `--gateway host:port`.
//!
//! With `--cluster --nodes N`: N release gateways on the Redis + CQL
//! backend (the development services, started if they are not up), sharing
//! one CA and token secret, each with its own data directory and random
//! ports; Redis key prefixes are new for every run and the messages go to
//! the `qim_loadtest` keyspace. The load generator spreads the users over
//! the nodes (a hash of the user id picks one), so most chat pairs and
//! group members cross nodes.
//!
//! With `--minutes N --rate R` (chat only): a soak, see `soak`.
//!
//! Also the pieces `cargo xtask bench` and the smoke run of `cargo xtask
//! test` share: building, starting a gateway and reading a `RESULT` line.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Arguments of `cargo xtask loadtest`.
#[derive(clap::Args, Debug)]
pub(crate) struct LoadtestArgs {
    /// connections | chat | reconnect | fanout
    scenario: String,
    /// Use this running gateway instead of starting one (needs --ca and
    /// --secret).
    #[arg(long)]
    gateway: Option<String>,
    /// CA of the gateway given with --gateway.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Token secret file of the gateway given with --gateway.
    #[arg(long)]
    secret: Option<PathBuf>,
    /// Extra gateway settings (`section.field=value`, repeatable) for the
    /// gateway started here.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Build and run debug binaries (quicker to build, slower to run).
    #[arg(long)]
    debug: bool,
    /// Use the `qim-gateway` and `qim-loadgen` binaries in this directory
    /// instead of building them (e.g. to compare two builds).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run a cluster on the Redis + CQL backend instead of one node on the
    /// embedded store.
    #[arg(long)]
    cluster: bool,
    /// Nodes of the cluster (with --cluster).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Runs of the scenario in a row against the same gateway, which keeps
    /// what the earlier runs stored (its flushes and compactions then run
    /// during the later ones).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// quic | tcp | both: the clients' transport (TLS on TCP, or both one
    /// after the other against the same gateway, with their ratio).
    #[arg(long, default_value = "quic")]
    transport: String,
    /// Soak (chat only): send for this many minutes at `--rate` on a fresh
    /// gateway and report latency per window, disk use, write
    /// amplification and rows per message (see `soak`).
    #[arg(long)]
    minutes: Option<f64>,
    /// Soak: offered messages per second over all senders.
    #[arg(long)]
    rate: Option<f64>,
    /// Soak: seconds per reported window.
    #[arg(long, default_value_t = 30.0)]
    window_seconds: f64,
    /// Arguments for the scenario, after `--` (see `qim-loadgen <scenario>
    /// --help`), e.g. `-- --pairs 64 --seconds 10`.
    #[arg(last = true)]
    loadgen_args: Vec<String>,
}

/// Where the built binaries are.
pub(crate) struct Binaries {
    pub(crate) gateway: PathBuf,
    pub(crate) loadgen: PathBuf,
}

/// Builds the gateway and the load generator.
pub(crate) fn build(root: &Path, release: bool) -> Result<Binaries> {
    let mut cmd = Command::new(crate::cargo());
    cmd.current_dir(root)
        .args(["build", "-p", "qim-gateway", "-p", "qim-loadgen"]);
    if release {
        cmd.arg("--release");
    }
    crate::run(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join(if release { "release" } else { "debug" });
    Ok(Binaries {
        gateway: dir.join("qim-gateway"),
        loadgen: dir.join("qim-loadgen"),
    })
}

/// A gateway process started for a run; killed when dropped.
pub(crate) struct RunningGateway {
    child: Child,
    /// Its QUIC address.
    pub(crate) addr: String,
    /// Its data directory (certificates, token secret, store).
    pub(crate) data_dir: PathBuf,
    /// Its admin API address, when it serves one (`admin.keys_file`).
    pub(crate) api: Option<String>,
    /// Its TLS-on-TCP address, when it listens on TCP.
    pub(crate) tcp: Option<String>,
}

impl RunningGateway {
    /// Starts `qim-gateway` on random ports with sends unthrottled (a load
    /// generator sends far above one person's rate) and waits for READY.
    pub(crate) fn start(binary: &Path, data_dir: &Path, set: &[String]) -> Result<Self> {
        Self::start_with(Command::new(binary), data_dir, &[], set)
    }

    /// [`Self::start`] under `wrapper` (a program and its arguments that
    /// runs the gateway, e.g. a heap profiler); the gateway's process id
    /// is then not the child's.
    pub(crate) fn start_under(
        wrapper: &[&str],
        binary: &Path,
        data_dir: &Path,
        set: &[String],
    ) -> Result<Self> {
        let (program, args) = wrapper.split_first().context("an empty wrapper")?;
        let mut cmd = Command::new(program);
        cmd.args(args).arg(binary);
        Self::start_with(cmd, data_dir, &[], set)
    }

    /// [`Self::start`] with extra command-line arguments (`extra`, e.g. the
    /// cluster backends) ahead of the settings, to `cmd` (the gateway or
    /// its wrapper).
    fn start_with(
        mut cmd: Command,
        data_dir: &Path,
        extra: &[String],
        set: &[String],
    ) -> Result<Self> {
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir)?;
        }
        std::fs::create_dir_all(data_dir)?;
        cmd.args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--set", "limits.sends_per_second=0"])
            .args(["--set", "limits.requests_per_second=0"])
            // The load is many users at once, some fanning out to whole
            // groups: the per-user quotas (still charged, so their cost is
            // measured) must not be what stops it.
            .args(["--set", "quotas.copies_per_second=0"])
            .args(["--set", "quotas.stored_bytes_per_day=1125899906842624"])
            // The fan-out scenario fills groups with users who are not
            // friends of the creator: they are added, not invited.
            .args(["--set", "groups.default_adds=\"anyone\""])
            .args(["--set", "log.filter=\"warn\""]);
        for s in set {
            cmd.args(["--set", s]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(data_dir.join("gateway.log"))?);
        let mut child = cmd.spawn().with_context(|| format!("{cmd:?}"))?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (addr, api, tcp) = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!(
                    "gateway exited before READY; see {}",
                    data_dir.join("gateway.log").display()
                );
            };
            if let Some(rest) = line?.strip_prefix("READY quic=") {
                let field = |name: &str| {
                    rest.split(' ')
                        .find_map(|part| part.strip_prefix(name))
                        .filter(|v| *v != "-")
                        .map(str::to_owned)
                };
                let (api, tcp) = (field("api="), field("tcp="));
                break (
                    rest.split(' ').next().unwrap_or_default().to_owned(),
                    api,
                    tcp,
                );
            }
        };
        // Keep draining stdout so the gateway never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            api,
            tcp,
        })
    }

    /// The process id (for memory and CPU readings).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process (the gateway, or its wrapper) has exited.
    pub(crate) fn try_wait(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Arguments that point `qim-loadgen` at this gateway.
    pub(crate) fn loadgen_args(&self) -> Vec<String> {
        vec![
            "--gateway".into(),
            self.addr.clone(),
            "--ca".into(),
            self.data_dir.join("certs/ca.pem").display().to_string(),
            "--secret".into(),
            self.data_dir.join("token-secret").display().to_string(),
        ]
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nodes of a cluster started for a run (Redis + CQL backend); killed
/// when dropped.
pub(crate) struct RunningCluster {
    nodes: Vec<RunningGateway>,
    dir: PathBuf,
}

impl RunningCluster {
    /// Brings the services up, makes a CA, server certificate and token
    /// secret shared by the nodes under `dir`, migrates the `qim_loadtest`
    /// keyspace and starts `n` nodes.
    pub(crate) fn start(binary: &Path, dir: &Path, n: usize, set: &[String]) -> Result<Self> {
        if n == 0 || n > 16 {
            bail!("--nodes must be 1..=16");
        }
        crate::services::up()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let certs = dir.join("certs");
        crate::run(
            Command::new(binary)
                .args(["certs", "--out"])
                .arg(&certs)
                .stdout(Stdio::null()),
        )?;
        let endpoint_secret = dir.join("endpoint-secret");
        crate::run(
            Command::new(binary)
                .args(["endpoint-secret", "--out"])
                .arg(&endpoint_secret)
                .stdout(Stdio::null()),
        )?;
        // Fresh Redis keys for every run, so nodes and routes of an earlier
        // run are never seen; the keyspace is shared (users are new too).
        let run = format!("lt{:08x}", std::process::id() ^ unix_nanos());
        let quote = |p: &Path| format!("\"{}\"", p.display());
        let mut common: Vec<String> = vec![
            "--redis".into(),
            format!("redis://{}", crate::services::REDIS_ADDR),
            "--cql".into(),
            crate::services::CQL_ADDR.into(),
        ];
        for s in [
            "store.keyspace=\"qim_loadtest\"".to_owned(),
            format!("store.key_prefix=\"{run}:\""),
            format!("cluster.key_prefix=\"{run}\""),
            format!("tls.cert={}", quote(&certs.join("server.pem"))),
            format!("tls.key={}", quote(&certs.join("server.key"))),
            format!("auth.secret_file={}", quote(&dir.join("token-secret"))),
            format!("quic.endpoint_secret_file={}", quote(&endpoint_secret)),
        ] {
            common.extend(["--set".into(), s]);
        }
        // Creates the shared secret before the nodes race to.
        crate::run(
            Command::new(binary)
                .args(&common)
                .args(["token", "--user", "loadtest"])
                .stdout(Stdio::null()),
        )?;
        crate::run(Command::new(binary).args(&common).arg("migrate"))?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut extra = common.clone();
            extra.extend(["--set".into(), format!("cluster.node_id=\"{run}-{i}\"")]);
            nodes.push(RunningGateway::start_with(
                Command::new(binary),
                &dir.join(format!("node-{i}")),
                &extra,
                set,
            )?);
        }
        Ok(Self {
            nodes,
            dir: dir.to_owned(),
        })
    }

    /// Arguments that point `qim-loadgen` at every node.
    pub(crate) fn loadgen_args(&self) -> Vec<String> {
        let addrs: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        vec![
            "--gateway".into(),
            addrs.join(","),
            "--ca".into(),
            self.dir.join("certs/ca.pem").display().to_string(),
            "--secret".into(),
            self.dir.join("token-secret").display().to_string(),
        ]
    }

    /// The nodes' process ids, comma separated.
    pub(crate) fn pids(&self) -> String {
        let pids: Vec<String> = self.nodes.iter().map(|n| n.pid().to_string()).collect();
        pids.join(",")
    }
}

fn unix_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Runs `qim-loadgen` with `args`, echoing its output, and returns the
/// parsed `RESULT` line (also when the run failed its checks).
pub(crate) fn loadgen(binary: &Path, args: &[String]) -> Result<serde_json::Value> {
    eprintln!("$ qim-loadgen {}", args.join(" "));
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{binary:?}"))?;
    let stdout = child.stdout.take().context("loadgen stdout")?;
    let mut result = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix("RESULT ") {
            Some(json) => result = Some(serde_json::from_str(json)?),
            None => println!("{line}"),
        }
    }
    let status = child.wait()?;
    match result {
        Some(r) => Ok(r),
        None => bail!(
            "qim-loadgen {} printed no result ({status})",
            args.join(" ")
        ),
    }
}

/// `cargo xtask loadtest`.
pub(crate) fn loadtest(root: &Path, a: LoadtestArgs) -> Result<()> {
    if !["connections", "chat", "reconnect", "fanout"].contains(&a.scenario.as_str()) {
        bail!(
            "unknown scenario {:?}: connections | chat | reconnect | fanout",
            a.scenario
        );
    }
    let bins = match &a.bin_dir {
        Some(dir) => Binaries {
            gateway: dir.join("qim-gateway"),
            loadgen: dir.join("qim-loadgen"),
        },
        None => build(root, !a.debug)?,
    };
    if let Some(minutes) = a.minutes {
        if a.scenario != "chat" || a.gateway.is_some() || a.cluster || a.transport != "quic" {
            bail!("--minutes soaks the chat scenario on one gateway started here, over QUIC");
        }
        let soak = crate::soak::Soak {
            minutes,
            rate: a
                .rate
                .context("a soak needs --rate (offered messages per second)")?,
            window_seconds: a.window_seconds,
            set: &a.set,
            extra: &a.loadgen_args,
        };
        return crate::soak::run(root, &bins, &soak);
    }
    if a.rate.is_some() {
        bail!("--rate before `--` is for a soak (--minutes); give the scenario's rate after `--`");
    }
    let mut args = vec![a.scenario.clone()];
    let mut cluster = None;
    let gateway = match &a.gateway {
        Some(_) if a.cluster => bail!("--cluster starts its own nodes; drop --gateway"),
        None if a.cluster => {
            let dir = root.join("target/loadtest/cluster");
            let c = RunningCluster::start(&bins.gateway, &dir, a.nodes, &a.set)?;
            for node in &c.nodes {
                eprintln!("node {} (pid {})", node.addr, node.pid());
            }
            args.extend(c.loadgen_args());
            if a.scenario == "connections" {
                args.extend(["--pid".into(), c.pids()]);
            }
            cluster = Some(c);
            None
        }
        Some(addr) => {
            let (Some(ca), Some(secret)) = (&a.ca, &a.secret) else {
                bail!("--gateway needs --ca and --secret");
            };
            args.extend([
                "--gateway".into(),
                addr.clone(),
                "--ca".into(),
                ca.display().to_string(),
                "--secret".into(),
                secret.display().to_string(),
            ]);
            None
        }
        None => {
            let dir = root.join("target/loadtest/gateway");
            let gw = RunningGateway::start(&bins.gateway, &dir, &a.set)?;
            eprintln!(
                "gateway {} (pid {}) data {}",
                gw.addr,
                gw.pid(),
                dir.display()
            );
            args.extend(gw.loadgen_args());
            // The chat's backlog download reports the gateway's CPU.
            if a.scenario == "connections" || a.scenario == "chat" {
                args.extend(["--pid".into(), gw.pid().to_string()]);
            }
            Some(gw)
        }
    };
    args.extend(a.loadgen_args.iter().cloned());
    let transports: &[&str] = match a.transport.as_str() {
        "quic" => &["quic"],
        "tcp" => &["tcp"],
        "both" => &["quic", "tcp"],
        other => bail!("unknown transport {other:?}: quic | tcp | both"),
    };
    let tcp_args = match (&gateway, transports.contains(&"tcp")) {
        (_, false) => Vec::new(),
        (Some(gw), true) => {
            let Some(tcp) = &gw.tcp else {
                bail!("the gateway listens on no TCP address (transport.tcp)");
            };
            vec!["--tcp".to_owned(), tcp.clone()]
        }
        (None, true) => bail!("--transport tcp needs the gateway started here (one node)"),
    };
    let runs = a.runs.max(1);
    let mut failures = Vec::new();
    let mut last = Vec::new();
    for transport in transports {
        let mut args = args.clone();
        if *transport == "tcp" {
            args.extend(tcp_args.iter().cloned());
        }
        for run in 1..=runs {
            let result = loadgen(&bins.loadgen, &args)?;
            if runs > 1 || transports.len() > 1 {
                println!("{transport}, run {run} of {runs}:");
            }
            println!("{}", serde_json::to_string_pretty(&result)?);
            if result["ok"].as_bool() != Some(true) {
                failures.push(format!("{transport} run {run}: {}", result["errors"]));
            }
            if run == runs {
                last.push(result);
            }
        }
    }
    if let [quic, tcp] = last.as_slice() {
        let ratio = |path: &[&str]| {
            let get = |v: &serde_json::Value| {
                path.iter()
                    .fold(v, |v, k| &v[*k])
                    .as_f64()
                    .unwrap_or(f64::NAN)
            };
            get(tcp) / get(quic)
        };
        println!(
            "tcp / quic: messages per second {:.2}, p50 {:.2}, p99 {:.2}",
            ratio(&["msgs_per_s"]),
            ratio(&["latency", "p50_ms"]),
            ratio(&["latency", "p99_ms"]),
        );
    }
    drop(gateway);
    drop(cluster);
    if !failures.is_empty() {
        bail!("{} failed: {}", a.scenario, failures.join("; "));
    }
    Ok(())
}

/// The smoke run inside `cargo xtask test`: a few hundred connections and
/// messages on debug builds, correctness only. Returns how many passed and
/// the names of those that failed.
pub(crate) fn smoke(root: &Path) -> (u64, Vec<String>) {
    match smoke_runs(root) {
        Ok(results) => {
            let mut counts = (0, Vec::new());
            for (name, r) in results {
                if r["ok"].as_bool() == Some(true) {
                    println!("loadtest smoke {name} ... ok");
                    counts.0 += 1;
                } else {
                    println!("loadtest smoke {name} ... FAILED: {}", r["errors"]);
                    counts.1.push(format!("loadtest smoke {name}"));
                }
            }
            counts
        }
        Err(e) => {
            println!("loadtest smoke ... FAILED: {e:#}");
            (0, vec!["loadtest smoke".to_owned()])
        }
    }
}

fn smoke_runs(root: &Path) -> Result<Vec<(&'static str, serde_json::Value)>> {
    let bins = build(root, false)?;
    // A low read-diffusion threshold, so the fan-out smoke covers both
    // group paths with a few members.
    let gw = RunningGateway::start(
        &bins.gateway,
        &root.join("target/loadtest/smoke"),
        &["groups.read_diffusion_threshold=12".into()],
    )?;
    let run = |scenario: &str, extra: &[&str]| {
        let mut args = vec![scenario.to_owned()];
        args.extend(gw.loadgen_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        loadgen(&bins.loadgen, &args)
    };
    let pid = gw.pid().to_string();
    Ok(vec![
        (
            "chat",
            run(
                "chat",
                &["--pairs", "10", "--messages", "40", "--seconds", "30"],
            )?,
        ),
        (
            "connections",
            run(
                "connections",
                &["--n", "300", "--hold-seconds", "1", "--pid", &pid],
            )?,
        ),
        ("reconnect", run("reconnect", &["--n", "100"])?),
        (
            "chat over TLS on TCP",
            run(
                "chat",
                &[
                    "--pairs",
                    "10",
                    "--messages",
                    "40",
                    "--seconds",
                    "30",
                    "--tcp",
                    gw.tcp.as_deref().context("the gateway's TCP address")?,
                ],
            )?,
        ),
        (
            "fanout write diffusion",
            run(
                "fanout",
                &["--members", "8", "--senders", "2", "--messages", "20"],
            )?,
        ),
        (
            "fanout read diffusion",
            run(
                "fanout",
                &["--members", "30", "--senders", "2", "--messages", "20"],
            )?,
        ),
    ])
}
