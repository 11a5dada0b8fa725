//! Keeps docs/openapi.yaml true: every (method, path) that `router()` in src/lib.rs serves is
//! documented, and every documented operation is served. The routes are read from the source
//! of `router()`, so a route added there without its document fails here.

use std::collections::BTreeSet;

const LIB_RS: &str = include_str!("../src/lib.rs");
const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

/// What axum's `any(...)` serves, as OpenAPI operations.
const ANY: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];
const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

type Ops = BTreeSet<(String, String)>;

/// The body of `pub fn router`, up to the next top-level item.
fn router_source() -> &'static str {
    let start = LIB_RS
        .find("pub fn router(")
        .expect("src/lib.rs has `pub fn router(`");
    let rest = &LIB_RS[start..];
    let end = rest.find("\n}\n").expect("`router` ends with a `}` line");
    &rest[..end]
}

/// The text from `open` (just after a `(`) to its matching `)`.
fn balanced(s: &str) -> &str {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after {:?}", &s[..s.len().min(80)]);
}

/// Method-router calls (`get(`, `.post(`, `any(`) in the handler part of one `.route(...)`;
/// a path such as `api::functions::get)` is not a call and a `::get(` is not a method router.
fn methods_in(handlers: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    let bytes = handlers.as_bytes();
    for name in METHODS.iter().copied().chain(["any"]) {
        let call = format!("{name}(");
        let mut from = 0;
        while let Some(at) = handlers[from..].find(&call) {
            let i = from + at;
            let before = if i == 0 { b' ' } else { bytes[i - 1] };
            if !(before.is_ascii_alphanumeric() || before == b'_' || before == b':') {
                found.push(name);
            }
            from = i + call.len();
        }
    }
    found
}

fn routed() -> Ops {
    let src = router_source();
    for unsupported in [".nest(", ".route_service(", ".fallback(", ".nest_service("] {
        assert!(
            !src.contains(unsupported),
            "router() uses {unsupported}: teach tests/openapi_routes.rs to read it"
        );
    }
    let mut ops = Ops::new();
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        let args = balanced(&rest[at + ".route(".len()..]);
        rest = &rest[at + ".route(".len() + args.len()..];
        let args = args.trim_start();
        let path_end = args[1..]
            .find('"')
            .expect("a route path is a string literal")
            + 1;
        assert!(args.starts_with('"'), "route path is not a literal: {args}");
        let path = args[1..path_end].replace("{*", "{");
        let methods = methods_in(&args[path_end + 1..]);
        assert!(!methods.is_empty(), "no method router found for {path}");
        for m in methods {
            let expanded: &[&str] = if m == "any" { &ANY } else { &[m] };
            for m in expanded {
                assert!(
                    ops.insert((m.to_string(), path.clone())),
                    "{m} {path} routed twice"
                );
            }
        }
    }
    ops
}

fn documented() -> Ops {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(OPENAPI).expect("docs/openapi.yaml is YAML");
    let paths = doc
        .get("paths")
        .and_then(|p| p.as_mapping())
        .expect("docs/openapi.yaml has `paths`");
    let mut ops = Ops::new();
    for (path, item) in paths {
        let path = path.as_str().expect("a path is a string");
        let item = item.as_mapping().expect("a path item is a mapping");
        for key in item.keys() {
            let key = key.as_str().expect("a path item key is a string");
            if METHODS.contains(&key) {
                ops.insert((key.to_string(), path.to_string()));
            }
        }
    }
    ops
}

#[test]
fn router_reading_finds_the_known_routes() {
    let ops = routed();
    for (m, p) in [
        ("get", "/system/functions"),
        ("delete", "/system/functions"),
        ("post", "/system/artefacts"),
        ("delete", "/system/async/calls/{id}"),
        ("options", "/function/{name}/{rest}"),
    ] {
        assert!(
            ops.contains(&(m.to_string(), p.to_string())),
            "{m} {p} not read from router(): {ops:?}"
        );
    }
}

#[test]
fn every_route_is_documented_and_every_operation_routed() {
    let routed = routed();
    let documented = documented();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes of router() missing from docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "operations in docs/openapi.yaml that router() does not serve: {unrouted:?}"
    );
}

#[test]
fn system_and_lambda_operations_require_auth_and_others_do_not() {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(OPENAPI).expect("docs/openapi.yaml is YAML");
    let global = doc.get("security").and_then(|s| s.as_sequence());
    assert!(
        global.is_some_and(|s| s.len() == 2),
        "the document's default security is basic or bearer"
    );
    let dashboard_session =
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[{dashboardSession: []}]").expect("YAML");
    for (method, path) in documented() {
        let op = &doc["paths"][path.as_str()][method.as_str()];
        let security = op.get("security");
        let open = security
            .and_then(|s| s.as_sequence())
            .is_some_and(|s| s.is_empty());
        let session = security == Some(&dashboard_session);
        // The Lambda Invoke API always needs credentials, as Lambda does.
        let expected = if path.starts_with("/system/") || path.starts_with("/2015-03-31/") {
            !open && !session
        } else if path.starts_with("/ui/api/") || path == "/ui/logout" || path == "/ui/session" {
            session
        } else {
            open
        };
        assert!(
            expected,
            "{method} {path}: /system/* and the Lambda Invoke API take basic or bearer auth, the dashboard's API its session, the rest is open"
        );
    }
}
