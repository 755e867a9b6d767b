//! A session's stream tasks: each client stream's preamble read, then
//! the stream served (chat, delivery acks, rpc, media), or the heartbeat
//! stream handed to the session's own task.

use std::sync::Arc;

use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::transport::{Connection, RecvStream, SendStream};
use qim_proto::v1::{self, ErrorCode};

use super::Session;
use crate::ctx::Ctx;
use crate::fault::{Fault, StreamEnd};
use crate::heartbeat::Heartbeat;
use crate::rpc::{Caller, dispatch};

/// How a stream task ended.
pub(super) enum Ended {
    Stream(StreamEnd),
    /// The stream is the client's heartbeat stream: the session serves it.
    Heartbeat(Box<Heartbeat>),
}

impl From<StreamEnd> for Ended {
    fn from(end: StreamEnd) -> Self {
        Ended::Stream(end)
    }
}

/// What each stream task of a session needs.
#[derive(Clone)]
pub(super) struct Streams {
    pub(super) conn: Connection,
    pub(super) ctx: Arc<Ctx>,
    pub(super) session: Arc<Session>,
    /// Upload and download streams the session may still open.
    pub(super) media_streams: Arc<tokio::sync::Semaphore>,
}

impl Streams {
    fn max_frame(&self) -> usize {
        self.ctx.config.limits.max_frame_bytes as usize
    }

    pub(super) async fn bidi(self, send: SendStream, mut recv: RecvStream) -> Ended {
        let kind = match read_preamble(&mut recv).await {
            Ok(kind) => kind,
            Err(e) => return StreamEnd::from(Fault::from_recv(e)).into(),
        };
        let max = self.max_frame();
        match kind {
            StreamKind::Heartbeat => Ended::Heartbeat(Box::new(Heartbeat::new(
                FramedSend::without_preamble(send, max),
                FramedRecv::new(recv, max),
            ))),
            StreamKind::Rpc => {
                let send = FramedSend::without_preamble(send, max);
                // Boxed: the rpc handlers make a future of kilobytes,
                // which every stream task would otherwise carry while it
                // reads a preamble.
                Box::pin(self.rpc(send, FramedRecv::new(recv, max)))
                    .await
                    .into()
            }
            StreamKind::Upload | StreamKind::Download => {
                Box::pin(self.media(kind, send, recv)).await.into()
            }
            other => StreamEnd::Fault(Fault::detailed(
                ErrorCode::ProtocolViolation,
                "not a stream a client opens as bidirectional",
                format_args!("{other:?}"),
            ))
            .into(),
        }
    }

    pub(super) async fn uni(self, mut recv: RecvStream) -> StreamEnd {
        let kind = match read_preamble(&mut recv).await {
            Ok(kind) => kind,
            Err(e) => return Fault::from_recv(e).into(),
        };
        let recv = FramedRecv::new(recv, self.max_frame());
        match kind {
            StreamKind::Chat => {
                let stream = crate::chat::ChatStream {
                    ctx: &self.ctx,
                    user: &self.session.user,
                    device: &self.session.device,
                    sends: &self.session.sends,
                    first_attempts: &self.session.first_attempts,
                    acks: &self.session.server_acks,
                    path: &self.session.path,
                    conn: &self.conn,
                };
                stream.serve(recv).await
            }
            StreamKind::Ack => self.delivery_acks(recv).await,
            other => StreamEnd::Fault(Fault::detailed(
                ErrorCode::ProtocolViolation,
                "not a stream a client opens as unidirectional",
                format_args!("{other:?}"),
            )),
        }
    }

    /// An upload or download stream, below chat in priority, within the
    /// session's media stream limit (beyond it the stream is reset with
    /// RATE_LIMITED).
    async fn media(self, kind: StreamKind, mut send: SendStream, recv: RecvStream) -> StreamEnd {
        let Ok(_permit) = Arc::clone(&self.media_streams).try_acquire_owned() else {
            send.reset(ErrorCode::RateLimited);
            return StreamEnd::Done;
        };
        send.set_priority(crate::media::PRIORITY);
        let max = self.max_frame();
        let send = FramedSend::without_preamble(send, max);
        let recv = FramedRecv::new(recv, max);
        let user = &self.session.user;
        let fault = if kind == StreamKind::Upload {
            crate::media::serve_upload(&self.ctx, user, send, recv).await
        } else {
            crate::media::serve_download(&self.ctx, user, send, recv).await
        };
        fault.into()
    }

    /// Counts a migration or fallback when the client's address changed.
    pub(super) fn note_address(&self) {
        let s = &self.session;
        s.path
            .note(&self.conn, &self.ctx.metrics, &s.user, &s.device);
    }

    async fn delivery_acks(self, mut recv: FramedRecv) -> StreamEnd {
        loop {
            match recv.next::<v1::DeliveryAck>().await {
                Ok(Some(ack)) => {
                    self.note_address();
                    if self
                        .session
                        .delivery_acks
                        .send(Box::new(ack))
                        .await
                        .is_err()
                    {
                        return StreamEnd::Done;
                    }
                }
                Ok(None) => return StreamEnd::Done,
                Err(e) => return Fault::from_recv(e).into(),
            }
        }
    }

    async fn rpc(self, mut send: FramedSend, mut recv: FramedRecv) -> StreamEnd {
        let request = match recv.next::<v1::RpcRequest>().await {
            Ok(Some(request)) => request,
            Ok(None) => return StreamEnd::Done,
            Err(e) => return Fault::from_recv(e).into(),
        };
        if let Err(fault) = self.session.request_allowed() {
            return StreamEnd::Fault(fault);
        }
        let caller = Caller {
            user: &self.session.user,
            device: &self.session.device,
            session_id: self.session.id,
        };
        let kind = dispatch(&self.ctx, &caller, request).await;
        if send
            .send(&v1::RpcResponse { kind: Some(kind) })
            .await
            .is_ok()
        {
            send.finish();
        }
        StreamEnd::Done
    }
}
