#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use skyfri_core::{Deployment, FunctionSpec, Template};

use super::*;
use crate::state::AppState;
use crate::testing::{send, Answer, FakeProvider};

#[test]
fn failures_spend_the_budget_successes_do_not_and_clients_are_apart() {
    let limit = FailedLogins::default();
    let a: Option<IpAddr> = "192.0.2.1".parse().ok();
    let b: Option<IpAddr> = "192.0.2.2".parse().ok();
    // Checks alone (successful logins) spend nothing.
    for _ in 0..100 {
        assert_eq!(limit.check(a), Ok(()));
    }
    for _ in 0..BURST {
        assert_eq!(limit.check(a), Ok(()));
        limit.failed(a);
    }
    let wait = limit.check(a).expect_err("the budget is spent");
    assert!((1..=EVERY_SECS as u64).contains(&wait), "{wait}");
    assert_eq!(limit.check(b), Ok(()), "another client keeps its budget");
    assert_eq!(limit.check(None), Ok(()));
    let r = axum::response::IntoResponse::into_response(too_many(wait));
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(wait.to_string().as_bytes())
    );
}

const ADMIN: &str = "Basic YWRtaW46cHc="; // admin:pw
const WRONG: &str = "Basic YWRtaW46bm9wZQ=="; // admin:nope
const LAMBDA: &str = "/2015-03-31/functions/f/invocations";

/// A gateway behind a proxy at 127.0.0.1 (so each `X-Forwarded-For` is a client of its
/// own), with a private function `f`, and its dashboard's listener.
async fn gateway(dir: &std::path::Path) -> (AppState, SocketAddr, SocketAddr) {
    let state = crate::testing::state_behind(
        dir,
        FakeProvider::default(),
        1 << 20,
        vec!["127.0.0.1/32".parse().unwrap()],
    );
    let mut spec = FunctionSpec::new("f", "img");
    spec.annotations
        .insert(skyfri_core::auth::AUTH_KEY.into(), "token".into());
    state.set_live(Deployment {
        spec,
        artefact: "sha256:0".into(),
        template: Template::Http,
        replicas: 0,
    });
    let addr = crate::testing::serve(&state).await;
    let ui = crate::testing::serve_dashboard(&state).await;
    (state, addr, ui)
}

/// Sends a request as the client at `ip` (through the trusted proxy).
async fn from(
    gw: SocketAddr,
    ip: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut all = vec![("x-forwarded-for", ip)];
    all.extend_from_slice(headers);
    send(gw, method, path, &all, body).await
}

#[tokio::test]
async fn failures_at_any_door_close_every_door_for_that_client_only() {
    let dir = tempfile::tempdir().unwrap();
    let (state, gw, ui) = gateway(dir.path()).await;
    let (a, b) = ("203.0.113.1", "203.0.113.2");
    let json = ("content-type", "application/json");
    let sigv4 = "AWS4-HMAC-SHA256 Credential=nobody/20261206/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000";

    // Ten failures spread over the doors: basic and bearer on /system, a bearer token on a
    // private function (sync and async), bearer and SigV4 on the Lambda API, the dashboard.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = from(
            gw,
            a,
            "GET",
            "/system/info",
            &[("authorization", WRONG)],
            b"",
        )
        .await;
        statuses.push(r.status);
    }
    let bearer = [("authorization", "Bearer sky_guess")];
    statuses.push(
        from(gw, a, "GET", "/system/info", &bearer, b"")
            .await
            .status,
    );
    statuses.push(
        from(gw, a, "POST", "/function/f", &bearer, b"")
            .await
            .status,
    );
    statuses.push(
        from(gw, a, "POST", "/async-function/f", &bearer, b"")
            .await
            .status,
    );
    statuses.push(from(gw, a, "POST", LAMBDA, &bearer, b"{}").await.status);
    let signed = [("authorization", sigv4), ("x-amz-date", "20261206T000000Z")];
    statuses.push(from(gw, a, "POST", LAMBDA, &signed, b"{}").await.status);
    let guess = br#"{"password":"guess"}"#;
    statuses.push(
        from(ui, a, "POST", "/ui/login", &[json], guess)
            .await
            .status,
    );
    statuses.push(
        from(
            gw,
            a,
            "POST",
            "/function/f",
            &[("authorization", WRONG)],
            b"",
        )
        .await
        .status,
    );
    assert_eq!(statuses, [401, 401, 401, 401, 401, 401, 403, 403, 401, 401]);

    // Now the client is refused everywhere, the right password too, and told when to retry.
    let admin = [("authorization", ADMIN)];
    let r = from(gw, a, "GET", "/system/info", &admin, b"").await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1));
    assert_eq!(r.json()["limit"]["name"], "failed logins");
    let r = from(gw, a, "POST", LAMBDA, &admin, b"{}").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-amzn-errortype"), "TooManyRequestsException");
    assert!(!r.header("retry-after").is_empty());
    assert_eq!(r.json()["Type"], "User");
    let r = from(gw, a, "POST", "/function/f", &admin, b"").await;
    assert_eq!(r.status, 429);
    let login = br#"{"password":"pw"}"#;
    let r = from(ui, a, "POST", "/ui/login", &[json], login).await;
    assert_eq!(r.status, 429);
    assert!(!r.header("retry-after").is_empty());
    // Without credentials it is no login attempt: the usual answer.
    assert_eq!(
        from(gw, a, "GET", "/system/info", &[], b"").await.status,
        401
    );

    // Another client behind the same proxy keeps its budget.
    assert_eq!(
        from(gw, b, "GET", "/system/info", &admin, b"").await.status,
        200
    );
    let dry = [
        ("authorization", ADMIN),
        ("x-amz-invocation-type", "DryRun"),
    ];
    assert_eq!(from(gw, b, "POST", LAMBDA, &dry, b"").await.status, 204);
    assert_eq!(
        from(ui, b, "POST", "/ui/login", &[json], login)
            .await
            .status,
        200
    );

    // Every failure is in the audit log, with who and from where; the refused attempts
    // after them were not checked, so are no failures.
    state.audit.flush().await;
    let rows = state.store.list_audit(None, 1000).unwrap();
    let failures: Vec<_> = rows
        .iter()
        .filter(|r| r.entry.action == "login.failure")
        .collect();
    assert!(failures.iter().all(|r| r.entry.client == a), "{failures:?}");
    assert_eq!(failures.iter().map(|r| r.count).sum::<u64>(), 10);
    let who: std::collections::BTreeSet<&str> =
        failures.iter().map(|r| r.entry.who.as_str()).collect();
    assert_eq!(
        who.into_iter().collect::<Vec<_>>(),
        ["basic:admin", "dashboard:admin", "sigv4:nobody", "token"]
    );
}
