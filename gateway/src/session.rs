//! One client connection: login on the control stream, then its streams
//! (heartbeat, chat, ack, rpc) until it ends.
//!
//! The connection task owns the session. It accepts the client's streams and
//! runs each in a task of its own (a slow rpc never blocks chat), watches the
//! heartbeat deadline, and ends the session on a kick, a protocol fault, a
//! missed heartbeat or the drain deadline, always with a typed close code.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use qim_proto::io::{FramedRecv, FramedSend, RecvError, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, client_control};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::unix_now;
use crate::ctx::Ctx;
use crate::deadline::sleep_until_opt;
use crate::delivery::Delivery;
use crate::limit::Bucket;
use crate::mutex::lock;
use crate::path::PathWatch;
use crate::post::{Sender, post_sends};
use crate::presence;
use crate::push;
use crate::rpc::{Caller, dispatch};

/// Why a connection is closed by the server: a code for the client and a
/// reason for the log.
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) code: ErrorCode,
    pub(crate) reason: String,
}

impl Fault {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The connection is gone or the client left: the session ends
    /// without blame (`NO_ERROR`).
    fn gone(reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::NoError, reason)
    }

    /// A read failure: the peer's fault has a code; a lost transport ends the
    /// session quietly (`None`).
    fn from_recv(e: RecvError) -> Option<Self> {
        e.code().map(|code| Fault::new(code, e.to_string()))
    }
}

/// How a stream task ended.
enum StreamEnd {
    /// The stream is done; the session goes on.
    Done,
    /// The client said Bye on the control stream.
    Bye,
    /// The session must end with this fault.
    Fault(Fault),
}

impl From<Option<Fault>> for StreamEnd {
    fn from(f: Option<Fault>) -> Self {
        f.map_or(StreamEnd::Done, StreamEnd::Fault)
    }
}

/// What a logged-in session knows about itself.
pub(crate) struct Session {
    pub(crate) user: String,
    pub(crate) device: String,
    /// This node's id of the session.
    pub(crate) id: u64,
    /// The client's address as last seen: migrations and fallbacks.
    path: Arc<PathWatch>,
    /// Milliseconds since `started` of the last Ping.
    last_beat_ms: AtomicU64,
    /// The interval the client announced with its last Ping, clamped.
    beat_interval_ms: AtomicU64,
    started: Instant,
    /// Sends allowed, shared by the session's chat streams.
    sends: Mutex<Bucket>,
    /// Pings and rpc requests allowed.
    requests: Mutex<Bucket>,
}

impl Session {
    fn beat(&self, announced_ms: u32, ctx: &Ctx) {
        let hb = &ctx.config.heartbeat;
        let interval = if announced_ms == 0 {
            hb.interval_ms
        } else {
            announced_ms.clamp(hb.min_interval_ms, max_interval_ms(ctx))
        };
        self.beat_interval_ms
            .store(u64::from(interval), Ordering::Relaxed);
        let since = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.store(since, Ordering::Relaxed);
    }

    /// Takes a request token; a flood ends the session.
    fn request_allowed(&self) -> Result<(), Fault> {
        if lock(&self.requests).take(Instant::now()) {
            Ok(())
        } else {
            Err(Fault::new(
                ErrorCode::RateLimited,
                "pings or rpc requests above limits.requests_per_second",
            ))
        }
    }

    /// When the session is closed if no Ping arrives first.
    fn heartbeat_deadline(&self, max_missed: u32) -> Instant {
        let last = self.last_beat_ms.load(Ordering::Relaxed);
        let interval = self.beat_interval_ms.load(Ordering::Relaxed);
        self.started + Duration::from_millis(last + interval * u64::from(max_missed))
    }
}

/// The longest heartbeat interval a client may use: the configured one,
/// but below the QUIC idle timeout (a connection idle that long is gone,
/// however patient the heartbeat), and never below the suggested one.
fn max_interval_ms(ctx: &Ctx) -> u32 {
    let hb = &ctx.config.heartbeat;
    let idle = u32::try_from(ctx.config.quic.idle_timeout_ms / 10 * 9).unwrap_or(u32::MAX);
    hb.max_interval_ms.min(idle).max(hb.interval_ms)
}

/// Closes `conn` with a fault, logging and counting it.
fn close(ctx: &Ctx, conn: &quinn::Connection, user: &str, fault: &Fault) {
    if matches!(fault.code, ErrorCode::NoError | ErrorCode::ShuttingDown) {
        debug!(user, code = ?fault.code, reason = %fault.reason, "closing connection");
    } else {
        warn!(user, remote = %conn.remote_address(), code = ?fault.code, reason = %fault.reason, "closing connection");
        ctx.metrics.protocol_error(fault.code);
    }
    conn.close(fault.code.to_quic().into(), fault.reason.as_bytes());
}

/// Serves one incoming connection from handshake to close.
///
/// 0-RTT: the connection is served as 0.5-RTT, so a resuming client's
/// Hello sent as early data is answered before the handshake completes
/// (one round trip saved on reconnect). Only the login is served early:
/// [`run`] waits for the handshake before it accepts any other client
/// stream, so sends, acks and rpc requests are never taken from
/// replayable early data. The Hello itself is safe early: logging a
/// device in twice is idempotent, and the session tickets are single-use
/// (see `tls`), so a replayed first flight gets its early data refused.
///
/// `incoming` comes boxed: the future keeps room for its arguments for its
/// whole life, and a `quinn::Incoming` is large.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    incoming: Box<quinn::Incoming>,
    _permit: OwnedSemaphorePermit,
) {
    let connecting = match (*incoming).accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return;
        }
    };
    let (conn, handshake) = match connecting.into_0rtt() {
        Ok((conn, handshake)) => (conn, Some(handshake)),
        Err(connecting) => match connecting.await {
            Ok(conn) => (conn, None),
            Err(e) => {
                debug!(error = %e, "handshake failed");
                return;
            }
        },
    };
    ctx.metrics.connections.inc();
    ctx.metrics.connections_open.inc();
    let login = tokio::time::timeout(
        Duration::from_millis(ctx.config.auth.login_timeout_ms),
        login(&ctx, &conn),
    )
    .await
    .unwrap_or_else(|_| Err(Fault::new(ErrorCode::LoginTimeout, "no Hello in time").into()));
    match login {
        Ok(login) => run(&ctx, &conn, login, handshake).await,
        Err(LoginFailure { fault, control }) => {
            if let Some(mut control) = control {
                ctx.metrics.login_refused(fault.code);
                let refusal = v1::ServerControl {
                    kind: Some(v1::server_control::Kind::Refusal(v1::Refusal {
                        code: fault.code as i32,
                        message: fault.reason.clone(),
                        retry_after_ms: 0,
                    })),
                };
                if control.send(&refusal).await.is_ok() {
                    control.finish();
                    // Closing discards unsent stream data: give the Refusal
                    // a moment to be acknowledged first.
                    let _ = tokio::time::timeout(Duration::from_secs(1), control.stopped()).await;
                }
            }
            close(&ctx, &conn, "", &fault);
        }
    }
    ctx.metrics.connections_open.dec();
}

struct Login {
    user: String,
    device: String,
    platform: i32,
    resume_from: u64,
    control_send: FramedSend,
    control_recv: FramedRecv,
}

struct LoginFailure {
    fault: Fault,
    /// Where to send a Refusal, when the control stream got that far.
    control: Option<FramedSend>,
}

impl From<Fault> for LoginFailure {
    fn from(fault: Fault) -> Self {
        Self {
            fault,
            control: None,
        }
    }
}

async fn login(ctx: &Ctx, conn: &quinn::Connection) -> Result<Login, LoginFailure> {
    let max_frame = ctx.config.limits.max_frame_bytes as usize;
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Fault::gone(format!("closed before login: {e}")))?;
    let kind = read_preamble(&mut recv)
        .await
        .map_err(|e| Fault::from_recv(e).unwrap_or_else(|| Fault::gone("closed during login")))?;
    if kind != StreamKind::Control {
        return Err(Fault::new(
            ErrorCode::ProtocolViolation,
            format!("first stream is {kind:?}, not Control"),
        )
        .into());
    }
    let control_send = FramedSend::without_preamble(send, max_frame);
    let mut control_recv = FramedRecv::new(recv, max_frame);
    let refuse = |fault: Fault, control: FramedSend| LoginFailure {
        fault,
        control: Some(control),
    };
    let hello = match control_recv.next::<v1::ClientControl>().await {
        Ok(Some(v1::ClientControl {
            kind: Some(client_control::Kind::Hello(hello)),
        })) => hello,
        Ok(_) => {
            return Err(refuse(
                Fault::new(ErrorCode::ProtocolViolation, "expected Hello"),
                control_send,
            ));
        }
        Err(e) => {
            let fault = Fault::from_recv(e).unwrap_or_else(|| Fault::gone("closed during login"));
            return Err(refuse(fault, control_send));
        }
    };
    let claims = match ctx.tokens.verify(&hello.token, unix_now()) {
        Ok(claims) => claims,
        Err(e) => return Err(refuse(Fault::new(e.code(), e.to_string()), control_send)),
    };
    if !qim_proto::ids::is_valid_id(&hello.device_id) {
        return Err(refuse(
            Fault::new(
                ErrorCode::InvalidArgument,
                "device_id must be 1-64 of [A-Za-z0-9._@-]",
            ),
            control_send,
        ));
    }
    Ok(Login {
        user: claims.user_id,
        device: hello.device_id,
        platform: hello.platform,
        resume_from: hello.resume_from,
        control_send,
        control_recv,
    })
}

async fn run(
    ctx: &Arc<Ctx>,
    conn: &quinn::Connection,
    login: Login,
    handshake: Option<quinn::ZeroRttAccepted>,
) {
    let Login {
        user,
        device,
        platform,
        resume_from,
        mut control_send,
        control_recv,
    } = login;
    let max_frame = ctx.config.limits.max_frame_bytes as usize;
    let session_id = ctx.next_session_id();
    let policy = crate::route::DevicePolicy::parse(&ctx.config.im.device_policy)
        .unwrap_or(crate::route::DevicePolicy::Unlimited);
    let class = crate::route::platform_class(platform);
    let (feed, mut kicked) = ctx
        .routes
        .attach_with_policy(&user, &device, session_id, class, policy);
    // Before the head is read: a message committed after this route is
    // visible is handed here; one committed before is in the head.
    // The one-off calls around the session's life are boxed (here and
    // below): a future's size is that of its largest await point, and the
    // store and cluster calls are kilobytes each, which every idle session
    // would otherwise carry for its whole life.
    let came_online = match &ctx.cluster {
        Some(cluster) => Box::pin(cluster.attach(&user, &device, session_id, class, policy)).await,
        None => false,
    };
    ctx.metrics.sessions_open.inc();
    let session = Arc::new(Session {
        user: user.clone(),
        device: device.clone(),
        id: session_id,
        path: Arc::new(PathWatch::new(conn.remote_address())),
        last_beat_ms: AtomicU64::new(0),
        beat_interval_ms: AtomicU64::new(u64::from(ctx.config.heartbeat.interval_ms)),
        started: Instant::now(),
        sends: Mutex::new(Bucket::new(
            ctx.config.limits.sends_per_second,
            ctx.config.limits.sends_burst,
            Instant::now(),
        )),
        requests: Mutex::new(Bucket::new(
            ctx.config.limits.requests_per_second,
            ctx.config.limits.requests_burst,
            Instant::now(),
        )),
    });

    // Outlives the session body: the connection is closed (with its code)
    // before the streams are dropped, which would finish them first and let
    // the client take the end for a network failure.
    let mut tasks: JoinSet<StreamEnd> = JoinSet::new();
    // The session's place in the push registry, once it has one.
    let mut registered: Option<push::Registration> = None;
    let started_ms = qim_proto::now_ms();
    let outcome: Result<(), Fault> = async {
        let registered = &mut registered;
        // Reading the head after attaching: anything stored before is read
        // here, anything after is published to the feed.
        let head = Box::pin(ctx.stores.messages.inbox_head(&user)).await.map_err(|e| {
            Fault::new(ErrorCode::StoreUnavailable, format!("reading inbox head: {e}"))
        })?;
        feed.raise_head(head);
        let resume_from = resume_from.min(head);
        let hb = &ctx.config.heartbeat;
        let welcome = v1::ServerControl {
            kind: Some(v1::server_control::Kind::Welcome(v1::Welcome {
                user_id: user.clone(),
                session_id: format!("{}-{session_id}", ctx.node_tag),
                server_time_ms: qim_proto::now_ms(),
                heartbeat: Some(v1::HeartbeatPolicy {
                    interval_ms: hb.interval_ms,
                    min_interval_ms: hb.min_interval_ms,
                    max_interval_ms: max_interval_ms(ctx),
                    max_missed: hb.max_missed,
                }),
                limits: Some(v1::Limits {
                    max_frame_bytes: ctx.config.limits.max_frame_bytes,
                    max_body_bytes: ctx.config.limits.max_body_bytes,
                    delivery_window: ctx.config.delivery.window,
                    max_inflight_sends: ctx.config.limits.max_inflight_sends,
                }),
                inbox_head: head,
                token_expires_ms: 0,
            })),
        };
        control_send
            .send(&welcome)
            .await
            .map_err(|e| Fault::gone(format!("sending Welcome: {e}")))?;
        info!(user = %user, device = %device, session_id, resume_from, head, "session started");

        let open = |kind| {
            let conn = conn.clone();
            async move {
                let fault = |e: &dyn std::fmt::Display| {
                    Fault::gone(format!("opening {kind:?}: {e}"))
                };
                let stream = conn.open_uni().await.map_err(|e| fault(&e))?;
                let mut stream = FramedSend::new(stream, kind, max_frame);
                // Send the preamble now: a QUIC stream reaches the peer only
                // with data, and the client identifies streams by it.
                stream.flush().await.map_err(|e| fault(&e))?;
                Ok(stream)
            }
        };
        let ack_stream = open(StreamKind::Ack).await?;
        let delivery_stream = open(StreamKind::Delivery).await?;

        // Channel items are boxed: a tokio channel allocates its first
        // block of 32 slots up front, and most sessions are idle (32
        // pointers instead of 32 acks per channel and session).
        let (acks_tx, acks_rx) = mpsc::channel(64);
        let (server_acks_tx, server_acks_rx) = mpsc::channel(1024);
        tasks.spawn(write_server_acks(ack_stream, server_acks_rx));
        let delivery = Delivery {
            ctx: Arc::clone(ctx),
            feed: Arc::clone(&feed),
            user: user.clone(),
            device: device.clone(),
            stream: delivery_stream,
            acks: acks_rx,
            next: resume_from + 1,
            receipts_tail: None,
        };
        // `map`, not `async move { f.await }`: a wrapping block keeps its
        // captured future and the awaited one side by side (twice the size
        // for the whole session).
        tasks.spawn(delivery.run().map(|ended| match ended {
            Ok(()) => StreamEnd::Done,
            Err(e) => {
                debug!(error = %e, "delivery ended");
                StreamEnd::Fault(Fault::gone(e.to_string()))
            }
        }));
        tasks.spawn(read_control(control_recv));
        let writer = push::Writer {
            conn: conn.clone(),
            max_frame,
            store: Arc::clone(&ctx.stores.messages),
            groups: Arc::clone(&ctx.stores.groups),
            metrics: Arc::clone(&ctx.metrics),
        };
        let (registration, first, pushes) = ctx.push.attach(session_id, &user, writer);
        *registered = Some(registration);
        tasks.spawn(pushes.map(|()| StreamEnd::Done));
        Box::pin(presence::session_started(ctx, &user, &device, started_ms, first, came_online)).await;

        // Nothing but the Hello is taken from early data (see `serve`).
        if let Some(handshake) = handshake {
            // Resolves when the handshake completed (its value says whether
            // early data was accepted) or failed.
            let _ = handshake.await;
            if let Some(reason) = conn.close_reason() {
                return Err(Fault::gone(format!("handshake failed: {reason}")));
            }
        }
        let streams = Streams {
            conn: conn.clone(),
            ctx: Arc::clone(ctx),
            session: Arc::clone(&session),
            delivery_acks: acks_tx,
            server_acks: server_acks_tx,
        };
        let mut draining = ctx.draining.subscribe();
        // A session that logs in while the gateway already drains must see it.
        draining.mark_changed();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let beat_deadline = session.heartbeat_deadline(ctx.config.heartbeat.max_missed);
            tokio::select! {
                bi = conn.accept_bi() => match bi {
                    Ok((send, recv)) => { tasks.spawn(streams.clone().bidi(send, recv)); }
                    Err(e) => return Err(Fault::gone(e.to_string())),
                },
                uni = conn.accept_uni() => match uni {
                    Ok(recv) => { tasks.spawn(streams.clone().uni(recv)); }
                    Err(e) => return Err(Fault::gone(e.to_string())),
                },
                Some(ended) = tasks.join_next() => match ended {
                    Ok(StreamEnd::Done) => {}
                    Ok(StreamEnd::Bye) => return Err(Fault::gone("client said bye")),
                    Ok(StreamEnd::Fault(fault)) => return Err(fault),
                    Err(e) => return Err(Fault::new(ErrorCode::Internal, format!("stream task failed: {e}"))),
                },
                () = tokio::time::sleep_until(beat_deadline) => {
                    if session.heartbeat_deadline(ctx.config.heartbeat.max_missed) <= Instant::now() {
                        ctx.metrics.heartbeat_timeouts.inc();
                        return Err(Fault::new(ErrorCode::HeartbeatTimeout, "missed heartbeats"));
                    }
                }
                code = &mut kicked => {
                    let code = code.unwrap_or(ErrorCode::Kicked);
                    let reason = match code {
                        ErrorCode::Replaced => "this device logged in again",
                        ErrorCode::Kicked => "another device logged in (im.device_policy)",
                        _ => "session ended by the server",
                    };
                    return Err(Fault::new(code, reason));
                }
                changed = draining.changed(), if drain_deadline.is_none() => {
                    if changed.is_ok() && *draining.borrow() {
                        let within = ctx.config.shutdown.reconnect_within_ms;
                        let go_away = v1::ServerControl {
                            kind: Some(v1::server_control::Kind::GoAway(v1::GoAway {
                                code: ErrorCode::ShuttingDown as i32,
                                message: "server is shutting down".into(),
                                reconnect_within_ms: within,
                                redirect: String::new(),
                            })),
                        };
                        let _ = control_send.send(&go_away).await;
                        drain_deadline = Some(Instant::now() + Duration::from_millis(ctx.config.shutdown.drain_ms));
                    }
                }
                () = sleep_until_opt(drain_deadline) => {
                    return Err(Fault::new(ErrorCode::ShuttingDown, "drain deadline"));
                }
            }
        }
    }
    .await;

    if let Err(fault) = outcome {
        close(ctx, conn, &user, &fault);
    }
    drop(tasks);
    let last = registered.map(push::Registration::end);
    ctx.routes.detach(&user, session_id);
    let went_offline = match &ctx.cluster {
        Some(cluster) => Box::pin(cluster.detach(&user, &device, session_id)).await,
        None => false,
    };
    if let Some(last) = last {
        Box::pin(presence::session_ended(
            ctx,
            &user,
            &device,
            started_ms,
            last,
            went_offline,
        ))
        .await;
    }
    ctx.metrics.sessions_open.dec();
    info!(user = %user, device = %device, session_id, "session ended");
}

async fn read_control(mut control: FramedRecv) -> StreamEnd {
    match control.next::<v1::ClientControl>().await {
        Ok(Some(v1::ClientControl {
            kind: Some(client_control::Kind::Bye(_)),
        })) => StreamEnd::Bye,
        Ok(Some(_)) => StreamEnd::Fault(Fault::new(
            ErrorCode::ProtocolViolation,
            "only Bye may follow Hello",
        )),
        // The client finished its side of the control stream; it may still
        // use the others.
        Ok(None) => StreamEnd::Done,
        Err(e) => {
            debug!(error = %e, "control stream ended");
            Fault::from_recv(e).into()
        }
    }
}

/// Writes SendAck/SendNack frames from every chat stream of the session,
/// batching what is waiting into one write.
async fn write_server_acks(
    mut stream: FramedSend,
    mut rx: mpsc::Receiver<Box<v1::ServerAck>>,
) -> StreamEnd {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(ack) = next {
            if let Err(e) = stream.queue(&*ack) {
                return StreamEnd::Fault(Fault::new(ErrorCode::Internal, e.to_string()));
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = stream.flush().await {
            // Without an ack stream the session cannot work: end it.
            return StreamEnd::Fault(Fault::gone(format!("ack stream: {e}")));
        }
    }
    StreamEnd::Done
}

/// What each stream task of a session needs.
#[derive(Clone)]
struct Streams {
    conn: quinn::Connection,
    ctx: Arc<Ctx>,
    session: Arc<Session>,
    delivery_acks: mpsc::Sender<Box<v1::DeliveryAck>>,
    server_acks: mpsc::Sender<Box<v1::ServerAck>>,
}

impl Streams {
    fn max_frame(&self) -> usize {
        self.ctx.config.limits.max_frame_bytes as usize
    }

    async fn bidi(self, send: quinn::SendStream, mut recv: quinn::RecvStream) -> StreamEnd {
        let kind = match read_preamble(&mut recv).await {
            Ok(kind) => kind,
            Err(e) => return Fault::from_recv(e).into(),
        };
        let max = self.max_frame();
        match kind {
            StreamKind::Heartbeat => {
                let send = FramedSend::without_preamble(send, max);
                self.heartbeat(send, FramedRecv::new(recv, max)).await
            }
            StreamKind::Rpc => {
                let send = FramedSend::without_preamble(send, max);
                // Boxed: the rpc handlers make a future of kilobytes, and
                // this task also serves the heartbeat stream, which lives
                // as long as the session.
                Box::pin(self.rpc(send, FramedRecv::new(recv, max))).await
            }
            other => StreamEnd::Fault(Fault::new(
                ErrorCode::ProtocolViolation,
                format!("{other:?} is not a client bidi stream"),
            )),
        }
    }

    async fn uni(self, mut recv: quinn::RecvStream) -> StreamEnd {
        let kind = match read_preamble(&mut recv).await {
            Ok(kind) => kind,
            Err(e) => return Fault::from_recv(e).into(),
        };
        let recv = FramedRecv::new(recv, self.max_frame());
        match kind {
            StreamKind::Chat => self.chat(recv).await,
            StreamKind::Ack => self.delivery_acks(recv).await,
            other => StreamEnd::Fault(Fault::new(
                ErrorCode::ProtocolViolation,
                format!("{other:?} is not a client uni stream"),
            )),
        }
    }

    async fn heartbeat(self, mut send: FramedSend, mut recv: FramedRecv) -> StreamEnd {
        loop {
            match recv.next::<v1::Ping>().await {
                Ok(Some(ping)) => {
                    if let Err(fault) = self.session.request_allowed() {
                        return StreamEnd::Fault(fault);
                    }
                    self.session.beat(ping.next_within_ms, &self.ctx);
                    self.note_address();
                    let pong = v1::Pong {
                        n: ping.n,
                        sent_at_ms: ping.sent_at_ms,
                        server_time_ms: qim_proto::now_ms(),
                    };
                    if send.send(&pong).await.is_err() {
                        return StreamEnd::Done;
                    }
                }
                Ok(None) => return StreamEnd::Done,
                Err(e) => return Fault::from_recv(e).into(),
            }
        }
    }

    /// Counts a migration or fallback when the client's address changed.
    fn note_address(&self) {
        let s = &self.session;
        s.path
            .note(&self.conn, &self.ctx.metrics, &s.user, &s.device);
    }

    async fn delivery_acks(self, mut recv: FramedRecv) -> StreamEnd {
        loop {
            match recv.next::<v1::DeliveryAck>().await {
                Ok(Some(ack)) => {
                    self.note_address();
                    if self.delivery_acks.send(Box::new(ack)).await.is_err() {
                        return StreamEnd::Done;
                    }
                }
                Ok(None) => return StreamEnd::Done,
                Err(e) => return Fault::from_recv(e).into(),
            }
        }
    }

    async fn chat(self, mut recv: FramedRecv) -> StreamEnd {
        let max_batch = self.ctx.config.limits.max_inflight_sends as usize;
        // Sends read but not yet stored, in order; bounded by `max_batch`.
        let mut backlog: VecDeque<v1::Send> = VecDeque::new();
        let mut throttled = false;
        loop {
            if backlog.is_empty() {
                match recv.next::<v1::Send>().await {
                    Ok(Some(send)) => {
                        self.note_address();
                        backlog.push_back(send);
                    }
                    Ok(None) => return StreamEnd::Done,
                    Err(e) => return Fault::from_recv(e).into(),
                }
            }
            let arrived = Instant::now();
            while backlog.len() < max_batch {
                match recv.try_next::<v1::Send>() {
                    Ok(Some(send)) => backlog.push_back(send),
                    Ok(None) => break,
                    Err(e) => return Fault::from_recv(e).into(),
                }
            }
            // Over the send rate, wait instead of refusing: refusals would
            // be retried after later sends and break the sender's order.
            // While this stream waits, QUIC flow control holds the client.
            let allowed = lock(&self.session.sends).take_up_to(backlog.len(), Instant::now());
            if allowed == 0 {
                if !throttled {
                    warn!(user = %self.session.user, device = %self.session.device, "sending faster than limits.sends_per_second; slowing the chat stream");
                    throttled = true;
                }
                self.ctx.metrics.sends_throttled.inc();
                let wait = lock(&self.session.sends).wait(Instant::now());
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                continue;
            }
            throttled = false;
            let sends: Vec<v1::Send> = backlog.drain(..allowed).collect();
            // Boxed so an idle chat stream does not carry the store's
            // future (one allocation per batch, not per message).
            let sender = Sender {
                user: &self.session.user,
                device: &self.session.device,
            };
            for ack in Box::pin(post_sends(&self.ctx, &sender, sends)).await {
                if self.server_acks.send(Box::new(ack)).await.is_err() {
                    return StreamEnd::Done;
                }
            }
            self.ctx
                .metrics
                .ack_latency
                .observe(arrived.elapsed().as_secs_f64());
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
