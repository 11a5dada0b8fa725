//! `/system/cost?month=YYYY-MM`: a month's usage priced as a pay-per-request FaaS would bill
//! it, as `skyfri cost` does, with the prices of `<data-dir>/prices.yaml` (else Lambda's
//! list prices): per function at list price, the month's bill with the free tier taken
//! off, the servers' monthly cost and the break-even volume. For the dashboard's panel.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use skyfri_core::usage::{self, Charge, Month, Prices, Usage};

use crate::api::usage::{report, FunctionUsage, UsageQuery, UsageReport};
use crate::error::GatewayError;
use crate::extract::Query;
use crate::state::AppState;

/// The price file in the data dir (`skyfri cost`'s default too).
pub const PRICE_FILE: &str = "prices.yaml";

/// One function's line (or the total's).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    #[serde(flatten)]
    pub usage: FunctionUsage,
    /// At list price, without the free tier (it belongs to the account, not a function).
    pub list_price_usd: f64,
    /// The same in pico-dollars, for text reports.
    #[serde(skip)]
    pub list_price: u128,
}

impl Line {
    fn new(usage: FunctionUsage, prices: &Prices) -> Line {
        let list_price = usage::list_price(&usage.usage, prices).total();
        Line {
            usage,
            list_price_usd: usage::usd(list_price),
            list_price,
        }
    }
}

/// A priced month: `/system/cost` and `skyfri cost --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CostReport {
    pub month: Month,
    /// The price file used, or `defaults`.
    pub prices_from: String,
    /// Why the price file was not used, when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices_error: Option<String>,
    pub prices: Prices,
    pub functions: Vec<Line>,
    pub total: Line,
    /// The month's pay-per-request bill, free tier taken off.
    pub requests_usd: f64,
    pub compute_usd: f64,
    pub pay_per_request_usd: f64,
    pub server_monthly_usd: f64,
    /// Invocations per month, at this month's average GB-s per call, that would cost as
    /// much as the servers; null without calls or without a server cost.
    pub break_even_invocations: Option<u64>,
    pub gb_seconds_per_call: Option<f64>,
    pub cpu_metered: bool,
    pub flushed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The bill in pico-dollars, for text reports.
    #[serde(skip)]
    pub bill: Charge,
}

/// Prices a month's usage report.
pub fn price(report: UsageReport, prices: Prices, prices_from: String) -> CostReport {
    let total: Usage = report.total.usage;
    let bill = usage::with_free_tier(&total, &prices);
    CostReport {
        month: report.month,
        prices_from,
        prices_error: None,
        functions: report
            .functions
            .into_iter()
            .map(|f| Line::new(f, &prices))
            .collect(),
        total: Line::new(report.total, &prices),
        requests_usd: usage::usd(bill.requests),
        compute_usd: usage::usd(bill.compute),
        pay_per_request_usd: usage::usd(bill.total()),
        server_monthly_usd: prices.server_monthly_usd,
        break_even_invocations: usage::break_even(&total, &prices),
        gb_seconds_per_call: (total.invocations > 0)
            .then(|| total.gb_seconds() / total.invocations as f64),
        cpu_metered: report.cpu_metered,
        flushed_at: report.flushed_at,
        prices,
        bill,
    }
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
    let r = report(&state, q.month.as_deref()).await?;
    let (prices, prices_from, prices_error) = prices(&state);
    let mut c = price(r, prices, prices_from);
    c.prices_error = prices_error;
    Ok(Json(c))
}
