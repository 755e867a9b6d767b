//! A deadline that may be unset, for `select!` loops whose timer arm is
//! off until something sets it (a drain, a retransmit, a scheduled send).

use tokio::time::Instant;

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
