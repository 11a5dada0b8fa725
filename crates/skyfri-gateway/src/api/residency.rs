//! `/system/info/residency`: where every piece of data lives, which servers skyfri talks to,
//! which functions may reach the network, and the endpoints functions were given.
//!
//! The list of outbound connections is the whole list, checked against the code (a test in
//! the binary's crate fails when a new module opens connections): NATS when configured,
//! callbacks to URLs callers supply, and the package index at build time when a function
//! has dependencies. No telemetry, no update checks.

use std::path::Path;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use skyfri_core::residency::find_urls;
use skyfri_runtime::local::NETWORK_ANNOTATION;

use crate::error::GatewayError;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Residency {
    pub data_dir: String,
    /// Files and directories under the data dir, each with what it holds.
    pub paths: Vec<Place>,
    /// Servers holding data outside the data dir (the JetStream queue, NATS of topics).
    pub servers: Vec<Place>,
    pub functions: Vec<FunctionData>,
    /// Every connection skyfri itself opens off the machine, and when.
    pub outbound: Vec<Outbound>,
    pub telemetry: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Place {
    pub what: String,
    /// A path, or a URL with any password masked.
    pub location: String,
    pub holds: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionData {
    pub name: String,
    /// `host` (shares the host's network) or `none` (`com.skyfri.network: none`).
    pub network: String,
    /// URL-like values in its environment, credentials masked.
    pub endpoints: Vec<Endpoint>,
    /// Secrets it reads (names only; values may hold more connection strings).
    pub secrets: Vec<String>,
    /// NATS subjects it is subscribed to (`topic` annotation).
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub env: String,
    pub scheme: String,
    pub url: String,
    /// A database, cache or broker (by scheme) rather than another kind of endpoint.
    pub data_store: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbound {
    pub to: String,
    pub when: String,
}

pub const TELEMETRY: &str =
    "none: skyfri sends no telemetry, usage data or crash reports, and never checks for updates";

fn masked(url: &str) -> String {
    find_urls(url)
        .into_iter()
        .next()
        .map_or_else(|| url.to_string(), |u| u.masked)
}

fn paths(dir: &Path, embedded_queue: bool) -> Vec<Place> {
    let place = |what: &str, file: &str, holds: &str| Place {
        what: what.into(),
        location: dir.join(file).display().to_string(),
        holds: holds.into(),
    };
    let mut out = vec![
        place(
            "store",
            "skyfri.db",
            "deployed functions, image names, secrets (encrypted); SQLite with -wal/-shm beside it",
        ),
        place(
            "secret key",
            "secret.key",
            "the key secrets are encrypted with (owner-only)",
        ),
        place(
            "admin password",
            "admin-password",
            "the gateway's admin password (owner-only)",
        ),
        place(
            "artefacts",
            "artefacts",
            "built function code and installed dependencies",
        ),
        place(
            "logs",
            "logs",
            "function stdout/stderr, one JSON-lines file per function, rotated",
        ),
        place(
            "run",
            "run",
            "replicas' sockets and scratch files while they run",
        ),
        place("tmp", "tmp", "uploads being unpacked"),
    ];
    if embedded_queue {
        out.insert(
            3,
            place(
                "async queue",
                "queue.db",
                "async calls with their bodies and results until done",
            ),
        );
    }
    out
}

pub async fn residency(State(state): State<AppState>) -> Result<Json<Residency>, GatewayError> {
    let loc = &state.locations;
    let stored = state.with_store(|s| s.list_functions()).await?;
    let mut functions = Vec::with_capacity(stored.len());
    let mut with_topics = Vec::new();
    for f in stored {
        let spec = &f.deployment.spec;
        let network = match spec.annotations.get(NETWORK_ANNOTATION).map(|v| v.trim()) {
            Some("none") => "none",
            _ => "host",
        };
        let endpoints = spec
            .env_vars
            .iter()
            .flat_map(|(env, value)| {
                find_urls(value).into_iter().map(|u| Endpoint {
                    env: env.clone(),
                    scheme: u.scheme,
                    url: u.masked,
                    data_store: u.store,
                })
            })
            .collect();
        let topics = skyfri_core::triggers::topics(spec).unwrap_or_default();
        if !topics.is_empty() {
            with_topics.push(spec.name.clone());
        }
        functions.push(FunctionData {
            name: spec.name.clone(),
            network: network.into(),
            endpoints,
            secrets: spec.secrets.clone(),
            topics,
        });
    }

    let mut servers = Vec::new();
    let mut outbound = Vec::new();
    if let Some(url) = &loc.queue_url {
        servers.push(Place {
            what: "async queue (JetStream)".into(),
            location: masked(url),
            holds: "async calls with their bodies and results until done".into(),
        });
        outbound.push(Outbound {
            to: masked(url),
            when: "always: the async queue".into(),
        });
    }
    if let Some(url) = &loc.nats_url {
        let used = if with_topics.is_empty() {
            "not dialled: no function has a topic".to_string()
        } else {
            format!("topic triggers of {}", with_topics.join(", "))
        };
        servers.push(Place {
            what: "NATS (topic triggers)".into(),
            location: masked(url),
            holds: "messages published to the functions' subjects".into(),
        });
        if !with_topics.is_empty() || loc.queue_url.as_deref() != Some(url) {
            outbound.push(Outbound {
                to: masked(url),
                when: used,
            });
        }
    }
    outbound.push(Outbound {
        to: "the X-Callback-Url of an async call (chosen by its caller)".into(),
        when: "when an async call with a callback finishes".into(),
    });
    outbound.push(Outbound {
        to: "the Python/npm package index (PyPI, registry.npmjs.org, or the one pip.conf/.npmrc names)".into(),
        when: "at build, when a function has requirements.txt or package.json".into(),
    });
    Ok(Json(Residency {
        data_dir: loc.data_dir.display().to_string(),
        paths: paths(&loc.data_dir, loc.queue_url.is_none()),
        servers,
        functions,
        outbound,
        telemetry: TELEMETRY.into(),
    }))
}
