//! The developer's CLI through the real binary: `skyfri new` for every template deploys and
//! answers as it is, `template ls`, shell completions, exit codes scripts rely on,
//! `SKYFRI_DEBUG` without credentials, and a failed parallel build naming its file.

mod common;

use std::path::Path;

use common::{cli, Platform, PASSWORD};

/// Every template's `--lang` (an alias for node), the new function's name, and what its
/// starter answers to the body `skyfri`.
const STARTERS: [(&str, &str, &str); 8] = [
    ("python3", "hello-py", "Hello, skyfri!"),
    ("python3-http", "hello-py-http", r#""received": "skyfri""#),
    ("node20", "hello-node", r#""received":"skyfri""#),
    ("exec", "hello-exec", "Hello from hello-exec (POST): skyfri"),
    ("http", "hello-http", r#""received": "skyfri""#),
    (
        "lambda-python",
        "hello-lambda-py",
        r#""message": "Hello, skyfri!""#,
    ),
    (
        "lambda-node",
        "hello-lambda-node",
        r#""message":"Hello, skyfri!""#,
    ),
    (
        "lambda-provided",
        "hello-lambda-sh",
        "Hello from bootstrap, request ",
    ),
];

/// A stack the user wrote: `skyfri new` must keep its comments and layout.
const USER_STACK: &str =
    "# our functions\nversion: 1.0\nprovider:\n    name: openfaas  # local\n\n";

/// Runs the CLI on a pseudo-terminal (util-linux `script`) and returns what it drew.
fn on_terminal(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = format!("'{}'", env!("CARGO_BIN_EXE_skyfri"));
    for a in args {
        command.push_str(&format!(" '{a}'"));
    }
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(cwd)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn new(dir: &Path, args: &[&str]) -> common::Output {
    let mut all = vec!["new"];
    all.extend_from_slice(args);
    cli(dir, &all, "", &[])
}

#[test]
fn new_functions_of_every_template_deploy_and_answer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(dir.join("stack.yml"), USER_STACK).expect("write stack.yml");
    for (lang, name, _) in STARTERS {
        let out = new(
            dir,
            &[name, "--lang", lang, "--prefix", "registry.test/team"],
        );
        assert!(out.ok, "new {name} --lang {lang}: {}", out.stderr);
        assert!(dir.join(name).is_dir(), "no folder for {name}");
    }
    let stack = std::fs::read_to_string(dir.join("stack.yml")).expect("read stack.yml");
    assert!(
        stack.starts_with(USER_STACK),
        "the user's lines changed:\n{stack}"
    );
    assert!(
        stack.contains("    hello-exec:\n        lang: exec\n        handler: ./hello-exec\n        image: registry.test/team/hello-exec:latest\n        fprocess: sh handler.sh\n"),
        "{stack}"
    );
    assert!(dir.join("hello-py/requirements.txt").is_file());
    let package = std::fs::read_to_string(dir.join("hello-node/package.json")).expect("package");
    assert!(package.contains(r#""name": "hello-node""#), "{package}");

    // Refusals leave the file as it was.
    for (args, says) in [
        (vec!["hello-py", "--lang", "python3"], "already exists"),
        (vec!["Hello_Py", "--lang", "python3"], "DNS-1123"),
        (vec!["other", "--lang", "cobol"], "not a template"),
        (
            vec!["other", "--lang", "exec", "--prefix", "a b"],
            "--prefix",
        ),
    ] {
        let out = new(dir, &args);
        assert_eq!(out.code, Some(1), "{args:?} should fail: {}", out.stdout);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    std::fs::remove_dir_all(dir.join("hello-py")).expect("remove folder");
    let out = new(dir, &["hello-py", "--lang", "exec"]);
    assert!(
        out.stderr.contains("function \"hello-py\" already exists"),
        "{}",
        out.stderr
    );
    let after = std::fs::read_to_string(dir.join("stack.yml")).expect("read stack.yml");
    assert_eq!(after, stack, "a refused `new` changed stack.yml");
    assert!(!dir.join("other").exists() && !dir.join("hello-py").exists());
    let out = new(dir, &["hello-py", "--lang", "python3"]);
    assert_eq!(
        out.code,
        Some(1),
        "the name is in stack.yml: {}",
        out.stdout
    );

    // A Knative manifest or a broken file is left alone, and no folder is made.
    let other = tempfile::tempdir().expect("tempdir");
    let knative = common::fixtures().join("knative-service.yaml");
    std::fs::copy(&knative, other.path().join("stack.yml")).expect("copy manifest");
    std::fs::write(
        other.path().join("bad.yml"),
        "version: 1.0\nprovider:\n  nme: x\n",
    )
    .expect("write bad.yml");
    for (file, says) in [
        ("stack.yml", "Knative"),
        ("bad.yml", "bad.yml:3:3: provider.nme"),
    ] {
        let out = new(other.path(), &["fresh", "--lang", "exec", "-f", file]);
        assert_eq!(out.code, Some(1), "{file}: {}", out.stdout);
        assert!(out.stderr.contains(says), "{file}: {}", out.stderr);
        assert!(
            !other.path().join("fresh").exists(),
            "{file}: a folder was made"
        );
    }
    let kept = std::fs::read(other.path().join("stack.yml")).expect("read");
    assert_eq!(
        kept,
        std::fs::read(&knative).expect("read"),
        "the manifest changed"
    );

    // Put the starter back and deploy everything: each one answers as it is.
    std::fs::create_dir(dir.join("hello-py")).expect("mkdir");
    let again = tempfile::tempdir().expect("tempdir");
    let out = new(again.path(), &["hello-py", "--lang", "python3"]);
    assert!(out.ok, "{}", out.stderr);
    for f in ["handler.py", "requirements.txt"] {
        std::fs::copy(
            again.path().join("hello-py").join(f),
            dir.join("hello-py").join(f),
        )
        .expect("copy starter");
    }
    let p = Platform::start();
    let out = p.cli_in(dir, &["deploy", "-f", "stack.yml"], "");
    assert!(out.ok, "deploy: {}\n{}", out.stdout, out.stderr);
    for (_, name, _) in STARTERS {
        assert!(
            out.stdout
                .contains(&format!("built {name} -> registry.test/team/{name}:latest")),
            "{}",
            out.stdout
        );
    }
    for (lang, name, answer) in STARTERS {
        let out = p.cli_in(dir, &["invoke", name], "skyfri");
        assert!(out.ok, "invoke {name} ({lang}): {}", out.stderr);
        assert!(
            out.stdout.contains(answer),
            "{name} ({lang}) answered {:?}, expected {answer:?}",
            out.stdout
        );
    }
}

#[test]
fn template_ls_and_completions() {
    let here = Path::new(".");
    let out = cli(here, &["template", "ls"], "", &[]);
    assert!(out.ok, "{}", out.stderr);
    for t in [
        "python3 ",
        "python3-http",
        "node ",
        "exec",
        "http ",
        "node18",
        "node20",
        "lambda-python",
        "lambda-node",
        "lambda-provided",
    ] {
        assert!(
            out.stdout.contains(t),
            "template ls misses {t:?}:\n{}",
            out.stdout
        );
    }
    assert_eq!(
        out.stdout.lines().count(),
        9,
        "a header and one line each:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains('\u{1b}'),
        "colour on a pipe: {:?}",
        out.stdout
    );
    let drawn = on_terminal(here, &["template", "ls"], &[]);
    assert!(
        drawn.contains("\u{1b}[1mTEMPLATE"),
        "no bold header on a terminal: {drawn:?}"
    );
    let drawn = on_terminal(here, &["template", "ls"], &[("NO_COLOR", "1")]);
    assert!(
        drawn.contains("TEMPLATE") && !drawn.contains('\u{1b}'),
        "NO_COLOR: {drawn:?}"
    );
    let out = cli(here, &["template", "ls", "--json"], "", &[]);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("template ls --json");
    let names: Vec<&str> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "python3",
            "python3-http",
            "node",
            "exec",
            "http",
            "lambda-python",
            "lambda-node",
            "lambda-provided"
        ]
    );

    for shell in ["bash", "zsh", "fish"] {
        let out = cli(here, &["completion", shell], "", &[]);
        assert!(out.ok, "completion {shell}: {}", out.stderr);
        for sub in ["new", "deploy", "template", "invoke", "secret"] {
            assert!(out.stdout.contains(sub), "completion {shell} misses {sub}");
        }
    }
    let out = cli(here, &["completion", "bash"], "", &[]);
    assert!(out.stdout.contains("complete -F _skyfri"), "{}", out.stdout);
    let out = cli(here, &["completion", "powershell"], "", &[]);
    assert_eq!(out.code, Some(2), "a usage error: {}", out.stderr);
}

#[test]
fn exit_codes_tell_not_found_auth_and_unreachable_apart() {
    let p = Platform::start();
    let fixtures = common::fixtures();
    let out = p.cli(&["invoke", "no-such-function"], "");
    assert_eq!(out.code, Some(3), "invoke unknown: {}", out.stderr);
    assert!(out.stderr.contains("not deployed"), "{}", out.stderr);
    let out = p.cli(&["describe", "no-such-function"], "");
    assert_eq!(out.code, Some(3), "describe unknown: {}", out.stderr);
    let out = p.cli(&["rm", "no-such-function"], "");
    assert_eq!(out.code, Some(3), "rm unknown: {}", out.stderr);
    let wrong = [("SKYFRI_PASSWORD", "not-the-password")];
    let out = p.cli_with_env(&fixtures, &["ls"], "", &wrong);
    assert_eq!(out.code, Some(4), "wrong password: {}", out.stderr);
    assert!(
        out.stderr.contains("refused the credentials"),
        "{}",
        out.stderr
    );
    let out = p.cli_with_env(
        &fixtures,
        &["build", "-f", "functions/stack.yml"],
        "",
        &wrong,
    );
    assert_eq!(
        out.code,
        Some(4),
        "builds with a wrong password: {}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("refused the credentials").count(),
        1,
        "said once for all builds: {}",
        out.stderr
    );
    let out = p.cli_with_env(&fixtures, &["secret", "ls"], "", &wrong);
    assert_eq!(out.code, Some(4), "wrong password: {}", out.stderr);
    let out = p.cli(&["frobnicate"], "");
    assert_eq!(out.code, Some(2), "unknown command: {}", out.stderr);
    let port = common::free_port().to_string();
    let nowhere = format!("http://127.0.0.1:{port}");
    let out = p.cli(&["ls", "--gateway", &nowhere], "");
    assert_eq!(out.code, Some(5), "no gateway: {}", out.stderr);
    let out = p.cli(&["ls"], "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn debug_prints_each_call_without_credentials_or_secrets() {
    use base64::Engine;
    let p = Platform::start();
    let debug = [("SKYFRI_DEBUG", "1")];
    let fixtures = common::fixtures();
    let value = "debug-secret-value-5c1e";
    let out = p.cli_with_env(
        &fixtures,
        &["secret", "create", "debug-key", "--from-literal", value],
        "",
        &debug,
    );
    assert!(out.ok, "{}", out.stderr);
    let out2 = p.cli_with_env(&fixtures, &["ls"], "", &debug);
    assert!(out2.ok, "{}", out2.stderr);
    let out3 = p.cli_with_env(&fixtures, &["invoke", "nothing-here"], "", &debug);
    let stderr = [out.stderr, out2.stderr, out3.stderr].join("");
    let url = p.url();
    for line in [
        format!("skyfri debug: POST {url}/system/secrets -> 201 Created ("),
        format!("skyfri debug: GET {url}/system/functions -> 200 OK ("),
        format!("skyfri debug: POST {url}/function/nothing-here -> 404 Not Found ("),
    ] {
        assert!(stderr.contains(&line), "no {line:?} in:\n{stderr}");
    }
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    for hidden in [PASSWORD, token.as_str(), "Basic", "uthorization", value] {
        assert!(
            !stderr.contains(hidden),
            "debug output shows {hidden:?}:\n{stderr}"
        );
    }
    let out = p.cli(&["ls"], "");
    assert!(!out.stderr.contains("skyfri debug"), "{}", out.stderr);
}

#[test]
fn a_failed_build_names_its_file_and_the_others_still_build() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    for (name, lang) in [
        ("good-one", "python3"),
        ("broken", "python3"),
        ("good-two", "exec"),
    ] {
        let out = new(dir, &[name, "--lang", lang]);
        assert!(out.ok, "{}", out.stderr);
    }
    std::fs::write(
        dir.join("broken/requirements.txt"),
        "this is not a requirement!!\n",
    )
    .expect("write requirements");
    let p = Platform::start();
    let out = p.cli_in(dir, &["deploy", "-f", "stack.yml"], "");
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    for name in ["good-one", "good-two"] {
        assert!(
            out.stdout.contains(&format!("built {name} -> ")),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stderr
            .contains("broken: build failed: ./broken/requirements.txt: pip failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("this is not a requirement!!"),
        "no installer tail: {}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("deployed"),
        "a failed build deploys nothing: {}",
        out.stdout
    );

    // On a terminal: a line per function, ending in done or failed.
    let url = p.url();
    let env = [("SKYFRI_URL", url.as_str()), ("SKYFRI_PASSWORD", PASSWORD)];
    let drawn = on_terminal(dir, &["build"], &env);
    for (name, outcome) in [
        ("good-one", "done"),
        ("good-two", "done"),
        ("broken", "failed"),
    ] {
        let line = drawn
            .split(['\r', '\n'])
            .rfind(|l| l.contains(name) && l.contains(outcome));
        assert!(line.is_some(), "no {outcome} line for {name}: {drawn:?}");
    }
}
