use std::time::Instant;

use skyfri_core::{FunctionSpec, Template};
use skyfri_queue::EmbeddedQueue;
use skyfri_runtime::{ArtefactStore, Endpoint};

use super::*;
use crate::router::Router;
use crate::state::GatewayConfig;
use crate::testing::FakeProvider;

struct Gateway {
    state: AppState,
    provider: Arc<FakeProvider>,
    _tmp: tempfile::TempDir,
}

fn gateway() -> Gateway {
    let tmp = tempfile::tempdir().expect("tempdir");
    let provider = Arc::new(FakeProvider::serving(Endpoint::Tcp(
        ([127, 0, 0, 1], 9).into(),
    )));
    let state = AppState::new(
        GatewayConfig {
            admin_password: "pw".into(),
            max_body: 1024,
            tmp_dir: tmp.path().join("tmp"),
            locations: Default::default(),
            trusted_proxies: Vec::new(),
            limits: Default::default(),
        },
        Arc::new(Store::open(&tmp.path().join("skyfri.db")).expect("store")),
        provider.clone(),
        Arc::new(ArtefactStore::open(tmp.path().join("artefacts")).expect("artefacts")),
        EmbeddedQueue::open(&tmp.path().join("queue.db")).expect("queue"),
    );
    Gateway {
        state,
        provider,
        _tmp: tmp,
    }
}

fn deploy(state: &AppState, name: &str, memory: Option<u64>) {
    let mut spec = FunctionSpec::new(name, "img");
    spec.limits.memory = memory;
    state.set_live(skyfri_core::Deployment {
        spec,
        artefact: "sha256:0".into(),
        template: Template::Http,
        replicas: 1,
    });
}

/// One call of `name` through its router that holds the replica at least `hold`.
async fn call(state: &AppState, name: &str, hold: Duration) {
    let live = state.live(name).expect("deployed");
    let lease = live
        .router
        .acquire(
            || state.provider.endpoints(name),
            || {},
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .expect("a replica");
    tokio::time::sleep(hold).await;
    drop(lease);
}

fn stored(state: &AppState) -> Vec<(String, Usage)> {
    state
        .store
        .usage(Month::of(Utc::now()))
        .expect("usage read")
}

#[tokio::test]
async fn calls_are_metered_with_the_functions_memory_and_written_at_a_flush() {
    let g = gateway();
    deploy(&g.state, "big", Some(256 << 20));
    deploy(&g.state, "plain", None);
    for _ in 0..3 {
        call(&g.state, "big", Duration::from_millis(20)).await;
    }
    call(&g.state, "plain", Duration::ZERO).await;
    // Nothing reaches the store before a flush.
    assert!(stored(&g.state).is_empty());
    *g.provider.cpu.lock().expect("lock") =
        Some(vec![("big".into(), Duration::from_micros(1_234))]);
    flush(&g.state);
    let rows = stored(&g.state);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (ref name, big) = rows[0];
    assert_eq!(name, "big");
    assert_eq!(big.invocations, 3);
    // Each call held its replica for at least the 20 ms it slept.
    assert!(big.duration_ms >= 60, "{big:?}");
    assert_eq!(big.mib_ms, 256 * big.duration_ms);
    assert_eq!(big.cpu_us, 1_234);
    let plain = rows[1].1;
    assert_eq!(plain.invocations, 1);
    assert_eq!(plain.mib_ms, 128 * plain.duration_ms, "the default 128 MiB");
    assert!(g.state.meter.cpu_metered());
    assert!(g.state.meter.last_flush().is_some());

    // A flush with nothing new changes nothing; the next call adds to the stored row.
    flush(&g.state);
    assert_eq!(stored(&g.state), rows);
    call(&g.state, "plain", Duration::ZERO).await;
    flush(&g.state);
    assert_eq!(stored(&g.state)[1].1.invocations, 2);
}

#[tokio::test]
async fn a_removed_function_keeps_its_last_calls_and_leaves_the_meter() {
    let g = gateway();
    deploy(&g.state, "gone", None);
    let live = g.state.live("gone").expect("deployed");
    let lease = live
        .router
        .acquire(
            || g.state.provider.endpoints("gone"),
            || {},
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .expect("a replica");
    g.state.remove_live("gone");
    drop(live);
    // The call in flight finishes after the removal, and still counts.
    drop(lease);
    flush(&g.state);
    assert_eq!(stored(&g.state)[0].1.invocations, 1);
    assert!(g.state.meter.accounts.lock().expect("lock").is_empty());
    // Redeploying under the same name meters into the same row.
    deploy(&g.state, "gone", None);
    call(&g.state, "gone", Duration::ZERO).await;
    flush(&g.state);
    assert_eq!(stored(&g.state)[0].1.invocations, 2);
}

#[tokio::test]
async fn a_router_meters_each_call_it_serves() {
    let router = Arc::new(Router::new(crate::router::Limits {
        per_replica: 0,
        total: 0,
        queue: 10,
    }));
    router.account().set_memory_mib(512);
    let one = vec![Endpoint::Tcp(([127, 0, 0, 1], 9).into())];
    for _ in 0..2 {
        let lease = router
            .acquire(
                || one.clone(),
                || {},
                Instant::now() + Duration::from_secs(1),
            )
            .await;
        assert!(lease.is_ok());
    }
    let taken = router.account().take();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].1.invocations, 2);
    assert_eq!(taken[0].1.mib_ms, 512 * taken[0].1.duration_ms);
    assert!(router.account().take().is_empty());
}
