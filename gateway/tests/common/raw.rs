//! The raw protocol client: QUIC or TLS settings and sessions that speak
//! frames directly, for what the SDK never does.

use super::*;

/// The TLS settings of a raw client: TLS 1.3 trusting `ca_pem`, ALPN
/// `qim/1` (over QUIC, or over TCP).
pub fn tls_client_config(ca_pem: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(qim_proto::tls::crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![qim_proto::ALPN.to_vec()];
    tls
}

/// The QUIC client settings of a raw client: TLS 1.3 trusting `ca_pem`,
/// ALPN `qim/1`, no idle timeout of its own.
pub fn quic_client_config(ca_pem: &[u8]) -> quinn::ClientConfig {
    let tls = tls_client_config(ca_pem);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // The server's idle timeout governs, as for the SDK (which asks for
    // more): a raw client that stays silent for a minute of simulated
    // time meets the gateway's heartbeat deadline, not quinn's default.
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    config.transport_config(Arc::new(transport));
    config
}

/// A client that speaks the wire protocol by hand.
pub struct Raw {
    pub conn: quinn::Connection,
    pub endpoint: quinn::Endpoint,
}

pub struct RawSession {
    pub raw: Raw,
    pub welcome: v1::Welcome,
    pub control_send: FramedSend,
    pub control_recv: FramedRecv,
}

impl RawSession {
    /// One rpc request of any kind; the response's kind.
    pub async fn rpc(&self, kind: v1::rpc_request::Kind) -> v1::rpc_response::Kind {
        let (send, recv) = self.raw.conn.open_bi().await.expect("rpc");
        let mut send = FramedSend::new(send, StreamKind::Rpc, 64 * 1024);
        let mut recv = FramedRecv::new(recv, 64 * 1024);
        send.send(&v1::RpcRequest { kind: Some(kind) })
            .await
            .expect("request");
        recv.next::<v1::RpcResponse>()
            .await
            .expect("response")
            .and_then(|r| r.kind)
            .expect("a response")
    }

    /// One sync request over rpc: the inbox after `after`.
    pub async fn sync(&self, after: u64) -> v1::SyncResponse {
        let request = v1::rpc_request::Kind::Sync(v1::SyncRequest {
            after_seq: after,
            limit: 100,
        });
        match self.rpc(request).await {
            v1::rpc_response::Kind::Sync(page) => page,
            other => panic!("expected a sync page, got {other:?}"),
        }
    }
}

impl Raw {
    pub async fn connect(gw: &TestGateway) -> Raw {
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        Raw::connect_from(endpoint, gw.addr, &gw.ca_pem).await
    }

    /// Connects from `endpoint` (on a real or a simulated socket) to the
    /// gateway at `addr`, trusting `ca_pem`.
    pub async fn connect_from(
        mut endpoint: quinn::Endpoint,
        addr: SocketAddr,
        ca_pem: &[u8],
    ) -> Raw {
        endpoint.set_default_client_config(quic_client_config(ca_pem));
        let conn = endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        Raw { conn, endpoint }
    }

    /// Connects and sends Hello; returns the server's first control frame.
    pub async fn hello(
        gw: &TestGateway,
        token: &str,
        device: &str,
        resume_from: u64,
    ) -> (Raw, FramedSend, FramedRecv, Option<v1::ServerControl>) {
        Raw::connect(gw)
            .await
            .say_hello(token, device, resume_from)
            .await
    }

    /// Sends Hello; returns the server's first control frame.
    pub async fn say_hello(
        self,
        token: &str,
        device: &str,
        resume_from: u64,
    ) -> (Raw, FramedSend, FramedRecv, Option<v1::ServerControl>) {
        let (send, recv) = self.conn.open_bi().await.expect("open control");
        let mut control_send = FramedSend::new(send, StreamKind::Control, 64 * 1024);
        let mut control_recv = FramedRecv::new(recv, 64 * 1024);
        control_send
            .send(&v1::ClientControl {
                kind: Some(v1::client_control::Kind::Hello(v1::Hello {
                    token: token.to_owned(),
                    device_id: device.to_owned(),
                    platform: v1::Platform::Desktop as i32,
                    sdk_version: "raw-test".into(),
                    resume_from,
                })),
            })
            .await
            .expect("send hello");
        let reply = control_recv
            .next::<v1::ServerControl>()
            .await
            .ok()
            .flatten();
        (self, control_send, control_recv, reply)
    }

    pub async fn login(gw: &TestGateway, user: &str, device: &str, resume_from: u64) -> RawSession {
        Raw::connect(gw)
            .await
            .log_in(&gw.token(user), device, resume_from)
            .await
    }

    /// Sends Hello with `token` and expects a Welcome.
    pub async fn log_in(self, token: &str, device: &str, resume_from: u64) -> RawSession {
        let (raw, control_send, control_recv, reply) =
            self.say_hello(token, device, resume_from).await;
        let welcome = match reply.and_then(|r| r.kind) {
            Some(v1::server_control::Kind::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        RawSession {
            raw,
            welcome,
            control_send,
            control_recv,
        }
    }

    pub async fn open_uni(&self, kind: StreamKind) -> FramedSend {
        let stream = self.conn.open_uni().await.expect("open uni");
        FramedSend::new(stream, kind, 64 * 1024)
    }

    /// The server's ack and delivery streams, identified by preamble.
    pub async fn server_streams(&self) -> (FramedRecv, FramedRecv) {
        let mut ack = None;
        let mut delivery = None;
        while ack.is_none() || delivery.is_none() {
            let mut stream = tokio::time::timeout(PATIENCE, self.conn.accept_uni())
                .await
                .expect("server opens its streams")
                .expect("accept uni");
            match read_preamble(&mut stream).await.expect("preamble") {
                StreamKind::Ack => ack = Some(FramedRecv::new(stream, 64 * 1024)),
                StreamKind::Delivery => delivery = Some(FramedRecv::new(stream, 64 * 1024)),
                other => panic!("unexpected server stream {other:?}"),
            }
        }
        (ack.expect("ack"), delivery.expect("delivery"))
    }

    /// Waits for the server to close the connection; returns its code.
    pub async fn closed_with(&self) -> ErrorCode {
        let reason = tokio::time::timeout(PATIENCE, self.conn.closed())
            .await
            .expect("server closes the connection");
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                ErrorCode::from_quic(close.error_code.into_inner())
            }
            other => panic!("closed without an application code: {other}"),
        }
    }
}
