//! The qim gateway: a QUIC endpoint (and TLS on TCP where UDP is blocked)
//! that logs clients in, stores what they
//! send durably before acknowledging it, and delivers every message to every
//! device of its recipient in seq order until each device acknowledges it.
//!
//! # Layout
//! Dependencies point down this list; no file imports one above it.
//!
//! The top, which runs connections:
//! - [`server`]: binding the endpoint and the admin listeners, the accept
//!   loop, graceful shutdown (GoAway, drain, store flush).
//! - `handshake`: a connection attempt until its handshake completed:
//!   pending slots, the handshake bound, Retry under load, the connection
//!   permit.
//! - `session`: one connection: login on the control stream, then the
//!   heartbeat, chat, ack and rpc streams, each in its own task; the
//!   session ends at its token's expiry unless refreshed.
//! - `chat`: a session's chat streams (sends read under the send rate and
//!   a byte bound, stored in batches) and its ack stream.
//! - `control`: the control stream after login (`Refresh`, `Bye`,
//!   Refusals).
//! - `transport` (`transport/`): the second transport: TLS on TCP, its
//!   bounded handshake in the shared handshake slots, the ALPN check, then
//!   the same `session::serve` over a yamux `Connection`.
//! - `fault`: why a session or a stream ends: a code and a fixed text for
//!   the client, the detail for the log.
//! - `rpc`: the dispatch of one rpc request to the feature it names.
//!
//! The features, leaves that import only the ground floor and storage:
//! - `conversations`: the conversation list, read state, flags, recall,
//!   edit, delete-for-me, history, read counts.
//! - `groups` (`groups/`): group requests and pulls of read-diffusion group
//!   logs; `consent.rs` decides who is added and who invited (the invitee's
//!   `GroupAdds` setting, blocks) and answers `SettingsRequest`; `read.rs`
//!   is what a user may read of a group (private groups answer `NOT_FOUND`
//!   to non-members) and answers `InvitationsRequest`.
//! - `contacts`: friend requests (one pending per pair, cool-down,
//!   quota), friends, blocks.
//! - `schedule`: scheduled sends: requests (bounded per user), and the
//!   task that checks every rule again and posts them when due, or tells
//!   the sender it refused them (also after a restart).
//! - `presence`: online/offline over a user's devices, last seen,
//!   subscriptions, online-time records, typing; pushed as signals.
//! - `notify` (`notify/`): offline push: the push token and push
//!   settings requests (`tokens.rs`).
//! - `media` (`media/`): uploads and downloads of blobs on their own
//!   streams below chat (resumable from a durable committed offset,
//!   BLAKE3-checked, deduplicated with a proof of possession), who may read
//!   a blob, the check of a send's attachments, and the expiry of
//!   abandoned uploads.
//! - `usage`: the quota request (each quota's limit and usage).
//! - [`admin`]: the admin HTTP routers: health, metrics and the route
//!   endpoint without authentication; the admin API (`/v1/`, keys with
//!   scopes, [`admin::keys`]) on a listener of its own: the business
//!   backend's sends, batches, notifications and broadcasts (through
//!   `post`, as the system account or a user), kicks with a reason,
//!   presence and counts, group administration (through `groups`, as the
//!   owner), accounts; its OpenAPI document is generated from the
//!   handlers.
//!
//! The ground floor, which every feature imports and which imports no
//! feature:
//! - `ctx`: the state every session and feature shares (`Ctx`).
//! - `post`: a send validated, checked, stored as one post and published;
//!   used by chat streams and the admin API (`Trust`: a user's rules, or
//!   none for the system account), and checked the same way for scheduled
//!   sends.
//! - `order`: a chat stream's hold after a retryable refusal, so no later
//!   send of the stream is stored before the refused one.
//! - `fanout`: the only way a durable entry reaches sessions, on this node
//!   and on the others (and how signals cross nodes, presence unwatching
//!   after an unfriend or a block among them).
//! - `push`: the per-session registry of best-effort pushes: group log
//!   entries, presence changes, typing.
//! - `credential`: tokens checked at login, after the route is written and
//!   at refresh, against the user's revocation mark; the session's expiry
//!   deadline; revoking a user's tokens on every node.
//! - `policy`: who may reach whom (blocks, `im.direct_policy`), and which
//!   group entries a reader who blocked their sender sees hidden.
//! - `reply`: the feature error type, mapped to wire codes in one place,
//!   and the frame budget of paged answers.
//! - [`delivery`]: the per-device delivery engine; [`delivery::Window`] is
//!   its sans-IO core (unacked window, retransmit timers with backoff); and
//!   the inbox sync that gap pulls ask.
//! - `route`: in-process routes (online users, sessions per device, a feed
//!   of new messages per online user).
//! - [`cluster`]: membership of a multi-node cluster (registry, routes and
//!   cross-node queues in Redis) and the route endpoint's strategies; it
//!   carries entries and signals between nodes and knows nothing of
//!   sessions.
//! - [`limit`]: token buckets against floods (sends, pings, rpc requests),
//!   and per remote address (route endpoint, failed admin logins).
//! - `quota`: per-user quotas on sends (inbox copies per second, weighted
//!   by fan-out; stored bytes per UTC day, counted in the store) and the
//!   refusal of writes while the embedded store's disk is nearly full.
//! - [`auth`]: HMAC-signed login tokens (format `qim2`, and `qim1` still
//!   verified) and the key ring (rotation); [`tls`]: certificates, including
//!   development ones made with rcgen; `secrets`: what both write and
//!   read (owner-only files, the wall clock), and the endpoint secret
//!   that the QUIC connection-ID and stateless-reset keys are derived
//!   from (persistent, the same on every node, so a restarted or another
//!   node resets old connections at once).
//! - [`config`]: typed, layered, validated configuration; [`metrics`]:
//!   Prometheus metrics.
//! - `webhook` (`webhook/`): signed calls to the business backend: events
//!   through a bounded durable queue (files under the data directory) and
//!   a worker, and the before-send and before-offline-push hooks with a
//!   timeout and a failure policy; its signature is the push bridge's too.
//! - `mutex`, `deadline`, `udp`: a poison-tolerant lock, an optional
//!   deadline, the endpoint's receive thread; `path`: the client's address
//!   per session (migrations and failed path validations, counted when
//!   seen); `queue`: the bounded queues from a session's stream tasks to
//!   its ack writer and its delivery, kept in the session's allocation.
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
mod chat;
pub mod cluster;
pub mod config;
mod contacts;
mod control;
mod conversations;
mod credential;
mod ctx;
mod deadline;
pub mod delivery;
mod fanout;
mod fault;
mod groups;
mod handshake;
mod heartbeat;
pub mod limit;
mod media;
pub mod metrics;
mod mutex;
mod notify;
mod order;
mod path;
mod policy;
mod post;
mod presence;
mod push;
mod queue;
mod quota;
mod reply;
mod route;
mod rpc;
mod schedule;
mod secrets;
pub mod server;
mod session;
pub mod tls;
mod transport;
mod udp;
mod usage;
mod webhook;

pub use config::Config;
pub use qim_storage::Stores;
pub use secrets::endpoint::{EndpointSecretError, create as create_endpoint_secret};
pub use server::{Gateway, RunError, StartError, StartInfo};
