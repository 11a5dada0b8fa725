//! Replica lifecycle, end to end: a server whose health check fails is replaced, and calls
//! in flight survive a scale-down.

mod common;

use std::time::Duration;

use common::*;
use skyfri_core::Template;
use skyfri_runtime::local::Isolation;
use skyfri_runtime::Provider;

/// An http template server that draws a token per process and whose health path answers
/// 500 once the process has answered a few health checks.
const SICKENING_SERVER: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

TOKEN = os.urandom(8).hex()
CHECKS = 0

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        global CHECKS
        status = 200
        if self.path == "/health":
            CHECKS += 1
            if CHECKS > 4:
                status = 500
        body = TOKEN.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_check_replaces_the_replica() -> Result {
    let env = env()?;
    let mut d = env.function(
        "sickly",
        Template::Http,
        &[("server.py", SICKENING_SERVER)],
        Some("python3 server.py"),
    )?;
    let a = &mut d.spec.annotations;
    a.insert("com.openfaas.health.http.path".into(), "/health".into());
    a.insert(
        "com.openfaas.health.http.initialDelay".into(),
        "100ms".into(),
    );
    a.insert("com.skyfri.health.http.period".into(), "100ms".into());
    env.provider.deploy(&d).await?;
    let first = request(&endpoint(&env.provider, "sickly")?, "GET", "/", &[], "")
        .await?
        .body;

    let mut replaced = None;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(ep) = env.provider.endpoints("sickly").first() {
            if let Ok(r) = request(ep, "GET", "/", &[], "").await {
                if r.body != first {
                    replaced = Some(r.body);
                    break;
                }
            }
        }
    }
    assert!(replaced.is_some(), "the unhealthy server was not replaced");
    wait_for_log(
        &env.provider,
        "sickly",
        "skyfri: health check GET /health failed 3 times (status 500",
    )
    .await?;
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_health_annotations_are_refused() -> Result {
    let env = env()?;
    for (key, value) in [
        ("com.openfaas.health.http.initialDelay", "soon"),
        ("com.skyfri.health.http.period", "0s"),
    ] {
        let mut d = env.function(
            "badhealth",
            Template::Http,
            &[("server.py", SICKENING_SERVER)],
            Some("python3 server.py"),
        )?;
        d.spec.annotations.insert(key.into(), value.into());
        let err = env
            .provider
            .deploy(&d)
            .await
            .err()
            .ok_or("deploy succeeded")?;
        assert!(err.to_string().contains(key), "{err}");
    }
    env.provider.shutdown().await;
    Ok(())
}

/// Scales `name` to zero while a call that takes `CALL_SECONDS` runs on its replica: the
/// call must still be answered, and the replica exit after it.
async fn call_survives_scale_down(
    env: &Env,
    name: &str,
    template: Template,
    files: &[(&str, &str)],
) -> Result {
    let d = env.function(name, template, files, None)?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, name)?;
    let call = tokio::spawn({
        let ep = ep.clone();
        async move {
            request(&ep, "POST", "/", &[], "slow")
                .await
                .map_err(|e| e.to_string())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.provider.scale(name, 0).await?;
    assert!(env.provider.endpoints(name).is_empty());

    let r = call.await??;
    assert_eq!((r.status, r.body.as_str()), (200, "done"), "{name}");
    // Done with its calls, the retired replica goes away.
    let mut gone = false;
    for _ in 0..200 {
        if request(&ep, "GET", "/_/health", &[], "").await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "{name}: the retired replica still serves");
    Ok(())
}

/// Longer than the drain delay plus the old 3 s stop grace: the call outlives both.
const CALL_SECONDS: u64 = 6;

fn python_handler() -> String {
    format!("import time\ndef handle(req):\n    time.sleep({CALL_SECONDS})\n    return 'done'\n")
}

fn node_handler() -> String {
    format!(
        "module.exports = async () => {{\n  await new Promise((r) => setTimeout(r, {}));\n  return 'done';\n}};\n",
        CALL_SECONDS * 1000
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn python_call_survives_scale_down() -> Result {
    let env = env()?;
    let handler = python_handler();
    call_survives_scale_down(
        &env,
        "slowpy",
        Template::Python3,
        &[("handler.py", &handler)],
    )
    .await?;
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn python_call_survives_scale_down_without_sandbox() -> Result {
    let env = env_with(Isolation::none(), Secrets(Vec::new()))?;
    let handler = python_handler();
    call_survives_scale_down(
        &env,
        "slowbare",
        Template::Python3,
        &[("handler.py", &handler)],
    )
    .await?;
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_call_survives_scale_down() -> Result {
    let env = env()?;
    let handler = node_handler();
    call_survives_scale_down(
        &env,
        "slownode",
        Template::Node,
        &[("handler.js", &handler)],
    )
    .await?;
    env.provider.shutdown().await;
    Ok(())
}

/// Calls that hold replicas, as the gateway's router would report them.
#[derive(Default)]
struct Held(std::sync::Mutex<Vec<skyfri_runtime::Endpoint>>);

impl skyfri_runtime::CallTracker for Held {
    fn calls_on(&self, _function: &str, endpoint: &skyfri_runtime::Endpoint) -> usize {
        let held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.iter().filter(|e| *e == endpoint).count()
    }
}

async fn answer(ep: &skyfri_runtime::Endpoint) -> Option<String> {
    request(ep, "POST", "/", &[], "").await.ok().map(|r| r.body)
}

/// A new version takes over at the scale the function runs at, once all its replicas are
/// ready; an old replica a call still holds keeps running until the call lets go of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_takes_over_at_scale_and_waits_for_held_calls() -> Result {
    let env = env()?;
    let held = std::sync::Arc::new(Held::default());
    let tracker: std::sync::Arc<dyn skyfri_runtime::CallTracker> = held.clone();
    env.provider
        .track_calls(std::sync::Arc::downgrade(&tracker));
    let version = |v: &str| format!("def handle(req):\n    return '{v}'\n");
    let v1 = env.function(
        "rollout",
        Template::Python3,
        &[("handler.py", &version("v1"))],
        None,
    )?;
    env.provider.deploy(&v1).await?;
    env.provider.scale("rollout", 3).await?;
    let mut old = Vec::new();
    for _ in 0..500 {
        old = env.provider.endpoints("rollout");
        if old.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(old.len(), 3, "three v1 replicas");
    held.0.lock().expect("lock").push(old[0].clone());

    // Deployed asking for one replica, while three run.
    let v2 = env.function(
        "rollout",
        Template::Python3,
        &[("handler.py", &version("v2"))],
        None,
    )?;
    env.provider.deploy(&v2).await?;
    let status = env.provider.status("rollout").expect("status");
    assert_eq!((status.desired, status.available), (3, 3));
    let new = env.provider.endpoints("rollout");
    assert!(new.iter().all(|e| !old.contains(e)), "{new:?} {old:?}");
    for ep in &new {
        assert_eq!(answer(ep).await.as_deref(), Some("v2"));
    }

    // Past the drain period: the idle old replicas are gone, the held one still answers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        answer(&old[1]).await,
        None,
        "an idle old replica still serves"
    );
    assert_eq!(answer(&old[0]).await.as_deref(), Some("v1"));
    held.0.lock().expect("lock").clear();
    let mut gone = false;
    for _ in 0..200 {
        if answer(&old[0]).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the old replica outlived the call that held it");
    env.provider.shutdown().await;
    Ok(())
}
