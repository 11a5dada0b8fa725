//! CPU metering: how much CPU each function's replicas used, read from their cgroups when
//! a replica stops and whenever the gateway collects (every flush of its usage meter).
//!
//! Each replica remembers how much of its group's counter it has already reported; a
//! reading adds the difference to the provider's ledger under the function's name, and the
//! gateway takes the ledger's totals away. A replica made from a stem cell starts counting
//! when it is adopted: the interpreter's boot is the platform's, not the function's.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::cgroup::Group;

/// CPU used per function and not yet collected.
#[derive(Default)]
pub struct CpuLedger {
    pending: Mutex<HashMap<String, Duration>>,
}

impl CpuLedger {
    fn add(&self, function: &str, used: Duration) {
        if used.is_zero() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *pending.entry(function.to_string()).or_default() += used;
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> Vec<(String, Duration)> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.drain().collect()
    }
}

/// One replica's reading of its group's CPU counter.
pub struct CpuMeter {
    /// How much of the group's counter has been reported.
    counted: Mutex<Duration>,
}

impl CpuMeter {
    /// Counts from the group's present usage on.
    pub fn new(group: Option<&Group>) -> CpuMeter {
        CpuMeter {
            counted: Mutex::new(group.and_then(Group::cpu_usage).unwrap_or_default()),
        }
    }

    /// Adds what `group` used since the last reading to `function`'s line in `ledger`.
    pub fn read(&self, group: Option<&Group>, function: &str, ledger: &CpuLedger) {
        let Some(now) = group.and_then(Group::cpu_usage) else {
            return;
        };
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        // The counter only grows while the group lives; never report a fall.
        if now > *counted {
            ledger.add(function, now - *counted);
            *counted = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_adds_per_function_and_empties_when_taken() {
        let ledger = CpuLedger::default();
        ledger.add("a", Duration::from_millis(5));
        ledger.add("a", Duration::from_millis(7));
        ledger.add("b", Duration::ZERO);
        assert_eq!(ledger.take(), vec![("a".into(), Duration::from_millis(12))]);
        assert!(ledger.take().is_empty());
    }

    #[test]
    fn a_replica_reports_what_its_group_used_since_it_was_adopted() -> std::io::Result<()> {
        use super::super::cgroup::{fake_v1, Limits};
        let dir = tempfile::tempdir()?;
        let layout = fake_v1(dir.path(), &["pids", "cpuacct"])?;
        let acct = dir.path().join("cpuacct");
        let group = Group::create(&layout, "f-1", Limits::default())?;
        let usage = acct.join("skyfri/f-1/cpuacct.usage");
        // A stem cell's boot, before the replica exists.
        std::fs::write(&usage, "1000000")?;
        let meter = CpuMeter::new(Some(&group));
        let ledger = CpuLedger::default();
        for (counter, reported) in [
            (5_000_000, 4),
            (5_000_000, 0),
            (3_000_000, 0),
            (8_000_000, 3),
        ] {
            std::fs::write(&usage, counter.to_string())?;
            meter.read(Some(&group), "f", &ledger);
            let got: Vec<_> = ledger.take();
            let want: Vec<(String, Duration)> = match reported {
                0 => Vec::new(),
                ms => vec![("f".into(), Duration::from_millis(ms))],
            };
            assert_eq!(got, want, "counter at {counter}");
        }
        // Without a group nothing is known and nothing is reported.
        meter.read(None, "f", &ledger);
        assert!(ledger.take().is_empty());
        Ok(())
    }
}
