//! The gateway: binding the QUIC endpoint and the admin listeners, the
//! accept loop, and graceful shutdown.
//!
//! [`Gateway::bind`] opens the store and sockets (port 0 works, so tests run
//! side by side); [`Gateway::run`] serves until the shutdown future resolves,
//! then stops accepting, sends every session a GoAway, waits for clients to
//! leave (up to `shutdown.drain_ms`), closes the rest and flushes the store.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qim_proto::v1::ErrorCode;
use qim_storage::Stores;
use thiserror::Error;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::auth::TokenKey;
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::ctx::Ctx;
use crate::metrics::Metrics;
use crate::tls::{self, DevCertSpec, TlsError};

/// Why the gateway could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// Certificates could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A token key could not be read (missing, empty, not base64, shorter
    /// than 32 bytes) or the development secret could not be created.
    #[error("token key {path}: {source}")]
    Secret {
        /// The key file (or the setting at fault).
        path: PathBuf,
        /// The failure.
        source: crate::auth::KeyError,
    },
    /// The endpoint secret could not be read or created, or is missing or
    /// short on a cluster node.
    #[error(transparent)]
    EndpointSecret(#[from] crate::secrets::endpoint::EndpointSecretError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] qim_storage::StoreError),
    /// The object store's secret key could not be read.
    #[error(transparent)]
    S3Secret(#[from] crate::config::S3SecretError),
    /// A socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The admin API's keys file was refused.
    #[error("admin.keys_file: {0}")]
    AdminKeys(#[from] crate::admin::KeysError),
    /// The QUIC configuration was refused.
    #[error("quic config: {0}")]
    Quic(String),
    /// A push provider's key or account file could not be loaded.
    #[error("offline push: {0}")]
    Notify(String),
    /// The webhook secret or CA file could not be loaded, or the queue opened.
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// Why a running gateway stopped on its own.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The store failed in a way only a restart repairs.
    #[error("store failed: {0}")]
    StoreFailed(String),
}

/// Where a started gateway can be reached, for logs, tests and tools.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// The bound QUIC (UDP) address.
    pub quic_addr: SocketAddr,
    /// The bound TLS-on-TCP address (`transport.tcp_listen`), when TCP is
    /// on (`transport.tcp`).
    pub tcp_addr: Option<SocketAddr>,
    /// The bound health, metrics and route listener (`admin.listen`; no
    /// authentication).
    pub admin_addr: SocketAddr,
    /// The bound admin API (`admin.api_listen`), when `admin.keys_file` is
    /// set.
    pub api_addr: Option<SocketAddr>,
    /// The bound public route endpoint (`cluster.route_listen`), if any.
    pub route_addr: Option<SocketAddr>,
    /// This node's id in the cluster registry.
    pub node_id: String,
    /// Whether the node joined a cluster (`store.redis` set).
    pub clustered: bool,
    /// The development CA clients must trust, when development certificates
    /// are in use.
    pub dev_ca: Option<PathBuf>,
    /// The token secret file, when it is the generated development one.
    pub dev_secret: Option<PathBuf>,
    /// The name clients verify the certificate against.
    pub public_name: String,
}

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    ctx: Arc<Ctx>,
    endpoint: quinn::Endpoint,
    /// TLS on TCP, when on.
    tcp: Option<crate::transport::TcpListener>,
    admin: tokio::net::TcpListener,
    /// The admin API's listener and keys, when `admin.keys_file` is set.
    api: Option<(tokio::net::TcpListener, Arc<crate::admin::ApiKeys>)>,
    route: Option<tokio::net::TcpListener>,
    info: StartInfo,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Opens the store and binds: the cluster store (Redis + CQL) when
    /// `store.redis` and `store.cql` are set, else the embedded store under
    /// `server.data_dir`.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let retention = config.im.history_retention_ms;
        let stores = match config.store.cluster_options() {
            Some(options) => Stores::connect_cluster(&options, retention).await?,
            None => {
                let engine = config
                    .store
                    .engine()
                    .map_err(qim_storage::StoreError::Invalid)?;
                let dir = config.server.data_dir.join("store");
                let options = qim_storage::embedded::StoreOptions {
                    engine,
                    cache_bytes: config.store.cache_mb.saturating_mul(1 << 20),
                    log: config.store.log,
                };
                Stores::open_embedded_on(&dir, &options, retention)?
            }
        };
        let stores = match (config.media.s3_options()?, &config.media.blob_dir) {
            (Some(options), _) => {
                let blobs = qim_storage::media::s3::S3Blobs::new(&options)?;
                // Refused credentials or an unreachable store fail the
                // start, not the first upload.
                blobs.check().await?;
                stores.with_blobs(Arc::new(blobs))
            }
            (None, Some(dir)) => {
                stores.with_blobs(Arc::new(qim_storage::media::files::FileBlobs::open(dir)?))
            }
            (None, None) => stores,
        };
        Self::bind_with_stores(config, stores).await
    }

    /// Binds with stores chosen by the caller (usually one backend's).
    pub async fn bind_with_stores(config: Config, stores: Stores) -> Result<Gateway, StartError> {
        Self::bind_inner(config, stores, None).await
    }

    /// Like [`bind_with_stores`](Gateway::bind_with_stores), but serves QUIC
    /// on `socket` instead of binding `server.listen`: a socket the caller
    /// made, such as one of an in-process network in tests. quinn runs on
    /// tokio (its timers follow tokio's clock); `quic.receive_thread` and
    /// the UDP buffer sizes do not apply.
    pub async fn bind_on_socket(
        config: Config,
        stores: Stores,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Gateway, StartError> {
        Self::bind_inner(config, stores, Some(socket)).await
    }

    async fn bind_inner(
        config: Config,
        stores: Stores,
        socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    ) -> Result<Gateway, StartError> {
        let data_dir = &config.server.data_dir;
        let (cert, key, dev_ca) = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone(), None),
            _ => {
                let (paths, created) =
                    tls::ensure_dev_certs(&data_dir.join("certs"), &DevCertSpec::default())?;
                if created {
                    info!(ca = %paths.ca_cert.display(), "created development certificates");
                }
                (paths.server_cert, paths.server_key, Some(paths.ca_cert))
            }
        };
        let (tokens, dev_secret) = crate::auth::keys_from_config(&config)
            .map_err(|(path, source)| StartError::Secret { path, source })?;

        let metrics = Arc::new(Metrics::new());
        let endpoint = bind_endpoint(&config, &cert, &key, &metrics, socket)?;
        let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let resumption = tls::Resumption {
            cache: config.tls.resumption_cache,
            zero_rtt: false,
            resumed: metrics.tls_resumptions.clone(),
        };
        let tcp = crate::transport::TcpListener::bind(&config, &cert, &key, &resumption).await?;
        let tcp_addr = match &tcp {
            Some(tcp) => Some(tcp.local_addr().map_err(|source| StartError::Bind {
                addr: quic_addr,
                source,
            })?),
            None => None,
        };
        let admin = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: config.admin.listen,
            source,
        })?;
        let (api, api_addr) = match &config.admin.keys_file {
            Some(path) => {
                let keys = Arc::new(crate::admin::ApiKeys::load(path)?);
                let addr = config.admin.api_listen;
                let bind_err = |source| StartError::Bind { addr, source };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?;
                let bound = listener.local_addr().map_err(bind_err)?;
                (Some((listener, keys)), Some(bound))
            }
            None => (None, None),
        };
        let (route, route_addr) = match config.cluster.route_listen {
            Some(addr) => {
                let bind_err = |source| StartError::Bind { addr, source };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?;
                let bound = listener.local_addr().map_err(bind_err)?;
                (Some(listener), Some(bound))
            }
            None => (None, None),
        };
        let identity = cluster::identity(&config, quic_addr, route_addr.unwrap_or(admin_addr))
            .with_tcp(tcp_addr, &config);
        let cluster = Cluster::join(&config, identity.clone()).await?;
        let info = StartInfo {
            quic_addr,
            tcp_addr,
            admin_addr,
            api_addr,
            route_addr,
            node_id: identity.id.clone(),
            clustered: cluster.is_some(),
            dev_ca,
            dev_secret,
            public_name: config.server.public_name.clone(),
        };
        crate::notify::check(&config.notify).map_err(StartError::Notify)?;
        let webhooks = crate::webhook::Webhooks::load(&config, Arc::clone(&metrics))
            .map_err(|e| StartError::Webhooks(e.to_string()))?;
        let ctx = Arc::new(Ctx::new(
            config, stores, cluster, identity, metrics, tokens, webhooks,
        ));
        Ok(Gateway {
            ctx,
            endpoint,
            tcp,
            admin,
            api,
            route,
            info,
        })
    }

    /// Where the gateway listens.
    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    /// The key new tokens are signed with (tests and tools mint with it).
    pub fn token_key(&self) -> TokenKey {
        self.ctx.tokens.signing().clone()
    }

    /// Serves until `shutdown` resolves, then drains and returns. Returns an
    /// error when it stopped because the store failed for good (after
    /// draining too): the process should exit and be restarted.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
        let Gateway {
            ctx,
            endpoint,
            tcp,
            admin,
            api,
            route,
            info: _,
        } = self;
        let keys = api.as_ref().map(|(_, keys)| Arc::clone(keys));
        let admin_state = crate::admin::AdminState::new(Arc::clone(&ctx), keys);
        let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
        let serve_http =
            |listener: tokio::net::TcpListener, app: axum::Router, what: &'static str| {
                let mut stopped = admin_stopped.clone();
                tokio::spawn(async move {
                    let app = app.into_make_service_with_connect_info::<SocketAddr>();
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    if let Err(e) = serve.await {
                        warn!(error = %e, listener = what, "admin HTTP failed");
                    }
                })
            };
        let admin_task = serve_http(
            admin,
            crate::admin::metrics_app(admin_state.clone()),
            "metrics",
        );
        let api_task = api.map(|(listener, _)| {
            serve_http(
                listener,
                crate::admin::api_app(admin_state.clone()),
                "admin API",
            )
        });

        let scheduler = tokio::spawn(crate::schedule::run(Arc::clone(&ctx)));
        tokio::spawn(crate::notify::run(Arc::clone(&ctx)));
        crate::webhook::start(&ctx);
        let media_sweep = tokio::spawn(crate::media::sweep_abandoned(
            Arc::clone(&ctx),
            ctx.draining.subscribe(),
        ));
        let media_collect = tokio::spawn(crate::media::collect_unreferenced(
            Arc::clone(&ctx),
            ctx.draining.subscribe(),
        ));
        let disk_watch = {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move { ctx.quotas.watch_disk(ctx.draining.subscribe()).await })
        };

        let route_task = route.map(|listener| {
            let app = crate::admin::route_app(admin_state.clone())
                .into_make_service_with_connect_info::<SocketAddr>();
            let mut draining = ctx.draining.subscribe();
            tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = draining.wait_for(|d| *d).await;
                });
                if let Err(e) = serve.await {
                    warn!(error = %e, "route endpoint failed");
                }
            })
        });
        let cluster = ctx.cluster.as_ref().map(|c| {
            let mut running = c.start(cluster::Local {
                routes: Arc::clone(&ctx.routes),
                metrics: Arc::clone(&ctx.metrics),
                draining: ctx.draining.subscribe(),
            });
            let inbound = running.inbound();
            let ctx = Arc::clone(&ctx);
            let receiver = tokio::spawn(async move {
                if let Some(inbound) = inbound {
                    let groups = Arc::clone(&ctx.stores.groups);
                    ctx.fanout.receive(groups, inbound).await;
                }
            });
            (running, receiver)
        });

        let admission = crate::handshake::Admission::new(&ctx.config, Arc::clone(&ctx.metrics));
        let mut connections = JoinSet::new();
        let mut fatal = ctx.fatal.subscribe();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = fatal.changed() => {
                    tracing::error!(reason = ?*fatal.borrow(), "store failed; draining and stopping");
                    break;
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                attempt = accept_tcp(tcp.as_ref(), &admission, &ctx) => {
                    connections.spawn(crate::transport::serve(Arc::clone(&ctx), attempt));
                }
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if let Some((incoming, pending)) = admission.admit(incoming) {
                        connections.spawn(crate::handshake::serve(Arc::clone(&ctx), incoming, pending));
                    }
                }
            }
        }

        info!(
            sessions = connections.len(),
            "shutting down: refusing new connections, draining"
        );
        endpoint.set_server_config(None);
        drop(tcp);
        ctx.draining.send_replace(true);
        let _ = scheduler.await;
        let _ = media_sweep.await;
        let _ = media_collect.await;
        let _ = disk_watch.await;
        let drain = Duration::from_millis(ctx.config.shutdown.drain_ms) + Duration::from_secs(1);
        let drained = tokio::time::timeout(drain, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                left = connections.len(),
                "drain timed out; closing the rest"
            );
            connections.abort_all();
        }
        endpoint.close(ErrorCode::ShuttingDown.to_quic().into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        if let Some((cluster, receiver)) = cluster {
            cluster.leave().await;
            let _ = receiver.await;
        }
        if let Some(task) = route_task {
            let _ = task.await;
        }
        // Sessions ended (their offline events queued): the queue's last
        // write, before the process may exit.
        crate::webhook::stop(&ctx).await;
        if let Err(e) = ctx.stores.messages.flush().await {
            warn!(error = %e, "final store flush failed");
        }
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        if let Some(task) = api_task {
            let _ = task.await;
        }
        info!("gateway stopped");
        match ctx.fatal.borrow().clone() {
            Some(reason) => Err(RunError::StoreFailed(reason)),
            None => Ok(()),
        }
    }
}

/// The next TCP attempt, when TCP is on; never resolves otherwise.
async fn accept_tcp(
    tcp: Option<&crate::transport::TcpListener>,
    admission: &crate::handshake::Admission,
    ctx: &Ctx,
) -> crate::transport::Attempt {
    match tcp {
        Some(tcp) => tcp.accept(admission, ctx).await,
        None => std::future::pending().await,
    }
}

fn bind_endpoint(
    config: &Config,
    cert: &std::path::Path,
    key: &std::path::Path,
    metrics: &Metrics,
    socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
) -> Result<quinn::Endpoint, StartError> {
    let q = &config.quic;
    let resumption = tls::Resumption {
        cache: config.tls.resumption_cache,
        zero_rtt: config.tls.zero_rtt,
        resumed: metrics.tls_resumptions.clone(),
    };
    let rustls_config = tls::server_config(cert, key, &resumption)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_config)
        .map_err(|e| StartError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(q.idle_timeout_ms))
        .map_err(|e| StartError::Quic(e.to_string()))?;
    transport
        .max_concurrent_bidi_streams(q.max_bidi_streams.into())
        .max_concurrent_uni_streams(q.max_uni_streams.into())
        .stream_receive_window(q.stream_receive_window.into())
        .receive_window(q.receive_window.into())
        .max_idle_timeout(Some(idle))
        // Liveness is the heartbeat stream's job; QUIC keep-alives would
        // only wake phones.
        .keep_alive_interval(None)
        .enable_segmentation_offload(q.segmentation_offload)
        .datagram_receive_buffer_size(
            (q.datagram_receive_buffer > 0).then_some(q.datagram_receive_buffer),
        );
    if !q.mtu_discovery {
        transport.mtu_discovery_config(None);
    }
    server.transport_config(Arc::new(transport));
    server.migration(true);

    let endpoint_config = endpoint_config(config)?;
    let addr = config.server.listen;
    let bind_err = |source| StartError::Bind { addr, source };
    if let Some(socket) = socket {
        return quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind_err)?;
    // The kernel may cap these (net.core.rmem_max); log what we got.
    if let Err(e) = socket.set_recv_buffer_size(q.udp_recv_buffer) {
        warn!(error = %e, "setting SO_RCVBUF failed");
    }
    if let Err(e) = socket.set_send_buffer_size(q.udp_send_buffer) {
        warn!(error = %e, "setting SO_SNDBUF failed");
    }
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "udp socket buffers"
    );
    socket.bind(&addr.into()).map_err(bind_err)?;
    let socket: std::net::UdpSocket = socket.into();
    let runtime: Arc<dyn quinn::Runtime> = if q.receive_thread {
        crate::udp::EndpointRuntime::start().map_err(bind_err)?
    } else {
        Arc::new(quinn::TokioRuntime)
    };
    quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind_err)
}

/// The endpoint's connection-ID and stateless-reset keys, derived from the
/// persistent endpoint secret rather than drawn per process: a restarted
/// node, or another node of the cluster, then takes an old connection's
/// packet for one of its own IDs and answers it with a stateless reset, so
/// the client reconnects at once instead of waiting for its idle timeout.
fn endpoint_config(config: &Config) -> Result<quinn::EndpointConfig, StartError> {
    use crate::secrets::endpoint;
    let (keys, created) = endpoint::load(
        config.quic.endpoint_secret_file.as_deref(),
        config.store.redis.is_some(),
        &config.server.data_dir,
    )?;
    if created {
        info!("created the endpoint secret (connection-ID and stateless-reset keys)");
    }
    let cid = keys.cid;
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(keys.reset));
    endpoint
        .cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid)))
        .min_reset_interval(Duration::from_micros(config.quic.reset_interval_us));
    Ok(endpoint)
}
