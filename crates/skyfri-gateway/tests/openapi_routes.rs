//! Keeps docs/openapi.yaml true: every (method, path) that the gateway's `router()` in
//! src/lib.rs serves (with the `system_routes` and `call_routes` it merges) is documented,
//! every documented operation is served, and the dashboard's, `dashboard_router()`, are the
//! paths documented with their own `servers` (its listener). The routes are read from the
//! source, so a route added there without its document fails here.

use std::collections::BTreeSet;

const LIB_RS: &str = include_str!("../src/lib.rs");
const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

/// What axum's `any(...)` serves, as OpenAPI operations.
const ANY: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];
const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

type Ops = BTreeSet<(String, String)>;
/// Routes a reading of `function` must find: (function, what it read, (method, path)s).
type Known<'a> = (&'a str, &'a Ops, &'a [(&'a str, &'a str)]);

/// The functions of src/lib.rs that route the gateway's listener, and the dashboard's.
const GATEWAY: [&str; 3] = ["pub fn router(", "fn system_routes(", "fn call_routes("];
const DASHBOARD: [&str; 1] = ["pub fn dashboard_router("];

/// The body of the function `head` starts, up to the next top-level item.
fn source_of(head: &str) -> &'static str {
    let start = LIB_RS
        .find(head)
        .unwrap_or_else(|| panic!("src/lib.rs has no `{head}`"));
    let rest = &LIB_RS[start..];
    let end = rest
        .find("\n}\n")
        .unwrap_or_else(|| panic!("`{head}` does not end with a `}}` line"));
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

fn routed(functions: &[&str]) -> Ops {
    let mut ops = Ops::new();
    for f in functions {
        for op in routed_in(source_of(f)) {
            assert!(ops.insert(op.clone()), "{op:?} routed twice");
        }
    }
    ops
}

fn routed_in(src: &str) -> Ops {
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

/// The documented operations: those of the gateway's listener, and of the dashboard's (the
/// paths with their own `servers`).
fn documented() -> (Ops, Ops) {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(OPENAPI).expect("docs/openapi.yaml is YAML");
    let paths = doc
        .get("paths")
        .and_then(|p| p.as_mapping())
        .expect("docs/openapi.yaml has `paths`");
    let (mut gateway, mut dashboard) = (Ops::new(), Ops::new());
    for (path, item) in paths {
        let path = path.as_str().expect("a path is a string");
        let item = item.as_mapping().expect("a path item is a mapping");
        let ops = if item.contains_key("servers") {
            &mut dashboard
        } else {
            &mut gateway
        };
        for key in item.keys() {
            let key = key.as_str().expect("a path item key is a string");
            if METHODS.contains(&key) {
                ops.insert((key.to_string(), path.to_string()));
            }
        }
    }
    (gateway, dashboard)
}

#[test]
fn router_reading_finds_the_known_routes() {
    let ops = routed(&GATEWAY);
    let known: [Known; 2] = [
        (
            "router()",
            &ops,
            &[
                ("get", "/system/functions"),
                ("delete", "/system/functions"),
                ("post", "/system/artefacts"),
                ("delete", "/system/async/calls/{id}"),
                ("options", "/function/{name}/{rest}"),
                ("get", "/healthz"),
            ],
        ),
        (
            "dashboard_router()",
            &routed(&DASHBOARD),
            &[
                ("get", "/ui"),
                ("post", "/ui/login"),
                ("delete", "/ui/api/system/{rest}"),
            ],
        ),
    ];
    for (function, read, expected) in known {
        for (m, p) in expected {
            assert!(
                read.contains(&(m.to_string(), p.to_string())),
                "{m} {p} not read from {function}: {read:?}"
            );
        }
    }
    assert!(
        ops.iter().all(|(_, p)| !p.starts_with("/ui")),
        "the gateway's listener serves no dashboard path: {ops:?}"
    );
}

#[test]
fn every_route_is_documented_and_every_operation_routed() {
    let (gateway, dashboard) = documented();
    for (listener, routed, documented) in [
        ("router()", routed(&GATEWAY), gateway),
        ("dashboard_router()", routed(&DASHBOARD), dashboard),
    ] {
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes of {listener} missing from docs/openapi.yaml (the dashboard's with its `servers`): {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "operations in docs/openapi.yaml that {listener} does not serve: {unrouted:?}"
        );
    }
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
    let (gateway, dashboard) = documented();
    for (method, path) in gateway.into_iter().chain(dashboard) {
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
