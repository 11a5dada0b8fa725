//! skyfri-core: domain types and the parsers of what users bring (stack.yml, Knative
//! Service manifests). No I/O: callers read files and pass their text in.

pub mod auth;
pub mod function;
pub mod lambda;
pub mod limits;
pub mod manifest;
pub mod openfaas;
pub mod quantity;
pub mod residency;
pub mod retry;
pub mod scaling;
pub mod sysctl;
pub mod triggers;
pub mod usage;

pub use function::{
    validate_name, validate_secret_name, Deployment, FunctionSpec, Resources, Template,
};
pub use retry::RetryPolicy;
pub use scaling::{Autoscaler, Decision, Metric, ScalePolicy};

/// Helpers shared by the unit tests of the policy modules.
#[cfg(test)]
mod test_support;
