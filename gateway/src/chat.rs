//! A session's chat streams and its ack stream: sends read in order, under
//! the session's send rate and a bound on what is read ahead of the store,
//! stored in batches (`post`), and their acks written back.
//!
//! # Invariants
//! - One chat stream holds at most `limits.max_inflight_sends` sends and
//!   `limits.chat_backlog_bytes` (plus one frame) read and not yet stored;
//!   beyond it the stream is not read, so QUIC flow control holds the
//!   client back.
//! - A session over `limits.sends_per_second` is slowed, not refused, so
//!   its messages keep their order.
//! - No send is stored after an earlier send of the same stream that was
//!   refused as retryable, until that one comes again (`order`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::v1::{self, ErrorCode};
use tokio::time::Instant;
use tracing::warn;

use crate::ctx::Ctx;
use crate::fault::{Fault, StreamEnd};
use crate::limit::Bucket;
use crate::mutex::lock;
use crate::order::OrderHold;
use crate::path::PathWatch;
use crate::post::{Sender, post_sends};
use crate::queue::{self, Queue};

/// One chat stream of a session, and what it shares with the session.
pub(crate) struct ChatStream<'a> {
    pub(crate) ctx: &'a Arc<Ctx>,
    pub(crate) user: &'a str,
    pub(crate) device: &'a str,
    /// The session's send rate, shared by its chat streams.
    pub(crate) sends: &'a Mutex<Bucket>,
    /// Whether the session's `Send.first_attempt` flags are believed.
    pub(crate) first_attempts: &'a std::sync::atomic::AtomicBool,
    /// To the session's ack stream.
    pub(crate) acks: &'a Queue<Box<v1::ServerAck>>,
    /// Where the client's address is watched (migrations), with the
    /// connection it is read from.
    pub(crate) path: &'a Arc<PathWatch>,
    pub(crate) conn: &'a qim_proto::transport::Connection,
}

impl ChatStream<'_> {
    /// Reads, stores and acknowledges sends until the stream ends.
    pub(crate) async fn serve(self, mut recv: FramedRecv) -> StreamEnd {
        let max_batch = self.ctx.config.limits.max_inflight_sends as usize;
        let max_bytes = self.ctx.config.limits.chat_backlog_bytes as usize;
        // Sends read but not yet stored, in order; at most `max_batch` of
        // them and `max_bytes` (plus one frame) of them.
        let mut backlog = Backlog::new(self.ctx.metrics.chat_backlog_bytes.clone());
        let mut throttled = false;
        let mut hold = OrderHold::default();
        loop {
            if backlog.sends.is_empty() {
                match recv.next::<v1::Send>().await {
                    Ok(Some(send)) => {
                        self.path
                            .note(self.conn, &self.ctx.metrics, self.user, self.device);
                        backlog.push(send);
                    }
                    Ok(None) => return StreamEnd::Done,
                    Err(e) => return Fault::from_recv(e).into(),
                }
            }
            let arrived = Instant::now();
            // Beyond the bounds the stream is not read: QUIC flow control
            // then holds the client back.
            while backlog.sends.len() < max_batch && backlog.bytes < max_bytes {
                match recv.try_next::<v1::Send>() {
                    Ok(Some(send)) => backlog.push(send),
                    Ok(None) => break,
                    Err(e) => return Fault::from_recv(e).into(),
                }
            }
            // Over the send rate, wait instead of refusing: refusals would
            // be retried after later sends and break the sender's order.
            // While this stream waits, QUIC flow control holds the client.
            let allowed = lock(self.sends).take_up_to(backlog.sends.len(), Instant::now());
            if allowed == 0 {
                if !throttled {
                    warn!(user = %self.user, device = %self.device, "sending faster than limits.sends_per_second; slowing the chat stream");
                    throttled = true;
                }
                self.ctx.metrics.sends_throttled.inc();
                let wait = lock(self.sends).wait(Instant::now());
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                continue;
            }
            throttled = false;
            let (sends, bytes) = backlog.take(allowed);
            // Boxed so an idle chat stream does not carry the store's
            // future (one allocation per batch, not per message).
            let sender = Sender {
                user: self.user,
                device: self.device,
                first_attempts: Some(self.first_attempts),
            };
            let acks = Box::pin(post_sends(self.ctx, &sender, sends, &mut hold)).await;
            backlog.stored(bytes);
            for ack in acks {
                if self.acks.send(Box::new(ack)).await.is_err() {
                    return StreamEnd::Done;
                }
            }
            self.ctx
                .metrics
                .ack_latency
                .observe(arrived.elapsed().as_secs_f64());
        }
    }
}

/// Writes SendAck/SendNack frames from every chat stream of the session,
/// batching what is waiting into one write.
/// (Not an `async fn`, which would keep its arguments twice for the
/// session's life.)
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
pub(crate) fn write_server_acks(
    mut stream: FramedSend,
    rx: queue::Receiver<Box<v1::ServerAck>>,
) -> impl Future<Output = StreamEnd> + Send {
    async move {
        loop {
            let mut next = Some(rx.recv().await);
            while let Some(ack) = next {
                if let Err(e) = stream.queue(&*ack) {
                    return StreamEnd::Fault(Fault::detailed(
                        ErrorCode::Internal,
                        "the server failed",
                        format_args!("encoding an ack: {e}"),
                    ));
                }
                next = rx.try_recv();
            }
            if let Err(e) = stream.flush().await {
                // Without an ack stream the session cannot work: end it.
                return StreamEnd::Fault(Fault::gone(format!("ack stream: {e}")));
            }
        }
    }
}

/// The sends a chat stream read and has not stored yet, with their size,
/// which `qim_chat_backlog_bytes` adds up over all streams.
struct Backlog {
    sends: VecDeque<v1::Send>,
    /// Encoded bytes of the sends waiting and of the batch being stored.
    bytes: usize,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Backlog {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        Self {
            sends: VecDeque::new(),
            bytes: 0,
            gauge,
        }
    }

    fn push(&mut self, send: v1::Send) {
        let size = prost::Message::encoded_len(&send);
        self.bytes += size;
        self.gauge.inc_by(i64::try_from(size).unwrap_or(i64::MAX));
        self.sends.push_back(send);
    }

    /// The first `n` sends, to store, and their size (still counted until
    /// [`stored`](Backlog::stored)).
    fn take(&mut self, n: usize) -> (Vec<v1::Send>, usize) {
        let sends: Vec<v1::Send> = self.sends.drain(..n).collect();
        let bytes = sends.iter().map(prost::Message::encoded_len).sum();
        (sends, bytes)
    }

    /// `bytes` taken earlier are stored (or refused): no longer held.
    fn stored(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.gauge.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.gauge
            .dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}
