//! Metered usage of functions, and what it would have cost on a pay-per-request FaaS.
//!
//! Usage is kept in integers so that adding it up never drifts: invocations, billed
//! milliseconds (each call rounded up to the next millisecond, as Lambda bills),
//! MiB-milliseconds (the metered memory times the billed milliseconds) and CPU
//! microseconds. GB-seconds are MiB-ms / 1024 / 1000 (a GB here is 1024 MiB, as Lambda
//! counts configured memory).
//!
//! Money is kept in integer pico-dollars (1e-12 USD), so the free tier boundary and the
//! rounding to cents are exact: prices from the price file are converted once, and each
//! charge is rounded half up to the pico-dollar.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::FunctionSpec;

/// The memory a call is metered with when its function sets neither `limits.memory` nor
/// `requests.memory`: 128 MiB, the smallest size (and the default) on Lambda.
pub const DEFAULT_METERED_MEMORY: u64 = 128 << 20;

/// The memory a function's calls are metered with, in MiB (rounded up): its
/// `limits.memory`, else its `requests.memory`, else [`DEFAULT_METERED_MEMORY`].
pub fn metered_mib(spec: &FunctionSpec) -> u64 {
    let bytes = spec
        .limits
        .memory
        .or(spec.requests.memory)
        .unwrap_or(DEFAULT_METERED_MEMORY);
    bytes.div_ceil(1 << 20)
}

/// Billed milliseconds of a call that held a replica for `nanos`: rounded up.
pub fn billed_ms(nanos: u128) -> u64 {
    u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A calendar month (UTC), written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: u16,
    month: u8,
}

impl Month {
    /// The month `t` falls in.
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: u16::try_from(t.year()).unwrap_or(0),
            month: u8::try_from(t.month()).unwrap_or(1),
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = String;

    fn from_str(s: &str) -> Result<Month, String> {
        let bad = || format!("{s:?} is not a month: write it YYYY-MM, e.g. 2026-12");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(y, 4) || !digits(m, 2) {
            return Err(bad());
        }
        let year: u16 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 1970 {
            return Err(bad());
        }
        Ok(Month { year, month })
    }
}

impl Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Month {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Month, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What calls of one function (or of all) used in a month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub invocations: u64,
    /// Billed milliseconds, each call rounded up to the next one.
    pub duration_ms: u64,
    /// Metered memory in MiB times billed milliseconds.
    pub mib_ms: u64,
    /// CPU time of the function's replicas, from their cgroups.
    pub cpu_us: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.invocations = self.invocations.saturating_add(other.invocations);
        self.duration_ms = self.duration_ms.saturating_add(other.duration_ms);
        self.mib_ms = self.mib_ms.saturating_add(other.mib_ms);
        self.cpu_us = self.cpu_us.saturating_add(other.cpu_us);
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// One call that held `mib` MiB for `ms` billed milliseconds.
    pub fn call(mib: u64, ms: u64) -> Usage {
        Usage {
            invocations: 1,
            duration_ms: ms,
            mib_ms: mib.saturating_mul(ms),
            cpu_us: 0,
        }
    }

    pub fn gb_seconds(&self) -> f64 {
        self.mib_ms as f64 / MIB_MS_PER_GB_SECOND as f64
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_us as f64 / 1e6
    }
}

/// MiB-milliseconds in one GB-second.
const MIB_MS_PER_GB_SECOND: u128 = 1024 * 1000;
/// Pico-dollars in a dollar.
const PICO: f64 = 1e12;
/// The largest price or amount a price file may give, in USD: keeps the pico-dollar
/// arithmetic far from overflowing.
const MAX_USD: f64 = 1e9;

/// A pay-per-request FaaS's prices and the servers' fixed cost, as a price file gives them
/// (YAML; every key optional, unknown keys refused).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// USD per million requests.
    pub request_usd_per_million: f64,
    /// USD per GB-second.
    pub gb_second_usd: f64,
    /// Requests free each month.
    pub free_requests: u64,
    /// GB-seconds free each month.
    pub free_gb_seconds: f64,
    /// What the servers skyfri runs on cost per month, in USD (0: not set).
    pub server_monthly_usd: f64,
}

impl Default for Prices {
    /// Lambda's list prices (x86, first tier) and free tier.
    fn default() -> Prices {
        Prices {
            request_usd_per_million: 0.20,
            gb_second_usd: 0.000_016_666_7,
            free_requests: 1_000_000,
            free_gb_seconds: 400_000.0,
            server_monthly_usd: 0.0,
        }
    }
}

impl Prices {
    /// Reads a price file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Prices, String> {
        // An empty file is an empty mapping: every default.
        let prices: Prices = if text.trim().is_empty() {
            Prices::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| format!("{origin}: {e}"))?
        };
        prices.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(prices)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("request_usd_per_million", self.request_usd_per_million),
            ("gb_second_usd", self.gb_second_usd),
            ("free_gb_seconds", self.free_gb_seconds),
            ("server_monthly_usd", self.server_monthly_usd),
        ] {
            if !value.is_finite() || !(0.0..=MAX_USD).contains(&value) {
                return Err(format!(
                    "{key}: {value} is out of range: give a number from 0 to {MAX_USD}"
                ));
            }
        }
        Ok(())
    }

    /// A validated amount of dollars in pico-dollars.
    pub fn pico(usd: f64) -> u128 {
        (usd * PICO).round() as u128
    }

    fn request_pico_per_million(&self) -> u128 {
        Prices::pico(self.request_usd_per_million)
    }

    fn gb_second_pico(&self) -> u128 {
        Prices::pico(self.gb_second_usd)
    }

    fn free_mib_ms(&self) -> u128 {
        (self.free_gb_seconds * MIB_MS_PER_GB_SECOND as f64).round() as u128
    }

    fn server_pico(&self) -> u128 {
        Prices::pico(self.server_monthly_usd)
    }
}

/// `a * b / d`, rounded half up.
fn mul_div(a: u128, b: u128, d: u128) -> u128 {
    (a.saturating_mul(b) + d / 2) / d
}

/// A charge, in pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    pub requests: u128,
    pub compute: u128,
}

impl Charge {
    /// What `invocations` calls using `mib_ms` cost beyond the first `free_requests` and
    /// `free_mib_ms`.
    fn of(
        invocations: u128,
        mib_ms: u128,
        free_requests: u128,
        free_mib_ms: u128,
        p: &Prices,
    ) -> Charge {
        Charge {
            requests: mul_div(
                invocations.saturating_sub(free_requests),
                p.request_pico_per_million(),
                1_000_000,
            ),
            compute: mul_div(
                mib_ms.saturating_sub(free_mib_ms),
                p.gb_second_pico(),
                MIB_MS_PER_GB_SECOND,
            ),
        }
    }

    pub fn total(&self) -> u128 {
        self.requests + self.compute
    }
}

/// At list price, without the free tier: what one function's share looks like (the free
/// tier belongs to the account, not to a function).
pub fn list_price(u: &Usage, p: &Prices) -> Charge {
    Charge::of(u.invocations.into(), u.mib_ms.into(), 0, 0, p)
}

/// What a month's total usage costs once the free tier is taken off.
pub fn with_free_tier(u: &Usage, p: &Prices) -> Charge {
    Charge::of(
        u.invocations.into(),
        u.mib_ms.into(),
        p.free_requests.into(),
        p.free_mib_ms(),
        p,
    )
}

/// The most invocations a month [`break_even`] considers.
pub const MAX_BREAK_EVEN: u64 = 1_000_000_000_000_000;

/// The break-even volume: the fewest invocations per month that, at the observed average
/// memory-time per call of `u`, cost (free tier taken off) at least as much as the servers.
/// `None` without calls to average, without a server cost, or when even
/// [`MAX_BREAK_EVEN`] calls would cost less.
pub fn break_even(u: &Usage, p: &Prices) -> Option<u64> {
    let server = p.server_pico();
    if u.invocations == 0 || server == 0 {
        return None;
    }
    let cost = |n: u64| {
        let mib_ms = u128::from(n) * u128::from(u.mib_ms) / u128::from(u.invocations);
        Charge::of(n.into(), mib_ms, p.free_requests.into(), p.free_mib_ms(), p).total()
    };
    if cost(MAX_BREAK_EVEN) < server {
        return None;
    }
    // The cost never falls as calls are added: the first n that reaches the servers'.
    let (mut lo, mut hi) = (0u64, MAX_BREAK_EVEN);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if cost(mid) >= server {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// Pico-dollars as dollars, for JSON.
pub fn usd(pico: u128) -> f64 {
    pico as f64 / PICO
}

/// Pico-dollars as `$1,234.57`: rounded half up to the cent.
pub fn format_usd(pico: u128) -> String {
    let cents = (pico + 5_000_000_000) / 10_000_000_000;
    let dollars = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in dollars.chars().enumerate() {
        if i > 0 && (dollars.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("${grouped}.{:02}", cents % 100)
}

#[cfg(test)]
mod tests;
