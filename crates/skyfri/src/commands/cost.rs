//! `skyfri cost`: what a month's metered usage (`/system/usage`) would have cost on a
//! pay-per-request FaaS, beside the servers' fixed monthly cost, and the break-even volume.
//! Prices come from a YAML price file (`--prices FILE`, else `<data-dir>/prices.yaml` when
//! there is one, else Lambda's list prices); the arithmetic is `skyfri_core::usage`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use skyfri_core::usage::{self, Month, Prices};
use skyfri_gateway::api::cost::{price, CostReport};
use skyfri_gateway::api::usage::UsageReport;

use crate::client::GatewayArgs;

use skyfri_gateway::api::cost::PRICE_FILE;

#[derive(clap::Args)]
pub struct Cost {
    /// The month, YYYY-MM (default: this one, UTC).
    #[arg(long)]
    month: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Price file (YAML): request_usd_per_million, gb_second_usd, free_requests,
    /// free_gb_seconds, server_monthly_usd. Default: <data-dir>/prices.yaml if it exists.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Where `skyfri up` keeps its state (for prices.yaml).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Cost {
    pub async fn run(self) -> Result<()> {
        let month: Option<Month> = self
            .month
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow::anyhow!("--month: {e}"))?;
        let (prices, prices_from) = self.load_prices()?;
        let gw = self.gateway.connect(None)?;
        let path = match month {
            Some(m) => format!("/system/usage?month={m}"),
            None => "/system/usage".to_string(),
        };
        let body = gw.expect_ok(Method::GET, &path, Bytes::new()).await?;
        let report: UsageReport =
            serde_json::from_slice(&body).context("the gateway's /system/usage answer")?;
        let cost = price(report, prices, prices_from);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&cost)?);
        } else {
            print!("{}", text(&cost));
        }
        Ok(())
    }

    /// The price file's prices and where they came from.
    fn load_prices(&self) -> Result<(Prices, String)> {
        let (path, required) = match &self.prices {
            Some(p) => (p.clone(), true),
            None => (
                self.data_dir
                    .clone()
                    .unwrap_or_else(crate::client::default_data_dir)
                    .join(PRICE_FILE),
                false,
            ),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let prices = Prices::parse(&text, &path.display().to_string())
                    .map_err(anyhow::Error::msg)?;
                Ok((prices, path.display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok((Prices::default(), "defaults".to_string()))
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the price file {}", shown(&path)))
            }
        }
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

fn text(c: &CostReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let as_of = c.flushed_at.map_or("not yet written".to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    });
    let _ = writeln!(
        out,
        "Usage in {} (as of {as_of}), prices: {}",
        c.month, c.prices_from
    );
    let _ = writeln!(
        out,
        "{:<32} {:>12} {:>14} {:>12} {:>12}",
        "FUNCTION", "INVOCATIONS", "GB-SECONDS", "CPU-SECONDS", "LIST PRICE"
    );
    for l in c.functions.iter().chain([&c.total]) {
        let name = match l.usage.function.as_str() {
            "*" => "TOTAL",
            f => f,
        };
        let _ = writeln!(
            out,
            "{name:<32} {:>12} {:>14.3} {:>12.3} {:>12}",
            l.usage.usage.invocations,
            l.usage.gb_seconds,
            l.usage.cpu_seconds,
            usage::format_usd(l.list_price)
        );
    }
    if !c.cpu_metered {
        let _ = writeln!(out, "(CPU is not metered here: no cgroup CPU accounting)");
    }
    let _ = writeln!(
        out,
        "Pay-per-request: {} (requests {}, compute {}) after a free tier of {} requests and {} GB-s",
        usage::format_usd(c.bill.total()),
        usage::format_usd(c.bill.requests),
        usage::format_usd(c.bill.compute),
        c.prices.free_requests,
        c.prices.free_gb_seconds
    );
    if c.server_monthly_usd > 0.0 {
        let _ = writeln!(
            out,
            "Servers:         {} per month",
            usage::format_usd(usage::Prices::pico(c.server_monthly_usd))
        );
    } else {
        let _ = writeln!(
            out,
            "Servers:         not set (server_monthly_usd in the price file)"
        );
    }
    match (c.break_even_invocations, c.gb_seconds_per_call) {
        (Some(n), Some(g)) => {
            let _ = writeln!(
                out,
                "Break-even:      {n} invocations per month at {g:.4} GB-s per call"
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "Break-even:      unknown (needs calls this month and a server cost)"
            );
        }
    }
    out
}
