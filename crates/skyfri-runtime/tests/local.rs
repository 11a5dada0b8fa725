//! End-to-end tests of the local provider: real artefacts, real processes, real HTTP.

mod common;

use std::time::Duration;

use common::*;
use skyfri_core::Template;
use skyfri_runtime::{Endpoint, Provider};
use tokio::io::BufReader;
use tokio::net::UnixStream;

#[tokio::test(flavor = "multi_thread")]
async fn python3_classic() -> Result {
    let env = env()?;
    let handler = r#"
import os
def handle(req):
    print("got " + req)
    if req == "json":
        return {"greeting": os.environ["GREETING"], "home": os.environ["HOME"] != ""}
    if req == "none":
        return None
    if req == "boom":
        raise ValueError("boom!")
    return "Hello " + req
"#;
    let d = env.function("py", Template::Python3, &[("handler.py", handler)], None)?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "py")?;
    assert!(matches!(ep, Endpoint::Unix(_)));

    // Several requests on one kept-alive connection.
    let Endpoint::Unix(path) = &ep else {
        return Err("not unix".into());
    };
    let mut conn = BufReader::new(UnixStream::connect(path).await?);
    let r = exchange(&mut conn, "POST", "/", &[], "world").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "Hello world"));
    let r = exchange(&mut conn, "POST", "/x?y=1", &[], "json").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["greeting"], "hej");
    let r = exchange(&mut conn, "POST", "/", &[], "none").await?;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    let r = exchange(&mut conn, "POST", "/", &[], "boom").await?;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("boom!"), "{}", r.body);
    let r = exchange(&mut conn, "GET", "/_/health", &[], "").await?;
    assert_eq!(r.status, 200);

    wait_for_log(&env.provider, "py", "got world").await?;
    wait_for_log(&env.provider, "py", "ValueError: boom!").await?;
    let query = skyfri_runtime::LogQuery {
        tail: Some(1),
        ..Default::default()
    };
    let tail: Vec<_> = env.provider.logs("py", &query).stored.collect();
    assert_eq!(tail.len(), 1);
    assert!(tail[0].instance.starts_with("py-"));

    let status = env.provider.status("py").ok_or("no status")?;
    assert_eq!((status.desired, status.available), (1, 1));
    env.provider.remove("py").await?;
    assert!(env.provider.endpoints("py").is_empty());
    assert!(env.provider.status("py").is_none());
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn python3_http() -> Result {
    let env = env()?;
    let handler = r#"
def handle(event, context):
    return {
        "statusCode": 201,
        "body": {
            "method": event.method,
            "path": event.path,
            "query": event.query,
            "body": event.body.decode(),
            "ua": event.headers.get("x-custom"),
            "host": context.hostname,
        },
        "headers": {"X-Test": "yes"},
    }
"#;
    let d = env.function(
        "pyhttp",
        Template::Python3Http,
        &[("handler.py", handler)],
        None,
    )?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "pyhttp")?;
    let r = request(&ep, "PUT", "/a/b?x=1&x=2&y=z", &[("X-Custom", "c")], "data").await?;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-test"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"]["x"], "1");
    assert_eq!(v["query"]["y"], "z");
    assert_eq!(v["body"], "data");
    assert_eq!(v["ua"], "c");
    assert!(v["host"].as_str().is_some_and(|h| h.starts_with("pyhttp-")));
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn node() -> Result {
    let env = env()?;
    let handler = r#"
'use strict';
module.exports = async (event, context) => {
  console.log('node got', JSON.stringify(event.body));
  if (event.query.fail) {
    return context.fail('went wrong');
  }
  if (event.query.text) {
    return context.status(202).headers({'X-Node': '1'}).succeed('plain');
  }
  return { body: event.body, method: event.method, path: event.path, q: event.query };
};
"#;
    let d = env.function("nodefn", Template::Node, &[("handler.js", handler)], None)?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "nodefn")?;

    let r = request(
        &ep,
        "POST",
        "/p?a=b",
        &[("Content-Type", "application/json")],
        r#"{"k":1}"#,
    )
    .await?;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["body"]["k"], 1);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/p");
    assert_eq!(v["q"]["a"], "b");

    let r = request(&ep, "GET", "/?text=1", &[], "").await?;
    assert_eq!((r.status, r.body.as_str()), (202, "plain"));
    assert_eq!(r.header("x-node"), Some("1"));

    let r = request(&ep, "GET", "/?fail=1", &[], "").await?;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("went wrong"), "{}", r.body);

    wait_for_log(&env.provider, "nodefn", "node got").await?;
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_watchdog() -> Result {
    let env = env()?;
    let script =
        "#!/bin/sh\ntr a-z A-Z\necho \"$Http_Method $Http_Path $Http_Query $Http_X_Thing\"\n";
    let d = env.function(
        "execfn",
        Template::Exec,
        &[("run.sh", script)],
        Some("sh run.sh"),
    )?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "execfn")?;
    let r = request(&ep, "POST", "/p?q=1", &[("X-Thing", "t")], "abc\n").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ABC\nPOST /p q=1 t\n");

    let d = env.function(
        "execfail",
        Template::Exec,
        &[],
        Some("echo nope >&2; exit 3"),
    )?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "execfail")?;
    let r = request(&ep, "POST", "/", &[], "").await?;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("nope"));

    // Past the exec timeout the process group is killed, as the classic watchdog does.
    let marker = env.handlers.join("slow-ran");
    let mut d = env.function(
        "execslow",
        Template::Exec,
        &[],
        Some(&format!("sleep 3; touch {}", marker.display())),
    )?;
    d.spec.timeout_secs = 1;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "execslow")?;
    let r = request(&ep, "POST", "/", &[], "").await?;
    assert_eq!(r.status, 504, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "the timed-out process ran on");
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_template() -> Result {
    let env = env()?;
    let server = r#"
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("http ok " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;
    let mut d = env.function(
        "httpfn",
        Template::Http,
        &[("server.py", server)],
        Some("python3 server.py"),
    )?;
    d.spec
        .annotations
        .insert("com.openfaas.health.http.path".into(), "/healthz".into());
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "httpfn")?;
    assert!(matches!(ep, Endpoint::Tcp(_)));
    let r = request(&ep, "GET", "/hello", &[], "").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "http ok /hello"));
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_replica_is_restarted() -> Result {
    let env = env()?;
    // Each process start draws a new token; "die" kills the process mid-call.
    let handler = "import os\nTOKEN = os.urandom(8).hex()\ndef handle(req):\n    if req == 'die':\n        os.kill(os.getpid(), 9)\n    return TOKEN\n";
    let d = env.function(
        "victim",
        Template::Python3,
        &[("handler.py", handler)],
        None,
    )?;
    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "victim")?;
    let pid = request(&ep, "POST", "/", &[], "").await?.body;
    assert!(request(&ep, "POST", "/", &[], "die").await.is_err());
    assert_eq!(env.provider.report_failure("victim", &ep), None);

    let mut new_pid = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if let Some(ep) = env.provider.endpoints("victim").first() {
            if let Ok(r) = request(ep, "POST", "/", &[], "").await {
                new_pid = Some(r.body);
                break;
            }
        }
    }
    let new_pid = new_pid.ok_or("replica was not restarted")?;
    assert_ne!(pid, new_pid);
    wait_for_log(&env.provider, "victim", "restarting").await?;
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn import_error_fails_deploy() -> Result {
    // A syntax error fails the build already (artefact.rs); this one compiles and fails
    // when the replica imports it.
    let env = env()?;
    let d = env.function(
        "broken",
        Template::Python3,
        &[("handler.py", "raise RuntimeError('broken at import')\n")],
        None,
    )?;
    let err = env
        .provider
        .deploy(&d)
        .await
        .err()
        .ok_or("deploy succeeded")?;
    let msg = err.to_string();
    assert!(msg.contains("broken at import"), "{msg}");
    assert!(env.provider.status("broken").is_none());
    wait_for_log(&env.provider, "broken", "broken at import").await?;
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn update_and_scale() -> Result {
    let env = env()?;
    let v1 = env.function(
        "upd",
        Template::Python3,
        &[("handler.py", "def handle(req):\n    return 'v1'\n")],
        None,
    )?;
    env.provider.deploy(&v1).await?;
    let v2 = env.function(
        "upd",
        Template::Python3,
        &[("handler.py", "def handle(req):\n    return 'v2'\n")],
        None,
    )?;
    env.provider.deploy(&v2).await?;
    let ep = endpoint(&env.provider, "upd")?;
    assert_eq!(request(&ep, "POST", "/", &[], "").await?.body, "v2");

    env.provider.scale("upd", 3).await?;
    for _ in 0..200 {
        if env.provider.status("upd").is_some_and(|s| s.available == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(env.provider.endpoints("upd").len(), 3);
    env.provider.scale("upd", 0).await?;
    let status = env.provider.status("upd").ok_or("gone")?;
    assert_eq!((status.desired, status.available), (0, 0));
    assert!(env.provider.scale("nope", 1).await.is_err());
    env.provider.shutdown().await;
    Ok(())
}
