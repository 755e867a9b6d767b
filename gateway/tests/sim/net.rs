//! An in-memory datagram network for quinn endpoints.
//!
//! Every endpoint gets a [`SimSocket`] (quinn's `AsyncUdpSocket`) with a
//! virtual address; a datagram sent to an address is handed to the socket
//! that holds it, after the network's latency, through a tokio channel.
//! The latency is a tokio timer, so on a paused clock a datagram in flight
//! is a timer like any other and time jumps to its arrival.
//!
//! The knobs a test turns: one-way [`latency`](Net::set_latency), loss
//! ([`drop_next`](Net::drop_next) drops the next datagrams whatever they
//! are, [`set_loss`](Net::set_loss) drops each with a probability drawn
//! from a seeded RNG), a [`partition`](Net::partition) between two hosts,
//! and a NAT [`rebinding`](Net::rebind) that gives a socket a new public
//! address without its endpoint knowing, at once or, as a NAT does when a
//! mapping expired, with the socket's next datagram
//! ([`rebind_on_next_send`](Net::rebind_on_next_send)).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::mpsc;

/// The network: cheap to clone, every clone is the same network.
#[derive(Clone, Default)]
pub(crate) struct Net {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Each socket's inbound queue, by the socket's id.
    sockets: HashMap<u64, mpsc::UnboundedSender<Datagram>>,
    /// Which socket a public address reaches.
    routes: HashMap<SocketAddr, u64>,
    /// Each socket's public address (what its peers see).
    public: HashMap<u64, SocketAddr>,
    latency: Duration,
    /// Datagrams still to drop, whatever they are.
    drop_next: u32,
    /// Probability of dropping a datagram, and the RNG that decides.
    loss: Option<(f64, StdRng)>,
    /// Host pairs that cannot reach each other (either way).
    partitions: Vec<(IpAddr, IpAddr)>,
    /// Sockets whose next datagram goes out from a new public address,
    /// and how many of their datagrams after that one are lost.
    rebind_armed: HashMap<u64, u32>,
    /// Datagrams still to drop of each socket.
    drop_from: HashMap<u64, u32>,
    next_id: u64,
    next_host: u32,
    next_port: u16,
    delivered: u64,
    dropped: u64,
}

struct Datagram {
    from: SocketAddr,
    data: Vec<u8>,
}

impl Net {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh host address (10.0.0.1, 10.0.0.2, …).
    pub(crate) fn host(&self) -> IpAddr {
        let mut state = self.lock();
        state.next_host += 1;
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + state.next_host))
    }

    /// A socket bound at `addr`; port 0 picks a free one.
    pub(crate) fn bind(&self, addr: SocketAddr) -> Arc<SimSocket> {
        let mut state = self.lock();
        let mut addr = addr;
        while addr.port() == 0 || state.routes.contains_key(&addr) {
            state.next_port = state.next_port.wrapping_add(1).max(40_000);
            addr.set_port(state.next_port);
        }
        state.next_id += 1;
        let id = state.next_id;
        let (tx, rx) = mpsc::unbounded_channel();
        state.sockets.insert(id, tx);
        state.routes.insert(addr, id);
        state.public.insert(id, addr);
        Arc::new(SimSocket {
            net: self.clone(),
            id,
            local: addr,
            rx: Mutex::new(rx),
        })
    }

    /// One-way latency of every datagram from now on.
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Drops the next `n` datagrams sent, in either direction.
    pub(crate) fn drop_next(&self, n: u32) {
        self.lock().drop_next = n;
    }

    /// Drops each datagram with probability `rate`, decided by an RNG
    /// seeded with `seed` (0.0 turns loss off).
    pub(crate) fn set_loss(&self, rate: f64, seed: u64) {
        self.lock().loss = (rate > 0.0).then(|| (rate, StdRng::seed_from_u64(seed)));
    }

    /// Cuts `a` and `b` off from each other until [`heal`](Net::heal).
    pub(crate) fn partition(&self, a: IpAddr, b: IpAddr) {
        self.lock().partitions.push((a, b));
    }

    /// Ends every partition.
    pub(crate) fn heal(&self) {
        self.lock().partitions.clear();
    }

    /// A NAT rebinding: the socket seen as `public` is seen from now on at
    /// a new port of the same host; datagrams to the old address are lost.
    /// Returns the new public address.
    pub(crate) fn rebind(&self, public: SocketAddr) -> Option<SocketAddr> {
        let mut state = self.lock();
        let id = *state.routes.get(&public)?;
        state.rebind_id(id)
    }

    /// A NAT rebinding of every socket of `host` with its next datagram:
    /// that datagram and the ones after come from a new port, and the old
    /// address is lost from then on. The `then_drop` datagrams the socket
    /// sends after that first one are lost (its path to the peer is bad
    /// for a while, so a validation of the new path can fail).
    pub(crate) fn rebind_on_next_send(&self, host: IpAddr, then_drop: u32) {
        let mut state = self.lock();
        let ids: Vec<u64> = state
            .public
            .iter()
            .filter(|(_, a)| a.ip() == host)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            state.rebind_armed.insert(id, then_drop);
        }
    }

    /// A NAT rebinding of every socket of `host` (see [`rebind`](Net::rebind)).
    pub(crate) fn rebind_host(&self, host: IpAddr) -> Vec<SocketAddr> {
        let publics: Vec<SocketAddr> = self
            .lock()
            .routes
            .keys()
            .filter(|a| a.ip() == host)
            .copied()
            .collect();
        publics.into_iter().filter_map(|p| self.rebind(p)).collect()
    }

    /// Datagrams handed to a socket so far, and datagrams dropped.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.delivered, state.dropped)
    }

    fn send(&self, from_id: u64, to: SocketAddr, data: Vec<u8>) {
        let mut state = self.lock();
        if let Some(then_drop) = state.rebind_armed.remove(&from_id) {
            state.rebind_id(from_id);
            state.drop_from.insert(from_id, then_drop);
        } else if let Some(left) = state.drop_from.get_mut(&from_id).filter(|n| **n > 0) {
            *left -= 1;
            state.dropped += 1;
            return;
        }
        let Some(&from) = state.public.get(&from_id) else {
            return;
        };
        let cut = state
            .partitions
            .iter()
            .any(|&(a, b)| (a, b) == (from.ip(), to.ip()) || (b, a) == (from.ip(), to.ip()));
        let lost = if state.drop_next > 0 {
            state.drop_next -= 1;
            true
        } else if let Some((rate, rng)) = &mut state.loss {
            let rate = *rate;
            rng.random_bool(rate)
        } else {
            false
        };
        if cut || lost {
            state.dropped += 1;
            return;
        }
        let latency = state.latency;
        let datagram = Datagram { from, data };
        if latency.is_zero() {
            state.deliver(to, datagram);
        } else {
            drop(state);
            let net = self.clone();
            tokio::spawn(async move {
                // The link's latency, on the simulated clock.
                tokio::time::sleep(latency).await;
                net.lock().deliver(to, datagram);
            });
        }
    }
}

impl State {
    /// Gives socket `id` a new public port of the same host; returns it.
    fn rebind_id(&mut self, id: u64) -> Option<SocketAddr> {
        let public = self.public.get(&id).copied()?;
        self.routes.remove(&public);
        let mut next = public;
        while next == public || self.routes.contains_key(&next) {
            self.next_port = self.next_port.wrapping_add(1).max(40_000);
            next.set_port(self.next_port);
        }
        self.routes.insert(next, id);
        self.public.insert(id, next);
        Some(next)
    }

    /// Hands `datagram` to whoever holds `to` now (nobody: it is lost).
    fn deliver(&mut self, to: SocketAddr, datagram: Datagram) {
        let sent = self
            .routes
            .get(&to)
            .and_then(|id| self.sockets.get(id))
            .is_some_and(|tx| tx.send(datagram).is_ok());
        if sent {
            self.delivered += 1;
        } else {
            self.dropped += 1;
        }
    }
}

/// A socket on a [`Net`].
pub(crate) struct SimSocket {
    net: Net,
    id: u64,
    /// The address it was bound at (a NAT rebinding does not change it).
    local: SocketAddr,
    rx: Mutex<mpsc::UnboundedReceiver<Datagram>>,
}

impl std::fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        let mut state = self.net.lock();
        state.sockets.remove(&self.id);
        if let Some(public) = state.public.remove(&self.id) {
            state.routes.remove(&public);
        }
    }
}

/// Sending never waits: the network queues are unbounded.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            self.net
                .send(self.id, transmit.destination, segment.to_vec());
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let datagram = match rx.poll_recv(cx) {
                Poll::Ready(Some(datagram)) => datagram,
                // The network outlives every socket on it.
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => break,
            };
            let len = datagram.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&datagram.data[..len]);
            meta[n] = RecvMeta {
                addr: datagram.from,
                len,
                stride: len,
                ecn: None,
                dst_ip: Some(self.local.ip()),
            };
            n += 1;
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(n))
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
