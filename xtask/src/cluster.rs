//! `cargo xtask cluster --nodes N`: a local gateway cluster on the shared
//! development services.
//!
//! Brings Redis and Cassandra up (`services up`; they keep running after),
//! builds `qim-gateway`, makes development certificates and a token secret
//! shared by every node under `<target>/qim-cluster/`, runs `qim-gateway
//! migrate`, then starts N nodes on 127.0.0.1 with QUIC ports `base-port +
//! i` and admin/route ports `admin-base-port + i`, each with its own data
//! directory. It prints each node's addresses and the commands to mint a
//! token and chat, then waits. Ctrl-C reaches the nodes too (same process
//! group): each drains and leaves the cluster; the task returns when all
//! have stopped.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::services;

/// How to run the cluster.
pub(crate) struct Options {
    pub(crate) nodes: usize,
    pub(crate) release: bool,
    pub(crate) base_port: u16,
    pub(crate) admin_base_port: u16,
    pub(crate) strategy: String,
}

pub(crate) fn run(root: &Path, options: &Options) -> Result<()> {
    if options.nodes == 0 || options.nodes > 64 {
        bail!("--nodes must be 1..=64");
    }
    services::up()?;
    let redis = format!("redis://{}", services::REDIS_ADDR);
    let cql = services::CQL_ADDR.to_owned();

    let mut build = Command::new(crate::cargo());
    build.current_dir(root).args(["build", "-p", "qim-gateway"]);
    if options.release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target
        .join(if options.release { "release" } else { "debug" })
        .join("qim-gateway");
    let dir = target.join("qim-cluster");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;

    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        crate::run(
            Command::new(&bin)
                .args(["certs", "--out"])
                .arg(&certs)
                .stdout(Stdio::null()),
        )?;
    }
    let secret = dir.join("token-secret");
    let endpoint_secret = dir.join("endpoint-secret");
    crate::run(
        Command::new(&bin)
            .args(["endpoint-secret", "--out"])
            .arg(&endpoint_secret)
            .stdout(Stdio::null()),
    )?;
    let common: Vec<String> = vec![
        "--redis".into(),
        redis.clone(),
        "--cql".into(),
        cql.clone(),
        "--set".into(),
        format!("tls.cert={}", toml_string(&certs.join("server.pem"))),
        "--set".into(),
        format!("tls.key={}", toml_string(&certs.join("server.key"))),
        "--set".into(),
        format!("auth.secret_file={}", toml_string(&secret)),
        "--set".into(),
        format!(
            "quic.endpoint_secret_file={}",
            toml_string(&endpoint_secret)
        ),
        "--set".into(),
        format!("cluster.strategy=\"{}\"", options.strategy),
    ];
    // Creates the shared secret before the nodes race to.
    crate::run(
        Command::new(&bin)
            .args(&common)
            .args(["token", "--user", "dev"])
            .stdout(Stdio::null()),
    )?;
    crate::run(Command::new(&bin).args(&common).arg("migrate"))?;

    let mut children: Vec<Child> = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    for i in 0..options.nodes {
        let quic = format!("127.0.0.1:{}", u32::from(options.base_port) + i as u32);
        let admin = format!(
            "127.0.0.1:{}",
            u32::from(options.admin_base_port) + i as u32
        );
        let mut child = Command::new(&bin)
            .args(&common)
            .args(["--listen", &quic, "--admin-listen", &admin, "--data-dir"])
            .arg(dir.join(format!("node-{i}")))
            .args(["--set", &format!("cluster.node_id=\"node-{i}\"")])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        let stdout = child.stdout.take().context("node stdout")?;
        let tx = ready_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = tx.send((i, line));
                }
            }
        });
        children.push(child);
    }
    drop(ready_tx);
    let mut ready = vec![None; options.nodes];
    while ready.iter().any(Option::is_none) {
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok((i, line)) => ready[i] = Some(line),
            Err(_) => {
                for child in &mut children {
                    let _ = child.kill();
                }
                bail!("not every node became ready within 60 s (see the logs above)");
            }
        }
    }
    println!();
    println!(
        "qim cluster of {} nodes (strategy {}):",
        options.nodes, options.strategy
    );
    for (i, line) in ready.iter().flatten().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let quic = fields
            .get(1)
            .and_then(|f| f.strip_prefix("quic="))
            .unwrap_or("?");
        let admin = fields
            .get(2)
            .and_then(|f| f.strip_prefix("admin="))
            .unwrap_or("?");
        println!(
            "  node-{i}: QUIC {quic}   health/metrics/route http://{admin}   (GET /route?user=alice, /metrics)"
        );
    }
    println!();
    println!(
        "  token: {} token --user alice --set auth.secret_file={}",
        bin.display(),
        toml_string(&secret)
    );
    println!(
        "  chat:  cargo run -p qim-sdk --example chat -- --user alice --to bob --server 127.0.0.1:{} --ca {} --dev-secret {}",
        options.base_port,
        certs.join("ca.pem").display(),
        secret.display()
    );
    println!("  Ctrl-C stops every node.");
    for (i, mut child) in children.into_iter().enumerate() {
        let status = child.wait()?;
        eprintln!("node-{i} stopped: {status}");
    }
    Ok(())
}

fn toml_string(path: &Path) -> String {
    let s = path.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
