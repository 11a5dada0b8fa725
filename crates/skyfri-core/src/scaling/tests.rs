//! Table tests of the KPA decider against Knative's formula (knative/serving
//! `pkg/autoscaler/scaling/autoscaler.go`), and of the mapping from labels and annotations
//! to a [`ScalePolicy`].
//!
//! The decider takes its instants from the caller, so the tests drive it with a synthetic
//! clock: second `n` of a case is `t0 + n s`. Nothing sleeps, and every run is the same.
//!
//! With the defaults (unlimited concurrency) the target per replica is 100 x 0.7 = 70, the
//! stable window 60 s, the panic window 6 s, the panic threshold 2.0, the max scale-up rate
//! 1000 and the max scale-down rate 2; the expected counts below are worked out by hand
//! from those.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::kpa::fmt_duration;
use super::*;
use crate::function::{FunctionSpec, Template};

// ---------------------------------------------------------------------------------------
// The decider
// ---------------------------------------------------------------------------------------

/// One step of a case, at a whole second since the autoscaler was made. Steps run in
/// order and their seconds never go back.
enum Step {
    /// One observation.
    Record(u64, f64),
    /// One observation a second over the range, as the caller makes them.
    Steady(RangeInclusive<u64>, f64),
    /// `mark_active`: a call seen without adding to the metric.
    Active(u64),
    /// The stable and the panic averages.
    Observe { at: u64, stable: f64, panic: f64 },
    /// A decision with `ready` replicas ready; `says` is a part of its reason ("" = any).
    Decide {
        at: u64,
        ready: u32,
        desired: u32,
        panic: bool,
        says: &'static str,
    },
}

fn rec(at: u64, value: f64) -> Step {
    Step::Record(at, value)
}

fn steady(seconds: RangeInclusive<u64>, value: f64) -> Step {
    Step::Steady(seconds, value)
}

fn active(at: u64) -> Step {
    Step::Active(at)
}

fn observe(at: u64, stable: f64, panic: f64) -> Step {
    Step::Observe { at, stable, panic }
}

fn decide(at: u64, ready: u32, desired: u32, panic: bool) -> Step {
    decide_says(at, ready, desired, panic, "")
}

fn decide_says(at: u64, ready: u32, desired: u32, panic: bool, says: &'static str) -> Step {
    Step::Decide {
        at,
        ready,
        desired,
        panic,
        says,
    }
}

/// A first decision at second 0, before any observation, with one replica ready: 1. Cases
/// that then decide with more replicas ready start with it, so that they see the formula
/// and not the panic a fresh autoscaler starts in when more than one replica is ready.
fn warm() -> Step {
    decide(0, 1, 1, false)
}

struct Case {
    name: &'static str,
    /// Changes to [`ScalePolicy::default`] (unlimited concurrency).
    policy: fn(&mut ScalePolicy),
    steps: Vec<Step>,
}

fn defaults(_: &mut ScalePolicy) {}

fn run(cases: Vec<Case>) {
    for case in cases {
        let mut policy = ScalePolicy::default();
        (case.policy)(&mut policy);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut scaler = Autoscaler::new(policy, t0);
        let mut clock = 0;
        for (i, step) in case.steps.into_iter().enumerate() {
            let name = case.name;
            let started = match &step {
                Step::Record(s, _) | Step::Active(s) => *s,
                Step::Steady(r, _) => *r.start(),
                Step::Observe { at, .. } | Step::Decide { at, .. } => *at,
            };
            assert!(started >= clock, "{name}: step {i} goes back in time");
            match step {
                Step::Record(s, v) => {
                    scaler.record(at(s), v);
                    clock = s;
                }
                Step::Steady(seconds, v) => {
                    for s in seconds {
                        scaler.record(at(s), v);
                        clock = s;
                    }
                }
                Step::Active(s) => {
                    scaler.mark_active(at(s));
                    clock = s;
                }
                Step::Observe {
                    at: s,
                    stable,
                    panic,
                } => {
                    let (got_stable, got_panic) = scaler.observed(at(s));
                    assert!(
                        (got_stable - stable).abs() < 1e-9 && (got_panic - panic).abs() < 1e-9,
                        "{name}: step {i}, at {s}s: observed (stable, panic) = \
                         ({got_stable}, {got_panic}), want ({stable}, {panic})"
                    );
                    clock = s;
                }
                Step::Decide {
                    at: s,
                    ready,
                    desired,
                    panic,
                    says,
                } => {
                    let d = scaler.decide(at(s), ready);
                    assert_eq!(
                        (d.desired, d.panic),
                        (desired, panic),
                        "{name}: step {i}, at {s}s with {ready} ready: (desired, panic); {d:?}"
                    );
                    assert!(
                        d.reason.contains(says),
                        "{name}: step {i}, at {s}s: reason {:?} does not say {says:?}",
                        d.reason
                    );
                    assert!(
                        !d.reason.contains("-> -"),
                        "{name}: step {i}, at {s}s: negative count in {:?}",
                        d.reason
                    );
                    clock = s;
                }
            }
        }
    }
}

#[test]
fn stable_mode() {
    // desired = ceil(stable average / (target x utilization)), the average a steady value.
    run(vec![
        Case {
            name: "10 concurrent / (100 x 0.7) -> 1",
            policy: defaults,
            steps: vec![
                steady(0..=59, 10.0),
                decide_says(
                    59,
                    1,
                    1,
                    false,
                    "stable: 10.00 concurrent over 1m / (100 x 0.7) -> 1",
                ),
            ],
        },
        Case {
            name: "70 is exactly one replica's worth -> 1",
            policy: defaults,
            steps: vec![steady(0..=59, 70.0), decide(59, 1, 1, false)],
        },
        Case {
            name: "71 -> 2",
            policy: defaults,
            steps: vec![warm(), steady(0..=59, 71.0), decide(59, 2, 2, false)],
        },
        Case {
            name: "140 / 70 -> 2",
            policy: defaults,
            steps: vec![warm(), steady(0..=59, 140.0), decide(59, 2, 2, false)],
        },
        Case {
            // In floating point 2.1 / 0.7 is 3.0000000000000004; the formula means 3.
            name: "2.1 / (1 x 0.7) is 3, not 4",
            policy: |p| *p = ScalePolicy::for_concurrency(1),
            steps: vec![warm(), rec(0, 2.1), decide_says(0, 2, 3, false, "-> 3")],
        },
        Case {
            name: "150 / 70 -> 3",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=59, 150.0),
                decide_says(
                    59,
                    2,
                    3,
                    false,
                    "150.00 concurrent over 1m / (100 x 0.7) -> 3",
                ),
            ],
        },
        Case {
            name: "700 / 70 -> 10",
            policy: defaults,
            steps: vec![warm(), steady(0..=59, 700.0), decide(59, 6, 10, false)],
        },
        Case {
            name: "utilization 100%: 250 / (100 x 1) -> 3",
            policy: |p| p.target_utilization = 1.0,
            steps: vec![warm(), steady(0..=59, 250.0), decide(59, 2, 3, false)],
        },
        Case {
            name: "rps: 500 / (200 x 0.7) -> 4",
            policy: |p| {
                p.metric = Metric::Rps;
                p.target = DEFAULT_RPS_TARGET;
            },
            steps: vec![
                warm(),
                steady(0..=59, 500.0),
                decide_says(
                    59,
                    3,
                    4,
                    false,
                    "stable: 500.00 rps over 1m / (200 x 0.7) -> 4",
                ),
            ],
        },
        Case {
            name: "one call at a time: one steady caller / (1 x 0.7) -> 2",
            policy: |p| *p = ScalePolicy::for_concurrency(1),
            steps: vec![
                warm(),
                steady(0..=59, 1.0),
                decide_says(59, 2, 2, false, "/ (1 x 0.7) -> 2"),
            ],
        },
        Case {
            name: "the target is at least 0.01: 0.05 / max(0.01, 0.01 x 0.7) -> 5",
            policy: |p| p.target = 0.01,
            steps: vec![warm(), steady(0..=59, 0.05), decide(59, 5, 5, false)],
        },
        Case {
            name: "nothing in flight -> 0, raised to the minimum of 1",
            policy: defaults,
            steps: vec![
                steady(0..=59, 0.0),
                decide_says(
                    59,
                    1,
                    1,
                    false,
                    "0.00 concurrent over 1m / (100 x 0.7) -> 0, raised to the minimum of 1",
                ),
            ],
        },
        Case {
            name: "no observation yet -> 0, raised to 1",
            policy: defaults,
            steps: vec![decide_says(
                0,
                0,
                1,
                false,
                "-> 0, raised to the minimum of 1",
            )],
        },
    ]);
}

#[test]
fn averaging() {
    run(vec![
        Case {
            name: "a fresh autoscaler averages over what it has seen, not over 60s",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=9, 140.0),
                // Over the whole window this would be 140 x 10 / 60 = 23.3 -> 1.
                observe(9, 140.0, 140.0),
                decide(9, 2, 2, false),
            ],
        },
        Case {
            name: "half a window: stable (30 x 0 + 30 x 210) / 60 = 105 -> 2",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=29, 0.0),
                steady(30..=59, 210.0),
                observe(59, 105.0, 210.0),
                // panic: ceil(210 / 70) = 3, 3 / 2 ready = 1.5 < 2: no panic.
                decide(59, 2, 2, false),
            ],
        },
        Case {
            name: "the window slides",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=59, 210.0),
                decide(59, 3, 3, false),
                steady(60..=89, 70.0),
                // [30, 89]: 30 x 210 + 30 x 70 = 8400, / 60 = 140.
                observe(89, 140.0, 70.0),
                decide(89, 3, 2, false),
                steady(90..=119, 70.0),
                observe(119, 70.0, 70.0),
                decide(119, 2, 1, false),
            ],
        },
        Case {
            name: "the current second counts once something is recorded in it",
            policy: defaults,
            steps: vec![
                steady(0..=4, 100.0),
                observe(5, 100.0, 100.0),
                rec(5, 0.0),
                observe(5, 500.0 / 6.0, 500.0 / 6.0),
            ],
        },
        Case {
            name: "observations in one second are averaged",
            policy: defaults,
            steps: vec![rec(0, 10.0), rec(0, 30.0), observe(0, 20.0, 20.0)],
        },
        Case {
            name: "negative and non-finite observations count as 0",
            policy: defaults,
            steps: vec![
                rec(0, -5.0),
                rec(1, f64::NAN),
                rec(2, f64::INFINITY),
                rec(3, 40.0),
                observe(3, 10.0, 10.0),
            ],
        },
        Case {
            // skyfri's documented choice (the caller records every second); Knative would
            // average over the seconds it has.
            name: "seconds without observations inside the window count as 0",
            policy: defaults,
            steps: vec![
                steady(0..=9, 60.0),
                // stable [0, 19]: 600 / 20; panic [14, 19]: nothing.
                observe(20, 30.0, 0.0),
            ],
        },
        Case {
            name: "a full window without observations starts a new run",
            policy: defaults,
            steps: vec![
                steady(0..=9, 100.0),
                rec(100, 10.0),
                // Not 10 / 60: the window reaches back to the new first observation.
                observe(100, 10.0, 10.0),
            ],
        },
    ]);
}

#[test]
fn rate_limits() {
    run(vec![
        Case {
            name: "scale-up to at most ceil(rate x ready): 1.5 x 4 = 6, not 7",
            policy: |p| {
                p.max_scale_up_rate = 1.5;
                p.max = 100;
            },
            steps: vec![
                warm(),
                steady(0..=59, 490.0),
                // 490 / 70 = 7; panic 7 / 4 = 1.75 < 2.
                decide_says(
                    59,
                    4,
                    6,
                    false,
                    "-> 7, limited to 6 by the max scale-up rate 1.5 x 4 ready",
                ),
            ],
        },
        Case {
            name: "Knative's example: rate 1.1 x 3 ready = 3.3 -> 4, so it grows by one",
            policy: |p| p.max_scale_up_rate = 1.1,
            steps: vec![warm(), steady(0..=59, 350.0), decide(59, 3, 4, false)],
        },
        Case {
            name: "the default rate: 1000 x ready",
            policy: |p| p.max = 5000,
            steps: vec![
                steady(0..=5, 140_000.0),
                // 2000 wanted, 2000 / 1 ready: panic, and the panic count is limited too.
                decide_says(
                    5,
                    1,
                    1000,
                    true,
                    "limited to 1000 by the max scale-up rate 1000 x 1 ready",
                ),
            ],
        },
        Case {
            name: "no replica ready counts as 1",
            policy: |p| p.max_scale_up_rate = 2.0,
            steps: vec![steady(0..=59, 700.0), decide(59, 0, 2, true)],
        },
        Case {
            name: "scale-down to at least floor(ready / 2): 10 ready -> 5",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=59, 70.0),
                decide_says(
                    59,
                    10,
                    5,
                    false,
                    "-> 1, kept at 5 by the max scale-down rate (10 ready / 2)",
                ),
            ],
        },
        Case {
            name: "floor(7 / 2) = 3",
            policy: defaults,
            steps: vec![warm(), steady(0..=59, 0.0), decide(59, 7, 3, false)],
        },
        Case {
            name: "scale-down rate 4: floor(10 / 4) = 2",
            policy: |p| p.max_scale_down_rate = 4.0,
            steps: vec![warm(), steady(0..=59, 70.0), decide(59, 10, 2, false)],
        },
        Case {
            name: "scale-down rate 1 never scales down",
            policy: |p| p.max_scale_down_rate = 1.0,
            steps: vec![warm(), steady(0..=59, 0.0), decide(59, 4, 4, false)],
        },
    ]);
}

#[test]
fn panic_mode() {
    run(vec![
        Case {
            name: "enters at 2x, holds the highest count, leaves a stable window after",
            policy: defaults,
            steps: vec![
                steady(0..=59, 35.0),
                decide(59, 1, 1, false),
                // panic [60, 65] = 140 -> 2, 2 / 1 ready = 2.0: panic. stable [6, 65] =
                // (54 x 35 + 6 x 140) / 60 = 45.5 -> 1; panicking takes the larger.
                steady(60..=65, 140.0),
                decide_says(
                    65,
                    1,
                    2,
                    true,
                    "panic: 140.00 concurrent over 6s / (100 x 0.7) -> 2; \
                     stable: 45.50 concurrent over 1m / (100 x 0.7) -> 1",
                ),
                // panic 280 -> 4, 4 / 2 = 2.0: the panic goes on from here (71s).
                steady(66..=71, 280.0),
                decide(71, 2, 4, true),
                // Nothing in the panic window: 0 -> kept at 2 by the rate, but a panic
                // never scales down.
                steady(72..=77, 0.0),
                decide_says(77, 4, 4, true, "held at 4 while panicking"),
                // 71 + 60 = 131: still panicking then, not after.
                steady(78..=131, 0.0),
                decide(131, 4, 4, true),
                rec(132, 0.0),
                decide_says(132, 4, 2, false, "kept at 2 by the max scale-down rate"),
            ],
        },
        Case {
            name: "under the threshold: 3 / 2 ready = 1.5, no panic",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=53, 0.0),
                steady(54..=59, 210.0),
                // stable 6 x 210 / 60 = 21 -> 1.
                decide(59, 2, 1, false),
            ],
        },
        Case {
            name: "at the threshold: 4 / 2 ready = 2.0, panic",
            policy: defaults,
            steps: vec![
                warm(),
                steady(0..=53, 0.0),
                steady(54..=59, 280.0),
                decide(59, 2, 4, true),
            ],
        },
        Case {
            name: "the threshold comes from the policy (300%)",
            policy: |p| p.panic_threshold = 3.0,
            steps: vec![
                warm(),
                steady(0..=53, 0.0),
                steady(54..=59, 280.0),
                decide(59, 2, 1, false),
            ],
        },
        Case {
            name: "crossing again extends the panic",
            policy: defaults,
            steps: vec![
                steady(0..=5, 140.0),
                decide(5, 1, 2, true),
                steady(6..=49, 0.0),
                decide_says(49, 2, 2, true, "held at 2 while panicking"),
                // panic 280 -> 4, 4 / 2: crossed again at 55.
                steady(50..=55, 280.0),
                decide(55, 2, 4, true),
                // The first crossing alone would have ended the panic after 65.
                steady(56..=66, 0.0),
                decide(66, 4, 4, true),
                steady(67..=115, 0.0),
                decide(115, 4, 4, true),
                rec(116, 0.0),
                decide(116, 4, 2, false),
            ],
        },
        Case {
            name: "panicking takes the larger of the stable and the panic counts",
            policy: defaults,
            steps: vec![
                steady(0..=53, 210.0),
                steady(54..=59, 0.0),
                // A fresh autoscaler with 2 ready panics, holding 2. stable 54 x 210 / 60 =
                // 189 -> 3; panic 0 -> 1 (the rate): 3.
                decide(59, 2, 3, true),
            ],
        },
        Case {
            name: "a fresh autoscaler with more than one ready starts in panic",
            policy: defaults,
            steps: vec![
                decide_says(0, 3, 3, true, "held at 3 while panicking"),
                steady(1..=60, 0.0),
                decide(60, 3, 3, true),
                rec(61, 0.0),
                decide(61, 3, 1, false),
            ],
        },
        Case {
            name: "a fresh autoscaler with one ready does not",
            policy: defaults,
            steps: vec![decide(0, 1, 1, false)],
        },
    ]);
}

/// A 6 s stable window that is also the panic window, to see the delay on its own.
fn short_window(p: &mut ScalePolicy) {
    p.stable_window = Duration::from_secs(6);
    p.panic_window_percentage = 100.0;
}

#[test]
fn scale_down_delay() {
    run(vec![
        Case {
            name: "no delay: the drop follows the average",
            policy: short_window,
            steps: vec![
                warm(),
                steady(0..=9, 280.0),
                decide(9, 4, 4, false),
                steady(10..=15, 0.0),
                decide(15, 4, 2, false),
            ],
        },
        Case {
            name: "30s delay: the highest count of the last 30s",
            policy: |p| {
                short_window(p);
                p.scale_down_delay = Duration::from_secs(30);
            },
            steps: vec![
                warm(),
                // Up at once: the delay is for scaling down.
                steady(0..=9, 280.0),
                decide(9, 4, 4, false),
                steady(10..=15, 0.0),
                decide_says(
                    15,
                    4,
                    4,
                    false,
                    "kept at 2 by the max scale-down rate (4 ready / 2), held at 4 by the \
                     scale-down delay of 30s",
                ),
                steady(16..=38, 0.0),
                decide(38, 4, 4, false),
                // 4 was decided at 9; 39 - 9 = 30.
                rec(39, 0.0),
                decide(39, 4, 2, false),
            ],
        },
        Case {
            name: "10s delay, stepping down 6 -> 4 -> 0",
            policy: |p| {
                short_window(p);
                p.scale_down_delay = Duration::from_secs(10);
                // No rate limit on the way down, to see the delay alone.
                p.max_scale_down_rate = 100.0;
            },
            steps: vec![
                warm(),
                steady(0..=5, 420.0),
                decide(5, 6, 6, false),
                steady(6..=11, 280.0),
                decide_says(11, 6, 6, false, "-> 4, held at 6 by the scale-down delay"),
                steady(12..=14, 280.0),
                decide(14, 6, 6, false),
                rec(15, 280.0),
                decide(15, 6, 4, false),
                steady(16..=21, 0.0),
                decide(21, 6, 4, false),
                steady(22..=25, 0.0),
                decide_says(25, 6, 1, false, "-> 0, raised to the minimum of 1"),
            ],
        },
        Case {
            name: "the delay holds the count a panic held",
            policy: |p| p.scale_down_delay = Duration::from_secs(30),
            steps: vec![
                decide(0, 3, 3, true),
                steady(1..=60, 0.0),
                decide(60, 3, 3, true),
                // The panic of the restart ends after 60, but 3 was decided at 60.
                rec(61, 0.0),
                decide_says(61, 3, 3, false, "held at 3 by the scale-down delay of 30s"),
                steady(62..=90, 0.0),
                decide(90, 3, 1, false),
            ],
        },
    ]);
}

#[test]
fn bounds() {
    run(vec![
        Case {
            name: "min 3 raises",
            policy: |p| p.min = 3,
            steps: vec![
                steady(0..=59, 0.0),
                decide_says(59, 1, 3, false, "raised to the minimum of 3"),
            ],
        },
        Case {
            name: "max 5 caps: 490 / 70 = 7 -> 5",
            policy: |p| p.max = 5,
            steps: vec![
                warm(),
                steady(0..=59, 490.0),
                decide_says(59, 4, 5, false, "-> 7, capped at the maximum of 5"),
            ],
        },
        Case {
            name: "max caps a panic too",
            policy: |p| p.max = 3,
            steps: vec![steady(0..=5, 700.0), decide(5, 1, 3, true)],
        },
        Case {
            name: "min 0 without scale to zero keeps 1",
            policy: |p| p.min = 0,
            steps: vec![steady(0..=59, 0.0), decide(59, 1, 1, false)],
        },
        Case {
            name: "a max below the min gives the min",
            policy: |p| {
                p.min = 3;
                p.max = 2;
            },
            steps: vec![steady(0..=59, 0.0), decide(59, 1, 3, false)],
        },
    ]);
}

/// May scale to zero after a minute without traffic.
fn zero_after_a_minute(p: &mut ScalePolicy) {
    p.scale_to_zero = true;
    p.idle_before_zero = Duration::from_secs(60);
}

#[test]
fn scale_to_zero() {
    run(vec![
        Case {
            name: "without scale_to_zero an idle function keeps 1",
            policy: |p| p.idle_before_zero = Duration::from_secs(60),
            steps: vec![
                steady(0..=9, 10.0),
                rec(3600, 0.0),
                decide(3600, 1, 1, false),
            ],
        },
        Case {
            name: "zero after idle_before_zero without traffic, back with traffic",
            policy: zero_after_a_minute,
            steps: vec![
                steady(0..=9, 10.0),
                // Observations of 0 are not traffic: the last was at 9.
                steady(10..=68, 0.0),
                decide(68, 1, 1, false),
                rec(69, 0.0),
                decide_says(69, 1, 0, false, "-> 0, no traffic for 1m: scale to zero"),
                rec(70, 0.0),
                decide(70, 0, 0, false),
                decide(99, 0, 0, false),
                // 5 / 60 -> 1.
                rec(100, 5.0),
                decide(100, 0, 1, false),
            ],
        },
        Case {
            name: "the scale-down delay holds the last replica too (Knative)",
            policy: |p| {
                zero_after_a_minute(p);
                p.scale_down_delay = Duration::from_secs(30);
            },
            steps: vec![
                steady(0..=9, 10.0),
                steady(10..=98, 0.0),
                decide(98, 1, 1, false),
                rec(99, 0.0),
                decide_says(99, 1, 0, false, "no traffic for 1m30s: scale to zero"),
            ],
        },
        Case {
            name: "the default idle time is 15 minutes",
            policy: |p| p.scale_to_zero = true,
            steps: vec![
                rec(0, 5.0),
                rec(899, 0.0),
                decide(899, 1, 1, false),
                decide_says(900, 1, 0, false, "no traffic for 15m: scale to zero"),
            ],
        },
        Case {
            name: "mark_active keeps it up, and brings it back from zero",
            policy: zero_after_a_minute,
            steps: vec![
                active(50),
                decide(109, 1, 1, false),
                decide(110, 1, 0, false),
                active(200),
                decide(200, 0, 1, false),
            ],
        },
        Case {
            name: "initial 0: starts at zero, comes back when traffic is recorded",
            policy: |p| {
                zero_after_a_minute(p);
                p.initial = 0;
            },
            steps: vec![
                decide_says(0, 0, 0, false, "no traffic yet: scale to zero"),
                decide(30, 0, 0, false),
                // 350 / 70 = 5, 5 / 1 (no replica counts as 1): a panic, straight to 5.
                rec(31, 350.0),
                decide(31, 0, 5, true),
            ],
        },
        Case {
            name: "initial 0 without scale_to_zero starts at 1",
            policy: |p| p.initial = 0,
            steps: vec![decide(0, 0, 1, false)],
        },
        Case {
            name: "zero wins over min and over a restart's panic",
            policy: |p| {
                zero_after_a_minute(p);
                p.min = 2;
            },
            steps: vec![decide(59, 2, 2, true), decide(60, 2, 0, false)],
        },
    ]);
}

#[test]
fn excess_burst_capacity() {
    // floor(ready x total - burst - panic average); 0 for no burst capacity, -1 unlimited.
    let cases: &[(&str, f64, u32, f64, f64)] = &[
        // (name, target burst capacity, ready, panic average, want)
        ("3 x 100 - 211 - 50", 211.0, 3, 50.0, 39.0),
        ("3 x 100 - 211 - 10.5, floored", 211.0, 3, 10.5, 78.0),
        ("1 x 100 - 211 - 100", 211.0, 1, 100.0, -211.0),
        ("no replica ready: 0 - 211", 211.0, 0, 0.0, -211.0),
        ("burst capacity 0", 0.0, 3, 50.0, 0.0),
        ("unlimited burst capacity", -1.0, 3, 50.0, -1.0),
    ];
    for &(name, burst, ready, panic, want) in cases {
        let policy = ScalePolicy {
            target_burst_capacity: burst,
            ..ScalePolicy::default()
        };
        let t0 = Instant::now();
        let mut scaler = Autoscaler::new(policy, t0);
        for s in 0..=5 {
            scaler.record(t0 + Duration::from_secs(s), panic);
        }
        let d = scaler.decide(t0 + Duration::from_secs(5), ready);
        assert_eq!(d.observed_panic, panic, "{name}");
        assert_eq!(d.excess_burst_capacity, want, "{name}: {d:?}");
    }
}

#[test]
fn a_new_policy_keeps_the_observations() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut scaler = Autoscaler::new(ScalePolicy::default(), t0);
    scaler.decide(at(0), 1);
    for s in 0..=59 {
        scaler.record(at(s), 140.0);
    }
    assert_eq!(scaler.decide(at(59), 2).desired, 2);
    scaler.update(ScalePolicy {
        target: 200.0,
        ..ScalePolicy::default()
    });
    assert_eq!(scaler.policy().target, 200.0);
    // 140 / (200 x 0.7) = 1.
    assert_eq!(scaler.decide(at(59), 2).desired, 1);
}

#[test]
fn durations_in_reasons() {
    for (secs, millis, want) in [
        (0, 0, "0s"),
        (0, 500, "500ms"),
        (6, 0, "6s"),
        (60, 0, "1m"),
        (90, 0, "1m30s"),
        (900, 0, "15m"),
        (3600, 0, "1h"),
        (3661, 0, "1h1m1s"),
    ] {
        let d = Duration::from_secs(secs) + Duration::from_millis(millis);
        assert_eq!(fmt_duration(d), want, "{d:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------

const OF: &str = "com.openfaas.scale.";
const KN: &str = "autoscaling.knative.dev/";

/// A spec with these labels and annotations; keys starting with `of:` or `kn:` get the
/// OpenFaaS or the Knative prefix.
fn spec(concurrency: u32, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> FunctionSpec {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| {
                let key = if let Some(k) = k.strip_prefix("of:") {
                    format!("{OF}{k}")
                } else if let Some(k) = k.strip_prefix("kn:") {
                    format!("{KN}{k}")
                } else {
                    k.to_string()
                };
                (key, v.to_string())
            })
            .collect()
    };
    let mut spec = FunctionSpec::new("f", "f");
    spec.concurrency = concurrency;
    spec.labels = map(labels);
    spec.annotations = map(annotations);
    spec
}

/// The defaults with unlimited concurrency (node, http).
fn node() -> ScalePolicy {
    ScalePolicy::for_concurrency(0)
}

/// The defaults with one call at a time (python3, exec).
fn python() -> ScalePolicy {
    ScalePolicy::for_concurrency(1)
}

struct PolicyCase {
    name: &'static str,
    template: Template,
    /// The spec's `concurrency` (containerConcurrency, `max_inflight`); 0 = the template's.
    concurrency: u32,
    labels: &'static [(&'static str, &'static str)],
    annotations: &'static [(&'static str, &'static str)],
    want: fn() -> ScalePolicy,
}

#[test]
fn policy_from_labels_and_annotations() {
    use Template::{Exec, Node, Python3};
    let cases = vec![
        // Defaults.
        PolicyCase {
            name: "no keys, unlimited concurrency: target 100",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[],
            want: || ScalePolicy {
                min: 1,
                max: 20,
                initial: 1,
                metric: Metric::Concurrency,
                target: 100.0,
                target_utilization: 0.7,
                stable_window: Duration::from_secs(60),
                panic_window_percentage: 10.0,
                panic_threshold: 2.0,
                max_scale_up_rate: 1000.0,
                max_scale_down_rate: 2.0,
                scale_down_delay: Duration::ZERO,
                scale_to_zero: false,
                idle_before_zero: Duration::from_secs(15 * 60),
                target_burst_capacity: 211.0,
                container_concurrency: 0,
                queue_size: 1000,
                max_concurrency: None,
            },
        },
        PolicyCase {
            name: "no keys, python3 takes one call at a time: target 1",
            template: Python3,
            concurrency: 0,
            labels: &[],
            annotations: &[],
            want: || ScalePolicy {
                target: 1.0,
                container_concurrency: 1,
                ..node()
            },
        },
        PolicyCase {
            name: "the spec's concurrency wins over the template's",
            template: Exec,
            concurrency: 4,
            labels: &[],
            annotations: &[],
            want: || ScalePolicy::for_concurrency(4),
        },
        // OpenFaaS labels.
        PolicyCase {
            name: "openfaas min and max",
            template: Node,
            concurrency: 0,
            labels: &[("of:min", "2"), ("of:max", "10")],
            annotations: &[],
            want: || ScalePolicy {
                min: 2,
                max: 10,
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas min 0 allows scale to zero, keeps 1 while in use",
            template: Node,
            concurrency: 0,
            labels: &[("of:min", "0")],
            annotations: &[],
            want: || ScalePolicy {
                min: 1,
                scale_to_zero: true,
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas zero true, zero-duration 5m",
            template: Node,
            concurrency: 0,
            labels: &[("of:zero", "true"), ("of:zero-duration", "5m")],
            annotations: &[],
            want: || ScalePolicy {
                scale_to_zero: true,
                idle_before_zero: Duration::from_secs(300),
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas zero 1 (Go's ParseBool), zero-duration in seconds",
            template: Node,
            concurrency: 0,
            labels: &[("of:zero", "1"), ("of:zero-duration", "90")],
            annotations: &[],
            want: || ScalePolicy {
                scale_to_zero: true,
                idle_before_zero: Duration::from_secs(90),
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas zero F with min 2",
            template: Node,
            concurrency: 0,
            labels: &[("of:zero", "F"), ("of:min", "2")],
            annotations: &[],
            want: || ScalePolicy { min: 2, ..node() },
        },
        PolicyCase {
            name: "openfaas zero-duration at its minimum of 1s",
            template: Node,
            concurrency: 0,
            labels: &[("of:zero-duration", "1s")],
            annotations: &[],
            want: || ScalePolicy {
                idle_before_zero: Duration::from_secs(1),
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas type rps: the rps target 200",
            template: Node,
            concurrency: 0,
            labels: &[("of:type", "rps")],
            annotations: &[],
            want: || ScalePolicy {
                metric: Metric::Rps,
                target: 200.0,
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas type capacity is concurrency",
            template: Node,
            concurrency: 0,
            labels: &[("of:type", "capacity")],
            annotations: &[],
            want: node,
        },
        PolicyCase {
            name: "openfaas target and target-proportion",
            template: Node,
            concurrency: 0,
            labels: &[("of:target", "50"), ("of:target-proportion", "0.9")],
            annotations: &[],
            want: || ScalePolicy {
                target: 50.0,
                target_utilization: 0.9,
                ..node()
            },
        },
        PolicyCase {
            name: "openfaas target above the container concurrency is lowered to it",
            template: Python3,
            concurrency: 0,
            labels: &[("of:target", "50")],
            annotations: &[],
            want: python,
        },
        PolicyCase {
            name: "an rps target is not capped by the concurrency",
            template: Python3,
            concurrency: 0,
            labels: &[("of:type", "rps"), ("of:target", "50")],
            annotations: &[],
            want: || ScalePolicy {
                metric: Metric::Rps,
                target: 50.0,
                ..python()
            },
        },
        PolicyCase {
            name: "openfaas keys in annotations",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("of:min", "2"), ("of:max", "4")],
            want: || ScalePolicy {
                min: 2,
                max: 4,
                ..node()
            },
        },
        // Knative annotations.
        PolicyCase {
            name: "knative class kpa",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:class", "kpa.autoscaling.knative.dev")],
            want: node,
        },
        PolicyCase {
            name: "knative class kpa, short",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:class", "kpa")],
            want: node,
        },
        PolicyCase {
            name: "knative metric rps and target",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:metric", "rps"), ("kn:target", "10")],
            want: || ScalePolicy {
                metric: Metric::Rps,
                target: 10.0,
                ..node()
            },
        },
        PolicyCase {
            name: "knative target above containerConcurrency is lowered to it",
            template: Node,
            concurrency: 4,
            labels: &[],
            annotations: &[("kn:metric", "concurrency"), ("kn:target", "10")],
            want: || ScalePolicy::for_concurrency(4),
        },
        PolicyCase {
            name: "knative target below containerConcurrency stays",
            template: Node,
            concurrency: 4,
            labels: &[],
            annotations: &[("kn:target", "3")],
            want: || ScalePolicy {
                target: 3.0,
                ..ScalePolicy::for_concurrency(4)
            },
        },
        PolicyCase {
            name: "knative target at its minimum of 0.01",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:target", "0.01")],
            want: || ScalePolicy {
                target: 0.01,
                ..node()
            },
        },
        PolicyCase {
            name: "knative min-scale 0 allows scale to zero",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:min-scale", "0")],
            want: || ScalePolicy {
                scale_to_zero: true,
                ..node()
            },
        },
        PolicyCase {
            name: "knative max-scale 0 is no limit (100)",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:min-scale", "2"), ("kn:max-scale", "0")],
            want: || ScalePolicy {
                min: 2,
                max: UNLIMITED_MAX_SCALE,
                ..node()
            },
        },
        PolicyCase {
            name: "knative max-scale 0 with a min above 100",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:min-scale", "150"), ("kn:max-scale", "0")],
            want: || ScalePolicy {
                min: 150,
                max: 150,
                ..node()
            },
        },
        PolicyCase {
            name: "knative minScale, the old spelling",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:minScale", "3")],
            want: || ScalePolicy { min: 3, ..node() },
        },
        PolicyCase {
            name: "a min above the default max raises the max",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:min-scale", "30")],
            want: || ScalePolicy {
                min: 30,
                max: 30,
                ..node()
            },
        },
        PolicyCase {
            name: "knative initial-scale 0 with min-scale 0",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:initial-scale", "0"), ("kn:min-scale", "0")],
            want: || ScalePolicy {
                initial: 0,
                scale_to_zero: true,
                ..node()
            },
        },
        PolicyCase {
            name: "an initial-scale above the default max raises the max",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:initialScale", "25")],
            want: || ScalePolicy {
                initial: 25,
                max: 25,
                ..node()
            },
        },
        PolicyCase {
            name: "knative initial-scale within max-scale",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:initial-scale", "5"), ("kn:max-scale", "10")],
            want: || ScalePolicy {
                initial: 5,
                max: 10,
                ..node()
            },
        },
        PolicyCase {
            name: "knative window, utilization, scale-down delay",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[
                ("kn:window", "2m"),
                ("kn:target-utilization-percentage", "80"),
                ("kn:scale-down-delay", "15m"),
            ],
            want: || ScalePolicy {
                stable_window: Duration::from_secs(120),
                target_utilization: 0.8,
                scale_down_delay: Duration::from_secs(900),
                ..node()
            },
        },
        PolicyCase {
            name: "knative window at its bounds, old spellings",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[
                ("kn:window", "6s"),
                ("kn:targetUtilizationPercentage", "100"),
                ("kn:scaleDownDelay", "1h"),
            ],
            want: || ScalePolicy {
                stable_window: Duration::from_secs(6),
                target_utilization: 1.0,
                scale_down_delay: Duration::from_secs(3600),
                ..node()
            },
        },
        PolicyCase {
            name: "knative window in seconds, up to an hour",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:window", "3600")],
            want: || ScalePolicy {
                stable_window: Duration::from_secs(3600),
                ..node()
            },
        },
        PolicyCase {
            name: "knative panic window and threshold",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[
                ("kn:panic-window-percentage", "20"),
                ("kn:panic-threshold-percentage", "300"),
            ],
            want: || ScalePolicy {
                panic_window_percentage: 20.0,
                panic_threshold: 3.0,
                ..node()
            },
        },
        PolicyCase {
            name: "knative retention: the stable window plus the retention",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[
                ("kn:min-scale", "0"),
                ("kn:window", "10s"),
                ("kn:scale-to-zero-pod-retention-period", "30s"),
            ],
            want: || ScalePolicy {
                scale_to_zero: true,
                stable_window: Duration::from_secs(10),
                idle_before_zero: Duration::from_secs(40),
                ..node()
            },
        },
        PolicyCase {
            name: "knative target-burst-capacity -1 (unlimited)",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:target-burst-capacity", "-1")],
            want: || ScalePolicy {
                target_burst_capacity: -1.0,
                ..node()
            },
        },
        PolicyCase {
            name: "knative targetBurstCapacity 0",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:targetBurstCapacity", "0")],
            want: || ScalePolicy {
                target_burst_capacity: 0.0,
                ..node()
            },
        },
        PolicyCase {
            name: "knative keys in labels",
            template: Node,
            concurrency: 0,
            labels: &[("kn:min-scale", "2"), ("kn:max-scale", "5")],
            annotations: &[],
            want: || ScalePolicy {
                min: 2,
                max: 5,
                ..node()
            },
        },
        // Both places, both vocabularies, both spellings: one value.
        PolicyCase {
            name: "the same value in labels and annotations",
            template: Node,
            concurrency: 0,
            labels: &[("kn:min-scale", "2")],
            annotations: &[("kn:min-scale", "2")],
            want: || ScalePolicy { min: 2, ..node() },
        },
        PolicyCase {
            name: "both spellings with one value",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("kn:min-scale", "2"), ("kn:minScale", "2")],
            want: || ScalePolicy { min: 2, ..node() },
        },
        PolicyCase {
            name: "openfaas and knative agree",
            template: Node,
            concurrency: 0,
            labels: &[
                ("of:min", "2"),
                ("of:type", "rps"),
                ("of:target-proportion", "0.8"),
            ],
            annotations: &[
                ("kn:min-scale", "2"),
                ("kn:metric", "rps"),
                ("kn:target-utilization-percentage", "80"),
            ],
            want: || ScalePolicy {
                min: 2,
                metric: Metric::Rps,
                target: 200.0,
                target_utilization: 0.8,
                ..node()
            },
        },
        // The concurrency cap.
        PolicyCase {
            name: "a cap of 10 on one call per replica: at most 10 replicas",
            template: Python3,
            concurrency: 0,
            labels: &[("of:max", "50"), ("com.skyfri.max-concurrency", "10")],
            annotations: &[],
            want: || ScalePolicy {
                max: 10,
                max_concurrency: Some(10),
                ..python()
            },
        },
        PolicyCase {
            name: "a cap of 10 on 4 calls per replica: 3 replicas",
            template: Exec,
            concurrency: 4,
            labels: &[],
            annotations: &[("com.skyfri.max-concurrency", "10")],
            want: || ScalePolicy {
                max: 3,
                max_concurrency: Some(10),
                ..ScalePolicy::for_concurrency(4)
            },
        },
        PolicyCase {
            name: "a cap above max replicas x concurrency leaves max",
            template: Python3,
            concurrency: 0,
            labels: &[("of:max", "5"), ("com.skyfri.max-concurrency", "100")],
            annotations: &[],
            want: || ScalePolicy {
                max: 5,
                max_concurrency: Some(100),
                ..python()
            },
        },
        PolicyCase {
            name: "unlimited concurrency per replica: the cap leaves max",
            template: Node,
            concurrency: 0,
            labels: &[],
            annotations: &[("com.skyfri.max-concurrency", "10")],
            want: || ScalePolicy {
                max_concurrency: Some(10),
                ..node()
            },
        },
        PolicyCase {
            name: "the cap never lowers max below min",
            template: Python3,
            concurrency: 0,
            labels: &[("of:min", "4"), ("com.skyfri.max-concurrency", "2")],
            annotations: &[],
            want: || ScalePolicy {
                min: 4,
                max: 4,
                max_concurrency: Some(2),
                ..python()
            },
        },
        PolicyCase {
            name: "values are trimmed",
            template: Node,
            concurrency: 0,
            labels: &[("of:min", " 3 ")],
            annotations: &[],
            want: || ScalePolicy { min: 3, ..node() },
        },
    ];
    for case in cases {
        let spec = spec(case.concurrency, case.labels, case.annotations);
        let got = ScalePolicy::parse(&spec, case.template);
        assert_eq!(got, Ok((case.want)()), "{}", case.name);
        assert_eq!(
            ScalePolicy::from_spec(&spec, case.template),
            Ok((case.want)()),
            "{}",
            case.name
        );
    }
}

#[test]
fn policy_derived_values() {
    let cases: Vec<(&str, ScalePolicy, u32, f64, Duration)> = vec![
        // (name, policy, initial replicas, effective target, panic window)
        ("defaults", node(), 1, 70.0, Duration::from_secs(6)),
        (
            "one call at a time",
            python(),
            1,
            0.7,
            Duration::from_secs(6),
        ),
        (
            "a target of 0.01 x 0.7 is raised to 0.01",
            ScalePolicy {
                target: 0.01,
                ..node()
            },
            1,
            0.01,
            Duration::from_secs(6),
        ),
        (
            "initial 0 with scale to zero",
            ScalePolicy {
                initial: 0,
                scale_to_zero: true,
                ..node()
            },
            0,
            70.0,
            Duration::from_secs(6),
        ),
        (
            "initial 0 without scale to zero: the min",
            ScalePolicy {
                initial: 0,
                ..node()
            },
            1,
            70.0,
            Duration::from_secs(6),
        ),
        (
            "initial below the min: the min",
            ScalePolicy {
                min: 3,
                initial: 1,
                ..node()
            },
            3,
            70.0,
            Duration::from_secs(6),
        ),
        (
            "initial above the max: the max",
            ScalePolicy {
                initial: 5,
                max: 3,
                ..node()
            },
            3,
            70.0,
            Duration::from_secs(6),
        ),
        (
            "20% of 2m",
            ScalePolicy {
                stable_window: Duration::from_secs(120),
                panic_window_percentage: 20.0,
                ..node()
            },
            1,
            70.0,
            Duration::from_secs(24),
        ),
    ];
    for (name, policy, initial, target, panic_window) in cases {
        assert_eq!(policy.initial_replicas(), initial, "{name}");
        assert!(
            (policy.effective_target() - target).abs() < 1e-12,
            "{name}: effective target {}",
            policy.effective_target()
        );
        assert_eq!(policy.panic_window(), panic_window, "{name}");
    }
}

struct ErrorCase {
    labels: &'static [(&'static str, &'static str)],
    annotations: &'static [(&'static str, &'static str)],
    concurrency: u32,
    /// Where the error points.
    place: Place,
    key: &'static str,
    /// A part of the message.
    says: &'static str,
}

fn bad(
    labels: &'static [(&'static str, &'static str)],
    annotations: &'static [(&'static str, &'static str)],
    place: Place,
    key: &'static str,
    says: &'static str,
) -> ErrorCase {
    ErrorCase {
        labels,
        annotations,
        concurrency: 0,
        place,
        key,
        says,
    }
}

#[test]
fn policy_errors_name_the_key() {
    use Place::{Annotations as A, Labels as L};
    let cases = vec![
        // min > max.
        bad(
            &[("of:min", "5"), ("of:max", "2")],
            &[],
            L,
            "com.openfaas.scale.max",
            "\"2\" is less than the minimum of 5 (labels.com.openfaas.scale.min = \"5\")",
        ),
        bad(
            &[],
            &[("kn:min-scale", "5"), ("kn:max-scale", "2")],
            A,
            "autoscaling.knative.dev/max-scale",
            "\"2\" is less than the minimum of 5",
        ),
        bad(
            &[],
            &[("kn:initial-scale", "5"), ("kn:max-scale", "2")],
            A,
            "autoscaling.knative.dev/initial-scale",
            "\"5\" is more than the maximum of 2",
        ),
        bad(
            &[("of:max", "0")],
            &[],
            L,
            "com.openfaas.scale.max",
            "the maximum must be at least 1",
        ),
        // The wait queue.
        bad(
            &[],
            &[("com.skyfri.queue-size", "0")],
            A,
            "com.skyfri.queue-size",
            "\"0\" is not a queue size",
        ),
        // The concurrency cap.
        bad(
            &[("com.skyfri.max-concurrency", "0")],
            &[],
            L,
            "com.skyfri.max-concurrency",
            "\"0\" is not a concurrency cap: use a whole number, at least 1",
        ),
        bad(
            &[],
            &[("com.skyfri.max-concurrency", "-3")],
            A,
            "com.skyfri.max-concurrency",
            "\"-3\" is not a concurrency cap",
        ),
        bad(
            &[],
            &[("com.skyfri.max-concurrency", "2.5")],
            A,
            "com.skyfri.max-concurrency",
            "\"2.5\" is not a concurrency cap",
        ),
        bad(
            &[("com.skyfri.max-concurrency", "10")],
            &[("com.skyfri.max-concurrency", "20")],
            L,
            "com.skyfri.max-concurrency",
            "\"10\" disagrees with annotations.com.skyfri.max-concurrency = \"20\"",
        ),
        // Replica counts.
        bad(
            &[],
            &[("kn:min-scale", "-1")],
            A,
            "autoscaling.knative.dev/min-scale",
            "\"-1\" is not a number of replicas",
        ),
        bad(
            &[("of:min", "1.5")],
            &[],
            L,
            "com.openfaas.scale.min",
            "\"1.5\" is not a number of replicas",
        ),
        // Targets.
        bad(
            &[("of:target", "0")],
            &[],
            L,
            "com.openfaas.scale.target",
            "\"0\": the target per replica must be more than 0",
        ),
        bad(
            &[],
            &[("kn:target", "0")],
            A,
            "autoscaling.knative.dev/target",
            "must be more than 0",
        ),
        bad(
            &[],
            &[("kn:target", "-5")],
            A,
            "autoscaling.knative.dev/target",
            "must be more than 0",
        ),
        bad(
            &[],
            &[("kn:target", "lots")],
            A,
            "autoscaling.knative.dev/target",
            "\"lots\" is not a number",
        ),
        bad(
            &[],
            &[("kn:target", "NaN")],
            A,
            "autoscaling.knative.dev/target",
            "\"NaN\" is not a number",
        ),
        // Metrics.
        bad(
            &[],
            &[("kn:metric", "latency")],
            A,
            "autoscaling.knative.dev/metric",
            "\"latency\" is not a metric",
        ),
        bad(
            &[],
            &[("kn:metric", "cpu")],
            A,
            "autoscaling.knative.dev/metric",
            "\"cpu\" needs Kubernetes' HPA",
        ),
        bad(
            &[],
            &[("kn:metric", "memory")],
            A,
            "autoscaling.knative.dev/metric",
            "\"memory\" needs Kubernetes' HPA",
        ),
        bad(
            &[("of:type", "cpu")],
            &[],
            L,
            "com.openfaas.scale.type",
            "not on CPU",
        ),
        bad(
            &[("of:type", "memory")],
            &[],
            L,
            "com.openfaas.scale.type",
            "\"memory\" is not a scaling type",
        ),
        // Class.
        bad(
            &[],
            &[("kn:class", "hpa.autoscaling.knative.dev")],
            A,
            "autoscaling.knative.dev/class",
            "Knative Pod Autoscaler only",
        ),
        bad(
            &[],
            &[("kn:class", "hpa")],
            A,
            "autoscaling.knative.dev/class",
            "Knative Pod Autoscaler only",
        ),
        bad(
            &[],
            &[("kn:class", "keda")],
            A,
            "autoscaling.knative.dev/class",
            "\"keda\" is not an autoscaler class",
        ),
        // Booleans.
        bad(
            &[("of:zero", "yes")],
            &[],
            L,
            "com.openfaas.scale.zero",
            "\"yes\" is not a boolean",
        ),
        bad(
            &[("of:zero", "")],
            &[],
            L,
            "com.openfaas.scale.zero",
            "\"\" is not a boolean",
        ),
        bad(
            &[("of:zero", "false"), ("of:min", "0")],
            &[],
            L,
            "com.openfaas.scale.zero",
            "contradicts labels.com.openfaas.scale.min = \"0\"",
        ),
        // Windows and durations.
        bad(
            &[],
            &[("kn:window", "5s")],
            A,
            "autoscaling.knative.dev/window",
            "\"5s\" is out of range: use 6s to 3600s",
        ),
        bad(
            &[],
            &[("kn:window", "2h")],
            A,
            "autoscaling.knative.dev/window",
            "is out of range",
        ),
        bad(
            &[],
            &[("kn:window", "3601")],
            A,
            "autoscaling.knative.dev/window",
            "is out of range",
        ),
        bad(
            &[],
            &[("kn:window", "6.5s")],
            A,
            "autoscaling.knative.dev/window",
            "use whole seconds",
        ),
        bad(
            &[],
            &[("kn:window", "a minute")],
            A,
            "autoscaling.knative.dev/window",
            "is not a duration",
        ),
        bad(
            &[],
            &[("kn:scale-down-delay", "61m")],
            A,
            "autoscaling.knative.dev/scale-down-delay",
            "is out of range: use 0s to 3600s",
        ),
        bad(
            &[("of:zero-duration", "500ms")],
            &[],
            L,
            "com.openfaas.scale.zero-duration",
            "must be at least 1s",
        ),
        bad(
            &[],
            &[("kn:scale-to-zero-pod-retention-period", "2h")],
            A,
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
            "is longer than 1h",
        ),
        // Percentages and fractions.
        bad(
            &[],
            &[("kn:target-utilization-percentage", "0")],
            A,
            "autoscaling.knative.dev/target-utilization-percentage",
            "out of range: use a percentage from 1 to 100",
        ),
        bad(
            &[],
            &[("kn:targetUtilizationPercentage", "101")],
            A,
            "autoscaling.knative.dev/targetUtilizationPercentage",
            "out of range",
        ),
        bad(
            &[("of:target-proportion", "0")],
            &[],
            L,
            "com.openfaas.scale.target-proportion",
            "is not a fraction of the target",
        ),
        bad(
            &[("of:target-proportion", "1.5")],
            &[],
            L,
            "com.openfaas.scale.target-proportion",
            "is not a fraction of the target",
        ),
        bad(
            &[],
            &[("kn:panic-threshold-percentage", "100")],
            A,
            "autoscaling.knative.dev/panic-threshold-percentage",
            "use a percentage from 110 to 1000",
        ),
        bad(
            &[],
            &[("kn:panic-window-percentage", "0")],
            A,
            "autoscaling.knative.dev/panic-window-percentage",
            "use a percentage from 1 to 100",
        ),
        bad(
            &[],
            &[("kn:target-burst-capacity", "-2")],
            A,
            "autoscaling.knative.dev/target-burst-capacity",
            "is not a burst capacity",
        ),
        // One value per field.
        bad(
            &[("kn:min-scale", "3")],
            &[("kn:min-scale", "2")],
            L,
            "autoscaling.knative.dev/min-scale",
            "\"3\" disagrees with annotations.autoscaling.knative.dev/min-scale = \"2\"",
        ),
        bad(
            &[],
            &[("kn:min-scale", "2"), ("kn:minScale", "3")],
            A,
            "autoscaling.knative.dev/minScale",
            "disagrees with annotations.autoscaling.knative.dev/min-scale",
        ),
        bad(
            &[("of:min", "2")],
            &[("kn:min-scale", "3")],
            A,
            "autoscaling.knative.dev/min-scale",
            "\"3\" disagrees with labels.com.openfaas.scale.min = \"2\"",
        ),
        bad(
            &[("of:type", "rps")],
            &[("kn:metric", "concurrency")],
            A,
            "autoscaling.knative.dev/metric",
            "disagrees with labels.com.openfaas.scale.type",
        ),
        bad(
            &[("of:target-proportion", "0.7")],
            &[("kn:target-utilization-percentage", "80")],
            A,
            "autoscaling.knative.dev/target-utilization-percentage",
            "disagrees",
        ),
        // Invalid whatever the concurrency.
        ErrorCase {
            concurrency: 4,
            ..bad(
                &[],
                &[("kn:target", "0")],
                A,
                "autoscaling.knative.dev/target",
                "must be more than 0",
            )
        },
    ];
    for case in cases {
        let spec = spec(case.concurrency, case.labels, case.annotations);
        let name = format!("{}.{}", case.place, case.key);
        // Whether a spec is valid does not depend on the template.
        for template in Template::ALL {
            let err = ScalePolicy::parse(&spec, template)
                .expect_err(&format!("{name}: {template:?} should refuse it"));
            assert_eq!(
                (err.place, err.key.as_str()),
                (case.place, case.key),
                "{err}"
            );
            assert!(err.message.contains(case.says), "{name}: {err}");
            let text = ScalePolicy::from_spec(&spec, template)
                .expect_err(&format!("{name}: from_spec should refuse it"));
            assert_eq!(text, err.to_string());
            assert!(text.starts_with(&format!("{name}: ")), "{text}");
        }
    }
}
