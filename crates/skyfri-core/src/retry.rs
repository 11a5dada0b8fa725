//! Async calls: how often a failed call is tried again and how long it waits in between
//! ([`RetryPolicy`], OpenFaaS Pro's `com.openfaas.retry.*` keys and defaults), and how many
//! calls of one function run at once ([`async_concurrency`]). Pure: the caller passes the
//! attempt, the status, the `Retry-After` and a random number generator, and applies the
//! verdict.
//!
//! | key (annotation or label) | meaning | default |
//! |---|---|---|
//! | `com.openfaas.retry.attempts` | runs at most, the first included (`1` = no retries) | 10 |
//! | `com.openfaas.retry.codes` | statuses that are tried again, comma-separated, 400-599 | 408,429,500,502,503,504 |
//! | `com.openfaas.retry.min_wait` | wait before the first retry (`0s` allowed) | 10s |
//! | `com.openfaas.retry.max_wait` | longest wait between two runs, at least `min_wait`, at most 24h | 120s |
//! | `com.skyfri.async.concurrency` | calls of the function run at once, 1 to 1000 | 10 |
//!
//! Durations are seconds (`30`) or Go durations (`500ms`, `10s`, `2m`). A key set both as
//! an annotation and as a label must carry one value. A bad value is an error naming the key,
//! and a manifest with one is refused at deploy.
//!
//! # Waits
//!
//! Run `n` failed with a retryable status: the wait before run `n + 1` is exponential,
//! `min_wait x 2^(n-1)` capped at `max_wait`, with "equal jitter" (a uniformly random point
//! in the upper half of that value, so that calls that failed together do not come back
//! together, yet every wait keeps half its backoff), and never below `min_wait`. A
//! `Retry-After` from the function (seconds, or an HTTP date) replaces the computed wait: the
//! function knows best when it can take the call again. It is still at least `min_wait`, and
//! at most an hour ([`RETRY_AFTER_CAP`]) so that a typo cannot park a call for days.
//!
//! Platform failures are statuses too: a replica that crashed or closed the connection is a
//! 502, a call that found no replica with room in its timeout a 503, a full queue a 429, a
//! timeout a 504; all are in the default list.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::function::FunctionSpec;
use crate::quantity::parse_duration;
use crate::scaling::{Place, PolicyError};

pub const ATTEMPTS: &str = "com.openfaas.retry.attempts";
pub const CODES: &str = "com.openfaas.retry.codes";
pub const MIN_WAIT: &str = "com.openfaas.retry.min_wait";
pub const MAX_WAIT: &str = "com.openfaas.retry.max_wait";
/// skyfri's own key: OpenFaaS CE runs one async call at a time, Pro sets it per queue.
pub const ASYNC_CONCURRENCY: &str = "com.skyfri.async.concurrency";

/// OpenFaaS Pro's `maxRetryAttempts`.
pub const DEFAULT_ATTEMPTS: u32 = 10;
/// OpenFaaS Pro's `httpRetryCodes`, with 503 (no replica with room) added.
pub const DEFAULT_CODES: [u16; 6] = [408, 429, 500, 502, 503, 504];
/// OpenFaaS Pro's `initialRetryWait`.
pub const DEFAULT_MIN_WAIT: Duration = Duration::from_secs(10);
/// OpenFaaS Pro's `maxRetryWait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(120);
/// Calls of one function run at once unless [`ASYNC_CONCURRENCY`] says otherwise.
pub const DEFAULT_ASYNC_CONCURRENCY: u32 = 10;
/// The most [`ASYNC_CONCURRENCY`] may ask for.
pub const MAX_ASYNC_CONCURRENCY: u32 = 1000;
/// The longest `Retry-After` honoured.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// The longest `max_wait` (and `min_wait`) accepted.
const WAIT_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// How one function's async calls are retried. Build it with [`RetryPolicy::from_spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs at most, the first included; at least 1.
    pub attempts: u32,
    /// Statuses worth another run.
    pub codes: BTreeSet<u16>,
    pub min_wait: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            codes: DEFAULT_CODES.into_iter().collect(),
            min_wait: DEFAULT_MIN_WAIT,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

/// What to do with a call after one of its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Finished: a success, or a status that another run would not change.
    Done,
    /// Run it again after this long.
    Retry(Duration),
    /// The status was worth a retry, but this was the last attempt.
    OutOfAttempts,
}

impl RetryPolicy {
    /// Reads the policy from a function's annotations and labels; the error names the key
    /// and the value.
    pub fn from_spec(spec: &FunctionSpec) -> Result<RetryPolicy, String> {
        RetryPolicy::parse(spec).map_err(|e| e.to_string())
    }

    /// As [`RetryPolicy::from_spec`], with an error that says where the key is.
    pub fn parse(spec: &FunctionSpec) -> Result<RetryPolicy, PolicyError> {
        let mut p = RetryPolicy::default();
        if let Some(f) = find(spec, ATTEMPTS)? {
            p.attempts = match f.value.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(f.err(format!(
                        "{:?} is not a number of attempts: use a whole number, at least 1 \
                         (1 = no retries)",
                        f.value
                    )))
                }
            };
        }
        if let Some(f) = find(spec, CODES)? {
            p.codes = codes(&f)?;
        }
        if let Some(f) = find(spec, MIN_WAIT)? {
            p.min_wait = wait(&f)?;
        }
        if let Some(f) = find(spec, MAX_WAIT)? {
            p.max_wait = wait(&f)?;
            if p.max_wait < p.min_wait {
                return Err(f.err(format!(
                    "{:?} is shorter than the minimum wait of {:?} ({MIN_WAIT})",
                    f.value, p.min_wait
                )));
            }
        } else if p.max_wait < p.min_wait {
            // Only min_wait is set, above the default maximum: waits are min_wait.
            p.max_wait = p.min_wait;
        }
        Ok(p)
    }

    /// Whether a run that answered `status` is worth another run.
    pub fn retries(&self, status: u16) -> bool {
        self.codes.contains(&status)
    }

    /// What to do after run `attempt` (1 for the first) answered `status`, with the
    /// function's `Retry-After`, if any.
    pub fn decide(
        &self,
        attempt: u32,
        status: u16,
        retry_after: Option<Duration>,
        rng: &mut (impl rand::Rng + ?Sized),
    ) -> Verdict {
        self.decide_with(attempt, status, retry_after, rng.random::<f64>())
    }

    /// [`RetryPolicy::decide`] with the random draw (in `[0, 1)`) given.
    pub fn decide_with(
        &self,
        attempt: u32,
        status: u16,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Verdict {
        if !self.retries(status) {
            Verdict::Done
        } else if attempt >= self.attempts {
            Verdict::OutOfAttempts
        } else {
            Verdict::Retry(self.backoff_with(attempt, retry_after, jitter))
        }
    }

    /// The wait after run `attempt` (1 for the first) failed; see the module's "Waits".
    pub fn backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut (impl rand::Rng + ?Sized),
    ) -> Duration {
        self.backoff_with(attempt, retry_after, rng.random::<f64>())
    }

    /// [`RetryPolicy::backoff`] with the random draw (in `[0, 1)`, clamped) given.
    pub fn backoff_with(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        if let Some(asked) = retry_after {
            return asked
                .min(RETRY_AFTER_CAP.max(self.min_wait))
                .max(self.min_wait);
        }
        let doublings = attempt.saturating_sub(1);
        let exponential = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.min_wait.checked_mul(factor))
            .unwrap_or(self.max_wait);
        let capped = exponential.min(self.max_wait);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = capped / 2;
        (half + half.mul_f64(jitter)).max(self.min_wait)
    }
}

/// Calls of a function that run at once ([`ASYNC_CONCURRENCY`]).
pub fn async_concurrency(spec: &FunctionSpec) -> Result<u32, PolicyError> {
    let Some(f) = find(spec, ASYNC_CONCURRENCY)? else {
        return Ok(DEFAULT_ASYNC_CONCURRENCY);
    };
    match f.value.parse::<u32>() {
        Ok(n) if (1..=MAX_ASYNC_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(f.err(format!(
            "{:?} is not a number of calls at once: use a whole number from 1 to \
             {MAX_ASYNC_CONCURRENCY}",
            f.value
        ))),
    }
}

/// Checks every async key of a spec, for deploys: the first error found.
pub fn validate(spec: &FunctionSpec) -> Result<(), PolicyError> {
    RetryPolicy::parse(spec)?;
    async_concurrency(spec)?;
    Ok(())
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date in the past is no wait).
/// `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Beyond u64 seconds is "a very long time", which the cap turns into an hour.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One key found on a spec.
pub(crate) struct Found<'a> {
    pub(crate) key: &'static str,
    pub(crate) place: Place,
    pub(crate) value: &'a str,
}

impl Found<'_> {
    pub(crate) fn err(&self, message: impl Into<String>) -> PolicyError {
        PolicyError {
            place: self.place,
            key: self.key.to_string(),
            message: message.into(),
        }
    }
}

/// The key's value from the annotations, else the labels; both set must agree.
pub(crate) fn find<'a>(
    spec: &'a FunctionSpec,
    key: &'static str,
) -> Result<Option<Found<'a>>, PolicyError> {
    let annotation = spec.annotations.get(key).map(|v| Found {
        key,
        place: Place::Annotations,
        value: v.trim(),
    });
    let label = spec.labels.get(key).map(|v| Found {
        key,
        place: Place::Labels,
        value: v.trim(),
    });
    match (annotation, label) {
        (Some(a), Some(l)) if a.value != l.value => Err(l.err(format!(
            "{:?} disagrees with annotations.{key} = {:?}: keep one of them",
            l.value, a.value
        ))),
        (Some(a), _) => Ok(Some(a)),
        (None, l) => Ok(l),
    }
}

fn codes(f: &Found<'_>) -> Result<BTreeSet<u16>, PolicyError> {
    let mut out = BTreeSet::new();
    for part in f.value.split(',').map(str::trim) {
        match part.parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => {
                out.insert(code);
            }
            _ => {
                return Err(f.err(format!(
                    "{part:?} in {:?} is not an HTTP error status: use a comma-separated list \
                     of statuses from 400 to 599, such as \"429,503\" (to turn retries off, \
                     set {ATTEMPTS} to 1)",
                    f.value
                )))
            }
        }
    }
    Ok(out)
}

fn wait(f: &Found<'_>) -> Result<Duration, PolicyError> {
    let d = parse_duration(f.value).map_err(|e| f.err(e))?;
    if d > WAIT_LIMIT {
        return Err(f.err(format!("{:?} is longer than 24h", f.value)));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{spec, Keys};

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn defaults_are_openfaas_pros() {
        let p = RetryPolicy::from_spec(&spec(&[], &[])).expect("defaults");
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.attempts, 10);
        assert_eq!(
            p.codes.iter().copied().collect::<Vec<_>>(),
            [408, 429, 500, 502, 503, 504]
        );
        assert_eq!((p.min_wait, p.max_wait), (S(10), S(120)));
        assert_eq!(async_concurrency(&spec(&[], &[])), Ok(10));
    }

    #[test]
    fn good_values() {
        let cases: &[(Keys, Keys, RetryPolicy)] = &[
            (
                &[(ATTEMPTS, "3"), (MIN_WAIT, "100ms"), (MAX_WAIT, "1s")],
                &[],
                RetryPolicy {
                    attempts: 3,
                    min_wait: MS(100),
                    max_wait: S(1),
                    ..RetryPolicy::default()
                },
            ),
            (
                &[],
                &[(CODES, " 429 , 503"), (ATTEMPTS, "1")],
                RetryPolicy {
                    attempts: 1,
                    codes: [429, 503].into_iter().collect(),
                    ..RetryPolicy::default()
                },
            ),
            // The same value in both places is fine.
            (
                &[(MIN_WAIT, "0s")],
                &[(MIN_WAIT, "0s")],
                RetryPolicy {
                    min_wait: Duration::ZERO,
                    ..RetryPolicy::default()
                },
            ),
            // A minimum above the default maximum raises the maximum.
            (
                &[(MIN_WAIT, "5m")],
                &[],
                RetryPolicy {
                    min_wait: S(300),
                    max_wait: S(300),
                    ..RetryPolicy::default()
                },
            ),
            (
                &[(MAX_WAIT, "30")],
                &[],
                RetryPolicy {
                    max_wait: S(30),
                    ..RetryPolicy::default()
                },
            ),
        ];
        for (annotations, labels, want) in cases {
            let got = RetryPolicy::parse(&spec(annotations, labels));
            assert_eq!(got.as_ref(), Ok(want), "{annotations:?} {labels:?}");
        }
        let c = |v: &str| async_concurrency(&spec(&[], &[(ASYNC_CONCURRENCY, v)]));
        assert_eq!(c("1"), Ok(1));
        assert_eq!(c("1000"), Ok(1000));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(Keys, Keys, &str, &str)] = &[
            (
                &[(ATTEMPTS, "0")],
                &[],
                "annotations.com.openfaas.retry.attempts",
                "at least 1",
            ),
            (
                &[(ATTEMPTS, "ten")],
                &[],
                "com.openfaas.retry.attempts",
                "\"ten\"",
            ),
            (
                &[(ATTEMPTS, "-1")],
                &[],
                "com.openfaas.retry.attempts",
                "\"-1\"",
            ),
            (
                &[],
                &[(CODES, "429,abc")],
                "labels.com.openfaas.retry.codes",
                "\"abc\"",
            ),
            (
                &[(CODES, "200")],
                &[],
                "com.openfaas.retry.codes",
                "400 to 599",
            ),
            (
                &[(CODES, "")],
                &[],
                "com.openfaas.retry.codes",
                "comma-separated",
            ),
            (
                &[(CODES, "429,,503")],
                &[],
                "com.openfaas.retry.codes",
                "\"\"",
            ),
            (
                &[(MIN_WAIT, "soon")],
                &[],
                "com.openfaas.retry.min_wait",
                "not a duration",
            ),
            (
                &[(MIN_WAIT, "-1s")],
                &[],
                "com.openfaas.retry.min_wait",
                "not a duration",
            ),
            (
                &[(MAX_WAIT, "48h")],
                &[],
                "com.openfaas.retry.max_wait",
                "longer than 24h",
            ),
            (
                &[(MIN_WAIT, "10s"), (MAX_WAIT, "1s")],
                &[],
                "com.openfaas.retry.max_wait",
                "shorter than the minimum",
            ),
            (
                &[(ATTEMPTS, "3")],
                &[(ATTEMPTS, "4")],
                "labels.com.openfaas.retry.attempts",
                "disagrees",
            ),
        ];
        for (annotations, labels, key, needle) in cases {
            let err = match validate(&spec(annotations, labels)) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{annotations:?} {labels:?} accepted"),
            };
            assert!(err.contains(key), "{err}: no {key}");
            assert!(err.contains(needle), "{err}: no {needle}");
        }
        for bad in ["0", "1001", "many", "-2", ""] {
            let err = validate(&spec(&[(ASYNC_CONCURRENCY, bad)], &[]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(ASYNC_CONCURRENCY), "{bad:?}: {err}");
        }
    }

    #[test]
    fn backoff_is_exponential_capped_with_equal_jitter() {
        let p = RetryPolicy {
            min_wait: MS(100),
            max_wait: S(1),
            ..RetryPolicy::default()
        };
        // (attempt, retry_after, jitter, wait)
        let cases: &[(u32, Option<Duration>, f64, Duration)] = &[
            // Attempt 1: half of min_wait at the least, raised to min_wait.
            (1, None, 0.0, MS(100)),
            (1, None, 0.999, MS(100)),
            // Attempt 2: 200 ms, jittered over its upper half.
            (2, None, 0.0, MS(100)),
            (2, None, 0.5, MS(150)),
            (2, None, 1.0, MS(200)),
            (3, None, 0.0, MS(200)),
            (3, None, 1.0, MS(400)),
            (4, None, 1.0, MS(800)),
            // 1.6 s capped at max_wait.
            (5, None, 1.0, S(1)),
            (5, None, 0.0, MS(500)),
            (60, None, 1.0, S(1)),
            (u32::MAX, None, 0.5, MS(750)),
            // A jitter outside [0, 1] is clamped.
            (2, None, 7.0, MS(200)),
            (2, None, f64::NAN, MS(100)),
            // Retry-After replaces the backoff, at least min_wait, at most an hour.
            (1, Some(S(3)), 0.5, S(3)),
            (9, Some(S(3)), 0.5, S(3)),
            (1, Some(Duration::ZERO), 0.5, MS(100)),
            (1, Some(S(86_400)), 0.5, RETRY_AFTER_CAP),
        ];
        for (attempt, retry_after, jitter, want) in cases {
            assert_eq!(
                p.backoff_with(*attempt, *retry_after, *jitter),
                *want,
                "attempt {attempt}, retry-after {retry_after:?}, jitter {jitter}"
            );
        }
        // Zero min_wait: no wait at all unless asked for.
        let eager = RetryPolicy {
            min_wait: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(eager.backoff_with(5, None, 0.5), Duration::ZERO);
        assert_eq!(eager.backoff_with(5, Some(S(2)), 0.5), S(2));
        // The drawn jitter stays within [half, full] of the exponential value.
        let mut rng = rand::rng();
        for _ in 0..100 {
            let w = p.backoff(3, None, &mut rng);
            assert!(w >= MS(200) && w <= MS(400), "{w:?}");
        }
    }

    #[test]
    fn verdicts() {
        let p = RetryPolicy {
            attempts: 3,
            min_wait: MS(100),
            max_wait: S(1),
            ..RetryPolicy::default()
        };
        let cases: &[(u32, u16, Verdict)] = &[
            (1, 200, Verdict::Done),
            (1, 404, Verdict::Done),
            (3, 400, Verdict::Done),
            (1, 500, Verdict::Retry(MS(100))),
            (2, 502, Verdict::Retry(MS(150))),
            (2, 429, Verdict::Retry(MS(150))),
            (3, 503, Verdict::OutOfAttempts),
            (7, 504, Verdict::OutOfAttempts),
        ];
        for (attempt, status, want) in cases {
            assert_eq!(
                p.decide_with(*attempt, *status, None, 0.5),
                *want,
                "attempt {attempt}, status {status}"
            );
        }
        let once = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(once.decide_with(1, 500, None, 0.5), Verdict::OutOfAttempts);
        let mut rng = rand::rng();
        assert_eq!(p.decide(1, 201, None, &mut rng), Verdict::Done);
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + S(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let cases: &[(&str, Option<Duration>)] = &[
            ("120", Some(S(120))),
            (" 0 ", Some(Duration::ZERO)),
            ("99999999999999999999999", Some(S(u64::MAX))),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(S(30))),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(S(60))),
            ("Wed Oct 21 07:28:10 2015", Some(S(10))),
            // In the past: no wait.
            ("Tue, 20 Oct 2015 07:28:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), *want, "{value:?}");
        }
    }
}
