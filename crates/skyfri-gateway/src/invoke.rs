//! The invoke path: `/function/NAME[/path]` for any method, proxied to a ready replica with
//! method, path suffix, query, headers and body intact; the response streams back. The async
//! workers (`crate::async_calls`) send their calls through [`forward`] too, so that both get
//! the same replica choice, activation from zero, concurrency limits and timeouts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HOST, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::error::GatewayError;
use crate::limits::{self, Limit};
use crate::router::{Busy, Lease};
use crate::state::{AppState, Live, MAX_CONCURRENCY_KEY, QUEUE_ANNOTATION};
use crate::upstream;

pub(crate) fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !upstream::is_hop_by_hop(k) && k != HOST {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Whether `path` calls a function (`/function/NAME[/...]` with a name), as the router's
/// `/function/{name}` routes take it.
pub fn is_call(path: &str) -> bool {
    split_path(path).is_some_and(|(name, _)| !name.is_empty())
}

/// Splits `/function/NAME/rest` into the name and the path suffix (at least "/").
fn split_path(path: &str) -> Option<(&str, &str)> {
    split_under("/function/", path)
}

/// Splits `PREFIX NAME/rest` into the name and the path suffix (at least "/").
pub(crate) fn split_under<'a>(prefix: &str, path: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(prefix)?;
    // A byte loop: names are short, and `find` sets up a searcher per call.
    match rest.bytes().position(|b| b == b'/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// The function a path segment names: `name.namespace` is OpenFaaS's way to address a
/// namespace; there is one.
pub(crate) fn function_name(segment: &str) -> &str {
    segment
        .strip_suffix(skyfri_core::function::DEFAULT_NAMESPACE)
        .and_then(|s| s.strip_suffix('.'))
        .unwrap_or(segment)
}

/// Now, as `X-Start-Time` gives it (Unix nanoseconds): made once per call, sent to the
/// replica and in the answer.
pub(crate) fn start_time() -> HeaderValue {
    nanos_value(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    )
}

/// One call as it is sent to a replica.
pub struct Outgoing {
    pub method: Method,
    /// The path after the function's name, starting with `/`.
    pub suffix: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub async fn invoke(State(state): State<AppState>, mut req: Request) -> Response {
    let start = Instant::now();
    let peer = limits::peer(&req);
    let live = {
        let Some((segment, _)) = split_path(req.uri().path()) else {
            return GatewayError::not_found("no such route").into_response();
        };
        let name = function_name(segment);
        match state.live(name) {
            Some(live) => live,
            None => {
                return GatewayError::not_found(format!(
                    "function {name:?} is not deployed (see `skyfri ls`)"
                ))
                .into_response()
            }
        }
    };
    let name = live.deployment.spec.name.as_str();
    // The dashboard's session, for a private function called from its invoke form.
    let session = if live.private {
        req.extensions_mut().remove::<crate::auth::Authenticated>()
    } else {
        None
    };
    if let Some(refused) =
        crate::auth::check_invoke(&state, name, live.private, &mut req, session.map(|s| s.0))
    {
        return refused;
    }
    let call_id = req
        .headers()
        .get(X_CALL_ID)
        .cloned()
        .unwrap_or_else(new_call_id);
    let started = start_time();

    let result = match limits::admit(&state, &live, peer) {
        Ok(()) => match outgoing(&state, &live, req).await {
            Ok(call) => forward(&state, &live, call, &call_id, &started).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let code = response.status().as_u16();
    let elapsed = record(&state, &live, code, start);
    let h = response.headers_mut();
    h.insert(X_CALL_ID, call_id);
    h.insert(X_START_TIME, started);
    h.insert(X_DURATION_SECONDS, seconds_value(elapsed));
    tracing::debug!(function = %name, status = code, seconds = elapsed, "invoke");
    response
}

const X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
const X_START_TIME: HeaderName = HeaderName::from_static("x-start-time");
const X_DURATION_SECONDS: HeaderName = HeaderName::from_static("x-duration-seconds");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
// As names, not strings: a map finds a name without parsing it first.
const LAMBDA_EVENT: HeaderName = HeaderName::from_static(skyfri_core::lambda::EVENT_HEADER);
const LAMBDA_SOURCE_IP: HeaderName = HeaderName::from_static(skyfri_core::lambda::SOURCE_IP_HEADER);

/// A new call id: a random (v4) UUID, from the thread's CSPRNG (`Uuid::new_v4` asks the
/// kernel for each one: a system call per call).
fn new_call_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    header_value(id.hyphenated().encode_lower(&mut buf))
}

/// Unix nanoseconds as a header value (`X-Start-Time`).
fn nanos_value(ns: u128) -> HeaderValue {
    HeaderValue::from(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// Seconds with six decimals, as `format!("{seconds:.6}")` gives them (`X-Duration-Seconds`),
/// without float formatting.
fn seconds_value(seconds: f64) -> HeaderValue {
    let micros = (seconds * 1e6).round().clamp(0.0, u64::MAX as f64) as u64;
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    // Whole seconds, a point, six digits: on the stack, one allocation for the value.
    let mut text = [0u8; 32];
    let mut whole_digits = itoa::Buffer::new();
    let whole = whole_digits.format(whole).as_bytes();
    text[..whole.len()].copy_from_slice(whole);
    text[whole.len()] = b'.';
    let mut rest = frac;
    for i in (0..6).rev() {
        text[whole.len() + 1 + i] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    HeaderValue::from_bytes(&text[..whole.len() + 7])
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Counts a call of `live` that ended with `code`, as invocations, in the metrics and in
/// the dashboard's per-minute stats; returns its duration in seconds.
pub(crate) fn record(_state: &AppState, live: &Live, code: u16, start: Instant) -> f64 {
    let now = Instant::now();
    let took = now.saturating_duration_since(start);
    let elapsed = took.as_secs_f64();
    live.invocations.fetch_add(1, Ordering::Relaxed);
    live.stats.call(now, took, code);
    live.calls.observe(code, elapsed);
    elapsed
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Reads a request body for `live` whole, up to its limit (413 beyond it, naming the limit).
/// A body over the limit is read up to it rather than refused by its `Content-Length`, so
/// that a client that sends its whole body before reading gets the 413, not a reset.
pub(crate) async fn read_body(
    state: &AppState,
    live: &Live,
    body: Body,
) -> Result<Bytes, GatewayError> {
    read_body_within(
        &live.deployment.spec.name,
        body,
        limits::body_limit(state, live),
    )
    .await
}

/// [`read_body`], held to `cap` too when it is lower than the function's limit (an API's
/// own limit, such as Lambda's payload sizes).
pub(crate) async fn read_body_within(
    function: &str,
    body: Body,
    (max, limit): (usize, Limit),
) -> Result<Bytes, GatewayError> {
    let too_large = |limit| limits::body_too_large(function, max, limit);
    Ok(Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(limit)
            } else {
                GatewayError::bad_request(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes())
}

/// A `/function/NAME[/path]` request as the call to send on.
async fn outgoing(state: &AppState, live: &Live, req: Request) -> Result<Outgoing, GatewayError> {
    let (mut parts, body) = req.into_parts();
    // Only the gateway's Invoke API may hand a Lambda function a raw event, and only the
    // gateway says where a call came from.
    parts.headers.remove(LAMBDA_EVENT);
    parts.headers.remove(LAMBDA_SOURCE_IP);
    if live.deployment.template.is_lambda() {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = crate::auth::client_ip(peer, &parts.headers, &state.trusted_proxies) {
            parts
                .headers
                .insert(LAMBDA_SOURCE_IP, header_value(&ip.to_string()));
        }
    }
    let body = read_body(state, live, body).await?;
    let (_, suffix) = split_path(parts.uri.path()).unwrap_or(("", "/"));
    Ok(Outgoing {
        method: parts.method,
        suffix: suffix.to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    })
}

/// A replica with room for the call, waiting (bounded) for capacity or for a replica to
/// start when the function is at zero.
async fn lease(
    state: &AppState,
    live: &Arc<Live>,
    deadline: Instant,
) -> Result<Lease, GatewayError> {
    let name = &live.deployment.spec.name;
    live.router
        .acquire(
            || state.provider.endpoints(name),
            || state.activate(live),
            deadline,
        )
        .await
        .map_err(|busy| match busy {
            Busy::QueueFull { limit } => GatewayError::Platform {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "function {name:?} is at capacity and {limit} calls already wait for it ({QUEUE_ANNOTATION} sets the queue size); retry later"
                ),
            },
            Busy::TimedOut {
                waited,
                replicas,
                capped: Some(cap),
            } => GatewayError::Platform {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "function {name:?} stayed at its cap of {cap} calls in flight ({MAX_CONCURRENCY_KEY}) for {:.1}s ({replicas} ready); see `skyfri describe {name}`",
                    waited.as_secs_f64()
                ),
            },
            Busy::TimedOut {
                waited, replicas, ..
            } => GatewayError::Platform {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "function {name:?} had no replica with room for {:.1}s ({replicas} ready); see `skyfri describe {name}` and `skyfri logs {name}`",
                    waited.as_secs_f64()
                ),
            },
        })
}

/// Sends one call to a replica of `live` with room for it: waits for capacity, activating a
/// function at zero, then for the answer, and streams the answer back, all within the call's
/// one timeout (see [`crate::limits`]). The response's body holds the replica's slot until it
/// has been read or dropped, and ends with an error (a cut connection) at the deadline.
pub async fn forward(
    state: &AppState,
    live: &Arc<Live>,
    call: Outgoing,
    call_id: &HeaderValue,
    start_time: &HeaderValue,
) -> Result<Response, GatewayError> {
    let spec = &live.deployment.spec;
    let (timeout, limit) = limits::call_timeout(state, spec);
    let started = Instant::now();
    let deadline = started + timeout;
    let lease = lease(state, live, deadline).await?;
    let waited = started.elapsed();
    if !lease.waited().is_zero() {
        state.metrics.queue_wait(&spec.name, lease.waited());
    }
    let endpoint = lease.endpoint();
    let mut set = [
        (X_CALL_ID, call_id.clone()),
        (X_START_TIME, start_time.clone()),
        (X_FORWARDED_HOST, HeaderValue::from_static("")),
    ];
    let set = match call.headers.get(HOST) {
        Some(host) => {
            set[2].1 = host.clone();
            &set[..]
        }
        None => &set[..2],
    };
    let head = upstream::Head {
        method: &call.method,
        path: &call.suffix,
        query: call.query.as_deref(),
        headers: &call.headers,
        set,
    };

    // One timer for the whole call: it bounds the answer's head here, then its body.
    let mut timer = Box::pin(tokio::time::sleep_until(deadline.into()));
    let answer = tokio::select! {
        biased;
        answer = state.upstream.send(endpoint, &head, &call.body) => answer,
        () = timer.as_mut() => return Err(limits::timed_out(spec, limit, Some(waited))),
    };
    let answer = match answer {
        Err(e) if !e.is_replica_failure() => {
            return Err(GatewayError::Function {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "function {:?} gave an answer the gateway cannot pass on: {e}",
                    spec.name
                ),
            });
        }
        Err(e) => {
            let cause = state
                .provider
                .report_failure(&spec.name, endpoint)
                .unwrap_or_else(|| format!("the replica crashed or closed the connection: {e}"));
            return Err(GatewayError::Function {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "function {:?} failed during the call ({cause}); it is being restarted, see `skyfri logs {}`",
                    spec.name, spec.name
                ),
            });
        }
        Ok(a) => a,
    };
    let cold = lease.cold();
    // The replica's slot is held until the body has been sent.
    let mut response = Response::new(Body::new(Leased {
        body: answer.body,
        deadline: timer,
        cut: Some((Arc::clone(live), limit)),
        _lease: lease,
    }));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    if drop_session_cookie(response.headers_mut()) {
        tracing::warn!(function = %spec.name, "the answer set the dashboard's session cookie: dropped");
    }
    if cold {
        state.metrics.cold_start(&spec.name);
        live.stats.cold_start(Instant::now());
        response.headers_mut().insert(
            HeaderName::from_static("x-skyfri-cold-start"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// Removes any `Set-Cookie` of the dashboard's session cookie from a function's answer.
/// Browsers do not tell ports apart for cookies: one set by a function (on the gateway's
/// port) would be sent to the dashboard's, to log the admin into a session of the
/// function author's choosing or out of their own. Says whether there was one.
fn drop_session_cookie(headers: &mut HeaderMap) -> bool {
    let sets_session = |v: &HeaderValue| {
        let name = v
            .as_bytes()
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default();
        name.trim_ascii()
            .eq_ignore_ascii_case(crate::ui::session::COOKIE.as_bytes())
    };
    if !headers.get_all(SET_COOKIE).iter().any(sets_session) {
        return false;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| !sets_session(v))
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for v in kept {
        headers.append(SET_COOKIE, v);
    }
    true
}

/// A response body that holds its call's replica slot until it is done, and ends with the
/// call's 504 error (a [`GatewayError`]) if it is still streaming at the deadline.
struct Leased {
    body: upstream::AnswerBody,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The function and the limit to name when the deadline cuts the answer; `None` once cut.
    cut: Option<(Arc<Live>, Limit)>,
    _lease: Lease,
}

impl hyper::body::Body for Leased {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        let Some((live, limit)) = &this.cut else {
            return Poll::Ready(None);
        };
        // What the replica has sent is passed on first: an answer whose head came in at the
        // deadline (a replica ending the call at its own copy of the timeout) is not cut.
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() && this.deadline.as_mut().poll(cx).is_ready() {
            let error = limits::timed_out(&live.deployment.spec, limit.clone(), None);
            tracing::warn!(function = %live.deployment.spec.name, error = %error, "answer cut at the deadline while streaming");
            this.cut = None;
            return Poll::Ready(Some(Err(Box::new(error))));
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.cut.is_none() || self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn names() {
        use super::function_name;
        assert_eq!(function_name("echo"), "echo");
        assert_eq!(function_name("echo.openfaas-fn"), "echo");
        assert_eq!(function_name("echoopenfaas-fn"), "echoopenfaas-fn");
    }

    #[test]
    fn header_values() {
        use super::{nanos_value, seconds_value};
        for s in [
            0.0,
            0.000_000_4,
            0.000_123,
            0.5,
            1.25,
            12.345_678_9,
            3_600.000_001,
        ] {
            assert_eq!(seconds_value(s), format!("{s:.6}").as_str(), "{s}");
        }
        assert_eq!(
            nanos_value(1_765_000_000_123_456_789),
            "1765000000123456789"
        );
    }

    #[test]
    fn call_ids_are_distinct_v4_uuids() {
        let (a, b) = (super::new_call_id(), super::new_call_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap_or_default());
            assert_eq!(parsed.map(|u| u.get_version_num()).ok(), Some(4), "{id:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_dropped_from_answers() {
        use axum::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        for v in [
            "a=1; Path=/",
            "skyfri_session=planted; Path=/ui; HttpOnly",
            " Skyfri_Session =x",
            "skyfri_sessionx=2",
        ] {
            h.append("set-cookie", HeaderValue::from_static(v));
        }
        h.insert("x-other", HeaderValue::from_static("kept"));
        assert!(super::drop_session_cookie(&mut h));
        assert!(!super::drop_session_cookie(&mut h));
        let left: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(left, ["a=1; Path=/", "skyfri_sessionx=2"]);
        assert_eq!(h["x-other"], "kept");
    }

    #[test]
    fn paths() {
        assert_eq!(split_path("/function/echo"), Some(("echo", "/")));
        assert_eq!(split_path("/function/echo/"), Some(("echo", "/")));
        assert_eq!(split_path("/function/echo/a/b"), Some(("echo", "/a/b")));
        assert_eq!(split_path("/other"), None);
        use super::is_call;
        assert!(is_call("/function/echo") && is_call("/function/echo/a/b"));
        assert!(!is_call("/function/") && !is_call("/functions") && !is_call("/system/functions"));
    }
}
