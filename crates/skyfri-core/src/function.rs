//! The function specification: what a user declares, independent of where it came from
//! (stack.yml, a Knative Service, or the OpenFaaS REST API).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scaling::ScalePolicy;

/// The only namespace for now, as OpenFaaS names it.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Default exec timeout when a function sets none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// A template a function is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    Python3,
    Python3Http,
    Node,
    Exec,
    Http,
    /// An AWS Lambda Python handler (`module.function`), run by AWS's `awslambdaric`.
    LambdaPython,
    /// An AWS Lambda Node handler (`exports.handler`), run by AWS's `aws-lambda-ric`.
    LambdaNode,
    /// An AWS Lambda custom runtime: an executable `bootstrap` (a shell loop, a Rust
    /// binary built with the `lambda_runtime` crate, ...).
    LambdaProvided,
}

impl Template {
    /// Maps an OpenFaaS `lang` value (a template's name or one of its aliases) to a template.
    pub fn from_lang(lang: &str) -> Option<Template> {
        Template::ALL
            .into_iter()
            .find(|t| t.name() == lang || t.aliases().contains(&lang))
    }

    /// Other `lang` values that mean this template (OpenFaaS template names).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Template::Python3 => &["python", "python3-flask"],
            Template::Python3Http => &["python3-http-debian"],
            Template::Node => &["node18", "node20", "node22", "node-http"],
            Template::Exec => &["dockerfile"],
            Template::Http => &[],
            Template::LambdaPython => &["lambda-python3"],
            Template::LambdaNode => &["lambda-nodejs"],
            Template::LambdaProvided => &["lambda-bootstrap"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Template::Python3 => "python3",
            Template::Python3Http => "python3-http",
            Template::Node => "node",
            Template::Exec => "exec",
            Template::Http => "http",
            Template::LambdaPython => "lambda-python",
            Template::LambdaNode => "lambda-node",
            Template::LambdaProvided => "lambda-provided",
        }
    }

    /// Whether the function is an AWS Lambda handler: its replicas serve the Lambda Runtime
    /// API and take events rather than plain HTTP calls.
    pub fn is_lambda(self) -> bool {
        matches!(
            self,
            Template::LambdaPython | Template::LambdaNode | Template::LambdaProvided
        )
    }

    /// Calls one replica takes at once when the function does not say (0 = unlimited): a
    /// Python or `exec` replica runs one handler call at a time; Node and HTTP servers take
    /// many. A Lambda runtime takes one event at a time, as in AWS.
    pub fn default_concurrency(self) -> u32 {
        match self {
            Template::Python3
            | Template::Python3Http
            | Template::Exec
            | Template::LambdaPython
            | Template::LambdaNode
            | Template::LambdaProvided => 1,
            Template::Node | Template::Http => 0,
        }
    }

    pub const ALL: [Template; 8] = [
        Template::Python3,
        Template::Python3Http,
        Template::Node,
        Template::Exec,
        Template::Http,
        Template::LambdaPython,
        Template::LambdaNode,
        Template::LambdaProvided,
    ];
}

/// Memory and CPU quantities, normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes.
    pub memory: Option<u64>,
    /// Millicores.
    pub cpu_millis: Option<u64>,
}

/// Everything skyfri needs to run one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    pub namespace: String,
    /// Artefact name (the `image` of stack.yml or Knative).
    pub image: String,
    /// The command run by `exec` and `http` templates (`fprocess`), if set.
    pub env_process: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub constraints: Vec<String>,
    pub limits: Resources,
    pub requests: Resources,
    pub read_only_root_filesystem: bool,
    /// Exec timeout in seconds.
    pub timeout_secs: u64,
    /// Maximum in-flight requests per replica, 0 = unlimited.
    pub concurrency: u32,
}

impl FunctionSpec {
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            image: image.into(),
            env_process: None,
            env_vars: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            secrets: Vec::new(),
            constraints: Vec::new(),
            limits: Resources::default(),
            requests: Resources::default(),
            read_only_root_filesystem: false,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            concurrency: 0,
        }
    }

    /// Replicas to start at deploy, from the scale policy (`com.openfaas.scale.min`,
    /// `autoscaling.knative.dev/min-scale`, `initial-scale`, ...): the larger of the minimum
    /// and the initial scale (default 1), or 0 for a function that may scale to zero and
    /// asks for an initial scale of 0. See [`ScalePolicy::initial_replicas`]. A spec whose
    /// policy does not parse (deploys refuse those) gets 1.
    pub fn min_replicas(&self) -> u32 {
        // The template only matters for the concurrency target, not for replica counts.
        ScalePolicy::from_spec(self, Template::Http)
            .map_or(crate::scaling::DEFAULT_MIN_SCALE, |p| p.initial_replicas())
    }

    /// The health path from `com.openfaas.health.http.path`, if any.
    pub fn health_path(&self) -> Option<&str> {
        self.annotations
            .get("com.openfaas.health.http.path")
            .map(String::as_str)
    }
}

/// A function as the platform knows it: its spec plus the artefact it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: FunctionSpec,
    /// Content hash of the artefact (`sha256:...`).
    pub artefact: String,
    pub template: Template,
    /// Desired replica count.
    pub replicas: u32,
}

/// Validates a DNS-1123 label (what Kubernetes and OpenFaaS accept as a function name).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "name {name:?} must be 1 to 63 characters long (a DNS-1123 label)"
        ));
    }
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "name {name:?} is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Validates a secret name: a DNS-1123 subdomain, as Kubernetes names secrets. The name
/// becomes a file name under `/var/openfaas/secrets/`, so the rules also keep out `/`, `.`,
/// `..` and hidden files.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "secret name {name:?} must be 1 to 253 characters long (a DNS-1123 subdomain)"
        ));
    }
    let label_ok = |l: &str| {
        l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!(
            "secret name {name:?} is not a DNS-1123 subdomain: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "vipps-processor", "f1", "a-b-c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_names() {
        let long = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        for good in [
            "a",
            "api-key",
            "db.password",
            "a.b-c.d1",
            "0",
            long.as_str(),
        ] {
            assert!(validate_secret_name(good).is_ok(), "{good}");
        }
        let too_long = "x".repeat(254);
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/a",
            ".hidden",
            "a.",
            "a..b",
            "-a",
            "a-",
            "a.-b",
            "A",
            "a_b",
            "a b",
            "é",
            too_long.as_str(),
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn langs() {
        assert_eq!(Template::from_lang("node18"), Some(Template::Node));
        assert_eq!(Template::from_lang("python3"), Some(Template::Python3));
        assert_eq!(Template::from_lang("cobol"), None);
        assert_eq!(
            Template::from_lang("lambda-python"),
            Some(Template::LambdaPython)
        );
        assert!(Template::LambdaProvided.is_lambda());
        assert!(!Template::Python3.is_lambda());
    }
}
