//! Files sent and received: the media type of a file to send (from its
//! extension), a safe local name for a received file (whatever name the
//! sender chose), a free path that overwrites nothing, and sizes and
//! progress bars as the chat pane words them. Pure, apart from
//! [`free_path`] looking at the directory.

use std::path::{Path, PathBuf};

/// Longest local file name made from a received name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The media type to upload a file as, from its extension
/// (`application/octet-stream` when unknown).
pub fn media_type_of(path: &str) -> &'static str {
    let ext = Path::new(path)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "heic" => "image/heic",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" => "audio/ogg",
        "wav" => "audio/wav",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// A name to save a received file under, made from the name the sender
/// chose: its last path component only (`../../.bashrc` is `bashrc`), no
/// leading dots (no hidden files, no `..`), control characters,
/// bidirectional controls and characters some file systems refuse
/// replaced by `_`, at most [`MAX_NAME_CHARS`] characters; empty, or a
/// name Windows reserves, becomes `file-<start of the blob id>`.
pub fn safe_name(name: &str, blob_id: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| if unsafe_in_name(c) { '_' } else { c })
        .collect();
    let trimmed = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let mut out: String = trimmed.chars().take(MAX_NAME_CHARS).collect();
    let stem = out
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if out.is_empty() || reserved {
        let id: String = blob_id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(12)
            .collect();
        out = format!("file-{id}");
    }
    out
}

fn unsafe_in_name(c: char) -> bool {
    c.is_control()
        || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|' | '\0')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `dir/name`, or, when that exists, `dir/stem (2).ext`, `(3)`…: a path
/// that names nothing yet (also no dangling link).
pub fn free_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if std::fs::symlink_metadata(&first).is_err() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    for n in 2..10_000u32 {
        let candidate = dir.join(format!("{stem} ({n}){ext}"));
        if std::fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
    }
    dir.join(format!("{stem} ({}){ext}", crate::worker::now_ms()))
}

/// Whether `blob_id` is a blob id as the SDK writes them (64 hex digits).
pub fn valid_blob_id(blob_id: &str) -> bool {
    blob_id.len() == 64 && blob_id.chars().all(|c| c.is_ascii_hexdigit())
}

/// A size in words: `812 B`, `300.0 KiB`, `4.2 MiB`, `1.5 GiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Whole percent of `done` in `total` (0 when the total is unknown; at
/// most 100).
pub fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
}

/// A bar of `width` cells, filled in proportion: `██████░░░░`.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (u128::from(done.min(total)) * width as u128 / u128::from(total)) as usize
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn hostile_names_become_plain_names_in_the_directory() {
        for (name, safe) in [
            ("../../.bashrc", "bashrc"),
            ("..\\..\\evil.exe", "evil.exe"),
            ("/etc/passwd", "passwd"),
            ("..", "file-0123456789ab"),
            ("", "file-0123456789ab"),
            ("...", "file-0123456789ab"),
            ("a/b/", "file-0123456789ab"),
            ("photo.png", "photo.png"),
            ("ok name (1).txt", "ok name (1).txt"),
            ("bell\u{7}\u{1b}[2J.txt", "bell__[2J.txt"),
            ("gpj\u{202e}.exe", "gpj_.exe"),
            ("con.txt", "file-0123456789ab"),
            ("COM1", "file-0123456789ab"),
            ("what?.txt", "what_.txt"),
            ("trailing. ", "trailing"),
        ] {
            assert_eq!(safe_name(name, BLOB), safe, "{name:?}");
        }
        let long = "x".repeat(5000);
        assert_eq!(safe_name(&long, BLOB).chars().count(), MAX_NAME_CHARS);
        for name in ["../../.bashrc", "..", "a/../../b", "\\..\\x"] {
            let safe = safe_name(name, BLOB);
            assert!(!safe.contains('/') && !safe.contains('\\') && !safe.starts_with('.'));
        }
    }

    #[test]
    fn a_free_path_overwrites_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a.txt"));
        std::fs::write(dir.path().join("a.txt"), "x").expect("write");
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a (2).txt"));
        std::fs::write(dir.path().join("a (2).txt"), "x").expect("write");
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a (3).txt"));
        std::fs::write(dir.path().join("noext"), "x").expect("write");
        assert_eq!(free_path(dir.path(), "noext"), dir.path().join("noext (2)"));
    }

    #[test]
    fn sizes_percents_bars_and_types() {
        assert_eq!(size_text(0), "0 B");
        assert_eq!(size_text(1023), "1023 B");
        assert_eq!(size_text(300 * 1024), "300.0 KiB");
        assert_eq!(size_text(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
        assert_eq!(size_text(u64::MAX), "16777216.0 TiB");
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(5, 0), 0);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(percent(10, 5), 100);
        assert_eq!(bar(5, 10, 4), "██░░");
        assert_eq!(bar(0, 0, 3), "░░░");
        assert_eq!(bar(u64::MAX, 1, 2), "██");
        assert_eq!(media_type_of("a/b/Photo.JPG"), "image/jpeg");
        assert_eq!(media_type_of("notes"), "application/octet-stream");
        assert!(valid_blob_id(BLOB));
        assert!(!valid_blob_id("../x"));
    }
}
