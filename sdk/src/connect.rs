//! Connecting: the client's QUIC endpoint and TLS settings, resolving a
//! server, and one login (Hello, then Welcome or a refusal), as 0-RTT
//! early data when a TLS session can be resumed.
//!
//! [`bind_endpoint`] is the one place the client makes its quinn
//! endpoint, and [`rebind`] the one place a network change moves it to a
//! new socket: a UDP socket of the system, or one from
//! [`ClientConfig::sockets`] (an in-process network in tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::transport::Connection;
use qim_proto::v1::{self, ErrorCode, server_control};
use tracing::{debug, warn};

use crate::heartbeat::{AdaptiveHeartbeat, HeartbeatBounds};
use crate::inbox::Inbox;
use crate::shared::{ConnectionState, Shared};
use crate::sync::lock;
use crate::{ClientConfig, Error};

/// The client's QUIC endpoint: a UDP socket on the wildcard address of the
/// server's family (IPv6 when `ipv6`), or one from
/// [`ClientConfig::sockets`], connecting with `quic` (the settings of
/// [`client_config`]; `None` for a client that never connects).
pub(crate) fn bind_endpoint(
    config: &ClientConfig,
    ipv6: bool,
    quic: Option<quinn::ClientConfig>,
) -> Result<quinn::Endpoint, Error> {
    let mut endpoint = match &config.sockets {
        Some(sockets) => sockets.bind(ipv6).and_then(|socket| {
            quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
        }),
        None => quinn::Endpoint::client(any_addr(ipv6)),
    }
    .map_err(|e| Error::Network(format!("binding UDP: {e}")))?;
    if let Some(quic) = quic {
        endpoint.set_default_client_config(quic);
    }
    Ok(endpoint)
}

/// Moves the endpoint to a fresh socket of its family, for a network
/// change (from [`ClientConfig::sockets`] when set).
pub(crate) fn rebind(config: &ClientConfig, endpoint: &quinn::Endpoint) -> Result<(), Error> {
    let ipv6 = endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let fresh = |e: std::io::Error| Error::Network(format!("binding a new UDP socket: {e}"));
    match &config.sockets {
        Some(sockets) => endpoint.rebind_abstract(sockets.bind(ipv6).map_err(fresh)?),
        None => endpoint.rebind(std::net::UdpSocket::bind(any_addr(ipv6)).map_err(fresh)?),
    }
    .map_err(|e| Error::Network(format!("rebinding the endpoint: {e}")))
}

/// The TLS settings of a connection to the server, on either transport:
/// TLS 1.3, the configured CAs, ALPN `qim/1`, resumption as configured.
pub(crate) fn tls_config(config: &ClientConfig) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
        let cert = cert.map_err(|e| Error::Config(format!("ca_pem: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("ca_pem: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config("ca_pem holds no certificate".into()));
    }
    let provider = Arc::new(qim_proto::tls::crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![qim_proto::ALPN.to_vec()];
    if !config.resumption {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tls)
}

/// The TLS and transport settings of a QUIC connection to the server.
pub(crate) fn client_config(config: &ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let mut tls = tls_config(config)?;
    // The endpoint keeps this config (and so rustls's in-memory session
    // store) for the client's life: every reconnect can resume.
    if config.resumption {
        tls.enable_early_data = true;
    }
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // The server opens two uni streams (ack, delivery) and no bidi.
        .max_concurrent_uni_streams(4u32.into())
        .max_concurrent_bidi_streams(0u32.into())
        .keep_alive_interval(None)
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            300_000,
        ))));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

/// The wildcard address of one family, port 0.
fn any_addr(ipv6: bool) -> SocketAddr {
    if ipv6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

pub(crate) async fn resolve(server: &str) -> Result<SocketAddr, Error> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| Error::Network(format!("resolving {server}: {e}")))?
        .next()
        .ok_or_else(|| Error::Network(format!("{server} resolves to no address")))
}

/// A logged-in connection, ready for its session.
pub(crate) struct Established {
    pub(crate) conn: Connection,
    pub(crate) control_send: FramedSend,
    pub(crate) control_recv: FramedRecv,
    pub(crate) welcome: v1::Welcome,
    /// A second login over the other transport had started when this one
    /// won the race: its Hello may still reach the server after this
    /// one's and replace this session.
    pub(crate) raced: bool,
}

/// Sends Hello on a new control stream and reads the reply.
pub(crate) async fn login(shared: &Shared, conn: &Connection) -> Result<Established, Error> {
    let config = &shared.config;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    let max_frame = qim_proto::DEFAULT_MAX_FRAME;
    let mut control_send = FramedSend::new(send, StreamKind::Control, max_frame);
    let mut control_recv = FramedRecv::new(recv, max_frame);
    // One Hello of this client at a time (see `Transports::login_turn`);
    // past the wait, go on without the turn.
    let _turn = tokio::time::timeout(
        crate::transport::LOGIN_ALONE,
        shared.transports.login_turn.lock(),
    )
    .await
    .ok();
    let resume_from = lock(&shared.received).inbox.released();
    let hello = v1::ClientControl {
        kind: Some(v1::client_control::Kind::Hello(v1::Hello {
            token: lock(&shared.token).clone(),
            device_id: config.device_id.clone(),
            platform: config.platform.to_wire() as i32,
            sdk_version: env!("CARGO_PKG_VERSION").to_owned(),
            resume_from,
        })),
    };
    control_send.send(&hello).await?;
    let reply = match control_recv.next::<v1::ServerControl>().await {
        Ok(reply) => reply,
        // A refusal closes the connection right after; its code is what counts.
        Err(e) => {
            return Err(conn
                .close_reason()
                .map_or_else(|| e.into(), |c| Error::from_connection(&c)));
        }
    };
    match reply.and_then(|r| r.kind) {
        Some(server_control::Kind::Welcome(welcome)) => Ok(Established {
            conn: conn.clone(),
            control_send,
            control_recv,
            welcome,
            raced: false,
        }),
        Some(server_control::Kind::Refusal(r)) => Err(Error::from_code(
            ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Unspecified),
            r.message,
        )),
        _ => Err(Error::Network("login: unexpected reply".into())),
    }
}

/// Connects over QUIC and logs in once. With a resumable TLS session the
/// Hello goes out as 0-RTT early data, in the first flight; if the server
/// rejects the early data, the login is repeated once the handshake
/// completed.
///
/// Only the Hello is ever sent early: the other streams open after the
/// Welcome. A replayed Hello could at most log the same device in again,
/// and the gateway's single-use session tickets refuse replays anyway.
pub(crate) async fn connect_quic(
    shared: &Arc<Shared>,
    addr: SocketAddr,
) -> Result<Established, Error> {
    let config = &shared.config;
    let connecting = shared
        .endpoint
        .connect(addr, &config.server_name)
        .map_err(|e| Error::Config(format!("connect: {e}")))?;
    match connecting.into_0rtt() {
        Ok((conn, mut accepted)) => {
            let conn = Connection::from(conn);
            let early = login(shared, &conn);
            tokio::pin!(early);
            let (ok, result) = tokio::select! {
                // The handshake completed first: if the server took the
                // early data, the Hello is on its way; if not, it is lost.
                ok = &mut accepted => if ok { (true, Some(early.await)) } else { (false, None) },
                result = &mut early => (accepted.await, Some(result)),
            };
            match (ok, result) {
                (true, Some(Ok(established))) => {
                    shared.zero_rtt.fetch_add(1, Ordering::Relaxed);
                    Ok(established)
                }
                (true, Some(Err(e))) => Err(e),
                _ => {
                    debug!("0-RTT rejected; logging in again");
                    login(shared, &conn).await
                }
            }
        }
        Err(connecting) => {
            let conn = connecting
                .await
                .map_err(|e| Error::from_connection(&e.into()))?;
            login(shared, &Connection::from(conn)).await
        }
    }
}

/// Connects (over QUIC or TLS on TCP, as `transport::connect` chooses) and
/// logs in once, then takes the Welcome's settings.
pub(crate) async fn establish(
    shared: &Arc<Shared>,
    addr: SocketAddr,
) -> Result<Established, Error> {
    let config = &shared.config;
    shared.state.send_replace(ConnectionState::Connecting);
    let established = tokio::time::timeout(
        config.connect_timeout,
        crate::transport::connect(shared, addr),
    )
    .await
    .map_err(|_| Error::Network("connect timed out".into()))??;
    let welcome = &established.welcome;
    *lock(&shared.user_id) = welcome.user_id.clone();
    if let Some(limits) = &welcome.limits {
        shared
            .max_body
            .store(u64::from(limits.max_body_bytes), Ordering::Relaxed);
        shared
            .max_frame
            .store(u64::from(limits.max_frame_bytes), Ordering::Relaxed);
        *lock(&shared.limits) = limits.clone();
    }
    {
        let mut received = lock(&shared.received);
        if welcome.inbox_head < received.inbox.released() {
            // The server has less than this client saw (its data was reset,
            // or resume_from was wrong). Follow the server, or every new
            // message would be dropped as already seen.
            warn!(
                head = welcome.inbox_head,
                released = received.inbox.released(),
                "server inbox is behind this client; resyncing from the server's head"
            );
            received.inbox = Inbox::new(welcome.inbox_head, config.gap_skip_after);
            received.queue.retain(|m| m.seq <= welcome.inbox_head);
            shared.taken.fetch_min(welcome.inbox_head, Ordering::AcqRel);
        }
    }
    {
        let bounds = HeartbeatBounds::from_wire(welcome.heartbeat.as_ref());
        let mut hb = lock(&shared.heartbeat);
        if hb.bounds() != bounds {
            // Another server policy: what was learnt under the old one may
            // not hold.
            let foreground = hb.is_foreground();
            *hb = AdaptiveHeartbeat::new(bounds);
            hb.set_foreground(foreground);
        }
    }
    *lock(&shared.current) = Some((established.conn.clone(), welcome.session_id.clone()));
    shared.sessions.fetch_add(1, Ordering::Release);
    shared.state.send_replace(ConnectionState::Connected);
    Ok(established)
}
