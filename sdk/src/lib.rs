//! The qim client SDK: one user on one device talking to a qim gateway over
//! QUIC.
//!
//! ```no_run
//! # async fn demo(ca_pem: Vec<u8>, token: String) -> Result<(), qim_sdk::Error> {
//! use qim_sdk::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:4433", token, "phone-1", ca_pem)).await?;
//! let receipt = client.send("bob".into(), "hello".into()).await?; // stored durably
//! println!("stored as seq {} in bob's inbox", receipt.seq);
//! while let Some(message) = client.next_message().await {
//!     // In seq order, each once; taking it acknowledges it.
//!     println!("{}: {}", message.from_user, String::from_utf8_lossy(&message.body));
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! The core, bottom up (each file imports only files above it in this
//! list, never a feature module):
//! - `error` ([`Error`]), `config` ([`ClientConfig`]), `sync` (the one
//!   `lock` helper).
//! - `message`: the public types of what is sent and received
//!   ([`IncomingMessage`], [`OutgoingMessage`], [`SendReceipt`], [`Peer`],
//!   [`Quote`], [`MessageExtras`], [`Event`], [`HistoryAnchor`],
//!   [`HistoryPage`], [`Signal`], [`PresenceStatus`]) and their wire
//!   mapping.
//! - [`heartbeat`]: the sans-IO adaptive heartbeat interval.
//! - `inbox`: the sans-IO receive order: dedup by seq, release in order,
//!   report gaps, and the gap-skip clock (`now` passed in). A gap the
//!   server keeps confirming empty for [`ClientConfig::gap_skip_after`] is
//!   skipped: seqs may have permanent holes (a store write that failed
//!   after the seq was assigned), which must not hold back the messages
//!   after them. A gap the server says is settled
//!   (`SyncResponse.settled_through`: expired or never written: at once on
//!   the embedded store, a window after the seqs were handed out on the
//!   cluster store) is skipped at once.
//! - `outbox_store`, `outbox`: sends waiting for acks, resent with the same
//!   `client_msg_id` on every reconnect and never twice on one connection
//!   (an ack timeout probes the connection instead); the
//!   journal keeps them across app restarts (with
//!   [`ClientConfig::data_dir`]). `events` ([`Events`]): `sending / sent /
//!   failed` per send, and connection losses.
//! - `local_store`: with [`ClientConfig::local_store`] set, what the app
//!   received is kept in SQLite for [`Client::local_history`] and
//!   [`Client::search`] (full text), which work offline.
//! - `shared`: the state the handle and the driver share across
//!   connections ([`ConnectionState`], [`Stats`], the time of the next
//!   reconnect attempt for [`Client::next_attempt_in`]).
//! - `rpc`: the one rpc exchange (open a stream, one request, one
//!   response, refusals mapped to [`Error`]), used by every request.
//! - `receive`: the receive path: deliveries into inbox order, gap pulls
//!   and skips, read-diffusion groups' logs in per-group order, signals.
//! - `connect`: the QUIC endpoint (`bind_endpoint`, the one place it is
//!   made) and TLS settings, one login, 0-RTT.
//! - `transport`: which transport a connection takes: QUIC raced against
//!   TLS on TCP, remembered per network, partial loss on QUIC and the way
//!   back to QUIC watched per session ([`Transport`],
//!   [`TransportPolicy`]).
//! - `driver`: keeps one session up, reconnects with exponential backoff
//!   and jitter, runs the per-stream tasks of a session; its heartbeat
//!   task runs the probes (`Shared::request_probe`).
//! - `client`: the public API, [`Client`] and its methods, and
//!   `Client::rpc` (waits for a connection, then the rpc exchange).
//!
//! The features, leaves on top: each adds `impl Client` methods built on
//! `Client::rpc` and `Client::send_to_peer` and its own types, and imports
//! only `client`, `message`, `rpc` and `error`:
//! - `im`: conversations ([`Conversation`]), read state, recall, edit,
//!   delete-for-me, replies and mentions, schedules, history; changes from
//!   other devices arrive as [`Event`]s in the message stream.
//! - `contacts`: friend requests, friends, blocks.
//! - `token`: the app's [`TokenProvider`], asked for a fresh login token
//!   when the server refuses one or it is about to expire.
//! - `groups`: create and change groups (join policies, limits, public or
//!   private), join requests, invitations, bans, member lists, the user's
//!   "who may add me" setting, sends to groups (their receive side is in
//!   `receive`).
//! - `presence`: presence of friends (queried, subscribed), online time,
//!   typing; pushed as [`Signal`]s through [`Client::next_signal`].
//! - `media`: uploads and downloads of blobs on their own streams below
//!   chat ([`Transfer`]: progress and cancellation), resumed on every new
//!   connection from the server's committed offset, and journalled in the
//!   data directory across restarts ([`PendingUpload`]); messages carry
//!   them as [`Attachment`]s. It reads the connection from `shared`
//!   (streams of its own, retried on each new connection).
//! - `quota`: the user's quotas ([`Quota`]: limit and usage).
//! - `push`: offline push: this device's push token ([`PushToken`],
//!   registered after login, removed by [`Client::logout`]) and the user's
//!   preview settings ([`PushSettings`]).
//!
//! With the `ffi` feature, the public records and enums derive their
//! uniffi bindings here (used as they are by `qim-sdk-ffi`).
//!
//! # Mobile behaviours
//! - [`Client::start`] works offline; [`Client::enqueue`] queues a send
//!   without waiting (durably with a data directory).
//! - [`Client::network_changed`] migrates the QUIC connection to a new UDP
//!   socket, and connects afresh only if the new path does not answer.
//! - Reconnects resume the TLS session and send the login as 0-RTT early
//!   data when the server allows it ([`ClientConfig::resumption`]).
//! - The heartbeat interval adapts to what the network's NAT allows, within
//!   the server's bounds; [`Client::set_foreground`] shortens it while the
//!   app is in front.
//! - Liveness is probed, not assumed: a send without an ack for
//!   [`ClientConfig::ack_timeout`], or a new address of the client seen by
//!   the server (a NAT rebinding: a PATH_CHALLENGE arrived), or traffic
//!   going quiet ([`ClientConfig::quiet_probe_after`], once per quiet
//!   spell) makes the client ping at once with a short deadline
//!   ([`ClientConfig::probe_timeout`]); without a pong it connects afresh,
//!   and nothing is resent on a connection that has not answered. A
//!   crashed and restarted gateway answers the old connection with a
//!   stateless reset, which ends it at once.
//!
//! # Guarantees
//! - `send` resolves `Ok` only when the server has stored the message.
//! - `next_message` yields messages in seq order, each exactly once per
//!   process; across restarts, pass the last processed seq as
//!   `resume_from`.
//! - A message is acknowledged to the server only after the app took it.
//!
//! The public surface uses owned types only (no lifetimes or generics), so it
//! maps one to one onto the uniffi bindings.

mod client;
mod config;
mod connect;
mod contacts;
mod driver;
mod error;
mod events;
mod groups;
pub mod heartbeat;
mod im;
mod inbox;
mod local_store;
mod media;
mod message;
mod outbox;
mod outbox_store;
mod presence;
mod push;
mod quota;
mod receive;
mod rpc;
mod shared;
mod sync;
mod token;
mod transport;

#[cfg(feature = "ffi")]
uniffi::setup_scaffolding!();

pub use client::{Client, StateWatcher};
pub use config::{ClientConfig, Platform, SocketSource};
pub use contacts::{Contacts, FriendRequest};
pub use error::Error;
pub use events::{ClientEvent, EVENT_BUFFER, Events, OutboxStatus};
pub use groups::{
    GroupAdds, GroupChange, GroupInfo, GroupInvitation, GroupList, GroupMember, GroupOutcome,
    GroupRole, JoinPolicy, NewGroup,
};
pub use im::{Conversation, ConversationPage};
pub use media::{PendingUpload, Transfer, TransferProgress};
pub use message::{
    Attachment, Event, HistoryAnchor, HistoryPage, IncomingMessage, MessageExtras, OutgoingMessage,
    Peer, PresenceStatus, Quote, SendReceipt, Signal, new_client_msg_id,
};
pub use outbox_store::OutboxStoreError;
pub use presence::SessionSpan;
pub use push::{PreviewSetting, PushProvider, PushSettings, PushToken};
pub use qim_proto::v1::{ErrorCode, KickReason};

pub use quota::Quota;
pub use shared::{ConnectionState, Stats};
pub use token::{TokenProvider, TokenRequest};
pub use transport::{Transport, TransportPolicy};
