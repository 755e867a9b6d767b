//! The gateway's UDP socket read on a thread of its own.
//!
//! quinn reads the socket from one task, the endpoint driver, which yields
//! after about 50 µs of reading so that it never starves the runtime. On
//! the shared runtime that task then waits behind every other runnable
//! task (handshakes, sessions, store replies) before it reads again; in a
//! reconnect storm the socket's receive buffer filled meanwhile and the
//! kernel dropped 11,176 datagrams in 14 s, among them Initials whose
//! clients then waited a retransmission timeout (`BENCHMARKS.md`).
//!
//! [`EndpointRuntime`] gives quinn's endpoint driver a single-threaded
//! tokio runtime on a dedicated OS thread, with the socket registered on
//! that runtime's reactor: the thread sleeps in `epoll` until datagrams
//! arrive and reads them at once, whatever the workers are doing. Everything
//! else quinn spawns (one driver task per connection, the timers) stays on
//! the gateway's runtime. The thread ends when the driver does, that is when
//! the endpoint has been dropped and its last connection is gone.
//!
//! Off by default (`quic.receive_thread`): on the 2-core test machines,
//! shared with the load generator, it took the storm's drops to zero but
//! the storm took as long (the cores, not the losses, set its pace), and a
//! cold ramp of 20,000 logins was about 10% slower with the extra thread.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};
use tokio::sync::oneshot;

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// quinn's runtime with the endpoint driver on its own thread.
pub(crate) struct EndpointRuntime {
    /// The dedicated runtime's handle: the socket is registered on it.
    io: tokio::runtime::Handle,
    /// Takes the first future quinn spawns: its endpoint driver.
    driver: Mutex<Option<oneshot::Sender<Driver>>>,
}

impl fmt::Debug for EndpointRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointRuntime").finish_non_exhaustive()
    }
}

impl EndpointRuntime {
    /// Starts the receive thread, which waits for the endpoint driver.
    pub(crate) fn start() -> io::Result<Arc<Self>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let io = rt.handle().clone();
        let (tx, rx) = oneshot::channel::<Driver>();
        std::thread::Builder::new()
            .name("qim-udp-recv".into())
            .spawn(move || {
                rt.block_on(async move {
                    // No driver: the endpoint was never made.
                    if let Ok(driver) = rx.await {
                        driver.await;
                    }
                });
            })?;
        Ok(Arc::new(Self {
            io,
            driver: Mutex::new(Some(tx)),
        }))
    }
}

impl Runtime for EndpointRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // quinn's first spawn is the endpoint driver (`Endpoint::new`);
        // later ones are connection drivers, made on the gateway's runtime.
        let driver = self
            .driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let future = match driver {
            Some(tx) => match tx.send(future) {
                Ok(()) => return,
                // The thread is gone (it could only have panicked): run
                // the driver with the rest.
                Err(future) => future,
            },
            None => future,
        };
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // Registered on the receive thread's reactor: readiness wakes that
        // thread, not a busy worker of the gateway's runtime.
        let _io = self.io.enter();
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}
