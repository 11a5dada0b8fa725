//! The sandbox and the limits, with real namespaces and cgroups: what a replica can reach,
//! and what happens when it exceeds its memory or forks without end.

mod common;

use std::time::Duration;

use common::*;
use skyfri_core::Template;
use skyfri_runtime::local::Isolation;
use skyfri_runtime::Provider;

/// Skips (loudly) where the kernel gives no sandbox or no limits: the machines this project
/// runs on have both, so CI exercises everything.
fn isolated() -> Option<Isolation> {
    let isolation = Isolation::detect();
    let missing = isolation.missing();
    if missing.is_empty() {
        Some(isolation)
    } else {
        eprintln!("SKIPPED: this host cannot isolate replicas: {missing:?}");
        None
    }
}

const PROBE: &str = r#"
import json, os

def attempt(fn):
    try:
        fn()
        return "yes"
    except Exception as e:
        return type(e).__name__

def read(path):
    def go():
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
    return go

def write(path):
    def go():
        with open(path, "w") as f:
            f.write("x")
    return go

def handle(req):
    targets = json.loads(req)
    out = {
        "uid": os.getuid(),
        "hostname": os.uname().nodename,
        "write_tmp": attempt(write("/tmp/ok")),
        "write_var_tmp": attempt(write("/var/tmp/ok")),
        "write_app": attempt(write(os.path.join(os.getcwd(), "new-file"))),
        "write_usr": attempt(write("/usr/skyfri-test")),
        "read_root": attempt(read("/root")),
        "secret_mine": open("/var/openfaas/secrets/mine").read() if os.path.exists("/var/openfaas/secrets/mine") else None,
        "secret_other": attempt(read("/var/openfaas/secrets/other")),
        "env_has_secret": any("s3cr3t" in v for v in os.environ.values()),
    }
    for key, path in targets.items():
        out[key] = attempt(read(path))
    return out
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_sees_only_its_own_files() -> Result {
    let Some(isolation) = isolated() else {
        return Ok(());
    };
    let env = env_with(
        isolation,
        Secrets(vec![("mine", "s3cr3t-mine"), ("other", "s3cr3t-other")]),
    )?;
    let other = env.function(
        "neighbour",
        Template::Python3,
        &[("handler.py", "def handle(req):\n    return 'hi'\n")],
        None,
    )?;
    env.provider.deploy(&other).await?;
    let mut d = env.function("prober", Template::Python3, &[("handler.py", PROBE)], None)?;
    d.spec.secrets = vec!["mine".into()];
    env.provider.deploy(&d).await?;

    let neighbour_artefact = env.store.path(&other.artefact).ok_or("no artefact path")?;
    let targets = serde_json::json!({
        "read_neighbour": neighbour_artefact,
        "read_data_dir": env._dir.path(),
        "read_shadow": "/etc/shadow",
    });
    let ep = endpoint(&env.provider, "prober")?;
    let r = request(&ep, "POST", "/", &[], &targets.to_string()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["uid"], 65534, "{v}");
    assert!(
        v["hostname"]
            .as_str()
            .is_some_and(|h| h.starts_with("prober-")),
        "{v}"
    );
    assert_eq!(v["write_tmp"], "yes", "{v}");
    assert_ne!(v["write_app"], "yes", "{v}");
    assert_ne!(v["write_usr"], "yes", "{v}");
    assert_ne!(v["read_root"], "yes", "{v}");
    assert_ne!(v["read_neighbour"], "yes", "{v}");
    assert_ne!(v["read_data_dir"], "yes", "{v}");
    assert_ne!(v["read_shadow"], "yes", "{v}");
    assert_eq!(v["secret_mine"], "s3cr3t-mine", "{v}");
    assert_ne!(v["secret_other"], "yes", "{v}");
    assert_eq!(v["env_has_secret"], false, "{v}");
    assert_eq!(v["write_var_tmp"], "yes", "{v}");

    // readonly_root_filesystem: only /tmp stays writable.
    let mut ro = env.function(
        "readonly",
        Template::Python3,
        &[("handler.py", PROBE)],
        None,
    )?;
    ro.spec.read_only_root_filesystem = true;
    env.provider.deploy(&ro).await?;
    let ep = endpoint(&env.provider, "readonly")?;
    let r = request(&ep, "POST", "/", &[], "{}").await?;
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["write_tmp"], "yes", "{v}");
    assert_ne!(v["write_var_tmp"], "yes", "{v}");
    assert_ne!(v["write_app"], "yes", "{v}");
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_network_when_asked() -> Result {
    let Some(isolation) = isolated() else {
        return Ok(());
    };
    let env = env_with(isolation, Secrets(Vec::new()))?;
    let handler = "import socket\ndef handle(req):\n    return str(len(socket.if_nameindex()))\n";
    let mut d = env.function(
        "offline",
        Template::Python3,
        &[("handler.py", handler)],
        None,
    )?;
    d.spec
        .annotations
        .insert("com.skyfri.network".into(), "none".into());
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "offline")?;
    let r = request(&ep, "POST", "/", &[], "").await?;
    // Only the loopback interface exists in a fresh network namespace.
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_kills_only_the_offender() -> Result {
    let Some(isolation) = isolated() else {
        return Ok(());
    };
    let env = env_with(isolation, Secrets(Vec::new()))?;
    let hog = "def handle(req):\n    if req == 'hog':\n        blocks = [bytearray(1 << 20) for _ in range(256)]\n        return str(len(blocks))\n    return 'fine'\n";
    let mut d = env.function("hog", Template::Python3, &[("handler.py", hog)], None)?;
    d.spec.limits.memory = Some(64 << 20);
    env.provider.deploy(&d).await?;
    let bystander = env.function(
        "bystander",
        Template::Python3,
        &[("handler.py", "def handle(req):\n    return 'still here'\n")],
        None,
    )?;
    env.provider.deploy(&bystander).await?;

    let ep = endpoint(&env.provider, "hog")?;
    assert!(
        request(&ep, "POST", "/", &[], "hog").await.is_err(),
        "the call past the limit should lose its connection"
    );
    let cause = env.provider.report_failure("hog", &ep).unwrap_or_default();
    assert!(cause.contains("memory limit of 64Mi"), "cause: {cause:?}");
    let b = endpoint(&env.provider, "bystander")?;
    let r = request(&b, "POST", "/", &[], "").await?;
    assert_eq!(r.body, "still here");
    wait_for_log(&env.provider, "hog", "exceeded its memory limit of 64Mi").await?;

    // A fresh process serves the next call.
    let mut answered = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if let Some(ep) = env.provider.endpoints("hog").first() {
            if let Ok(r) = request(ep, "POST", "/", &[], "small").await {
                answered = Some(r.body);
                break;
            }
        }
    }
    assert_eq!(answered.as_deref(), Some("fine"));
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_hits_the_pids_limit() -> Result {
    let Some(isolation) = isolated() else {
        return Ok(());
    };
    let env = env_with(isolation, Secrets(Vec::new()))?;
    // Forks until the kernel refuses, then reports how far it got and cleans up.
    let bomb = r#"
import os, signal, time

def handle(req):
    children = []
    error = None
    try:
        for _ in range(5000):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    except OSError as e:
        error = e.strerror
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return "%d %s" % (len(children), error)
"#;
    let mut d = env.function("bomb", Template::Python3, &[("handler.py", bomb)], None)?;
    d.spec
        .annotations
        .insert("com.skyfri.pids-limit".into(), "64".into());
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "bomb")?;
    let r = request(&ep, "POST", "/", &[], "").await?;
    let (count, error) = r.body.split_once(' ').ok_or("bad answer")?;
    let count: usize = count.parse()?;
    assert!(count < 64, "{}", r.body);
    assert_ne!(error, "None", "{}", r.body);
    env.provider.shutdown().await;
    Ok(())
}
