//! What isolation this host gives replicas, found once at start and reported honestly.

use std::fmt;

use serde::Serialize;

use super::cgroup::{Enforced, Layout};
use super::sandbox::Sandbox;

/// How much isolation `skyfri up` insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Refuse to start unless namespaces and every limit are enforced.
    Strict,
    /// Take the strongest available; warn loudly about what is missing.
    #[default]
    BestEffort,
}

/// The isolation replicas get on this host.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub sandbox: Option<Sandbox>,
    /// Why there is no sandbox, when there is none.
    pub sandbox_problem: Option<String>,
    pub cgroups: Layout,
}

/// The summary `skyfri up` prints and `/system/info` reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub namespaces: bool,
    pub user: String,
    pub cgroups: &'static str,
    pub enforced: Enforced,
}

impl Isolation {
    pub fn detect() -> Isolation {
        let (sandbox, sandbox_problem) = match Sandbox::detect() {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        Isolation {
            sandbox,
            sandbox_problem,
            cgroups: Layout::detect(),
        }
    }

    /// No sandbox and no limits: replicas run as plain processes (tests of other parts).
    pub fn none() -> Isolation {
        Isolation {
            sandbox: None,
            sandbox_problem: Some("disabled".into()),
            cgroups: Layout::None,
        }
    }

    pub fn report(&self) -> Report {
        Report {
            namespaces: self.sandbox.is_some(),
            user: self
                .sandbox
                .as_ref()
                .map_or_else(|| "skyfri's own".to_string(), Sandbox::user),
            cgroups: self.cgroups.name(),
            enforced: self.cgroups.enforced(),
        }
    }

    /// What is missing, each with the reason, for warnings and `--isolation strict`.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(problem) = &self.sandbox_problem {
            out.push(format!(
                "no sandbox (namespaces, private file system): {problem}"
            ));
        }
        let e = self.cgroups.enforced();
        for (on, what) in [
            (e.memory, "memory limits"),
            (e.cpu, "CPU quotas"),
            (e.pids, "pids limits"),
        ] {
            if !on {
                out.push(format!(
                    "{what} are not enforced: no usable cgroup controller (cgroups: {})",
                    self.cgroups.name()
                ));
            }
        }
        out
    }

    /// Checks the isolation against `mode`: in strict mode anything missing is an error.
    pub fn require(&self, mode: Mode) -> Result<(), String> {
        let missing = self.missing();
        if mode == Mode::Strict && !missing.is_empty() {
            return Err(format!("--isolation strict: {}", missing.join("; ")));
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "namespaces {}, user {}, cgroups {}, memory {}, cpu {}, pids {}",
            yn(self.namespaces),
            self.user,
            self.cgroups,
            yn(self.enforced.memory),
            yn(self.enforced.cpu),
            yn(self.enforced.pids)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_refuses_what_is_missing_and_best_effort_warns() {
        let none = Isolation::none();
        let missing = none.missing();
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(missing.iter().any(|m| m.contains("memory limits")));
        let err = none.require(Mode::Strict).err().unwrap_or_default();
        assert!(
            err.contains("--isolation strict") && err.contains("sandbox"),
            "{err}"
        );
        assert!(none.require(Mode::BestEffort).is_ok());
        assert_eq!(
            none.report().to_string(),
            "namespaces no, user skyfri's own, cgroups none, memory no, cpu no, pids no"
        );
    }
}
