//! The UI state as a pure model: [`Input`]s in (keys, ticks, what the SDK
//! reported), state changes, [`Request`]s out (what the worker should ask
//! the SDK). No IO, no clock (time comes in with [`Input::Tick`]), no
//! terminal: tests drive it directly, and [`crate::view`] draws it.
//!
//! - `chat`: one conversation's lines and their marks.
//! - `convs`: the conversation list.
//! - `command`: slash commands and what they ask for.
//! - `keys`: navigation and the input line.
//! - `events`: what the SDK reported, applied.
//! - `files`: files sent and saved, their progress, `/retry`.

mod chat;
mod command;
mod convs;
mod events;
mod files;
mod keys;

use std::collections::HashMap;

use qim_sdk::{
    Attachment, Contacts, Conversation, GroupChange, GroupMember, HistoryPage, IncomingMessage,
    MessageExtras, OutboxStatus, Peer, PresenceStatus, Quote, SendReceipt, Signal,
};

pub use chat::{Chat, Line, MAX_LINES, Mark, SendState, Transfer};
pub use command::HELP;
pub use convs::{Conversations, Entry};
pub use events::peer_label;
pub use keys::MAX_INPUT;

/// How the connection to the gateway is carried. The one place the UI
/// names a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP (when UDP is blocked).
    Tcp,
}

impl Transport {
    /// How the status bar names it.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP",
        }
    }
}

/// Where the connection stands, as the status bar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Connecting or logging in.
    Connecting,
    /// Logged in.
    Connected(Transport),
    /// Waiting to reconnect; the next attempt at this time (ms since the
    /// epoch, local clock), and why the last connection ended.
    Reconnecting {
        /// When the next attempt starts (0: unknown).
        next_attempt_ms: i64,
        /// Why the connection ended (raw; made inert when drawn).
        reason: String,
    },
    /// Stopped for good (login refused, or closed).
    Closed(String),
}

/// A key, as the model sees it (the terminal layer translates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Ctrl and a letter.
    Ctrl(char),
    /// Enter.
    Enter,
    /// Backspace.
    Backspace,
    /// Delete.
    Delete,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Home.
    Home,
    /// End.
    End,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Escape.
    Esc,
}

/// Something that happened: a key, time passing, or news from the SDK.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A key was pressed.
    Key(Key),
    /// The local clock, milliseconds since the epoch.
    Tick(i64),
    /// The connection state changed.
    Link(Link),
    /// The logged-in user (from the server's welcome).
    LoggedIn(String),
    /// The conversation list from the server.
    Conversations(Vec<Conversation>),
    /// One conversation as the server now has it (after a read or a flag).
    Conversation(Conversation),
    /// A message or an event, in inbox order.
    Message(IncomingMessage),
    /// A history page for `peer` (from the local store or the server;
    /// lines merge by message id); `older` when it continues a chat's
    /// history backwards.
    History {
        /// The conversation.
        peer: Peer,
        /// The page, newest first.
        page: HistoryPage,
        /// Asked for by scrolling back (rather than on opening).
        older: bool,
    },
    /// A send finished.
    SendDone {
        /// The send's id.
        client_msg_id: String,
        /// The receipt, or why it failed (in words).
        result: Result<SendReceipt, String>,
    },
    /// The outbox reported a send (also sends restored after a restart).
    Outbox {
        /// The send's id.
        client_msg_id: String,
        /// Its state.
        status: OutboxStatus,
    },
    /// A file transfer moved on.
    Progress {
        /// Which.
        key: TransferKey,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// An upload of `/send-file` ended (on success the worker sends the
    /// message next, reported with [`Input::SendDone`]).
    Uploaded {
        /// The send's id.
        client_msg_id: String,
        /// The attachment, or why the upload failed (in words).
        result: Result<Attachment, String>,
    },
    /// A `/save` ended.
    Saved {
        /// The message whose file it was.
        msg_id: String,
        /// Where the file is, or why it is not (in words).
        result: Result<String, String>,
    },
    /// Typing or presence news.
    Signal(Signal),
    /// Presence of contacts, asked for.
    Presence(Vec<PresenceStatus>),
    /// Search results from the local store.
    SearchResults {
        /// The words searched.
        query: String,
        /// Newest first.
        results: Vec<IncomingMessage>,
    },
    /// A group's members.
    Members {
        /// The group.
        group: String,
        /// Its members.
        members: Vec<GroupMember>,
    },
    /// The user's contacts.
    Contacts(Contacts),
    /// The inbox seq this device has processed and saved: the resume
    /// point.
    Synced(u64),
    /// A request succeeded; say so.
    Done(String),
    /// A request failed; say why (raw; made inert when drawn).
    Failed {
        /// What was tried.
        what: String,
        /// Why it failed.
        error: String,
    },
}

/// What the model asks the SDK to do (carried out off the draw loop).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Send a text message.
    Send {
        /// To whom.
        peer: Peer,
        /// Its idempotency key (also how the pane finds its line).
        client_msg_id: String,
        /// The text.
        text: String,
        /// Reply quote and mentions.
        extras: MessageExtras,
    },
    /// Upload a file, then send a message carrying it.
    SendFile {
        /// To whom.
        peer: Peer,
        /// The message's idempotency key (the same on a retry).
        client_msg_id: String,
        /// The file, as typed.
        path: String,
    },
    /// Download a message's file into `dir` (default: the data
    /// directory's `downloads/`).
    Save {
        /// The message.
        msg_id: String,
        /// Its file (the name made safe before use).
        attachment: Attachment,
        /// Where to, as typed.
        dir: Option<String>,
    },
    /// A page of history, newest first, before `before_seq` (0: the
    /// newest) or before `before_ms` when offline.
    History {
        /// The conversation.
        peer: Peer,
        /// Older than this inbox seq (0: from the newest).
        before_seq: u64,
        /// Older than this time (for the local store).
        before_ms: i64,
        /// Continues the chat backwards.
        older: bool,
    },
    /// Mark a conversation read up to an inbox seq.
    MarkRead {
        /// The conversation.
        peer: Peer,
        /// Up to this seq.
        up_to_seq: u64,
    },
    /// Pin or mute.
    SetFlags {
        /// The conversation.
        peer: Peer,
        /// Pinned, or unchanged.
        pinned: Option<bool>,
        /// Muted, or unchanged.
        muted: Option<bool>,
    },
    /// Recall one of this user's messages.
    Recall {
        /// The message.
        msg_id: String,
    },
    /// Edit one of this user's messages.
    Edit {
        /// The message.
        msg_id: String,
        /// The new text.
        text: String,
    },
    /// Send later.
    Schedule {
        /// To whom.
        peer: Peer,
        /// The text.
        text: String,
        /// When (server time, ms since the epoch).
        at_ms: i64,
    },
    /// Cancel a scheduled send.
    CancelSchedule {
        /// Its id.
        schedule_id: String,
    },
    /// Tell the peer this user types (or stopped).
    Typing {
        /// The conversation.
        peer: Peer,
        /// Typing or stopped.
        typing: bool,
    },
    /// Search the local store.
    Search {
        /// The words.
        query: String,
    },
    /// Create a group.
    CreateGroup {
        /// Its id.
        group: String,
        /// Its name.
        name: String,
    },
    /// Change a group (join, leave, invite, roles…).
    Group {
        /// The group.
        group: String,
        /// The change.
        change: GroupChange,
    },
    /// List a group's members.
    Members {
        /// The group.
        group: String,
    },
    /// List contacts (and their presence).
    Contacts,
    /// Change a contact.
    Contact(ContactOp),
    /// Fetch the conversation list again.
    Conversations,
}

/// Which transfer a [`Input::Progress`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransferKey {
    /// The upload of the send with this id.
    Upload(String),
    /// The download of the file of the message with this id.
    Download(String),
}

/// A change to the user's contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactOp {
    /// Ask to be friends, with a message.
    Request(String, String),
    /// Accept a request.
    Accept(String),
    /// Reject a request.
    Reject(String),
    /// End a friendship.
    Remove(String),
    /// Block.
    Block(String),
    /// Unblock.
    Unblock(String),
}

/// Where keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list.
    List,
    /// The chat pane (select a message).
    Chat,
    /// The input line.
    Input,
}

/// A window over the panes (help, search results, members, contacts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Its title.
    pub title: String,
    /// Its lines (raw; made inert when drawn).
    pub lines: Vec<String>,
    /// First line shown.
    pub scroll: usize,
}

/// The line under the panes: the last thing worth saying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What (raw; made inert when drawn).
    pub text: String,
    /// An error (drawn in red).
    pub error: bool,
}

/// How long a typing signal holds without a refresh.
const TYPING_HOLDS_MS: i64 = 6_000;
/// Typing signals sent at most this often while typing.
const TYPING_EVERY_MS: i64 = 3_000;
/// Requests waiting for the worker at most; beyond, new ones are refused
/// with a notice (the worker takes them as fast as it can spawn).
pub const MAX_PENDING_REQUESTS: usize = 256;

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct Model {
    /// The logged-in user.
    pub me: String,
    /// The local clock, from the last tick.
    pub now_ms: i64,
    /// The connection.
    pub link: Link,
    /// The conversation list.
    pub convs: Conversations,
    /// The row selected in the list.
    pub selected: usize,
    /// The conversation in the chat pane.
    pub open: Option<Peer>,
    /// Loaded conversations.
    pub chats: HashMap<Peer, Chat>,
    /// Where keys go.
    pub focus: Focus,
    /// The input line.
    pub input: String,
    /// The cursor in the input line, in characters.
    pub cursor: usize,
    /// The message the next send replies to.
    pub reply_to: Option<Quote>,
    /// A window over the panes.
    pub overlay: Option<Overlay>,
    /// The last notice.
    pub notice: Option<Notice>,
    /// Who types where, until when.
    pub typing: HashMap<Peer, Vec<(String, i64)>>,
    /// Presence of contacts.
    pub presence: HashMap<String, PresenceStatus>,
    /// The inbox seq this device resumed from at start.
    pub resumed_from: u64,
    /// The inbox seq processed and saved.
    pub synced: u64,
    /// The user asked to quit.
    pub quit: bool,
    /// Sends made here, by id: which conversation each is in.
    sends: HashMap<String, Peer>,
    /// Files being sent, by send id, until the message is stored: where,
    /// and the path (for `/retry`).
    uploads: HashMap<String, (Peer, String)>,
    /// Files being saved, by message id: which conversation.
    downloads: HashMap<String, Peer>,
    requests: Vec<Request>,
    next_id: u64,
    id_prefix: String,
    typing_sent_ms: i64,
}

impl Model {
    /// A model for `me` at `now_ms`, resumed at inbox seq `resumed_from`.
    /// `id_prefix` makes this run's send ids unique (the worker passes a
    /// random one; tests a fixed one).
    pub fn new(me: &str, now_ms: i64, resumed_from: u64, id_prefix: &str) -> Model {
        Model {
            me: me.to_owned(),
            now_ms,
            link: Link::Connecting,
            convs: Conversations::default(),
            selected: 0,
            open: None,
            chats: HashMap::new(),
            focus: Focus::Input,
            input: String::new(),
            cursor: 0,
            reply_to: None,
            overlay: None,
            notice: Some(Notice {
                text: if resumed_from > 0 {
                    format!("resumed at inbox #{resumed_from}; /help for commands")
                } else {
                    "/help for commands; /msg <user> to start a chat".to_owned()
                },
                error: false,
            }),
            typing: HashMap::new(),
            presence: HashMap::new(),
            resumed_from,
            synced: resumed_from,
            quit: false,
            sends: HashMap::new(),
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            requests: Vec::new(),
            next_id: 0,
            id_prefix: id_prefix
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(32)
                .collect(),
            typing_sent_ms: 0,
        }
    }

    /// Applies one input.
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Key(key) => self.key(key),
            Input::Tick(now) => self.tick(now),
            other => self.apply(other),
        }
    }

    /// The requests made since the last call, oldest first.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    /// The open conversation's chat.
    pub fn open_chat(&self) -> Option<&Chat> {
        self.open.as_ref().and_then(|p| self.chats.get(p))
    }

    /// Who types in `peer`'s conversation now.
    pub fn typing_in(&self, peer: &Peer) -> Vec<&str> {
        self.typing
            .get(peer)
            .map(|v| {
                v.iter()
                    .filter(|(_, until)| *until > self.now_ms)
                    .map(|(u, _)| u.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn request(&mut self, request: Request) {
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            self.error("too many requests waiting; try again");
            return;
        }
        self.requests.push(request);
    }

    fn say(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            error: false,
        });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            error: true,
        });
    }

    fn tick(&mut self, now: i64) {
        self.now_ms = now;
        for v in self.typing.values_mut() {
            v.retain(|(_, until)| *until > now);
        }
        self.typing.retain(|_, v| !v.is_empty());
    }

    /// Opens `peer`'s conversation: loads its history once, marks it read.
    pub fn open_peer(&mut self, peer: Peer) {
        if self.open.as_ref() != Some(&peer) {
            self.reply_to = None;
        }
        self.open = Some(peer.clone());
        if let Some(i) = self.convs.entries.iter().position(|e| e.peer == peer) {
            self.selected = i;
        }
        let chat = self.chats.entry(peer.clone()).or_default();
        chat.scroll = 0;
        chat.selected = None;
        if !chat.loaded {
            chat.loaded = true;
            chat.loading = true;
            self.request(Request::History {
                peer: peer.clone(),
                before_seq: 0,
                before_ms: 0,
                older: false,
            });
        }
        self.mark_open_read();
    }

    /// Tells the server the open conversation is read, if it has unread
    /// messages or newer incoming lines than last told.
    fn mark_open_read(&mut self) {
        let Some(peer) = self.open.clone() else {
            return;
        };
        let listed = self.convs.get(&peer).map(|e| (e.unread, e.last_seq));
        let chat = self.chats.entry(peer.clone()).or_default();
        let mut up_to = chat.newest_incoming_seq();
        if let Some((unread, last_seq)) = listed
            && unread > 0
        {
            up_to = up_to.max(last_seq);
        }
        if up_to > chat.marked_read {
            chat.marked_read = up_to;
            self.convs.entry(&peer).unread = 0;
            self.request(Request::MarkRead {
                peer,
                up_to_seq: up_to,
            });
        }
    }

    /// Asks for the page before the open chat's oldest line.
    fn load_older(&mut self) {
        let Some(peer) = self.open.clone() else {
            return;
        };
        let chat = self.chats.entry(peer.clone()).or_default();
        if chat.loading || !chat.more_before {
            return;
        }
        chat.loading = true;
        let (before_seq, before_ms) = chat.oldest();
        self.request(Request::History {
            peer,
            before_seq,
            before_ms,
            older: true,
        });
    }

    /// Sends `text` to the open conversation.
    fn send_text(&mut self, text: String) {
        let Some(peer) = self.open.clone() else {
            self.error("no conversation open: /msg <user> or /join <group> first");
            return;
        };
        if text.trim().is_empty() {
            return;
        }
        self.next_id += 1;
        let client_msg_id = format!("{}d{}", self.id_prefix, self.next_id);
        let (mentions, mention_all) = mentions_in(&text);
        let extras = MessageExtras {
            reply_to: self.reply_to.take(),
            mentions,
            mention_all,
            attachments: Vec::new(),
        };
        let chat = self.chats.entry(peer.clone()).or_default();
        // A send goes below what is shown, whatever the local clock says.
        let time_ms = chat
            .lines
            .last()
            .map_or(self.now_ms, |l| l.time_ms.max(self.now_ms));
        let mut line = Line::outgoing(&self.me, &client_msg_id, text.clone(), time_ms);
        line.reply = extras.reply_to.clone();
        chat.upsert(line);
        chat.scroll = 0;
        let e = self.convs.entry(&peer);
        e.last_from = self.me.clone();
        e.last_text = text.clone();
        e.last_ms = self.now_ms;
        self.sends.insert(client_msg_id.clone(), peer.clone());
        if self.typing_sent_ms > 0 {
            self.typing_sent_ms = 0;
            self.request(Request::Typing {
                peer: peer.clone(),
                typing: false,
            });
        }
        self.request(Request::Send {
            peer,
            client_msg_id,
            text,
            extras,
        });
    }

    /// The user typed in a chat: tell the peer, at most every few seconds.
    fn typed(&mut self) {
        if self.input.starts_with('/') {
            return;
        }
        if let Some(peer) = self.open.clone()
            && self.now_ms.saturating_sub(self.typing_sent_ms) >= TYPING_EVERY_MS
        {
            self.typing_sent_ms = self.now_ms;
            self.request(Request::Typing { peer, typing: true });
        }
    }
}

/// The users `@mentioned` in a text, and whether `@all` is.
pub fn mentions_in(text: &str) -> (Vec<String>, bool) {
    let mut users = Vec::new();
    let mut all = false;
    for word in text.split_whitespace() {
        let Some(name) = word.strip_prefix('@') else {
            continue;
        };
        let name = name.trim_end_matches([',', '.', ':', ';', '!', '?']);
        if name == "all" {
            all = true;
        } else if crate::devtoken::valid_id(name) && !users.iter().any(|u| u == name) {
            users.push(name.to_owned());
        }
    }
    (users, all)
}
