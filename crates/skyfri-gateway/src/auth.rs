//! Basic auth for `/system/*`: constant-time comparison so the password leaks no timing.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::state::AppState;

pub const ADMIN_USER: &str = "admin";

fn authorised(state: &AppState, value: Option<&HeaderValue>) -> bool {
    let Some(encoded) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{ADMIN_USER}:{}", state.admin_password);
    bool::from(decoded.ct_eq(expected.as_bytes()))
}

pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if authorised(&state, req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"skyfri\"")],
        axum::Json(serde_json::json!({
            "error": "authentication required: basic auth as admin (skyfri login, or SKYFRI_PASSWORD)",
            "source": "caller",
            "status": 401,
        })),
    )
        .into_response()
}
