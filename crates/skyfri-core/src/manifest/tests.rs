//! Table tests for stack.yml and Knative parsing.

use std::collections::BTreeMap;

use super::*;

const VIPPS: &str = "\
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  vipps-processor:
    lang: python3
    handler: ./vipps-processor
    image: registry.yourcompany.no/vipps-processor:latest
    limits:
      memory: 128Mi
    requests:
      memory: 64Mi
";

const KNATIVE: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: image-processor
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/class: "kpa.autoscaling.knative.dev"
        autoscaling.knative.dev/metric: "concurrency"
    spec:
      containers:
        - image: registry.coolvds.com/processors/resize:v2.4
          env:
            - name: STORAGE_BACKEND
              value: "local-nvme"
          resources:
            requests:
              cpu: "100m"
              memory: "128Mi"
            limits:
              cpu: "1000m"
              memory: "512Mi"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn no_files(path: &str) -> Result<String, String> {
    Err(format!("{path}: no such file"))
}

fn files(path: &str) -> Result<String, String> {
    match path {
        "env.yml" => Ok("environment:\n  A: from-file\n  B: from-file\n".to_string()),
        "bad.yml" => Ok("environment:\n  A: 1\nextra: 2\n".to_string()),
        _ => Err("no such file".to_string()),
    }
}

fn ok(text: &str) -> Manifest {
    match parse("stack.yml", text, &no_env, &files) {
        Ok(m) => m,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> ManifestError {
    match parse("stack.yml", text, &no_env, &files) {
        Ok(m) => panic!("expected an error, got {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn vipps_stack() {
    let m = ok(VIPPS);
    assert_eq!(m.gateway.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(m.functions.len(), 1);
    let f = &m.functions[0];
    assert_eq!(f.spec.name, "vipps-processor");
    assert_eq!(f.spec.namespace, crate::function::DEFAULT_NAMESPACE);
    assert_eq!(
        f.spec.image,
        "registry.yourcompany.no/vipps-processor:latest"
    );
    assert_eq!(f.template, Some(Template::Python3));
    assert_eq!(f.handler.as_deref(), Some("./vipps-processor"));
    assert_eq!(f.spec.limits.memory, Some(128 << 20));
    assert_eq!(f.spec.requests.memory, Some(64 << 20));
    assert_eq!(f.spec.limits.cpu_millis, None);
    assert_eq!(f.spec.timeout_secs, crate::function::DEFAULT_TIMEOUT_SECS);
}

#[test]
fn knative_service() {
    let m = ok(KNATIVE);
    assert_eq!(m.gateway, None);
    assert_eq!(m.functions.len(), 1);
    let f = &m.functions[0];
    assert_eq!(f.template, None);
    assert_eq!(f.handler, None);
    assert_eq!(f.spec.name, "image-processor");
    assert_eq!(f.spec.image, "registry.coolvds.com/processors/resize:v2.4");
    assert_eq!(f.spec.limits.cpu_millis, Some(1000));
    assert_eq!(f.spec.limits.memory, Some(512 << 20));
    assert_eq!(f.spec.requests.cpu_millis, Some(100));
    assert_eq!(f.spec.requests.memory, Some(128 << 20));
    assert_eq!(
        f.spec.env_vars.get("STORAGE_BACKEND").map(String::as_str),
        Some("local-nvme")
    );
    let a = &f.spec.annotations;
    assert_eq!(
        a.get("autoscaling.knative.dev/target").map(String::as_str),
        Some("10")
    );
    assert_eq!(
        a.get("autoscaling.knative.dev/class").map(String::as_str),
        Some("kpa.autoscaling.knative.dev")
    );
    assert_eq!(
        a.get("autoscaling.knative.dev/metric").map(String::as_str),
        Some("concurrency")
    );
}

#[test]
fn good_files() {
    let full = "\
provider:
  name: openfaas
configuration:
  templates:
    - name: python3
functions:
  second:
    image: ghcr.io/x/second:1
    fprocess: cat
    environment:
      exec_timeout: 1m30s
      read_timeout: 10s
      NUM: 5
      FLAG: true
      EMPTY:
    environment_file:
      - env.yml
    secrets: [api-key]
    labels:
      com.openfaas.max_inflight: 4
      com.openfaas.scale.min: \"2\"
    annotations:
      topic: payments
    limits:
      cpu: 0.5
    readonly_root_filesystem: true
    constraints:
      - node.platform.os == linux
    build_args:
      X: 1
    build_options: [dev]
    skip_build: true
    platforms: linux/amd64
  first:
    lang: node18
    handler: ./first
    environment:
      A: inline
";
    let m = ok(full);
    let names: Vec<&str> = m.functions.iter().map(|f| f.spec.name.as_str()).collect();
    assert_eq!(names, ["second", "first"], "file order is kept");
    let s = &m.functions[0].spec;
    assert_eq!(m.functions[0].template, None);
    assert_eq!(s.env_process.as_deref(), Some("cat"));
    assert_eq!(s.timeout_secs, 90, "exec_timeout wins");
    assert_eq!(s.concurrency, 4);
    assert_eq!(s.min_replicas(), 2);
    assert_eq!(s.limits.cpu_millis, Some(500));
    assert!(s.read_only_root_filesystem);
    assert_eq!(s.secrets, ["api-key"]);
    assert_eq!(s.constraints, ["node.platform.os == linux"]);
    let env: BTreeMap<&str, &str> = s
        .env_vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env.get("NUM"), Some(&"5"));
    assert_eq!(env.get("FLAG"), Some(&"true"));
    assert_eq!(env.get("EMPTY"), Some(&""));
    assert_eq!(env.get("A"), Some(&"from-file"));
    assert_eq!(env.get("B"), Some(&"from-file"));
    let first = &m.functions[1];
    assert_eq!(first.template, Some(Template::Node));
    assert_eq!(
        first.spec.image, "first:latest",
        "no image: named after the function"
    );
    assert_eq!(
        first.spec.env_vars.get("A").map(String::as_str),
        Some("inline")
    );

    // The inline environment wins over files.
    let m = ok("functions:\n  f:\n    image: x\n    environment_file: [env.yml]\n    environment:\n      A: inline\n");
    let env = &m.functions[0].spec.env_vars;
    assert_eq!(env.get("A").map(String::as_str), Some("inline"));
    assert_eq!(env.get("B").map(String::as_str), Some("from-file"));

    // Timeouts from write_timeout, plain seconds.
    let m = ok("functions:\n  f:\n    image: x\n    environment:\n      write_timeout: \"30\"\n");
    assert_eq!(m.functions[0].spec.timeout_secs, 30);
}

#[test]
fn knative_extras() {
    let text = "\
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: a
  uid: 1234
  creationTimestamp: null
  labels:
    app: a
spec:
  template:
    spec:
      containerConcurrency: 8
      timeoutSeconds: 120
      containers:
        - image: img/a
          command: [\"/bin/app\"]
          args: [\"--fast\", \"-v\"]
          ports:
            - containerPort: 8080
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: b
spec:
  template:
    spec:
      containers:
        - image: img/b
";
    let m = ok(text);
    assert_eq!(m.functions.len(), 2);
    let a = &m.functions[0].spec;
    assert_eq!(a.concurrency, 8);
    assert_eq!(a.timeout_secs, 120);
    assert_eq!(a.env_process.as_deref(), Some("/bin/app --fast -v"));
    assert_eq!(a.labels.get("app").map(String::as_str), Some("a"));
    assert_eq!(m.functions[1].spec.image, "img/b");
}

#[test]
fn substitution() {
    let text = "functions:\n  f:\n    image: ${REGISTRY:-registry.local}/f:${TAG}\n    environment:\n      X: ${X:-fallback}\n      Y: ${Y:-fallback}\n      Z: $HOME and ${9bad}\n";
    let env = |name: &str| match name {
        "TAG" => Some("v1".to_string()),
        "Y" => Some("set".to_string()),
        _ => None,
    };
    let m = match parse("stack.yml", text, &env, &no_files) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let s = &m.functions[0].spec;
    assert_eq!(s.image, "registry.local/f:v1");
    assert_eq!(s.env_vars.get("X").map(String::as_str), Some("fallback"));
    assert_eq!(s.env_vars.get("Y").map(String::as_str), Some("set"));
    assert_eq!(
        s.env_vars.get("Z").map(String::as_str),
        Some("$HOME and ${9bad}")
    );

    let lookup = |name: &str| (name == "EMPTY").then(String::new);
    assert_eq!(
        envsubst("${EMPTY:-d}|${EMPTY-d}|${UNSET}|${", &lookup),
        "d|||${"
    );
}

/// Each bad file with what the error must say: line, field (substring) and message part.
#[test]
fn bad_files() {
    let stack = |body: &str| format!("version: 1.0\nfunctions:\n  vipps-processor:\n{body}");
    let cases: Vec<(String, Option<usize>, &str, &str)> = vec![
        (
            stack("    image: x\n    lables:\n      a: b\n"),
            Some(5),
            "functions.vipps-processor.lables",
            "unknown field `lables`",
        ),
        (
            stack("    image: x\n    limits:\n      memory: 128Mbb\n"),
            Some(6),
            "functions.vipps-processor.limits.memory",
            "\"128Mbb\" is not a memory quantity",
        ),
        (
            stack("    image: x\n    requests:\n      cpu: fast\n"),
            Some(6),
            "functions.vipps-processor.requests.cpu",
            "not a CPU quantity",
        ),
        (
            "functions:\n  ok-one:\n    image: x\n  Vipps_Processor:\n    image: x\n".to_string(),
            Some(4),
            "functions.Vipps_Processor",
            "DNS-1123",
        ),
        (
            stack("    lang: cobol\n    handler: ./x\n"),
            Some(4),
            "functions.vipps-processor.lang",
            "unknown lang \"cobol\": known languages are python3, python3-http, node",
        ),
        (
            stack("    handler: ./x\n"),
            Some(3),
            "functions.vipps-processor",
            "needs `lang`",
        ),
        (
            // Bad indentation.
            "functions:\n  f:\n    image: x\n   lang: python3\n".to_string(),
            Some(4),
            "",
            "did not find expected key",
        ),
        (
            stack("    image: x\n    environment:\n      exec_timeout: soon\n"),
            Some(6),
            "functions.vipps-processor.environment.exec_timeout",
            "not a duration",
        ),
        (
            stack("    image: x\n    annotations:\n      com.openfaas.max_inflight: many\n"),
            Some(6),
            "functions.vipps-processor.annotations.com.openfaas.max_inflight",
            "not a number",
        ),
        (
            stack("    image: x\n    annotations:\n      com.openfaas.retry.codes: \"429,oops\"\n"),
            Some(6),
            "functions.vipps-processor.annotations.com.openfaas.retry.codes",
            "\"oops\" in \"429,oops\" is not an HTTP error status",
        ),
        (
            stack("    image: x\n    labels:\n      com.skyfri.max-concurrency: \"none\"\n"),
            Some(6),
            "functions.vipps-processor.labels.com.skyfri.max-concurrency",
            "\"none\" is not a concurrency cap",
        ),
        (
            stack("    image: x\n    annotations:\n      com.skyfri.max-body: 1MB\n"),
            Some(6),
            "functions.vipps-processor.annotations.com.skyfri.max-body",
            "\"1MB\" is not a size",
        ),
        (
            stack("    image: x\n    annotations:\n      com.skyfri.rate: \"5\"\n      com.skyfri.burst: \"0\"\n"),
            Some(7),
            "functions.vipps-processor.annotations.com.skyfri.burst",
            "\"0\" is not a burst",
        ),
        (
            stack("    image: x\n    labels:\n      com.skyfri.async.concurrency: \"0\"\n"),
            Some(6),
            "functions.vipps-processor.labels.com.skyfri.async.concurrency",
            "from 1 to 1000",
        ),
        (
            KNATIVE.replace(
                "        autoscaling.knative.dev/target: \"10\"\n",
                "        autoscaling.knative.dev/target: \"10\"\n        com.openfaas.retry.max_wait: \"1s\"\n        com.openfaas.retry.min_wait: \"5s\"\n",
            ),
            Some(11),
            "spec.template.metadata.annotations.com.openfaas.retry.max_wait",
            "shorter than the minimum wait",
        ),
        (
            stack("    image: x\n    secrets:\n      - ../etc/passwd\n"),
            Some(5),
            "functions.vipps-processor.secrets",
            "secret name \"../etc/passwd\" is not a DNS-1123 subdomain",
        ),
        (
            stack("    image: x\n    environment_file: [missing.yml]\n"),
            Some(5),
            "functions.vipps-processor.environment_file",
            "cannot read environment file \"missing.yml\"",
        ),
        (
            "version: 2.0\nfunctions:\n  f:\n    image: x\n".to_string(),
            Some(1),
            "version",
            "unsupported stack.yml version",
        ),
        (
            "provider:\n  name: openfaas\nfunctions:\n".to_string(),
            Some(3),
            "functions",
            "no functions",
        ),
        (
            "provider:\n  name: openfaas\nfunction:\n  f:\n    image: x\n".to_string(),
            Some(3),
            "function",
            "unknown field `function`",
        ),
        (
            KNATIVE.replace("memory: \"512Mi\"", "memory: \"512Mbb\""),
            Some(25),
            "spec.template.spec.containers.resources.limits.memory",
            "\"512Mbb\" is not a memory quantity",
        ),
        (
            KNATIVE.replace("name: image-processor", "name: Image_Processor"),
            Some(4),
            "metadata.name",
            "DNS-1123",
        ),
        (
            KNATIVE.replace("          env:", "          envv:"),
            Some(16),
            "spec.template.spec.containers[0].envv",
            "unknown field `envv`",
        ),
        (
            KNATIVE.replace("kind: Service", "kind: Route"),
            Some(2),
            "kind",
            "only Knative Services",
        ),
        (
            KNATIVE.replace(
                "        - image: registry.coolvds.com/processors/resize:v2.4\n",
                "        - name: c\n",
            ),
            Some(14),
            "spec.template.spec.containers",
            "needs an `image`",
        ),
        (
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers: []\n".to_string(),
            Some(8),
            "spec.template.spec.containers",
            "exactly one container",
        ),
    ];
    for (text, line, field, message) in cases {
        let e = err(&text);
        let shown = e.to_string();
        assert_eq!(e.line, line, "{shown}\n--- in ---\n{text}");
        if let Some(line) = line {
            assert!(shown.starts_with(&format!("stack.yml:{line}:")), "{shown}");
        }
        if !field.is_empty() {
            assert_eq!(e.field.as_deref(), Some(field), "{shown}");
            assert!(shown.contains(&format!(": {field}: ")), "{shown}");
        }
        assert!(e.message.contains(message), "{shown}");
        if let Some(line) = line {
            let position = format!("at line {line} column");
            assert!(!e.message.contains(&position), "{shown}");
        }
    }
}

#[test]
fn environment_file_errors_name_that_file() {
    let e = err("functions:\n  f:\n    image: x\n    environment_file: [bad.yml]\n");
    assert_eq!(e.file, "bad.yml");
    assert_eq!(e.line, Some(3));
    assert!(e.to_string().starts_with("bad.yml:3:"), "{e}");
}

#[test]
fn display_leaves_out_unknown_parts() {
    let mut e = ManifestError::new("stack.yml", "boom");
    assert_eq!(e.to_string(), "stack.yml: boom");
    e.line = Some(12);
    e.column = Some(7);
    e.field = Some("functions.f.limits.memory".to_string());
    assert_eq!(
        e.to_string(),
        "stack.yml:12:7: functions.f.limits.memory: boom"
    );
    assert!(err("").message.contains("empty"));
}

#[test]
fn durations() {
    use super::stack::parse_duration_secs;
    assert_eq!(parse_duration_secs("30s"), Ok(30));
    assert_eq!(parse_duration_secs("1m"), Ok(60));
    assert_eq!(parse_duration_secs("30"), Ok(30));
    assert_eq!(parse_duration_secs("1h1m1s"), Ok(3661));
    assert_eq!(parse_duration_secs("1500ms"), Ok(2));
    assert!(parse_duration_secs("0s").is_err());
    assert!(parse_duration_secs("s").is_err());
    assert!(parse_duration_secs("10x").is_err());
}

#[test]
fn image_defaults_to_the_function_name() {
    let m = ok("\
functions:
  hello:
    lang: python3
    handler: ./hello
");
    assert_eq!(m.functions[0].spec.image, "hello:latest");
}
