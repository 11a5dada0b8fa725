//! The gateway's shared state: the durable store, the provider, and the in-memory view of
//! deployed functions that the invoke path reads without touching the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use skyfri_core::Deployment;
use skyfri_runtime::{ArtefactStore, Provider};
use skyfri_store::Store;

use crate::metrics::Metrics;
use crate::upstream::{self, UpstreamClient};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub admin_password: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Scratch space for uploads.
    pub tmp_dir: std::path::PathBuf,
}

/// One deployed function as the invoke path sees it.
pub struct Live {
    pub deployment: Deployment,
    pub invocations: AtomicU64,
    next: AtomicUsize,
}

impl Live {
    pub fn new(deployment: Deployment) -> Live {
        Live {
            deployment,
            invocations: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Round-robin position for the next call.
    pub fn next_index(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<Store>,
    pub provider: Arc<dyn Provider>,
    pub artefacts: Arc<ArtefactStore>,
    pub admin_password: String,
    pub max_body: usize,
    pub tmp_dir: std::path::PathBuf,
    pub metrics: Metrics,
    pub client: UpstreamClient,
    functions: RwLock<HashMap<String, Arc<Live>>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: GatewayConfig,
        store: Arc<Store>,
        provider: Arc<dyn Provider>,
        artefacts: Arc<ArtefactStore>,
    ) -> AppState {
        AppState(Arc::new(Inner {
            store,
            provider,
            artefacts,
            admin_password: config.admin_password,
            max_body: config.max_body,
            tmp_dir: config.tmp_dir,
            metrics: Metrics::default(),
            client: upstream::client(),
            functions: RwLock::new(HashMap::new()),
        }))
    }

    pub fn live(&self, name: &str) -> Option<Arc<Live>> {
        self.functions
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
    }

    /// Publishes a deployment to the invoke path, keeping its invocation count.
    pub fn set_live(&self, deployment: Deployment) {
        let name = deployment.spec.name.clone();
        self.metrics.set_replicas(&name, deployment.replicas);
        if let Ok(mut m) = self.functions.write() {
            let live = Live::new(deployment);
            if let Some(old) = m.get(&name) {
                live.invocations
                    .store(old.invocations.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            m.insert(name, Arc::new(live));
        }
    }

    pub fn remove_live(&self, name: &str) {
        self.metrics.forget(name);
        if let Ok(mut m) = self.functions.write() {
            m.remove(name);
        }
    }
}
