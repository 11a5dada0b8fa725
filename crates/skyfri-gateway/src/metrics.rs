//! Prometheus metrics with OpenFaaS's names, so existing dashboards and alerts work.

use std::sync::atomic::{AtomicI64, AtomicU64};

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
        Metrics {
            registry,
            invocations,
            seconds,
            services,
            cold_starts,
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

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
