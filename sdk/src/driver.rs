//! The connection driver: keeps one session up at a time and reconnects
//! with exponential backoff and jitter when it drops. A session's tasks
//! (heartbeat, chat writer, ack reader, ack writer, control reader, and
//! the receive path's delivery reader and gap watcher) only move data
//! between [`Shared`] and the connection's streams; when one fails the
//! whole session is dropped and the driver starts a new one, which resends
//! the outbox and resumes the inbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, server_ack, server_control};
use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connect::{Established, establish, resolve};
use crate::events::ClientEvent;
use crate::receive;
use crate::shared::{ConnectionState, Shared, probe_deadline};
use crate::sync::lock;
use crate::token;
use crate::{ClientConfig, Error};

/// How a session ended.
enum SessionEnd {
    /// The app closed the client.
    Closed,
    /// The server is draining: reconnect within this bound.
    GoAway(Duration),
    /// The connection failed.
    Lost(Error),
    /// The server ended one of the session's streams and did not close the
    /// connection. It ends them only when it closes, so the close and its
    /// code (e.g. REPLACED, which must stop the client) are awaited briefly
    /// before this counts as a network failure (see `closed_by_peer`).
    PeerFinished(&'static str),
    /// The app asked for a fresh connection now.
    Reconnect,
}

/// Keeps a session up until the client closes or can never log in again.
pub(crate) async fn drive(shared: Arc<Shared>, first: Option<Established>) {
    let mut next = first;
    let mut failures: u32 = 0;
    let mut closing = shared.closing.subscribe();
    loop {
        let established = match next.take() {
            Some(e) => Ok(e),
            None => {
                let attempt = async {
                    let addr = resolve(
                        shared
                            .config
                            .server_at(shared.server.load(Ordering::Relaxed)),
                    )
                    .await?;
                    establish(&shared, addr).await
                };
                tokio::select! {
                    result = attempt => result,
                    () = closed(&mut closing) => break,
                }
            }
        };
        let delay = match established {
            Ok(established) => {
                let started = Instant::now();
                let end = run_session(&shared, established).await;
                // A session that dies young counts as a failed attempt, so a
                // server that drops us right after login is not hammered.
                failures = if started.elapsed() >= STABLE_SESSION {
                    0
                } else {
                    failures.saturating_add(1)
                };
                match end {
                    SessionEnd::Closed => break,
                    SessionEnd::Reconnect => {
                        failures = 0;
                        Duration::ZERO
                    }
                    SessionEnd::GoAway(within) => {
                        info!(?within, "server draining; reconnecting");
                        next_server(&shared);
                        jitter(within)
                    }
                    SessionEnd::Lost(e) if e.is_transient() => lost(&shared, e, failures),
                    // No close followed (see `closed_by_peer`).
                    SessionEnd::PeerFinished(stream) => lost(
                        &shared,
                        Error::Network(format!("the server ended the {stream} stream")),
                        failures,
                    ),
                    SessionEnd::Lost(e) if crate::token::renew(&shared, &e).await => {
                        info!(error = %e, "token refused; reconnecting with the provider's");
                        backoff(&shared.config, failures.max(1))
                    }
                    SessionEnd::Lost(e) => {
                        stop(&shared, e);
                        return;
                    }
                }
            }
            Err(e) if e.is_transient() => {
                debug!(error = %e, failures, "connect failed");
                next_server(&shared);
                let _ = shared.events.send(ClientEvent::ConnectionLost(e.clone()));
                *lock(&shared.last_error) = Some(e);
                failures = failures.saturating_add(1);
                backoff(&shared.config, failures)
            }
            Err(e) if crate::token::renew(&shared, &e).await => {
                failures = failures.saturating_add(1);
                backoff(&shared.config, failures)
            }
            Err(e) => {
                stop(&shared, e);
                return;
            }
        };
        if *closing.borrow() {
            break;
        }
        if delay.is_zero() {
            continue;
        }
        *lock(&shared.next_attempt) = Some(tokio::time::Instant::now() + delay);
        shared.state.send_replace(ConnectionState::Backoff);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.reconnect_now.notified() => {}
            () = closed(&mut closing) => break,
        }
    }
    stop(&shared, Error::Closed);
}

/// Records a connection lost to a transient failure; returns the delay
/// before the next attempt.
fn lost(shared: &Shared, e: Error, failures: u32) -> Duration {
    info!(error = %e, "connection lost; reconnecting");
    next_server(shared);
    if lock(&shared.heartbeat).on_loss(std::time::Instant::now()) {
        info!(
            interval = ?lock(&shared.heartbeat).interval(),
            "connection died while idle; heartbeat interval shortened"
        );
    }
    let _ = shared.events.send(ClientEvent::ConnectionLost(e.clone()));
    *lock(&shared.last_error) = Some(e);
    if failures == 0 {
        Duration::ZERO
    } else {
        backoff(&shared.config, failures)
    }
}

/// Points the next attempt at the next configured server (a no-op with
/// one server).
fn next_server(shared: &Shared) {
    shared.server.fetch_add(1, Ordering::Relaxed);
}

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Ends the client for good with `error`.
fn stop(shared: &Shared, error: Error) {
    *lock(&shared.current) = None;
    if error != Error::Closed {
        warn!(error = %error, "client stopped");
        *lock(&shared.last_error) = Some(error.clone());
    }
    lock(&shared.outbox).fail_all(&error);
    shared.state.send_replace(ConnectionState::Closed);
    shared.queue_grew.notify_waiters();
}

/// Exponential backoff with jitter: a random delay in [d/2, d], where d
/// doubles per failure from `reconnect_min` up to `reconnect_max`.
fn backoff(config: &ClientConfig, failures: u32) -> Duration {
    let d = config
        .reconnect_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(config.reconnect_max);
    d / 2 + jitter(d / 2)
}

fn jitter(up_to: Duration) -> Duration {
    let ms = up_to.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::rng().random_range(0..=ms)
    })
}

/// How soon after a raced login a REPLACED close counts as the client's
/// own losing attempt (its Hello arrives within a few round trips).
const RACE_REPLACED_WITHIN: Duration = Duration::from_secs(10);

async fn run_session(shared: &Arc<Shared>, established: Established) -> SessionEnd {
    let Established {
        conn,
        mut control_send,
        control_recv,
        welcome,
        raced,
    } = established;
    let started = Instant::now();
    let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
    shared.moving.store(false, Ordering::Release);
    let server_window = welcome
        .limits
        .as_ref()
        .map_or(0, |l| l.max_inflight_sends as usize);
    let window = match (shared.config.max_sends_in_flight, server_window) {
        (0, w) | (w, 0) => w,
        (mine, theirs) => mine.min(theirs),
    };
    lock(&shared.outbox).set_window(window);
    let max_frame = welcome
        .limits
        .as_ref()
        .map_or(qim_proto::DEFAULT_MAX_FRAME, |l| l.max_frame_bytes as usize);
    *lock(&shared.current) = Some((conn.clone(), welcome.session_id.clone()));
    shared
        .path_challenges
        .store(conn.path_challenges(), Ordering::Release);
    // A probe asked for on the last connection is moot on this one.
    shared.take_probe();
    shared.state.send_replace(ConnectionState::Connected);
    shared.conn.send_replace(Some(conn.clone()));
    info!(user = %welcome.user_id, session = %welcome.session_id, head = welcome.inbox_head, "connected");

    let mut tasks: JoinSet<Result<SessionEnd, Error>> = JoinSet::new();
    let opened = async {
        let (hb_send, hb_recv) = conn.open_bi().await?;
        let chat = conn.open_uni().await?;
        let acks = conn.open_uni().await?;
        Ok::<_, qim_proto::transport::ConnectionError>((hb_send, hb_recv, chat, acks))
    };
    let (hb_send, hb_recv, chat, acks) = match opened.await {
        Ok(streams) => streams,
        Err(e) => return SessionEnd::Lost(Error::from_connection(&e)),
    };
    tasks.spawn(heartbeat(
        Arc::clone(shared),
        conn.clone(),
        FramedSend::new(hb_send, StreamKind::Heartbeat, max_frame),
        FramedRecv::new(hb_recv, max_frame),
    ));
    tasks.spawn(write_chat(
        Arc::clone(shared),
        conn.clone(),
        FramedSend::new(chat, StreamKind::Chat, max_frame),
        generation,
    ));
    tasks.spawn(write_acks(
        Arc::clone(shared),
        FramedSend::new(acks, StreamKind::Ack, max_frame),
    ));
    // Expiries the server confirmed with Refreshed.
    let (refreshed_tx, mut refreshed) = tokio::sync::mpsc::channel::<i64>(4);
    tasks.spawn(read_control(control_recv, refreshed_tx));
    tasks.spawn(accept_server_streams(
        Arc::clone(shared),
        conn.clone(),
        max_frame,
    ));
    let (s, c) = (Arc::clone(shared), conn.clone());
    tasks.spawn(async move { receive::watch_gaps(s, c).await.map(|never| match never {}) });
    tasks.spawn(watch_path(Arc::clone(shared), conn.clone()));
    let (s, c) = (Arc::clone(shared), conn.clone());
    tasks.spawn(async move {
        crate::transport::watch(s, c)
            .await
            .map(|()| SessionEnd::Reconnect)
    });
    let s = Arc::clone(shared);
    tasks.spawn(async move {
        crate::transport::home(s)
            .await
            .map(|()| SessionEnd::Reconnect)
    });

    let mut closing = shared.closing.subscribe();
    let reconnect = shared.reconnect_now.notified();
    tokio::pin!(reconnect);
    // The server's clock minus this one's, for the token's expiry.
    let offset_ms = welcome.server_time_ms - qim_proto::now_ms();
    let mut refresh_at = token::refresh_at(shared, welcome.token_expires_ms, offset_ms);
    let mut fetching: Option<tokio::task::JoinHandle<Option<String>>> = None;
    let end = loop {
        tokio::select! {
            joined = next_end(&mut tasks) => break joined,
            () = &mut reconnect => break SessionEnd::Reconnect,
            () = closed(&mut closing) => {
                let bye = v1::ClientControl { kind: Some(v1::client_control::Kind::Bye(v1::Bye {})) };
                let _ = control_send.send(&bye).await;
                control_send.finish();
                conn.close(ErrorCode::NoError, b"bye");
                break SessionEnd::Closed;
            }
            () = sleep_until_opt(refresh_at) => {
                refresh_at = None;
                let s = Arc::clone(shared);
                fetching = Some(tokio::spawn(async move {
                    token::fetch(&s, token::TokenRequest::ExpiresSoon).await
                }));
            }
            Some(fetched) = async { match fetching.as_mut() { Some(f) => Some(f.await), None => None } }, if fetching.is_some() => {
                fetching = None;
                if let Ok(Some(token)) = fetched {
                    let refresh = v1::ClientControl {
                        kind: Some(v1::client_control::Kind::Refresh(v1::Refresh { token })),
                    };
                    if let Err(e) = control_send.send(&refresh).await {
                        break SessionEnd::Lost(e.into());
                    }
                }
            }
            Some(expires_ms) = refreshed.recv() => {
                debug!(expires_ms, "token refreshed");
                refresh_at = token::refresh_at(shared, expires_ms, offset_ms);
            }
        }
    };
    if let Some(f) = fetching {
        f.abort();
    }
    tasks.abort_all();
    let end = match end {
        SessionEnd::PeerFinished(stream) => closed_by_peer(&conn, stream).await,
        SessionEnd::Lost(e) if e.is_transient() => match conn.close_reason() {
            // Whatever failed first, the server's close code says why.
            Some(reason) => SessionEnd::Lost(Error::from_connection(&reason)),
            None => SessionEnd::Lost(e),
        },
        end => end,
    };
    let end = match end {
        // REPLACED soon after a raced login (however the close was first
        // noticed: a stream the server finished, a failed read, the close
        // itself): the losing attempt's Hello reached the server after the
        // winner's, so this client replaced itself; it connects again (and
        // its new login wins).
        SessionEnd::Lost(Error::Rejected {
            code: ErrorCode::Replaced,
            ..
        }) if raced && started.elapsed() < RACE_REPLACED_WITHIN => SessionEnd::Lost(
            Error::Network("replaced by this client's own second login".into()),
        ),
        end => end,
    };
    if let SessionEnd::Lost(e) = &end {
        crate::transport::session_lost(shared, &conn, e);
    }
    shared.conn.send_replace(None);
    *lock(&shared.current) = None;
    if let SessionEnd::Lost(_)
    | SessionEnd::PeerFinished(_)
    | SessionEnd::GoAway(_)
    | SessionEnd::Reconnect = end
    {
        conn.close(ErrorCode::NoError, b"reconnecting");
    }
    end
}

/// How long a stream the server finished may wait for the server's close.
const PEER_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The session's end once the server finished `stream`: its close, which
/// carries the reason, normally arrives right behind (the packets may even
/// be reordered), so it is awaited briefly before the end counts as a
/// plain network failure.
async fn closed_by_peer(
    conn: &qim_proto::transport::Connection,
    stream: &'static str,
) -> SessionEnd {
    match tokio::time::timeout(PEER_CLOSE_GRACE, conn.closed()).await {
        Ok(reason) => SessionEnd::Lost(Error::from_connection(&reason)),
        Err(_) => SessionEnd::PeerFinished(stream),
    }
}

/// The first session task to end decides how the session ends.
async fn next_end(tasks: &mut JoinSet<Result<SessionEnd, Error>>) -> SessionEnd {
    match tasks.join_next().await {
        Some(Ok(Ok(end))) => end,
        Some(Ok(Err(e))) => SessionEnd::Lost(e),
        Some(Err(e)) => SessionEnd::Lost(Error::Network(format!("session task failed: {e}"))),
        None => SessionEnd::Lost(Error::Network("session ended".into())),
    }
}

/// Pings at the adaptive interval, announcing it to the server, and fails
/// the session when a pong is late. A probe ([`Shared::request_probe`]:
/// network change, foreground, an ack timeout, a new address seen by the
/// server) pings at once, or tightens the deadline of the ping already
/// out, and the pong must come within the probe's deadline, or the
/// connection is taken as dead. While the server is still validating this
/// client's new address (the pong came with a PATH_CHALLENGE), the probe
/// goes on: if the validation fails the server falls back to the old,
/// dead address, and only a ping from the new one brings it back.
async fn heartbeat(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
    mut send: FramedSend,
    mut recv: FramedRecv,
) -> Result<SessionEnd, Error> {
    let mut n = 0u64;
    // The deadline of the probe under way, if one is.
    let mut probing: Option<Duration> = None;
    loop {
        n += 1;
        let interval = lock(&shared.heartbeat).interval();
        let ping = v1::Ping {
            n,
            sent_at_ms: qim_proto::now_ms(),
            next_within_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
        };
        send.send(&ping).await?;
        let challenges = conn.path_challenges();
        let sent = Instant::now();
        let mut deadline = sent
            + probing.unwrap_or_else(|| {
                shared
                    .config
                    .pong_timeout
                    .min(interval.max(Duration::from_millis(500)))
            });
        let pong = {
            let next = recv.next::<v1::Pong>();
            tokio::pin!(next);
            loop {
                tokio::select! {
                    pong = &mut next => break Some(pong),
                    () = tokio::time::sleep_until(deadline) => break None,
                    () = shared.probe.notified() => {
                        // A probe while this ping is out: this ping is it.
                        if let Some(d) = shared.take_probe() {
                            deadline = deadline.min(Instant::now() + d);
                            probing = Some(d);
                        }
                    }
                }
            }
        };
        match pong {
            Some(Ok(Some(_))) => {
                lock(&shared.heartbeat).on_pong(std::time::Instant::now());
                shared.pongs.send_modify(|n| *n += 1);
            }
            Some(Ok(None)) => return Ok(SessionEnd::PeerFinished("heartbeat")),
            Some(Err(e)) => return Err(e.into()),
            None if probing.is_some() => {
                return Err(Error::Network(
                    "the connection did not answer a probe".into(),
                ));
            }
            None => return Err(Error::Network("no pong in time".into())),
        }
        if probing.is_some() && conn.path_challenges() > challenges {
            // The pong came over a path the server has not validated yet:
            // probe again until it has (or fell back, and the next pong
            // does not come).
            debug!("the server is still validating our address; probing again");
            tokio::time::sleep(conn.rtt().max(PROBE_SPACING)).await;
            continue;
        }
        if probing.take().is_some() {
            debug!("probe answered; the connection is alive");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.probe.notified() => {
                probing = Some(shared.take_probe().unwrap_or(shared.config.probe_timeout));
            }
        }
    }
}

/// The least time between two probes of one path validation.
const PROBE_SPACING: Duration = Duration::from_millis(50);

/// Writes the outbox's sends. A send that waited `ack_timeout` for its ack
/// is not written again on the same connection, which may be dead: the
/// connection is probed, and nothing more is written on it until a pong
/// proved it alive (then the send waits another `ack_timeout`: QUIC
/// delivers what a live connection accepted). If no pong comes, the
/// heartbeat task ends the session, and the next connection sends
/// everything unacked with the same `client_msg_id`s.
async fn write_chat(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
    mut stream: FramedSend,
    generation: u64,
) -> Result<SessionEnd, Error> {
    let ack_timeout = shared.config.ack_timeout;
    let mut pongs = shared.pongs.subscribe();
    loop {
        let overdue = lock(&shared.outbox).overdue(generation, Instant::now(), ack_timeout);
        if overdue {
            debug!("a send waited the ack timeout; probing the connection before resending");
            let before = *pongs.borrow_and_update();
            shared.request_probe(probe_deadline(&shared.config, &conn));
            // Ends with the session when no pong comes.
            let _ = pongs.wait_for(|n| *n > before).await;
            lock(&shared.outbox).rearm(Instant::now(), ack_timeout);
        }
        let notified = shared.outbox_changed.notified();
        let now = Instant::now();
        let (due, wake) = {
            let mut outbox = lock(&shared.outbox);
            // Read under the outbox's lock (see `transport::home`): before
            // a move, new sends wait for the next session.
            if shared.moving.load(Ordering::Acquire) {
                (Vec::new(), None)
            } else {
                let due = outbox.due(generation, now, ack_timeout);
                (due, outbox.next_due())
            }
        };
        if !due.is_empty() {
            for send in &due {
                if let Err(e) = stream.queue(send) {
                    // Only this send fails; the others and the session go on.
                    lock(&shared.outbox).refused(
                        &v1::SendNack {
                            client_msg_id: send.client_msg_id.clone(),
                            code: ErrorCode::MessageTooLarge as i32,
                            retryable: false,
                            message: e.to_string(),
                            retry_after_ms: 0,
                        },
                        now,
                    );
                }
            }
            stream.flush().await?;
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = sleep_until_opt(wake) => {}
        }
    }
}

/// Resolves once the app closes the client.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long after traffic the path watch keeps looking, and how often.
const PATH_WATCH_FOR: Duration = Duration::from_secs(2);
const PATH_WATCH_EVERY: Duration = Duration::from_millis(250);

/// Looks for a new address seen by the server ([`Shared::check_path`])
/// every `PATH_WATCH_EVERY` for `PATH_WATCH_FOR` after the last traffic.
/// The readers look at every frame, but when the server's validation of
/// the client's new address fails, the frames stop coming: only a look
/// without one finds the PATH_CHALLENGE that arrived.
///
/// And once traffic has been quiet for
/// [`ClientConfig::quiet_probe_after`](crate::ClientConfig::quiet_probe_after),
/// it probes the connection once. After a NAT rebinding the server may move to the new
/// address on an ack alone; it may then send that address only three times
/// the bytes it received from it (anti-amplification) until the address
/// is validated, and if its padded PATH_CHALLENGE is lost, it can send
/// nothing more there. A client that only receives sends nothing either,
/// sees no PATH_CHALLENGE and would learn of it at its next heartbeat
/// (tens of seconds). The probe's ping, from the new address, lets the
/// server send again (or, unanswered, makes the client connect afresh).
/// Coming while the radio is still awake from the traffic, it costs a
/// phone little. Idle, the watch sleeps.
async fn watch_path(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
) -> Result<SessionEnd, Error> {
    loop {
        shared.traffic.notified().await;
        let mut last = Instant::now();
        let mut probed = false;
        while last.elapsed() < PATH_WATCH_FOR {
            tokio::select! {
                () = tokio::time::sleep(PATH_WATCH_EVERY) => {
                    shared.check_path(&conn);
                    if !probed && last.elapsed() >= shared.config.quiet_probe_after {
                        probed = true;
                        debug!("traffic went quiet; probing the connection once");
                        shared.request_probe(probe_deadline(&shared.config, &conn));
                    }
                }
                () = shared.traffic.notified() => {
                    last = Instant::now();
                    probed = false;
                }
            }
        }
    }
}

async fn write_acks(shared: Arc<Shared>, mut stream: FramedSend) -> Result<SessionEnd, Error> {
    let mut acked = 0;
    loop {
        let notified = shared.taken_changed.notified();
        let taken = shared.taken.load(Ordering::Acquire);
        if taken > acked {
            shared.traffic.notify_one();
            stream
                .send(&v1::DeliveryAck {
                    up_to_seq: taken,
                    seqs: Vec::new(),
                })
                .await?;
            acked = taken;
            continue;
        }
        notified.await;
    }
}

async fn read_control(
    mut recv: FramedRecv,
    refreshed: tokio::sync::mpsc::Sender<i64>,
) -> Result<SessionEnd, Error> {
    loop {
        match recv.next::<v1::ServerControl>().await? {
            Some(v1::ServerControl {
                kind: Some(server_control::Kind::Refreshed(r)),
            }) => {
                let _ = refreshed.send(r.token_expires_ms).await;
            }
            Some(v1::ServerControl {
                kind: Some(server_control::Kind::GoAway(g)),
            }) => {
                return Ok(SessionEnd::GoAway(Duration::from_millis(u64::from(
                    g.reconnect_within_ms,
                ))));
            }
            Some(v1::ServerControl {
                kind: Some(server_control::Kind::Refusal(r)),
            }) => {
                let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Unspecified);
                let reason = v1::KickReason::try_from(r.kick_reason).unwrap_or_default();
                if code == ErrorCode::Kicked && reason != v1::KickReason::Unspecified {
                    return Err(Error::Kicked {
                        reason,
                        message: r.message,
                    });
                }
                return Err(Error::from_code(code, r.message));
            }
            Some(_) => {}
            None => std::future::pending::<()>().await,
        }
    }
}

/// Accepts the server's ack and delivery streams and runs their readers.
/// Each stream's preamble is read in its own task: quinn hands out streams
/// in id order, and one that has not received data yet must not hold up the
/// others.
async fn accept_server_streams(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
    max_frame: usize,
) -> Result<SessionEnd, Error> {
    let mut readers: JoinSet<Result<SessionEnd, Error>> = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_uni() => {
                let stream = stream.map_err(|e| Error::from_connection(&e))?;
                readers.spawn(read_server_stream(Arc::clone(&shared), conn.clone(), stream, max_frame));
            }
            Some(ended) = readers.join_next() => {
                return match ended {
                    Ok(end) => end,
                    Err(e) => Err(Error::Network(format!("reader failed: {e}"))),
                };
            }
        }
    }
}

async fn read_server_stream(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
    mut stream: qim_proto::transport::RecvStream,
    max_frame: usize,
) -> Result<SessionEnd, Error> {
    let kind = read_preamble(&mut stream).await?;
    let recv = FramedRecv::new(stream, max_frame);
    match kind {
        StreamKind::Ack => read_server_acks(shared, conn, recv).await,
        StreamKind::Delivery => receive::read_deliveries(shared, conn, recv)
            .await
            .map(|()| SessionEnd::PeerFinished("delivery")),
        other => Err(Error::Network(format!("server opened a {other:?} stream"))),
    }
}

async fn read_server_acks(
    shared: Arc<Shared>,
    conn: qim_proto::transport::Connection,
    mut recv: FramedRecv,
) -> Result<SessionEnd, Error> {
    while let Some(ack) = recv.next::<v1::ServerAck>().await? {
        shared.check_path(&conn);
        match ack.kind {
            Some(server_ack::Kind::Ack(ack)) => {
                let mut outbox = lock(&shared.outbox);
                let waiting = outbox.window_full();
                outbox.acked(&ack);
                drop(outbox);
                if waiting {
                    // Room in the window: the writer goes on.
                    shared.outbox_changed.notify_one();
                }
            }
            Some(server_ack::Kind::Nack(nack)) => {
                debug!(client_msg_id = %nack.client_msg_id, code = nack.code, "send refused");
                lock(&shared.outbox).refused(&nack, Instant::now());
                shared.outbox_changed.notify_one();
            }
            None => {}
        }
        shared.outbox_answered.notify_waiters();
    }
    Ok(SessionEnd::PeerFinished("ack"))
}
