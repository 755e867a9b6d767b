//! Room on disk for a test run. The build cache of a workspace this size
//! grows with every variant built into it (tests, release, fuzzing); a run
//! that fills the disk fails half-way with errors that name no culprit.
//! Before building, `cargo xtask test` makes sure the cache's disk has room,
//! dropping first what is cheapest to rebuild.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Free space a whole test run needs: a cold debug build, the release
/// gateway, the fuzz targets and the services' data.
const NEEDED_BYTES: u64 = 20 << 30;

/// Frees space in `target` (the cargo target directory) when its disk has
/// less than a test run needs: the incremental caches first, then the
/// whole build cache (the run is then cold). Fails, with the numbers, when
/// even that is not enough.
pub(crate) fn ensure_room(target: &Path) -> Result<()> {
    let probe = if target.exists() {
        target
    } else {
        target.parent().unwrap_or(Path::new("/"))
    };
    let free = free_bytes(probe)?;
    if free >= NEEDED_BYTES {
        return Ok(());
    }
    for (what, dirs) in [
        (
            "incremental caches",
            vec![
                target.join("debug").join("incremental"),
                target.join("release").join("incremental"),
            ],
        ),
        (
            "build cache",
            vec![target.join("debug"), target.join("release")],
        ),
    ] {
        eprintln!(
            "disk: {} GiB free where {} GiB are needed; removing the {what} in {}",
            free_gib(free_bytes(probe)?),
            free_gib(NEEDED_BYTES),
            target.display()
        );
        for dir in dirs {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        if free_bytes(probe)? >= NEEDED_BYTES {
            return Ok(());
        }
    }
    let free = free_bytes(probe)?;
    bail!(
        "only {} GiB free on the disk of {} ({} GiB needed), even after emptying the build cache",
        free_gib(free),
        target.display(),
        free_gib(NEEDED_BYTES)
    )
}

fn free_gib(bytes: u64) -> u64 {
    bytes >> 30
}

/// Bytes free to this user on the file system holding `path` (`df -Pk`).
fn free_bytes(path: &Path) -> Result<u64> {
    let out = Command::new("df")
        .arg("-Pk")
        .arg(path)
        .output()
        .context("running df")?;
    if !out.status.success() {
        bail!("df {} failed: {}", path.display(), out.status);
    }
    parse_df(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading df's answer for {}", path.display()))
}

/// The "Available" column (KiB) of `df -Pk`'s second line, in bytes.
fn parse_df(text: &str) -> Result<u64> {
    let line = text.lines().nth(1).context("no data line")?;
    let available = line
        .split_whitespace()
        .nth(3)
        .context("no Available column")?;
    let kib: u64 = available
        .parse()
        .with_context(|| format!("Available is not a number: {available}"))?;
    Ok(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_available_column() {
        let text = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                    /dev/vda         264140800 96468992     16384     100% /\n";
        assert_eq!(parse_df(text).ok(), Some(16384 * 1024));
        assert!(parse_df("Filesystem\n").is_err());
    }
}
