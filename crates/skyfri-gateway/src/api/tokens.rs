//! `/system/tokens` (admin only): create an API token (its value is in this answer and
//! nowhere else, ever), list tokens (names, scopes and times, never values), revoke one.

use axum::extract::State;

use crate::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use skyfri_core::auth::{parse_lifetime, CreatedToken, Scope, TokenInfo};
use skyfri_core::validate_name;
use skyfri_store::TokenRecord;

use crate::audit::Actor;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::tokens;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    scopes: Vec<String>,
    /// A lifetime such as `30d`; none: the token lasts until revoked.
    #[serde(default)]
    expires_in: Option<String>,
    /// Keep a SigV4 signing secret, for AWS SDK callers.
    #[serde(default)]
    sigv4: bool,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn info(r: TokenRecord) -> TokenInfo {
    TokenInfo {
        name: r.name,
        scopes: r.scopes,
        created_at: time(r.created_at),
        expires_at: r.expires_at.map(time),
        last_used: r.last_used.map(time),
        sigv4: r.sigv4,
    }
}

pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, GatewayError> {
    let all = state.with_store(|s| s.list_tokens()).await?;
    Ok(Json(
        all.into_iter()
            .map(|r| info(state.tokens.overlay(r)))
            .collect::<Vec<_>>(),
    ))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let req: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::bad_request(format!(
            r#"expected {{"name": "...", "scopes": ["read" | "deploy" | "admin" | "invoke:FUNCTION", ...], "expiresIn": "30d", "sigv4": false}}: {e}"#
        ))
    })?;
    let name = req.name.clone();
    let result = new_token(&state, req).await;
    let created = state
        .audit
        .outcome(&actor, "token.create", &name, result)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn new_token(state: &AppState, req: CreateRequest) -> Result<CreatedToken, GatewayError> {
    validate_name(&req.name).map_err(|e| GatewayError::bad_request(format!("token {e}")))?;
    let scopes = Scope::parse_all(&req.scopes).map_err(GatewayError::bad_request)?;
    let created_at = Utc::now();
    let expires_at = req
        .expires_in
        .as_deref()
        .map(|s| {
            parse_lifetime(s)
                .map_err(|e| GatewayError::bad_request(format!("expiresIn: {e}")))
                .map(|secs| {
                    created_at + chrono::Duration::seconds(secs.min(i64::MAX as u64 / 2) as i64)
                })
        })
        .transpose()?;
    let (token, hash) = tokens::generate()?;
    let record = TokenRecord {
        name: req.name,
        hash,
        scopes: scopes.iter().map(Scope::to_string).collect(),
        created_at,
        expires_at,
        last_used: None,
        sigv4: req.sigv4,
    };
    let signing = req.sigv4.then(|| token.clone());
    let record = state
        .blocking(move |state| {
            if !state
                .store
                .create_token(&record, signing.as_ref().map(String::as_bytes))?
            {
                return Err(GatewayError::Caller {
                    status: StatusCode::CONFLICT,
                    message: format!(
                        "token {:?} already exists: revoke it first (`skyfri token revoke {}`) or pick another name",
                        record.name, record.name
                    ),
                });
            }
            state.tokens.reload(&state.store)?;
            Ok(record)
        })
        .await?;
    Ok(CreatedToken {
        info: info(record),
        token,
    })
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, GatewayError> {
    let revoked = name.clone();
    let result = state
        .blocking(move |state| {
            let name = revoked;
            validate_name(&name).map_err(|e| GatewayError::bad_request(format!("token {e}")))?;
            if !state.store.revoke_token(&name)? {
                return Err(GatewayError::not_found(format!(
                    "token {name:?} not found (see `skyfri token ls`)"
                )));
            }
            state.tokens.reload(&state.store)?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await;
    state
        .audit
        .outcome(&actor, "token.revoke", &name, result)
        .await
}
