//! [`Autoscaler`]: the Knative Pod Autoscaler's decision for one function, after knative/
//! serving's `pkg/autoscaler/scaling/autoscaler.go` (`Scale`), its metric buckets
//! (`pkg/autoscaler/aggregation`) and the bounds and scale to zero of
//! `pkg/reconciler/autoscaling/kpa/scaler.go`.
//!
//! The caller records one observation per second ([`Autoscaler::record`]: calls in flight
//! averaged over the second, or requests that second) and asks for a decision every tick or
//! so ([`Autoscaler::decide`]). Time is always passed in, so the same inputs give the same
//! decisions.
//!
//! # The decision
//!
//! ```text
//! ready          = max(1, ready replicas)
//! target         = max(0.01, target x target_utilization)
//! stable, panic  = averages over the stable window and the panic window
//! dspc, dppc     = ceil(stable / target), ceil(panic / target)
//! bounded to       [floor(ready / max_scale_down_rate), ceil(max_scale_up_rate x ready)]
//! panic starts   when dppc / ready >= panic_threshold, and lasts until a full stable window
//!                  passes without crossing it; while panicking the count is max(stable, panic)
//!                  and only goes up
//! scale-down delay: the highest count decided within the delay
//! then clamped to [min, max] (min at least 1), and 0 only for a scale_to_zero function
//!   that has seen no traffic for idle_before_zero + scale-down delay
//! ```
//!
//! # Averages
//!
//! Observations go into one-second buckets (several in one second are averaged). An average
//! is the plain mean of the window's buckets, as Knative's linear aggregation (its default;
//! the weighted exponential one is an opt-in annotation, not implemented here). As in
//! Knative, a window only reaches back to the first observation (a fresh autoscaler averages
//! over what it has seen) and restarts after a full stable window without observations.
//! Unlike Knative, seconds missing inside the window count as 0, as do missing seconds since
//! the last observation: the caller records every second, so a gap means nothing was
//! measured. The current second counts once something is recorded in it.
//!
//! # Scale to zero
//!
//! Knative goes to zero after a stable window without traffic plus a grace period; skyfri
//! uses `idle_before_zero` (OpenFaaS's `zero-duration`) plus the scale-down delay (which in
//! Knative holds the last replica too), measured from the last non-zero
//! observation (or [`Autoscaler::mark_active`]). A function at zero stays there until
//! traffic arrives; a policy whose initial replica count is 0 starts there.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::policy::ScalePolicy;

/// Ratios within this of a whole number count as that number, so that `ceil(1.4 / 0.7)` is
/// 2 despite floating point.
const EPSILON: f64 = 1e-9;

/// One decision: how many replicas the function should have now, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    /// Whether the autoscaler is in panic mode.
    pub panic: bool,
    /// The computation, for logs: `stable: 12.30 concurrent over 60s / (1 x 0.7) -> 18`,
    /// followed by whatever changed the count (rates, panic, delay, bounds, zero).
    pub reason: String,
    /// Spare capacity beyond the target burst capacity, `floor(ready x target - burst -
    /// panic average)`; negative means a burst would queue (Knative puts its activator in
    /// the path then). 0 when the burst capacity is 0, -1 when it is unlimited.
    pub excess_burst_capacity: f64,
    /// The stable window's average.
    pub observed_stable: f64,
    /// The panic window's average.
    pub observed_panic: f64,
}

#[derive(Debug, Clone)]
struct Bucket {
    /// Whole seconds since the autoscaler's origin.
    sec: u64,
    sum: f64,
    count: u32,
}

impl Bucket {
    fn value(&self) -> f64 {
        self.sum / f64::from(self.count.max(1))
    }
}

/// The KPA decider for one function. See the module docs for the algorithm.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: ScalePolicy,
    origin: Instant,
    /// In order of `sec`, covering at most the stable window.
    buckets: VecDeque<Bucket>,
    /// The first second of the current run of observations.
    first_write: Option<u64>,
    last_write: Option<u64>,
    /// The last non-zero observation or activity; `None` when there has been none and the
    /// function starts at zero.
    last_traffic: Option<Instant>,
    /// The last decision that crossed the panic threshold, while panicking.
    panic_since: Option<Instant>,
    /// The highest count decided in this panic.
    max_panic: u32,
    /// Counts decided within the scale-down delay.
    delayed: VecDeque<(Instant, u32)>,
    decided: bool,
}

impl Autoscaler {
    /// An autoscaler for a function deployed (or re-watched) at `now`.
    pub fn new(policy: ScalePolicy, now: Instant) -> Autoscaler {
        let last_traffic = (policy.initial_replicas() > 0).then_some(now);
        Autoscaler {
            policy,
            origin: now,
            buckets: VecDeque::new(),
            first_write: None,
            last_write: None,
            last_traffic,
            panic_since: None,
            max_panic: 0,
            delayed: VecDeque::new(),
            decided: false,
        }
    }

    pub fn policy(&self) -> &ScalePolicy {
        &self.policy
    }

    /// Applies a new policy (a redeploy), keeping the observations and the panic state.
    pub fn update(&mut self, policy: ScalePolicy) {
        self.policy = policy;
    }

    /// Records one observation of the metric at `now`: calls in flight averaged over the
    /// last second, or requests in the last second. Negative and non-finite values count
    /// as 0.
    pub fn record(&mut self, now: Instant, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        if value > 0.0 {
            self.mark_active(now);
        }
        let sec = self.sec(now);
        let window = self.stable_secs();
        match self.last_write {
            // A full window without observations: start a new run, as Knative does.
            Some(last) if sec >= last + window => {
                self.buckets.clear();
                self.first_write = Some(sec);
            }
            Some(_) => {}
            None => self.first_write = Some(sec),
        }
        if self.first_write.is_some_and(|first| sec < first) {
            self.first_write = Some(sec);
        }
        self.last_write = Some(self.last_write.map_or(sec, |last| last.max(sec)));

        match self.buckets.iter().rposition(|b| b.sec <= sec) {
            Some(i) if self.buckets[i].sec == sec => {
                self.buckets[i].sum += value;
                self.buckets[i].count += 1;
            }
            at => self.buckets.insert(
                at.map_or(0, |i| i + 1),
                Bucket {
                    sec,
                    sum: value,
                    count: 1,
                },
            ),
        }
        let newest = self.last_write.unwrap_or(sec);
        while self
            .buckets
            .front()
            .is_some_and(|b| b.sec + window <= newest)
        {
            self.buckets.pop_front();
        }
    }

    /// Marks the function as in use at `now` without adding to the metric: a call arriving
    /// at zero, or one still running while the rps metric reads 0. Keeps it from going to
    /// zero for `idle_before_zero`, and brings it back from zero at the next decision.
    pub fn mark_active(&mut self, now: Instant) {
        if self.last_traffic.is_none_or(|t| t < now) {
            self.last_traffic = Some(now);
        }
    }

    /// The stable and panic averages at `now`.
    pub fn observed(&self, now: Instant) -> (f64, f64) {
        let sec = self.sec(now);
        (
            self.average(sec, self.stable_secs()),
            self.average(sec, self.panic_secs()),
        )
    }

    /// How many replicas the function should have at `now`, given `ready` ready replicas.
    pub fn decide(&mut self, now: Instant, ready: u32) -> Decision {
        let p = &self.policy;
        let (stable, panic) = self.observed(now);
        let ready_f = f64::from(ready.max(1));
        let target = p.effective_target();

        if !self.decided {
            self.decided = true;
            // A restarted autoscaler has no history: hold what is running until it has
            // some, rather than scale down (Knative starts in panic for the same reason).
            if ready > 1 {
                self.panic_since = Some(now);
                self.max_panic = ready;
            }
        }

        let max_up = (p.max_scale_up_rate * ready_f).ceil();
        let max_down = if p.max_scale_down_rate > 0.0 {
            (ready_f / p.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let dspc = ceil(stable / target);
        let dppc = ceil(panic / target);
        let bound = |n: f64| n.max(max_down).min(max_up);
        let stable_desired = bound(dspc);
        let panic_desired = bound(dppc);

        let over = dppc / ready_f >= p.panic_threshold;
        if over {
            // Start, or extend, the panic.
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|t| now > t + p.stable_window) {
            self.panic_since = None;
            self.max_panic = 0;
        }
        let panicking = self.panic_since.is_some();

        let formula = |what: &str, observed: f64, window: Duration, n: f64| {
            format!(
                "{what}: {observed:.2} {} over {} / ({} x {}) -> {n}",
                p.metric.unit(),
                fmt_duration(window),
                p.target,
                p.target_utilization,
            )
        };
        let mut reason;
        let (raw, limited) = if panicking {
            reason = format!(
                "{}; {}",
                formula("panic", panic, p.panic_window(), dppc),
                formula("stable", stable, p.stable_window, dspc)
            );
            (dspc.max(dppc), stable_desired.max(panic_desired))
        } else {
            reason = formula("stable", stable, p.stable_window, dspc);
            (dspc, stable_desired)
        };
        if limited < raw {
            reason.push_str(&format!(
                ", limited to {limited} by the max scale-up rate {} x {ready_f} ready",
                p.max_scale_up_rate
            ));
        } else if limited > raw {
            reason.push_str(&format!(
                ", kept at {limited} by the max scale-down rate ({ready_f} ready / {})",
                p.max_scale_down_rate
            ));
        }
        let mut desired = to_count(limited);
        if panicking {
            if desired > self.max_panic {
                self.max_panic = desired;
            } else if desired < self.max_panic {
                reason.push_str(&format!(", held at {} while panicking", self.max_panic));
            }
            desired = self.max_panic;
        }

        if !p.scale_down_delay.is_zero() {
            self.delayed.push_back((now, desired));
            let delay = p.scale_down_delay;
            self.delayed
                .retain(|&(t, _)| now.saturating_duration_since(t) < delay);
            let held = self
                .delayed
                .iter()
                .map(|&(_, n)| n)
                .max()
                .unwrap_or(desired);
            if held > desired {
                reason.push_str(&format!(
                    ", held at {held} by the scale-down delay of {}",
                    fmt_duration(delay)
                ));
                desired = held;
            }
        } else {
            self.delayed.clear();
        }

        let floor = p.min.max(1);
        let ceiling = p.max.max(floor);
        let unbounded = reason.len();
        if desired < floor {
            reason.push_str(&format!(", raised to the minimum of {floor}"));
            desired = floor;
        } else if desired > ceiling {
            reason.push_str(&format!(", capped at the maximum of {ceiling}"));
            desired = ceiling;
        }

        if p.scale_to_zero {
            let idle = match self.last_traffic {
                None => Some("no traffic yet".to_string()),
                Some(t) if now.saturating_duration_since(t) >= p.time_to_zero() => {
                    Some(format!("no traffic for {}", fmt_duration(p.time_to_zero())))
                }
                Some(_) => None,
            };
            if let Some(idle) = idle {
                // The bounds hold while the function is in use; they do not explain zero.
                reason.truncate(unbounded);
                reason.push_str(&format!(", {idle}: scale to zero"));
                desired = 0;
                self.panic_since = None;
                self.max_panic = 0;
            }
        }

        let excess_burst_capacity = match p.target_burst_capacity {
            0.0 => 0.0,
            b if b < 0.0 => -1.0,
            b => (f64::from(ready) * p.target - b - panic).floor(),
        };

        Decision {
            desired,
            panic: self.panic_since.is_some(),
            reason,
            excess_burst_capacity,
            observed_stable: stable,
            observed_panic: panic,
        }
    }

    fn sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn stable_secs(&self) -> u64 {
        (self.policy.stable_window.as_secs_f64().ceil() as u64).max(1)
    }

    fn panic_secs(&self) -> u64 {
        (self.policy.panic_window().as_secs_f64().ceil() as u64).clamp(1, self.stable_secs())
    }

    /// The mean of the buckets of the `window` seconds ending at `now_sec`, reaching back
    /// no further than the first observation.
    fn average(&self, now_sec: u64, window: u64) -> f64 {
        let (Some(first), Some(last)) = (self.first_write, self.last_write) else {
            return 0.0;
        };
        // The current second counts once something is recorded in it.
        let end = if last >= now_sec {
            now_sec
        } else {
            now_sec - 1
        };
        if end < first {
            return 0.0;
        }
        let start = first.max((end + 1).saturating_sub(window));
        let sum: f64 = self
            .buckets
            .iter()
            .filter(|b| (start..=end).contains(&b.sec))
            .map(Bucket::value)
            .sum();
        sum / (end - start + 1) as f64
    }
}

/// `ceil(x)`, at least 0: never -0 (which `ceil` of a tiny negative gives, and which the
/// reasons would print as "-> -0"), nor NaN.
fn ceil(x: f64) -> f64 {
    let n = (x - EPSILON).ceil();
    if n > 0.0 {
        n
    } else {
        0.0
    }
}

fn to_count(n: f64) -> u32 {
    if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n.max(0.0) as u32
    }
}

/// `90s` -> `1m30s`, `6s`, `15m`, `500ms`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}
