//! `/system/secrets`: OpenFaaS secrets. Values go in and reach replicas (through the
//! provider's `SecretSource`); the API never sends them back, and they are never logged.

use axum::extract::State;

use crate::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine;
use serde::{Deserialize, Serialize};
use skyfri_core::function::DEFAULT_NAMESPACE;
use skyfri_core::validate_secret_name;

use crate::audit::Actor;
use crate::error::GatewayError;
use crate::state::AppState;

/// Largest secret value, as Kubernetes allows.
const MAX_VALUE_BYTES: usize = 1 << 20;

/// What GET lists: a name, never a value.
#[derive(Serialize)]
pub struct SecretName {
    name: String,
    namespace: &'static str,
}

/// The body of POST, PUT and DELETE, as OpenFaaS's `types.Secret`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRequest {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// The value as text.
    #[serde(default)]
    value: Option<String>,
    /// The value as base64 bytes.
    #[serde(default)]
    raw_value: Option<String>,
}

#[derive(Deserialize)]
pub struct NamespaceQuery {
    namespace: Option<String>,
}

fn check_namespace(namespace: Option<&str>) -> Result<(), GatewayError> {
    match namespace {
        None | Some("") | Some(DEFAULT_NAMESPACE) => Ok(()),
        Some(other) => Err(GatewayError::bad_request(format!(
            "namespace: {other:?} does not exist (only {DEFAULT_NAMESPACE:?} for now)"
        ))),
    }
}

/// Parses and checks a request; the name is valid and the namespace known.
fn parse(body: &[u8], shape: &str) -> Result<SecretRequest, GatewayError> {
    let req: SecretRequest = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("expected {shape}: {e}")))?;
    validate_secret_name(&req.name).map_err(GatewayError::bad_request)?;
    check_namespace(req.namespace.as_deref())?;
    Ok(req)
}

const WRITE_SHAPE: &str =
    r#"{"name": "...", "value": "..."} or {"name": "...", "rawValue": "<base64>"}"#;

/// The value of a POST or PUT: exactly one of `value` and `rawValue`, not empty.
fn value(req: &SecretRequest) -> Result<Vec<u8>, GatewayError> {
    let value = match (
        req.value.as_deref().filter(|v| !v.is_empty()),
        req.raw_value.as_deref().filter(|v| !v.is_empty()),
    ) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(raw)) => base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| GatewayError::bad_request(format!("rawValue: not base64: {e}")))?,
        (Some(_), Some(_)) => {
            return Err(GatewayError::bad_request(
                "set one of `value` and `rawValue`, not both",
            ))
        }
        (None, None) => {
            return Err(GatewayError::bad_request(format!(
                "secret {:?} has no value: expected {WRITE_SHAPE}",
                req.name
            )))
        }
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(GatewayError::bad_request(format!(
            "secret {:?} is {} bytes; the most is {MAX_VALUE_BYTES} bytes",
            req.name,
            value.len()
        )));
    }
    Ok(value)
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<NamespaceQuery>,
) -> Result<impl IntoResponse, GatewayError> {
    check_namespace(q.namespace.as_deref())?;
    let names = state.with_store(|s| s.list_secrets()).await?;
    Ok(Json(
        names
            .into_iter()
            .map(|name| SecretName {
                name,
                namespace: DEFAULT_NAMESPACE,
            })
            .collect::<Vec<_>>(),
    ))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let req = parse(&body, WRITE_SHAPE)?;
    let name = req.name.clone();
    let result = state
        .blocking(move |state| {
            if !state.store.create_secret(&req.name, &value(&req)?)? {
                return Err(GatewayError::Caller {
                    status: StatusCode::CONFLICT,
                    message: format!(
                    "secret {:?} already exists: change its value with `skyfri secret update {}`",
                    req.name, req.name
                ),
                });
            }
            Ok(StatusCode::CREATED)
        })
        .await;
    state
        .audit
        .outcome(&actor, "secret.create", &name, result)
        .await
}

pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let req = parse(&body, WRITE_SHAPE)?;
    let name = req.name.clone();
    let result = state
        .blocking(move |state| {
            if !state.store.update_secret(&req.name, &value(&req)?)? {
                return Err(not_found(&req.name));
            }
            Ok(StatusCode::OK)
        })
        .await;
    state
        .audit
        .outcome(&actor, "secret.update", &name, result)
        .await
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let req = parse(&body, r#"{"name": "..."}"#)?;
    let name = req.name.clone();
    let result = state
        .blocking(move |state| {
            if !state.store.remove_secret(&req.name)? {
                return Err(not_found(&req.name));
            }
            Ok(StatusCode::NO_CONTENT)
        })
        .await;
    state
        .audit
        .outcome(&actor, "secret.remove", &name, result)
        .await
}

fn not_found(name: &str) -> GatewayError {
    GatewayError::not_found(format!(
        "secret {name:?} not found: create it with `skyfri secret create {name}`"
    ))
}

/// Refuses a deployment that names secrets the store does not hold, before anything starts.
pub async fn require(
    state: &AppState,
    function: &str,
    secrets: &[String],
) -> Result<(), GatewayError> {
    if secrets.is_empty() {
        return Ok(());
    }
    let stored = state.with_store(|s| s.list_secrets()).await?;
    let missing: Vec<&String> = secrets.iter().filter(|s| !stored.contains(s)).collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(GatewayError::bad_request(format!(
            "function {function:?} needs secret {one:?}, which does not exist: create it with `skyfri secret create {one}` (value from --from-literal, --from-file or stdin), then deploy again"
        ))),
        many => Err(GatewayError::bad_request(format!(
            "function {function:?} needs secrets that do not exist: {}; create each with `skyfri secret create NAME` (value from --from-literal, --from-file or stdin), then deploy again",
            many.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<Vec<u8>, GatewayError> {
        value(&parse(json.as_bytes(), WRITE_SHAPE)?)
    }

    #[test]
    fn requests() {
        assert_eq!(req(r#"{"name":"a","value":"v"}"#).ok(), Some(b"v".to_vec()));
        assert_eq!(
            req(r#"{"name":"a","rawValue":"AAEC","namespace":"openfaas-fn"}"#).ok(),
            Some(vec![0, 1, 2])
        );
        // Go's encoder leaves out empty fields; an empty `value` beside `rawValue` is absent.
        assert_eq!(
            req(r#"{"name":"a","value":"","rawValue":"AAEC"}"#).ok(),
            Some(vec![0, 1, 2])
        );
        for (bad, says) in [
            (r#"{"name":"a"}"#, "has no value"),
            (r#"{"name":"a","value":""}"#, "has no value"),
            (r#"{"name":"a","value":"v","rawValue":"AAEC"}"#, "not both"),
            (r#"{"name":"a","rawValue":"!!"}"#, "rawValue: not base64"),
            (r#"{"name":"../a","value":"v"}"#, "DNS-1123"),
            (r#"{"name":"a","value":"v","namespace":"x"}"#, "namespace"),
            (r#"{"value":"v"}"#, "expected {\"name\""),
        ] {
            let err = req(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
