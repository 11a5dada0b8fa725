//! `X-Callback-Url`: once an async call is done or dead, its result is POSTed there with the
//! function's body and headers, plus `X-Call-Id`, `X-Function-Name`, `X-Function-Status`,
//! `X-Duration-Seconds` (OpenFaaS), `X-Retry` / `X-Retry-Max` (OpenFaaS Pro: retries made
//! before this result, and allowed), `X-Skyfri-Attempt` (the run that produced it, 1 for the
//! first) and `X-Skyfri-Call-State` (`done` or `dead`).
//!
//! A callback that fails (no connection, no answer in [`REQUEST_TIMEOUT`], or a 5xx) is
//! tried again, [`TRIES`] times in all with doubling waits from [`FIRST_WAIT`], each failure
//! logged. These retries live in memory, not in the queue: the call itself is durably
//! finished before its callback is sent, and a callback still pending when the gateway stops
//! is lost (the result stays readable at `/system/async/calls/CALL-ID`).
//!
//! Plain `http://` only: the gateway has no TLS client yet, so an `https://` callback is
//! refused when the call is made rather than failing later.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use crate::invoke::{copy_headers, header_value};
use crate::state::AppState;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The callback sender: an HTTP client, and the callbacks still being delivered (so that a
/// shutdown can give them their chance).
pub struct Callbacks {
    client: HttpClient,
    pending: AtomicUsize,
    idle: Notify,
}

impl Default for Callbacks {
    fn default() -> Callbacks {
        Callbacks {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl Callbacks {
    /// Callbacks being delivered or waiting for their next try.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Returns once no callback is pending.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.pending() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Takes one pending callback off the count when dropped (delivered, given up, or aborted).
struct Pending<'a>(&'a Callbacks);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Attempts per callback.
pub const TRIES: u32 = 5;
/// The wait after the first failure; it doubles after each.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// How long one attempt may take to get an answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks an `X-Callback-Url`: an absolute `http://` URL with a host.
pub fn validate_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("X-Callback-Url {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "X-Callback-Url {url:?}: https callbacks are not supported yet (the gateway has \
                 no TLS client); use an http:// URL"
            ))
        }
        _ => {
            return Err(format!(
                "X-Callback-Url {url:?} must be an absolute http:// URL"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("X-Callback-Url {url:?} has no host"));
    }
    Ok(())
}

/// The result of an async call, as its callback carries it.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub call_id: String,
    pub function: String,
    /// The function's status, or the platform's when the call could not run (502: the
    /// replica crashed; 503: no replica with room in time; 504: timeout).
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub duration: Duration,
    /// The run that produced this result, 1 for the first.
    pub attempt: u32,
    /// Runs allowed (the retry policy's attempts).
    pub attempts: u32,
    /// `done` or `dead`.
    pub state: &'static str,
}

impl Report {
    fn request(&self) -> Result<hyper::Request<Full<Bytes>>, String> {
        let mut req = hyper::Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .body(Full::new(self.body.clone()))
            .map_err(|e| format!("invalid callback request: {e}"))?;
        let h = req.headers_mut();
        copy_headers(&self.headers, h);
        h.remove(hyper::header::CONTENT_LENGTH);
        let mut set = |name: &'static str, value: HeaderValue| {
            h.insert(HeaderName::from_static(name), value);
        };
        set("x-call-id", header_value(&self.call_id));
        set("x-function-name", header_value(&self.function));
        set("x-function-status", HeaderValue::from(self.status));
        set(
            "x-duration-seconds",
            header_value(&format!("{:.6}", self.duration.as_secs_f64())),
        );
        set("x-retry", HeaderValue::from(self.attempt.saturating_sub(1)));
        set(
            "x-retry-max",
            HeaderValue::from(self.attempts.saturating_sub(1)),
        );
        set(super::ATTEMPT_HEADER, HeaderValue::from(self.attempt));
        set("x-skyfri-call-state", HeaderValue::from_static(self.state));
        Ok(req)
    }
}

/// Posts the report in the background; see the module's doc for the retries.
pub fn spawn(state: &AppState, report: Report) {
    let state = state.clone();
    // Counted from now, so that a shutdown right after the call finished waits for it.
    state.callbacks.pending.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        let counted = Pending(&state.callbacks);
        deliver(&state, &report).await;
        drop(counted);
    });
}

/// Posts the report, retrying; true once the callback's receiver answered below 500.
pub async fn deliver(state: &AppState, report: &Report) -> bool {
    let (function, call_id, url) = (&report.function, &report.call_id, &report.url);
    let mut wait = FIRST_WAIT;
    for attempt in 1..=TRIES {
        let req = match report.request() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(function = %function, call_id = %call_id, url = %url, error = %e, "callback not sent");
                break;
            }
        };
        let failure = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            state.callbacks.client.request(req),
        )
        .await
        {
            Ok(Ok(res)) if !res.status().is_server_error() => {
                state.metrics.async_callback(function, "delivered");
                tracing::debug!(function = %function, call_id = %call_id, url = %url, status = res.status().as_u16(), "callback delivered");
                return true;
            }
            Ok(Ok(res)) => format!("the receiver answered {}", res.status()),
            Ok(Err(e)) => causes(&e),
            Err(_) => format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        };
        if attempt == TRIES {
            tracing::error!(function = %function, call_id = %call_id, url = %url, attempt, error = %failure, "callback failed; giving up (the result stays at /system/async/calls/{call_id})");
        } else {
            tracing::warn!(function = %function, call_id = %call_id, url = %url, attempt, error = %failure, retry_in = ?wait, "callback failed");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    state.metrics.async_callback(function, "failed");
    false
}

/// An error with its causes: hyper's say only "client error (Connect)" on their own.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "http://127.0.0.1:9000/cb",
            "http://example.com",
            "http://h/x?y=1",
        ] {
            assert_eq!(validate_url(good), Ok(()), "{good}");
        }
        for (bad, needle) in [
            (
                "https://example.com/cb",
                "https callbacks are not supported",
            ),
            ("ftp://example.com", "absolute http://"),
            ("/relative", "absolute http://"),
            ("not a url", "is not a URL"),
            ("", "is not a URL"),
        ] {
            let e = validate_url(bad).err().unwrap_or_default();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn report_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("x-function-status", HeaderValue::from_static("spoofed"));
        let report = Report {
            url: "http://127.0.0.1:1/cb".into(),
            call_id: "c1".into(),
            function: "f".into(),
            status: 500,
            headers,
            body: Bytes::from_static(b"boom"),
            duration: Duration::from_millis(1500),
            attempt: 3,
            attempts: 3,
            state: "dead",
        };
        let req = report.request().expect("request");
        let h = req.headers();
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(get("content-type"), "text/plain");
        assert_eq!(get("content-length"), "");
        assert_eq!(get("connection"), "");
        assert_eq!(get("x-call-id"), "c1");
        assert_eq!(get("x-function-name"), "f");
        assert_eq!(get("x-function-status"), "500");
        assert_eq!(get("x-duration-seconds"), "1.500000");
        assert_eq!((get("x-retry"), get("x-retry-max")), ("2", "2"));
        assert_eq!(get("x-skyfri-attempt"), "3");
        assert_eq!(get("x-skyfri-call-state"), "dead");
    }
}
