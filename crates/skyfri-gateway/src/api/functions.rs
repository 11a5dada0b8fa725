//! `/system/functions`, `/system/function/{name}`, `/system/scale-function/{name}`.

use axum::extract::State;

use crate::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::SecondsFormat;
use serde::Deserialize;
use skyfri_core::openfaas::{
    FunctionDeployment, FunctionStatus, ScalePolicySummary, ScalingDecision,
};
use skyfri_core::scaling::ScalePolicy;
use skyfri_core::{validate_name, Deployment};
use skyfri_store::StoredFunction;

use crate::audit::Actor;
use crate::error::GatewayError;
use crate::state::AppState;

fn status_of(state: &AppState, stored: &StoredFunction) -> FunctionStatus {
    let deployment = &stored.deployment;
    let spec = &deployment.spec;
    let d = FunctionDeployment::from(spec);
    let live = state.provider.status(&spec.name);
    let (invocations, in_flight, queued) = state
        .live(&spec.name)
        .map(|l| {
            (
                l.invocations.load(std::sync::atomic::Ordering::Relaxed),
                l.router.in_flight() as u64,
                l.router.waiting() as u64,
            )
        })
        .unwrap_or_default();
    // Deploys validate the policy; one that no longer parses is left out, not an error.
    let scale_policy = ScalePolicy::from_spec(spec, deployment.template)
        .ok()
        .map(|p| ScalePolicySummary::from(&p));
    let scaling = state.decisions.get(&spec.name).map(|l| ScalingDecision {
        desired: l.desired,
        panic: l.panic,
        reason: l.reason,
        at: l.at.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    FunctionStatus {
        name: d.service,
        image: d.image,
        namespace: spec.namespace.clone(),
        env_process: d.env_process,
        env_vars: d.env_vars,
        constraints: d.constraints,
        secrets: d.secrets,
        labels: d.labels,
        annotations: d.annotations,
        limits: d.limits,
        requests: d.requests,
        read_only_root_filesystem: d.read_only_root_filesystem,
        invocation_count: invocations as f64,
        // The autoscaler changes the provider's count, not the stored one.
        replicas: u64::from(live.map_or(deployment.replicas, |s| s.desired)),
        available_replicas: live.map(|s| u64::from(s.available)).unwrap_or(0),
        created_at: Some(stored.created_at.to_rfc3339()),
        in_flight,
        queued,
        scale_policy,
        scaling,
    }
}

pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, GatewayError> {
    let all = state.with_store(|s| s.list_functions()).await?;
    Ok(Json(
        all.iter().map(|f| status_of(&state, f)).collect::<Vec<_>>(),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, GatewayError> {
    let stored = stored_function(&state, &name).await?;
    Ok(Json(status_of(&state, &stored)))
}

/// The stored function `name`, or a 404.
async fn stored_function(state: &AppState, name: &str) -> Result<StoredFunction, GatewayError> {
    let key = name.to_string();
    state
        .with_store(move |s| s.get_function(&key))
        .await?
        .ok_or_else(|| GatewayError::not_found(format!("function {name:?} not found")))
}

fn parse_deployment(body: &[u8]) -> Result<FunctionDeployment, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid FunctionDeployment JSON: {e}")))
}

/// Checks that the secrets it names exist, resolves the image, starts the replicas, and only
/// then records the function: a deploy that fails leaves the previous state untouched.
pub async fn apply(state: &AppState, d: FunctionDeployment) -> Result<Deployment, GatewayError> {
    let spec = d.into_spec().map_err(GatewayError::bad_request)?;
    crate::limits::check_deploy(state, &spec)?;
    super::secrets::require(state, &spec.name, &spec.secrets).await?;
    let (image_name, name) = (spec.image.clone(), spec.name.clone());
    let (image, old) = state
        .with_store(move |s| Ok((s.get_image(&image_name)?, s.get_function(&name)?)))
        .await?;
    let image = image.ok_or_else(|| {
        GatewayError::bad_request(format!(
            "image {:?} is not built on this skyfri: run `skyfri build -f stack.yml` (or `skyfri deploy -f stack.yml`) for the function that names it",
            spec.image
        ))
    })?;
    let replicas = match old {
        // An update keeps a scale set by /system/scale-function unless the minimum says more.
        Some(old) => old.deployment.replicas.max(spec.min_replicas()),
        None => spec.min_replicas(),
    };
    let deployment = Deployment {
        spec,
        artefact: image.artefact,
        template: image.template,
        replicas,
    };
    state
        .provider
        .deploy(&deployment)
        .await
        .map_err(|e| GatewayError::bad_request(format!("deploy failed: {e}")))?;
    let stored = deployment.clone();
    state
        .blocking(move |s| Ok(s.store.put_function(&stored)?))
        .await?;
    state.set_live(deployment.clone());
    tracing::info!(function = %deployment.spec.name, artefact = %deployment.artefact, "deployed");
    Ok(deployment)
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let d = parse_deployment(&body)?;
    let name = d.service.clone();
    let result = apply(&state, d).await;
    state
        .audit
        .outcome(&actor, "function.deploy", &name, result)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let d = parse_deployment(&body)?;
    let name = d.service.clone();
    let service = d.service.clone();
    let result = match state.with_store(move |s| s.get_function(&service)).await {
        Ok(Some(_)) => apply(&state, d).await,
        Ok(None) => Err(GatewayError::not_found(format!(
            "function {name:?} not found"
        ))),
        Err(e) => Err(e),
    };
    state
        .audit
        .outcome(&actor, "function.update", &name, result)
        .await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    function_name: String,
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let req: DeleteRequest = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::bad_request(format!("expected {{\"functionName\": \"...\"}}: {e}"))
    })?;
    let name = req.function_name;
    let result = remove(&state, &name).await;
    state
        .audit
        .outcome(&actor, "function.remove", &name, result)
        .await?;
    Ok(StatusCode::OK)
}

async fn remove(state: &AppState, name: &str) -> Result<(), GatewayError> {
    let removed = name.to_string();
    if !state
        .blocking(move |s| Ok(s.store.remove_function(&removed)?))
        .await?
    {
        return Err(GatewayError::not_found(format!(
            "function {name:?} not found"
        )));
    }
    state.remove_live(name);
    state
        .provider
        .remove(name)
        .await
        .map_err(GatewayError::internal)?;
    tracing::info!(function = %name, "removed");
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRequest {
    replicas: u32,
}

/// Most replicas one function may have on this node.
const MAX_REPLICAS: u32 = 100;

pub async fn scale(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    validate_name(&name).map_err(GatewayError::bad_request)?;
    let req: ScaleRequest = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::bad_request(format!(
            "expected {{\"serviceName\": \"...\", \"replicas\": N}}: {e}"
        ))
    })?;
    let target = format!("{name} replicas={}", req.replicas);
    let result = set_replicas(&state, &name, req.replicas).await;
    state
        .audit
        .outcome(&actor, "function.scale", &target, result)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn set_replicas(state: &AppState, name: &str, replicas: u32) -> Result<(), GatewayError> {
    if replicas > MAX_REPLICAS {
        return Err(GatewayError::bad_request(format!(
            "replicas: {replicas} is more than the maximum of {MAX_REPLICAS}"
        )));
    }
    let mut stored = stored_function(state, name).await?.deployment;
    check_replicas(&stored, replicas)?;
    // The autoscaler keeps this count until traffic arrives (held before it is applied, so
    // that no decision in between undoes it).
    state.decisions.hold(name, replicas);
    if let Err(e) = state.provider.scale(name, replicas).await {
        state.decisions.release(name);
        return Err(GatewayError::internal(e));
    }
    stored.replicas = replicas;
    let write = stored.clone();
    state
        .blocking(move |s| Ok(s.store.put_function(&write)?))
        .await?;
    state.set_live(stored);
    Ok(())
}

/// A manual scale stays within the function's minimum and maximum replicas, except 0, which
/// OpenFaaS accepts for any function (a pause; the next call brings it back).
fn check_replicas(d: &Deployment, replicas: u32) -> Result<(), GatewayError> {
    if replicas == 0 {
        return Ok(());
    }
    let Ok(policy) = ScalePolicy::from_spec(&d.spec, d.template) else {
        // Deploys validate the policy; one that no longer parses leaves only the node's cap.
        return Ok(());
    };
    if replicas < policy.min || replicas > policy.max {
        return Err(GatewayError::bad_request(format!(
            "replicas: {replicas} is outside the range of function {:?}, {} to {} (its \
             com.openfaas.scale.min / max labels or min-scale / max-scale annotations); 0 is \
             allowed too",
            d.spec.name, policy.min, policy.max
        )));
    }
    Ok(())
}
