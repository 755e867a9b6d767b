//! A lean qim client: just the protocol, no SDK state. Many of these share a
//! few quinn client endpoints (UDP sockets), so a load generator holds
//! hundreds of thousands of connections.
//!
//! A [`Session`] is a logged-in connection: the control stream after
//! Welcome. Scenarios open the streams they need on it (heartbeat, chat,
//! ack) and take the server's two uni streams (ack, delivery) with
//! [`Session::server_streams`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use qim_gateway::auth::{TokenKey, unix_now};
use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::transport::Connection;
use qim_proto::transport::mux::{self, Limits, Role};
use qim_proto::v1::{self, client_control, rpc_request, rpc_response, server_control};

/// Where the gateway is (one node, or the nodes of a cluster) and how to
/// log in to it.
#[derive(Clone)]
pub(crate) struct Target {
    /// The gateway's QUIC addresses; a user always goes to the same one
    /// (a hash of the user id picks it), so a cluster's nodes share the
    /// load and a reconnect returns to the node it left.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) server_name: String,
    pub(crate) tokens: TokenKey,
    /// Sessions go over TLS on TCP instead of QUIC (the gateway's TCP
    /// addresses, in the order of `addrs`).
    pub(crate) tcp: Option<Tcp>,
}

/// TLS on TCP: where and with what TLS settings.
#[derive(Clone)]
pub(crate) struct Tcp {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) tls: tokio_rustls::TlsConnector,
}

impl Target {
    /// Reads the token secret file the gateway verifies with (every node
    /// of a cluster shares it).
    pub(crate) fn new(addrs: Vec<SocketAddr>, server_name: String, secret: &Path) -> Result<Self> {
        if addrs.is_empty() {
            bail!("no gateway address");
        }
        let tokens =
            TokenKey::load(secret).with_context(|| format!("token secret {}", secret.display()))?;
        Ok(Self {
            addrs,
            server_name,
            tokens,
            tcp: None,
        })
    }

    /// Sessions over TLS on TCP to `addrs` (one per QUIC address), with
    /// the TLS settings of `ca_pem`.
    pub(crate) fn over_tcp(mut self, addrs: Vec<SocketAddr>, ca_pem: &[u8]) -> Result<Self> {
        if addrs.len() != self.addrs.len() {
            bail!("give one TCP address per gateway address");
        }
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_pem, false, 0)?));
        self.tcp = Some(Tcp { addrs, tls });
        Ok(self)
    }

    /// Which node `user` connects to (an index into the addresses).
    fn node_for(&self, user: &str) -> usize {
        // FNV-1a: stable across runs and processes.
        let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % self.addrs.len() as u64) as usize
    }

    /// The node `user` connects to.
    pub(crate) fn addr_for(&self, user: &str) -> SocketAddr {
        self.addrs[self.node_for(user)]
    }

    /// A token for `user`, valid for a day.
    pub(crate) fn token(&self, user: &str) -> Result<String> {
        Ok(self.tokens.mint(user, unix_now() + 86_400)?)
    }
}

/// A UDP socket with large kernel buffers: at thousands of busy
/// connections the ~208 KB default drops packets.
pub(crate) fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The TLS and transport settings of a qim client (or echo client).
/// `resumption`: keep up to `sessions` TLS session tickets and resume with
/// them on the next connection to the same server, sending the login as
/// 0-RTT early data as the SDK does.
pub(crate) fn client_config(
    ca_pem: &[u8],
    resumption: bool,
    sessions: usize,
) -> Result<quinn::ClientConfig> {
    let tls = tls_config(ca_pem, resumption, sessions)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
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

/// The TLS settings of a qim client: TLS 1.3 trusting `ca_pem`, ALPN
/// `qim/1`, session resumption as [`client_config`] says.
fn tls_config(ca_pem: &[u8], resumption: bool, sessions: usize) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        bail!("the CA file holds no certificate");
    }
    let provider = Arc::new(qim_proto::tls::crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = if resumption {
        tls.enable_early_data = true;
        rustls::client::Resumption::in_memory_sessions(sessions.max(16))
    } else {
        rustls::client::Resumption::disabled()
    };
    tls.alpn_protocols = vec![qim_proto::ALPN.to_vec()];
    Ok(tls)
}

/// A few client endpoints that connections are spread over, round robin.
pub(crate) struct Endpoints {
    endpoints: Vec<quinn::Endpoint>,
    next: AtomicUsize,
}

impl Endpoints {
    /// Binds `n` UDP sockets on the loopback or unspecified address.
    pub(crate) fn bind(n: usize, towards: SocketAddr, config: quinn::ClientConfig) -> Result<Self> {
        let local: SocketAddr = if towards.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoints = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let socket = udp_socket(local, 8 << 20)?;
            let mut endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )?;
            endpoint.set_default_client_config(config.clone());
            endpoints.push(endpoint);
        }
        Ok(Self {
            endpoints,
            next: AtomicUsize::new(0),
        })
    }

    /// The next endpoint in turn.
    pub(crate) fn pick(&self) -> &quinn::Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[i]
    }
}

/// A logged-in connection.
pub(crate) struct Session {
    pub(crate) conn: Connection,
    /// Kept so the control stream stays open for the session's life.
    pub(crate) _control_send: FramedSend,
    pub(crate) _control_recv: FramedRecv,
    pub(crate) welcome: v1::Welcome,
    pub(crate) max_frame: usize,
    /// The login went out as 0-RTT early data and the server took it.
    pub(crate) zero_rtt: bool,
}

/// One rpc on a bidi stream of its own; its answer, an error answer as
/// an error.
pub(crate) async fn rpc(session: &Session, kind: rpc_request::Kind) -> Result<rpc_response::Kind> {
    let (send, recv) = session.conn.open_bi().await?;
    let mut send = FramedSend::new(send, StreamKind::Rpc, session.max_frame);
    let mut recv = FramedRecv::new(recv, session.max_frame);
    send.send(&v1::RpcRequest { kind: Some(kind) }).await?;
    send.finish();
    match recv.next::<v1::RpcResponse>().await?.and_then(|r| r.kind) {
        Some(rpc_response::Kind::Error(e)) => bail!("rpc refused: {:?} {}", e.code(), e.message),
        Some(kind) => Ok(kind),
        None => bail!("rpc stream ended without a response"),
    }
}

/// Registers an FCM push token for the session's device, as a phone does
/// after login.
pub(crate) async fn register_push_token(session: &Session, user: &str) -> Result<()> {
    let token = v1::PushToken {
        provider: v1::PushProvider::Fcm.into(),
        token: format!("loadtest-{user}"),
        app_id: "loadtest".to_owned(),
        ..v1::PushToken::default()
    };
    let op = v1::push_token_request::Op::Register(token);
    match rpc(
        session,
        rpc_request::Kind::PushToken(v1::PushTokenRequest { op: Some(op) }),
    )
    .await?
    {
        rpc_response::Kind::PushToken(_) => Ok(()),
        other => bail!("push token registration answered {other:?}"),
    }
}

/// Connects, sends Hello and waits for Welcome.
pub(crate) async fn login(
    endpoint: &quinn::Endpoint,
    target: &Target,
    user: &str,
    device: &str,
    resume_from: u64,
) -> Result<Session> {
    login_with(endpoint, None, target, user, device, resume_from).await
}

/// [`login`] with a client configuration of its own (e.g. a TLS session
/// cache of one client, as a phone has).
pub(crate) async fn login_with(
    endpoint: &quinn::Endpoint,
    config: Option<quinn::ClientConfig>,
    target: &Target,
    user: &str,
    device: &str,
    resume_from: u64,
) -> Result<Session> {
    if let Some(tcp) = &target.tcp {
        return login_tcp(tcp, target, user, device, resume_from).await;
    }
    let addr = target.addr_for(user);
    let connecting = match config {
        Some(config) => endpoint.connect_with(config, addr, &target.server_name)?,
        None => endpoint.connect(addr, &target.server_name)?,
    };
    // As the SDK does: with a session ticket the Hello goes out as 0-RTT
    // early data; if the server refuses the early data, it goes again.
    let (conn, (control_send, control_recv, welcome), zero_rtt) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            let wrapped = Connection::from(conn.clone());
            let early = hello(&wrapped, target, user, device, resume_from);
            tokio::pin!(early, accepted);
            let (taken, result) = tokio::select! {
                taken = &mut accepted => if taken { (true, Some(early.await)) } else { (false, None) },
                result = &mut early => (accepted.await, Some(result)),
            };
            match (taken, result) {
                (true, Some(result)) => (conn.clone(), result?, true),
                _ => {
                    let result = hello(
                        &Connection::from(conn.clone()),
                        target,
                        user,
                        device,
                        resume_from,
                    )
                    .await?;
                    (conn.clone(), result, false)
                }
            }
        }
        Err(connecting) => {
            let conn = connecting.await.context("handshake")?;
            let result = hello(
                &Connection::from(conn.clone()),
                target,
                user,
                device,
                resume_from,
            )
            .await?;
            (conn, result, false)
        }
    };
    Ok(session(
        conn.into(),
        (control_send, control_recv, welcome),
        zero_rtt,
    ))
}

/// A logged-in session on `conn`.
fn session(
    conn: Connection,
    (control_send, control_recv, welcome): (FramedSend, FramedRecv, v1::Welcome),
    zero_rtt: bool,
) -> Session {
    let max_frame = welcome
        .limits
        .as_ref()
        .map_or(qim_proto::DEFAULT_MAX_FRAME, |l| l.max_frame_bytes as usize);
    Session {
        conn,
        _control_send: control_send,
        _control_recv: control_recv,
        welcome,
        max_frame,
        zero_rtt,
    }
}

/// [`login`] over TLS on TCP: a TCP connection, TLS 1.3 with ALPN `qim/1`,
/// then yamux streams carrying the same frames as QUIC streams.
async fn login_tcp(
    tcp: &Tcp,
    target: &Target,
    user: &str,
    device: &str,
    resume_from: u64,
) -> Result<Session> {
    let addr = tcp.addrs[target.node_for(user)];
    let name = rustls::pki_types::ServerName::try_from(target.server_name.clone())?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("TCP connect to {addr}"))?;
    // As the SDK: no Nagle delay, TCP_NOTSENT_LOWAT.
    qim_proto::transport::tcp::tune(&stream);
    let stream = tcp
        .tls
        .connect(name, stream)
        .await
        .context("TLS over TCP")?;
    let conn = mux::connect(stream, Role::Client, addr, CLIENT_LIMITS);
    let result = hello(&conn, target, user, device, resume_from).await?;
    Ok(session(conn, result, false))
}

/// What the server may open on a TCP session: the SDK's bounds (it opens
/// two uni streams and no bidi).
const CLIENT_LIMITS: Limits = Limits { bidi: 0, uni: 4 };

/// Opens the control stream, sends Hello and waits for Welcome.
async fn hello(
    conn: &Connection,
    target: &Target,
    user: &str,
    device: &str,
    resume_from: u64,
) -> Result<(FramedSend, FramedRecv, v1::Welcome)> {
    let (send, recv) = conn.open_bi().await?;
    let max = qim_proto::DEFAULT_MAX_FRAME;
    let mut control_send = FramedSend::new(send, StreamKind::Control, max);
    let mut control_recv = FramedRecv::new(recv, max);
    let hello = v1::ClientControl {
        kind: Some(client_control::Kind::Hello(v1::Hello {
            token: target.token(user)?,
            device_id: device.to_owned(),
            platform: v1::Platform::Server as i32,
            sdk_version: concat!("qim-loadgen/", env!("CARGO_PKG_VERSION")).to_owned(),
            resume_from,
        })),
    };
    control_send.send(&hello).await?;
    let welcome = match control_recv.next::<v1::ServerControl>().await? {
        Some(v1::ServerControl {
            kind: Some(server_control::Kind::Welcome(welcome)),
        }) => welcome,
        Some(v1::ServerControl {
            kind: Some(server_control::Kind::Refusal(r)),
        }) => bail!("login refused: {:?} {}", r.code(), r.message),
        other => bail!("expected Welcome, got {other:?}"),
    };
    Ok((control_send, control_recv, welcome))
}

/// The two streams the server opens on every session.
pub(crate) struct ServerStreams {
    /// `ServerAck` frames for this client's sends.
    pub(crate) acks: FramedRecv,
    /// `Deliver` frames of this user's inbox.
    pub(crate) deliveries: FramedRecv,
}

impl Session {
    /// Accepts the server's ack and delivery streams.
    pub(crate) async fn server_streams(&self) -> Result<ServerStreams> {
        let (mut acks, mut deliveries) = (None, None);
        while acks.is_none() || deliveries.is_none() {
            let mut stream = self.conn.accept_uni().await?;
            let recv = |s| FramedRecv::new(s, self.max_frame);
            match read_preamble(&mut stream).await? {
                StreamKind::Ack => acks = Some(recv(stream)),
                StreamKind::Delivery => deliveries = Some(recv(stream)),
                other => bail!("unexpected server stream {other:?}"),
            }
        }
        Ok(ServerStreams {
            acks: acks.context("ack stream")?,
            deliveries: deliveries.context("delivery stream")?,
        })
    }

    /// Opens a client uni stream of `kind`.
    pub(crate) async fn open_uni(&self, kind: StreamKind) -> Result<FramedSend> {
        Ok(FramedSend::new(
            self.conn.open_uni().await?,
            kind,
            self.max_frame,
        ))
    }

    /// The heartbeat interval the server asked for.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(
            self.welcome
                .heartbeat
                .as_ref()
                .map_or(30_000, |h| u64::from(h.interval_ms.max(100))),
        )
    }

    /// Pings on a heartbeat stream every `interval` until the connection
    /// ends; counts pongs. Ends with the connection.
    pub(crate) async fn heartbeat(&self, interval: Duration, first_after: Duration) -> Result<()> {
        let (send, recv) = self.conn.open_bi().await?;
        let mut send = FramedSend::new(send, StreamKind::Heartbeat, self.max_frame);
        let mut recv = FramedRecv::new(recv, self.max_frame);
        let announce = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
        let mut n = 0u64;
        let mut next = tokio::time::Instant::now() + first_after;
        loop {
            n += 1;
            let ping = v1::Ping {
                n,
                sent_at_ms: qim_proto::now_ms(),
                next_within_ms: announce,
            };
            send.send(&ping).await?;
            match recv.next::<v1::Pong>().await? {
                Some(pong) if pong.n == n => {}
                other => bail!("expected Pong {n}, got {other:?}"),
            }
            tokio::time::sleep_until(next).await;
            next += interval;
        }
    }
}
