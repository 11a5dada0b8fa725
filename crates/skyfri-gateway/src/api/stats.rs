//! `/system/stats[?function=NAME]`: every deployed function's last hour by minute (calls,
//! 5xx errors, cold starts, p50/p99 latency, replicas) as the gateway keeps it in memory
//! ([`crate::stats`]), with its replicas now; what the dashboard charts.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::extract::Query;
use crate::state::AppState;
use crate::stats::{Hour, MINUTES};

#[derive(Deserialize)]
pub struct StatsQuery {
    function: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionHour {
    pub name: String,
    /// Replicas asked for and ready now.
    pub desired: u32,
    pub ready: u32,
    /// Calls since the gateway started.
    pub invocations: u64,
    #[serde(flatten)]
    pub hour: Hour,
}

#[derive(Serialize)]
pub struct Stats {
    /// Minutes per series, and the seconds each covers.
    pub minutes: usize,
    pub step: u64,
    pub functions: Vec<FunctionHour>,
}

pub async fn stats(
    State(state): State<AppState>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Stats>, GatewayError> {
    let now = Instant::now();
    let mut live = state.all_live();
    if let Some(name) = &q.function {
        live.retain(|l| &l.deployment.spec.name == name);
        if live.is_empty() {
            return Err(GatewayError::not_found(format!(
                "function {name:?} is not deployed (see `skyfri ls`)"
            )));
        }
    }
    live.sort_by(|a, b| a.deployment.spec.name.cmp(&b.deployment.spec.name));
    let functions = live
        .iter()
        .map(|l| {
            let name = l.deployment.spec.name.clone();
            let (desired, ready) = state
                .provider
                .status(&name)
                .map_or((0, 0), |s| (s.desired, s.available));
            FunctionHour {
                desired,
                ready,
                invocations: l.invocations.load(std::sync::atomic::Ordering::Relaxed),
                hour: l.stats.hour(now),
                name,
            }
        })
        .collect();
    Ok(Json(Stats {
        minutes: MINUTES,
        step: 60,
        functions,
    }))
}
