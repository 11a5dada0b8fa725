//! `/system/usage?month=YYYY-MM`: the metered usage of every function in a month (default:
//! this one, UTC), as stored at the last flush.

use axum::extract::State;

use crate::extract::Query;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skyfri_core::usage::{Month, Usage};

use crate::error::GatewayError;
use crate::state::AppState;

/// One function's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionUsage {
    pub function: String,
    #[serde(flatten)]
    pub usage: Usage,
    /// `mibMs` in GB-seconds, for people.
    pub gb_seconds: f64,
    /// `cpuUs` in seconds, for people.
    pub cpu_seconds: f64,
}

impl FunctionUsage {
    pub fn new(function: String, usage: Usage) -> FunctionUsage {
        FunctionUsage {
            function,
            gb_seconds: usage.gb_seconds(),
            cpu_seconds: usage.cpu_seconds(),
            usage,
        }
    }
}

/// The answer of `/system/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub month: Month,
    /// By function name.
    pub functions: Vec<FunctionUsage>,
    /// All functions together; `function` is `*`.
    pub total: FunctionUsage,
    /// Whether the provider measures CPU; without it `cpuUs` stays 0.
    pub cpu_metered: bool,
    /// When the gateway last wrote usage to the store (it writes every few seconds); calls
    /// since then are not in this report yet.
    pub flushed_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
pub struct UsageQuery {
    pub(crate) month: Option<String>,
}

pub async fn usage(
    State(state): State<AppState>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageReport>, GatewayError> {
    report(&state, q.month.as_deref()).await.map(Json)
}

/// The stored usage of `month` (`YYYY-MM`; this month when absent or empty).
pub(crate) async fn report(
    state: &AppState,
    month: Option<&str>,
) -> Result<UsageReport, GatewayError> {
    let month = match month {
        None | Some("") => Month::of(Utc::now()),
        Some(m) => m
            .parse()
            .map_err(|e| GatewayError::bad_request(format!("month: {e}")))?,
    };
    let rows = state.with_store(move |s| s.usage(month)).await?;
    let mut total = Usage::default();
    for (_, u) in &rows {
        total.add(u);
    }
    Ok(UsageReport {
        month,
        functions: rows
            .into_iter()
            .map(|(f, u)| FunctionUsage::new(f, u))
            .collect(),
        total: FunctionUsage::new("*".into(), total),
        cpu_metered: state.meter.cpu_metered(),
        flushed_at: state.meter.last_flush(),
    })
}
