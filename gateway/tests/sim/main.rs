//! The deterministic protocol harness: timers tested on simulated time.
//!
//! In the spirit of quinn-proto's `Pair`, a real gateway ([`Sim::gateway`](harness::Sim::gateway),
//! the same `Gateway::run` as in production, on the embedded store) and
//! real SDK clients ([`SimGateway::client`](harness::SimGateway::client)) or raw protocol clients
//! ([`SimGateway::raw_login`](harness::SimGateway::raw_login)) run in one process, over an in-memory
//! network ([`net`]) instead of sockets, on tokio's paused clock. A test that
//! waits out a 90 s heartbeat deadline or a 30 s gap skip finishes in
//! milliseconds, and asserts *when* things happen to the millisecond
//! ([`assert_elapsed`](harness::assert_elapsed)).
//!
//! What it simulates: UDP between endpoints (latency, loss, partitions,
//! NAT rebinding; see [`net::Net`]), and time. What it does not: the
//! kernel's sockets (buffers, GSO/GRO, ECN, real MTUs), other processes
//! (kill -9, restarts on the same port, a cluster of nodes) and the cluster
//! store: those stay tested on real QUIC by the other test files. The
//! simulated gateway has every store of the embedded backend ([`store`]). Wall-clock
//! times (token expiry, `server_time_ms`, history retention, when a
//! scheduled send is due) still follow the system clock, and so does the
//! SDK's adaptive heartbeat, which learns from `std::time::Instant` (in a
//! simulation it stays at the server's suggested interval).
//!
//! How time moves: each test is `#[tokio::test(start_paused = true)]`, a
//! single-threaded runtime whose clock stands still while any task can run
//! and jumps to the next timer when none can (tokio's auto-advance). quinn's
//! timers and `now` come from its tokio runtime, so they follow that clock;
//! the gateway's heartbeat deadline, retransmit and drain timers and the
//! SDK's heartbeat, ack timeout, gap-skip clock and reconnect backoff are
//! tokio timers too. A test moves time by awaiting: an event with a
//! timeout, or `tokio::time::sleep`.
//!
//! The one trap is work off the runtime: the embedded store syncs to disk
//! on a thread of its own, and while every task waits for it the clock
//! would jump to the next timer, so a disk sync would take a heartbeat
//! deadline of simulated time. The gateway's store is therefore a
//! [`harness::HeldStore`], whose calls keep the runtime busy until they
//! return ([`harness::held`]): a store call takes no simulated time. Real
//! TCP to the admin port is held the same way.
//!
//! Each test is deterministic in its timings; the order in which tasks
//! ready at the same instant run, and the randomness of TLS, QUIC
//! connection ids and the SDK's backoff jitter, are not fixed.

#[path = "../common/mod.rs"]
mod common;
mod delivery;
mod harness;
mod liveness;
mod net;
mod recovery;
mod store;
