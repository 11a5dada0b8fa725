//! `/system/info`, `/system/namespaces`, `/healthz`, `/metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use crate::metrics::FunctionGauges;
use crate::state::AppState;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn info(State(state): State<AppState>) -> impl IntoResponse {
    let version = serde_json::json!({
        "release": VERSION,
        "sha": option_env!("SKYFRI_GIT_SHA").unwrap_or("unknown"),
        "commit_message": "",
    });
    Json(serde_json::json!({
        "provider": {
            "provider": "skyfri",
            "orchestration": "local",
            "version": version,
            "runtime": state.provider.info(),
            "queue": { "backend": state.queue.backend() },
        },
        "version": version,
        "arch": std::env::consts::ARCH,
    }))
}

pub async fn namespaces() -> impl IntoResponse {
    Json([skyfri_core::function::DEFAULT_NAMESPACE])
}

pub async fn healthz() -> &'static str {
    "OK"
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The queue gauges are read when scraped; a queue that cannot answer leaves the last
    // values.
    match state.queue.depth().await {
        Ok(depths) => {
            let waiting: Vec<_> = depths
                .into_iter()
                .map(|d| (d.function, d.waiting, d.oldest))
                .collect();
            state.metrics.set_async_depth(&waiting);
        }
        Err(e) => tracing::warn!(error = %e, "async queue depth not read"),
    }
    let functions: Vec<FunctionGauges> = state
        .all_live()
        .iter()
        .map(|live| {
            let name = &live.deployment.spec.name;
            let status = state.provider.status(name);
            FunctionGauges {
                name: name.clone(),
                desired: status.map_or(0, |s| s.desired),
                ready: status.map_or(0, |s| s.available),
                in_flight: live.router.in_flight(),
                waiting: live.router.waiting(),
                oldest_wait: live.router.oldest_wait(),
                oom_kills: status.map_or(0, |s| s.oom_kills),
            }
        })
        .collect();
    state.metrics.set_functions(&functions);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
