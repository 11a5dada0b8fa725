//! The Lambda Invoke API end to end: boto3 (installed by `scripts/setup.sh --tests` into
//! `~/.cache/skyfri/py-tools`) invokes functions of the real binary with skyfri tokens as its
//! AWS credentials: sync, async, dry runs, handler errors, unknown functions, bad
//! signatures, private functions; and the same API with a bearer token.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fixtures, Platform};
use serde_json::{json, Value};

/// The venv where scripts/setup.sh installs boto3.
fn python() -> PathBuf {
    let bin = common::py_tool("python");
    let has_boto3 = Command::new(&bin)
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_boto3,
        "{} has no boto3: run scripts/setup.sh --tests, which installs it",
        bin.display()
    );
    bin
}

/// Runs `calls` ({"key", "secret", "args"}) with boto3's `invoke`; one result each.
fn boto3(p: &Platform, calls: &[Value]) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg(fixtures().join("lambda-invoke/client.py"))
        .env("SKYFRI_URL", p.url())
        // Nothing of the host's AWS setup may take part.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(Value::Array(calls.to_vec()).to_string().as_bytes())
            .expect("write calls");
    }
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON results");
    assert_eq!(results.len(), calls.len());
    results
}

fn token(p: &Platform, name: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "create", name];
    all.extend_from_slice(args);
    let out = p.cli(&all, "");
    assert!(out.ok, "token create {name}: {}", out.stderr);
    out.stdout.trim().to_string()
}

fn call(key: &str, secret: &str, args: Value) -> Value {
    json!({"key": key, "secret": secret, "args": args})
}

fn payload(r: &Value) -> Value {
    serde_json::from_str(r["payload"].as_str().unwrap_or("")).unwrap_or(Value::Null)
}

#[test]
fn boto3_invokes_skyfri_functions() {
    let p = Platform::start();
    p.deploy_stack("lambda-invoke");
    let sdk = token(&p, "sdk", &["--sigv4", "--function", "vault"]);
    let reader = token(&p, "reader", &["--sigv4", "--scope", "read"]);
    let plain = token(&p, "plain", &["--function", "vault"]);
    let ls = p.cli(&["token", "ls", "--json"], "");
    let listed: Value = serde_json::from_str(&ls.stdout).expect("token ls --json");
    let sigv4: Vec<(&str, bool)> = listed
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| (t["name"].as_str().unwrap_or(""), t["sigv4"] == true))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        sigv4,
        [("plain", false), ("reader", true), ("sdk", true)],
        "{listed}"
    );

    let arn = "arn:aws:lambda:eu-north-1:000000000000:function:greet";
    let results = boto3(
        &p,
        &[
            // 0: sync, with the log's tail (which needs the read scope).
            call(
                "reader",
                &reader,
                json!({"FunctionName": "greet", "Payload": "{\"name\": \"boto\"}", "LogType": "Tail",
                       "ClientContext": "eyJjdXN0b20iOnsiYSI6MX19"}),
            ),
            // 1: a handler error.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "greet", "Payload": "{\"fail\": true}"}),
            ),
            // 2: async.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "greet", "InvocationType": "Event", "Payload": "{\"name\": \"later\"}"}),
            ),
            // 3: a dry run.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "greet", "InvocationType": "DryRun"}),
            ),
            // 4: an unknown function.
            call("sdk", &sdk, json!({"FunctionName": "nope"})),
            // 5: signed with another secret.
            call("sdk", "sky_not-the-token", json!({"FunctionName": "greet"})),
            // 6: a token made without --sigv4 is no access key.
            call("plain", &plain, json!({"FunctionName": "greet"})),
            // 7: a private function, without invoke rights on it.
            call("reader", &reader, json!({"FunctionName": "vault"})),
            // 8: and with them.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "vault", "Payload": "{\"name\": \"vault\"}"}),
            ),
            // 9: by ARN, qualified with $LATEST.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": arn, "Qualifier": "$LATEST", "Payload": "{}"}),
            ),
            // 10: a version skyfri does not have.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "greet", "Qualifier": "7"}),
            ),
            // 11: any valid token calls a public function.
            call(
                "reader",
                &reader,
                json!({"FunctionName": "greet", "Payload": "{}"}),
            ),
            // 12: a Lambda handler run by awslambdaric, with the log's tail and a client context.
            call(
                "reader",
                &reader,
                json!({"FunctionName": "lambda-greet", "Payload": "{\"name\": \"aws\"}", "LogType": "Tail",
                       "ClientContext": "eyJjdXN0b20iOnsiYSI6MX19"}),
            ),
            // 13: its handler raising.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "lambda-greet", "Payload": "{\"fail\": true}"}),
            ),
            // 14: queued.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "lambda-greet", "InvocationType": "Event", "Payload": "{\"name\": \"queued\"}"}),
            ),
            // 15: without a payload.
            call("sdk", &sdk, json!({"FunctionName": "lambda-greet"})),
            // 16: the log's tail without the read scope.
            call(
                "sdk",
                &sdk,
                json!({"FunctionName": "greet", "Payload": "{}", "LogType": "Tail"}),
            ),
        ],
    );

    let sync = &results[0];
    assert_eq!(sync["status"], 200, "{sync}");
    assert_eq!(sync["function_error"], Value::Null, "{sync}");
    assert_eq!(sync["version"], "$LATEST", "{sync}");
    let echoed = payload(sync);
    assert_eq!(echoed["hello"], "boto", "{sync}");
    assert_eq!(echoed["method"], "POST", "{sync}");
    assert_eq!(
        echoed["authorization"],
        Value::Null,
        "the caller's credentials reach the function: {sync}"
    );
    assert_eq!(echoed["amz_date"], Value::Null, "{sync}");
    assert_eq!(
        echoed["lambda_event"],
        Value::Null,
        "not a lambda function: {sync}"
    );
    assert_eq!(
        echoed["client_context"], "eyJjdXN0b20iOnsiYSI6MX19",
        "{sync}"
    );
    let log = sync["log"].as_str().unwrap_or("");
    let id = sync["request_id"].as_str().unwrap_or("");
    assert!(
        log.starts_with(&format!("START RequestId: {id} Version: $LATEST\n"))
            && log.contains(&format!("\nREPORT RequestId: {id}\tDuration: ")),
        "{log:?}"
    );
    assert!(
        log.contains("greet handling {\"name\": \"boto\"}"),
        "{log:?}"
    );

    let failed = &results[1];
    assert_eq!(failed["status"], 200, "{failed}");
    assert_eq!(failed["function_error"], "Unhandled", "{failed}");
    let error = payload(failed);
    assert_eq!(error["errorType"], "Function.Status500", "{failed}");
    assert!(
        error["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("asked to fail")),
        "{failed}"
    );

    let queued = &results[2];
    assert_eq!(queued["status"], 202, "{queued}");
    let call_id = queued["request_id"].as_str().expect("a request id");
    let done = p.wait_call_state(call_id, "done", Duration::from_secs(30));
    assert_eq!(done["function"], "greet", "{done}");
    assert_eq!(done["status"], 200, "{done}");

    assert_eq!(results[3]["status"], 204, "{}", results[3]);

    let missing = &results[4];
    assert_eq!(
        (missing["error"].as_str(), missing["http"].as_u64()),
        (Some("ResourceNotFoundException"), Some(404)),
        "{missing}"
    );
    assert!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("Function not found: nope")),
        "{missing}"
    );

    for (i, code) in [
        (5, "InvalidSignatureException"),
        (6, "UnrecognizedClientException"),
        (7, "AccessDeniedException"),
        (16, "AccessDeniedException"),
    ] {
        let r = &results[i];
        assert_eq!(
            (r["error"].as_str(), r["http"].as_u64()),
            (Some(code), Some(403)),
            "{i}: {r}"
        );
    }
    assert_eq!(payload(&results[8])["hello"], "vault", "{}", results[8]);
    assert_eq!(results[9]["status"], 200, "{}", results[9]);
    assert_eq!(
        results[10]["error"], "ResourceNotFoundException",
        "{}",
        results[10]
    );
    assert_eq!(results[11]["status"], 200, "{}", results[11]);

    let lambda = &results[12];
    assert_eq!(
        (lambda["status"].as_u64(), &lambda["function_error"]),
        (Some(200), &Value::Null),
        "{lambda}"
    );
    let result = payload(lambda);
    assert_eq!(result["hello"], "aws", "{lambda}");
    assert_eq!(
        result["requestId"], lambda["request_id"],
        "the handler's request id is the call's: {lambda}"
    );
    assert_eq!(result["custom"], json!({"a": 1}), "{lambda}");
    let log = lambda["log"].as_str().unwrap_or("");
    assert!(log.contains("lambda-greet got {'name': 'aws'}"), "{log:?}");

    let raised = &results[13];
    assert_eq!(raised["status"], 200, "{raised}");
    assert_eq!(raised["function_error"], "Unhandled", "{raised}");
    let error = payload(raised);
    assert_eq!(error["errorType"], "ValueError", "{raised}");
    assert_eq!(
        error["errorMessage"], "the handler was asked to fail",
        "{raised}"
    );

    assert_eq!(results[14]["status"], 202, "{}", results[14]);
    let queued_id = results[14]["request_id"].as_str().expect("a request id");
    let done = p.wait_call_state(queued_id, "done", Duration::from_secs(30));
    assert_eq!(done["status"], 200, "{done}");
    let ran = p.cli(&["logs", "lambda-greet"], "");
    assert!(
        ran.stdout.contains("lambda-greet got {'name': 'queued'}"),
        "the queued event reached the handler as it was sent: {}",
        ran.stdout
    );

    assert_eq!(payload(&results[15])["hello"], "world", "{}", results[15]);

    // The calls are counted and logged as /function calls are.
    let metrics = p.http("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("gateway_function_invocation_total{function_name=\"greet\",code=\"200\"}"),
        "{metrics}"
    );
    let access = std::fs::read_to_string(p.data_dir.join("logs/access.log")).unwrap_or_default();
    let lambda_lines = access
        .lines()
        .filter(|l| l.contains("/2015-03-31/functions/") && l.contains("\"function\":\"greet\""))
        .count();
    assert!(lambda_lines >= 3, "{access}");
}

#[test]
fn bearer_tokens_and_the_raw_event_mark() {
    let p = Platform::start();
    for name in ["greet", "vault"] {
        let out = p.cli_in(
            &fixtures().join("lambda-invoke"),
            &["deploy", "-f", "stack.yml", "--filter", name],
            "",
        );
        assert!(out.ok, "deploy {name}: {}", out.stderr);
    }
    let sdk = token(&p, "caller", &["--function", "vault"]);
    let path = "/2015-03-31/functions/vault/invocations";

    // A bearer token works as it does on /function; no credentials do not.
    let auth = format!("Bearer {sdk}");
    let r = p.http(
        "POST",
        path,
        &[("Authorization", &auth)],
        b"{\"name\":\"b\"}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-executed-version"), Some("$LATEST"));
    assert_eq!(r.json()["hello"], "b", "{}", r.text());
    assert_eq!(r.json()["authorization"], Value::Null, "{}", r.text());

    let r = p.http("POST", path, &[], b"{}");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("MissingAuthenticationTokenException")
    );
    assert_eq!(r.json()["Type"], "User", "{}", r.text());

    let r = p.http(
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("X-Amz-Invocation-Type", "Sometimes"),
        ],
        b"{}",
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // Only the Invoke API may mark a call as a raw Lambda event: a caller's mark is dropped
    // on /function and /async-function.
    let r = p.http(
        "POST",
        "/function/greet",
        &[("X-Skyfri-Lambda-Event", "raw")],
        b"{}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["lambda_event"], Value::Null, "{}", r.text());
    let r = p.http(
        "POST",
        "/async-function/greet",
        &[("X-Skyfri-Lambda-Event", "raw")],
        b"{}",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.header("x-call-id").unwrap_or("").to_string();
    p.wait_call_state(&id, "done", Duration::from_secs(30));
    let stored = p
        .admin("GET", &format!("/system/async/calls/{id}"), "")
        .json();
    assert!(
        !stored
            .to_string()
            .to_lowercase()
            .contains("x-skyfri-lambda-event"),
        "{stored}"
    );
}
