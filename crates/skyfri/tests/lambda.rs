//! AWS Lambda handlers run by AWS's own runtime clients (awslambdaric, aws-lambda-ric, the
//! lambda_runtime crate) behind the real skyfri binary: HTTP calls arrive as API Gateway
//! HTTP API events and answers are mapped back, handler errors are 502s naming the error
//! type, init errors fail the deploy, deadlines follow the timeout, and no other function can
//! reach a replica's Runtime API.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fixtures, Platform};

fn lambda_fixtures() -> PathBuf {
    fixtures().join("lambda")
}

fn deploy(p: &Platform, dir: &Path, file: &str) {
    let out = p.cli_in(dir, &["deploy", "-f", file], "");
    assert!(
        out.ok,
        "deploy of {file} failed: {}\n{}\n{}",
        out.stderr,
        out.stdout,
        p.logs()
    );
}

#[test]
fn python_handler_through_awslambdaric() {
    let p = Platform::start_with(&["--aws-region", "eu-north-1"]);
    deploy(&p, &lambda_fixtures(), "stack.yml");

    // The documented event shape: path, query, cookies, repeated headers, a JSON body.
    let r = p.http(
        "POST",
        "/function/py-echo/some/path?a=1&a=2&b=x%20y",
        &[
            ("Cookie", "c1=x; c2=y"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("Content-Type", "application/json"),
            ("User-Agent", "lambda-test"),
            // Only the gateway's Invoke API may say this: from outside it is dropped.
            ("X-Skyfri-Lambda-Event", "raw"),
            // Nor may a caller say where it comes from (no trusted proxy here).
            ("X-Skyfri-Source-Ip", "203.0.113.7"),
            ("X-Forwarded-For", "203.0.113.8"),
        ],
        br#"{"hello":"world"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
    let out = r.json();
    let event = &out["event"];
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["routeKey"], "$default");
    assert_eq!(event["rawPath"], "/some/path");
    assert_eq!(event["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(
        event["queryStringParameters"],
        serde_json::json!({"a": "1,2", "b": "x y"})
    );
    assert_eq!(event["cookies"], serde_json::json!(["c1=x", "c2=y"]));
    assert_eq!(event["headers"]["x-multi"], "one,two");
    assert!(event["headers"].get("cookie").is_none(), "{event}");
    assert!(event["headers"].get("x-skyfri-lambda-event").is_none());
    assert_eq!(event["headers"]["host"], p.addr.as_str());
    assert_eq!(event["body"], r#"{"hello":"world"}"#);
    assert_eq!(event["isBase64Encoded"], false);
    let http = &event["requestContext"]["http"];
    assert_eq!(http["method"], "POST");
    assert_eq!(http["path"], "/some/path");
    assert_eq!(http["userAgent"], "lambda-test");
    assert_eq!(http["sourceIp"], "127.0.0.1");
    assert!(event["headers"].get("x-skyfri-source-ip").is_none());
    // The request id is the call id, so logs and answers correlate.
    assert_eq!(
        Some(out["requestId"].as_str().expect("test setup")),
        r.header("x-call-id")
    );
    assert_eq!(event["requestContext"]["requestId"], out["requestId"]);
    assert_eq!(
        out["functionArn"],
        "arn:aws:lambda:eu-north-1:000000000000:function:py-echo"
    );
    // Deadline-Ms follows the function's timeout (exec_timeout: 3s).
    let remaining = out["remainingMs"].as_i64().expect("test setup");
    assert!(
        remaining > 0 && remaining <= 3000,
        "remaining {remaining} ms"
    );
    assert_eq!(out["memory"], "256");
    let env = &out["env"];
    assert_eq!(env["AWS_REGION"], "eu-north-1");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "py-echo");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["_HANDLER"], "app.handler");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/home/app/function");
    assert!(
        env["AWS_LAMBDA_LOG_STREAM_NAME"]
            .as_str()
            .is_some_and(|s| s.starts_with("py-echo-")),
        "{env}"
    );
    assert!(
        env["AWS_LAMBDA_RUNTIME_API"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{env}"
    );

    // A binary body arrives base64-encoded.
    let png = [0x89u8, b'P', b'N', b'G', 0, 1, 2, 0xff];
    let r = p.http(
        "POST",
        "/function/py-echo/upload",
        &[("Content-Type", "image/png")],
        &png,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let event = &r.json()["event"];
    assert_eq!(event["isBase64Encoded"], true);
    assert_eq!(event["body"], "iVBORwABAv8=");

    // A binary answer with cookies, mapped back as API Gateway does.
    let r = p.http("GET", "/function/py-echo?action=binary", &[], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("x-custom"), Some("yes"));
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    assert_eq!(r.body, [0x89, 0x50, 0x4E, 0x47, 0, 255]);

    // A plain string is a 200 JSON answer.
    let r = p.http("GET", "/function/py-echo?action=string", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "just a string");

    // A handler error: 502 with the error type and Lambda's error JSON.
    let r = p.http("GET", "/function/py-echo?action=fail", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-skyfri-function-error"), Some("ValueError"));
    let error = r.json();
    assert_eq!(error["errorType"], "ValueError");
    assert_eq!(error["errorMessage"], "the handler was asked to fail");
    assert!(error["stackTrace"].is_array());

    // The Invoke API's contract with a replica: a raw event in, the result out verbatim,
    // the client context passed on decoded; a handler error as in HTTP mode.
    use base64::Engine;
    let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"k":"v"}}"#);
    let r = replica_call(
        &p.data_dir,
        "py-echo",
        &[
            ("X-Skyfri-Lambda-Event", "raw"),
            ("X-Amz-Client-Context", &context),
        ],
        br#"{"action":"raw","n":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"got": {"action": "raw", "n": 1}, "clientContext": {"k": "v"}})
    );
    let r = replica_call(
        &p.data_dir,
        "py-echo",
        &[("X-Skyfri-Lambda-Event", "raw")],
        br#"{"action":"fail"}"#,
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-skyfri-function-error"), Some("ValueError"));
    assert_eq!(r.json()["errorType"], "ValueError");

    // A handler past its deadline: the call times out, the environment is replaced, and
    // the function answers again.
    let r = p.http("GET", "/function/py-echo?action=sleep", &[], b"");
    assert_eq!(r.status, 504, "{}", r.text());
    let started = Instant::now();
    loop {
        let r = p.http("GET", "/function/py-echo?action=string", &[], b"");
        if r.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no answer after the timeout: {} {}\n{}",
            r.status,
            r.text(),
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    loop {
        let logs = p.cli(&["logs", "py-echo"], "");
        if logs.stdout.contains("Task timed out after 3.00 seconds") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no timeout logged: {}",
            logs.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn another_function_cannot_take_a_replicas_events() {
    let p = Platform::start();
    deploy(&p, &lambda_fixtures(), "stack.yml");
    let port = runtime_api_port(p.pid(), "py-echo")
        .unwrap_or_else(|| panic!("no Runtime API port of py-echo found\n{}", p.logs()));
    // The thief is an ordinary function on the same loopback, as the same user.
    let r = p.http("POST", "/function/thief", &[], port.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "closed", "the thief got through");
    // The refusal is in the victim's log (written as the replica prints it).
    let started = Instant::now();
    loop {
        let logs = p.cli(&["logs", "py-echo"], "");
        if logs.stdout.contains("refused a Runtime API connection") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no refusal logged: {}",
            logs.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The victim still serves its own events.
    let r = p.http("GET", "/function/py-echo?action=string", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn an_init_error_fails_the_deploy_with_its_message() {
    let p = Platform::start();
    let out = p.cli_in(&lambda_fixtures(), &["deploy", "-f", "broken.yml"], "");
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("Runtime.ImportModuleError")
            && out.stderr.contains("this_module_does_not_exist"),
        "{}",
        out.stderr
    );
}

#[test]
fn node_handler_through_aws_lambda_ric() {
    let p = Platform::start();
    deploy(&p, &lambda_fixtures(), "node.yml");
    let r = p.http("GET", "/function/node-echo/hello", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
    assert_eq!(r.header("set-cookie"), Some("from=node"));
    let out = r.json();
    assert_eq!(out["rawPath"], "/hello");
    assert_eq!(out["method"], "GET");
    assert_eq!(
        Some(out["requestId"].as_str().expect("test setup")),
        r.header("x-call-id")
    );
    assert_eq!(
        out["functionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:node-echo"
    );
    let remaining = out["remainingMs"].as_i64().expect("test setup");
    assert!(remaining > 0 && remaining <= 60_000, "{remaining}");

    let r = p.http("GET", "/function/node-echo?action=fail", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-skyfri-function-error"), Some("NodeFailure"));
    assert_eq!(
        r.json()["errorMessage"],
        "the node handler was asked to fail"
    );
}

#[test]
fn rust_bootstrap_with_lambda_runtime() {
    let bootstrap = build_rust_bootstrap();
    let dir = tempfile::tempdir().expect("test setup");
    let handler = dir.path().join("rust-echo");
    std::fs::create_dir_all(&handler).expect("test setup");
    std::fs::copy(&bootstrap, handler.join("bootstrap")).expect("test setup");
    std::fs::write(
        dir.path().join("stack.yml"),
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  rust-echo:\n    lang: lambda-provided\n    handler: ./rust-echo\n    image: skyfri-tests/rust-echo:latest\n    environment:\n      exec_timeout: 5s\n",
    )
    .expect("test setup");
    let p = Platform::start();
    deploy(&p, dir.path(), "stack.yml");
    let r = p.http("GET", "/function/rust-echo/from/rust", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
    let out = r.json();
    assert_eq!(out["runtime"], "lambda_runtime");
    assert_eq!(out["rawPath"], "/from/rust");
    assert_eq!(
        Some(out["requestId"].as_str().expect("test setup")),
        r.header("x-call-id")
    );
    assert_eq!(
        out["functionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:rust-echo"
    );
    // Deadline-Ms: at most the 5 s timeout from now.
    let deadline = out["deadlineMs"].as_u64().expect("test setup");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("test setup")
        .as_millis() as u64;
    assert!(
        deadline <= now + 5_000 && deadline + 60_000 > now,
        "{deadline} vs {now}"
    );

    let r = p.http("GET", "/function/rust-echo?action=fail", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("x-skyfri-function-error").is_some());
    assert_eq!(
        r.json()["errorMessage"],
        "the rust handler was asked to fail"
    );
}

/// A call straight to a replica's socket (`<data-dir>/run/FUNCTION-*/sock`), as the gateway
/// makes it.
fn replica_call(
    data_dir: &Path,
    function: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> common::Response {
    let socket = std::fs::read_dir(data_dir.join("run"))
        .expect("run dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{function}-")))
                && p.join("sock").exists()
        })
        .unwrap_or_else(|| panic!("no replica socket of {function}"))
        .join("sock");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let raw = common::exchange(&mut s, "replica", "POST", "/", headers, body);
    assert!(
        !raw.is_empty(),
        "no answer from the replica at {}",
        socket.display()
    );
    common::parse_response(&raw)
}

/// Builds `examples/lambda_bootstrap.rs` (AWS's lambda_runtime crate) with the cargo running
/// the tests.
fn build_rust_bootstrap() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "skyfri", "--example", "lambda_bootstrap"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // What cargo set for this test (CARGO_PKG_*, ...) would make build scripts run again.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().expect("run cargo");
    assert!(
        status.success(),
        "building the lambda_runtime example failed"
    );
    // target/debug/skyfri -> target/debug/examples/lambda_bootstrap
    Path::new(env!("CARGO_BIN_EXE_skyfri"))
        .parent()
        .expect("test setup")
        .join("examples/lambda_bootstrap")
}

/// The loopback port the lambda shim of `function`'s replica listens on for its Runtime API:
/// the listening socket held by a `skyfri lambda-shim` process of the platform `platform`
/// (its descendant: other tests run platforms with functions of the same name).
fn runtime_api_port(platform: u32, function: &str) -> Option<u16> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("lambda-shim") {
            continue;
        }
        if !descends_from(pid, platform) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let named = format!("AWS_LAMBDA_FUNCTION_NAME={function}\0");
        if !String::from_utf8_lossy(&environ).contains(&named) {
            continue;
        }
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("socket:[")?
                    .strip_suffix(']')
                    .map(str::to_string)
            })
            .collect();
        for line in tcp.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A: LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].split(':').nth(1)?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}

/// Whether process `pid` is `ancestor` or below it.
fn descends_from(pid: &str, ancestor: u32) -> bool {
    let mut pid: u32 = pid.parse().unwrap_or(0);
    while pid > 1 {
        if pid == ancestor {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        pid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
    }
    false
}
