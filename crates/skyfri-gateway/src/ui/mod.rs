//! The dashboard at `/ui`, served by skyfri itself on a listener of its own (`skyfri up
//! --ui-listen`): embedded static pages ([`assets`]), logins and sessions ([`session`]),
//! and the session-authorised API the pages call ([`api`]). No CDN, nothing fetched from
//! elsewhere: it works offline.
//!
//! Why its own listener: functions answer on the gateway's origin (`/function/*`), with
//! pages and scripts of their authors' making. Were the dashboard on that origin too, a
//! function's script could read the session's CSRF token and act as whoever is logged in.
//! On another port it is another origin: the browser keeps a function's script from reading
//! its answers, and [`session::same_origin`] refuses the writes such a script could send
//! blind. Cookies do not tell ports apart, so the gateway also drops any `Set-Cookie` of the
//! session cookie from functions' answers (see `crate::invoke`). The gateway's own listener
//! answers `/ui` with a 404 that names the dashboard's ([`elsewhere`]).

pub mod api;
pub mod assets;
pub mod session;

use std::net::SocketAddr;

use axum::http::uri::Authority;
use axum::http::{header, Request};

use crate::error::GatewayError;

/// Whether `path` is the dashboard's (`/ui`, `/ui/...`).
pub fn is_dashboard(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The gateway's answer to a dashboard path: a 404 that says where the dashboard is.
/// `dashboard`: its listener's address and whether it is HTTPS, or `None` when it is off.
pub fn elsewhere<B>(dashboard: Option<(SocketAddr, bool)>, req: &Request<B>) -> GatewayError {
    let Some((addr, tls)) = dashboard else {
        return GatewayError::not_found(
            "the dashboard is not served on the gateway's port, and its own listener is off (skyfri up --ui-listen off); start skyfri up with --ui-listen ADDR to serve it on a port of its own",
        );
    };
    let scheme = if tls { "https" } else { "http" };
    // Listening on every address: the host the caller used is the one to name.
    let host = if addr.ip().is_unspecified() {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok())
            .or_else(|| req.uri().authority().cloned())
            .map(|a| a.host().to_string())
    } else {
        None
    };
    let host = host.unwrap_or_else(|| match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    });
    GatewayError::not_found(format!(
        "the dashboard is not served on the gateway's port: it has its own port, {port}: {scheme}://{host}:{port}/ui",
        port = addr.port()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_names_the_dashboards_port() {
        let req = |host: &str| {
            Request::builder()
                .uri("/ui/session")
                .header(header::HOST, host)
                .body(())
                .expect("request")
        };
        assert!(is_dashboard("/ui") && is_dashboard("/ui/") && is_dashboard("/ui/api/x"));
        assert!(!is_dashboard("/uix") && !is_dashboard("/function/ui"));
        let at = |a: &str, tls| Some((a.parse::<SocketAddr>().expect("addr"), tls));
        let message = |d, r: &Request<()>| elsewhere(d, r).to_string();
        let shown = message(at("127.0.0.1:8081", false), &req("gw.example:8080"));
        assert!(
            shown.contains("its own port, 8081: http://127.0.0.1:8081/ui"),
            "{shown}"
        );
        let shown = message(at("0.0.0.0:9000", true), &req("gw.example:8080"));
        assert!(shown.contains("https://gw.example:9000/ui"), "{shown}");
        let shown = message(at("[::]:9000", false), &req("[::1]:8080"));
        assert!(shown.contains("http://[::1]:9000/ui"), "{shown}");
        let shown = message(None, &req("gw.example:8080"));
        assert!(shown.contains("--ui-listen off"), "{shown}");
        assert_eq!(
            elsewhere(None, &req("x")).status(),
            axum::http::StatusCode::NOT_FOUND
        );
    }
}
