//! Event triggers on a function, as OpenFaaS's connectors read them from its annotations:
//! `topic` (the NATS subjects whose messages invoke it, [`topics`]) and `schedule` (the cron
//! expressions that invoke it, [`schedules`]). Pure parsing and validation; the gateway's
//! `triggers` module runs them.
//!
//! | annotation | value | example |
//! |---|---|---|
//! | `topic` | NATS subjects, comma-separated; `*` matches one token, `>` the rest | `orders.created,orders.updated` |
//! | `schedule` | cron expressions, `;`-separated | `*/5 * * * *; 0 9 * * MON-FRI` |
//!
//! A schedule has five fields (minute, hour, day of month, month, day of week), or six with
//! seconds first (`*/10 * * * * *`: every ten seconds, skyfri's extension), or is a nickname
//! (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Names of days and months, ranges,
//! steps and lists work as in Vixie cron; when both the day of month and the day of week are
//! restricted, either matching is enough (Vixie cron's rule). Times are UTC.
//!
//! A bad value is refused at deploy with an error naming the annotation.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::function::FunctionSpec;
use crate::scaling::{Place, PolicyError};

/// The annotation listing the subjects that invoke a function.
pub const TOPIC: &str = "topic";
/// The annotation listing the cron expressions that invoke a function.
pub const SCHEDULE: &str = "schedule";
/// The longest subject accepted (NATS has no hard limit; JetStream API subjects embed it).
const MAX_SUBJECT: usize = 255;

/// One of a function's schedules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Its position in the annotation, from 0: part of the ids of the calls it makes.
    pub index: usize,
    /// As written, trimmed.
    pub expression: String,
    cron: Cron,
}

impl Schedule {
    /// The first tick strictly after `t`; `None` when there is none (a date that never
    /// comes, such as the 30th of February).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

fn err(key: &str, message: String) -> PolicyError {
    PolicyError {
        place: Place::Annotations,
        key: key.to_string(),
        message,
    }
}

/// The subjects of the `topic` annotation, in order, without duplicates; empty without it.
pub fn topics(spec: &FunctionSpec) -> Result<Vec<String>, PolicyError> {
    let Some(value) = spec.annotations.get(TOPIC) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = Vec::new();
    for part in value.split(',').map(str::trim) {
        validate_subject(part).map_err(|why| {
            err(
                TOPIC,
                format!(
                    "{part:?} in {value:?} is not a NATS subject: {why}; use comma-separated \
                     subjects such as \"orders.created,orders.*\""
                ),
            )
        })?;
        if !out.iter().any(|s| s == part) {
            out.push(part.to_string());
        }
    }
    Ok(out)
}

/// Checks one subject: dot-separated non-empty tokens of printable characters, `*` only as
/// a whole token, `>` only as the whole last token, not one of NATS's own (`$...`).
fn validate_subject(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > MAX_SUBJECT {
        return Err("it is longer than 255 characters");
    }
    if s.starts_with('$') {
        return Err("subjects starting with $ belong to NATS itself");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err("it has an empty token (two dots, or a dot at an end)");
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("it has a space or a control character");
        }
        if t.contains('*') && *t != "*" {
            return Err("* must be a whole token");
        }
        if t.contains('>') && (*t != ">" || i + 1 != tokens.len()) {
            return Err("> must be the whole last token");
        }
    }
    Ok(())
}

/// The schedules of the `schedule` annotation, in order; empty without it. Empty parts
/// (a trailing `;`) are skipped but keep their place in the numbering.
pub fn schedules(spec: &FunctionSpec) -> Result<Vec<Schedule>, PolicyError> {
    let Some(value) = spec.annotations.get(SCHEDULE) else {
        return Ok(Vec::new());
    };
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let mut out = Vec::new();
    for (index, part) in value.split(';').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        let cron = parser.parse(part).map_err(|e| {
            err(
                SCHEDULE,
                format!(
                    "{part:?} is not a cron expression ({e}); use five fields (minute hour \
                     day-of-month month day-of-week) such as \"*/5 * * * *\", six with seconds \
                     first, or @hourly / @daily; separate several with ;"
                ),
            )
        })?;
        out.push(Schedule {
            index,
            expression: part.to_string(),
            cron,
        });
    }
    if out.is_empty() {
        return Err(err(
            SCHEDULE,
            format!("{value:?} has no cron expression; remove the annotation or add one"),
        ));
    }
    Ok(out)
}

/// Checks both annotations, for deploys: the first error found.
pub fn validate(spec: &FunctionSpec) -> Result<(), PolicyError> {
    topics(spec)?;
    schedules(spec)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn spec(key: &str, value: &str) -> FunctionSpec {
        let mut s = FunctionSpec::new("f", "img");
        s.annotations.insert(key.into(), value.into());
        s
    }

    #[test]
    fn topics_parse() {
        let good = [
            ("orders.created", vec!["orders.created"]),
            (" a.b , c.* ,a.b, d.>", vec!["a.b", "c.*", "d.>"]),
            (">", vec![">"]),
        ];
        for (value, want) in good {
            assert_eq!(
                topics(&spec(TOPIC, value)),
                Ok(want.iter().map(|s| s.to_string()).collect()),
                "{value}"
            );
        }
        assert_eq!(topics(&FunctionSpec::new("f", "i")), Ok(vec![]));
        for bad in [
            "",
            "a,,b",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a.b*",
            "a.>.b",
            "a>",
            "$JS.API.x",
        ] {
            let e = topics(&spec(TOPIC, bad)).expect_err(bad);
            assert_eq!(
                (e.place, e.key.as_str()),
                (Place::Annotations, TOPIC),
                "{bad}"
            );
            assert!(e.to_string().starts_with("annotations.topic: "), "{e}");
        }
    }

    #[test]
    fn schedules_parse_and_tick() {
        let s = schedules(&spec(SCHEDULE, "*/5 * * * *; ;* * * * * *;@hourly")).expect("valid");
        let indexes: Vec<_> = s.iter().map(|s| (s.index, s.expression.as_str())).collect();
        assert_eq!(
            indexes,
            [(0, "*/5 * * * *"), (2, "* * * * * *"), (3, "@hourly")]
        );
        let t = Utc
            .with_ymd_and_hms(2026, 1, 1, 10, 2, 30)
            .single()
            .expect("time");
        let at = |h, m, sec| Utc.with_ymd_and_hms(2026, 1, 1, h, m, sec).single();
        assert_eq!(s[0].next_after(t), at(10, 5, 0));
        assert_eq!(s[1].next_after(t), at(10, 2, 31));
        assert_eq!(s[2].next_after(t), at(11, 0, 0));
        // Strictly after: a tick is not its own successor.
        assert_eq!(s[0].next_after(at(10, 5, 0).expect("time")), at(10, 10, 0));
        assert_eq!(schedules(&FunctionSpec::new("f", "i")), Ok(vec![]));
        for bad in [
            "",
            ";",
            "* * * *",
            "61 * * * *",
            "* * * * * * 2030",
            "every minute",
            "*/0 * * * *",
        ] {
            let e = schedules(&spec(SCHEDULE, bad)).expect_err(bad);
            assert!(e.to_string().starts_with("annotations.schedule: "), "{e}");
        }
        assert!(validate(&spec(SCHEDULE, "nope")).is_err());
        assert!(validate(&spec(TOPIC, "a.b")).is_ok());
    }

    #[test]
    fn manifests_with_bad_triggers_are_refused_naming_the_annotation() {
        let parse = |file: &str, text: &str| {
            crate::manifest::parse(file, text, &|_| None, &|_| Err("no files".into()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let stack = |annotations: &str| {
            format!(
                "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  f:\n    lang: python3\n    \
                 handler: ./f\n    annotations:\n{annotations}"
            )
        };
        assert_eq!(
            parse(
                "stack.yml",
                &stack("      topic: a.b,c.*\n      schedule: \"*/5 * * * *\"\n")
            ),
            Ok(())
        );
        let e = parse("stack.yml", &stack("      schedule: \"every minute\"\n")).expect_err("bad");
        assert!(
            e.contains("annotations.schedule") && e.contains("every minute"),
            "{e}"
        );
        let e = parse("stack.yml", &stack("      topic: \"a..b\"\n")).expect_err("bad");
        assert!(e.contains("annotations.topic"), "{e}");
        let knative = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: f\n  \
                       annotations:\n    schedule: \"* * *\"\nspec:\n  template:\n    spec:\n      \
                       containers:\n        - image: img\n";
        let e = parse("svc.yaml", knative).expect_err("bad");
        assert!(e.contains("annotations.schedule"), "{e}");
    }
}
