//! Dashboard sessions: `POST /ui/login` (the admin's user and password, compared as SHA-256
//! digests in constant time as basic auth is, or an API token), `GET /ui/session`,
//! `POST /ui/logout`.
//!
//! A session is a random 256-bit id in an `HttpOnly; SameSite=Strict; Path=/ui` cookie
//! (`Secure` when the page came over HTTPS) that expires after [`LIFETIME`]. The path keeps
//! the cookie away from `/function/*`: functions never see it. The gateway keeps only the
//! id's SHA-256, in memory (at most [`MAX_SESSIONS`]; a restart logs everyone out). A token
//! session keeps the token's hash and is checked against the live token table on every
//! request, so revoking the token ends the session. Every API call made with the cookie
//! must also carry the session's CSRF token in `X-Skyfri-Csrf` (the page reads it from
//! `/ui/session`, same-origin only), so a cookie alone authorises nothing. Failed logins
//! go to the audit log (folded, as on `/system`), successful ones too. Failed logins spend
//! the client's budget of failures shared with every other credential check
//! (`crate::limits::logins`: 429 with `Retry-After` beyond it).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::Actor;
use crate::auth::{self, Principal, ADMIN_USER};
use crate::error::GatewayError;
use crate::state::AppState;

pub const COOKIE: &str = "skyfri_session";
pub const CSRF_HEADER: &str = "x-skyfri-csrf";
/// How long a session lasts from its login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the one closest to expiry makes room for a new one.
const MAX_SESSIONS: usize = 1024;
/// The largest login request read.
const MAX_LOGIN_BYTES: usize = 8 << 10;

#[derive(Clone)]
enum Who {
    Admin,
    /// The SHA-256 of the token logged in with.
    Token([u8; 32]),
}

struct Session {
    who: Who,
    csrf: String,
    expires: Instant,
    expires_at: DateTime<Utc>,
}

/// The live sessions, by the SHA-256 of their id.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_id() -> Option<String> {
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session: its id and CSRF token.
    fn create(&self, who: Who) -> Option<(String, String, DateTime<Utc>)> {
        let (id, csrf) = (random_id()?, random_id()?);
        let now = Instant::now();
        let expires_at = Utc::now() + chrono::Duration::from_std(LIFETIME).ok()?;
        let mut map = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(k) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&k);
            }
        }
        map.insert(
            key(&id),
            Session {
                who,
                csrf: csrf.clone(),
                expires: now + LIFETIME,
                expires_at,
            },
        );
        Some((id, csrf, expires_at))
    }

    fn remove(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key(id));
    }

    /// The live session `id` names: who, its CSRF token and expiry.
    fn get(&self, id: &str) -> Option<(Who, String, DateTime<Utc>)> {
        let mut map = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let k = key(id);
        let s = map.get(&k)?;
        if s.expires <= Instant::now() {
            map.remove(&k);
            return None;
        }
        Some((s.who.clone(), s.csrf.clone(), s.expires_at))
    }
}

/// The session cookie's value in `headers`, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn refusal(status: StatusCode, message: &str) -> GatewayError {
    GatewayError::Caller {
        status,
        message: message.to_string(),
    }
}

fn refused(status: StatusCode, message: &str) -> Response {
    refusal(status, message).into_response()
}

/// A logged-in session's principal, for a dashboard API call (`csrf`: the call must carry
/// the session's CSRF token) or for reading the session itself.
pub fn authorise(
    state: &AppState,
    headers: &HeaderMap,
    csrf: bool,
) -> Result<Principal, GatewayError> {
    let unauthorised = || {
        refusal(
            StatusCode::UNAUTHORIZED,
            "not logged in, or the session has expired: log in at /ui",
        )
    };
    let id = cookie(headers).ok_or_else(unauthorised)?;
    let (who, token, _) = state.sessions.get(id).ok_or_else(unauthorised)?;
    if csrf {
        let sent = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(token.as_bytes())) {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "missing or wrong X-Skyfri-Csrf header: dashboard API calls need the session's CSRF token",
            ));
        }
    }
    match who {
        Who::Admin => Ok(Principal::Admin),
        Who::Token(h) => match state.tokens.find_hash(&h) {
            Some(t) if !t.expired(Utc::now()) => {
                t.used(&state.store);
                Ok(Principal::Token(t))
            }
            // Revoked or expired since the login: the session ends with it.
            _ => {
                state.sessions.remove(id);
                Err(unauthorised())
            }
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionInfo {
    who: String,
    csrf: String,
    expires_at: DateTime<Utc>,
    /// What the session may do: `admin`, or the token's scopes.
    scopes: Vec<String>,
}

fn info(principal: &Principal, csrf: String, expires_at: DateTime<Utc>) -> SessionInfo {
    let scopes = match principal {
        Principal::Admin => vec!["admin".to_string()],
        Principal::Token(t) => t.scopes.iter().map(ToString::to_string).collect(),
    };
    SessionInfo {
        who: principal.who(),
        csrf,
        expires_at,
        scopes,
    }
}

/// Refuses requests a page of another site could have made: a login must be JSON (which a
/// cross-site form cannot send without a CORS preflight skyfri never grants), and when the
/// browser names the request's origin, it must be this gateway.
fn same_origin(headers: &HeaderMap) -> Result<(), GatewayError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the login as JSON (Content-Type: application/json)",
        ));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(refusal(StatusCode::FORBIDDEN, "cross-site login refused"));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let authority = origin.split_once("://").map(|(_, a)| a);
        if host.is_none() || authority != host {
            return Err(refusal(StatusCode::FORBIDDEN, "cross-origin login refused"));
        }
    }
    Ok(())
}

/// The `Set-Cookie` value; `Secure` when the page was loaded over HTTPS.
fn set_cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"))
}

pub async fn login(State(state): State<AppState>, req: Request) -> Response {
    if let Err(refused) = same_origin(req.headers()) {
        return refused.into_response();
    }
    // A client that failed too often anywhere is not checked (see `crate::limits::logins`).
    let client = auth::Client::of(&state, &req);
    if let Err(secs) = state.failed_logins.check(client.ip) {
        return auth::too_many_failures(secs);
    }
    let secure = over_https(req.headers());
    let body = match axum::body::to_bytes(req.into_body(), MAX_LOGIN_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the login request is too large",
            )
        }
    };
    let login: Login = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!("the login must be {{\"user\", \"password\"}} or {{\"token\"}}: {e}"),
            )
        }
    };
    let (who, claimed, why) = match (&login.token, &login.password) {
        (Some(token), None) => {
            let t = state
                .tokens
                .find(token.trim())
                .filter(|t| !t.expired(Utc::now()));
            let claimed = "dashboard:token".to_string();
            match t {
                Some(t) => (
                    Some((
                        Who::Token(crate::tokens::hash(token.trim())),
                        Principal::Token(t),
                    )),
                    claimed,
                    "",
                ),
                None => (None, claimed, "unknown, revoked or expired token"),
            }
        }
        (None, Some(password)) => {
            let user = login.user.as_deref().unwrap_or(ADMIN_USER);
            let digest: [u8; 32] = Sha256::digest(format!("{user}:{password}").as_bytes()).into();
            let claimed = format!(
                "dashboard:{}",
                user.chars()
                    .filter(char::is_ascii_graphic)
                    .take(32)
                    .collect::<String>()
            );
            if bool::from(digest.ct_eq(&state.admin_digest)) {
                (Some((Who::Admin, Principal::Admin)), claimed, "")
            } else {
                (None, claimed, "wrong user or password")
            }
        }
        _ => {
            return refused(
                StatusCode::BAD_REQUEST,
                "send either a password (with user \"admin\") or a token",
            )
        }
    };
    let Some((who, principal)) = who else {
        auth::failed(
            &state,
            &client,
            claimed,
            "POST /ui/login",
            StatusCode::UNAUTHORIZED,
            why,
        );
        return refused(StatusCode::UNAUTHORIZED, &format!("login refused: {why}"));
    };
    let Some((id, csrf, expires_at)) = state.sessions.create(who) else {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not make a session id (no randomness)",
        );
    };
    let actor = Actor {
        who: principal.who(),
        client: client.text,
    };
    state
        .audit
        .record(&actor, "dashboard.login", "/ui", "ok")
        .await;
    let mut r = Json(info(&principal, csrf, expires_at)).into_response();
    if let Some(c) = set_cookie(&id, LIFETIME.as_secs(), secure) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    no_store(r)
}

/// `GET /ui/session`: who is logged in, and the CSRF token the page sends with its calls.
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let principal = match authorise(&state, &headers, false) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some((_, csrf, expires_at)) = cookie(&headers).and_then(|id| state.sessions.get(id)) else {
        return refused(StatusCode::UNAUTHORIZED, "not logged in");
    };
    no_store(Json(info(&principal, csrf, expires_at)).into_response())
}

/// `POST /ui/logout` (with the CSRF header): ends the session and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&state, &headers, true) {
        return r.into_response();
    }
    if let Some(id) = cookie(&headers) {
        state.sessions.remove(id);
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Some(c) = set_cookie("", 0, over_https(&headers)) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; skyfri_session=abc; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("skyfri_sessionx=1"),
        );
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let (id, csrf, _) = s.create(Who::Admin).expect("session");
        assert_eq!(s.get(&id).map(|(_, c, _)| c), Some(csrf));
        assert!(s.get("not-a-session").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
        for _ in 0..MAX_SESSIONS + 10 {
            s.create(Who::Admin).expect("session");
        }
        assert_eq!(s.live.lock().expect("lock").len(), MAX_SESSIONS);
    }

    #[test]
    fn logins_from_other_sites_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let json = ("content-type", "application/json");
        assert!(same_origin(&headers(&[json, ("host", "gw:8080")])).is_ok());
        assert!(same_origin(&headers(&[
            json,
            ("host", "gw:8080"),
            ("origin", "http://gw:8080"),
            ("sec-fetch-site", "same-origin")
        ]))
        .is_ok());
        let refused = |h| same_origin(&h).map_err(|r| r.status()).err();
        assert_eq!(
            refused(headers(&[("host", "gw:8080")])),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            refused(headers(&[
                json,
                ("host", "gw:8080"),
                ("origin", "http://evil.example")
            ])),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            refused(headers(&[
                json,
                ("host", "gw:8080"),
                ("sec-fetch-site", "cross-site")
            ])),
            Some(StatusCode::FORBIDDEN)
        );
    }
}
