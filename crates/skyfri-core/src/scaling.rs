//! Autoscaling: how a function scales ([`ScalePolicy`], read from its labels and annotations
//! in the OpenFaaS or the Knative vocabulary) and the decision of how many replicas it needs
//! ([`Autoscaler`], Knative's KPA algorithm). Pure: the caller feeds observations and
//! instants, and applies the decisions.
//!
//! # Labels and annotations
//!
//! Every key is read from the function's annotations and from its labels (OpenFaaS puts
//! `com.openfaas.scale.*` in labels, Knative puts `autoscaling.knative.dev/*` in annotations;
//! skyfri takes either). Knative keys are also accepted in their older camelCase spelling
//! (`minScale`, `targetUtilizationPercentage`, ...). A key set in both places, or spelt both
//! ways, must carry one value; an OpenFaaS key and its Knative counterpart may both be set
//! only when they mean the same thing. Anything else is an error that names the key and the
//! value, and a manifest with such an error is refused at deploy.
//!
//! | [`ScalePolicy`] field | OpenFaaS key (`com.openfaas.scale.`) | Knative key (`autoscaling.knative.dev/`) | default |
//! |---|---|---|---|
//! | `min`: replicas kept while the function is in use (at least 1) | `min`; `0` allows scale to zero | `min-scale`; `0` allows scale to zero | 1 (Knative: 0) |
//! | `max`: replicas at most | `max`, at least 1 | `max-scale`; `0` = no limit, capped at 100 | 20, or `min`/`initial` when higher (Knative: no limit) |
//! | `initial`: replicas at deploy | | `initial-scale`, at most `max` | 1 |
//! | `metric` | `type`: `capacity` (in-flight calls) or `rps`; `cpu` is refused | `metric`: `concurrency` or `rps`; `cpu`, `memory` are refused | concurrency (OpenFaaS: rps) |
//! | `target`: metric value per replica | `target` | `target` | concurrency: `container_concurrency`, or 100 when unlimited; rps: 200 (OpenFaaS: 50) |
//! | `target_utilization`: fraction of the target to aim for | `target-proportion`, in (0, 1] | `target-utilization-percentage`, 1 to 100 (%) | 0.7 (OpenFaaS: 0.9) |
//! | `stable_window` | | `window`, 6s to 1h, whole seconds | 60 s |
//! | `panic_window_percentage` | | `panic-window-percentage`, 1 to 100 | 10 (6 s) |
//! | `panic_threshold` (ratio) | | `panic-threshold-percentage`, 110 to 1000 (%) | 2.0 (200 %) |
//! | `max_scale_up_rate` | | (Knative cluster config only) | 1000 |
//! | `max_scale_down_rate` | | (Knative cluster config only) | 2 |
//! | `scale_down_delay` | | `scale-down-delay`, 0 to 1h, whole seconds | 0 |
//! | `scale_to_zero` | `zero`: `true` / `false`; `min` 0 implies `true` | `min-scale` 0 | false |
//! | `idle_before_zero`: time without traffic before zero | `zero-duration`, at least 1s | `scale-to-zero-pod-retention-period`, 0 to 1h: the stable window plus this | 15 min (OpenFaaS Pro) |
//! | `target_burst_capacity` | | `target-burst-capacity`, 0 or more, -1 = unlimited | 211 |
//! | `container_concurrency` (0 = unlimited) | annotation or label `com.openfaas.max_inflight` | `spec.template.spec.containerConcurrency` | per template: python3, python3-http, exec: 1; node, http: 0 |
//! | `queue_size`: calls waiting for capacity | annotation or label `com.skyfri.queue-size`, at least 1 | | 1000 |
//! | `max_concurrency`: calls in flight across all replicas | annotation or label `com.skyfri.max-concurrency`, at least 1; lowers `max` to `ceil(cap / container_concurrency)` (not below `min`) | | no cap |
//! | (class) | | `class`: only `kpa.autoscaling.knative.dev`; `hpa` is refused | kpa |
//!
//! Durations are seconds (`30`) or Go durations (`30s`, `15m`, `1m30s`). Booleans are
//! `true`/`false` (also `1`/`0`, `t`/`f`, as Go's `strconv.ParseBool`).
//!
//! A concurrency target above the function's `container_concurrency` is lowered to it, as
//! Knative does: a replica never gets more than it can take. The autoscaler aims at
//! `max(0.01, target x target_utilization)` per replica; the defaults give 70 concurrent
//! calls per replica when concurrency is unlimited, and 0.7 for a Python replica that takes
//! one call at a time (so one steady caller keeps two replicas: the second is headroom).
//!
//! Where the two vocabularies' defaults differ, skyfri takes Knative's algorithm defaults
//! and OpenFaaS's replica defaults (min 1, max 20, scale to zero opt-in after 15 minutes),
//! so a function stays warm unless it asks otherwise.

mod kpa;
mod policy;

#[cfg(test)]
mod tests;

pub use kpa::{fmt_duration, Autoscaler, Decision};
pub use policy::{
    Metric, Place, PolicyError, ScalePolicy, DEFAULT_CONCURRENCY_TARGET, DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE, DEFAULT_QUEUE_SIZE, DEFAULT_RPS_TARGET, MAX_CONCURRENCY_KEY, QUEUE_SIZE_KEY,
    UNLIMITED_MAX_SCALE,
};
