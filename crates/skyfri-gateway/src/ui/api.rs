//! The dashboard's API: `/ui/api/system/*` is `/system/*` for a logged-in session (with its
//! CSRF header), run through the same router, auth middleware, scopes and audit as any
//! client's request; `POST /ui/api/invoke/NAME` is the invoke form, a JSON description of
//! the call (method, path, headers, body) run through the real `/function/NAME` path
//! (limits, metrics, access log) and answered as JSON (status, headers, body, duration),
//! so that what a function returns is shown as text, never rendered on the dashboard's
//! origin.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use crate::auth::Authenticated;
use crate::error::GatewayError;
use crate::extract::Path;
use crate::state::AppState;
use crate::ui::session::{self, CSRF_HEADER};

/// The `/system` routes, with their auth middleware.
#[derive(Clone)]
pub struct SystemApi(pub Router);

/// The `/function` routes, with the access log.
#[derive(Clone)]
pub struct CallsApi(pub Router);

/// The most of an answer's body the invoke form shows.
const SHOWN_BYTES: usize = 1 << 20;

/// `/ui/api/system/*`: the same request on `/system/*` as the session's principal.
pub async fn system(
    State(state): State<AppState>,
    Extension(api): Extension<SystemApi>,
    req: Request,
) -> Response {
    let principal = match session::authorise(&state, req.headers(), true) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .and_then(|p| p.strip_prefix("/ui/api"))
        .and_then(|p| p.parse::<Uri>().ok());
    let Some(target) = target else {
        return GatewayError::not_found("no such route").into_response();
    };
    // A fresh request: the route's own path parameters must not reach the handler.
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .cloned();
    let (parts, body) = req.into_parts();
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = target;
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers;
    let h = req.headers_mut();
    h.remove(header::COOKIE);
    h.remove(CSRF_HEADER);
    h.remove(header::AUTHORIZATION);
    if let Some(peer) = peer {
        req.extensions_mut().insert(peer);
    }
    req.extensions_mut().insert(Authenticated(principal));
    let gzip = accepts_gzip(req.headers());
    let Ok(response) = api.0.oneshot(req).await;
    if gzip {
        gzipped(response).await
    } else {
        response
    }
}

/// The largest JSON answer compressed; larger ones (none the dashboard asks for) go as they are.
const MAX_GZIPPED: usize = 32 << 20;

fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

/// A JSON answer gzipped (the charts' numbers shrink about five times, which a slow link
/// notices); anything else, such as the live tail's stream, is passed on untouched.
async fn gzipped(response: Response) -> Response {
    use std::io::Write;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json || response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_GZIPPED).await else {
        return GatewayError::internal("the answer was too large to send to the dashboard")
            .into_response();
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let Ok(packed) = gz.write_all(&bytes).and_then(|()| gz.finish()) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Response::from_parts(parts, axum::body::Body::from(packed))
}

/// Whether `name` says where a request came from (`Forwarded`, `X-Forwarded-*`,
/// `X-Real-Ip`): a proxy's to set, never a form's.
fn is_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "forwarded" || n == "x-real-ip" || n.starts_with("x-forwarded-")
}

/// What the invoke form sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeForm {
    method: String,
    /// After the function's name: `/`, `/orders?id=7`.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

/// What the form shows of the answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 replaced), at most [`SHOWN_BYTES`].
    body: String,
    /// The body's size (read up to one byte beyond what is shown).
    bytes: usize,
    truncated: bool,
    /// From sending the call to the last byte read.
    duration_ms: f64,
}

/// `POST /ui/api/invoke/NAME`: calls the function as the form describes and answers with
/// what came back.
pub async fn invoke(
    State(state): State<AppState>,
    Extension(calls): Extension<CallsApi>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    match run(&state, &calls, &name, req).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: &AppState,
    calls: &CallsApi,
    name: &str,
    req: Request,
) -> Result<Answer, GatewayError> {
    let principal = session::authorise(state, req.headers(), true)?;
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .cloned();
    // Where the call comes from is the connection's business, not the form's (see below).
    let forwarding: Vec<_> = req
        .headers()
        .iter()
        .filter(|(k, _)| *k == header::HOST || is_forwarding(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bad = GatewayError::bad_request;
    // The form's JSON holds the body (escaped): room for the function's largest body.
    let raw = axum::body::to_bytes(req.into_body(), state.max_body.saturating_mul(2) + 4096)
        .await
        .map_err(|e| GatewayError::Caller {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the invoke form is too large: {e}"),
        })?;
    let form: InvokeForm = serde_json::from_slice(&raw).map_err(|e| {
        bad(format!(
            "the invoke form must be {{method, path, headers, body}}: {e}"
        ))
    })?;
    let method = Method::from_bytes(form.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| bad(format!("{:?} is not an HTTP method", form.method)))?;
    let path = form.path.as_deref().map(str::trim).unwrap_or("/");
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err(bad(format!("the path {path:?} must start with /")));
    }
    let uri: Uri = format!("/function/{name}{path}")
        .parse()
        .map_err(|e| bad(format!("the path {path:?} is not a valid URL path: {e}")))?;
    let mut call = Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::from(form.body))
        .map_err(|e| bad(format!("invalid call: {e}")))?;
    for (k, v) in &form.headers {
        let k = k.trim();
        if k.is_empty() {
            continue;
        }
        let key = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| bad(format!("{k:?} is not a header name")))?;
        if key == header::HOST || is_forwarding(&key) {
            return Err(bad(format!(
                "the header {k} is set by the gateway from the connection, not by the form"
            )));
        }
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| bad(format!("the value of header {k} is not valid")))?;
        call.headers_mut().append(key, value);
    }
    // As on the gateway's path: the function sees the Host and forwarding headers the
    // dashboard's connection came with (X-Forwarded-Host from Host; X-Forwarded-For trusted
    // only from --trusted-proxy peers), and the peer is the connection's.
    for (k, v) in forwarding {
        call.headers_mut().append(k, v);
    }
    if let Some(peer) = peer {
        call.extensions_mut().insert(peer);
    }
    call.extensions_mut().insert(Authenticated(principal));
    let started = Instant::now();
    let Ok(answer) = calls.0.clone().oneshot(call).await;
    let (parts, mut body) = answer.into_parts();
    let mut shown = Vec::new();
    let mut bytes = 0;
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref() {
                    bytes += data.len();
                    let room = SHOWN_BYTES.saturating_sub(shown.len());
                    shown.extend_from_slice(&data[..data.len().min(room)]);
                    if bytes > SHOWN_BYTES {
                        break;
                    }
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut text = String::from_utf8_lossy(&shown).into_owned();
    if let Some(e) = failed {
        text.push_str(&format!("\n[the answer was cut: {e}]"));
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: text,
        bytes,
        truncated: bytes > SHOWN_BYTES,
        duration_ms,
    })
}
