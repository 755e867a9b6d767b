//! Draws a [`Model`] into a ratatui frame: the status bar (user,
//! connection, inbox position), the conversation list, the chat pane, the
//! input line and the notice line, and a window over them for help and
//! lists. Pure: the same model draws the same screen, into a real terminal
//! or a test buffer.
//!
//! Every text that came from outside passes through [`crate::text::inert`]
//! on its way to a cell.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use unicode_width::UnicodeWidthChar as _;

use crate::files::{bar, percent, size_text};
use crate::model::{self, Chat, Focus, Link, Mark, Model, Transfer};
use crate::text::{inert, inert_lines, short_time};

/// Width of the conversation list.
const LIST_WIDTH: u16 = 30;
/// Longest id or name drawn.
const MAX_NAME: usize = 64;
/// Lines of one message drawn at most.
const MAX_BODY_LINES: usize = 60;
/// Files of one message listed at most.
const MAX_FILES_SHOWN: usize = 10;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, model: &Model) {
    let [top, middle, input, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [list, chat] =
        Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(10)]).areas(middle);
    status_bar(frame, model, top);
    conversation_list(frame, model, list);
    chat_pane(frame, model, chat);
    input_line(frame, model, input);
    notice_line(frame, model, bottom);
    if let Some(overlay) = &model.overlay {
        overlay_window(frame, overlay, frame.area());
    }
}

/// How the status bar names the connection: the one place it is worded.
pub fn link_text(link: &Link, now_ms: i64) -> (String, Color) {
    match link {
        Link::Connecting => ("◌ connecting…".to_owned(), Color::Yellow),
        Link::Connected(t) => (format!("● connected over {}", t.label()), Color::Green),
        Link::Reconnecting {
            next_attempt_ms,
            reason,
        } => {
            let when = if *next_attempt_ms > now_ms {
                format!(
                    " in {}s",
                    next_attempt_ms.saturating_sub(now_ms).saturating_add(999) / 1000
                )
            } else {
                "…".to_owned()
            };
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", inert(reason, 60))
            };
            (format!("↻ reconnecting{when}{why}"), Color::Yellow)
        }
        Link::Closed(reason) => (format!("✕ offline: {}", inert(reason, 80)), Color::Red),
    }
}

fn status_bar(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let (link, color) = link_text(&model.link, model.now_ms);
    let line = Line::from(vec![
        Span::styled(" qim ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("· {} · ", inert(&model.me, MAX_NAME))),
        Span::styled(link, Style::new().fg(color)),
        Span::raw(format!(" · inbox #{}", model.synced)),
    ]);
    frame.render_widget(
        Paragraph::new(line).style(Style::new().bg(Color::DarkGray).fg(Color::White)),
        area,
    );
}

fn focused(block: Block<'_>, on: bool) -> Block<'_> {
    if on {
        block.border_style(Style::new().fg(Color::Cyan))
    } else {
        block
    }
}

fn conversation_list(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let block = focused(
        Block::bordered().title(" conversations "),
        model.focus == Focus::List,
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let mut rows = Vec::new();
    if model.convs.entries.is_empty() {
        rows.push(Line::styled(
            "none yet: /msg <user>",
            Style::new().fg(Color::DarkGray),
        ));
    }
    // Keep the selected row in view: two rows per entry.
    let per_page = (inner.height as usize / 2).max(1);
    let first = model.selected.saturating_sub(per_page - 1);
    for (i, e) in model
        .convs
        .entries
        .iter()
        .enumerate()
        .skip(first)
        .take(per_page)
    {
        let open = model.open.as_ref() == Some(&e.peer);
        let mut name = inert(&model::peer_label(&e.peer), MAX_NAME);
        if let qim_sdk::Peer::User(u) = &e.peer
            && model.presence.get(u).is_some_and(|p| p.online)
        {
            name.push_str(" ●");
        }
        let mut right = String::new();
        if e.pinned {
            right.push_str("pin ");
        }
        if e.muted {
            right.push_str("mute ");
        }
        if e.unread > 0 {
            right.push_str(&format!("[{}] ", e.unread));
        }
        right.push_str(&short_time(e.last_ms, model.now_ms));
        let marker = if i == model.selected && model.focus == Focus::List {
            ">"
        } else if open {
            "*"
        } else {
            " "
        };
        let room = width.saturating_sub(right.chars().count() + 2);
        let name = truncate(&name, room);
        let pad = width.saturating_sub(2 + width_of(&name) + right.chars().count());
        let mut style = Style::new();
        if open {
            style = style.add_modifier(Modifier::BOLD);
        }
        if i == model.selected && model.focus == Focus::List {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let unread_style = if e.unread > 0 && !e.muted {
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        rows.push(Line::from(vec![
            Span::styled(format!("{marker} {name}{}", " ".repeat(pad)), style),
            Span::styled(right, unread_style),
        ]));
        let preview = if e.last_text.is_empty() {
            String::new()
        } else {
            format!(
                "{}: {}",
                if e.last_from == model.me {
                    "you"
                } else {
                    &e.last_from
                },
                e.last_text
            )
        };
        rows.push(Line::styled(
            format!(
                "  {}",
                truncate(&inert(&preview, 200), width.saturating_sub(2))
            ),
            Style::new().fg(Color::DarkGray),
        ));
    }
    frame.render_widget(Paragraph::new(rows), inner);
}

fn chat_pane(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let Some(peer) = &model.open else {
        let block = Block::bordered().title(" chat ");
        let hint = Paragraph::new(vec![
            Line::raw("Open a conversation: Tab to the list and Enter,"),
            Line::raw("or /msg <user>, /join <group>. /help lists commands."),
        ])
        .block(block);
        frame.render_widget(hint, area);
        return;
    };
    let mut title = format!(" {}", inert(&model::peer_label(peer), MAX_NAME));
    if let qim_sdk::Peer::User(u) = peer {
        match model.presence.get(u) {
            Some(p) if p.online => title.push_str(" · online"),
            Some(p) if p.last_seen_ms > 0 => {
                title.push_str(&format!(
                    " · last seen {}",
                    short_time(p.last_seen_ms, model.now_ms)
                ));
            }
            _ => {}
        }
    }
    let typing = model.typing_in(peer);
    if !typing.is_empty() {
        let who: Vec<String> = typing.iter().take(3).map(|u| inert(u, MAX_NAME)).collect();
        title.push_str(&format!(" · {} typing…", who.join(", ")));
    }
    title.push(' ');
    let block = focused(Block::bordered().title(title), model.focus == Focus::Chat);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let empty = Chat::default();
    let chat = model.chats.get(peer).unwrap_or(&empty);
    let rows = chat_rows(model, chat, inner.width as usize, inner.height as usize);
    frame.render_widget(Paragraph::new(rows), inner);
}

/// The rows of the chat window: the messages ending at the scroll
/// position (or showing the selected one), wrapped to `width`.
fn chat_rows(model: &Model, chat: &Chat, width: usize, height: usize) -> Vec<Line<'static>> {
    let len = chat.lines.len();
    if len == 0 {
        let text = if chat.loading {
            "loading…"
        } else {
            "no messages yet"
        };
        return vec![Line::styled(text, Style::new().fg(Color::DarkGray))];
    }
    let mut end = len.saturating_sub(chat.scroll).max(1);
    if let Some(sel) = chat.selected
        && sel >= end
    {
        end = (sel + 1).min(len);
    }
    let mut blocks = Vec::new();
    let mut used = 0;
    let mut start = end;
    while start > 0 && used < height {
        start -= 1;
        let b = message_rows(model, chat, start, width);
        used += b.len();
        blocks.push(b);
    }
    let rows: Vec<Line<'static>> = match chat.selected {
        Some(sel) if sel < start => {
            // The selected message is above the window: start there.
            let mut rows = Vec::new();
            for i in sel..len {
                if rows.len() >= height {
                    break;
                }
                rows.extend(message_rows(model, chat, i, width));
            }
            rows.truncate(height);
            rows
        }
        _ => {
            let mut rows: Vec<Line<'static>> = Vec::new();
            if start == 0 && (chat.more_before || chat.loading) {
                let text = if chat.loading {
                    "loading older messages…"
                } else {
                    "older messages: PgUp"
                };
                rows.push(Line::styled(text, Style::new().fg(Color::DarkGray)));
            }
            blocks.reverse();
            rows.extend(blocks.into_iter().flatten());
            let skip = rows.len().saturating_sub(height);
            rows.into_iter().skip(skip).collect()
        }
    };
    rows
}

/// A message's rows: the quote it replies to, then time, sender, text and
/// mark, wrapped.
fn message_rows(model: &Model, chat: &Chat, i: usize, width: usize) -> Vec<Line<'static>> {
    let line = &chat.lines[i];
    let selected = chat.selected == Some(i);
    let mut base = Style::new();
    if line.mentions_me {
        base = base.fg(Color::Yellow);
    }
    if selected {
        base = base.add_modifier(Modifier::REVERSED);
    }
    let dim = base.fg(Color::DarkGray);
    let mut rows = Vec::new();
    if let Some(q) = &line.reply {
        let excerpt = String::from_utf8_lossy(&q.excerpt);
        rows.push(Line::styled(
            truncate(
                &format!(
                    "  ↪ {}: {}",
                    inert(&q.from_user, MAX_NAME),
                    inert(&excerpt, 80)
                ),
                width,
            ),
            dim,
        ));
    }
    let from = if line.outgoing && line.from == model.me {
        "you".to_owned()
    } else {
        inert(&line.from, MAX_NAME)
    };
    let mut segments: Vec<(String, Style)> = vec![
        (format!("{} ", short_time(line.time_ms, model.now_ms)), dim),
        (format!("{from}: "), base.add_modifier(Modifier::BOLD)),
    ];
    if line.recalled {
        segments.push((
            "⟲ message recalled".to_owned(),
            dim.add_modifier(Modifier::ITALIC),
        ));
    } else {
        for (n, text) in inert_lines(&line.body, MAX_BODY_LINES)
            .into_iter()
            .enumerate()
        {
            if n > 0 {
                segments.push(("\n".to_owned(), base));
            }
            segments.push((text, base));
        }
        if line.edited {
            segments.push((" (edited)".to_owned(), dim));
        }
    }
    if let Some(mark) = chat.mark(line).filter(|_| !line.recalled) {
        let (text, color) = match mark {
            Mark::Sending => ("  · sending", Color::DarkGray),
            Mark::Sent => ("  ✓ sent", Color::DarkGray),
            Mark::Delivered => ("  ✓✓ delivered", Color::Gray),
            Mark::Read => ("  ✓✓ read", Color::Cyan),
            Mark::Failed => ("  ✗ failed", Color::Red),
        };
        segments.push((text.to_owned(), base.fg(color)));
        if let model::SendState::Failed(why) = &line.state {
            segments.push((format!(": {}", inert(why, 120)), base.fg(Color::Red)));
        }
    }
    rows.extend(wrap(segments, width));
    if !line.recalled {
        rows.extend(file_rows(chat, i, width, base));
    }
    rows
}

/// Width of a progress bar, in cells.
const BAR_WIDTH: usize = 20;

/// A line's files (`[f2] name · size · type`, numbered for `/save`) and
/// the transfer under way or done.
fn file_rows(chat: &Chat, i: usize, width: usize, base: Style) -> Vec<Line<'static>> {
    let line = &chat.lines[i];
    let dim = base.fg(Color::DarkGray);
    let mut rows = Vec::new();
    for (k, a) in line.attachments.iter().enumerate().take(MAX_FILES_SHOWN) {
        let size = if a.size > 0 || line.transfer.is_none() {
            format!(" · {}", size_text(a.size))
        } else {
            String::new()
        };
        let name = if a.name.is_empty() {
            "(no name)".to_owned()
        } else {
            inert(&a.name, MAX_NAME)
        };
        rows.extend(wrap(
            vec![
                (format!("  [f{}] ", chat.file_number(i, k)), dim),
                (name, base.fg(Color::Cyan)),
                (format!("{size} · {}", inert(&a.media_type, MAX_NAME)), dim),
            ],
            width,
        ));
    }
    let progress = |arrow: &str, done: u64, total: u64, tail: String| {
        let numbers = if total > 0 {
            format!(
                " {} / {} {:>3}%",
                size_text(done),
                size_text(total),
                percent(done, total)
            )
        } else {
            format!(" {}", size_text(done))
        };
        wrap(
            vec![
                (format!("  {arrow} "), dim),
                (bar(done, total, BAR_WIDTH), base.fg(Color::Green)),
                (numbers, base),
                (tail, dim),
            ],
            width,
        )
    };
    match &line.transfer {
        None => {}
        Some(Transfer::Uploading { done, total }) => {
            rows.extend(progress("↑", *done, *total, " uploading".into()));
        }
        Some(Transfer::Uploaded { total }) => {
            rows.extend(progress("↑", *total, *total, " uploaded".into()));
        }
        Some(Transfer::Downloading { done, total }) => {
            rows.extend(progress("↓", *done, *total, " saving".into()));
        }
        Some(Transfer::Saved { path, total }) => rows.extend(progress(
            "↓",
            *total,
            *total,
            format!(" saved {}", inert(path, 200)),
        )),
        Some(Transfer::SaveFailed(why)) => rows.extend(wrap(
            vec![(
                format!("  ✗ not saved: {}", inert(why, 120)),
                base.fg(Color::Red),
            )],
            width,
        )),
    }
    rows
}

/// Styled segments as rows of at most `width` columns; a segment `"\n"`
/// starts a new row. Continuation rows are indented by two.
fn wrap(segments: Vec<(String, Style)>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(4);
    let mut rows = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for (text, style) in segments {
        if text == "\n" {
            rows.push(Line::from(std::mem::take(&mut row)));
            row.push(Span::raw("  "));
            used = 2;
            continue;
        }
        let mut piece = String::new();
        for c in text.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width {
                row.push(Span::styled(std::mem::take(&mut piece), style));
                rows.push(Line::from(std::mem::take(&mut row)));
                row.push(Span::raw("  "));
                used = 2;
            }
            piece.push(c);
            used += w;
        }
        if !piece.is_empty() {
            row.push(Span::styled(piece, style));
        }
    }
    if !row.is_empty() {
        rows.push(Line::from(row));
    }
    rows
}

fn input_line(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let title = match (&model.reply_to, &model.open) {
        (Some(q), _) => format!(
            " reply to {}: {} (Esc drops) ",
            inert(&q.from_user, MAX_NAME),
            inert(&String::from_utf8_lossy(&q.excerpt), 30)
        ),
        (None, Some(peer)) => format!(" message {} ", inert(&model::peer_label(peer), MAX_NAME)),
        (None, None) => " command (/help) ".to_owned(),
    };
    let block = focused(Block::bordered().title(title), model.focus == Focus::Input);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let shown = inert(&model.input, crate::model::MAX_INPUT);
    // Scroll horizontally so the cursor stays in view.
    let chars: Vec<char> = shown.chars().collect();
    let cursor = model.cursor.min(chars.len());
    let room = (inner.width as usize).saturating_sub(1).max(1);
    let mut first = 0;
    while width_of(&chars[first..cursor].iter().collect::<String>()) > room {
        first += 1;
    }
    let visible: String = chars[first..].iter().collect();
    frame.render_widget(Paragraph::new(truncate(&visible, room + 1)), inner);
    if model.focus == Focus::Input && model.overlay.is_none() {
        let x = width_of(&chars[first..cursor].iter().collect::<String>()) as u16;
        frame.set_cursor_position((inner.x + x.min(inner.width.saturating_sub(1)), inner.y));
    }
}

fn notice_line(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let line = match &model.notice {
        Some(n) => Line::styled(
            inert(&n.text, 500),
            Style::new().fg(if n.error { Color::Red } else { Color::Gray }),
        ),
        None => Line::styled(
            "Tab pane · Ctrl-N/P chat · PgUp older · /help · Ctrl-C quit",
            Style::new().fg(Color::DarkGray),
        ),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn overlay_window(frame: &mut Frame<'_>, overlay: &model::Overlay, area: Rect) {
    let w = (area.width * 9 / 10).max(20).min(area.width);
    let h = (area.height * 8 / 10).max(5).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    let block = Block::bordered()
        .title(format!(" {} (Esc closes) ", inert(&overlay.title, 80)))
        .border_style(Style::new().fg(Color::Cyan));
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let rows: Vec<Line<'static>> = overlay
        .lines
        .iter()
        .skip(overlay.scroll)
        .take(inner.height as usize)
        .map(|l| Line::raw(truncate(&inert(l, 1000), inner.width as usize)))
        .collect();
    frame.render_widget(Paragraph::new(rows), inner);
}

/// Display width of a text.
fn width_of(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` cut to `width` columns.
fn truncate(s: &str, width: usize) -> String {
    let mut used = 0;
    let mut out = String::new();
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}
