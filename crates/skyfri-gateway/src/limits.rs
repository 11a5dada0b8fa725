//! The limits a call meets before and while it runs, each answered with a JSON error that
//! names the limit and its value (`"limit": {"scope", "name", "value", "unit"}`).
//!
//! - **Rate** (429 with `Retry-After`, whole seconds until a token is there): a token bucket
//!   per client address (`skyfri up --rate-per-ip R --burst-per-ip B`, off by default; see
//!   [`clients`]) and one per function (`com.skyfri.rate`, `com.skyfri.burst`), shared by its
//!   sync and async calls. The client's bucket is asked first. Rejections count in
//!   `gateway_rate_limited_total{function_name, limit="client"|"function"}`.
//! - **Body** (413): the function's `com.skyfri.max-body`, which may only lower the gateway's
//!   `--max-body` (a deploy asking more is refused).
//! - **Time** (504): one timeout per call, the function's (`exec_timeout` / `timeoutSeconds`,
//!   default 60 s), bounded by the gateway's `--max-timeout` (default 15 min; a deploy asking
//!   more is refused, while the default and a stored function above a lowered maximum are
//!   cut at the maximum). It
//!   runs from the moment the call is forwarded: waiting for a replica, the function's work
//!   and the streaming of its answer all count. An answer whose head came in time but whose
//!   body is still streaming at the deadline is cut (the connection is closed mid-body).

pub mod bucket;
pub mod clients;
pub mod logins;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;
use skyfri_core::function::DEFAULT_TIMEOUT_SECS;
use skyfri_core::limits::{Rate, BURST_KEY, MAX_BODY_KEY, RATE_KEY};
use skyfri_core::FunctionSpec;

use crate::error::GatewayError;
use crate::state::{AppState, Live};
use bucket::{retry_after_secs, Bucket};
use clients::Clients;

/// Longest call unless `skyfri up --max-timeout` says otherwise.
pub const DEFAULT_MAX_TIMEOUT_SECS: u64 = 15 * 60;

/// The gateway's own limits, from `skyfri up`.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Longest a call may take; a function may ask for less.
    pub max_timeout: Duration,
    /// Calls admitted per client address; `None`: no per-client limit.
    pub per_ip: Option<Rate>,
    /// Client addresses tracked at once (bounds the memory of the per-client buckets).
    pub max_clients: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_timeout: Duration::from_secs(DEFAULT_MAX_TIMEOUT_SECS),
            per_ip: None,
            max_clients: clients::DEFAULT_CAPACITY,
        }
    }
}

/// The gateway's limits as the request paths use them.
pub struct GatewayLimits {
    pub max_timeout: Duration,
    pub clients: Option<Clients>,
}

impl GatewayLimits {
    pub fn new(settings: &LimitSettings) -> GatewayLimits {
        GatewayLimits {
            max_timeout: settings.max_timeout,
            clients: settings
                .per_ip
                .map(|rate| Clients::new(rate, settings.max_clients)),
        }
    }
}

/// Which limit stopped a call, as the JSON error carries it.
#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    /// `function` (set by the function), `gateway` (a `skyfri up` flag) or `client` (the
    /// per-client rate, also a flag).
    pub scope: &'static str,
    /// The annotation, setting or flag that sets it.
    pub name: &'static str,
    pub value: serde_json::Value,
    pub unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Seconds until the call may be tried again (the `Retry-After` header).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

/// The per-function bucket of a deployment: the previous one when the rate is unchanged (a
/// redeploy does not refill it), else a new one.
pub fn function_bucket(rate: Option<Rate>, old: Option<&Arc<Bucket>>) -> Option<Arc<Bucket>> {
    let rate = rate?;
    match old {
        Some(b) if b.rate == rate => Some(Arc::clone(b)),
        _ => Some(Arc::new(Bucket::new(rate))),
    }
}

/// The address of the connection a request came on (never `X-Forwarded-For`).
pub fn peer<B>(req: &axum::http::Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Admits one call of `live` from `peer`, or answers 429: the client's bucket first, then
/// the function's.
pub fn admit(state: &AppState, live: &Live, peer: Option<IpAddr>) -> Result<(), GatewayError> {
    if state.limits.clients.is_none() && live.rate.is_none() {
        return Ok(());
    }
    let now = bucket::now();
    let name = &live.deployment.spec.name;
    if let (Some(clients), Some(ip)) = (&state.limits.clients, peer) {
        if let Err(wait) = clients.take(ip, now) {
            let rate = clients.rate;
            let secs = retry_after_secs(wait);
            state.metrics.rate_limited(name, "client");
            tracing::debug!(function = %name, client = %ip, "rate limited (client)");
            return Err(too_many(
                format!(
                    "too many calls from your address: the gateway admits {} calls per second per client, in bursts of up to {} (skyfri up --rate-per-ip / --burst-per-ip); retry in {secs}s",
                    rate.per_second, rate.burst
                ),
                "client",
                "--rate-per-ip",
                rate,
                secs,
            ));
        }
    }
    if let Some(bucket) = &live.rate {
        if let Err(wait) = bucket.take(now) {
            let rate = bucket.rate;
            let secs = retry_after_secs(wait);
            state.metrics.rate_limited(name, "function");
            tracing::debug!(function = %name, "rate limited (function)");
            return Err(too_many(
                format!(
                    "function {name:?} admits {} calls per second, in bursts of up to {} ({RATE_KEY} / {BURST_KEY}); retry in {secs}s",
                    rate.per_second, rate.burst
                ),
                "function",
                RATE_KEY,
                rate,
                secs,
            ));
        }
    }
    Ok(())
}

fn too_many(
    message: String,
    scope: &'static str,
    name: &'static str,
    rate: Rate,
    retry_after: u64,
) -> GatewayError {
    GatewayError::Caller {
        status: StatusCode::TOO_MANY_REQUESTS,
        message,
    }
    .with_limit(Limit {
        scope,
        name,
        value: json!(rate.per_second),
        unit: "calls/s",
        burst: Some(rate.burst),
        retry_after: Some(retry_after),
    })
}

/// The largest body a call of `live` may send: the function's limit when it has one below
/// the gateway's, else the gateway's.
pub fn body_limit(state: &AppState, live: &Live) -> (usize, Limit) {
    let gateway = state.max_body;
    match live.limits.max_body {
        Some(own) if own <= gateway as u64 => (
            own as usize,
            Limit {
                scope: "function",
                name: MAX_BODY_KEY,
                value: json!(own),
                unit: "bytes",
                burst: None,
                retry_after: None,
            },
        ),
        _ => gateway_body_limit(state),
    }
}

/// The gateway's largest body (`skyfri up --max-body`), whatever the function.
pub fn gateway_body_limit(state: &AppState) -> (usize, Limit) {
    let gateway = state.max_body;
    (
        gateway,
        Limit {
            scope: "gateway",
            name: "--max-body",
            value: json!(gateway),
            unit: "bytes",
            burst: None,
            retry_after: None,
        },
    )
}

/// The 413 for a body over `limit`.
pub fn body_too_large(function: &str, bytes: usize, limit: Limit) -> GatewayError {
    let whose = match (limit.scope, limit.name) {
        ("function", _) => format!("function {function:?}'s limit ({MAX_BODY_KEY})"),
        (_, "--max-body") => "the gateway's limit (skyfri up --max-body)".to_string(),
        (_, api) => format!("the limit of the {api}"),
    };
    GatewayError::Caller {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body is larger than {whose} of {bytes} bytes"),
    }
    .with_limit(limit)
}

/// How long a call of `spec` may take: its own timeout, or the gateway's maximum when that
/// is shorter.
pub fn call_timeout(state: &AppState, spec: &FunctionSpec) -> (Duration, Limit) {
    let own = Duration::from_secs(spec.timeout_secs);
    let max = state.limits.max_timeout;
    let (scope, name, value) = if own <= max {
        ("function", "exec_timeout", own)
    } else {
        ("gateway", "--max-timeout", max)
    };
    (
        value,
        Limit {
            scope,
            name,
            value: json!(value.as_secs_f64()),
            unit: "seconds",
            burst: None,
            retry_after: None,
        },
    )
}

/// The 504 of a call of `spec` cut at `limit`.
pub fn timed_out(spec: &FunctionSpec, limit: Limit, waited: Option<Duration>) -> GatewayError {
    let name = &spec.name;
    let secs = limit.value.as_f64().unwrap_or_default();
    let which = match limit.scope {
        "function" => format!("its timeout of {secs}s (exec_timeout / timeoutSeconds)"),
        _ => format!(
            "the gateway's maximum of {secs}s (skyfri up --max-timeout; the function asks for {}s)",
            spec.timeout_secs
        ),
    };
    let waited = match waited {
        Some(w) if w >= Duration::from_millis(100) => {
            format!(", {:.1}s of it waiting for a replica", w.as_secs_f64())
        }
        _ => String::new(),
    };
    GatewayError::Function {
        status: StatusCode::GATEWAY_TIMEOUT,
        message: format!("function {name:?} did not answer within {which}{waited}"),
    }
    .with_limit(limit)
}

/// Refuses a deployment that asks for more than the gateway allows, naming the function and
/// the key.
pub fn check_deploy(state: &AppState, spec: &FunctionSpec) -> Result<(), GatewayError> {
    let name = &spec.name;
    let max = state.limits.max_timeout.as_secs();
    // The default is not the function's wish: it is cut at a shorter maximum without fuss.
    if spec.timeout_secs > max && spec.timeout_secs != DEFAULT_TIMEOUT_SECS {
        return Err(GatewayError::bad_request(format!(
            "function {name:?}: its timeout of {}s (exec_timeout / timeoutSeconds) is more than the gateway's maximum of {max}s (skyfri up --max-timeout): lower it, or raise the maximum",
            spec.timeout_secs
        )));
    }
    let limits = skyfri_core::limits::CallLimits::from_spec(spec)
        .map_err(|e| GatewayError::bad_request(format!("function {name:?}: {e}")))?;
    if let Some(own) = limits.max_body {
        if own > state.max_body as u64 {
            return Err(GatewayError::bad_request(format!(
                "function {name:?}: {MAX_BODY_KEY} of {own} bytes is more than the gateway's limit of {} bytes (skyfri up --max-body); a function may only lower it",
                state.max_body
            )));
        }
    }
    Ok(())
}
