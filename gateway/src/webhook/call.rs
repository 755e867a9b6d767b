//! One signed webhook call: a POST with a deadline over the whole
//! exchange, and an answer read up to a byte bound (a hostile or broken
//! endpoint can neither hold a task past the deadline nor make the gateway
//! buffer more than the bound).

use std::time::Duration;

use super::sign::Signer;

/// Why a call did not give a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// The deadline passed (connect, request or answer).
    #[error("timed out")]
    Timeout,
    /// The endpoint could not be reached or broke the connection.
    #[error("unreachable")]
    Unreachable,
    /// A status other than 2xx.
    #[error("status {0}")]
    Status(u16),
    /// The answer is longer than `webhooks.max_response_bytes`.
    #[error("answer too large")]
    TooLarge,
}

impl CallError {
    /// The metric's outcome label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Unreachable => "unreachable",
            CallError::Status(_) => "error_status",
            CallError::TooLarge => "too_large",
        }
    }
}

/// POSTs `body` signed to `url`; the answer's bytes on a 2xx status.
pub(crate) async fn call(
    http: &reqwest::Client,
    signer: &Signer,
    url: &str,
    body: String,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, CallError> {
    let exchange = async {
        let mut response = signer.post(http, url, body).send().await.map_err(|e| {
            tracing::debug!(url, error = %e, "webhook request failed");
            if e.is_timeout() {
                CallError::Timeout
            } else {
                CallError::Unreachable
            }
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(CallError::Status(status));
        }
        if response
            .content_length()
            .is_some_and(|n| n > max_bytes as u64)
        {
            return Err(CallError::TooLarge);
        }
        let mut answer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if answer.len() + chunk.len() > max_bytes {
                        return Err(CallError::TooLarge);
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(answer),
                Err(e) if e.is_timeout() => return Err(CallError::Timeout),
                Err(_) => return Err(CallError::Unreachable),
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(CallError::Timeout))
}

/// The client of every webhook call: the system's roots plus
/// `webhooks.ca_file`, no redirects (a signed body goes only where it was
/// configured to).
pub(crate) fn http_client(
    config: &crate::config::Webhooks,
) -> Result<reqwest::Client, super::SetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(
            config.timeout_ms.max(config.hook_timeout_ms),
        ))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| super::SetupError(format!("webhooks.ca_file {}: {e}", path.display())))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| super::SetupError(format!("webhooks.ca_file {}: {e}", path.display())))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| super::SetupError(format!("the webhook HTTP client: {e}")))
}
