//! One conversation's messages as the chat pane shows them: lines merged
//! from the local store, server history pages and live deliveries (one
//! line per message, whatever the source), each with its send state, and
//! the receipts that turn "sent" into "delivered" and "read".

use qim_sdk::{Attachment, IncomingMessage, Quote};

use crate::text::body_text;

/// Lines kept per conversation; older ones are dropped from memory (and
/// paged in again from history when scrolled to).
pub const MAX_LINES: usize = 5000;

/// Where one of this user's messages stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendState {
    /// Not a message of this user.
    Incoming,
    /// Queued in the outbox; not yet stored by the server.
    Sending,
    /// Stored by the server.
    Sent,
    /// Refused for good, or given up; the reason in words.
    Failed(String),
}

/// What the chat pane shows for one of this user's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Not stored yet.
    Sending,
    /// Stored by the server.
    Sent,
    /// A device of the recipient has it.
    Delivered,
    /// The recipient read it.
    Read,
    /// Not sent.
    Failed,
}

/// A file moving for a line, as the pane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// Uploading: bytes sent of the whole.
    Uploading {
        /// Bytes sent.
        done: u64,
        /// Bytes of the file (0 until known).
        total: u64,
    },
    /// The upload finished (the message is being sent, or was).
    Uploaded {
        /// Bytes of the file.
        total: u64,
    },
    /// Downloading with `/save`.
    Downloading {
        /// Bytes written.
        done: u64,
        /// Bytes of the blob (0 until known).
        total: u64,
    },
    /// Saved (the hash checked) at this path.
    Saved {
        /// Where.
        path: String,
        /// Bytes of the file.
        total: u64,
    },
    /// The download failed; the reason in words (`/save` again goes on).
    SaveFailed(String),
}

/// One message in the pane.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The server's id; empty until stored.
    pub msg_id: String,
    /// The sender's id for it.
    pub client_msg_id: String,
    /// Its seq in this user's inbox (0 when unknown, e.g. just sent).
    pub seq: u64,
    /// Who wrote it.
    pub from: String,
    /// Its text (raw: made inert when drawn).
    pub body: String,
    /// Server time (or, while sending, the local time it was written).
    pub time_ms: i64,
    /// Written by this user.
    pub outgoing: bool,
    /// For this user's messages, where the send stands.
    pub state: SendState,
    /// Edited after it was sent.
    pub edited: bool,
    /// Recalled by its sender.
    pub recalled: bool,
    /// The message it replies to.
    pub reply: Option<Quote>,
    /// It mentions this user.
    pub mentions_me: bool,
    /// Files it carries (names and types as the sender put them: made
    /// inert when drawn, made safe when saved).
    pub attachments: Vec<Attachment>,
    /// A file moving for it, in this run.
    pub transfer: Option<Transfer>,
}

impl Line {
    /// A line for a received (or history) message.
    pub fn from_message(m: &IncomingMessage) -> Line {
        Line {
            msg_id: m.msg_id.clone(),
            client_msg_id: m.client_msg_id.clone(),
            seq: m.seq,
            from: m.from_user.clone(),
            body: if m.recalled {
                String::new()
            } else {
                body_text(&m.body)
            },
            time_ms: m.server_time_ms,
            outgoing: m.outgoing,
            state: if m.outgoing {
                SendState::Sent
            } else {
                SendState::Incoming
            },
            edited: m.edited_at_ms > 0,
            recalled: m.recalled,
            reply: m.reply_to.clone(),
            mentions_me: m.mentions_me,
            attachments: m.attachments.clone(),
            transfer: None,
        }
    }

    /// A line for a message this user writes now, not yet stored.
    pub fn outgoing(from: &str, client_msg_id: &str, body: String, time_ms: i64) -> Line {
        Line {
            msg_id: String::new(),
            client_msg_id: client_msg_id.to_owned(),
            seq: 0,
            from: from.to_owned(),
            body,
            time_ms,
            outgoing: true,
            state: SendState::Sending,
            edited: false,
            recalled: false,
            reply: None,
            mentions_me: false,
            attachments: Vec::new(),
            transfer: None,
        }
    }
}

/// A conversation's lines, oldest first, and its paging state.
#[derive(Debug, Clone, Default)]
pub struct Chat {
    /// Oldest first.
    pub lines: Vec<Line>,
    /// The server has older messages than the first line.
    pub more_before: bool,
    /// A history page was asked for and has not come.
    pub loading: bool,
    /// Messages hidden below the window (0: the newest is at the bottom).
    pub scroll: usize,
    /// The message selected (chat focus), an index into `lines`.
    pub selected: Option<usize>,
    /// The highest inbox seq this device told the server was read.
    pub marked_read: u64,
    /// Messages of this user sent at or before this time were delivered.
    pub delivered_ms: i64,
    /// Messages of this user sent at or before this time were read.
    pub read_ms: i64,
    /// History was asked for at least once.
    pub loaded: bool,
}

impl Chat {
    /// What to show next to line `i` (for this user's messages).
    pub fn mark(&self, line: &Line) -> Option<Mark> {
        if !line.outgoing {
            return None;
        }
        Some(match line.state {
            SendState::Incoming | SendState::Sent if line.time_ms <= self.read_ms => Mark::Read,
            SendState::Incoming | SendState::Sent if line.time_ms <= self.delivered_ms => {
                Mark::Delivered
            }
            SendState::Incoming | SendState::Sent => Mark::Sent,
            SendState::Sending => Mark::Sending,
            SendState::Failed(_) => Mark::Failed,
        })
    }

    /// Adds or merges a message (matched by server id, else by the
    /// sender's id); returns whether it was new.
    pub fn upsert(&mut self, line: Line) -> bool {
        let found = self.lines.iter().position(|l| {
            (!line.msg_id.is_empty() && l.msg_id == line.msg_id)
                || (!line.client_msg_id.is_empty()
                    && l.client_msg_id == line.client_msg_id
                    && l.outgoing == line.outgoing
                    && l.from == line.from)
        });
        match found {
            Some(i) => {
                let old = &mut self.lines[i];
                if old.msg_id.is_empty() {
                    old.msg_id = line.msg_id;
                }
                if line.seq > 0 {
                    old.seq = line.seq;
                }
                if !matches!(old.state, SendState::Sending) || line.state == SendState::Sent {
                    old.time_ms = line.time_ms;
                }
                if old.state == SendState::Sending && line.state == SendState::Sent {
                    old.state = SendState::Sent;
                }
                if old.attachments.is_empty() {
                    old.attachments = line.attachments;
                }
                // A recall or an edit seen in one source holds.
                old.recalled |= line.recalled;
                if old.recalled {
                    old.body.clear();
                } else if line.edited {
                    old.body = line.body;
                    old.edited = true;
                }
                false
            }
            None => {
                let at = self
                    .lines
                    .partition_point(|l| (l.time_ms, l.seq) <= (line.time_ms, line.seq));
                self.lines.insert(at, line);
                if let Some(sel) = self.selected.as_mut()
                    && *sel >= at
                {
                    *sel += 1;
                }
                if self.lines.len() > MAX_LINES {
                    let drop = self.lines.len() - MAX_LINES;
                    self.lines.drain(..drop);
                    self.more_before = true;
                    self.selected = self.selected.and_then(|s| s.checked_sub(drop));
                }
                true
            }
        }
    }

    /// The line with server id `msg_id`.
    pub fn by_msg_id(&mut self, msg_id: &str) -> Option<&mut Line> {
        if msg_id.is_empty() {
            return None;
        }
        self.lines.iter_mut().find(|l| l.msg_id == msg_id)
    }

    /// The line this user is sending as `client_msg_id`.
    pub fn by_client_id(&mut self, client_msg_id: &str) -> Option<&mut Line> {
        self.lines
            .iter_mut()
            .find(|l| l.outgoing && l.client_msg_id == client_msg_id)
    }

    /// The highest inbox seq of a message from someone else.
    pub fn newest_incoming_seq(&self) -> u64 {
        self.lines
            .iter()
            .filter(|l| !l.outgoing)
            .map(|l| l.seq)
            .max()
            .unwrap_or(0)
    }

    /// The oldest line's seq and time: where the next older page ends.
    pub fn oldest(&self) -> (u64, i64) {
        self.lines.first().map_or((0, 0), |l| (l.seq, l.time_ms))
    }

    /// The files of the chat, oldest first, as (line, attachment) indexes:
    /// `/save <n>` counts in this order from 1.
    pub fn files(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            if !l.recalled {
                out.extend((0..l.attachments.len()).map(|k| (i, k)));
            }
        }
        out
    }

    /// The number `/save` knows attachment `k` of line `i` by (from 1).
    pub fn file_number(&self, i: usize, k: usize) -> usize {
        let before: usize = self
            .lines
            .iter()
            .take(i)
            .filter(|l| !l.recalled)
            .map(|l| l.attachments.len())
            .sum();
        before + k + 1
    }

    /// The selected line, or else the newest line that `pick` accepts.
    pub fn target(&self, pick: impl Fn(&Line) -> bool) -> Option<&Line> {
        match self.selected.and_then(|i| self.lines.get(i)) {
            Some(line) if pick(line) => Some(line),
            Some(_) => None,
            None => self.lines.iter().rev().find(|l| pick(l)),
        }
    }
}
