//! Prometheus metrics with OpenFaaS's names, so existing dashboards and alerts work, and
//! skyfri's own (`gateway_function_*`, `gateway_autoscaler_*`, `gateway_build_*`). Labels
//! stay low-cardinality: function names, status codes, outcomes; never call ids or clients.
//! Counters and histograms move where their events happen; the per-function gauges (replicas,
//! calls in flight and waiting) are read from the routers and the provider when scraped.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
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
    replicas_desired: Family<Labels, Gauge<i64, AtomicI64>>,
    replicas_ready: Family<Labels, Gauge<i64, AtomicI64>>,
    in_flight: Family<Labels, Gauge<i64, AtomicI64>>,
    queue_depth: Family<Labels, Gauge<i64, AtomicI64>>,
    queue_oldest: Family<Labels, Gauge<f64, AtomicU64>>,
    queue_wait: Family<Labels, Histogram, fn() -> Histogram>,
    oom_kills: Family<Labels, Counter<u64, AtomicU64>>,
    decisions: Family<Labels, Counter<u64, AtomicU64>>,
    builds: Family<Labels, Histogram, fn() -> Histogram>,
    access_log_dropped: Counter<u64, AtomicU64>,
    /// Serialises refreshes of the per-function gauges.
    functions_refresh: Mutex<()>,
}

/// One function's state when scraped.
pub struct FunctionGauges {
    pub name: String,
    pub desired: u32,
    pub ready: u32,
    pub in_flight: usize,
    /// Calls waiting in the router for capacity, and for how long the oldest has.
    pub waiting: usize,
    pub oldest_wait: Option<Duration>,
    /// The provider's count of OOM kills (a counter it keeps).
    pub oom_kills: u64,
}

fn build_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
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
        let gauge = Family::<Labels, Gauge<i64, AtomicI64>>::default;
        let counter = Family::<Labels, Counter<u64, AtomicU64>>::default;
        let replicas_desired = gauge();
        let replicas_ready = gauge();
        let in_flight = gauge();
        let queue_depth = gauge();
        let queue_oldest = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let queue_wait =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let oom_kills = counter();
        let decisions = counter();
        let rate_limited = counter();
        let builds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(build_histogram);
        let access_log_dropped = Counter::<u64, AtomicU64>::default();
        registry.register(
            "gateway_function_replicas_desired",
            "Replicas the provider is asked to run",
            replicas_desired.clone(),
        );
        registry.register(
            "gateway_function_replicas_ready",
            "Replicas ready to take calls",
            replicas_ready.clone(),
        );
        registry.register(
            "gateway_function_in_flight",
            "Calls running in a replica now",
            in_flight.clone(),
        );
        registry.register(
            "gateway_function_queue_depth",
            "Calls waiting in the gateway for a replica with room (activator queue)",
            queue_depth.clone(),
        );
        registry.register(
            "gateway_function_queue_oldest_seconds",
            "How long the oldest call waiting for a replica has waited",
            queue_oldest.clone(),
        );
        registry.register(
            "gateway_function_queue_wait_seconds",
            "How long calls that had to wait (at zero, at capacity) waited before they got a replica",
            queue_wait.clone(),
        );
        registry.register(
            "gateway_function_oom_kills",
            "Replicas killed by the kernel for exceeding their memory limit",
            oom_kills.clone(),
        );
        registry.register(
            "gateway_autoscaler_decisions",
            "Scaling decisions that changed a function's replica count, by direction (up, down; activations from zero count as up)",
            decisions.clone(),
        );
        registry.register(
            "gateway_build_seconds",
            "Artefact builds (dependency installs included) by template and outcome",
            builds.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Calls refused 429 by a rate limit: limit=function (com.skyfri.rate) or client (--rate-per-ip)",
            rate_limited.clone(),
        );
        registry.register(
            "gateway_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        Metrics {
            registry,
            replicas_desired,
            replicas_ready,
            in_flight,
            queue_depth,
            queue_oldest,
            queue_wait,
            oom_kills,
            decisions,
            builds,
            access_log_dropped,
            functions_refresh: Mutex::new(()),
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

/// A status code's call counter and duration histogram.
type CodeSeries = (u16, Counter<u64, AtomicU64>, Histogram);

/// One function's `gateway_function_invocation_total` and `gateway_functions_seconds` series,
/// by status code: the invoke path counts a call without building labels or hashing them
/// (a family lookup per call costs more than the rest of the metrics together).
pub struct CallSeries {
    function: String,
    invocations: Family<Labels, Counter<u64, AtomicU64>>,
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// The series of the codes seen so far (a handful).
    by_code: RwLock<Vec<CodeSeries>>,
}

impl CallSeries {
    /// Counts one call that ended with `code` after `seconds`.
    pub fn observe(&self, code: u16, seconds: f64) {
        {
            let known = self.by_code.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, calls, took)) = known.iter().find(|(c, ..)| *c == code) {
                calls.inc();
                took.observe(seconds);
                return;
            }
        }
        let labels = vec![
            ("function_name", self.function.clone()),
            ("code", code.to_string()),
        ];
        let calls = self.invocations.get_or_create(&labels).clone();
        let took = self.seconds.get_or_create(&labels).clone();
        calls.inc();
        took.observe(seconds);
        let mut known = self.by_code.write().unwrap_or_else(PoisonError::into_inner);
        if !known.iter().any(|(c, ..)| *c == code) {
            known.push((code, calls, took));
        }
    }
}

impl Metrics {
    /// The call series of `function` (kept by its [`crate::state::Live`] across redeploys).
    pub fn call_series(&self, function: &str) -> Arc<CallSeries> {
        Arc::new(CallSeries {
            function: function.to_string(),
            invocations: self.invocations.clone(),
            seconds: self.seconds.clone(),
            by_code: RwLock::new(Vec::new()),
        })
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
        let labels = vec![("function_name", function.to_string())];
        self.services.remove(&labels);
        self.oom_kills.remove(&labels);
    }

    /// A call waited `waited` for a replica with room (at zero or at capacity).
    pub fn queue_wait(&self, function: &str, waited: Duration) {
        self.queue_wait
            .get_or_create(&vec![("function_name", function.to_string())])
            .observe(waited.as_secs_f64());
    }

    /// A scaling decision changed the desired replicas: `up` or `down`.
    pub fn scaling_decision(&self, function: &str, direction: &'static str) {
        self.decisions
            .get_or_create(&vec![
                ("function_name", function.to_string()),
                ("direction", direction.to_string()),
            ])
            .inc();
    }

    /// A build of a `template` artefact ended: `ok` or `error`.
    pub fn build(&self, template: &str, outcome: &'static str, took: Duration) {
        self.builds
            .get_or_create(&vec![
                ("template", template.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .observe(took.as_secs_f64());
    }

    /// The counter of dropped access log lines, for the access log to increment.
    pub fn access_log_dropped(&self) -> Counter<u64, AtomicU64> {
        self.access_log_dropped.clone()
    }

    /// Sets the per-function gauges to `functions`; functions left out are gone.
    pub fn set_functions(&self, functions: &[FunctionGauges]) {
        let _one = self
            .functions_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for family in [
            &self.replicas_desired,
            &self.replicas_ready,
            &self.in_flight,
            &self.queue_depth,
        ] {
            family.clear();
        }
        self.queue_oldest.clear();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for f in functions {
            let labels = vec![("function_name", f.name.clone())];
            self.replicas_desired
                .get_or_create(&labels)
                .set(i64::from(f.desired));
            self.replicas_ready
                .get_or_create(&labels)
                .set(i64::from(f.ready));
            self.in_flight
                .get_or_create(&labels)
                .set(count(f.in_flight));
            self.queue_depth
                .get_or_create(&labels)
                .set(count(f.waiting));
            self.queue_oldest
                .get_or_create(&labels)
                .set(f.oldest_wait.map_or(0.0, |d| d.as_secs_f64()));
            // The provider keeps the count; it is published as is.
            self.oom_kills
                .get_or_create(&labels)
                .inner()
                .store(f.oom_kills, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn async_accepted(&self, function: &str) {
        self.async_accepted
            .get_or_create(&vec![("function_name", function.to_string())])
            .inc();
    }

    /// One async run ended: `done`, `retried`, `dead`, `lost` or `released` (handed back
    /// unfinished at shutdown).
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

/// The series names the `# TYPE` lines of a Prometheus text exposition declare (a counter's
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`), whether they have samples yet or
/// not: what dashboards and alerts may query.
pub fn series_names(exposition: &str) -> Vec<String> {
    let mut names = Vec::new();
    for l in exposition.lines() {
        let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        match kind {
            "counter" => names.push(format!("{name}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{suffix}"));
                }
            }
            _ => names.push(name.to_string()),
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_series_count_into_the_families() {
        let m = Metrics::default();
        let echo = m.call_series("echo");
        echo.observe(200, 0.001);
        echo.observe(200, 0.002);
        echo.observe(504, 1.0);
        // A redeploy gets a new handle on the same series.
        m.call_series("echo").observe(200, 0.003);
        let text = m.render();
        assert!(
            text.contains(
                "gateway_function_invocation_total{function_name=\"echo\",code=\"200\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_function_invocation_total{function_name=\"echo\",code=\"504\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gateway_functions_seconds_count{function_name=\"echo\",code=\"200\"} 3"),
            "{text}"
        );
    }
}
