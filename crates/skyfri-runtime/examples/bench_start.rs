//! Replica start time with and without the sandbox, for bench/isolation.sh: deploys a trivial
//! `python3` function N times under each isolation and prints one `label p50_ms p99_ms` line
//! per isolation (deploy call to first ready replica, which includes the handler import).

use std::sync::Arc;
use std::time::Instant;

use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_runtime::local::Isolation;
use skyfri_runtime::{ArtefactStore, LocalProvider, Provider, SecretSource};

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret(&self, _: &str) -> std::result::Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn measure(label: &str, isolation: Isolation, runs: usize) -> Result {
    let dir = tempfile::tempdir()?;
    let handler = dir.path().join("src");
    std::fs::create_dir_all(&handler)?;
    std::fs::write(
        handler.join("handler.py"),
        "def handle(req):\n    return 'ok'\n",
    )?;
    let store = ArtefactStore::open(dir.path().join("artefacts"))?;
    let artefact = store.build(Template::Python3, &handler)?;
    let provider = LocalProvider::new(
        store,
        dir.path().join("run"),
        dir.path().join("logs"),
        isolation,
        Arc::new(NoSecrets),
    )?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let d = Deployment {
            spec: FunctionSpec::new(format!("start-{i}"), "bench"),
            artefact: artefact.clone(),
            template: Template::Python3,
            replicas: 1,
        };
        let start = Instant::now();
        provider.deploy(&d).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        provider.remove(&d.spec.name).await?;
    }
    provider.shutdown().await;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!("{label} {:.1} {:.1}", at(0.5), at(0.99));
    Ok(())
}

#[tokio::main]
async fn main() -> Result {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    let sandboxed = Isolation::detect();
    if !sandboxed.missing().is_empty() {
        eprintln!("warning: incomplete isolation: {:?}", sandboxed.missing());
    }
    measure("plain", Isolation::none(), runs).await?;
    measure("sandboxed", sandboxed, runs).await?;
    Ok(())
}
