//! TLS for the QUIC endpoint: loading a configured certificate chain, and
//! development certificates (a local CA and a server certificate signed by
//! it) made with rcgen when none is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use thiserror::Error;

mod sessions;

/// Why TLS could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate, key or settings.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the development certificates are made for; `certs/dev-certs.toml`
/// holds the committed copy that `cargo xtask certs` uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevCertSpec {
    /// DNS names and IP addresses the server certificate is valid for.
    pub names: Vec<String>,
    /// Years the certificates stay valid.
    pub valid_years: u16,
}

impl Default for DevCertSpec {
    fn default() -> Self {
        Self {
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            valid_years: 5,
        }
    }
}

/// Where development certificates are.
#[derive(Debug, Clone)]
pub struct DevCertPaths {
    /// The CA certificate clients trust (`--ca`).
    pub ca_cert: PathBuf,
    /// The server chain (server certificate, then CA).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
}

impl DevCertPaths {
    /// The file names used in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    fn exist(&self) -> bool {
        self.ca_cert.exists() && self.server_cert.exists() && self.server_key.exists()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn current_year() -> i32 {
    let secs = crate::secrets::unix_now();
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Generates a new development CA and server certificate into `dir`.
pub fn write_dev_certs(dir: &Path, spec: &DevCertSpec) -> Result<DevCertPaths, TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let year = current_year();
    let until = year + i32::from(spec.valid_years);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "qim development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = date_time_ymd(year - 1, 1, 1);
    ca_params.not_after = date_time_ymd(until, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(spec.names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "qim development server");
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(until, 1, 1);
    let key = KeyPair::generate()?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    let paths = DevCertPaths::in_dir(dir);
    std::fs::write(&paths.ca_cert, &ca_pem).map_err(io_err(&paths.ca_cert))?;
    std::fs::write(&paths.server_cert, format!("{}{}", cert.pem(), ca_pem))
        .map_err(io_err(&paths.server_cert))?;
    crate::secrets::write_private(&paths.server_key, key.serialize_pem().as_bytes())
        .map_err(io_err(&paths.server_key))?;
    // The CA key is not kept: a development CA signs this one server only.
    Ok(paths)
}

/// Development certificates in `dir`, made on first use.
pub fn ensure_dev_certs(dir: &Path, spec: &DevCertSpec) -> Result<(DevCertPaths, bool), TlsError> {
    let paths = DevCertPaths::in_dir(dir);
    if paths.exist() {
        return Ok((paths, false));
    }
    Ok((write_dev_certs(dir, spec)?, true))
}

/// Reads a PEM certificate chain.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found".into(),
        });
    }
    Ok(chain)
}

/// Session resumption and 0-RTT settings of the server.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Sessions kept (0: no resumption, no 0-RTT).
    pub cache: usize,
    /// Whether resuming clients may send 0-RTT data.
    pub zero_rtt: bool,
    /// Counts resumed handshakes.
    pub resumed: prometheus_client::metrics::counter::Counter,
}

/// The rustls configuration of the QUIC server: TLS 1.3, ALPN `qim/1`,
/// session resumption and 0-RTT as configured.
pub fn server_config(
    cert: &Path,
    key: &Path,
    resumption: &Resumption,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = load_chain(cert)?;
    let key_bytes = std::fs::read(key).map_err(io_err(key))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: e.to_string(),
    })?;
    let provider = Arc::new(qim_proto::tls::crypto_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![qim_proto::ALPN.to_vec()];
    if resumption.cache == 0 {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    } else {
        config.session_storage = Arc::new(sessions::SessionStore::new(
            resumption.cache,
            resumption.resumed.clone(),
        ));
        // One ticket per handshake, not rustls's two: a qim client keeps one
        // connection, and each ticket is single-use, so every resumed
        // handshake hands out the next. Two per handshake filled the
        // cache twice as fast: 50,000 clients issued 100,000 tickets into
        // the 65,536 entries, and the oldest third fell back to full
        // handshakes in a reconnect storm.
        config.send_tls13_tickets = 1;
        if resumption.zero_rtt {
            // QUIC allows only 0 or u32::MAX; the stream flow-control
            // windows bound what a client can actually send early.
            config.max_early_data_size = u32::MAX;
        }
    }
    Ok(config)
}
