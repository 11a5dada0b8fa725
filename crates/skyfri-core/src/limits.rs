//! Per-function call limits ([`CallLimits`]): the largest request body a function takes and
//! how many calls per second it admits, read from its annotations (or labels). Pure: the
//! gateway enforces them and bounds them by its own flags.
//!
//! | key (annotation or label) | meaning | default |
//! |---|---|---|
//! | `com.skyfri.max-body` | largest request body: bytes (`65536`) or a quantity (`512Ki`, `1Mi`, `10M`), at least 1 byte; only lowers the gateway's `--max-body` | the gateway's `--max-body` |
//! | `com.skyfri.rate` | calls per second admitted (token bucket refill), a positive number (`0.5` = one every 2 s), at most 1,000,000 | no limit |
//! | `com.skyfri.burst` | calls admitted at once after a quiet spell (bucket size), a whole number from 1 to 1,000,000; needs `com.skyfri.rate` | the rate rounded up |
//!
//! A key set both as an annotation and as a label must carry one value; a bad value is an
//! error naming the key, and a manifest with one is refused at deploy.

use crate::function::FunctionSpec;
use crate::quantity::parse_memory;
use crate::retry::find;
use crate::scaling::PolicyError;

pub const MAX_BODY_KEY: &str = "com.skyfri.max-body";
pub const RATE_KEY: &str = "com.skyfri.rate";
pub const BURST_KEY: &str = "com.skyfri.burst";

/// The most [`RATE_KEY`] and [`BURST_KEY`] may ask for.
pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_BURST: u32 = 1_000_000;

/// A token bucket's settings: `per_second` tokens come back each second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Checks settings given on a command line (`what` names them in the error).
    pub fn new(per_second: f64, burst: u32, what: &str) -> Result<Rate, String> {
        if !(per_second.is_finite() && per_second > 0.0 && per_second <= MAX_RATE) {
            return Err(format!(
                "{what}: {per_second} is not a rate: use a positive number of calls per second, at most {MAX_RATE}"
            ));
        }
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(format!(
                "{what}: a burst of {burst} is not allowed: use a whole number from 1 to {MAX_BURST}"
            ));
        }
        Ok(Rate { per_second, burst })
    }

    /// The burst when none is given: the calls of one second, at least 1.
    pub fn default_burst(per_second: f64) -> u32 {
        per_second.ceil().clamp(1.0, f64::from(MAX_BURST)) as u32
    }
}

/// One function's call limits. Build it with [`CallLimits::from_spec`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallLimits {
    /// Largest request body in bytes; `None`: the gateway's.
    pub max_body: Option<u64>,
    /// Calls admitted per second; `None`: no limit.
    pub rate: Option<Rate>,
}

impl CallLimits {
    /// Reads the limits from a function's annotations and labels; the error names the key
    /// and the value.
    pub fn from_spec(spec: &FunctionSpec) -> Result<CallLimits, String> {
        CallLimits::parse(spec).map_err(|e| e.to_string())
    }

    /// As [`CallLimits::from_spec`], with an error that says where the key is.
    pub fn parse(spec: &FunctionSpec) -> Result<CallLimits, PolicyError> {
        let mut limits = CallLimits::default();
        if let Some(f) = find(spec, MAX_BODY_KEY)? {
            let bytes = parse_memory(f.value).map_err(|_| {
                f.err(format!(
                    "{:?} is not a size: use bytes (65536) or a quantity such as 512Ki, 1Mi or 10M",
                    f.value
                ))
            })?;
            if bytes == 0 {
                return Err(f.err(format!(
                    "{:?} allows no body at all: use at least 1 byte, or leave the key out for the gateway's limit",
                    f.value
                )));
            }
            limits.max_body = Some(bytes);
        }
        let burst = find(spec, BURST_KEY)?;
        let Some(rate) = find(spec, RATE_KEY)? else {
            return match burst {
                Some(b) => Err(b.err(format!(
                    "{:?} has no rate to go with: set {RATE_KEY} (calls per second) too",
                    b.value
                ))),
                None => Ok(limits),
            };
        };
        let per_second = match rate.value.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_RATE => r,
            _ => {
                return Err(rate.err(format!(
                    "{:?} is not a rate: use a positive number of calls per second (such as 5, or 0.5 for one every 2 s), at most {MAX_RATE}",
                    rate.value
                )))
            }
        };
        let burst = match burst {
            None => Rate::default_burst(per_second),
            Some(b) => match b.value.parse::<u32>() {
                Ok(n) if (1..=MAX_BURST).contains(&n) => n,
                _ => {
                    return Err(b.err(format!(
                        "{:?} is not a burst: use a whole number of calls from 1 to {MAX_BURST}",
                        b.value
                    )))
                }
            },
        };
        limits.rate = Some(Rate { per_second, burst });
        Ok(limits)
    }
}

/// Checks every call-limit key of a spec, for deploys.
pub fn validate(spec: &FunctionSpec) -> Result<(), PolicyError> {
    CallLimits::parse(spec).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{spec, Keys};

    #[test]
    fn good_values() {
        let rate = |per_second, burst| Some(Rate { per_second, burst });
        let cases: &[(Keys, Keys, CallLimits)] = &[
            (&[], &[], CallLimits::default()),
            (
                &[(MAX_BODY_KEY, "1Mi")],
                &[],
                CallLimits {
                    max_body: Some(1 << 20),
                    rate: None,
                },
            ),
            (
                &[(MAX_BODY_KEY, "512Ki"), (RATE_KEY, "5"), (BURST_KEY, "10")],
                &[],
                CallLimits {
                    max_body: Some(512 << 10),
                    rate: rate(5.0, 10),
                },
            ),
            (
                &[],
                &[(MAX_BODY_KEY, " 65536 "), (RATE_KEY, "2.5")],
                CallLimits {
                    max_body: Some(65536),
                    rate: rate(2.5, 3),
                },
            ),
            // Below one call a second, the burst is one call.
            (
                &[(RATE_KEY, "0.1")],
                &[(RATE_KEY, "0.1")],
                CallLimits {
                    max_body: None,
                    rate: rate(0.1, 1),
                },
            ),
        ];
        for (annotations, labels, want) in cases {
            let got = CallLimits::parse(&spec(annotations, labels));
            assert_eq!(got.as_ref(), Ok(want), "{annotations:?} {labels:?}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(Keys, Keys, &str, &str)] = &[
            (
                &[(MAX_BODY_KEY, "lots")],
                &[],
                "annotations.com.skyfri.max-body",
                "not a size",
            ),
            (&[(MAX_BODY_KEY, "1MiB")], &[], MAX_BODY_KEY, "\"1MiB\""),
            (&[(MAX_BODY_KEY, "-1")], &[], MAX_BODY_KEY, "not a size"),
            (&[(MAX_BODY_KEY, "0")], &[], MAX_BODY_KEY, "at least 1 byte"),
            (&[(RATE_KEY, "0")], &[], RATE_KEY, "positive"),
            (&[(RATE_KEY, "-5")], &[], RATE_KEY, "not a rate"),
            (&[(RATE_KEY, "fast")], &[], RATE_KEY, "\"fast\""),
            (&[(RATE_KEY, "NaN")], &[], RATE_KEY, "not a rate"),
            (&[(RATE_KEY, "2000000")], &[], RATE_KEY, "at most"),
            (
                &[(RATE_KEY, "5"), (BURST_KEY, "0")],
                &[],
                "annotations.com.skyfri.burst",
                "from 1",
            ),
            (
                &[(RATE_KEY, "5"), (BURST_KEY, "2.5")],
                &[],
                BURST_KEY,
                "whole",
            ),
            (
                &[],
                &[(BURST_KEY, "5")],
                "labels.com.skyfri.burst",
                "set com.skyfri.rate",
            ),
            (
                &[(RATE_KEY, "5")],
                &[(RATE_KEY, "6")],
                "labels.com.skyfri.rate",
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
    }

    #[test]
    fn command_line_rates() {
        assert_eq!(
            Rate::new(10.0, 20, "--rate-per-ip"),
            Ok(Rate {
                per_second: 10.0,
                burst: 20
            })
        );
        for (rate, burst) in [(0.0, 1), (-1.0, 1), (f64::INFINITY, 1), (1.0, 0)] {
            let err = Rate::new(rate, burst, "--rate-per-ip")
                .err()
                .unwrap_or_default();
            assert!(err.starts_with("--rate-per-ip: "), "{rate} {burst}: {err}");
        }
    }
}
