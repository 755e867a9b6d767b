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
//! - [`Client`] (`client`): the handle and the driver task that keeps one
//!   session up and reconnects with exponential backoff and jitter.
//! - `outbox`: sends waiting for acks, resent with the same `client_msg_id`
//!   after an ack timeout and on every reconnect.
//! - `inbox`: the sans-IO receive order: dedup by seq, release in order,
//!   report gaps (pulled over an rpc stream). A gap the server keeps
//!   confirming empty for `ClientConfig::gap_skip_after` is skipped: seqs
//!   may have permanent holes (a store write that failed after the seq was
//!   assigned), which must not hold back the messages after them. A gap
//!   the server says is settled (`SyncResponse.settled_through`: expired or
//!   never written: at once on the embedded store, a window after the seqs
//!   were handed out on the cluster store) is skipped at once.
//! - `im`: conversations ([`Conversation`]), read state, recall, edit,
//!   delete-for-me, replies and mentions; changes from other devices arrive
//!   as [`Event`]s in the message stream.
//! - `contacts`: friend requests, friends, blocks.
//! - `groups`: create and change groups, members, sends to groups, and the
//!   receive side of read-diffusion groups (per-group order, pulls).
//! - `presence`: presence of friends (queried, subscribed), online time,
//!   typing; pushed as [`Signal`]s through [`Client::next_signal`].
//! - `outbox_store`: the journal that keeps unsent messages across app
//!   restarts (with [`ClientConfig::data_dir`]).
//! - [`heartbeat`]: the sans-IO adaptive heartbeat interval.
//! - [`Events`]: `sending / sent / failed` per send, and connection losses.
//! - `local_store`: with [`ClientConfig::local_store`] set, what the app
//!   received is kept in SQLite for [`Client::local_history`] and
//!   [`Client::search`] (full text), which work offline.
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
//! - [`ClientConfig`], [`Error`]: settings and the small public error.
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
mod contacts;
mod error;
mod events;
mod groups;
pub mod heartbeat;
mod im;
mod inbox;
mod local_store;
mod outbox;
mod outbox_store;
mod presence;

pub use client::{
    Client, ConnectionState, IncomingMessage, OutgoingMessage, SendReceipt, StateWatcher, Stats,
    new_client_msg_id,
};
pub use config::{ClientConfig, Platform, SocketSource};
pub use contacts::{Contacts, FriendRequest};
pub use error::Error;
pub use events::{ClientEvent, EVENT_BUFFER, Events, OutboxStatus};
pub use groups::{GroupChange, GroupInfo, GroupMember, GroupRole};
pub use im::{
    Conversation, ConversationPage, Event, HistoryAnchor, HistoryPage, MessageExtras, Peer, Quote,
};
pub use outbox_store::OutboxStoreError;
pub use presence::{PresenceStatus, SessionSpan, Signal};
pub use qim_proto::v1::ErrorCode;
