//! Authentication and authorisation: basic auth as the admin user and bearer API tokens on
//! `/system/*` (each request needs the scope `skyfri_core::auth::system_need` names), and
//! bearer tokens with `invoke:NAME` on private functions. 401 (with `WWW-Authenticate`)
//! without valid credentials, 403 (naming the scope needed) when they do not allow the
//! request. Failed logins (here, on private functions, on the Lambda Invoke API and at the
//! dashboard's login) and refusals on `/system` go to the audit log, folded; failed logins
//! also spend the client's budget of failures (`crate::limits::logins`), and a client out of
//! budget is answered 429 before its credentials are looked at.
//!
//! The admin password is compared as SHA-256 digests with a constant-time equality, so
//! neither its content nor its length shows in the timing. Tokens: see `crate::tokens`.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
pub use ipnet::IpNet;
use sha2::{Digest, Sha256};
use skyfri_core::auth::{grants, system_need, Scope};
use subtle::ConstantTimeEq;

use crate::audit::Actor;
use crate::state::AppState;
use crate::tokens::{self, Token};

pub const ADMIN_USER: &str = "admin";

/// What the admin's basic credentials hash to, compared against what a request presents.
pub fn admin_digest(password: &str) -> [u8; 32] {
    Sha256::digest(format!("{ADMIN_USER}:{password}").as_bytes()).into()
}

/// Who a request authenticated as.
#[derive(Clone)]
pub enum Principal {
    Admin,
    Token(std::sync::Arc<Token>),
}

impl Principal {
    pub fn who(&self) -> String {
        match self {
            Principal::Admin => ADMIN_USER.to_string(),
            Principal::Token(t) => format!("token:{}", t.name),
        }
    }

    pub fn allows(&self, need: &Scope) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Token(t) => grants(&t.scopes, need),
        }
    }
}

/// A principal the dashboard's session layer (`crate::ui::session`) has already
/// authenticated: a request extension, which only the gateway's own code can set.
#[derive(Clone)]
pub struct Authenticated(pub Principal);

/// Why a request is not authenticated.
pub enum Failure {
    /// No credentials: not a login attempt.
    Missing,
    /// Credentials that are wrong: `who` is what they claimed, `why` what the caller is told.
    Invalid { who: String, why: &'static str },
    /// The client has failed too often: its credentials were not checked; it may try again
    /// in this many seconds.
    Limited(u64),
}

/// Where a request came from: the client's address (see [`client_ip`]), and its text for
/// the audit log.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub text: String,
}

impl Client {
    pub fn of<B>(state: &AppState, req: &axum::http::Request<B>) -> Client {
        let ip = client_ip(
            crate::limits::peer(req),
            req.headers(),
            &state.trusted_proxies,
        );
        Client {
            ip,
            text: ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
        }
    }
}

/// A refused credential: counted against the client's budget, and recorded in the audit log
/// as a `login.failure` of `who` from the client at `target`, answered `status`.
pub fn failed(
    state: &AppState,
    client: &Client,
    who: String,
    target: &str,
    status: StatusCode,
    why: &str,
) {
    state.failed_logins.failed(client.ip);
    let actor = Actor {
        who,
        client: client.text.clone(),
    };
    state.audit.rejected(
        "login.failure",
        &actor,
        target,
        &format!("{}: {why}", status.as_u16()),
    );
}

/// [`authenticate`] within the client's budget of failures: a client out of budget is not
/// checked at all; a failure is counted and recorded (see [`failed`]).
pub fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
    target: &str,
) -> Result<Principal, Failure> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(Failure::Missing);
    }
    state
        .failed_logins
        .check(client.ip)
        .map_err(Failure::Limited)?;
    let result = authenticate(state, headers);
    if let Err(Failure::Invalid { who, why }) = &result {
        failed(
            state,
            client,
            who.clone(),
            target,
            StatusCode::UNAUTHORIZED,
            why,
        );
    }
    result
}

/// The 429 of a client out of its budget of failures.
pub fn too_many_failures(retry_after: u64) -> Response {
    crate::limits::logins::too_many(retry_after).into_response()
}

/// At most `max` printable ASCII characters of what a caller sent, for the log.
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect()
}

/// Checks the `Authorization` header; notes the use of a token.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, Failure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Failure::Missing);
    };
    let value = value.to_str().unwrap_or("");
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(&decoded).into();
        if bool::from(digest.ct_eq(&state.admin_digest)) {
            return Ok(Principal::Admin);
        }
        let user = String::from_utf8_lossy(&decoded);
        let user = user.split_once(':').map_or("", |(u, _)| u);
        return Err(Failure::Invalid {
            who: format!("basic:{}", printable(user, 32)),
            why: "wrong user or password",
        });
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return match state.tokens.find(credentials) {
            Some(t) if t.expired(Utc::now()) => Err(Failure::Invalid {
                who: format!("token:{}", t.name),
                why: "the token has expired",
            }),
            Some(t) => {
                t.used(&state.store);
                Ok(Principal::Token(t))
            }
            None => Err(Failure::Invalid {
                who: "token".into(),
                why: "unknown or revoked token",
            }),
        };
    }
    Err(Failure::Invalid {
        who: printable(scheme, 16),
        why: "unsupported authorization scheme: use Basic or Bearer",
    })
}

fn error_body(status: StatusCode, message: String, needed: Option<&Scope>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "error": message,
        "source": "caller",
        "status": status.as_u16(),
    });
    if let Some(scope) = needed {
        body["needed"] = scope.to_string().into();
    }
    body
}

/// 401 with both challenges.
pub fn unauthorized(message: String) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(error_body(StatusCode::UNAUTHORIZED, message, None)),
    )
        .into_response();
    let h = r.headers_mut();
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"skyfri\""),
    );
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"skyfri\""),
    );
    r
}

fn forbidden(message: String, needed: &Scope) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(error_body(StatusCode::FORBIDDEN, message, Some(needed))),
    )
        .into_response()
}

/// What holding `need` takes, for messages.
fn need_text(need: &Scope) -> String {
    match need {
        Scope::Admin => "admin".into(),
        other => format!("{other} (or admin)"),
    }
}

fn held_text(t: &Token) -> String {
    t.scopes
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `--trusted-proxy` value: an address (`10.0.0.5`) or a network (`10.0.0.0/8`).
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or a network such as 10.0.0.0/8"))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not one.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage from beyond the trusted proxies: stop at the last address known good.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// The `/system` middleware: authenticates, checks the scope, and hands the handlers the
/// [`Actor`].
pub async fn require(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let client = Client::of(&state, &req);
    let target = format!("{} {}", req.method(), req.uri().path());
    let session = req.extensions_mut().remove::<Authenticated>();
    let authenticated = match session {
        Some(Authenticated(p)) => Ok(p),
        None => authenticate_client(&state, req.headers(), &client, &target),
    };
    let principal = match authenticated {
        Ok(p) => p,
        Err(Failure::Missing) => {
            return unauthorized(
                "authentication required: basic auth as admin (skyfri login, or SKYFRI_PASSWORD) or a bearer token (SKYFRI_TOKEN)".into(),
            )
        }
        Err(Failure::Invalid { why, .. }) => {
            return unauthorized(format!("authentication failed: {why}"));
        }
        Err(Failure::Limited(secs)) => return too_many_failures(secs),
    };
    let need = system_need(req.method().as_str(), req.uri().path());
    let actor = Actor {
        who: principal.who(),
        client: client.text,
    };
    if let Principal::Token(t) = &principal {
        if !principal.allows(&need) {
            let message = format!(
                "token {:?} (scopes: {}) may not {target}: that needs scope {}",
                t.name,
                held_text(t),
                need_text(&need)
            );
            state.audit.rejected(
                "access.denied",
                &actor,
                &target,
                &format!("403: needs {need}"),
            );
            return forbidden(message, &need);
        }
    }
    req.extensions_mut().insert(actor);
    next.run(req).await
}

/// Checks a call of a function; the refusal to answer with, if any. A private one needs basic admin or a token with
/// `invoke:NAME` (or admin); the credentials are then taken off the request. A skyfri token
/// is never passed on to a function, private or not; other `Authorization` headers reach
/// public functions untouched, as in OpenFaaS. `session` is the dashboard's principal when
/// the call comes from its invoke form. Refused credentials count as failed logins.
pub fn check_invoke(
    state: &AppState,
    name: &str,
    private: bool,
    req: &mut Request,
    session: Option<Principal>,
) -> Option<Response> {
    if !private {
        let headers = req.headers_mut();
        let ours = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, t)| {
                scheme.eq_ignore_ascii_case("bearer") && t.trim().starts_with(tokens::PREFIX)
            });
        if ours {
            headers.remove(header::AUTHORIZATION);
        }
        return None;
    }
    // Only a private function's call needs these (for the failed-login budget and audit).
    let client = Client::of(state, req);
    let target = format!("{} {}", req.method(), req.uri().path());
    let headers = req.headers_mut();
    let need = Scope::Invoke(name.to_string());
    let authenticated = match session {
        Some(p) => Ok(p),
        None => authenticate_client(state, headers, &client, &target),
    };
    let principal = match authenticated {
        Ok(p) => p,
        Err(Failure::Limited(secs)) => return Some(too_many_failures(secs)),
        Err(Failure::Missing) => {
            return Some(unauthorized(format!(
                "function {name:?} is private: send a token with scope {need} as `Authorization: Bearer TOKEN`"
            )))
        }
        Err(Failure::Invalid { why, .. }) => {
            return Some(unauthorized(format!(
                "function {name:?} is private and the credentials were refused: {why}"
            )))
        }
    };
    if let Principal::Token(t) = &principal {
        if !principal.allows(&need) {
            return Some(forbidden(
                format!(
                    "function {name:?} is private: token {:?} (scopes: {}) needs scope {}",
                    t.name,
                    held_text(t),
                    need_text(&need)
                ),
                &need,
            ));
        }
    }
    headers.remove(header::AUTHORIZATION);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        h
    }

    #[test]
    fn proxies_parse() {
        assert_eq!(parse_proxy("10.0.0.5").map(|n| n.prefix_len()), Ok(32));
        assert_eq!(parse_proxy("fd00::/8").map(|n| n.prefix_len()), Ok(8));
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("proxy.local").is_err());
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let h = xff(&["203.0.113.9, 10.1.2.3"]);
        // Nobody trusted: the peer, whatever the header says.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
        // A peer outside the trusted set: the peer.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // From a trusted proxy: the last untrusted hop.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // A spoofed first entry does not win over the hop the proxy saw.
        let h = xff(&["1.2.3.4", "203.0.113.9"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // Garbage stops the walk at the last good address.
        let h = xff(&["203.0.113.9, nonsense"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(client_ip(None, &h, &trusted), None);
    }
}
