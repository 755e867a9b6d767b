//! The qim client SDK for Kotlin (Android, JVM) and Swift (iOS, macOS),
//! through uniffi proc-macros. `cargo xtask bindings` builds the native
//! library and generates the Kotlin and Swift sources from it.
//!
//! # Layout
//! - [`QimClient`]: the object apps hold. Async methods become Kotlin
//!   `suspend` functions and Swift `async` functions.
//! - [`ClientListener`]: implemented by the app (Kotlin interface, Swift
//!   protocol); receives messages, connection states, send progress and
//!   connection errors.
//! - Records and enums ([`ClientOptions`], [`Message`], [`SendReceipt`],
//!   [`OutboxStatus`], …) mirror `qim-sdk`'s types with only strings,
//!   numbers, byte arrays and options, so no Rust-only type crosses.
//! - [`QimError`]: the typed error (a Kotlin exception, a Swift `Error`),
//!   mapped from `qim_sdk::Error` in one place. A refusal keeps the wire
//!   code's name (`BLOCKED`, `MUTED`, `NOT_A_MEMBER`,
//!   `RECALL_WINDOW_PASSED`, `KICKED`, …) so apps can tell them apart.
//! - The IM features, each in its own module with its records and its
//!   `QimClient` methods: `im` (replies, mentions, recall, edit,
//!   delete-for-me, flags, scheduled sends, the local store), `groups`,
//!   `contacts` and `presence` (presence, online time, typing; pushed
//!   signals reach [`ClientListener::on_signal`]).
//!
//! # Conversions
//! Each SDK type has one `From` impl to its record here (and back where
//! the app passes it in); methods only call the SDK and convert.
//!
//! # Threads
//! The crate owns one tokio runtime (two worker threads, started on first
//! use). Every async method runs on it and the foreign side only awaits a
//! completion, so no call blocks the caller's thread (the main/UI thread on
//! a phone). Listener methods are called from the runtime's threads, one
//! at a time per kind of event, in order; they should return quickly (hand
//! work to the app's own executor).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use qim_sdk::{Client, ClientEvent};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

mod contacts;
mod groups;
mod im;
mod presence;

pub use contacts::{ContactList, IncomingFriendRequest};
pub use groups::{GroupChange, GroupInfo, GroupMember, GroupRole, MemberPage, ReadCount};
pub use im::MessageExtras;
pub use presence::{PresenceStatus, SessionSpan, Signal};

uniffi::setup_scaffolding!();

/// `Vec<T>` to `Vec<U>` through `U: From<T>`.
fn list<T, U: From<T>>(items: Vec<T>) -> Vec<U> {
    items.into_iter().map(U::from).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime every client of the process shares.
fn runtime() -> Result<&'static Runtime, QimError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("qim-sdk")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| QimError::Config {
            reason: format!("starting the SDK runtime: {e}"),
        })
}

/// Runs `future` on the SDK runtime and waits for it without blocking the
/// caller's thread.
async fn on_runtime<T: Send + 'static>(
    future: impl std::future::Future<Output = Result<T, QimError>> + Send + 'static,
) -> Result<T, QimError> {
    match runtime()?.spawn(future).await {
        Ok(result) => result,
        Err(e) => Err(QimError::Closed {
            reason: format!("SDK task failed: {e}"),
        }),
    }
}

/// Why a call failed. Kotlin: `QimException` subclasses; Swift: `QimError`
/// cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum QimError {
    /// The token was refused (bad or expired): get a new one from your
    /// backend. The client stops reconnecting.
    #[error("login refused ({code}): {reason}")]
    Auth {
        /// `BAD_TOKEN` or `TOKEN_EXPIRED`.
        code: String,
        /// The server's explanation.
        reason: String,
    },
    /// The server refused the request, or ended the session (`KICKED`: a
    /// newer device took over under the server's device policy;
    /// `REPLACED`: this device logged in elsewhere).
    #[error("refused ({code}): {reason}")]
    Rejected {
        /// The wire error code name, e.g. `MESSAGE_TOO_LARGE`, `BLOCKED`,
        /// `NOT_FRIENDS`, `MUTED`, `NOT_A_MEMBER`, `PERMISSION_DENIED`,
        /// `RECALL_WINDOW_PASSED`, `ALREADY_RECALLED`, `NOT_FOUND`,
        /// `KICKED`.
        code: String,
        /// The server's explanation.
        reason: String,
        /// Whether the same request may succeed later.
        retryable: bool,
    },
    /// The server could not be reached or the connection broke.
    #[error("network: {reason}")]
    Network {
        /// What failed.
        reason: String,
    },
    /// The server's certificate did not verify.
    #[error("tls: {reason}")]
    Tls {
        /// What failed.
        reason: String,
    },
    /// The options are unusable (or the SDK could not start).
    #[error("config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// No answer in time; a send may still be delivered later.
    #[error("timed out")]
    Timeout,
    /// The client is closed (or was never connected).
    #[error("closed: {reason}")]
    Closed {
        /// Why.
        reason: String,
    },
    /// The data directory could not be used.
    #[error("storage: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
}

impl From<qim_sdk::Error> for QimError {
    fn from(e: qim_sdk::Error) -> Self {
        use qim_sdk::Error as E;
        match e {
            E::Auth { code, message } => QimError::Auth {
                code: code.as_str_name().to_owned(),
                reason: message,
            },
            E::Rejected {
                code,
                message,
                retryable,
            } => QimError::Rejected {
                code: code.as_str_name().to_owned(),
                reason: message,
                retryable,
            },
            E::Network(reason) => QimError::Network { reason },
            E::Tls(reason) => QimError::Tls { reason },
            E::Config(reason) => QimError::Config { reason },
            E::Timeout => QimError::Timeout,
            E::Closed => QimError::Closed {
                reason: "client closed".into(),
            },
            E::Storage(reason) => QimError::Storage { reason },
            other => QimError::Network {
                reason: other.to_string(),
            },
        }
    }
}

/// The device platform reported at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Platform {
    /// Android.
    Android,
    /// iOS / iPadOS.
    Ios,
    /// Desktop (also the JVM).
    Desktop,
}

/// How to connect.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientOptions {
    /// Gateway address, `host:port`.
    pub server: String,
    /// Name the server certificate must be valid for.
    pub server_name: String,
    /// PEM certificates of the CAs trusted for the server's certificate.
    pub ca_pem: Vec<u8>,
    /// Login token from your backend.
    pub token: String,
    /// Stable id of this installation (1–64 of `[A-Za-z0-9._@-]`).
    pub device_id: String,
    /// Reported platform.
    pub platform: Platform,
    /// The highest message seq the app already stored; the server sends
    /// what came after it.
    #[uniffi(default = 0)]
    pub resume_from: u64,
    /// Directory for the SDK's files (the persistent outbox); one per user
    /// and device. Without it, unsent messages do not survive the process.
    #[uniffi(default = None)]
    pub data_dir: Option<String>,
    /// Resume TLS sessions and log in with 0-RTT on reconnect.
    #[uniffi(default = true)]
    pub resumption: bool,
    /// SQLite file keeping what this device received, for `localHistory`
    /// and `search` offline (created if missing). Without it those calls
    /// fail with `Config`.
    #[uniffi(default = None)]
    pub local_store: Option<String>,
}

impl ClientOptions {
    fn to_config(&self) -> qim_sdk::ClientConfig {
        let mut config = qim_sdk::ClientConfig::new(
            self.server.clone(),
            self.token.clone(),
            self.device_id.clone(),
            self.ca_pem.clone(),
        );
        config.server_name = self.server_name.clone();
        config.platform = match self.platform {
            Platform::Android => qim_sdk::Platform::Android,
            Platform::Ios => qim_sdk::Platform::Ios,
            Platform::Desktop => qim_sdk::Platform::Desktop,
        };
        config.resume_from = self.resume_from;
        config.data_dir = self.data_dir.as_ref().map(Into::into);
        config.resumption = self.resumption;
        config.local_store = self.local_store.as_ref().map(Into::into);
        config.reconnect_min = Duration::from_millis(200);
        config
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Connecting or logging in.
    Connecting,
    /// Logged in.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// Closed by the app, or stopped for good (e.g. the token was refused).
    Closed,
}

impl From<qim_sdk::ConnectionState> for ConnectionState {
    fn from(s: qim_sdk::ConnectionState) -> Self {
        match s {
            qim_sdk::ConnectionState::Connecting => ConnectionState::Connecting,
            qim_sdk::ConnectionState::Connected => ConnectionState::Connected,
            qim_sdk::ConnectionState::Backoff => ConnectionState::Backoff,
            _ => ConnectionState::Closed,
        }
    }
}

/// Who a conversation is with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Peer {
    /// A one-to-one conversation with this user.
    User {
        /// The other user's id.
        id: String,
    },
    /// A group.
    Group {
        /// The group's id.
        id: String,
    },
}

impl From<qim_sdk::Peer> for Peer {
    fn from(p: qim_sdk::Peer) -> Self {
        match p {
            qim_sdk::Peer::User(id) => Peer::User { id },
            qim_sdk::Peer::Group(id) => Peer::Group { id },
        }
    }
}

impl From<Peer> for qim_sdk::Peer {
    fn from(p: Peer) -> Self {
        match p {
            Peer::User { id } => qim_sdk::Peer::User(id),
            Peer::Group { id } => qim_sdk::Peer::Group(id),
        }
    }
}

/// A quoted message in a reply.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Quote {
    /// The quoted message's id.
    pub msg_id: String,
    /// Its sender.
    pub from_user: String,
    /// Its content type.
    pub kind: String,
    /// The start of its body (the server keeps 256 bytes).
    pub excerpt: Vec<u8>,
}

impl From<qim_sdk::Quote> for Quote {
    fn from(q: qim_sdk::Quote) -> Self {
        Quote {
            msg_id: q.msg_id,
            from_user: q.from_user,
            kind: q.kind,
            excerpt: q.excerpt,
        }
    }
}

impl From<Quote> for qim_sdk::Quote {
    fn from(q: Quote) -> Self {
        qim_sdk::Quote {
            msg_id: q.msg_id,
            from_user: q.from_user,
            kind: q.kind,
            excerpt: q.excerpt,
        }
    }
}

/// A change to earlier state carried by an inbox entry instead of a chat
/// message (see [`Message::event`]).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum MessageEvent {
    /// This user read `conversation` up to `read_seq` (on some device).
    Read {
        /// The conversation.
        conversation: Peer,
        /// Read up to this inbox seq.
        read_seq: u64,
        /// Unread messages left.
        unread: u32,
    },
    /// The sender recalled a message: drop its body from the UI.
    Recalled {
        /// The conversation.
        conversation: Peer,
        /// The recalled message.
        msg_id: String,
        /// Its seq in this inbox (0 when this inbox held no copy).
        seq: u64,
        /// Who recalled it.
        by_user: String,
    },
    /// The sender edited a message.
    Edited {
        /// The conversation.
        conversation: Peer,
        /// The edited message.
        msg_id: String,
        /// Its seq in this inbox (0 when this inbox held no copy).
        seq: u64,
        /// New content type.
        kind: String,
        /// New body.
        body: Vec<u8>,
        /// When it was edited, ms since the Unix epoch.
        edited_at_ms: i64,
    },
    /// This user deleted a message for themselves (on some device).
    Deleted {
        /// The conversation.
        conversation: Peer,
        /// The message.
        msg_id: String,
        /// Its seq in this inbox.
        seq: u64,
    },
    /// `from_user` asks this user to be friends.
    FriendRequest {
        /// Who asks.
        from_user: String,
        /// Their message.
        message: String,
    },
    /// `from_user` answered this user's friend request.
    FriendResponse {
        /// Who answered.
        from_user: String,
        /// Accepted or rejected.
        accepted: bool,
    },
    /// The other user of a one-to-one chat read this user's messages up to
    /// `msg_id` (every message sent to them at or before `sent_ms`).
    ReadReceipt {
        /// Who read.
        reader: String,
        /// The newest message of this user they read.
        msg_id: String,
        /// When that message was sent.
        sent_ms: i64,
    },
    /// This user changed a conversation's flags (on some device).
    Flags {
        /// The conversation.
        conversation: Peer,
        /// Pinned now.
        pinned: bool,
        /// Muted now.
        muted: bool,
    },
    /// A kind of change this version of the SDK does not know; ignore it.
    Other,
}

impl From<qim_sdk::Event> for MessageEvent {
    fn from(e: qim_sdk::Event) -> Self {
        use qim_sdk::Event as E;
        match e {
            E::Read {
                conversation,
                read_seq,
                unread,
            } => MessageEvent::Read {
                conversation: conversation.into(),
                read_seq,
                unread,
            },
            E::Recalled {
                conversation,
                msg_id,
                seq,
                by_user,
            } => MessageEvent::Recalled {
                conversation: conversation.into(),
                msg_id,
                seq,
                by_user,
            },
            E::Edited {
                conversation,
                msg_id,
                seq,
                kind,
                body,
                edited_at_ms,
            } => MessageEvent::Edited {
                conversation: conversation.into(),
                msg_id,
                seq,
                kind,
                body,
                edited_at_ms,
            },
            E::Deleted {
                conversation,
                msg_id,
                seq,
            } => MessageEvent::Deleted {
                conversation: conversation.into(),
                msg_id,
                seq,
            },
            E::FriendRequest { from, message } => MessageEvent::FriendRequest {
                from_user: from,
                message,
            },
            E::FriendResponse { from, accepted } => MessageEvent::FriendResponse {
                from_user: from,
                accepted,
            },
            E::ReadReceipt {
                reader,
                msg_id,
                sent_ms,
            } => MessageEvent::ReadReceipt {
                reader,
                msg_id,
                sent_ms,
            },
            E::Flags {
                conversation,
                pinned,
                muted,
            } => MessageEvent::Flags {
                conversation: conversation.into(),
                pinned,
                muted,
            },
            _ => MessageEvent::Other,
        }
    }
}

/// A received message, or (when `event` is set) a change to earlier state.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Message {
    /// Position in this user's inbox: persist it, pass it as `resume_from`.
    pub seq: u64,
    /// The server's id.
    pub msg_id: String,
    /// Sender.
    pub from_user: String,
    /// Sender's device.
    pub from_device: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Content type, e.g. `text`.
    pub kind: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The body as UTF-8 (invalid bytes replaced), for text messages.
    pub text: String,
    /// When the server stored it, ms since the Unix epoch.
    pub server_time_ms: i64,
    /// The conversation it belongs to (the other user, or the group).
    pub conversation: Peer,
    /// Sent by this user (a copy from another of the user's devices).
    pub outgoing: bool,
    /// Set when this entry is a change to earlier state (read on another
    /// device, a recall, an edit), not a chat message.
    pub event: Option<MessageEvent>,
    /// The message this one replies to.
    pub reply_to: Option<Quote>,
    /// Users mentioned.
    pub mentions: Vec<String>,
    /// `@all` was used.
    pub mention_all: bool,
    /// This user is mentioned (by name or `@all`): flag it.
    pub mentions_me: bool,
    /// When the sender last edited it, ms since the Unix epoch; 0 when
    /// never.
    pub edited_at_ms: i64,
    /// The sender recalled it; the body is gone.
    pub recalled: bool,
    /// For a read-diffusion group's message: its seq in the group's log
    /// (`seq` is then 0).
    pub group_seq: u64,
}

impl From<qim_sdk::IncomingMessage> for Message {
    fn from(m: qim_sdk::IncomingMessage) -> Self {
        Message {
            text: String::from_utf8_lossy(&m.body).into_owned(),
            seq: m.seq,
            msg_id: m.msg_id,
            from_user: m.from_user,
            from_device: m.from_device,
            client_msg_id: m.client_msg_id,
            kind: m.kind,
            body: m.body,
            server_time_ms: m.server_time_ms,
            conversation: m.conversation.into(),
            outgoing: m.outgoing,
            event: m.event.map(Into::into),
            reply_to: m.reply_to.map(Into::into),
            mentions: m.mentions,
            mention_all: m.mention_all,
            mentions_me: m.mentions_me,
            edited_at_ms: m.edited_at_ms,
            recalled: m.recalled,
            group_seq: m.group_seq,
        }
    }
}

/// One entry of the conversation list.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Conversation {
    /// Who the conversation is with.
    pub peer: Peer,
    /// The newest message (body cut to 256 bytes).
    pub last_message: Option<Message>,
    /// Inbox seq of the newest message.
    pub last_seq: u64,
    /// Read up to this inbox seq.
    pub read_seq: u64,
    /// Messages from others after `read_seq`, not recalled or deleted.
    pub unread: u32,
    /// Pinned to the top of the list.
    pub pinned: bool,
    /// Muted (no notifications; unread still counts).
    pub muted: bool,
    /// Server time of the last activity, ms since the Unix epoch.
    pub updated_ms: i64,
    /// Read-diffusion groups: read up to this seq of the group's log.
    pub group_read_seq: u64,
    /// Read-diffusion groups: the newest seq of the group's log.
    pub group_head: u64,
}

impl From<qim_sdk::Conversation> for Conversation {
    fn from(c: qim_sdk::Conversation) -> Self {
        Conversation {
            peer: c.peer.into(),
            last_message: c.last_message.map(Into::into),
            last_seq: c.last_seq,
            read_seq: c.read_seq,
            unread: c.unread,
            pinned: c.pinned,
            muted: c.muted,
            updated_ms: c.updated_ms,
            group_read_seq: c.group_read_seq,
            group_head: c.group_head,
        }
    }
}

/// A page of the conversation list.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConversationPage {
    /// Pinned first, then newest activity first.
    pub conversations: Vec<Conversation>,
    /// Pass to the next `conversations` call; `None` on the last page.
    pub next: Option<Vec<u8>>,
}

impl From<qim_sdk::ConversationPage> for ConversationPage {
    fn from(page: qim_sdk::ConversationPage) -> Self {
        ConversationPage {
            conversations: list(page.conversations),
            next: page.next,
        }
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum HistoryAnchor {
    /// The newest end (backward) or the oldest (forward).
    End,
    /// After (forward) or before (backward) this inbox seq.
    Seq {
        /// The seq.
        seq: u64,
    },
    /// From this server time, ms since the Unix epoch.
    Time {
        /// The time.
        ms: i64,
    },
}

impl From<HistoryAnchor> for qim_sdk::HistoryAnchor {
    fn from(a: HistoryAnchor) -> Self {
        match a {
            HistoryAnchor::End => qim_sdk::HistoryAnchor::End,
            HistoryAnchor::Seq { seq } => qim_sdk::HistoryAnchor::Seq(seq),
            HistoryAnchor::Time { ms } => qim_sdk::HistoryAnchor::Time(ms),
        }
    }
}

/// A page of a conversation's history.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct HistoryPage {
    /// In the direction asked.
    pub messages: Vec<Message>,
    /// More exist beyond the last.
    pub more: bool,
    /// The server no longer keeps the messages beyond (its retention
    /// passed): a boundary, not a gap. Backward: nothing older is left;
    /// forward: expired messages before the first were skipped.
    pub expired: bool,
}

impl From<qim_sdk::HistoryPage> for HistoryPage {
    fn from(page: qim_sdk::HistoryPage) -> Self {
        HistoryPage {
            messages: list(page.messages),
            more: page.more,
            expired: page.expired,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct OutgoingMessage {
    /// Recipient user id.
    pub to: String,
    /// Content type.
    #[uniffi(default = "text")]
    pub kind: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Idempotency key; a fresh one when `None`.
    #[uniffi(default = None)]
    pub client_msg_id: Option<String>,
}

impl From<OutgoingMessage> for qim_sdk::OutgoingMessage {
    fn from(m: OutgoingMessage) -> Self {
        qim_sdk::OutgoingMessage {
            to: m.to,
            kind: m.kind,
            body: m.body,
            client_msg_id: m.client_msg_id,
        }
    }
}

/// The server stored a message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SendReceipt {
    /// The id it was sent with.
    pub client_msg_id: String,
    /// The server's id.
    pub msg_id: String,
    /// Its seq in the recipient's inbox.
    pub seq: u64,
    /// When the server stored it.
    pub server_time_ms: i64,
}

impl From<qim_sdk::SendReceipt> for SendReceipt {
    fn from(r: qim_sdk::SendReceipt) -> Self {
        SendReceipt {
            client_msg_id: r.client_msg_id,
            msg_id: r.msg_id,
            seq: r.seq,
            server_time_ms: r.server_time_ms,
        }
    }
}

/// Where a send stands.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum OutboxStatus {
    /// Queued (saved, with a data directory); sent whenever connected.
    Sending,
    /// Stored by the server.
    Sent {
        /// The server's receipt.
        receipt: SendReceipt,
    },
    /// Refused for good, or given up.
    Failed {
        /// The error.
        error: QimError,
    },
}

/// Counters for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ClientStats {
    /// Logins completed (first and reconnects).
    pub sessions: u64,
    /// Logins sent as accepted 0-RTT early data.
    pub zero_rtt_accepted: u64,
    /// Network changes handled by migrating the connection.
    pub migrations: u64,
    /// Sends written more than once.
    pub sends_resent: u64,
    /// Duplicate deliveries dropped.
    pub duplicates_dropped: u64,
}

/// What the app implements to hear from the client. Called from SDK
/// threads; return quickly.
#[uniffi::export(with_foreign)]
pub trait ClientListener: Send + Sync {
    /// A message, in seq order, each once. It counts as received when this
    /// returns: store it (with its seq) here.
    fn on_message(&self, message: Message);
    /// The connection state changed.
    fn on_state_changed(&self, state: ConnectionState);
    /// A send changed state.
    fn on_outbox_status(&self, client_msg_id: String, status: OutboxStatus);
    /// A connection dropped with this error (the client reconnects by
    /// itself unless the state becomes `Closed`). When the client stops
    /// for good on its own (token refused, `KICKED` by a newer device,
    /// `REPLACED`), this comes with the reason just before the `Closed`
    /// state.
    fn on_error(&self, error: QimError);
    /// Typing or a subscribed contact's presence changed: pushed to this
    /// session only, never stored, never replayed.
    fn on_signal(&self, signal: Signal);
}

/// A qim client: one user on one device.
#[derive(uniffi::Object)]
pub struct QimClient {
    config: qim_sdk::ClientConfig,
    listener: Mutex<Option<Arc<dyn ClientListener>>>,
    client: Mutex<Option<Arc<Client>>>,
    /// The tasks feeding the listener; aborted on close.
    pumps: Mutex<Vec<JoinHandle<()>>>,
    /// Set while the app closes the client, so the listener is not told
    /// the close was an error.
    closing: Arc<AtomicBool>,
}

impl std::fmt::Debug for QimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QimClient")
            .field("server", &self.config.server)
            .field("device_id", &self.config.device_id)
            .finish_non_exhaustive()
    }
}

impl QimClient {
    fn client(&self) -> Result<Arc<Client>, QimError> {
        lock(&self.client).clone().ok_or_else(|| QimError::Closed {
            reason: "not connected: call connect() or start() first".into(),
        })
    }

    /// Runs an SDK call with this client on the SDK runtime and converts
    /// its result: the body of every method that is one SDK call.
    async fn call<T, U, F, Fut>(&self, call: F) -> Result<U, QimError>
    where
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, qim_sdk::Error>> + Send + 'static,
        T: Into<U> + Send + 'static,
    {
        let client = self.client()?;
        let value = on_runtime(async move { Ok(call(client).await?) }).await?;
        Ok(value.into())
    }

    /// Starts the tasks that feed the listener.
    fn attach(&self, client: Arc<Client>, rt: &Runtime) {
        let listener = lock(&self.listener).clone();
        let mut pumps = lock(&self.pumps);
        if let Some(listener) = listener {
            let (c, l) = (Arc::clone(&client), Arc::clone(&listener));
            pumps.push(rt.spawn(async move {
                while let Some(message) = c.next_message().await {
                    l.on_message(message.into());
                }
            }));
            let (c, l) = (Arc::clone(&client), Arc::clone(&listener));
            let closing = Arc::clone(&self.closing);
            pumps.push(rt.spawn(async move {
                let mut states = c.watch_state();
                l.on_state_changed(states.current().into());
                while let Some(state) = states.changed().await {
                    if state == qim_sdk::ConnectionState::Closed {
                        // Stopped for good: say why, unless the app closed it.
                        if let Some(e) = c.last_error().filter(|_| !closing.load(Ordering::SeqCst))
                        {
                            l.on_error(e.into());
                        }
                    }
                    l.on_state_changed(state.into());
                    if state == qim_sdk::ConnectionState::Closed {
                        break;
                    }
                }
            }));
            let (c, l) = (Arc::clone(&client), Arc::clone(&listener));
            pumps.push(rt.spawn(presence::pump_signals(c, l)));
            let mut events = client.events();
            pumps.push(rt.spawn(async move {
                while let Some(event) = events.next().await {
                    match event {
                        ClientEvent::Outbox {
                            client_msg_id,
                            status,
                        } => {
                            let status = match status {
                                qim_sdk::OutboxStatus::Sending => OutboxStatus::Sending,
                                qim_sdk::OutboxStatus::Sent(r) => {
                                    OutboxStatus::Sent { receipt: r.into() }
                                }
                                qim_sdk::OutboxStatus::Failed(e) => {
                                    OutboxStatus::Failed { error: e.into() }
                                }
                                _ => continue,
                            };
                            listener.on_outbox_status(client_msg_id, status);
                        }
                        ClientEvent::ConnectionLost(e) => listener.on_error(e.into()),
                        _ => {}
                    }
                }
            }));
        }
        *lock(&self.client) = Some(client);
    }

    async fn open(&self, wait_for_login: bool) -> Result<(), QimError> {
        if lock(&self.client).is_some() {
            return Err(QimError::Config {
                reason: "already connected; disconnect() first".into(),
            });
        }
        let rt = runtime()?;
        self.closing.store(false, Ordering::SeqCst);
        let config = self.config.clone();
        let client = on_runtime(async move {
            let client = if wait_for_login {
                Client::connect(config).await?
            } else {
                Client::start(config).await?
            };
            Ok(Arc::new(client))
        })
        .await?;
        self.attach(client, rt);
        Ok(())
    }
}

#[uniffi::export]
impl QimClient {
    /// A client with these options; nothing connects yet.
    #[uniffi::constructor]
    pub fn new(options: ClientOptions) -> Result<Arc<Self>, QimError> {
        if options.ca_pem.is_empty() {
            return Err(QimError::Config {
                reason: "ca_pem is empty".into(),
            });
        }
        Ok(Arc::new(QimClient {
            config: options.to_config(),
            listener: Mutex::new(None),
            client: Mutex::new(None),
            pumps: Mutex::new(Vec::new()),
            closing: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Sets the listener; takes effect at the next `connect`/`start`.
    pub fn set_listener(&self, listener: Arc<dyn ClientListener>) {
        *lock(&self.listener) = Some(listener);
    }

    /// Connects and logs in; returns once logged in (or with the error of
    /// the first attempt). Afterwards the client reconnects by itself.
    pub async fn connect(&self) -> Result<(), QimError> {
        self.open(true).await
    }

    /// Starts without waiting for the network: connects in the background,
    /// and `enqueue`d messages wait in the outbox until then.
    pub async fn start(&self) -> Result<(), QimError> {
        self.open(false).await
    }

    /// Sends a text message; returns when the server stored it.
    pub async fn send(&self, to: String, text: String) -> Result<SendReceipt, QimError> {
        self.call(move |c| async move { c.send(to, text).await })
            .await
    }

    /// Sends a message; returns when the server stored it.
    pub async fn send_message(&self, message: OutgoingMessage) -> Result<SendReceipt, QimError> {
        self.call(move |c| async move { c.send_message(message.into()).await })
            .await
    }

    /// Queues a text message without waiting for the server (works
    /// offline); returns its `client_msg_id` once saved. Progress comes to
    /// the listener's `on_outbox_status`.
    pub async fn enqueue(&self, to: String, text: String) -> Result<String, QimError> {
        self.call(move |c| async move {
            c.enqueue(qim_sdk::OutgoingMessage {
                to,
                kind: "text".into(),
                body: text.into_bytes(),
                client_msg_id: None,
            })
        })
        .await
    }

    /// A page of this user's conversation list (pinned first, then newest
    /// activity first): start with `after = None` and pass the previous
    /// page's `next`. `limit` 0 means the server's default page size.
    pub async fn conversations(
        &self,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<ConversationPage, QimError> {
        self.call(move |c| async move { c.conversations(after, limit).await })
            .await
    }

    /// Marks the conversation with `peer` read up to inbox seq `up_to_seq`
    /// and returns it with its new unread count. The user's other devices
    /// get a message whose `event` is `MessageEvent.Read`.
    pub async fn mark_read(&self, peer: Peer, up_to_seq: u64) -> Result<Conversation, QimError> {
        self.call(move |c| async move { c.mark_read(peer.into(), up_to_seq).await })
            .await
    }

    /// A page of the conversation with `peer`, from `anchor`: newest first
    /// when `forward` is false, oldest first when true.
    pub async fn history(
        &self,
        peer: Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: u32,
    ) -> Result<HistoryPage, QimError> {
        self.call(
            move |c| async move { c.history(peer.into(), anchor.into(), forward, limit).await },
        )
        .await
    }

    /// The device's network changed: migrate the connection to a new
    /// socket (reconnect if the new path does not answer).
    pub async fn network_changed(&self) -> Result<(), QimError> {
        self.call(move |c| async move { c.network_changed() }).await
    }

    /// The app moved to the foreground (`true`) or the background.
    pub fn set_foreground(&self, foreground: bool) {
        if let Ok(client) = self.client() {
            client.set_foreground(foreground);
        }
    }

    /// Drops the connection and connects again now.
    pub async fn reconnect(&self) -> Result<(), QimError> {
        self.call(move |c| async move { c.reconnect().await }).await
    }

    /// Says goodbye to the server and stops (named `disconnect` because
    /// `close` is taken by Kotlin's `AutoCloseable`, which frees the native
    /// object). Unsent messages stay in the data directory (if any) for the
    /// next client; the object can `connect` again.
    pub async fn disconnect(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let client = lock(&self.client).take();
        let pumps = std::mem::take(&mut *lock(&self.pumps));
        let closed = on_runtime(async move {
            if let Some(client) = client {
                client.close().await;
                // The pumps end once the client is gone (the event channel
                // closes with it).
                drop(client);
            }
            for mut pump in pumps {
                // Let the listener see the final state, then stop.
                if tokio::time::timeout(Duration::from_secs(1), &mut pump)
                    .await
                    .is_err()
                {
                    pump.abort();
                }
            }
            Ok(())
        });
        let _ = closed.await;
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        lock(&self.client)
            .as_ref()
            .map_or(ConnectionState::Closed, |c| c.state().into())
    }

    /// The logged-in user ("" before the first login).
    pub fn user_id(&self) -> String {
        lock(&self.client)
            .as_ref()
            .map(|c| c.user_id())
            .unwrap_or_default()
    }

    /// The server's id of the current session ("" while disconnected).
    pub fn session_id(&self) -> String {
        lock(&self.client)
            .as_ref()
            .map(|c| c.session_id())
            .unwrap_or_default()
    }

    /// The highest seq handed to the listener.
    pub fn last_seq(&self) -> u64 {
        lock(&self.client)
            .as_ref()
            .map_or(self.config.resume_from, |c| c.last_taken_seq())
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> ClientStats {
        let s = lock(&self.client)
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default();
        ClientStats {
            sessions: s.sessions,
            zero_rtt_accepted: s.zero_rtt_accepted,
            migrations: s.migrations,
            sends_resent: s.sends_resent,
            duplicates_dropped: s.duplicates_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_errors_map_to_typed_ffi_errors() {
        let e: QimError = qim_sdk::Error::from_code(qim_sdk::ErrorCode::BadToken, "bad").into();
        assert_eq!(
            e,
            QimError::Auth {
                code: "BAD_TOKEN".into(),
                reason: "bad".into()
            }
        );
        let e: QimError =
            qim_sdk::Error::from_code(qim_sdk::ErrorCode::StoreUnavailable, "later").into();
        assert!(matches!(
            e,
            QimError::Rejected {
                retryable: true,
                ..
            }
        ));
        assert_eq!(QimError::from(qim_sdk::Error::Timeout), QimError::Timeout);
    }

    #[test]
    fn im_fields_and_events_cross_the_ffi() {
        let m = qim_sdk::IncomingMessage {
            seq: 7,
            body: b"hi".to_vec(),
            conversation: qim_sdk::Peer::Group("g1".into()),
            mentions_me: true,
            reply_to: Some(qim_sdk::Quote {
                msg_id: "m1".into(),
                ..Default::default()
            }),
            event: Some(qim_sdk::Event::Read {
                conversation: qim_sdk::Peer::User("bob".into()),
                read_seq: 5,
                unread: 2,
            }),
            ..Default::default()
        };
        let m = Message::from(m);
        assert_eq!(m.conversation, Peer::Group { id: "g1".into() });
        assert_eq!(m.text, "hi");
        assert!(m.mentions_me);
        assert_eq!(m.reply_to.map(|q| q.msg_id), Some("m1".to_owned()));
        assert_eq!(
            m.event,
            Some(MessageEvent::Read {
                conversation: Peer::User { id: "bob".into() },
                read_seq: 5,
                unread: 2
            })
        );
        let peer: qim_sdk::Peer = Peer::User { id: "alice".into() }.into();
        assert_eq!(peer, qim_sdk::Peer::User("alice".into()));
        assert_eq!(
            qim_sdk::HistoryAnchor::from(HistoryAnchor::Seq { seq: 3 }),
            qim_sdk::HistoryAnchor::Seq(3)
        );
    }

    #[test]
    fn im_records_cross_the_ffi() {
        let e: QimError =
            qim_sdk::Error::from_code(qim_sdk::ErrorCode::RecallWindowPassed, "late").into();
        assert!(
            matches!(e, QimError::Rejected { ref code, retryable: false, .. } if code == "RECALL_WINDOW_PASSED"),
            "{e:?}"
        );
        let page = MemberPage::from((
            vec![qim_sdk::GroupMember {
                user: "gina".into(),
                role: qim_sdk::GroupRole::Owner,
                muted: true,
            }],
            Some("gina".to_owned()),
        ));
        assert_eq!(page.members[0].role, GroupRole::Owner);
        assert!(page.members[0].muted);
        assert_eq!(page.next.as_deref(), Some("gina"));
        assert_eq!(
            qim_sdk::GroupChange::from(GroupChange::SetRole {
                user: "hugo".into(),
                role: GroupRole::Admin
            }),
            qim_sdk::GroupChange::SetRole("hugo".into(), qim_sdk::GroupRole::Admin)
        );
        assert_eq!(
            qim_sdk::GroupChange::from(GroupChange::MuteAll { muted: false }),
            qim_sdk::GroupChange::MuteAll(false)
        );
        let contacts = ContactList::from(qim_sdk::Contacts {
            friends: vec!["nick".into()],
            incoming: vec![qim_sdk::FriendRequest {
                user: "rita".into(),
                message: "hi".into(),
                at_ms: 5,
            }],
            ..Default::default()
        });
        assert_eq!(contacts.incoming[0].user, "rita");
        assert_eq!(contacts.friends, vec!["nick".to_owned()]);
        let signal = Signal::from(qim_sdk::Signal::Typing {
            conversation: qim_sdk::Peer::Group("band".into()),
            from: "olga".into(),
            typing: true,
        });
        assert_eq!(
            signal,
            Signal::Typing {
                conversation: Peer::Group { id: "band".into() },
                from_user: "olga".into(),
                typing: true
            }
        );
        let extras = qim_sdk::MessageExtras::from(MessageExtras {
            reply_to: Some(Quote {
                msg_id: "m1".into(),
                from_user: "kate".into(),
                kind: "text".into(),
                excerpt: b"hi".to_vec(),
            }),
            mentions: vec!["kate".into()],
            mention_all: false,
        });
        assert_eq!(extras.reply_to.map(|q| q.msg_id), Some("m1".to_owned()));
        assert_eq!(ReadCount::from((1, 2)), ReadCount { read: 1, total: 2 });
    }

    #[test]
    fn a_client_without_a_ca_is_refused() {
        let options = ClientOptions {
            server: "127.0.0.1:1".into(),
            server_name: "localhost".into(),
            ca_pem: Vec::new(),
            token: "t".into(),
            device_id: "d".into(),
            platform: Platform::Desktop,
            resume_from: 0,
            data_dir: None,
            resumption: true,
            local_store: None,
        };
        assert!(matches!(
            QimClient::new(options),
            Err(QimError::Config { .. })
        ));
    }
}
