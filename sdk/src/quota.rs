//! The user's quotas as the server counts them: what each allows and how
//! much of it is used now. A send past a quota fails with
//! [`Error::Rejected`](crate::Error::Rejected): `RATE_LIMITED` (the SDK
//! retries it after the server's `retry_after_ms`), `QUOTA_EXCEEDED` (not
//! retried).

use qim_proto::v1::{self, rpc_request, rpc_response};

use crate::Error;
use crate::client::Client;
use crate::rpc::unexpected;

/// One quota of this user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Quota {
    /// The quota's name: `sends_per_second` (inbox copies per second; used:
    /// copies of the burst in use now), `stored_bytes_per_day` (UTC day),
    /// `groups_owned`, `pending_requests`, and whatever else the server
    /// counts.
    pub name: String,
    /// What the quota allows.
    pub limit: u64,
    /// How much of it is used now.
    pub used: u64,
}

impl Client {
    /// This user's quotas, each with its limit and usage.
    pub async fn quota(&self) -> Result<Vec<Quota>, Error> {
        match self
            .rpc(rpc_request::Kind::Quota(v1::QuotaRequest {}))
            .await?
        {
            rpc_response::Kind::Quota(q) => Ok(q
                .quotas
                .into_iter()
                .map(|q| Quota {
                    name: q.name,
                    limit: q.limit,
                    used: q.used,
                })
                .collect()),
            _ => Err(unexpected()),
        }
    }
}
