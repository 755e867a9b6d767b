//! The admin API's property-based fuzz: schemathesis (from PyPI, installed
//! once into a virtualenv under the cache directory) reads the OpenAPI
//! document a live gateway serves and sends it generated requests for a
//! bounded time, checking every answer: no 5xx, status codes, content
//! types and bodies as the document says, malformed requests refused.
//!
//! Run by `cargo xtask test` after the Rust tests, against a gateway on the
//! embedded store in a fresh data directory with a throwaway admin key.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::loadtest::{RunningGateway, build};

/// The schemathesis release the fuzz is pinned to.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The throwaway key of the fuzzed gateway (every scope).
const KEY: &str = "qim-apifuzz-key-with-every-scope-0123456789";

/// The virtualenv: `$QIM_CACHE_DIR/../schemathesis`, by default
/// `$HOME/.cache/qim/schemathesis`.
fn venv() -> Result<PathBuf> {
    Ok(crate::services::cache_dir()?
        .parent()
        .context("the cache directory has a parent")?
        .join("schemathesis"))
}

/// The `st` command, installed first when missing.
fn schemathesis() -> Result<PathBuf> {
    let venv = venv()?;
    let st = venv.join("bin/st");
    let pinned = venv.join(".pinned");
    if st.exists() && std::fs::read_to_string(&pinned).ok().as_deref() == Some(SCHEMATHESIS) {
        return Ok(st);
    }
    eprintln!("installing {SCHEMATHESIS} into {} (once)", venv.display());
    crate::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    crate::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]))?;
    std::fs::write(&pinned, SCHEMATHESIS)?;
    Ok(st)
}

/// Fuzzes the admin API of a fresh gateway for about `seconds`.
pub(crate) fn run(root: &Path, seconds: u64) -> Result<()> {
    let st = schemathesis()?;
    let bins = build(root, false)?;
    let dir = root.join("target/apifuzz");
    std::fs::create_dir_all(&dir)?;
    let keys = dir.join("admin-keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nid = \"fuzz\"\nsecret = \"{KEY}\"\n\
             scopes = [\"read\", \"sessions\", \"messages\", \"groups\", \"users\"]\n"
        ),
    )?;
    let gw = RunningGateway::start(
        &bins.gateway,
        &dir.join("gateway"),
        &[
            format!("admin.keys_file={:?}", keys.display().to_string()),
            "admin.api_listen=\"127.0.0.1:0\"".into(),
            // Every request carries the right key: no address is limited.
            "admin.auth_failures_per_minute=100000".into(),
        ],
    )?;
    let api = gw.api.clone().context("the gateway serves its admin API")?;
    let status = Command::new(&st)
        .current_dir(&dir)
        .args(["run", &format!("http://{api}/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "all"])
        // The document gives ids their alphabet and keys their length, but
        // not every rule a request must meet (one of to_user and to_group,
        // recipients without repeats, a body within limits.max_body_bytes
        // bytes): such schema-valid requests get a typed 400, which this
        // check would count. Every other check runs: no 5xx, and every
        // answer's status, content type and body as documented.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "25"])
        .args(["--request-timeout", "10"])
        .args(["--max-time", &seconds.to_string()])
        .status()
        .context("schemathesis")?;
    drop(gw);
    if !status.success() {
        bail!(
            "schemathesis found failures (see above; the gateway's log is in {})",
            dir.join("gateway/gateway.log").display()
        );
    }
    Ok(())
}
