//! The kernel settings recommended for a FaaS node, and how a host's values compare with them.
//!
//! The recommendations are `sysctl/recommended.conf`, compiled into the binary. Each setting
//! has a rule saying what "good enough" means, because a bigger value is not always better:
//!
//! - **at least**: sizes of tables, queues and limits (`fs.file-max`, `net.core.somaxconn`,
//!   backlogs, conntrack and neighbour tables, `vm.max_map_count`, inotify instances). A host
//!   with more headroom than recommended is fine, and `--write-sysctl` never lowers it.
//! - **at most**: TCP keepalive time, interval and probes (a dead peer is noticed sooner,
//!   so connections to vanished clients and replicas are freed sooner) and `vm.swappiness`
//!   (a replica swapping is slower than one killed at its memory limit).
//! - **exactly**: `net.ipv4.tcp_tw_reuse`, whose values are modes rather than amounts
//!   (0 off, 1 on for every outgoing connection, 2 loopback only).
//! - **range**: `net.ipv4.ip_local_port_range` is a pair `low high`; the host's range must
//!   contain the recommended one (low at most, high at least), so that a gateway making many
//!   short connections does not run out of ephemeral ports. Listeners on ports inside the
//!   range should be reserved with `net.ipv4.ip_local_reserved_ports`.
//!
//! `ip_forward`, which guides for Kubernetes nodes add, is left out on purpose: local
//! replicas share the host's network (or have none), and forwarding makes the host a router.
//!
//! No I/O here: the caller reads `/proc/sys` and writes files.

use std::fmt;

/// The recommended settings, as shipped.
pub const RECOMMENDED: &str = include_str!("sysctl/recommended.conf");

/// The first line of a file written by `skyfri doctor --write-sysctl`: such a file may be
/// overwritten, any other needs `--force`.
pub const MARKER: &str = "# Written by `skyfri doctor --write-sysctl`.";

/// What a host value must be, compared with the recommended one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    AtLeast,
    AtMost,
    Exactly,
    /// A `low high` pair that must contain the recommended pair.
    Range,
}

impl Rule {
    /// The rule of a known key; `None` for a key skyfri has no opinion about.
    pub fn of(key: &str) -> Option<Rule> {
        Some(match key {
            "net.ipv4.ip_local_port_range" => Rule::Range,
            "net.ipv4.tcp_tw_reuse" => Rule::Exactly,
            "net.ipv4.tcp_keepalive_time"
            | "net.ipv4.tcp_keepalive_intvl"
            | "net.ipv4.tcp_keepalive_probes"
            | "vm.swappiness" => Rule::AtMost,
            "fs.file-max"
            | "fs.inotify.max_user_instances"
            | "net.netfilter.nf_conntrack_max"
            | "net.core.somaxconn"
            | "net.ipv4.tcp_max_syn_backlog"
            | "net.core.netdev_max_backlog"
            | "net.ipv4.neigh.default.gc_thresh1"
            | "net.ipv4.neigh.default.gc_thresh2"
            | "net.ipv4.neigh.default.gc_thresh3"
            | "vm.max_map_count" => Rule::AtLeast,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Rule::AtLeast => "at least",
            Rule::AtMost => "at most",
            Rule::Exactly => "exactly",
            Rule::Range => "a range containing",
        }
    }
}

/// One recommended setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted name, as `sysctl` prints it.
    pub key: String,
    pub value: Vec<u64>,
    pub rule: Rule,
}

/// A line of a sysctl file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl Setting {
    /// Whether the host's `actual` value satisfies the recommendation.
    pub fn is_met_by(&self, actual: &[u64]) -> bool {
        match (self.rule, actual, self.value.as_slice()) {
            (Rule::AtLeast, [a], [want]) => a >= want,
            (Rule::AtMost, [a], [want]) => a <= want,
            (Rule::Exactly, a, want) => a == want,
            (Rule::Range, [lo, hi], [want_lo, want_hi]) => lo <= want_lo && hi >= want_hi,
            _ => false,
        }
    }

    /// The value to configure given the host's `current` one: the recommendation, without
    /// ever making a setting worse than it already is (a bigger table stays bigger, a wider
    /// port range stays wider).
    pub fn target(&self, current: Option<&[u64]>) -> Vec<u64> {
        match (self.rule, current, self.value.as_slice()) {
            (Rule::AtLeast, Some([a]), [want]) => vec![*a.max(want)],
            (Rule::AtMost, Some([a]), [want]) => vec![*a.min(want)],
            (Rule::Range, Some([lo, hi]), [want_lo, want_hi]) => {
                vec![*lo.min(want_lo), *hi.max(want_hi)]
            }
            _ => self.value.clone(),
        }
    }

    /// Where the setting lives under `/proc/sys`.
    pub fn proc_path(&self) -> String {
        self.key.replace('.', "/")
    }

    /// The setting as `sysctl` writes it (`a b` for pairs).
    pub fn show(value: &[u64]) -> String {
        value
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.rule.describe(), Setting::show(&self.value))
    }
}

/// Whether `key` belongs to a kernel module (conntrack) and exists only once it is loaded:
/// its absence is no problem, and a sysctl.d file sets it with `-` (skip if missing).
pub fn is_module_setting(key: &str) -> bool {
    key.starts_with("net.netfilter.")
}

/// Parses a value as `/proc/sys` or `sysctl` shows it: whitespace-separated integers.
pub fn parse_value(text: &str) -> Result<Vec<u64>, String> {
    let values: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().map_err(|_| format!("{v:?} is not a number")))
        .collect::<Result<_, _>>()?;
    if values.is_empty() {
        return Err("empty value".into());
    }
    Ok(values)
}

/// Parses a sysctl.d file (`key = value` lines, `#` and `;` comments, a leading `-` meaning
/// "ignore if missing") into `(key, value)` pairs in file order.
pub fn parse(text: &str) -> Result<Vec<(String, Vec<u64>)>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("{line:?} is not `key = value`")))?;
        let key = key.trim().trim_start_matches('-').replace('/', ".");
        if key.is_empty() {
            return Err(err("empty key".into()));
        }
        let value = parse_value(value).map_err(|m| err(format!("{key}: {m}")))?;
        out.push((key, value));
    }
    Ok(out)
}

/// The shipped recommendations, each with its rule.
pub fn recommended() -> Result<Vec<Setting>, ParseError> {
    parse(RECOMMENDED)?
        .into_iter()
        .map(|(key, value)| {
            let rule = Rule::of(&key).ok_or_else(|| ParseError {
                line: 0,
                message: format!("{key} has no rule"),
            })?;
            let arity = if rule == Rule::Range { 2 } else { 1 };
            if value.len() != arity {
                return Err(ParseError {
                    line: 0,
                    message: format!("{key} needs {arity} value(s)"),
                });
            }
            Ok(Setting { key, value, rule })
        })
        .collect()
}

/// A sysctl.d file setting each `(key, value)`, opening with [`MARKER`].
pub fn render(values: &[(String, Vec<u64>)]) -> String {
    let mut out = format!(
        "{MARKER}\n# Kernel settings for a skyfri node; apply with `sysctl --system`.\n# Values already better than skyfri's recommendation were kept.\n"
    );
    for (key, value) in values {
        out.push_str(&format!("{key} = {}\n", Setting::show(value)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(key: &str) -> Setting {
        recommended()
            .expect("shipped file parses")
            .into_iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("{key} is recommended"))
    }

    #[test]
    fn the_shipped_file_parses_and_every_key_has_a_rule() -> Result<(), ParseError> {
        let all = recommended()?;
        assert_eq!(all.len(), 16);
        for key in [
            "fs.file-max",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_tw_reuse",
            "net.netfilter.nf_conntrack_max",
            "vm.swappiness",
        ] {
            assert!(all.iter().any(|s| s.key == key), "{key}");
        }
        assert!(!all.iter().any(|s| s.key == "net.ipv4.ip_forward"));
        Ok(())
    }

    #[test]
    fn at_least_at_most_exactly_and_range() {
        let somaxconn = setting("net.core.somaxconn");
        assert_eq!(somaxconn.rule, Rule::AtLeast);
        assert!(somaxconn.is_met_by(&[65535]));
        assert!(somaxconn.is_met_by(&[100_000]));
        assert!(!somaxconn.is_met_by(&[4096]));

        let keepalive = setting("net.ipv4.tcp_keepalive_time");
        assert!(keepalive.is_met_by(&[30]));
        assert!(keepalive.is_met_by(&[60]));
        assert!(!keepalive.is_met_by(&[7200]));
        assert!(setting("vm.swappiness").is_met_by(&[0]));
        assert!(!setting("vm.swappiness").is_met_by(&[60]));

        let tw = setting("net.ipv4.tcp_tw_reuse");
        assert!(tw.is_met_by(&[1]));
        assert!(!tw.is_met_by(&[2]), "2 is loopback only, not more reuse");
        assert!(!tw.is_met_by(&[0]));

        let ports = setting("net.ipv4.ip_local_port_range");
        assert_eq!(ports.value, vec![1024, 65535]);
        assert!(ports.is_met_by(&[1024, 65535]));
        assert!(ports.is_met_by(&[1000, 65535]), "wider is fine");
        assert!(!ports.is_met_by(&[32768, 60999]), "the kernel default");
        assert!(!ports.is_met_by(&[1024, 60999]));
        assert!(!ports.is_met_by(&[1024]), "a pair is needed");
        assert!(!somaxconn.is_met_by(&[1, 2]), "one value is needed");
    }

    #[test]
    fn targets_never_make_a_host_worse() {
        let file_max = setting("fs.file-max");
        assert_eq!(
            file_max.target(Some(&[9_223_372_036_854_775_807])),
            vec![9_223_372_036_854_775_807]
        );
        assert_eq!(file_max.target(Some(&[65536])), vec![2_097_152]);
        assert_eq!(file_max.target(None), vec![2_097_152]);
        assert_eq!(setting("vm.swappiness").target(Some(&[1])), vec![1]);
        assert_eq!(setting("vm.swappiness").target(Some(&[60])), vec![10]);
        assert_eq!(setting("net.ipv4.tcp_tw_reuse").target(Some(&[2])), vec![1]);
        let ports = setting("net.ipv4.ip_local_port_range");
        assert_eq!(ports.target(Some(&[32768, 60999])), vec![1024, 65535]);
        assert_eq!(ports.target(Some(&[900, 65535])), vec![900, 65535]);
        assert_eq!(ports.target(Some(&[5])), vec![1024, 65535], "malformed");
    }

    #[test]
    fn sysctl_files_parse_and_bad_lines_are_named() {
        let text = "# c\n; c\n\nnet.core.somaxconn=1\n-net/ipv4/ip_local_port_range = 2\t3 \n";
        assert_eq!(
            parse(text),
            Ok(vec![
                ("net.core.somaxconn".to_string(), vec![1]),
                ("net.ipv4.ip_local_port_range".to_string(), vec![2, 3]),
            ])
        );
        let err = parse("a = 1\nb 2\n").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("line 2: \"b 2\" is not `key = value`"));
        let err = parse("a = x\n").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("line 1: a: \"x\" is not a number"));
        assert!(parse("a =\n").is_err());
        assert!(parse(" = 1\n").is_err());
        assert_eq!(parse_value("1024\t65535\n"), Ok(vec![1024, 65535]));
    }

    #[test]
    fn rendered_files_parse_back() -> Result<(), ParseError> {
        let values = vec![
            ("vm.swappiness".to_string(), vec![10]),
            (
                "net.ipv4.ip_local_port_range".to_string(),
                vec![1024, 65535],
            ),
        ];
        let text = render(&values);
        assert!(text.starts_with(MARKER));
        assert_eq!(parse(&text)?, values);
        Ok(())
    }
}
