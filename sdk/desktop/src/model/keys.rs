//! Keys: mouse-free navigation between the list, the chat and the input
//! line, and editing the input line.
//!
//! | key | where | does |
//! | --- | --- | --- |
//! | Tab / Shift-Tab | anywhere | next / previous pane |
//! | Ctrl-N / Ctrl-P | anywhere | open the next / previous conversation |
//! | Ctrl-C | anywhere | quit |
//! | Esc | anywhere | close the window, drop the reply, back to the input |
//! | ↑ ↓ (j k) | list | select; Enter opens |
//! | ↑ ↓ | chat | select a message; `r` reply, `e` edit, `x` recall |
//! | PgUp / PgDn | chat, input | scroll; past the top loads older messages |
//! | ← → Home End Backspace Delete | input | edit; Enter sends or runs a command |

use qim_sdk::Quote;

use super::{Focus, Key, Model};

/// Messages scrolled per page.
const PAGE: usize = 5;
/// Longest input line, in characters.
pub const MAX_INPUT: usize = 4000;

impl Model {
    pub(super) fn key(&mut self, key: Key) {
        if let Some(overlay) = self.overlay.as_mut() {
            match key {
                Key::Esc | Key::Enter | Key::Char('q') => self.overlay = None,
                Key::Up | Key::Char('k') => overlay.scroll = overlay.scroll.saturating_sub(1),
                Key::Down | Key::Char('j') => {
                    overlay.scroll =
                        (overlay.scroll + 1).min(overlay.lines.len().saturating_sub(1));
                }
                Key::PageUp => overlay.scroll = overlay.scroll.saturating_sub(10),
                Key::PageDown => {
                    overlay.scroll =
                        (overlay.scroll + 10).min(overlay.lines.len().saturating_sub(1));
                }
                Key::Ctrl('c') => self.quit = true,
                _ => {}
            }
            return;
        }
        match key {
            Key::Ctrl('c') => self.quit = true,
            Key::Tab => {
                self.focus = match self.focus {
                    Focus::List => Focus::Chat,
                    Focus::Chat => Focus::Input,
                    Focus::Input => Focus::List,
                };
                self.focus_changed();
            }
            Key::BackTab => {
                self.focus = match self.focus {
                    Focus::List => Focus::Input,
                    Focus::Chat => Focus::List,
                    Focus::Input => Focus::Chat,
                };
                self.focus_changed();
            }
            Key::Ctrl('n') => self.open_next(1),
            Key::Ctrl('p') => self.open_next(-1),
            Key::Esc => {
                self.reply_to = None;
                self.focus = Focus::Input;
                self.focus_changed();
            }
            Key::PageUp => self.scroll(PAGE as isize),
            Key::PageDown => self.scroll(-(PAGE as isize)),
            key => match self.focus {
                Focus::List => self.list_key(key),
                Focus::Chat => self.chat_key(key),
                Focus::Input => self.input_key(key),
            },
        }
    }

    fn focus_changed(&mut self) {
        if self.focus != Focus::Chat
            && let Some(chat) = self.open.as_ref().and_then(|p| self.chats.get_mut(p))
        {
            chat.selected = None;
        }
    }

    fn open_next(&mut self, step: isize) {
        let n = self.convs.entries.len();
        if n == 0 {
            return;
        }
        let current = self
            .open
            .as_ref()
            .and_then(|p| self.convs.entries.iter().position(|e| &e.peer == p));
        let next = match current {
            Some(i) => (i as isize + step).rem_euclid(n as isize) as usize,
            None => 0,
        };
        let peer = self.convs.entries[next].peer.clone();
        self.open_peer(peer);
    }

    fn scroll(&mut self, by: isize) {
        let Some(chat) = self.open.as_ref().and_then(|p| self.chats.get_mut(p)) else {
            return;
        };
        let len = chat.lines.len();
        chat.scroll = chat
            .scroll
            .saturating_add_signed(by)
            .min(len.saturating_sub(1));
        let near_top = chat.scroll + PAGE >= len;
        if by > 0 && near_top {
            self.load_older();
        }
    }

    fn list_key(&mut self, key: Key) {
        let n = self.convs.entries.len();
        match key {
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => {
                self.selected = (self.selected + 1).min(n.saturating_sub(1));
            }
            Key::Home => self.selected = 0,
            Key::End => self.selected = n.saturating_sub(1),
            Key::Enter | Key::Right => {
                if let Some(e) = self.convs.entries.get(self.selected) {
                    let peer = e.peer.clone();
                    self.open_peer(peer);
                    self.focus = Focus::Input;
                }
            }
            Key::Char(c) => {
                // Typing in the list goes to the input line.
                self.focus = Focus::Input;
                self.input_key(Key::Char(c));
            }
            _ => {}
        }
    }

    fn chat_key(&mut self, key: Key) {
        let Some(peer) = self.open.clone() else {
            return;
        };
        let me = self.me.clone();
        let Some(chat) = self.chats.get_mut(&peer) else {
            return;
        };
        let len = chat.lines.len();
        if len == 0 {
            return;
        }
        match key {
            Key::Up | Key::Char('k') => {
                let at = chat.selected.unwrap_or(len).saturating_sub(1);
                chat.selected = Some(at);
                if at == 0 {
                    self.load_older();
                }
            }
            Key::Down | Key::Char('j') => {
                chat.selected = match chat.selected {
                    Some(i) if i + 1 < len => Some(i + 1),
                    _ => None,
                };
            }
            Key::Char('r') => {
                if let Some(line) = chat.selected.and_then(|i| chat.lines.get(i))
                    && !line.msg_id.is_empty()
                {
                    self.reply_to = Some(Quote {
                        msg_id: line.msg_id.clone(),
                        from_user: line.from.clone(),
                        kind: "text".into(),
                        excerpt: line.body.chars().take(80).collect::<String>().into_bytes(),
                    });
                    self.focus = Focus::Input;
                }
            }
            Key::Char('e') => {
                if let Some(line) = chat.selected.and_then(|i| chat.lines.get(i))
                    && line.outgoing
                    && line.from == me
                {
                    self.input = format!("/edit {}", line.body);
                    self.cursor = self.input.chars().count();
                    self.focus = Focus::Input;
                }
            }
            Key::Char('x') => self.command("/recall"),
            Key::Enter | Key::Char('i') => self.focus = Focus::Input,
            _ => {}
        }
    }

    fn input_key(&mut self, key: Key) {
        match key {
            Key::Char(c) => {
                if self.input.chars().count() >= MAX_INPUT {
                    return;
                }
                let at = byte_at(&self.input, self.cursor);
                self.input.insert(at, c);
                self.cursor += 1;
                self.typed();
            }
            Key::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                let at = byte_at(&self.input, self.cursor);
                self.input.remove(at);
            }
            Key::Delete if self.cursor < self.input.chars().count() => {
                let at = byte_at(&self.input, self.cursor);
                self.input.remove(at);
            }
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            Key::Home | Key::Ctrl('a') => self.cursor = 0,
            Key::End | Key::Ctrl('e') => self.cursor = self.input.chars().count(),
            Key::Ctrl('u') => {
                self.input.clear();
                self.cursor = 0;
            }
            Key::Up => self.scroll(1),
            Key::Down => self.scroll(-1),
            Key::Enter => {
                let line = std::mem::take(&mut self.input);
                self.cursor = 0;
                self.submit(line);
            }
            _ => {}
        }
    }

    /// The input line was entered: a command, or text for the open chat.
    fn submit(&mut self, line: String) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return;
        }
        if let Some(rest) = trimmed.strip_prefix("//") {
            self.send_text(format!("/{rest}"));
        } else if trimmed.starts_with('/') {
            let command = trimmed.to_owned();
            self.command(&command);
        } else {
            self.send_text(line);
        }
    }
}

/// The byte index of character `chars` in `s` (its end when past it).
fn byte_at(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}
