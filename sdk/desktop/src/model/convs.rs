//! The conversation list: one entry per peer, pinned first, then newest
//! activity first; unread counts from the server, kept current by live
//! messages and read events in between.

use qim_sdk::{Conversation, IncomingMessage, Peer};

use crate::text::body_text;

/// Conversations kept in the list at most (the server pages further).
pub(super) const MAX_CONVERSATIONS: usize = 2000;

/// One row of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who it is with.
    pub peer: Peer,
    /// Messages from others not read yet.
    pub unread: u32,
    /// Pinned to the top.
    pub pinned: bool,
    /// Muted.
    pub muted: bool,
    /// Who wrote the newest message.
    pub last_from: String,
    /// Its text (raw), or a note ("message recalled").
    pub last_text: String,
    /// When (server time).
    pub last_ms: i64,
    /// The newest message's inbox seq.
    pub last_seq: u64,
    /// The newest message's server id.
    pub last_msg_id: String,
}

impl Entry {
    fn new(peer: Peer) -> Entry {
        Entry {
            peer,
            unread: 0,
            pinned: false,
            muted: false,
            last_from: String::new(),
            last_text: String::new(),
            last_ms: 0,
            last_seq: 0,
            last_msg_id: String::new(),
        }
    }

    fn from_conversation(c: &Conversation) -> Entry {
        let mut e = Entry::new(c.peer.clone());
        e.unread = c.unread;
        e.pinned = c.pinned;
        e.muted = c.muted;
        e.last_seq = c.last_seq;
        e.last_ms = c.updated_ms;
        if let Some(m) = &c.last_message {
            e.set_last(m);
            e.last_ms = e.last_ms.max(m.server_time_ms);
        }
        e
    }

    fn set_last(&mut self, m: &IncomingMessage) {
        self.last_from = m.from_user.clone();
        self.last_text = if m.recalled {
            "message recalled".to_owned()
        } else if m.body.is_empty()
            && let Some(a) = m.attachments.first()
        {
            format!("[file] {}", a.name)
        } else {
            body_text(&m.body)
        };
        self.last_msg_id = m.msg_id.clone();
        self.last_ms = m.server_time_ms;
    }
}

/// The list, in display order.
#[derive(Debug, Clone, Default)]
pub struct Conversations {
    /// Pinned first, then newest first.
    pub entries: Vec<Entry>,
}

impl Conversations {
    /// Replaces the list with the server's, keeping entries the server
    /// does not know yet (a chat opened here with no message).
    pub fn replace(&mut self, list: &[Conversation]) {
        let mut entries: Vec<Entry> = list
            .iter()
            .filter(|c| valid_peer(&c.peer))
            .take(MAX_CONVERSATIONS)
            .map(Entry::from_conversation)
            .collect();
        for old in &self.entries {
            if !entries.iter().any(|e| e.peer == old.peer) && entries.len() < MAX_CONVERSATIONS {
                entries.push(old.clone());
            }
        }
        self.entries = entries;
        self.sort();
    }

    /// The server's view of one conversation (after a read or a flag).
    pub fn update(&mut self, c: &Conversation) {
        if !valid_peer(&c.peer) {
            return;
        }
        let fresh = Entry::from_conversation(c);
        let e = self.entry(&c.peer);
        e.unread = fresh.unread;
        e.pinned = fresh.pinned;
        e.muted = fresh.muted;
        if fresh.last_seq >= e.last_seq && !fresh.last_msg_id.is_empty() {
            e.last_from = fresh.last_from;
            e.last_text = fresh.last_text;
            e.last_msg_id = fresh.last_msg_id;
            e.last_ms = e.last_ms.max(fresh.last_ms);
            e.last_seq = fresh.last_seq;
        }
        self.sort();
    }

    /// A live message: newest text, and one more unread unless `seen`.
    pub fn on_message(&mut self, m: &IncomingMessage, seen: bool) {
        if !valid_peer(&m.conversation) {
            return;
        }
        let e = self.entry(&m.conversation);
        // A message the server's list already counted (its seq is not past
        // the list's newest) is not counted twice.
        let counted = m.seq > 0 && m.seq <= e.last_seq;
        if m.server_time_ms >= e.last_ms || m.seq > e.last_seq {
            e.set_last(m);
        }
        e.last_seq = e.last_seq.max(m.seq);
        if !m.outgoing && !seen && !counted {
            e.unread = e.unread.saturating_add(1);
        }
        self.sort();
    }

    /// A message was recalled: the preview says so if it was the newest.
    pub fn on_recall(&mut self, peer: &Peer, msg_id: &str) {
        if let Some(e) = self.get_mut(peer)
            && e.last_msg_id == msg_id
        {
            e.last_text = "message recalled".to_owned();
        }
    }

    /// The entry of `peer`, made if missing.
    pub fn entry(&mut self, peer: &Peer) -> &mut Entry {
        let i = match self.entries.iter().position(|e| &e.peer == peer) {
            Some(i) => i,
            None => {
                if self.entries.len() >= MAX_CONVERSATIONS {
                    // Drop the oldest unpinned one.
                    if let Some(j) = self.entries.iter().rposition(|e| !e.pinned) {
                        self.entries.remove(j);
                    }
                }
                self.entries.push(Entry::new(peer.clone()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i]
    }

    /// The entry of `peer`, if listed.
    pub fn get(&self, peer: &Peer) -> Option<&Entry> {
        self.entries.iter().find(|e| &e.peer == peer)
    }

    /// The entry of `peer` to change, if listed.
    pub fn get_mut(&mut self, peer: &Peer) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| &e.peer == peer)
    }

    fn sort(&mut self) {
        self.entries
            .sort_by(|a, b| b.pinned.cmp(&a.pinned).then(b.last_ms.cmp(&a.last_ms)));
    }
}

/// A peer whose id could be a real one (not empty): entries for an empty
/// peer (a malformed server answer) are left out.
fn valid_peer(peer: &Peer) -> bool {
    let (Peer::User(id) | Peer::Group(id)) = peer;
    !id.is_empty()
}
