//! [`ScalePolicy`]: one function's scaling settings, read from its labels and annotations
//! (the mapping is the table in [`crate::scaling`]).

use std::fmt;
use std::time::Duration;

use crate::function::{FunctionSpec, Template};
use crate::quantity::parse_duration;

/// What the autoscaler counts per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Calls in flight (Knative `concurrency`, OpenFaaS `capacity`).
    Concurrency,
    /// Requests per second.
    Rps,
}

impl Metric {
    /// The unit, as decisions explain themselves ("12.3 concurrent").
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Concurrency => "concurrent",
            Metric::Rps => "rps",
        }
    }
}

/// Replicas kept while a function is in use, unless it says otherwise.
pub const DEFAULT_MIN_SCALE: u32 = 1;
/// Replicas at most, unless the function says otherwise (OpenFaaS's default).
pub const DEFAULT_MAX_SCALE: u32 = 20;
/// What Knative's `max-scale: 0` ("no limit") means on skyfri.
pub const UNLIMITED_MAX_SCALE: u32 = 100;
/// Concurrency target per replica when the function's concurrency is unlimited.
pub const DEFAULT_CONCURRENCY_TARGET: f64 = 100.0;
/// Requests-per-second target per replica (Knative's default).
pub const DEFAULT_RPS_TARGET: f64 = 200.0;
/// Calls that may wait for capacity per function, unless `com.skyfri.queue-size` says.
pub const DEFAULT_QUEUE_SIZE: usize = 1000;

const DEFAULT_INITIAL_SCALE: u32 = 1;
const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_PANIC_WINDOW_PERCENTAGE: f64 = 10.0;
const DEFAULT_PANIC_THRESHOLD: f64 = 2.0;
const DEFAULT_MAX_SCALE_UP_RATE: f64 = 1000.0;
const DEFAULT_MAX_SCALE_DOWN_RATE: f64 = 2.0;
const DEFAULT_IDLE_BEFORE_ZERO: Duration = Duration::from_secs(15 * 60);
const DEFAULT_TARGET_BURST_CAPACITY: f64 = 211.0;

/// The smallest target the autoscaler aims at per replica (Knative's `TargetMin`).
pub(crate) const MIN_TARGET: f64 = 0.01;
const WINDOW_MIN: Duration = Duration::from_secs(6);
const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// How one function scales. Build it with [`ScalePolicy::from_spec`]; the fields are public
/// so that tests and callers can adjust it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// Replicas kept while the function is in use; at least 1 (zero is `scale_to_zero`).
    pub min: u32,
    /// Replicas at most.
    pub max: u32,
    /// Replicas at deploy, before any traffic (see [`ScalePolicy::initial_replicas`]).
    pub initial: u32,
    pub metric: Metric,
    /// Metric value one replica can take (Knative's "total"), in the metric's unit.
    pub target: f64,
    /// Fraction of `target` the autoscaler aims at, in (0, 1].
    pub target_utilization: f64,
    /// The window the stable average is taken over.
    pub stable_window: Duration,
    /// The panic window as a percentage of the stable window, in [1, 100].
    pub panic_window_percentage: f64,
    /// Panic starts when the panic window asks for this many times the ready replicas.
    pub panic_threshold: f64,
    /// Scale up to at most `ceil(rate x ready)` replicas in one decision.
    pub max_scale_up_rate: f64,
    /// Scale down to at least `floor(ready / rate)` replicas in one decision.
    pub max_scale_down_rate: f64,
    /// A scale-down waits until the lower count has held for this long.
    pub scale_down_delay: Duration,
    /// Whether the function may go to zero replicas once idle.
    pub scale_to_zero: bool,
    /// Time without any traffic before a `scale_to_zero` function goes to zero.
    pub idle_before_zero: Duration,
    /// Spare capacity (in the metric's unit) to keep above the current load; -1 = unlimited.
    pub target_burst_capacity: f64,
    /// Calls one replica takes at once, 0 = unlimited.
    pub container_concurrency: u32,
    /// Calls that may wait for a replica with room before callers get 429.
    pub queue_size: usize,
    /// Calls in flight at most across all the function's replicas (`None`: no cap). Calls
    /// beyond it wait in the queue, as calls beyond the replicas' capacity do.
    pub max_concurrency: Option<u32>,
}

impl Default for ScalePolicy {
    /// The defaults for a function with unlimited concurrency.
    fn default() -> ScalePolicy {
        ScalePolicy::for_concurrency(0)
    }
}

impl ScalePolicy {
    /// The defaults for a function whose replicas take `container_concurrency` calls at
    /// once (0 = unlimited).
    pub fn for_concurrency(container_concurrency: u32) -> ScalePolicy {
        ScalePolicy {
            min: DEFAULT_MIN_SCALE,
            max: DEFAULT_MAX_SCALE,
            initial: DEFAULT_INITIAL_SCALE,
            metric: Metric::Concurrency,
            target: default_target(Metric::Concurrency, container_concurrency),
            target_utilization: DEFAULT_TARGET_UTILIZATION,
            stable_window: DEFAULT_STABLE_WINDOW,
            panic_window_percentage: DEFAULT_PANIC_WINDOW_PERCENTAGE,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            max_scale_up_rate: DEFAULT_MAX_SCALE_UP_RATE,
            max_scale_down_rate: DEFAULT_MAX_SCALE_DOWN_RATE,
            scale_down_delay: Duration::ZERO,
            scale_to_zero: false,
            idle_before_zero: DEFAULT_IDLE_BEFORE_ZERO,
            target_burst_capacity: DEFAULT_TARGET_BURST_CAPACITY,
            container_concurrency,
            queue_size: DEFAULT_QUEUE_SIZE,
            max_concurrency: None,
        }
    }

    /// Reads a function's policy from its labels and annotations; the template decides the
    /// concurrency when the spec sets none. The error names the key and the value.
    pub fn from_spec(spec: &FunctionSpec, template: Template) -> Result<ScalePolicy, String> {
        ScalePolicy::parse(spec, template).map_err(|e| e.to_string())
    }

    /// As [`ScalePolicy::from_spec`], with an error that says where the key is, for callers
    /// that point at a line of a file. Whether a spec is valid does not depend on the
    /// template.
    pub fn parse(spec: &FunctionSpec, template: Template) -> Result<ScalePolicy, PolicyError> {
        let cc = match spec.concurrency {
            0 => template.default_concurrency(),
            n => n,
        };
        let keys = Keys(spec);
        let mut p = ScalePolicy::for_concurrency(cc);

        if let Some(f) = keys.get(&[KN_CLASS])? {
            match f.value {
                "kpa.autoscaling.knative.dev" | "kpa" => {}
                "hpa.autoscaling.knative.dev" | "hpa" => {
                    return Err(f.err(format!(
                        "{:?}: skyfri scales with the Knative Pod Autoscaler only; remove the \
                         key or set \"kpa.autoscaling.knative.dev\"",
                        f.value
                    )))
                }
                other => {
                    return Err(f.err(format!(
                        "{other:?} is not an autoscaler class skyfri has: use \
                         \"kpa.autoscaling.knative.dev\""
                    )))
                }
            }
        }

        let of_metric = keys.get(&[OF_TYPE])?.map(openfaas_metric).transpose()?;
        let kn_metric = keys.get(&[KN_METRIC])?.map(knative_metric).transpose()?;
        p.metric = merge(of_metric, kn_metric)?.map_or(Metric::Concurrency, |(m, _)| m);

        let of_target = keys.get(&[OF_TARGET])?.map(target).transpose()?;
        let kn_target = keys.get(&[KN_TARGET])?.map(target).transpose()?;
        p.target = match merge(of_target, kn_target)? {
            // A replica never gets more than it can take (Knative).
            Some((t, _)) if p.metric == Metric::Concurrency && cc != 0 => t.min(f64::from(cc)),
            Some((t, _)) => t,
            None => default_target(p.metric, cc),
        };

        let of_util = keys
            .get(&[OF_TARGET_PROPORTION])?
            .map(|f| {
                let v = number(&f)?;
                if v <= 0.0 || v > 1.0 {
                    return Err(f.err(format!(
                        "{:?} is not a fraction of the target: use a number above 0 and at \
                         most 1, such as 0.7",
                        f.value
                    )));
                }
                Ok((v, f))
            })
            .transpose()?;
        let kn_util = keys
            .get(KN_UTILIZATION)?
            .map(|f| percentage(f, 1.0, 100.0).map(|(v, f)| (v / 100.0, f)))
            .transpose()?;
        if let Some((u, _)) = merge(of_util, kn_util)? {
            p.target_utilization = u;
        }

        if let Some(f) = keys.get(&[KN_WINDOW])? {
            p.stable_window = whole_seconds(&f, WINDOW_MIN, WINDOW_MAX)?;
        }
        if let Some(f) = keys.get(KN_PANIC_WINDOW)? {
            p.panic_window_percentage = percentage(f, 1.0, 100.0)?.0;
        }
        if let Some(f) = keys.get(KN_PANIC_THRESHOLD)? {
            p.panic_threshold = percentage(f, 110.0, 1000.0)?.0 / 100.0;
        }
        if let Some(f) = keys.get(KN_SCALE_DOWN_DELAY)? {
            p.scale_down_delay = whole_seconds(&f, Duration::ZERO, WINDOW_MAX)?;
        }
        if let Some(f) = keys.get(KN_TARGET_BURST_CAPACITY)? {
            let v = number(&f)?;
            if v < 0.0 && v != -1.0 {
                return Err(f.err(format!(
                    "{:?} is not a burst capacity: use 0 or more, or -1 for unlimited",
                    f.value
                )));
            }
            p.target_burst_capacity = v;
        }

        if let Some(f) = keys.get(&[QUEUE_SIZE_KEY])? {
            p.queue_size = match f.value.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(f.err(format!(
                        "{:?} is not a queue size: use a whole number, at least 1 (a call at \
                         zero waits in it for its replica)",
                        f.value
                    )))
                }
            };
        }

        // Replica bounds and scale to zero.
        let of_min = keys.get(&[OF_MIN])?.map(replicas).transpose()?;
        let kn_min = keys.get(KN_MIN)?.map(replicas).transpose()?;
        let min = merge(of_min, kn_min)?;
        let zero = keys.get(&[OF_ZERO])?.map(boolean).transpose()?;
        p.scale_to_zero = match (&zero, &min) {
            (Some((false, z)), Some((0, m))) => {
                return Err(z.err(format!(
                    "\"false\" contradicts {m}, which lets the function scale to zero: set one \
                     of them"
                )))
            }
            (Some((z, _)), _) => *z,
            (None, Some((m, _))) => *m == 0,
            (None, None) => false,
        };
        p.min = min.as_ref().map_or(DEFAULT_MIN_SCALE, |(m, _)| *m).max(1);

        let initial = keys.get(KN_INITIAL)?.map(replicas).transpose()?;
        if let Some((i, _)) = &initial {
            p.initial = *i;
        }

        let of_max = keys
            .get(&[OF_MAX])?
            .map(|f| match replicas(f)? {
                (0, f) => Err(f.err(
                    "\"0\": the maximum must be at least 1 (leave the key out for the default \
                     of 20, or set autoscaling.knative.dev/max-scale: \"0\" for no limit)",
                )),
                ok => Ok(ok),
            })
            .transpose()?;
        let kn_max = keys
            .get(KN_MAX)?
            .map(|f| {
                replicas(f).map(|(n, f)| match n {
                    0 => (UNLIMITED_MAX_SCALE.max(p.min), f),
                    n => (n, f),
                })
            })
            .transpose()?;
        match merge(of_max, kn_max)? {
            Some((max, f)) => {
                if max < p.min {
                    let by = min
                        .as_ref()
                        .map_or(String::new(), |(_, m)| format!(" ({m})"));
                    return Err(f.err(format!(
                        "{:?} is less than the minimum of {}{by}",
                        f.value, p.min
                    )));
                }
                if let Some((i, fi)) = &initial {
                    if *i > max {
                        return Err(fi.err(format!(
                            "{:?} is more than the maximum of {max} ({f})",
                            fi.value
                        )));
                    }
                }
                p.max = max;
            }
            None => p.max = DEFAULT_MAX_SCALE.max(p.min).max(p.initial),
        }

        if let Some(f) = keys.get(&[MAX_CONCURRENCY_KEY])? {
            let cap = match f.value.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(f.err(format!(
                        "{:?} is not a concurrency cap: use a whole number, at least 1 (the \
                         most calls in flight across all replicas; leave the key out for no cap)",
                        f.value
                    )))
                }
            };
            p.max_concurrency = Some(cap);
            // Replicas beyond those the cap keeps busy would never get a call.
            if cc != 0 {
                p.max = p.max.min(cap.div_ceil(cc)).max(p.min);
            }
        }

        let of_idle = keys
            .get(&[OF_ZERO_DURATION])?
            .map(|f| {
                let d = duration(&f)?;
                if d < Duration::from_secs(1) {
                    return Err(f.err(format!(
                        "{:?}: the idle time before zero must be at least 1s",
                        f.value
                    )));
                }
                Ok((d, f))
            })
            .transpose()?;
        let kn_idle = keys
            .get(KN_RETENTION)?
            .map(|f| {
                let d = duration(&f)?;
                if d > WINDOW_MAX {
                    return Err(f.err(format!("{:?} is longer than 1h", f.value)));
                }
                // Knative decides zero after a stable window without traffic, then keeps
                // the last replica for the retention period.
                Ok((p.stable_window + d, f))
            })
            .transpose()?;
        if let Some((d, _)) = merge(of_idle, kn_idle)? {
            p.idle_before_zero = d;
        }

        Ok(p)
    }

    /// Replicas to start with at deploy: `max(min, initial)`, or 0 for a function that may
    /// scale to zero and asks for an initial scale of 0.
    pub fn initial_replicas(&self) -> u32 {
        if self.scale_to_zero && self.initial == 0 {
            0
        } else {
            self.min.max(self.initial).min(self.max.max(1))
        }
    }

    /// Time without traffic before a `scale_to_zero` function goes to zero: the idle time,
    /// plus the scale-down delay, which holds the last replica as it holds any other.
    pub fn time_to_zero(&self) -> Duration {
        self.idle_before_zero + self.scale_down_delay
    }

    /// The per-replica value the autoscaler aims at: `max(0.01, target x utilisation)`.
    pub fn effective_target(&self) -> f64 {
        (self.target * self.target_utilization).max(MIN_TARGET)
    }

    /// The panic window: `panic_window_percentage` of the stable window.
    pub fn panic_window(&self) -> Duration {
        Duration::try_from_secs_f64(
            self.stable_window.as_secs_f64() * self.panic_window_percentage / 100.0,
        )
        .unwrap_or(self.stable_window)
    }
}

fn default_target(metric: Metric, container_concurrency: u32) -> f64 {
    match (metric, container_concurrency) {
        (Metric::Rps, _) => DEFAULT_RPS_TARGET,
        (Metric::Concurrency, 0) => DEFAULT_CONCURRENCY_TARGET,
        (Metric::Concurrency, n) => f64::from(n),
    }
}

const OF_MIN: &str = "com.openfaas.scale.min";
const OF_MAX: &str = "com.openfaas.scale.max";
const OF_TARGET: &str = "com.openfaas.scale.target";
const OF_TYPE: &str = "com.openfaas.scale.type";
const OF_TARGET_PROPORTION: &str = "com.openfaas.scale.target-proportion";
const OF_ZERO: &str = "com.openfaas.scale.zero";
const OF_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";

/// The key that sets [`ScalePolicy::queue_size`].
pub const QUEUE_SIZE_KEY: &str = "com.skyfri.queue-size";
/// The key that sets [`ScalePolicy::max_concurrency`].
pub const MAX_CONCURRENCY_KEY: &str = "com.skyfri.max-concurrency";

const KN_CLASS: &str = "autoscaling.knative.dev/class";
const KN_METRIC: &str = "autoscaling.knative.dev/metric";
const KN_TARGET: &str = "autoscaling.knative.dev/target";
const KN_WINDOW: &str = "autoscaling.knative.dev/window";
const KN_MIN: &[&str] = &[
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/minScale",
];
const KN_MAX: &[&str] = &[
    "autoscaling.knative.dev/max-scale",
    "autoscaling.knative.dev/maxScale",
];
const KN_INITIAL: &[&str] = &[
    "autoscaling.knative.dev/initial-scale",
    "autoscaling.knative.dev/initialScale",
];
const KN_UTILIZATION: &[&str] = &[
    "autoscaling.knative.dev/target-utilization-percentage",
    "autoscaling.knative.dev/targetUtilizationPercentage",
];
const KN_PANIC_WINDOW: &[&str] = &[
    "autoscaling.knative.dev/panic-window-percentage",
    "autoscaling.knative.dev/panicWindowPercentage",
];
const KN_PANIC_THRESHOLD: &[&str] = &[
    "autoscaling.knative.dev/panic-threshold-percentage",
    "autoscaling.knative.dev/panicThresholdPercentage",
];
const KN_SCALE_DOWN_DELAY: &[&str] = &[
    "autoscaling.knative.dev/scale-down-delay",
    "autoscaling.knative.dev/scaleDownDelay",
];
const KN_RETENTION: &[&str] = &[
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
    "autoscaling.knative.dev/scaleToZeroPodRetentionPeriod",
];
const KN_TARGET_BURST_CAPACITY: &[&str] = &[
    "autoscaling.knative.dev/target-burst-capacity",
    "autoscaling.knative.dev/targetBurstCapacity",
];

/// Where a key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    Labels,
    Annotations,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::Labels => "labels",
            Place::Annotations => "annotations",
        })
    }
}

/// A scaling key with a bad value. Displays as
/// `annotations.autoscaling.knative.dev/min-scale: "x" is not a number of replicas`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}.{key}: {message}")]
pub struct PolicyError {
    pub place: Place,
    pub key: String,
    /// Says what is wrong with the value, quoting it, and what to do.
    pub message: String,
}

/// One key found on a spec, with its trimmed value.
struct Found<'a> {
    key: &'static str,
    place: Place,
    value: &'a str,
}

impl Found<'_> {
    fn err(&self, message: impl Into<String>) -> PolicyError {
        PolicyError {
            place: self.place,
            key: self.key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} = {:?}", self.place, self.key, self.value)
    }
}

struct Keys<'a>(&'a FunctionSpec);

impl<'a> Keys<'a> {
    /// The value of the first of `names` (one key's spellings) set in the annotations or the
    /// labels; all that are set must agree.
    fn get(&self, names: &[&'static str]) -> Result<Option<Found<'a>>, PolicyError> {
        let mut first: Option<Found<'a>> = None;
        for &key in names {
            for (place, map) in [
                (Place::Annotations, &self.0.annotations),
                (Place::Labels, &self.0.labels),
            ] {
                let Some(value) = map.get(key) else { continue };
                let found = Found {
                    key,
                    place,
                    value: value.trim(),
                };
                match &first {
                    None => first = Some(found),
                    Some(f) if f.value != found.value => {
                        return Err(found.err(format!(
                            "{:?} disagrees with {f}: keep one of them",
                            found.value
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(first)
    }
}

/// One field set in both vocabularies: both must mean the same.
fn merge<'a, T: PartialEq>(
    openfaas: Option<(T, Found<'a>)>,
    knative: Option<(T, Found<'a>)>,
) -> Result<Option<(T, Found<'a>)>, PolicyError> {
    match (openfaas, knative) {
        (Some((a, fa)), Some((b, fb))) if a != b => Err(fb.err(format!(
            "{:?} disagrees with {fa}: keep one of them",
            fb.value
        ))),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

fn number(f: &Found<'_>) -> Result<f64, PolicyError> {
    f.value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| f.err(format!("{:?} is not a number", f.value)))
}

fn percentage(f: Found<'_>, lo: f64, hi: f64) -> Result<(f64, Found<'_>), PolicyError> {
    let v = number(&f)?;
    if v < lo || v > hi {
        return Err(f.err(format!(
            "{:?} is out of range: use a percentage from {lo} to {hi}",
            f.value
        )));
    }
    Ok((v, f))
}

fn target(f: Found<'_>) -> Result<(f64, Found<'_>), PolicyError> {
    let v = number(&f)?;
    if v < MIN_TARGET {
        return Err(f.err(format!(
            "{:?}: the target per replica must be more than 0 (at least {MIN_TARGET})",
            f.value
        )));
    }
    Ok((v, f))
}

fn replicas(f: Found<'_>) -> Result<(u32, Found<'_>), PolicyError> {
    let n = f.value.parse::<u32>().map_err(|_| {
        f.err(format!(
            "{:?} is not a number of replicas: use a whole number, 0 or more",
            f.value
        ))
    })?;
    Ok((n, f))
}

fn boolean(f: Found<'_>) -> Result<(bool, Found<'_>), PolicyError> {
    // Go's strconv.ParseBool, which OpenFaaS uses.
    let b = match f.value {
        "true" | "True" | "TRUE" | "t" | "T" | "1" => true,
        "false" | "False" | "FALSE" | "f" | "F" | "0" => false,
        _ => {
            return Err(f.err(format!(
                "{:?} is not a boolean: use \"true\" or \"false\"",
                f.value
            )))
        }
    };
    Ok((b, f))
}

fn duration(f: &Found<'_>) -> Result<Duration, PolicyError> {
    parse_duration(f.value).map_err(|e| f.err(e))
}

fn whole_seconds(f: &Found<'_>, lo: Duration, hi: Duration) -> Result<Duration, PolicyError> {
    let d = duration(f)?;
    if d < lo || d > hi {
        return Err(f.err(format!(
            "{:?} is out of range: use {}s to {}s",
            f.value,
            lo.as_secs(),
            hi.as_secs()
        )));
    }
    if d.subsec_nanos() != 0 {
        return Err(f.err(format!("{:?}: use whole seconds", f.value)));
    }
    Ok(d)
}

fn openfaas_metric(f: Found<'_>) -> Result<(Metric, Found<'_>), PolicyError> {
    let m = match f.value {
        "capacity" => Metric::Concurrency,
        "rps" => Metric::Rps,
        "cpu" => {
            return Err(f.err(
                "\"cpu\": skyfri scales on capacity (calls in flight) or rps, not on CPU; \
                 use \"capacity\" or \"rps\"",
            ))
        }
        other => {
            return Err(f.err(format!(
                "{other:?} is not a scaling type: use \"capacity\" (calls in flight) or \"rps\""
            )))
        }
    };
    Ok((m, f))
}

fn knative_metric(f: Found<'_>) -> Result<(Metric, Found<'_>), PolicyError> {
    let m = match f.value {
        "concurrency" => Metric::Concurrency,
        "rps" => Metric::Rps,
        "cpu" | "memory" => {
            return Err(f.err(format!(
                "{:?} needs Kubernetes' HPA, which skyfri does not have: the KPA scales on \
                 \"concurrency\" or \"rps\"",
                f.value
            )))
        }
        other => {
            return Err(f.err(format!(
                "{other:?} is not a metric: use \"concurrency\" or \"rps\""
            )))
        }
    };
    Ok((m, f))
}
