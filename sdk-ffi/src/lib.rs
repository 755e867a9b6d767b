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
//! - [`TokenProvider`]: implemented by the app; gives fresh login tokens
//!   when the server refuses one or it is about to expire
//!   ([`QimClient::set_token_provider`]).
//! - Records and enums are `qim-sdk`'s own types
//!   ([`qim_sdk::IncomingMessage`], [`qim_sdk::SendReceipt`],
//!   [`qim_sdk::Peer`], [`qim_sdk::Event`], [`qim_sdk::Signal`], …),
//!   derived by uniffi in `qim-sdk` under its `ffi` feature: they cross
//!   as they are, with their names, and the generated code puts them in
//!   the `qim_sdk` namespace (Kotlin package `uniffi.qim_sdk`). Only
//!   what cannot be derived is defined here, under the SDK's name where
//!   it stands for an SDK type: [`ClientConfig`] (the settings an app
//!   chooses, without durations or paths), [`OutboxStatus`] (it carries
//!   the error), and the records for SDK results that are tuples
//!   ([`MemberPage`], [`ReadCount`]).
//! - [`QimError`]: the typed error (a Kotlin exception, a Swift `Error`),
//!   mapped from `qim_sdk::Error` in one place. A refusal keeps the wire
//!   code's name (`BLOCKED`, `MUTED`, `NOT_A_MEMBER`,
//!   `RECALL_WINDOW_PASSED`, `KICKED`, …) so apps can tell them apart.
//! - The IM features, each in its own module with its `QimClient`
//!   methods: `im` (replies, mentions, recall, edit, delete-for-me,
//!   flags, scheduled sends, the local store), `groups`, `contacts` and
//!   `presence` (presence, online time, typing; pushed signals reach
//!   [`ClientListener::on_signal`]), `push` (this device's push token,
//!   `logout`, preview settings), `media` (uploads and downloads with a
//!   [`TransferHandle`] to cancel and a [`TransferListener`] for
//!   progress).
//!
//! A method only calls the SDK: [`QimClient::call`] runs it on the SDK
//! runtime and maps its error.
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

use qim_sdk::{
    Client, ClientEvent, ConnectionState, Conversation, ConversationPage, HistoryAnchor,
    HistoryPage, IncomingMessage, OutgoingMessage, Peer, SendReceipt, Signal, Stats,
};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

mod contacts;
mod groups;
mod im;
mod media;
mod presence;
mod push;

pub use groups::{MemberPage, ReadCount};
pub use media::{TransferHandle, TransferListener};

uniffi::setup_scaffolding!();

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
        /// `KICKED`, `VERSION_TOO_OLD` (update the app), `VERSION_TOO_NEW`
        /// (the server is older than this SDK).
        code: String,
        /// The server's explanation.
        reason: String,
        /// Whether the same request may succeed later.
        retryable: bool,
    },
    /// The business backend ended the session (admin API kick): the
    /// client stops; `kick_reason` is the wire name, e.g.
    /// `KICK_REASON_ACCOUNT_DISABLED`, `KICK_REASON_SECURITY`.
    #[error("kicked ({kick_reason}): {reason}")]
    Kicked {
        /// The `KickReason` name.
        kick_reason: String,
        /// The server's explanation.
        reason: String,
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
    /// The app cancelled the call (a transfer's `TransferHandle.cancel`,
    /// or its coroutine or task).
    #[error("cancelled")]
    Cancelled,
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
            E::Version { code, message } => QimError::Rejected {
                code: code.as_str_name().to_owned(),
                reason: message,
                retryable: false,
            },
            E::Kicked { reason, message } => QimError::Kicked {
                kick_reason: reason.as_str_name().to_owned(),
                reason: message,
            },
            E::Network(reason) => QimError::Network { reason },
            E::Tls(reason) => QimError::Tls { reason },
            E::Config(reason) => QimError::Config { reason },
            E::Timeout => QimError::Timeout,
            E::Closed => QimError::Closed {
                reason: "client closed".into(),
            },
            E::Storage(reason) => QimError::Storage { reason },
            E::Cancelled => QimError::Cancelled,
            other => QimError::Network {
                reason: other.to_string(),
            },
        }
    }
}

/// How to connect: the settings of [`qim_sdk::ClientConfig`] an app
/// chooses; the others keep the SDK's defaults (durations and paths do
/// not cross the FFI).
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientConfig {
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
    pub platform: qim_sdk::Platform,
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
    /// TCP port of the gateway's TLS-on-TCP listener, used when UDP is
    /// blocked; `None`: the same port number as `server`'s.
    #[uniffi(default = None)]
    pub tcp_port: Option<u16>,
}

impl ClientConfig {
    fn to_sdk(&self) -> qim_sdk::ClientConfig {
        let mut config = qim_sdk::ClientConfig::new(
            self.server.clone(),
            self.token.clone(),
            self.device_id.clone(),
            self.ca_pem.clone(),
        );
        config.server_name = self.server_name.clone();
        config.platform = self.platform;
        config.resume_from = self.resume_from;
        config.data_dir = self.data_dir.as_ref().map(Into::into);
        config.resumption = self.resumption;
        config.local_store = self.local_store.as_ref().map(Into::into);
        config.tcp_port = self.tcp_port;
        config.reconnect_min = Duration::from_millis(200);
        config
    }
}

/// Where a send stands: [`qim_sdk::OutboxStatus`] with its error as a
/// [`QimError`].
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

impl OutboxStatus {
    /// The status of an SDK outbox event; `None` for a kind this version
    /// does not know.
    fn from_sdk(status: qim_sdk::OutboxStatus) -> Option<OutboxStatus> {
        Some(match status {
            qim_sdk::OutboxStatus::Sending => OutboxStatus::Sending,
            qim_sdk::OutboxStatus::Sent(receipt) => OutboxStatus::Sent { receipt },
            qim_sdk::OutboxStatus::Failed(e) => OutboxStatus::Failed { error: e.into() },
            _ => return None,
        })
    }
}

/// What the app implements to hear from the client. Called from SDK
/// threads; return quickly.
#[uniffi::export(with_foreign)]
pub trait ClientListener: Send + Sync {
    /// A message, in seq order, each once. It counts as received when this
    /// returns: store it (with its seq) here.
    fn on_message(&self, message: IncomingMessage);
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

/// What the app implements to give the client fresh login tokens (from
/// its backend): asked when the server refuses the token or before it
/// expires. Called on a worker thread, so it may block on the network;
/// `null`/`nil` when there is none (a refused client then stops).
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// A fresh token for the client's user, or none.
    fn fresh_token(&self, reason: qim_sdk::TokenRequest) -> Option<String>;
}

/// The app's [`TokenProvider`] as the SDK's.
struct ForeignTokens(Arc<dyn TokenProvider>);

impl qim_sdk::TokenProvider for ForeignTokens {
    fn fresh_token(&self, reason: qim_sdk::TokenRequest) -> Option<String> {
        self.0.fresh_token(reason)
    }
}

/// A qim client: one user on one device.
#[derive(uniffi::Object)]
pub struct QimClient {
    config: qim_sdk::ClientConfig,
    listener: Mutex<Option<Arc<dyn ClientListener>>>,
    tokens: Mutex<Option<Arc<dyn TokenProvider>>>,
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
                    l.on_message(message);
                }
            }));
            let (c, l) = (Arc::clone(&client), Arc::clone(&listener));
            let closing = Arc::clone(&self.closing);
            pumps.push(rt.spawn(async move {
                let mut states = c.watch_state();
                l.on_state_changed(states.current());
                while let Some(state) = states.changed().await {
                    if state == qim_sdk::ConnectionState::Closed {
                        // Stopped for good: say why, unless the app closed it.
                        if let Some(e) = c.last_error().filter(|_| !closing.load(Ordering::SeqCst))
                        {
                            l.on_error(e.into());
                        }
                    }
                    l.on_state_changed(state);
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
                            if let Some(status) = OutboxStatus::from_sdk(status) {
                                listener.on_outbox_status(client_msg_id, status);
                            }
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
        let mut config = self.config.clone();
        if let Some(tokens) = lock(&self.tokens).clone() {
            config.token_provider = Some(Arc::new(ForeignTokens(tokens)));
        }
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
    pub fn new(config: ClientConfig) -> Result<Arc<Self>, QimError> {
        if config.ca_pem.is_empty() {
            return Err(QimError::Config {
                reason: "ca_pem is empty".into(),
            });
        }
        Ok(Arc::new(QimClient {
            config: config.to_sdk(),
            listener: Mutex::new(None),
            tokens: Mutex::new(None),
            client: Mutex::new(None),
            pumps: Mutex::new(Vec::new()),
            closing: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Sets the listener; takes effect at the next `connect`/`start`.
    pub fn set_listener(&self, listener: Arc<dyn ClientListener>) {
        *lock(&self.listener) = Some(listener);
    }

    /// Sets the token provider; takes effect at the next `connect`/`start`.
    pub fn set_token_provider(&self, provider: Arc<dyn TokenProvider>) {
        *lock(&self.tokens) = Some(provider);
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
        self.call(move |c| async move { c.send_message(message).await })
            .await
    }

    /// Queues a text message without waiting for the server (works
    /// offline); returns its `client_msg_id` once saved. Progress comes to
    /// the listener's `on_outbox_status`.
    pub async fn enqueue(&self, to: String, text: String) -> Result<String, QimError> {
        self.call(move |c| async move {
            c.enqueue(OutgoingMessage {
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
    /// get a message whose `event` is `Event.Read`.
    pub async fn mark_read(&self, peer: Peer, up_to_seq: u64) -> Result<Conversation, QimError> {
        self.call(move |c| async move { c.mark_read(peer, up_to_seq).await })
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
        self.call(move |c| async move { c.history(peer, anchor, forward, limit).await })
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
            .map_or(ConnectionState::Closed, |c| c.state())
    }

    /// The transport of the current session ("QUIC" or "TCP" to show);
    /// `None` while disconnected.
    pub fn transport(&self) -> Option<qim_sdk::Transport> {
        lock(&self.client).as_ref().and_then(|c| c.transport())
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
    pub fn stats(&self) -> Stats {
        lock(&self.client)
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default()
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
    fn outbox_events_keep_the_receipt_and_map_the_error() {
        let receipt = SendReceipt {
            client_msg_id: "c1".into(),
            msg_id: "m1".into(),
            seq: 3,
            server_time_ms: 5,
        };
        assert_eq!(
            OutboxStatus::from_sdk(qim_sdk::OutboxStatus::Sent(receipt.clone())),
            Some(OutboxStatus::Sent { receipt })
        );
        assert_eq!(
            OutboxStatus::from_sdk(qim_sdk::OutboxStatus::Failed(qim_sdk::Error::from_code(
                qim_sdk::ErrorCode::Blocked,
                "no"
            ))),
            Some(OutboxStatus::Failed {
                error: QimError::Rejected {
                    code: "BLOCKED".into(),
                    reason: "no".into(),
                    retryable: false
                }
            })
        );
    }

    #[test]
    fn tuple_results_become_records() {
        let page = MemberPage::from((
            vec![qim_sdk::GroupMember {
                user: "gina".into(),
                role: qim_sdk::GroupRole::Owner,
                muted: true,
            }],
            Some("gina".to_owned()),
        ));
        assert_eq!(page.members[0].role, qim_sdk::GroupRole::Owner);
        assert_eq!(page.next.as_deref(), Some("gina"));
        assert_eq!(ReadCount::from((1, 2)), ReadCount { read: 1, total: 2 });
    }

    #[test]
    fn a_client_without_a_ca_is_refused() {
        let config = ClientConfig {
            server: "127.0.0.1:1".into(),
            server_name: "localhost".into(),
            ca_pem: Vec::new(),
            token: "t".into(),
            device_id: "d".into(),
            platform: qim_sdk::Platform::Desktop,
            resume_from: 0,
            data_dir: None,
            resumption: true,
            local_store: None,
            tcp_port: None,
        };
        assert!(matches!(
            QimClient::new(config),
            Err(QimError::Config { .. })
        ));
    }
}
