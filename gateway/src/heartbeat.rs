//! A session's heartbeat stream: the client's Pings, each answered with a
//! Pong. Served by the session's own task (a task per session for a
//! stream that carries a frame every half minute would cost every idle
//! session a task), so everything here is cancel-safe: the session polls
//! [`next`] in its `select!` and drops it whenever another branch wins.

use qim_proto::io::{FramedRecv, FramedSend, RecvError};
use qim_proto::v1;

/// The heartbeat stream's two halves.
pub(crate) struct Heartbeat {
    send: FramedSend,
    recv: FramedRecv,
}

impl Heartbeat {
    pub(crate) fn new(send: FramedSend, recv: FramedRecv) -> Self {
        Self { send, recv }
    }

    /// Queues the Pong that answers `ping`, written by the next [`next`].
    pub(crate) fn answer(&mut self, ping: &v1::Ping) {
        let pong = v1::Pong {
            n: ping.n,
            sent_at_ms: ping.sent_at_ms,
            server_time_ms: qim_proto::now_ms(),
        };
        // A Pong is a few bytes, far below any frame limit.
        let _ = self.send.queue(&pong);
    }
}

/// What the heartbeat stream brought.
pub(crate) enum Beat {
    /// The client's next Ping.
    Ping(v1::Ping),
    /// The stream is over: finished by the client, or a Pong could not be
    /// written. The session goes on (its heartbeat deadline still runs).
    Ended,
    /// Reading failed.
    Failed(RecvError),
}

/// Writes the Pongs queued, then waits for the next Ping; never resolves
/// while the session has no heartbeat stream. Cancel-safe: a Pong written
/// in part is finished by the next call, and a frame read in part stays
/// in the stream's buffer.
pub(crate) async fn next(heartbeat: &mut Option<Box<Heartbeat>>) -> Beat {
    let Some(hb) = heartbeat.as_mut() else {
        return std::future::pending().await;
    };
    if hb.send.flush().await.is_err() {
        return Beat::Ended;
    }
    match hb.recv.next::<v1::Ping>().await {
        Ok(Some(ping)) => Beat::Ping(ping),
        Ok(None) => Beat::Ended,
        Err(e) => Beat::Failed(e),
    }
}
