//! The dashboard's files, embedded in the binary: one HTML page, its script and its style
//! sheet (plain HTML, CSS and JavaScript; the charts are SVG drawn by the script). Each is
//! gzipped once, on first use, and served with an ETag (`Cache-Control: no-cache`: a
//! reload costs a 304), `nosniff`, and a Content-Security-Policy that lets the page load
//! and connect to this gateway only.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::io::Write;

use crate::error::GatewayError;
use crate::extract::Path;

const FILES: [(&str, &str, &[u8]); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    plain: &'static [u8],
    gzipped: Vec<u8>,
    etag: HeaderValue,
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(name, content_type, plain)| {
                let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
                // Writing into a Vec cannot fail.
                let gzipped = gz
                    .write_all(plain)
                    .and_then(|()| gz.finish())
                    .unwrap_or_default();
                let digest = Sha256::digest(plain);
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                Asset {
                    name,
                    content_type,
                    plain,
                    gzipped,
                    etag: HeaderValue::from_str(&format!("\"{hex}\""))
                        .unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
                }
            })
            .collect()
    })
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(a) = assets().iter().find(|a| a.name == name) else {
        return GatewayError::not_found(format!("no dashboard file {name:?}")).into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == a.etag.as_bytes());
    let gzip = !a.gzipped.is_empty()
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut r = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if gzip {
        let mut r = Response::new(Body::from(a.gzipped.clone()));
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        Response::new(Body::from(a.plain))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::ETAG, a.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `/ui`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `/ui/assets/FILE`: its script and style sheet.
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name == "index.html" {
        return GatewayError::not_found("no such dashboard file").into_response();
    }
    serve(&name, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_gzipped_with_an_etag_and_revalidated() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip"),
        );
        let r = serve("app.js", &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let etag = r.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &h).status(), StatusCode::NOT_MODIFIED);
        let r = serve("index.html", &HeaderMap::new());
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .is_ok_and(|c| c.contains("connect-src 'self'")));
        assert_eq!(
            serve("../secret.key", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
