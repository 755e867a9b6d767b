//! The client's address as the connection sees it: migrations (a new
//! network, a NAT rebinding) and fallbacks, counted when they happen.
//!
//! quinn moves a connection to a client's new address as soon as a packet
//! comes from it, and validates the new path; when that validation fails
//! (lost packets), it falls back to the previous address, which after a
//! NAT rebinding is dead. quinn offers no event for either, so the session
//! looks at `remote_address` whenever the client sends a frame (a Ping, a
//! delivery ack, a send), and once more a moment after each migration, when
//! the validation has either succeeded or fallen back. A fallback cannot be
//! repaired from here (the server has no live address of the client): the
//! SDK notices the server validating its new address and probes from it,
//! which moves the connection back (see the SDK's `Shared::check_path`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use crate::metrics::Metrics;
use crate::mutex::lock;

/// Longer than quinn's path validation (three probe timeouts) on any
/// network a client would stay on.
const RECHECK_AFTER: Duration = Duration::from_secs(2);

/// What changed since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathChange {
    /// Same address.
    None,
    /// A new address.
    Migrated,
    /// Back at the address before the last migration: the validation of
    /// the new one failed (or the client moved back).
    FellBack,
}

/// The addresses of one session's client.
#[derive(Debug)]
pub(crate) struct PathWatch {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The address as last seen.
    remote: SocketAddr,
    /// The one before the last migration.
    before: Option<SocketAddr>,
}

impl PathWatch {
    pub(crate) fn new(remote: SocketAddr) -> Self {
        Self {
            state: Mutex::new(State {
                remote,
                before: None,
            }),
        }
    }

    /// Takes `now`, the connection's current remote address.
    pub(crate) fn observe(&self, now: SocketAddr) -> PathChange {
        let mut state = lock(&self.state);
        if now == state.remote {
            return PathChange::None;
        }
        let change = if state.before == Some(now) {
            PathChange::FellBack
        } else {
            PathChange::Migrated
        };
        state.before = Some(state.remote);
        state.remote = now;
        change
    }

    /// Looks at `conn`'s address, counts and logs a change; after a
    /// migration, looks again once the path validation is over.
    pub(crate) fn note(
        self: &Arc<Self>,
        conn: &qim_proto::transport::Connection,
        metrics: &Arc<Metrics>,
        user: &str,
        device: &str,
    ) {
        let now = conn.remote_address();
        match self.observe(now) {
            PathChange::None => {}
            PathChange::Migrated => {
                info!(user, device, to = %now, "client address changed; connection migrated");
                metrics.migrations.inc();
                let (watch, conn, metrics) = (Arc::clone(self), conn.clone(), Arc::clone(metrics));
                let (user, device) = (user.to_owned(), device.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(RECHECK_AFTER).await;
                    if conn.close_reason().is_none() {
                        watch.note(&conn, &metrics, &user, &device);
                    }
                });
            }
            PathChange::FellBack => {
                info!(user, device, to = %now, "validating the client's new address failed; back at the old one");
                metrics.path_fallbacks.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_and_fallbacks() {
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.1:2000".parse().expect("addr");
        let c: SocketAddr = "10.0.0.2:3000".parse().expect("addr");
        let watch = PathWatch::new(a);
        assert_eq!(watch.observe(a), PathChange::None);
        assert_eq!(watch.observe(b), PathChange::Migrated);
        assert_eq!(watch.observe(b), PathChange::None);
        assert_eq!(watch.observe(a), PathChange::FellBack);
        assert_eq!(watch.observe(b), PathChange::FellBack, "and back again");
        assert_eq!(watch.observe(c), PathChange::Migrated);
    }
}
