//! Dashboard sessions: `POST /ui/login` (the admin's user and password, compared as SHA-256
//! digests in constant time as basic auth is, or an API token), `GET /ui/session`,
//! `POST /ui/logout`.
//!
//! A session is a random 256-bit id in an `HttpOnly; SameSite=Strict; Path=/ui` cookie
//! (`Secure` when the dashboard's listener is HTTPS) that expires after [`LIFETIME`]. The
//! path keeps the cookie away from `/function/*`: functions never see it. skyfri keeps only
//! the id's SHA-256, in memory (at most [`MAX_SESSIONS`], [`PER_CREDENTIAL`] per password or
//! token: a login beyond either ends the oldest session of the credential that holds the
//! most, so no one can lock others out by logging in often; a restart logs everyone out). A
//! token session keeps the token's hash and is checked against the live token table on every
//! request, so revoking the token ends the session. Every API call made with the cookie
//! must also carry the session's CSRF token in `X-Skyfri-Csrf` (the page reads it from
//! `/ui/session`, which no other origin may read: no CORS), so a cookie alone authorises
//! nothing; and a request that changes anything must come from the dashboard's own origin
//! ([`same_origin`]). Failed logins go to the audit log (folded, as on `/system`),
//! successful ones too. Failed logins spend the client's budget of failures shared with
//! every other credential check (`crate::limits::logins`: 429 with `Retry-After` beyond it).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
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
/// Sessions kept at most.
const MAX_SESSIONS: usize = 1024;
/// Sessions kept at most per credential (the admin password, or one token).
const PER_CREDENTIAL: usize = 16;
/// The largest login request read.
const MAX_LOGIN_BYTES: usize = 8 << 10;

#[derive(Clone, PartialEq, Eq, Hash)]
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
        let held = map.values().filter(|s| s.who == who).count();
        if held >= PER_CREDENTIAL {
            evict_oldest(&mut map, &who);
        } else if map.len() >= MAX_SESSIONS {
            // The credential holding the most sessions gives one up, not whoever is oldest:
            // logins with one token cannot push the admin out.
            let mut counts: HashMap<&Who, usize> = HashMap::new();
            for s in map.values() {
                *counts.entry(&s.who).or_default() += 1;
            }
            if let Some(most) = counts
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(w, _)| w.clone())
            {
                evict_oldest(&mut map, &most);
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

/// Ends the oldest session of `who`.
fn evict_oldest(map: &mut HashMap<[u8; 32], Session>, who: &Who) {
    let oldest = map
        .iter()
        .filter(|(_, s)| s.who == *who)
        .min_by_key(|(_, s)| s.expires)
        .map(|(k, _)| *k);
    if let Some(k) = oldest {
        map.remove(&k);
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

/// The dashboard's listener, as its handlers need to know it.
#[derive(Clone, Copy)]
pub struct Listener {
    /// HTTPS: the session cookie is `Secure`.
    pub tls: bool,
}

/// The dashboard's middleware: a request that may change something (any but GET and HEAD)
/// is refused (403) when the browser says it comes from a page of another origin, such as a
/// function's page on the gateway's port: its `Origin` must be the dashboard's own host and
/// port, and `Sec-Fetch-Site` (when sent) `same-origin`. Reading needs no check: without
/// CORS headers no other origin can read an answer.
pub async fn same_origin(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let own = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match foreign(req.headers(), own) {
        Some(why) => refused(StatusCode::FORBIDDEN, &why),
        None => next.run(req).await,
    }
}

/// Why a request that changes something is refused as coming from another origin, if it is.
/// `own`: the dashboard's host and port, as the request names them.
fn foreign(headers: &HeaderMap, own: Option<&str>) -> Option<String> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = site.filter(|s| *s != "same-origin" && *s != "none") {
        return Some(format!(
            "refused: the browser says this request comes from a page of another origin (Sec-Fetch-Site: {site}); use the dashboard's own page"
        ));
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("(not text)");
    let authority = origin.split_once("://").map(|(_, a)| a);
    if own.is_none() || authority != own {
        return Some(format!(
            "refused: a request from {origin} may not change anything on the dashboard at {}; use the dashboard's own page",
            own.unwrap_or("(no Host)")
        ));
    }
    None
}

/// A login must be JSON, which a form of another site cannot send without a CORS preflight
/// skyfri never grants.
fn json_body(headers: &HeaderMap) -> Result<(), GatewayError> {
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
    Ok(())
}

/// The `Set-Cookie` value; `Secure` when the dashboard is served over HTTPS.
fn set_cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

pub async fn login(
    State(state): State<AppState>,
    Extension(listener): Extension<Listener>,
    req: Request,
) -> Response {
    if let Err(refused) = json_body(req.headers()) {
        return refused.into_response();
    }
    // A client that failed too often anywhere is not checked (see `crate::limits::logins`).
    let client = auth::Client::of(&state, &req);
    if let Err(secs) = state.failed_logins.check(client.ip) {
        return auth::too_many_failures(secs);
    }
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
    if let Some(c) = set_cookie(&id, LIFETIME.as_secs(), listener.tls) {
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
pub async fn logout(
    State(state): State<AppState>,
    Extension(listener): Extension<Listener>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorise(&state, &headers, true) {
        return r.into_response();
    }
    if let Some(id) = cookie(&headers) {
        state.sessions.remove(id);
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Some(c) = set_cookie("", 0, listener.tls) {
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
        for i in 0..MAX_SESSIONS + 10 {
            s.create(Who::Token([(i % 251) as u8; 32]))
                .expect("session");
        }
        assert_eq!(s.live.lock().expect("lock").len(), MAX_SESSIONS);
    }

    #[test]
    fn logins_with_one_token_cannot_push_the_admin_out() {
        let s = Sessions::default();
        let (admin, _, _) = s.create(Who::Admin).expect("session");
        let low = Who::Token([7; 32]);
        let mut first = None;
        for _ in 0..MAX_SESSIONS * 2 {
            let (id, _, _) = s.create(low.clone()).expect("session");
            first.get_or_insert(id);
        }
        assert!(s.get(&admin).is_some(), "the admin's session survives");
        let held = |who: &Who| {
            let map = s.live.lock().expect("lock");
            map.values().filter(|x| x.who == *who).count()
        };
        assert_eq!(held(&low), PER_CREDENTIAL);
        assert!(s.get(&first.expect("a login")).is_none(), "the oldest went");
        // A full table: the credential with the most sessions makes room, not the admin.
        for t in 0..MAX_SESSIONS {
            s.create(Who::Token([(t % 200) as u8 + 10; 32]))
                .expect("session");
        }
        assert!(
            s.get(&admin).is_some(),
            "the admin's session survives a full table"
        );
        let (again, _, _) = s.create(Who::Admin).expect("a new admin login");
        assert!(s.get(&again).is_some());
        assert_eq!(s.live.lock().expect("lock").len(), MAX_SESSIONS);
    }

    #[test]
    fn changes_from_other_origins_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let own = Some("gw:8081");
        assert_eq!(foreign(&headers(&[]), own), None);
        assert_eq!(
            foreign(
                &headers(&[
                    ("origin", "http://gw:8081"),
                    ("sec-fetch-site", "same-origin")
                ]),
                own
            ),
            None
        );
        // A function's page on the gateway's port: same site, another origin.
        let from_function = headers(&[("origin", "http://gw:8080")]);
        let why = foreign(&from_function, own).expect("refused");
        assert!(
            why.contains("http://gw:8080") && why.contains("gw:8081"),
            "{why}"
        );
        assert!(foreign(&headers(&[("sec-fetch-site", "same-site")]), own).is_some());
        assert!(foreign(&headers(&[("origin", "null")]), own).is_some());
        assert!(foreign(&headers(&[("origin", "http://gw:8081")]), None).is_some());
        assert_eq!(
            json_body(&headers(&[])).map_err(|e| e.status()),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert!(json_body(&headers(&[("content-type", "application/json")])).is_ok());
    }
}
