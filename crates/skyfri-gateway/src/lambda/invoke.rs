//! `POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=]`, as AWS Lambda
//! serves it: `X-Amz-Invocation-Type` `RequestResponse` (the default: 200 with the result),
//! `Event` (202, stored in the async queue: retries and dead letters as for
//! `/async-function`) or `DryRun` (204 once the function exists and the caller may call it);
//! `X-Amz-Log-Type: Tail` (the call's log, last 4 KB, base64, in `X-Amz-Log-Result`).
//!
//! Every call needs credentials, as on Lambda: a skyfri token as SigV4 credentials (access
//! key id = the token's name, secret access key = the token; tokens made with `sigv4`), or
//! `Authorization: Bearer TOKEN` / basic admin. Any valid token calls a public function; a
//! private one (`com.skyfri.auth: token`) needs `invoke:NAME` or `admin`, as on `/function`.
//!
//! The call goes through the same code as `/function/NAME` calls ([`crate::invoke::forward`]):
//! rate limits, body limits (held to Lambda's too: 6 MiB sync, 1 MiB async), replica choice,
//! timeouts, metrics, usage and the access log. A lambda function gets the payload as its
//! event (empty means `{}`); any other function gets it as a `POST /` body, and its answer
//! as the result (a non-2xx answer is a function error).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use skyfri_core::auth::Scope;
use skyfri_queue::AsyncCall;

use super::sigv4::{self, SigV4Error};
use super::{is_lambda, AwsError, Target, EVENT_HEADER, EVENT_RAW, FUNCTION_ERROR_HEADER, LATEST};
use crate::auth::{self, Failure, Principal};
use crate::error::GatewayError;
use crate::invoke::{self as proxy, function_name, header_value, Outgoing};
use crate::limits::{self, Limit};
use crate::state::{AppState, Live};

/// Lambda's largest payload of a synchronous call (and of its answer, when it is read).
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// Lambda's largest payload of an asynchronous call.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// How much of the call's log `X-Amz-Log-Result` carries.
const LOG_TAIL_BYTES: usize = 4096;
/// After the answer, log lines still on their way are awaited until none came for this long.
const LOG_SETTLE: Duration = Duration::from_millis(50);
/// Log lines collected for one call, at most.
const MAX_LOG_LINES: usize = 1000;
/// How much of a non-lambda function's failed answer becomes the error message.
const MAX_ERROR_TEXT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

pub async fn invoke(State(state): State<AppState>, req: Request) -> Response {
    let start = Instant::now();
    // Every answer has a request id, as Lambda's do; a call has it as its call id. Ordered
    // in time (v7), which suits the embedded queue's index (see `async_calls::accept`).
    let id = uuid::Uuid::now_v7().to_string();
    let mut response = match handle(&state, req, start, &id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let h = response.headers_mut();
    let id = header_value(&id);
    h.insert(HeaderName::from_static("x-amzn-requestid"), id.clone());
    h.insert(HeaderName::from_static("x-call-id"), id);
    response
}

async fn handle(
    state: &AppState,
    req: Request,
    start: Instant,
    request_id: &str,
) -> Result<Response, AwsError> {
    let peer = limits::peer(&req);
    let client = auth::Client::of(state, &req);
    let (parts, body) = req.into_parts();
    let segment = super::function_segment(parts.uri.path())
        .ok_or_else(|| AwsError::invalid("the FunctionName in the path is not valid UTF-8"))?;
    let target = Target::parse(&segment).map_err(AwsError::invalid)?;
    let qualifier = qualifier(parts.uri.query(), &target)?;
    let kind = invocation_type(&parts.headers)?;
    let tail = log_type(&parts.headers)?;
    let name = function_name(&target.name).to_string();

    // The caller is authenticated before anything is said about the function (whether it
    // exists, its limits): a SigV4 signature covers the body, which is read first, bounded
    // by Lambda's payload limit.
    let login = Login {
        client: &client,
        target: format!("POST {}", parts.uri.path()),
    };
    let credentials = Credentials::read(state, &parts.headers, &login)?;
    let cap = match kind {
        InvocationType::Event => MAX_ASYNC_PAYLOAD,
        _ => MAX_SYNC_PAYLOAD,
    };
    let cap_limit = Limit {
        scope: "gateway",
        name: match kind {
            InvocationType::Event => "Lambda Invoke API (Event: 1 MiB)",
            _ => "Lambda Invoke API (RequestResponse: 6 MiB)",
        },
        value: json!(cap),
        unit: "bytes",
        burst: None,
        retry_after: None,
    };
    let gateway = limits::gateway_body_limit(state);
    let first = if cap < gateway.0 {
        (cap, cap_limit)
    } else {
        gateway
    };
    let payload = proxy::read_body_within(&name, body, first)
        .await
        .map_err(platform_error)?;
    let principal = credentials.verify(state, &parts, &payload, &login)?;

    let live = state.live(&name).ok_or_else(|| not_found(&name, None))?;
    if let Some(q) = qualifier.as_deref().filter(|q| *q != LATEST) {
        return Err(not_found(&name, Some(q)));
    }
    let (own, own_limit) = limits::body_limit(state, &live);
    if payload.len() > own {
        return Err(platform_error(limits::body_too_large(
            &name, own, own_limit,
        )));
    }
    authorize(&principal, &name, live.private)?;
    if tail {
        authorize_logs(&principal, &name)?;
    }

    let lambda = is_lambda(&live.deployment);
    let payload = if lambda { event(payload)? } else { payload };
    if kind == InvocationType::DryRun {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    limits::admit(state, &live, peer).map_err(platform_error)?;
    let headers = outgoing_headers(&parts.headers, lambda);

    if kind == InvocationType::Event {
        let call = AsyncCall {
            id: request_id.to_string(),
            function: name,
            method: Method::POST.to_string(),
            path: "/".into(),
            query: String::new(),
            headers: headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            body: payload,
            callback_url: None,
            enqueued_at: Utc::now(),
        };
        crate::async_calls::accept::store(state, call)
            .await
            .map_err(platform_error)?;
        let mut r = StatusCode::ACCEPTED.into_response();
        executed_version(r.headers_mut());
        return Ok(r);
    }

    let id = header_value(request_id);
    let logs = tail.then(|| state.provider.follow_logs(&name));
    let call = Outgoing {
        method: Method::POST,
        suffix: "/".into(),
        query: None,
        headers,
        body: payload,
    };
    let forwarded = proxy::forward(state, &live, call, &id, &proxy::start_time()).await;
    let code = match &forwarded {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    proxy::record(state, &live, code, start);
    let mut response = match forwarded {
        Ok(r) => result(r, lambda).await,
        Err(e) if e.is_function() => Ok(function_failed(&e)),
        Err(e) => Err(platform_error(e)),
    }?;
    if let Some(rx) = logs {
        // The log of the call is complete once the answer is: read it whole first.
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_SYNC_PAYLOAD)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| {
                AwsError::new(
                    StatusCode::BAD_GATEWAY,
                    "ServiceException",
                    format!("the function's answer could not be read: {e}"),
                )
            })?;
        let text = log_tail(rx, &live, request_id, start.elapsed()).await;
        response = Response::from_parts(parts, Body::from(body));
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        response.headers_mut().insert(
            HeaderName::from_static("x-amz-log-result"),
            header_value(&encoded),
        );
    }
    executed_version(response.headers_mut());
    Ok(response)
}

fn executed_version(h: &mut HeaderMap) {
    h.insert(
        HeaderName::from_static("x-amz-executed-version"),
        HeaderValue::from_static(LATEST),
    );
}

fn not_found(name: &str, qualifier: Option<&str>) -> AwsError {
    let message = match qualifier {
        None => format!("Function not found: {name} (see `skyfri ls`)"),
        Some(q) => format!(
            "Function not found: {name}:{q}; skyfri has no versions or aliases, call {LATEST} (or no qualifier)"
        ),
    };
    AwsError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
}

/// `?Qualifier=`, or the one the function name carries; both must agree.
fn qualifier(query: Option<&str>, target: &Target) -> Result<Option<String>, AwsError> {
    let from_query = query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "Qualifier")
        .map(|(_, v)| String::from_utf8_lossy(&sigv4::percent_decode(v)).into_owned());
    match (from_query, &target.qualifier) {
        (Some(q), Some(t)) if q != *t => Err(AwsError::invalid(format!(
            "the Qualifier {q:?} is not the one the function name carries ({t:?})"
        ))),
        (q, t) => Ok(q.or_else(|| t.clone())),
    }
}

fn invocation_type(headers: &HeaderMap) -> Result<InvocationType, AwsError> {
    match headers
        .get("x-amz-invocation-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("RequestResponse") => Ok(InvocationType::RequestResponse),
        Some("Event") => Ok(InvocationType::Event),
        Some("DryRun") => Ok(InvocationType::DryRun),
        Some(other) => Err(AwsError::invalid(format!(
            "X-Amz-Invocation-Type {other:?}: use RequestResponse, Event or DryRun"
        ))),
    }
}

fn log_type(headers: &HeaderMap) -> Result<bool, AwsError> {
    match headers
        .get("x-amz-log-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("None") => Ok(false),
        Some("Tail") => Ok(true),
        Some(other) => Err(AwsError::invalid(format!(
            "X-Amz-Log-Type {other:?}: use None or Tail"
        ))),
    }
}

/// What a request authenticates with, read before its body.
enum Credentials {
    /// SigV4: the token the access key names, its secret; checked once the body is read.
    SigV4 {
        token: std::sync::Arc<crate::tokens::Token>,
        secret: std::sync::Arc<crate::tokens::SigningSecret>,
    },
    /// Bearer token or basic admin, already checked.
    Checked(Principal),
}

/// Where a credential is presented: failures are counted against the client and recorded.
struct Login<'a> {
    client: &'a auth::Client,
    target: String,
}

impl Login<'_> {
    /// A refused credential of `who`: counted, recorded, and answered as `kind`.
    fn failed(
        &self,
        state: &AppState,
        who: String,
        kind: &'static str,
        message: String,
    ) -> AwsError {
        let status = StatusCode::FORBIDDEN;
        auth::failed(state, self.client, who, &self.target, status, &message);
        AwsError::forbidden(kind, message)
    }
}

/// Headers that change what a call does; a SigV4 signature must cover them when they are
/// sent, or a captured request could be replayed to do something else.
const MUST_SIGN: [&str; 3] = [
    "x-amz-invocation-type",
    "x-amz-log-type",
    "x-amz-client-context",
];

/// The 429 of a client out of its budget of failed logins, as Lambda throttles.
fn too_many_failures(retry_after: u64) -> AwsError {
    AwsError {
        retry_after: Some(retry_after),
        ..AwsError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            crate::limits::logins::too_many_text(retry_after),
        )
    }
}

const HOW: &str = "sign with a skyfri token made with `skyfri token create NAME --sigv4` (access key id NAME, secret access key the token), or send `Authorization: Bearer TOKEN`";

impl Credentials {
    /// The credentials of a request, within its client's budget of failures.
    fn read(state: &AppState, headers: &HeaderMap, login: &Login) -> Result<Credentials, AwsError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AwsError::forbidden(
                "MissingAuthenticationTokenException",
                format!("Missing Authentication Token: {HOW}"),
            ));
        };
        state
            .failed_logins
            .check(login.client.ip)
            .map_err(too_many_failures)?;
        let value = value.to_str().unwrap_or("");
        if !sigv4::is_sigv4(value) {
            return match auth::authenticate(state, headers) {
                Ok(p) => Ok(Credentials::Checked(p)),
                Err(Failure::Missing) => Err(AwsError::forbidden(
                    "MissingAuthenticationTokenException",
                    format!("Missing Authentication Token: {HOW}"),
                )),
                Err(Failure::Invalid { who, why }) => Err(login.failed(
                    state,
                    who,
                    "UnrecognizedClientException",
                    format!("the credentials were refused: {why}"),
                )),
                Err(Failure::Limited(secs)) => Err(too_many_failures(secs)),
            };
        }
        let parsed = sigv4::parse_authorization(value)
            .map_err(|e| login.failed(state, "sigv4".into(), e.aws_type(), e.to_string()))?;
        let who = format!("sigv4:{}", auth::printable(parsed.access_key, 32));
        if parsed.service != "lambda" {
            return Err(login.failed(
                state,
                who,
                "InvalidSignatureException",
                format!(
                    "Credential should be scoped to correct service: 'lambda', not {:?}",
                    parsed.service
                ),
            ));
        }
        let unsigned = MUST_SIGN.into_iter().find(|h| {
            headers.contains_key(*h) && !parsed.signed_headers.split(';').any(|s| s == *h)
        });
        if let Some(h) = unsigned {
            return Err(login.failed(
                state,
                who,
                "IncompleteSignatureException",
                format!("the request sends {h}, which changes what the call does, without signing it: it must be among the SignedHeaders (AWS SDKs sign it)"),
            ));
        }
        let Some((token, secret)) = state.tokens.by_access_key(parsed.access_key) else {
            return Err(login.failed(
                state,
                who,
                "UnrecognizedClientException",
                format!(
                    "The security token included in the request is invalid: no token {:?} with SigV4 credentials (see `skyfri token ls`); {HOW}",
                    parsed.access_key
                ),
            ));
        };
        if token.expired(Utc::now()) {
            return Err(login.failed(
                state,
                format!("token:{}", token.name),
                "ExpiredTokenException",
                format!(
                    "The security token included in the request is expired: token {:?}",
                    token.name
                ),
            ));
        }
        Ok(Credentials::SigV4 { token, secret })
    }

    /// The caller, once a SigV4 signature is checked over the whole request.
    fn verify(
        self,
        state: &AppState,
        parts: &axum::http::request::Parts,
        body: &[u8],
        login: &Login,
    ) -> Result<Principal, AwsError> {
        let (token, secret) = match self {
            Credentials::Checked(p) => return Ok(p),
            Credentials::SigV4 { token, secret } => (token, secret),
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parsed = sigv4::parse_authorization(value).map_err(sigv4_error)?;
        let who = format!("token:{}", token.name);
        let request = sigv4::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            authority: parts.uri.authority().map(|a| a.as_str()),
            body,
        };
        sigv4::verify(&request, &parsed, secret.bytes(), Utc::now())
            .map_err(|e| login.failed(state, who, e.aws_type(), e.to_string()))?;
        token.used(&state.store);
        Ok(Principal::Token(token))
    }
}

fn sigv4_error(e: SigV4Error) -> AwsError {
    AwsError::forbidden(e.aws_type(), e.to_string())
}

/// A private function needs `invoke:NAME` (or admin); any caller known may call a public one.
fn authorize(principal: &Principal, name: &str, private: bool) -> Result<(), AwsError> {
    let need = Scope::Invoke(name.to_string());
    if !private || principal.allows(&need) {
        return Ok(());
    }
    Err(AwsError::forbidden(
        "AccessDeniedException",
        format!(
            "User: {} is not authorized to perform: lambda:InvokeFunction on resource: {name} (a private function: the token needs scope {need} or admin)",
            principal.who()
        ),
    ))
}

/// `X-Amz-Log-Type: Tail` returns the function's log lines of the call's time, which may hold
/// other callers' lines: it needs what `/system/logs` needs, the `read` scope.
fn authorize_logs(principal: &Principal, name: &str) -> Result<(), AwsError> {
    if principal.allows(&Scope::Read) {
        return Ok(());
    }
    Err(AwsError::forbidden(
        "AccessDeniedException",
        format!(
            "User: {} is not authorized to read the logs of {name} (X-Amz-Log-Type: Tail needs scope read); call without LogType",
            principal.who()
        ),
    ))
}

/// A lambda function's event: the payload, which must be JSON; none is `{}`.
fn event(payload: Bytes) -> Result<Bytes, AwsError> {
    if payload.is_empty() {
        return Ok(Bytes::from_static(b"{}"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&payload).map_err(|e| {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    })?;
    Ok(payload)
}

/// What the function is sent: the payload's type and the client context; for a lambda
/// function, the mark that the body is the event itself. Nothing else of the caller's (its
/// credentials least of all).
fn outgoing_headers(from: &HeaderMap, lambda: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [header::CONTENT_TYPE.as_str(), "x-amz-client-context"] {
        if let Some(v) = from.get(name) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                h.insert(name, v.clone());
            }
        }
    }
    if lambda {
        h.insert(
            HeaderName::from_static(EVENT_HEADER),
            HeaderValue::from_static(EVENT_RAW),
        );
    }
    h
}

/// The function's answer as the API's: a 2xx is the result; a lambda handler's error (502
/// with [`FUNCTION_ERROR_HEADER`]) is a 200 with `X-Amz-Function-Error: Unhandled` and its
/// error JSON; any other answer is a function error made of its status and text.
async fn result(response: Response, lambda: bool) -> Result<Response, AwsError> {
    let (mut parts, body) = response.into_parts();
    let handler_error = lambda && parts.headers.contains_key(FUNCTION_ERROR_HEADER);
    if parts.status.is_success() || handler_error {
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            content_type.unwrap_or(HeaderValue::from_static("application/json")),
        );
        if handler_error {
            unhandled(h);
        }
        for name in ["x-skyfri-cold-start"] {
            if let Some(v) = parts.headers.remove(name) {
                h.insert(name, v);
            }
        }
        return Ok(r);
    }
    let status = parts.status.as_u16();
    let text = Limited::new(body, MAX_ERROR_TEXT)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_else(|_| format!("(an answer longer than {MAX_ERROR_TEXT} bytes)"));
    let message = match text.is_empty() {
        true => format!("the function answered {status}"),
        false => format!("the function answered {status}: {text}"),
    };
    Ok(error_result(&message, &format!("Function.Status{status}")))
}

fn unhandled(h: &mut HeaderMap) {
    h.insert(
        HeaderName::from_static("x-amz-function-error"),
        HeaderValue::from_static("Unhandled"),
    );
}

/// A 200 carrying a function error, as Lambda reports one.
fn error_result(message: &str, error_type: &str) -> Response {
    let body = skyfri_core::lambda::error_json(error_type, message);
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    unhandled(r.headers_mut());
    r
}

/// The function crashed or timed out (skyfri's 502 or 504): a function error, as Lambda's
/// `Runtime.ExitError` and `Sandbox.Timedout`.
fn function_failed(e: &GatewayError) -> Response {
    let error_type = match e.status() {
        StatusCode::GATEWAY_TIMEOUT => "Sandbox.Timedout",
        _ => "Runtime.ExitError",
    };
    error_result(&e.to_string(), error_type)
}

/// A gateway error as Lambda names its kind.
fn platform_error(e: GatewayError) -> AwsError {
    let status = e.status();
    let message = e.to_string();
    let retry_after = match &e {
        GatewayError::Limited { limit, .. } => limit.retry_after,
        _ => None,
    };
    let (kind, reason) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("RequestTooLargeException", None),
        StatusCode::TOO_MANY_REQUESTS if retry_after.is_some() => {
            ("TooManyRequestsException", Some("CallerRateLimitExceeded"))
        }
        StatusCode::TOO_MANY_REQUESTS => (
            "TooManyRequestsException",
            Some("ConcurrentInvocationLimitExceeded"),
        ),
        StatusCode::NOT_FOUND => ("ResourceNotFoundException", None),
        s if s.is_client_error() => ("InvalidRequestContentException", None),
        _ => ("ServiceException", None),
    };
    AwsError {
        status,
        kind,
        message,
        reason,
        retry_after,
    }
}

/// The call's log as Lambda's tail shows it: START, the function's lines, END and REPORT;
/// its last [`LOG_TAIL_BYTES`]. Lines come from every replica of the function while the call
/// ran (a concurrent call's lines may show), and those still on their way when it answered
/// are awaited until none came for [`LOG_SETTLE`].
async fn log_tail(
    mut rx: tokio::sync::broadcast::Receiver<skyfri_runtime::LogLine>,
    live: &Live,
    request_id: &str,
    took: Duration,
) -> Vec<u8> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut lines = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(l) => lines.push(l.text),
            Err(TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    while lines.len() < MAX_LOG_LINES {
        match tokio::time::timeout(LOG_SETTLE, rx.recv()).await {
            Ok(Ok(l)) => lines.push(l.text),
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) | Err(_) => break,
        }
    }
    let mib = skyfri_core::usage::metered_mib(&live.deployment.spec);
    let ms = took.as_secs_f64() * 1000.0;
    let mut text = format!("START RequestId: {request_id} Version: {LATEST}\n");
    for l in lines {
        text.push_str(l.trim_end_matches('\n'));
        text.push('\n');
    }
    text.push_str(&format!(
        "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {mib} MB\t\n",
        ms.ceil() as u64
    ));
    let bytes = text.into_bytes();
    let from = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    bytes[from..].to_vec()
}

#[cfg(test)]
mod tests;
