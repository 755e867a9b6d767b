//! The qim gateway: a QUIC endpoint that logs clients in, stores what they
//! send durably before acknowledging it, and delivers every message to every
//! device of its recipient in seq order until each device acknowledges it.
//!
//! # Layout
//! - [`server`]: binding the endpoint and admin port, the accept loop,
//!   graceful shutdown (GoAway, drain, store flush).
//! - `session`: one connection: login on the control stream, then the
//!   heartbeat, chat, ack and rpc streams, each in its own task.
//! - [`delivery`]: the per-device delivery engine; [`delivery::Window`] is its
//!   sans-IO core (unacked window, retransmit timers with backoff).
//! - `conversations`: chat sends as posts (one copy per inbox) and the IM
//!   rpc requests: conversation list, read state, flags, recall, edit,
//!   delete-for-me.
//! - `contacts`: friend requests, friends, blocks, and the direct-message
//!   policy checked on every one-to-one send.
//! - `groups`: group requests, and the push of read-diffusion group logs
//!   to online members (best effort, with nudges and pulls).
//! - `schedule`: scheduled sends: requests, and the task that posts them
//!   when due (also after a restart).
//! - `presence`: online/offline over a user's devices, last seen,
//!   subscriptions, online-time records, typing; pushed as signals.
//! - `route`: in-process routes (online users, sessions per device, a feed
//!   of new messages per online user).
//! - [`cluster`]: membership of a multi-node cluster (registry, routes and
//!   cross-node queues in Redis) and the route endpoint's strategies.
//! - [`limit`]: token buckets against floods (sends, pings, rpc requests).
//! - [`auth`]: HMAC-signed login tokens.
//! - [`tls`]: certificates, including development ones made with rcgen.
//! - [`config`]: typed, layered, validated configuration.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin HTTP router.
//!
//! # Invariants
//! - A `SendAck` is written only after the store's `append` returned, i.e.
//!   after the message is durable; a store error becomes a retryable
//!   `SendNack`.
//! - Messages are published to live sessions only after they are durable, so
//!   a delivery task can always fall back to reading the store.
//! - Every connection the server ends is closed with an `ErrorCode`.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
mod contacts;
mod conversations;
pub mod delivery;
mod groups;
pub mod limit;
pub mod metrics;
mod presence;
mod route;
mod schedule;
pub mod server;
mod session;
pub mod tls;
mod udp;

pub use config::Config;
pub use server::{Gateway, ImStores, RunError, StartError, StartInfo};
