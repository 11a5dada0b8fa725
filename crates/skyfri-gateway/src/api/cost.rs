//! `/system/cost?month=YYYY-MM`: a month's usage priced as a pay-per-request FaaS would bill
//! it, as `skyfri cost` does, with the prices of `<data-dir>/prices.yaml` (else Lambda's
//! list prices): per function at list price, the month's bill with the free tier taken
//! off, the servers' monthly cost and the break-even volume. For the dashboard's panel.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use skyfri_core::usage::{self, Month, Prices};

use crate::api::usage::{report, FunctionUsage, UsageQuery};
use crate::error::GatewayError;
use crate::extract::Query;
use crate::state::AppState;

/// The price file read from the data dir (`skyfri cost`'s default too).
pub const PRICE_FILE: &str = "prices.yaml";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    #[serde(flatten)]
    usage: FunctionUsage,
    /// At list price, without the free tier (it belongs to the account, not a function).
    list_price_usd: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CostReport {
    month: Month,
    /// The price file used, or `defaults`.
    prices_from: String,
    /// Why the price file was not used, when it could not be read.
    prices_error: Option<String>,
    prices: Prices,
    functions: Vec<Line>,
    total: Line,
    requests_usd: f64,
    compute_usd: f64,
    pay_per_request_usd: f64,
    server_monthly_usd: f64,
    break_even_invocations: Option<u64>,
    cpu_metered: bool,
    flushed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The data dir's prices: where they came from and, when the file is bad, why.
fn prices(state: &AppState) -> (Prices, String, Option<String>) {
    let path = state.locations.data_dir.join(PRICE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match Prices::parse(&text, &path.display().to_string()) {
            Ok(p) => (p, path.display().to_string(), None),
            Err(e) => (Prices::default(), "defaults".into(), Some(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (Prices::default(), "defaults".into(), None)
        }
        Err(e) => (
            Prices::default(),
            "defaults".into(),
            Some(format!("cannot read {}: {e}", path.display())),
        ),
    }
}

pub async fn cost(
    State(state): State<AppState>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<CostReport>, GatewayError> {
    let r = report(&state, q.month.as_deref())?;
    let (prices, prices_from, prices_error) = prices(&state);
    let line = |u: FunctionUsage| Line {
        list_price_usd: usage::usd(usage::list_price(&u.usage, &prices).total()),
        usage: u,
    };
    let bill = usage::with_free_tier(&r.total.usage, &prices);
    let break_even = usage::break_even(&r.total.usage, &prices);
    Ok(Json(CostReport {
        month: r.month,
        prices_from,
        prices_error,
        requests_usd: usage::usd(bill.requests),
        compute_usd: usage::usd(bill.compute),
        pay_per_request_usd: usage::usd(bill.total()),
        server_monthly_usd: prices.server_monthly_usd,
        break_even_invocations: break_even,
        functions: r.functions.into_iter().map(line).collect(),
        total: line(r.total),
        cpu_metered: r.cpu_metered,
        flushed_at: r.flushed_at,
        prices,
    }))
}
