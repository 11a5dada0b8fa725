//! The OpenFaaS REST API's JSON types (faas-provider's FunctionDeployment and
//! FunctionStatus) and their mapping to and from [`FunctionSpec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::function::{
    validate_name, validate_secret_name, FunctionSpec, Resources, Template, DEFAULT_NAMESPACE,
};
use crate::quantity::{parse_cpu, parse_memory};
use crate::scaling::{Metric, ScalePolicy};

/// Annotation that carries a function's exec timeout in seconds through the OpenFaaS API.
pub const TIMEOUT_ANNOTATION: &str = "com.skyfri.timeout-seconds";
/// Per-replica concurrency, as the OpenFaaS watchdog's `max_inflight`.
pub const MAX_INFLIGHT_ANNOTATION: &str = "com.openfaas.max_inflight";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    pub service: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ApiResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ApiResources>,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    pub image: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ApiResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ApiResources>,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    #[serde(default)]
    pub invocation_count: f64,
    #[serde(default)]
    pub replicas: u64,
    #[serde(default)]
    pub available_replicas: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    // skyfri's own fields below; OpenFaaS clients ignore them, and JSON without them parses.
    /// Calls running now.
    #[serde(default)]
    pub in_flight: u64,
    /// Calls waiting for a replica with room.
    #[serde(default)]
    pub queued: u64,
    /// How the function scales; absent when its labels no longer parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_policy: Option<ScalePolicySummary>,
    /// The autoscaler's last decision; absent before its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingDecision>,
}

/// The effective scale policy of a function (skyfri's extension of FunctionStatus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalePolicySummary {
    /// Replicas kept while the function is in use.
    pub min: u32,
    pub max: u32,
    /// `concurrency` or `rps`.
    pub metric: String,
    /// Metric value one replica can take.
    pub target: f64,
    /// Fraction of `target` the autoscaler aims at.
    pub target_utilization: f64,
    /// Whether the function goes to zero replicas once idle.
    pub scale_to_zero: bool,
    /// Time without traffic before it does, in seconds.
    pub idle_before_zero_seconds: u64,
    /// Calls in flight at most across all replicas (`com.skyfri.max-concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

impl From<&ScalePolicy> for ScalePolicySummary {
    fn from(p: &ScalePolicy) -> ScalePolicySummary {
        ScalePolicySummary {
            min: p.min,
            max: p.max,
            metric: match p.metric {
                Metric::Concurrency => "concurrency",
                Metric::Rps => "rps",
            }
            .into(),
            target: p.target,
            target_utilization: p.target_utilization,
            scale_to_zero: p.scale_to_zero,
            idle_before_zero_seconds: p.time_to_zero().as_secs(),
            max_concurrency: p.max_concurrency,
        }
    }
}

/// The autoscaler's last decision for a function (skyfri's extension of FunctionStatus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// Replicas the autoscaler asked for.
    pub desired: u32,
    /// Whether it was in panic mode.
    pub panic: bool,
    /// Its computation, such as `stable: 12.30 concurrent over 60s / (1 x 0.7) -> 18`.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

fn api_resources(r: &Resources) -> Option<ApiResources> {
    if r.memory.is_none() && r.cpu_millis.is_none() {
        return None;
    }
    Some(ApiResources {
        memory: r.memory.map(|b| b.to_string()),
        cpu: r.cpu_millis.map(|m| format!("{m}m")),
    })
}

fn resources(r: Option<&ApiResources>, what: &str) -> Result<Resources, String> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    Ok(Resources {
        memory: r
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()
            .map_err(|e| format!("{what}.memory: {e}"))?,
        cpu_millis: r
            .cpu
            .as_deref()
            .map(parse_cpu)
            .transpose()
            .map_err(|e| format!("{what}.cpu: {e}"))?,
    })
}

/// Parses "30", "30s", "2m", "1h" into seconds.
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b's' => (&s[..s.len() - 1], 1.0),
        b'm' => (&s[..s.len() - 1], 60.0),
        b'h' => (&s[..s.len() - 1], 3600.0),
        _ => (s, 1.0),
    };
    let n: f64 = num.parse().ok()?;
    (n >= 0.0).then(|| (n * mult).ceil() as u64)
}

impl From<&FunctionSpec> for FunctionDeployment {
    fn from(s: &FunctionSpec) -> FunctionDeployment {
        let mut annotations = s.annotations.clone();
        if s.timeout_secs != crate::function::DEFAULT_TIMEOUT_SECS {
            annotations.insert(TIMEOUT_ANNOTATION.into(), s.timeout_secs.to_string());
        }
        if s.concurrency != 0 {
            annotations.insert(MAX_INFLIGHT_ANNOTATION.into(), s.concurrency.to_string());
        }
        FunctionDeployment {
            service: s.name.clone(),
            image: s.image.clone(),
            namespace: Some(s.namespace.clone()),
            env_process: s.env_process.clone(),
            env_vars: s.env_vars.clone(),
            constraints: s.constraints.clone(),
            secrets: s.secrets.clone(),
            labels: s.labels.clone(),
            annotations,
            limits: api_resources(&s.limits),
            requests: api_resources(&s.requests),
            read_only_root_filesystem: s.read_only_root_filesystem,
        }
    }
}

impl FunctionDeployment {
    /// Validates and converts to a spec; the error names the field.
    pub fn into_spec(self) -> Result<FunctionSpec, String> {
        validate_name(&self.service).map_err(|e| format!("service: {e}"))?;
        if self.image.trim().is_empty() {
            return Err("image: must not be empty".into());
        }
        let namespace = self.namespace.unwrap_or_default();
        if !namespace.is_empty() && namespace != DEFAULT_NAMESPACE {
            return Err(format!(
                "namespace: {namespace:?} does not exist (only {DEFAULT_NAMESPACE:?} for now)"
            ));
        }
        let mut spec = FunctionSpec::new(self.service, self.image);
        spec.limits = resources(self.limits.as_ref(), "limits")?;
        spec.requests = resources(self.requests.as_ref(), "requests")?;
        let timeout = self
            .annotations
            .get(TIMEOUT_ANNOTATION)
            .or_else(|| self.env_vars.get("exec_timeout"));
        if let Some(t) = timeout {
            spec.timeout_secs = parse_duration_secs(t)
                .filter(|&t| t > 0)
                .ok_or_else(|| format!("timeout: {t:?} is not a duration such as 30s or 2m"))?;
        }
        if let Some(c) = self
            .annotations
            .get(MAX_INFLIGHT_ANNOTATION)
            .or_else(|| self.labels.get(MAX_INFLIGHT_ANNOTATION))
        {
            spec.concurrency = c.parse().map_err(|_| {
                format!("{MAX_INFLIGHT_ANNOTATION}: {c:?} is not a non-negative integer")
            })?;
        }
        spec.env_process = self.env_process.filter(|p| !p.is_empty());
        spec.env_vars = self.env_vars;
        spec.constraints = self.constraints;
        for (i, secret) in self.secrets.iter().enumerate() {
            validate_secret_name(secret).map_err(|e| format!("secrets[{i}]: {e}"))?;
        }
        spec.secrets = self.secrets;
        spec.labels = self.labels;
        spec.annotations = self.annotations;
        spec.read_only_root_filesystem = self.read_only_root_filesystem;
        // The template (known once the image is resolved) does not change validity.
        ScalePolicy::from_spec(&spec, Template::Http)?;
        crate::retry::validate(&spec).map_err(|e| e.to_string())?;
        crate::triggers::validate(&spec).map_err(|e| e.to_string())?;
        crate::auth::validate(&spec).map_err(|e| e.to_string())?;
        crate::limits::validate(&spec).map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_timeout_and_concurrency() {
        let mut spec = FunctionSpec::new("f", "img");
        spec.timeout_secs = 5;
        spec.concurrency = 3;
        spec.limits.memory = Some(128 << 20);
        let back = FunctionDeployment::from(&spec).into_spec();
        assert_eq!(back.as_ref().map(|s| s.timeout_secs), Ok(5));
        assert_eq!(back.as_ref().map(|s| s.concurrency), Ok(3));
        assert_eq!(back.map(|s| s.limits.memory), Ok(Some(128 << 20)));
    }

    #[test]
    fn status_without_skyfri_fields_parses_and_omits_them() {
        let old = r#"{"name":"f","image":"i","namespace":"openfaas-fn","replicas":2,"availableReplicas":1,"invocationCount":3}"#;
        let s: FunctionStatus = serde_json::from_str(old).expect("OpenFaaS JSON parses");
        assert_eq!((s.replicas, s.available_replicas, s.in_flight), (2, 1, 0));
        assert!(s.scaling.is_none() && s.scale_policy.is_none());
        let v = serde_json::to_value(&s).expect("serialises");
        assert!(v.get("scaling").is_none() && v.get("scalePolicy").is_none());
        assert_eq!(v["availableReplicas"], 1);
        assert_eq!(v["inFlight"], 0);

        let policy = ScalePolicySummary::from(&ScalePolicy::for_concurrency(1));
        assert_eq!(
            (policy.metric.as_str(), policy.target),
            ("concurrency", 1.0)
        );
        let with = FunctionStatus {
            scaling: Some(ScalingDecision {
                desired: 3,
                reason: "stable".into(),
                ..Default::default()
            }),
            scale_policy: Some(policy),
            ..s
        };
        let v = serde_json::to_value(&with).expect("serialises");
        assert_eq!(v["scaling"]["desired"], 3);
        assert_eq!(v["scalePolicy"]["scaleToZero"], false);
        let back: FunctionStatus = serde_json::from_value(v).expect("parses back");
        assert_eq!(back, with);
    }

    #[test]
    fn rejects_bad_fields() {
        let d = |f: fn(&mut FunctionDeployment)| {
            let mut d = FunctionDeployment {
                service: "ok".into(),
                image: "img".into(),
                ..Default::default()
            };
            f(&mut d);
            d.into_spec()
        };
        assert!(d(|d| d.service = "Bad_Name".into()).is_err());
        assert!(d(|d| d.limits = Some(ApiResources {
            memory: Some("128Mbb".into()),
            cpu: None
        }))
        .is_err_and(|e| e.contains("limits.memory")));
        assert!(d(|d| {
            d.env_vars.insert("exec_timeout".into(), "soon".into());
        })
        .is_err());
        assert!(d(|d| d.secrets = vec!["ok".into(), "../x".into()])
            .is_err_and(|e| e.starts_with("secrets[1]: ")));
        assert!(d(|d| {
            d.annotations
                .insert("com.openfaas.retry.attempts".into(), "0".into());
        })
        .is_err_and(|e| e.starts_with("annotations.com.openfaas.retry.attempts: ")));
        assert!(d(|d| {
            d.labels
                .insert("com.skyfri.max-concurrency".into(), "-1".into());
        })
        .is_err_and(|e| e.starts_with("labels.com.skyfri.max-concurrency: \"-1\" is not")));
        assert_eq!(parse_duration_secs("2m"), Some(120));
        assert_eq!(parse_duration_secs("1.5s"), Some(2));
    }
}
