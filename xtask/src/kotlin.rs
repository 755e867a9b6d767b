//! The Kotlin tests of the generated bindings, run by `cargo xtask test`:
//! compile the generated Kotlin with `sdk-ffi/kotlin-tests/*.kt` and run
//! them on the JVM against a live `qim-gateway` started here.
//!
//! The Kotlin compiler (the `kotlin-compiler` npm package) and JNA (Maven
//! Central) are fetched once into `$HOME/.cache/qim/` — outside the clone,
//! so a fresh CI checkout reuses them — and compiled classes are cached by
//! a hash of their sources.
//!
//! Scenarios (each a JVM run of `MainKt <scenario>`): two clients chat,
//! typed errors, network change; a client goes offline and catches up; a
//! client process queues messages while offline and exits, and a second
//! process on the same data directory delivers them exactly once; and the
//! IM features (groups, recall and edit, contacts, presence and typing,
//! scheduled sends, push tokens, a device kicked by the single-device
//! policy); a client whose UDP is blocked, which logs in and chats over
//! TLS on TCP; and media: uploads and downloads with progress and
//! cancellation, an attachment sent and downloaded, a download refused to
//! a user no message gave the blob, and an upload left unfinished by one
//! process (offline) and resumed by the next. The shared gateway keeps
//! media on (its default, blobs under its data directory). Each
//! scenario has users of its own, so they do not see each other's traffic.
//! All run against one gateway with a short recall window, except the kick
//! scenario, which gets a gateway of its own with `im.device_policy =
//! "single"`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::bindings::{self, target_dir};
use crate::{cargo, run};

const KOTLIN_VERSION: &str = "2.4.20";

/// The shared gateway's recall window (`im.recall_window_ms`): long enough
/// for a recall right after a send on a loaded machine, short enough to
/// wait out in the test of a late recall.
const RECALL_WINDOW_MS: u64 = 2_000;

/// Users with a token in the environment (`QIM_TOKEN_<USER>`).
const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", // chat, catch-up, resumption, unread, outbox
    "gina", "hugo", "iris", // groups
    "kate", "liam", // recall and edit
    "mona", "nick", "rita", // contacts
    "olga", "paul", // presence and typing
    "sam", "tina", // scheduled sends
    "ulla", "udo", // UDP blocked
    "uma", // kicked
    "vera", "walt", // token provider
    "xena", // push tokens
    "ada", "ben", "eve", // media
];
const JNA_VERSION: &str = "5.14.0";

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache").join("qim"))
}

/// The Kotlin compiler distribution, fetched with `npm pack` once.
fn kotlin_home() -> Result<PathBuf> {
    let dir = cache_dir()?.join("kotlin").join(KOTLIN_VERSION);
    let home = dir.join("package");
    if home.join("bin").join("kotlinc").exists() {
        return Ok(home);
    }
    eprintln!("fetching the Kotlin compiler {KOTLIN_VERSION} (npm, once)");
    std::fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .current_dir(&dir)
        .args(["pack", "--silent"])
        .arg(format!("kotlin-compiler@{KOTLIN_VERSION}")))?;
    let tgz = dir.join(format!("kotlin-compiler-{KOTLIN_VERSION}.tgz"));
    run(Command::new("tar").current_dir(&dir).arg("xzf").arg(&tgz))?;
    std::fs::remove_file(&tgz)?;
    if !home.join("bin").join("kotlinc").exists() {
        bail!("the kotlin-compiler package has no bin/kotlinc");
    }
    Ok(home)
}

/// JNA, fetched from Maven Central with `mvn` once.
fn jna_jar() -> Result<PathBuf> {
    let dir = cache_dir()?.join("jna");
    let jar = dir.join(format!("jna-{JNA_VERSION}.jar"));
    if jar.exists() {
        return Ok(jar);
    }
    eprintln!("fetching JNA {JNA_VERSION} (Maven Central, once)");
    run(Command::new("mvn")
        .args(["-q", "-B", "dependency:copy"])
        .arg(format!("-Dartifact=net.java.dev.jna:jna:{JNA_VERSION}"))
        .arg(format!("-DoutputDirectory={}", dir.display())))?;
    if !jar.exists() {
        bail!("mvn did not produce {}", jar.display());
    }
    Ok(jar)
}

fn classpath(parts: &[&Path]) -> String {
    parts
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Compiles the generated bindings and the tests; reuses an earlier
/// compilation of the same sources.
fn compile(root: &Path, generated: &[PathBuf], kotlin: &Path, jna: &Path) -> Result<PathBuf> {
    let tests_dir = root.join("sdk-ffi").join("kotlin-tests");
    let mut sources = generated.to_vec();
    let mut tests: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .with_context(|| format!("reading {}", tests_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kt"))
        .collect();
    tests.sort();
    sources.extend(tests);
    let mut hasher = DefaultHasher::new();
    KOTLIN_VERSION.hash(&mut hasher);
    for source in &sources {
        std::fs::read(source)?.hash(&mut hasher);
    }
    let out = target_dir(root)
        .join("kotlin-tests")
        .join(format!("{:016x}", hasher.finish()));
    if out.join("MainKt.class").exists() {
        return Ok(out);
    }
    let coroutines = kotlin.join("lib").join("kotlinx-coroutines-core-jvm.jar");
    eprintln!("compiling the Kotlin bindings and tests");
    let started = Instant::now();
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new(kotlin.join("bin").join("kotlinc"))
        .args(&sources)
        .args(["-nowarn", "-jvm-target", "17", "-cp"])
        .arg(classpath(&[jna, &coroutines]))
        .arg("-d")
        .arg(&tmp))?;
    std::fs::rename(&tmp, &out)?;
    eprintln!("compiled in {:.0?}", started.elapsed());
    Ok(out)
}

/// A `qim-gateway` process on 127.0.0.1 with its own data directory.
struct Gateway {
    child: Child,
    quic: String,
    /// The TLS-on-TCP port, from the READY line.
    tcp_port: Option<String>,
    binary: PathBuf,
    data_dir: PathBuf,
}

impl Gateway {
    /// Starts a gateway with `settings` (`section.field=value`) over the
    /// defaults.
    fn start(binary: &Path, data_dir: &Path, settings: &[String]) -> Result<Gateway> {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(settings.iter().flat_map(|s| ["--set", s.as_str()]))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qim-gateway")?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut quic = None;
        let mut tcp = None;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("READY quic=") {
                quic = rest.split_whitespace().next().map(str::to_owned);
                tcp = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("tcp="))
                    .and_then(|a| a.rsplit(':').next())
                    .map(str::to_owned);
                break;
            }
        }
        let Some(quic) = quic else {
            let _ = child.kill();
            bail!("qim-gateway exited before it was ready");
        };
        Ok(Gateway {
            child,
            quic,
            tcp_port: tcp,
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
        })
    }

    fn token(&self, user: &str) -> Result<String> {
        let out = Command::new(&self.binary)
            .args(["token", "--user", user])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .context("qim-gateway token")?;
        if !out.status.success() {
            bail!("qim-gateway token failed");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// What a scenario needs to reach this gateway: its address, CA and a
    /// token per user.
    fn env(&self) -> Result<Vec<(String, String)>> {
        let ca = self.data_dir.join("certs").join("ca.pem");
        let mut env = vec![
            ("QIM_CA".to_owned(), ca.display().to_string()),
            ("QIM_SERVER".to_owned(), self.quic.clone()),
        ];
        if let Some(port) = &self.tcp_port {
            env.push(("QIM_TCP_PORT".to_owned(), port.clone()));
        }
        for user in USERS {
            env.push((
                format!("QIM_TOKEN_{}", user.to_uppercase()),
                self.token(user)?,
            ));
        }
        Ok(env)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs every Kotlin scenario; returns how many passed and the names of
/// those that failed.
pub(crate) fn test(root: &Path) -> Result<(u64, Vec<String>)> {
    let started = Instant::now();
    let out = target_dir(root).join("bindings");
    let generated = bindings::bindings(root, &out, false, true)?;
    run(Command::new(cargo()).current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "qim-gateway",
        "--bin",
        "qim-gateway",
    ]))?;
    let gateway_bin = target_dir(root).join("debug").join("qim-gateway");
    let kotlin = kotlin_home()?;
    let jna = jna_jar()?;
    let classes = compile(root, &generated.kotlin, &kotlin, &jna)?;

    let work = std::env::temp_dir().join(format!("qim-kotlin-tests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = run_scenarios(&work, &gateway_bin, &kotlin, &jna, &classes, &generated);
    let _ = std::fs::remove_dir_all(&work);
    let counts = result?;
    eprintln!("kotlin tests took {:.1?}", started.elapsed());
    Ok(counts)
}

fn run_scenarios(
    work: &Path,
    gateway_bin: &Path,
    kotlin: &Path,
    jna: &Path,
    classes: &Path,
    generated: &bindings::Bindings,
) -> Result<(u64, Vec<String>)> {
    let gateway = Gateway::start(
        gateway_bin,
        &work.join("gateway"),
        // The group checks add users who are not friends of the creator.
        &[
            format!("im.recall_window_ms={RECALL_WINDOW_MS}"),
            "groups.default_adds=\"anyone\"".to_owned(),
        ],
    )?;
    let single = Gateway::start(
        gateway_bin,
        &work.join("gateway-single"),
        &["im.device_policy=single".to_owned()],
    )?;
    let stdlib = kotlin.join("lib").join("kotlin-stdlib.jar");
    let coroutines = kotlin.join("lib").join("kotlinx-coroutines-core-jvm.jar");
    let cp = classpath(&[classes, jna, &coroutines, &stdlib]);
    let mut env = gateway.env()?;
    env.push(("QIM_RECALL_WINDOW_MS".into(), RECALL_WINDOW_MS.to_string()));
    // A UDP port that swallows everything: "offline" for the first outbox run.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let outbox_dir = work.join("carol-phone");
    let ids_file = work.join("outbox-ids");
    let media_dir = work.join("ada-laptop");
    let media_file = work.join("ada-upload.bin");
    let scenarios: [(&str, Vec<(String, String)>); 18] = [
        ("chat", vec![]),
        ("offline-catch-up", vec![]),
        ("resumption", vec![]),
        ("unread", vec![]),
        (
            "outbox-write",
            vec![
                ("QIM_SERVER".into(), dead.local_addr()?.to_string()),
                ("QIM_DATA_DIR".into(), outbox_dir.display().to_string()),
                ("QIM_OUTBOX_IDS".into(), ids_file.display().to_string()),
            ],
        ),
        (
            "outbox-deliver",
            vec![
                ("QIM_DATA_DIR".into(), outbox_dir.display().to_string()),
                ("QIM_OUTBOX_IDS".into(), ids_file.display().to_string()),
            ],
        ),
        ("groups", vec![]),
        ("recall-edit", vec![]),
        ("contacts", vec![]),
        ("presence-typing", vec![]),
        ("scheduled", vec![]),
        ("token-provider", vec![]),
        // QUIC to a port that swallows every datagram: UDP "blocked".
        (
            "udp-blocked",
            vec![("QIM_BLOCKED_SERVER".into(), dead.local_addr()?.to_string())],
        ),
        ("push-tokens", vec![]),
        ("media", vec![]),
        // An upload journalled offline by one process, resumed by the next.
        (
            "media-pending-write",
            vec![
                ("QIM_SERVER".into(), dead.local_addr()?.to_string()),
                ("QIM_DATA_DIR".into(), media_dir.display().to_string()),
                ("QIM_MEDIA_FILE".into(), media_file.display().to_string()),
            ],
        ),
        (
            "media-pending-resume",
            vec![
                ("QIM_DATA_DIR".into(), media_dir.display().to_string()),
                ("QIM_MEDIA_FILE".into(), media_file.display().to_string()),
            ],
        ),
        // Later entries override the shared gateway's address and tokens.
        ("kicked", single.env()?),
    ];
    // QIM_KOTLIN_SCENARIOS=groups,contacts runs only those (by name).
    let only = std::env::var("QIM_KOTLIN_SCENARIOS").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|s| s.trim() == name))
    };
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, extra) in scenarios.into_iter().filter(|(name, _)| selected(name)) {
        let t = Instant::now();
        let status = Command::new("java")
            .arg(format!(
                "-Djna.library.path={}",
                generated.native_dir.display()
            ))
            .args(["-cp", &cp, "MainKt", name])
            .envs(env.iter().cloned())
            .envs(extra)
            .env("RUST_LOG", "warn")
            .status()
            .context("running java")?;
        if status.success() {
            println!("kotlin {name} ... ok ({:.1?})", t.elapsed());
            passed += 1;
        } else {
            println!("kotlin {name} ... FAILED ({status})");
            failed.push(format!("kotlin {name}"));
        }
    }
    drop(dead);
    Ok((passed, failed))
}
