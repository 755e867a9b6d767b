//! `cargo xtask`: everything a developer or CI runs, in Rust.
//!
//! - `cargo xtask test`: starts the local services (`services up`), runs the
//!   whole test suite (unit, property, conformance on every backend,
//!   integration with real QUIC and the real SDK, the gateway binary under
//!   `kill -9`) with `QIM_TEST_REDIS`/`QIM_TEST_CQL`/`QIM_TEST_S3` pointing
//!   at them, the
//!   Kotlin tests, the load-test smoke runs, the admin API fuzz
//!   (schemathesis, `apifuzz`), then a short run of every fuzz target, and
//!   stops the services it started.
//!   Ends with one `qim: N passed, N failed` line.
//! - `cargo xtask certs`: development CA and server certificate into `certs/`.
//! - `cargo xtask fuzz --seconds N`: every fuzz target for N seconds.
//! - `cargo xtask apifuzz --seconds N`: the admin API fuzz alone.
//! - `cargo xtask services up|down|status`: local Redis, Cassandra and an
//!   S3-compatible object store (see `services`).
//! - `cargo xtask cluster --nodes N`: a local gateway cluster on those
//!   services (see `cluster`).
//! - `cargo xtask bindings`: Kotlin and Swift bindings of the SDK and the
//!   host's native library (`bindings.rs`); `test` also runs the Kotlin
//!   tests on the JVM (`kotlin.rs`).
//! - `cargo xtask loadtest <scenario>`: a release gateway and the load
//!   generator (see `loadtest`).
//! - `cargo xtask bench`: the benchmark suite against raw quinn,
//!   Mosquitto, NATS JetStream and (idle connections) Centrifugo (see
//!   `bench`); `--only idle` runs the idle connections scenario alone.
//! - `cargo xtask bench-mux`: the TCP stream multiplexers (yamux, qim's,
//!   HTTP/2, WebSocket) side by side on loopback (see `muxbench`).

mod apifuzz;
mod bench;
mod bindings;
mod centrifugo;
mod disk;
mod kotlin;
mod loadtest;
mod muxbench;
mod nats;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod cluster;
mod heap;
mod s3server;
mod services;
mod soak;

/// The durable peer's name in bench results (as `qim-loadgen nats-chat` reports it).
pub(crate) const NATS_SYSTEM: &str = "nats-jetstream";

#[derive(Parser)]
#[command(name = "xtask", about = "qim developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run every test, then each fuzz target briefly.
    Test {
        /// Seconds per fuzz target after the tests (0: none).
        #[arg(long, default_value_t = 5)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Make a development CA and server certificate in certs/.
    Certs,
    /// Run every fuzz target (installs cargo-fuzz if needed).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Fuzz the admin API of a fresh gateway with schemathesis (installs it
    /// into a cached virtualenv if needed).
    Apifuzz {
        /// Time budget.
        #[arg(long, default_value_t = API_FUZZ_SECONDS)]
        seconds: u64,
    },
    /// A local gateway cluster on the development services.
    Cluster {
        /// Gateway nodes to start.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Run release builds.
        #[arg(long)]
        release: bool,
        /// QUIC port of the first node (the others follow).
        #[arg(long, default_value_t = 4433)]
        base_port: u16,
        /// Admin/route HTTP port of the first node (the others follow).
        #[arg(long, default_value_t = 9090)]
        admin_base_port: u16,
        /// Route endpoint strategy: consistent-hash, least-connections, random, round-robin.
        #[arg(long, default_value = "consistent-hash")]
        strategy: String,
    },
    /// Local Redis and Cassandra for development and tests.
    Services {
        /// up | down | status
        #[arg(value_enum)]
        action: services::Action,
    },
    /// Generate the Kotlin and Swift bindings and copy the native library.
    Bindings {
        /// Output directory (default: <target dir>/bindings).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Build the library in release mode.
        #[arg(long)]
        release: bool,
        /// Then run the Kotlin tests on the JVM against a live gateway
        /// (what `cargo xtask test` runs after `cargo test`).
        #[arg(long)]
        test: bool,
    },
    /// Load test a gateway with `qim-loadgen`.
    Loadtest(loadtest::LoadtestArgs),
    /// The benchmark suite: raw quinn echo, qim, Mosquitto QoS 1, NATS
    /// JetStream, Centrifugo (idle connections).
    Bench(bench::BenchArgs),
    /// The TCP stream multiplexers side by side: latency, throughput, memory.
    BenchMux(muxbench::MuxBenchArgs),
    /// An idle connection's heap in the gateway, by owner (heaptrack).
    Heap(heap::HeapArgs),
}

const FUZZ_TARGETS: [&str; 3] = ["frame_decode", "envelope_decode", "preamble"];

/// The checkout this run is for: the nearest directory from the current
/// one up that holds `xtask/` and a workspace `Cargo.toml`. Not the
/// compile-time manifest path: with a build cache shared between checkouts
/// (`CARGO_TARGET_DIR`), `cargo xtask` may run a binary another checkout
/// built, and the run must still read and write this checkout.
fn workspace_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("current directory")?;
    for dir in cwd.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if dir.join("xtask").is_dir()
            && std::fs::read_to_string(&manifest).is_ok_and(|m| m.contains("[workspace]"))
        {
            return Ok(dir.to_path_buf());
        }
    }
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf())
}

fn main() -> Result<()> {
    let root = workspace_root()?;
    match Cli::parse().command {
        Task::Test {
            fuzz_seconds,
            cargo_args,
        } => test(&root, fuzz_seconds, &cargo_args),
        Task::Certs => run(Command::new(cargo())
            .current_dir(&root)
            .args([
                "run",
                "--quiet",
                "-p",
                "qim-gateway",
                "--",
                "certs",
                "--out",
                "certs",
            ])
            .args(["--spec", "certs/dev-certs.toml"])),
        Task::Fuzz { seconds, target } => fuzz(&root, seconds, target.as_deref()),
        Task::Services { action } => services::run(action),
        Task::Apifuzz { seconds } => apifuzz::run(&root, seconds),
        Task::Cluster {
            nodes,
            release,
            base_port,
            admin_base_port,
            strategy,
        } => cluster::run(
            &root,
            &cluster::Options {
                nodes,
                release,
                base_port,
                admin_base_port,
                strategy,
            },
        ),
        Task::Bindings { out, release, test } => {
            let out = out.unwrap_or_else(|| bindings::target_dir(&root).join("bindings"));
            bindings::bindings(&root, &out, release, false)?;
            if test {
                let (passed, failed) = kotlin::test(&root)?;
                println!("kotlin: {passed} passed, {} failed", failed.len());
                if !failed.is_empty() {
                    bail!("kotlin tests failed");
                }
            }
            Ok(())
        }
        Task::Loadtest(args) => loadtest::loadtest(&root, args),
        Task::Bench(args) => bench::bench(&root, args),
        Task::BenchMux(args) => muxbench::bench_mux(args),
        Task::Heap(args) => heap::heap(&root, args),
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// How long `cargo xtask test` fuzzes the admin API (schemathesis).
const API_FUZZ_SECONDS: u64 = 60;

fn test(root: &Path, fuzz_seconds: u64, extra: &[String]) -> Result<()> {
    // Tests of the Redis + CQL backend need the services; stop afterwards
    // only what this run started.
    disk::ensure_room(&bindings::target_dir(root))?;
    let started = services::up()?;
    ensure_tmux()?;
    let result = test_with_services(root, fuzz_seconds, extra);
    if started.any()
        && let Err(e) = services::down(started)
    {
        eprintln!("stopping services: {e:#}");
    }
    result
}

fn test_with_services(root: &Path, fuzz_seconds: u64, extra: &[String]) -> Result<()> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        .env(
            "QIM_TEST_REDIS",
            format!("redis://{}", services::REDIS_ADDR),
        )
        .env("QIM_TEST_CQL", services::CQL_ADDR)
        .env("QIM_TEST_S3", s3server::test_url())
        .args([
            "test",
            "--workspace",
            "--features",
            "qim-storage/conformance",
        ])
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    // What failed is named again in the last lines, after the fuzzers'
    // output, where a log's tail shows it.
    let mut failures: Vec<String> = Vec::new();
    let mut passed = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            passed += count(summary, " passed");
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            failures.push(format!("cargo test {name}"));
        }
    }
    let status = child.wait()?;
    if !status.success() && failures.is_empty() {
        failures.push(format!("cargo test ({status})"));
    }
    if status.success() {
        match kotlin::test(root) {
            Ok((p, f)) => {
                passed += p;
                failures.extend(f);
            }
            Err(e) => {
                eprintln!("kotlin tests could not run: {e:#}");
                failures.push("kotlin (could not run)".into());
            }
        }
        let (p, f) = loadtest::smoke(root);
        passed += p;
        failures.extend(f);
        match apifuzz::run(root, API_FUZZ_SECONDS) {
            Ok(()) => {
                println!("admin API fuzz (schemathesis) ... ok");
                passed += 1;
            }
            Err(e) => {
                eprintln!("admin API fuzz (schemathesis) ... FAILED: {e:#}");
                failures.push("admin API fuzz (schemathesis)".into());
            }
        }
    }
    if status.success() && fuzz_seconds > 0 {
        match fuzz(root, fuzz_seconds, None) {
            Ok(()) => passed += FUZZ_TARGETS.len() as u64,
            Err(e) => {
                eprintln!("fuzzing failed: {e:#}");
                failures.push("fuzzing".into());
            }
        }
    }
    for name in &failures {
        println!("FAILED: {name}");
    }
    println!("qim: {passed} passed, {} failed", failures.len());
    if !failures.is_empty() {
        bail!("tests failed");
    }
    Ok(())
}

/// The number before `what` in a `cargo test` summary.
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find(|part| part.ends_with(what))
        .and_then(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .split(' ')
                .next()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// tmux drives the desktop client's end-to-end test (`sdk/desktop/tests/tmux.rs`);
/// Debian's package is installed when it is missing.
fn ensure_tmux() -> Result<()> {
    let installed = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("installing tmux with apt-get (once)");
        let _ = Command::new("apt-get").arg("update").status();
        run(Command::new("apt-get").args(["install", "-y", "tmux"]))
            .context("apt-get install -y tmux (run as root, or install it)")?;
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("installing cargo-fuzz (once)");
        run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn fuzz(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match only {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t}; known: {FUZZ_TARGETS:?}"),
        None => FUZZ_TARGETS.to_vec(),
    };
    // Share the build cache when one is configured (CI keeps it outside
    // the clone).
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("fuzz"));
    for target in targets {
        eprintln!("fuzzing {target} for {seconds} s");
        let mut cmd = Command::new(cargo());
        cmd.current_dir(root.join("fuzz"))
            .args(["fuzz", "run", target, "--sanitizer", "none"]);
        if let Some(dir) = &target_dir {
            cmd.arg("--target-dir").arg(dir);
        }
        cmd.arg("--").arg(format!("-max_total_time={seconds}"));
        // A fuzz run's own target dir must not be the workspace's.
        cmd.env_remove("CARGO_TARGET_DIR");
        run(&mut cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn reads_cargo_test_summaries() {
        let s = "ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s";
        assert_eq!(count(s, " passed"), 12);
        assert_eq!(count(s, " failed"), 0);
        let s = "FAILED. 3 passed; 2 failed; 0 ignored";
        assert_eq!(count(s, " passed"), 3);
        assert_eq!(count(s, " failed"), 2);
    }
}
