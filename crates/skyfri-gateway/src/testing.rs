//! What the gateway's unit tests share: a provider with no processes behind it.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use skyfri_core::Deployment;
use skyfri_runtime::{Endpoint, LogLine, Provider, ReplicaStatus, RuntimeError};

/// A provider whose functions all have the replicas `endpoints` (servers the test runs, or
/// none), and whose CPU readings are whatever the test puts in `cpu`.
#[derive(Default)]
pub struct FakeProvider {
    pub endpoints: Vec<Endpoint>,
    pub cpu: Mutex<Option<Vec<(String, Duration)>>>,
}

impl FakeProvider {
    /// Every function has one ready replica at `endpoint`.
    pub fn serving(endpoint: Endpoint) -> FakeProvider {
        FakeProvider {
            endpoints: vec![endpoint],
            cpu: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    async fn deploy(&self, _: &Deployment) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn remove(&self, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn scale(&self, _: &str, _: u32) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn endpoints(&self, _: &str) -> Vec<Endpoint> {
        self.endpoints.clone()
    }
    fn status(&self, _: &str) -> Option<ReplicaStatus> {
        let n = u32::try_from(self.endpoints.len()).ok()?;
        (n > 0).then_some(ReplicaStatus {
            desired: n,
            available: n,
            oom_kills: 0,
        })
    }
    fn report_failure(&self, _: &str, _: &Endpoint) -> Option<String> {
        None
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn logs(&self, _: &str, _: Option<DateTime<Utc>>, _: Option<usize>) -> Vec<LogLine> {
        Vec::new()
    }
    fn follow_logs(&self, _: &str) -> tokio::sync::broadcast::Receiver<LogLine> {
        tokio::sync::broadcast::channel(1).1
    }
    fn take_cpu_usage(&self) -> Option<Vec<(String, Duration)>> {
        self.cpu
            .lock()
            .map(|mut c| c.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }
    async fn shutdown(&self) {}
}
