//! The failed-credential limit: one token bucket of failures per client address, shared by
//! every place the gateway checks a credential (basic auth and bearer tokens on `/system`,
//! private functions, the Lambda Invoke API's SigV4, bearer and basic credentials, and the
//! dashboard's login), so that guessing at one door spends the budget of all of them.
//!
//! A client may fail [`BURST`] times at once and then once every [`EVERY_SECS`] seconds
//! (10 a minute). A client whose budget is spent is answered 429 with `Retry-After` before
//! its credentials are looked at: right or wrong, the answer and its timing are the same, so
//! the limit is no oracle. Successful logins spend nothing, and one client's failures never
//! block another's: the client is the address `crate::auth::client_ip` computes (behind a
//! `--trusted-proxy`, the address the proxy saw), counted as [`super::clients`] counts
//! addresses (an IPv6 client is its /64).

use std::net::IpAddr;

use axum::http::StatusCode;
use serde_json::json;
use skyfri_core::limits::Rate;

use super::bucket::{self, retry_after_secs};
use super::clients::Clients;
use super::Limit;
use crate::error::GatewayError;

/// Failures a client may make at once.
pub const BURST: u32 = 10;
/// Then one failure every this many seconds.
pub const EVERY_SECS: f64 = 6.0;
/// Client addresses whose failures are remembered at once (a full table forgets the
/// clients closest to a full budget first).
const CLIENTS: usize = 16_384;

/// The failures per client address.
pub struct FailedLogins {
    clients: Clients,
}

impl Default for FailedLogins {
    fn default() -> FailedLogins {
        FailedLogins {
            clients: Clients::new(
                Rate {
                    per_second: 1.0 / EVERY_SECS,
                    burst: BURST,
                },
                CLIENTS,
            ),
        }
    }
}

impl FailedLogins {
    /// Whether `client` may present a credential now; else the seconds until it may.
    /// A request whose client is not known (no peer address) is not limited.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), u64> {
        match client {
            Some(ip) => self
                .clients
                .check(ip, bucket::now())
                .map_err(retry_after_secs),
            None => Ok(()),
        }
    }

    /// Counts a refused credential of `client`.
    pub fn failed(&self, client: Option<IpAddr>) {
        if let Some(ip) = client {
            // Over the budget already (failures that raced past `check`): nothing to add.
            let _ = self.clients.take(ip, bucket::now());
        }
    }
}

/// The 429 of a client out of budget, as the gateway's JSON error.
pub fn too_many(retry_after: u64) -> GatewayError {
    GatewayError::Caller {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: too_many_text(retry_after),
    }
    .with_limit(Limit {
        scope: "client",
        name: "failed logins",
        value: json!(60.0 / EVERY_SECS),
        unit: "failures/min",
        burst: Some(BURST),
        retry_after: Some(retry_after),
    })
}

/// What a client out of budget is told.
pub fn too_many_text(retry_after: u64) -> String {
    format!(
        "too many failed logins from your address ({BURST} at once, then one every {EVERY_SECS} s): credentials are not checked until then; retry in {retry_after} s"
    )
}

#[cfg(test)]
mod tests;
