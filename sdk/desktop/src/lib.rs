//! qim desktop: a full-screen terminal chat client on the qim SDK.
//!
//! ```text
//! cargo run --release -p qim-gateway                     # a development gateway
//! cargo run -p qim-desktop -- --user alice               # token minted from qim-data/token-secret
//! cargo run -p qim-desktop -- --server chat.example.com:4433 --ca ca.pem --token-file token
//! ```
//!
//! # Layout
//! Events in, state, render: the UI state is a pure model, and everything
//! that touches a terminal or the network lives around it.
//! - [`model`]: the UI state. [`model::Input`]s in (keys, ticks, what the
//!   SDK reported), [`model::Request`]s out. No IO, no clock; unit tests
//!   drive it directly.
//! - [`view`]: draws a model into a ratatui frame (a terminal, or a test
//!   buffer).
//! - [`text`]: makes text from the network inert before it is drawn
//!   (control characters and escape sequences shown as symbols), short
//!   times.
//! - [`worker`]: the SDK side. Tasks feed the client's messages, signals,
//!   outbox events and connection states into the model's input channel
//!   and carry out each request in a task of its own, so the draw loop
//!   never waits on the network.
//! - [`transfers`]: uploads and downloads of files, with progress.
//! - [`term`]: raw mode, the key reader thread and the draw loop.
//! - [`settings`]: flags over a TOML config file over defaults.
//! - [`devtoken`]: development tokens minted from the gateway's secret.
//! - [`files`]: safe names for received files, media types, sizes and
//!   progress bars.
//! - [`datadir`]: the data directory (the SDK's outbox and local store,
//!   the resume point).
//!
//! The client adds nothing to the wire protocol; it uses the SDK's public
//! API only.

pub mod datadir;
pub mod devtoken;
pub mod files;
pub mod model;
pub mod settings;
pub mod term;
pub mod text;
pub mod transfers;
pub mod view;
pub mod worker;
