//! Text from the network made safe to draw, and times made short.
//!
//! Every string that came from the server or another user (bodies, names,
//! ids, error messages) goes through [`inert`] before it reaches the
//! screen: a terminal must never receive an escape sequence, a bell or a
//! carriage return that a sender chose. Control characters become visible
//! symbols (ESC shows as `␛`), bidirectional overrides (which can make a
//! line read differently than it is) become `�`, and lengths are capped.

/// Longest text shown for one message, in characters; the rest is cut with
/// a note saying how much.
pub const MAX_SHOWN_CHARS: usize = 4000;

/// `text` with every control character replaced by a visible symbol, cut
/// at `max_chars` characters (with a `…` mark). Newlines become `⏎` too:
/// callers that want lines split first (see [`inert_lines`]).
pub fn inert(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    for (shown, c) in text.chars().enumerate() {
        if shown == max_chars {
            out.push('…');
            return out;
        }
        out.push(visible(c));
    }
    out
}

/// The lines of a body, each [`inert`], the whole cut at
/// [`MAX_SHOWN_CHARS`] and at `max_lines` lines.
pub fn inert_lines(body: &str, max_lines: usize) -> Vec<String> {
    let total = body.chars().count();
    let mut shown = 0;
    let mut lines = Vec::new();
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let room = MAX_SHOWN_CHARS.saturating_sub(shown);
        if lines.len() == max_lines || room == 0 {
            lines.push(format!(
                "… ({} more characters)",
                total.saturating_sub(shown)
            ));
            return lines;
        }
        let n = line.chars().count();
        lines.push(inert(line, n.min(room)));
        shown += n.min(room) + 1;
        if n > room {
            lines.push(format!(
                "… ({} more characters)",
                total.saturating_sub(shown - 1)
            ));
            return lines;
        }
    }
    lines
}

/// A body's bytes as text: UTF-8, with invalid sequences replaced.
pub fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// One character as it may be drawn.
fn visible(c: char) -> char {
    match c {
        '\u{1b}' => '␛',
        '\n' => '⏎',
        '\t' => ' ',
        // C0 controls have pictures at U+2400 + code.
        c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('�'),
        '\u{7f}' => '␡',
        // C1 controls (CSI is U+009B: an escape on its own).
        '\u{80}'..='\u{9f}' => '�',
        // Bidirectional embeddings, overrides and isolates; zero-width
        // joiners stay (emoji need them).
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' => '�',
        // Line and paragraph separators.
        '\u{2028}' | '\u{2029}' => '⏎',
        c => c,
    }
}

/// `HH:MM` (UTC) for a time today, `MM-DD` for an older one, `YYYY-MM-DD`
/// for another year; empty for 0.
pub fn short_time(time_ms: i64, now_ms: i64) -> String {
    if time_ms <= 0 {
        return String::new();
    }
    let (y, m, d, hh, mm) = civil(time_ms);
    let (ny, nm, nd, _, _) = civil(now_ms);
    if (y, m, d) == (ny, nm, nd) {
        format!("{hh:02}:{mm:02}")
    } else if y == ny {
        format!("{m:02}-{d:02}")
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// `HH:MM` (UTC) of a time.
pub fn clock(time_ms: i64) -> String {
    let (_, _, _, hh, mm) = civil(time_ms);
    format!("{hh:02}:{mm:02}")
}

/// Year, month, day, hour, minute (UTC) of milliseconds since the epoch
/// (Howard Hinnant's days-from-civil inverse).
fn civil(time_ms: i64) -> (i64, u32, u32, u32, u32) {
    let secs = time_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (of_day / 3600) as u32,
        ((of_day % 3600) / 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_bells_and_overrides_become_visible_symbols() {
        let shown = inert("a\u{1b}[2J\u{7}b\u{9b}c\u{202e}d\r", 100);
        assert_eq!(shown, "a␛[2J␇b�c�d␍");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }

    #[test]
    fn long_text_is_cut_with_a_mark() {
        assert_eq!(inert("abcdef", 3), "abc…");
        let lines = inert_lines(&"x".repeat(MAX_SHOWN_CHARS + 10), 50);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].contains("10 more"), "{lines:?}");
        let many = inert_lines(&"a\n".repeat(100), 5);
        assert_eq!(many.len(), 6, "{many:?}");
    }

    #[test]
    fn times_are_short_and_utc() {
        // 2026-12-03 14:05:00 UTC.
        let now = 1_796_306_700_000;
        assert_eq!(clock(now), "14:05");
        assert_eq!(short_time(now - 60_000, now), "14:04");
        assert_eq!(short_time(now - 3 * 86_400_000, now), "11-30");
        assert_eq!(short_time(0, now), "");
        assert_eq!(short_time(86_400_000, now), "1970-01-02");
    }
}
