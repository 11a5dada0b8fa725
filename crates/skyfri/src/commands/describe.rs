//! `skyfri describe NAME`: one function's configuration and state.

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::Method;
use skyfri_core::openfaas::{FunctionStatus, ScalePolicySummary, ScalingDecision};

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Describe {
    name: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Describe {
    pub async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let gw = self.gateway.connect(None)?;
        let path = format!("/system/function/{}", self.name);
        let body = gw.expect_ok(Method::GET, &path, Bytes::new()).await?;
        let f: FunctionStatus = serde_json::from_slice(&body)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&f)?);
            return Ok(());
        }
        println!("Name:        {}", f.name);
        println!("Image:       {}", f.image);
        println!(
            "Replicas:    {}/{} available",
            f.available_replicas, f.replicas
        );
        println!("In flight:   {} (queued {})", f.in_flight, f.queued);
        if let Some(p) = &f.scale_policy {
            println!("Scaling:     {}", policy_line(p));
        }
        if let Some(d) = &f.scaling {
            println!("Last decision: {}", decision_line(d, Utc::now()));
        }
        println!("Invocations: {}", f.invocation_count);
        println!("URL:         {}/function/{}", gw.url, f.name);
        if let Some(p) = &f.env_process {
            println!("Process:     {p}");
        }
        if let Some(l) = &f.limits {
            println!(
                "Limits:      memory {} cpu {}",
                l.memory.as_deref().unwrap_or("-"),
                l.cpu.as_deref().unwrap_or("-")
            );
        }
        for (k, v) in &f.labels {
            println!("Label:       {k}={v}");
        }
        for (k, v) in &f.annotations {
            println!("Annotation:  {k}={v}");
        }
        if let Some(c) = &f.created_at {
            println!("Created:     {c}");
        }
        Ok(())
    }
}

/// `1 to 20 replicas, concurrency target 1 per replica (aiming at 70%), to zero after 3s idle`,
/// and `, at most 10 calls in flight in all` for a function with a concurrency cap.
fn policy_line(p: &ScalePolicySummary) -> String {
    let zero = if p.scale_to_zero {
        format!(
            "to zero after {} idle",
            duration(p.idle_before_zero_seconds)
        )
    } else {
        "never to zero".into()
    };
    let cap = p.max_concurrency.map_or(String::new(), |n| {
        format!(", at most {n} calls in flight in all")
    });
    format!(
        "{} to {} replicas, {} target {} per replica (aiming at {}%), {zero}{cap}",
        p.min,
        p.max,
        p.metric,
        p.target,
        (p.target_utilization * 100.0).round()
    )
}

/// `3 replicas, 12s ago, panicking: stable: ... -> 3`.
fn decision_line(d: &ScalingDecision, now: DateTime<Utc>) -> String {
    let ago = DateTime::parse_from_rfc3339(&d.at)
        .map(|at| {
            let secs = (now - at.with_timezone(&Utc)).num_seconds().max(0);
            format!("{} ago", duration(secs.unsigned_abs()))
        })
        .unwrap_or_else(|_| format!("at {}", d.at));
    let replicas = if d.desired == 1 {
        "replica"
    } else {
        "replicas"
    };
    let panic = if d.panic { ", panicking" } else { "" };
    format!("{} {replicas}, {ago}{panic}: {}", d.desired, d.reason)
}

/// Whole seconds as `45s`, `15m`, `1m30s`, `2h`, `1h5m`.
fn duration(secs: u64) -> String {
    skyfri_core::scaling::fmt_duration(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d: Vec<_> = [0, 45, 60, 90, 900, 3600, 3900].map(duration).into();
        assert_eq!(d, ["0s", "45s", "1m", "1m30s", "15m", "1h", "1h5m"]);
    }

    #[test]
    fn lines() {
        let p = ScalePolicySummary {
            min: 1,
            max: 20,
            metric: "concurrency".into(),
            target: 1.0,
            target_utilization: 0.7,
            scale_to_zero: true,
            idle_before_zero_seconds: 3,
            max_concurrency: None,
        };
        assert_eq!(
            policy_line(&p),
            "1 to 20 replicas, concurrency target 1 per replica (aiming at 70%), to zero after 3s idle"
        );
        let capped = ScalePolicySummary {
            max: 10,
            scale_to_zero: false,
            max_concurrency: Some(10),
            ..p.clone()
        };
        assert_eq!(
            policy_line(&capped),
            "1 to 10 replicas, concurrency target 1 per replica (aiming at 70%), never to zero, \
             at most 10 calls in flight in all"
        );
        let d = ScalingDecision {
            desired: 3,
            panic: true,
            reason: "panic: 2.00 concurrent -> 3".into(),
            at: "2024-05-01T10:00:00.000Z".into(),
        };
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:01:12Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(
            decision_line(&d, now),
            "3 replicas, 1m12s ago, panicking: panic: 2.00 concurrent -> 3"
        );
    }
}
