//! One client connection: login on the control stream, then its streams
//! (heartbeat, chat, ack, rpc) until it ends.
//!
//! The connection task owns the session. It accepts the client's streams and
//! runs each in a task of its own (a slow rpc never blocks chat), polls the
//! session's own streams itself (ack writer, delivery, push writer, control
//! reader, and the heartbeat stream once a task read its preamble: a task
//! each would cost every idle session), watches the heartbeat deadline, and ends the session on a kick, a protocol fault, a
//! missed heartbeat or the drain deadline, always with a typed close code.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{Fuse, FusedFuture as _};
use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::transport::Connection;
use qim_proto::v1::{self, ErrorCode, client_control};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::Claims;
use crate::control::{self, ControlEnd, ControlEvent, expires_ms, refuse};
use crate::credential;
use crate::ctx::Ctx;
use crate::delivery::Delivery;
use crate::fault::{Fault, StreamEnd, contained};
use crate::heartbeat::{self, Beat, Heartbeat};

mod step;
mod streams;
use crate::limit::Bucket;
use crate::mutex::lock;
use crate::path::PathWatch;
use crate::presence;
use crate::push;
use crate::queue::{self, Holds, Queue};
use step::{Credentials, Step, after_select};
use streams::{Ended, Streams};

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
    /// Whether `Send.first_attempt` is believed (until it proves false).
    first_attempts: AtomicBool,
    /// The client's delivery acks, to the session's delivery. Items are
    /// boxed so that a queue's room, once grown, is a pointer per slot.
    delivery_acks: Queue<Box<v1::DeliveryAck>>,
    /// Send acks from every chat stream, to the session's ack writer.
    server_acks: Queue<Box<v1::ServerAck>>,
}

impl Holds<Box<v1::DeliveryAck>> for Session {
    fn queue(&self) -> &Queue<Box<v1::DeliveryAck>> {
        &self.delivery_acks
    }
}

impl Holds<Box<v1::ServerAck>> for Session {
    fn queue(&self) -> &Queue<Box<v1::ServerAck>> {
        &self.server_acks
    }
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
fn close(ctx: &Ctx, conn: &Connection, user: &str, fault: &Fault) {
    if matches!(fault.code, ErrorCode::NoError | ErrorCode::ShuttingDown) {
        debug!(user, code = ?fault.code, reason = %fault.reason, "closing connection");
    } else {
        warn!(user, remote = %conn.remote_address(), code = ?fault.code, reason = %fault.reason, "closing connection");
        ctx.metrics.protocol_error(fault.code);
    }
    conn.close(fault.code, fault.message.as_bytes());
}

/// Resolves when the connection's handshake completed (`true`) or failed;
/// shared between the `handshake` module, which bounds it, and
/// the session, which waits for it before taking any stream but the
/// control stream.
pub(crate) type Handshake =
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, bool>>;

/// Serves one connection from its first stream to close: login, then the
/// session.
///
/// 0-RTT: the connection is served as 0.5-RTT, so a resuming client's
/// Hello sent as early data is answered before the handshake completes
/// (one round trip saved on reconnect). Only the login is served early:
/// [`run`] waits for `handshake` before it accepts any other client
/// stream, so sends, acks and rpc requests are never taken from
/// replayable early data. The Hello itself is safe early: logging a
/// device in twice is idempotent, and the session tickets are single-use
/// (see `tls`), so a replayed first flight gets its early data refused.
pub(crate) async fn serve(ctx: &Arc<Ctx>, conn: &Connection, handshake: Handshake) {
    // The login's result ends with this block: as a local of the whole
    // function it would keep its room in the session's future for the
    // session's life, though `run` takes what it holds.
    let session = {
        let login = tokio::time::timeout(
            Duration::from_millis(ctx.config.auth.login_timeout_ms),
            login(ctx, conn),
        )
        .await
        .unwrap_or_else(|_| Err(Fault::new(ErrorCode::LoginTimeout, "no Hello in time").into()));
        match login {
            Ok(login) => run(ctx, conn, login, handshake),
            Err(LoginFailure { fault, control }) => {
                if let Some(mut control) = control {
                    ctx.metrics.login_refused(fault.code);
                    refuse(&mut control, &fault).await;
                }
                close(ctx, conn, "", &fault);
                return;
            }
        }
    };
    session.await;
}

struct Login {
    claims: Claims,
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
    control: Option<Box<FramedSend>>,
}

impl From<Fault> for LoginFailure {
    fn from(fault: Fault) -> Self {
        Self {
            fault,
            control: None,
        }
    }
}

async fn login(ctx: &Ctx, conn: &Connection) -> Result<Login, LoginFailure> {
    let max_frame = ctx.config.limits.max_frame_bytes as usize;
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Fault::gone(format!("closed before login: {e}")))?;
    let kind = read_preamble(&mut recv)
        .await
        .map_err(|e| Fault::from_recv(e).unwrap_or_else(|| Fault::gone("closed during login")))?;
    if kind != StreamKind::Control {
        return Err(Fault::detailed(
            ErrorCode::ProtocolViolation,
            "the first stream must be the control stream",
            format_args!("{kind:?}"),
        )
        .into());
    }
    let control_send = FramedSend::without_preamble(send, max_frame);
    let mut control_recv = FramedRecv::new(recv, max_frame);
    let refuse = |fault: Fault, control: FramedSend| LoginFailure {
        fault,
        control: Some(Box::new(control)),
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
    let claims = match credential::check(ctx, &hello.token).await {
        Ok(claims) => claims,
        Err(e) => return Err(refuse(control::token_fault(e), control_send)),
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
        user: claims.user_id.clone(),
        claims,
        device: hello.device_id,
        platform: hello.platform,
        resume_from: hello.resume_from,
        control_send,
        control_recv,
    })
}

/// The session after login, until it ends. Not an `async fn`: one keeps
/// its arguments twice (as passed and as its locals), and this future
/// lives as long as the session.
fn run<'a>(
    ctx: &'a Arc<Ctx>,
    conn: &'a Connection,
    login: Login,
    handshake: Handshake,
) -> impl Future<Output = ()> + Send + 'a {
    let Login {
        mut claims,
        user,
        device,
        platform,
        resume_from,
        mut control_send,
        control_recv,
    } = login;
    async move {
        let max_frame = ctx.config.limits.max_frame_bytes as usize;
        let session_id = ctx.next_session_id();
        let policy = crate::route::DevicePolicy::parse(&ctx.config.im.device_policy)
            .unwrap_or(crate::route::DevicePolicy::Unlimited);
        let class = crate::route::platform_class(platform);
        // When the session's current token was issued, for revocations.
        let issued_at = Arc::new(AtomicU64::new(claims.issued_at));
        let (feed, mut kicked) = ctx.routes.attach_with_policy(
            &user,
            &device,
            session_id,
            class,
            policy,
            Arc::clone(&issued_at),
        );
        // Before the head is read: a message committed after this route is
        // visible is handed here; one committed before is in the head.
        // The one-off calls around the session's life are boxed (here and
        // below): a future's size is that of its largest await point, and the
        // store and cluster calls are kilobytes each, which every idle session
        // would otherwise carry for its whole life.
        let came_online = match &ctx.cluster {
            Some(cluster) => {
                Box::pin(cluster.attach(&user, &device, session_id, class, policy)).await
            }
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
            first_attempts: AtomicBool::new(true),
            delivery_acks: Queue::new(64),
            server_acks: Queue::new(1024),
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
        let mut tasks: JoinSet<Ended> = JoinSet::new();
        // The client's heartbeat stream, served by this task once a stream
        // task read its preamble; dropped, like `tasks`, after the close.
        let mut beats: Option<Box<Heartbeat>> = None;
        // The session's own streams, polled by this task rather than spawned
        // (a task each would cost every idle session its header and a future
        // of its own): writing acks, delivering, writing pushes, reading the
        // control stream. Each lives pinned until it ends (no write is
        // dropped halfway), and, like `tasks`, past the close.
        let mut acks_writer = pin!(Fuse::terminated());
        let mut delivering = pin!(Fuse::terminated());
        let mut pushing = pin!(Fuse::terminated());
        let mut control_next = pin!(Fuse::terminated());
        // The session's place in the push registry, once it has one.
        let mut registered: Option<push::Registration> = None;
        let started_ms = qim_proto::now_ms();
        let outcome: Result<(), Fault> = async {
            let beats = &mut beats;
            // Up to the session's start, in a future of its own, boxed:
            // its steps are one-offs, and their states would otherwise
            // stay in the session's future (and shape its layout) for its
            // whole life.
            Box::pin(async {
                let registered = &mut registered;
                // After the route is written: a revocation either found the route
                // or wrote its mark before this read (see `credential`).
                Box::pin(credential::still_valid(ctx, &claims))
                    .await
                    .map_err(control::token_fault)?;
                // Reading the head after attaching: anything stored before is read
                // here, anything after is published to the feed.
                let head = Box::pin(ctx.stores.messages.inbox_head(&user)).await.map_err(|e| {
                    Fault::detailed(
                        ErrorCode::StoreUnavailable,
                        "the store is unavailable; reconnect later",
                        format_args!("reading the inbox head: {e}"),
                    )
                })?;
                feed.raise_head(head);
                let resume_from = resume_from.min(head);
                let hb = &ctx.config.heartbeat;
                // Queued in a block of its own, then written: a value whose
                // scope spans an await is kept in the session's future for its
                // whole life, even once moved or dropped.
                {
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
                            limits: Some(crate::media::welcome_limits(
                                ctx,
                                v1::Limits {
                                    max_frame_bytes: ctx.config.limits.max_frame_bytes,
                                    max_body_bytes: ctx.config.limits.max_body_bytes,
                                    delivery_window: ctx.config.delivery.window,
                                    max_inflight_sends: ctx.config.limits.max_inflight_sends,
                                    ..Default::default()
                                },
                            )),
                            inbox_head: head,
                            token_expires_ms: expires_ms(&claims),
                        })),
                    };
                    control_send.queue(&welcome).map_err(|e| {
                        Fault::detailed(ErrorCode::Internal, "the server failed", format_args!("encoding Welcome: {e}"))
                    })?;
                }
                control_send
                    .flush()
                    .await
                    .map_err(|e| Fault::gone(format!("sending Welcome: {e}")))?;
            // The control stream is quiet after login.
            control_send.release_buffer();
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
                // Boxed, like the other one-off steps (see above).
                let ack_stream = Box::pin(open(StreamKind::Ack)).await?;
                let delivery_stream = Box::pin(open(StreamKind::Delivery)).await?;

                // The session's queues (in the session: nothing allocated
                // until an item comes).
                let server_acks = queue::Receiver::new(Arc::clone(&session) as Arc<dyn Holds<Box<v1::ServerAck>>>);
                acks_writer.set(contained(crate::chat::write_server_acks(ack_stream, server_acks)).fuse());
                let delivery = Delivery {
                    ctx: Arc::clone(ctx),
                    feed: Arc::clone(&feed),
                    user: user.clone(),
                    device: device.clone(),
                    stream: delivery_stream,
                    acks: queue::Receiver::new(Arc::clone(&session) as Arc<dyn Holds<Box<v1::DeliveryAck>>>),
                    next: resume_from + 1,
                    receipts_tail: None,
                };
                // `map`, not `async move { f.await }`: a wrapping block keeps its
                // captured future and the awaited one side by side (twice the size
                // for the whole session).
                delivering.set(
                    contained(delivery.run().map(|ended| match ended {
                        Ok(()) => StreamEnd::Done,
                        Err(e) => {
                            debug!(error = %e, "delivery ended");
                            StreamEnd::Fault(Fault::gone(e.to_string()))
                        }
                    }))
                    .fuse(),
                );
                // One frame at a time: a Refresh is taken before the next is read.
                control_next.set(contained(control::next(control_recv)).fuse());
                let writer = push::Writer {
                    conn: conn.clone(),
                    max_frame,
                    store: Arc::clone(&ctx.stores.messages),
                    groups: Arc::clone(&ctx.stores.groups),
                    metrics: Arc::clone(&ctx.metrics),
                };
                let (registration, first, pushes) = ctx.push.attach(session_id, &user, writer);
                *registered = Some(registration);
                pushing.set(contained(pushes.map(|()| StreamEnd::Done)).fuse());
                {
                    // The session's own streams run meanwhile, as they would in
                    // tasks of their own; one that ends is taken up once the
                    // session started, as the loop would have.
                    let mut starting = pin!(async {
                        Box::pin(presence::session_started(ctx, &user, &device, started_ms, first, came_online)).await;
                        // Nothing but the Hello is taken from early data (see `serve`).
                        let _ = handshake.await;
                    });
                    let mut early = Ok(StreamEnd::Done);
                    loop {
                        let ended = tokio::select! {
                            () = &mut starting => break,
                            ended = &mut acks_writer, if !acks_writer.is_terminated() => ended,
                            ended = &mut delivering, if !delivering.is_terminated() => ended,
                            ended = &mut pushing, if !pushing.is_terminated() => ended,
                        };
                        if matches!(early, Ok(StreamEnd::Done)) {
                            early = ended;
                        }
                    }
                    ended_stream(early?)?;
                }
                Ok::<_, Fault>(())
            })
            .await?;
            if let Some(reason) = conn.close_reason() {
                return Err(Fault::gone(format!("handshake failed: {reason}")));
            }
            let streams = Streams {
                conn: conn.clone(),
                ctx: Arc::clone(ctx),
                session: Arc::clone(&session),
                media_streams: crate::media::session_streams(ctx),
            };
            let mut draining = ctx.draining.subscribe();
            // A session that logs in while the gateway already drains must see it.
            draining.mark_changed();
            let mut drain_deadline: Option<Instant> = None;
            let mut token_deadline = credential::deadline(claims.expires_at);
            loop {
                let beat_deadline = session.heartbeat_deadline(ctx.config.heartbeat.max_missed);
                // One timer for the session's deadlines (a timer each would
                // be carried by every idle session): the earliest.
                let wake_at = drain_deadline.map_or(beat_deadline, |d| d.min(beat_deadline)).min(token_deadline);
                // The arms do not wait: what does is done after the select,
                // boxed (a value an arm held across an await would be kept in
                // the session's future for its whole life).
                let step = tokio::select! {
                    bi = conn.accept_bi() => match bi {
                        Ok((send, recv)) => { tasks.spawn(streams.clone().bidi(send, recv)); None }
                        Err(e) => return Err(Fault::gone(e.to_string())),
                    },
                    uni = conn.accept_uni() => match uni {
                        Ok(recv) => { tasks.spawn(streams.clone().uni(recv).map(Ended::Stream)); None }
                        Err(e) => return Err(Fault::gone(e.to_string())),
                    },
                    Some(ended) = tasks.join_next() => match ended {
                        Ok(Ended::Stream(end)) => { ended_stream(end)?; None }
                        // A later heartbeat stream replaces the one before.
                        Ok(Ended::Heartbeat(hb)) => { *beats = Some(hb); None }
                        Err(e) => return Err(Fault::detailed(ErrorCode::Internal, "the server failed", format_args!("stream task: {e}"))),
                    },
                    beat = heartbeat::next(beats) => match beat {
                        Beat::Ping(ping) => {
                            session.request_allowed()?;
                            session.beat(ping.next_within_ms, ctx);
                            streams.note_address();
                            if let Some(hb) = beats.as_mut() {
                                hb.answer(&ping);
                            }
                            None
                        }
                        Beat::Ended => { *beats = None; None }
                        Beat::Failed(e) => {
                            *beats = None;
                            if let Some(fault) = Fault::from_recv(e) {
                                return Err(fault);
                            }
                            None
                        }
                    },
                    ended = &mut acks_writer, if !acks_writer.is_terminated() => { ended_stream(ended?)?; None }
                    ended = &mut delivering, if !delivering.is_terminated() => { ended_stream(ended?)?; None }
                    ended = &mut pushing, if !pushing.is_terminated() => { ended_stream(ended?)?; None }
                    () = tokio::time::sleep_until(wake_at) => {
                        let now = Instant::now();
                        if drain_deadline.is_some_and(|d| d <= now) {
                            return Err(Fault::new(ErrorCode::ShuttingDown, "drain deadline"));
                        }
                        if token_deadline <= now {
                            Some(Step::Refuse(Fault::new(ErrorCode::TokenExpired, "the session's token expired")))
                        } else if session.heartbeat_deadline(ctx.config.heartbeat.max_missed) <= now {
                            // (A Ping may have moved the heartbeat deadline on.)
                            ctx.metrics.heartbeat_timeouts.inc();
                            return Err(Fault::new(ErrorCode::HeartbeatTimeout, "missed heartbeats"));
                        } else {
                            None
                        }
                    }
                    read = &mut control_next, if !control_next.is_terminated() => {
                        let (control_recv, event) = read?;
                        match event {
                            ControlEvent::Refresh(token) => Some(match session.request_allowed() {
                                Ok(()) => Step::Refresh(control_recv, token),
                                Err(fault) => Step::Refuse(fault),
                            }),
                            ControlEvent::End(ControlEnd::Done) => None,
                            ControlEvent::End(ControlEnd::Bye) => return Err(Fault::gone("client said bye")),
                            ControlEvent::End(ControlEnd::Fault(fault)) => return Err(fault),
                        }
                    }
                    ending = &mut kicked => Some(Step::Kicked(ending.unwrap_or_else(|_| ErrorCode::Kicked.into()))),
                    changed = draining.changed(), if drain_deadline.is_none() => {
                        (changed.is_ok() && *draining.borrow()).then_some(Step::GoAway)
                    }
                };
                let Some(step) = step else { continue };
                let control_recv = Box::pin(after_select(
                    step,
                    ctx,
                    conn,
                    &mut control_send,
                    &mut Credentials {
                        claims: &mut claims,
                        issued_at: &issued_at,
                        token_deadline: &mut token_deadline,
                    },
                    &mut drain_deadline,
                ))
                .await?;
                if let Some(control_recv) = control_recv {
                    // One frame at a time: the next is read once a Refresh
                    // was taken.
                    control_next.set(contained(control::next(control_recv)).fuse());
                }
            }
        }
        .await;

        if let Err(fault) = outcome {
            close(ctx, conn, &user, &fault);
        }
        drop(tasks);
        drop(beats);
        acks_writer.set(Fuse::terminated());
        delivering.set(Fuse::terminated());
        pushing.set(Fuse::terminated());
        control_next.set(Fuse::terminated());
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
}

/// How a stream's end bears on the session: `Err` ends it.
fn ended_stream(end: StreamEnd) -> Result<(), Fault> {
    match end {
        StreamEnd::Done => Ok(()),
        StreamEnd::Fault(fault) => Err(fault),
    }
}
