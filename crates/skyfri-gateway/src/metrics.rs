//! Prometheus metrics with OpenFaaS's names, so existing dashboards and alerts work.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    invocations: Family<Labels, Counter<u64, AtomicU64>>,
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
    services: Family<Labels, Gauge<i64, AtomicI64>>,
    cold_starts: Family<Labels, Counter<u64, AtomicU64>>,
    async_depth: Family<Labels, Gauge<i64, AtomicI64>>,
    async_oldest: Family<Labels, Gauge<f64, AtomicU64>>,
    async_accepted: Family<Labels, Counter<u64, AtomicU64>>,
    async_calls: Family<Labels, Counter<u64, AtomicU64>>,
    async_callbacks: Family<Labels, Counter<u64, AtomicU64>>,
    rate_limited: Family<Labels, Counter<u64, AtomicU64>>,
    /// Serialises refreshes of the queue gauges (clear, then set).
    async_refresh: Mutex<()>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<Labels, Counter<u64, AtomicU64>>::default();
        let seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let services = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        let cold_starts = Family::<Labels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "gateway_function_cold_start",
            "Calls that found their function at zero replicas and waited for one to start",
            cold_starts.clone(),
        );
        registry.register(
            "gateway_function_invocation",
            "Function invocations by status code",
            invocations.clone(),
        );
        registry.register(
            "gateway_functions_seconds",
            "Function call duration",
            seconds.clone(),
        );
        registry.register(
            "gateway_service_count",
            "Replicas of a function",
            services.clone(),
        );
        let async_depth = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        let async_oldest = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let async_accepted = Family::<Labels, Counter<u64, AtomicU64>>::default();
        let async_calls = Family::<Labels, Counter<u64, AtomicU64>>::default();
        let async_callbacks = Family::<Labels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "gateway_async_queue_depth",
            "Async calls waiting to run (queued or retrying)",
            async_depth.clone(),
        );
        registry.register(
            "gateway_async_queue_oldest_seconds",
            "Age of the oldest async call waiting to run",
            async_oldest.clone(),
        );
        registry.register(
            "gateway_async_calls_accepted",
            "Async calls accepted (stored; duplicates of a known X-Call-Id not counted)",
            async_accepted.clone(),
        );
        registry.register(
            "gateway_async_calls",
            "Async runs by outcome: done, retried, dead, lost (lease lost to another worker)",
            async_calls.clone(),
        );
        registry.register(
            "gateway_async_callbacks",
            "Async callbacks by result: delivered, failed (after all retries)",
            async_callbacks.clone(),
        );
        let rate_limited = Family::<Labels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "gateway_rate_limited",
            "Calls refused 429 by a rate limit: limit=function (com.skyfri.rate) or client (--rate-per-ip)",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            invocations,
            seconds,
            services,
            cold_starts,
            async_depth,
            async_oldest,
            async_accepted,
            async_calls,
            async_callbacks,
            rate_limited,
            async_refresh: Mutex::new(()),
        }
    }
}

impl Metrics {
    pub fn observe_call(&self, function: &str, code: u16, seconds: f64) {
        let labels = vec![
            ("function_name", function.to_string()),
            ("code", code.to_string()),
        ];
        self.invocations.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(seconds);
    }

    pub fn cold_start(&self, function: &str) {
        self.cold_starts
            .get_or_create(&vec![("function_name", function.to_string())])
            .inc();
    }

    pub fn set_replicas(&self, function: &str, replicas: u32) {
        self.services
            .get_or_create(&vec![("function_name", function.to_string())])
            .set(i64::from(replicas));
    }

    pub fn forget(&self, function: &str) {
        self.services
            .remove(&vec![("function_name", function.to_string())]);
    }

    pub fn async_accepted(&self, function: &str) {
        self.async_accepted
            .get_or_create(&vec![("function_name", function.to_string())])
            .inc();
    }

    /// One async run ended: `done`, `retried`, `dead` or `lost`.
    pub fn async_outcome(&self, function: &str, outcome: &'static str) {
        self.async_calls
            .get_or_create(&vec![
                ("function_name", function.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// A call refused by a rate limit: `function` or `client` (no addresses in labels).
    pub fn rate_limited(&self, function: &str, limit: &'static str) {
        self.rate_limited
            .get_or_create(&vec![
                ("function_name", function.to_string()),
                ("limit", limit.to_string()),
            ])
            .inc();
    }

    /// One callback ended: `delivered` or `failed`.
    pub fn async_callback(&self, function: &str, result: &'static str) {
        self.async_callbacks
            .get_or_create(&vec![
                ("function_name", function.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// Sets the queue gauges to `waiting` (function, calls, age of the oldest); functions
    /// left out have none waiting.
    pub fn set_async_depth(&self, waiting: &[(String, u64, Option<Duration>)]) {
        let _one = self
            .async_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.async_depth.clear();
        self.async_oldest.clear();
        for (function, calls, oldest) in waiting {
            let labels = vec![("function_name", function.clone())];
            self.async_depth
                .get_or_create(&labels)
                .set(i64::try_from(*calls).unwrap_or(i64::MAX));
            self.async_oldest
                .get_or_create(&labels)
                .set(oldest.map_or(0.0, |d| d.as_secs_f64()));
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
