//! skyfri-runtime: the provider trait the gateway talks to, the content-addressed artefact
//! store functions are built into, and the local provider that runs replicas as processes.

pub mod artefact;
pub mod lambda;
pub mod local;
mod procfs;
pub mod provider;
pub mod templates;

pub use artefact::ArtefactStore;
pub use local::LocalProvider;
pub use provider::{
    CallTracker, Endpoint, LogLine, LogQuery, LogRead, Provider, ReplicaStatus, RuntimeError,
    SecretSource,
};
