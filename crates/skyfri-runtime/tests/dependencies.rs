//! Dependencies declared by a handler folder are installed into its artefact at build
//! (pip for requirements.txt, npm for package.json) and imported by replicas. These tests
//! need PyPI and the npm registry: when one is unreachable they fail, showing the installer's
//! output, rather than pass without having tested anything.

mod common;

use std::time::Instant;

use common::*;
use skyfri_core::Template;
use skyfri_runtime::Provider;

const PY_HANDLER: &str = r#"
import six

def handle(req):
    return "six " + six.__version__ + " from " + six.__file__
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_requirements_are_installed_and_imported() -> Result {
    let env = env()?;
    let files = [
        ("handler.py", PY_HANDLER),
        ("requirements.txt", "# from PyPI\nsix==1.16.0\n"),
    ];
    let started = Instant::now();
    let d = env.function("withsix", Template::Python3, &files, None)?;
    let first = started.elapsed();
    let dir = env.store.path(&d.artefact).ok_or("artefact missing")?;
    assert!(dir.join("python_packages/six.py").is_file());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("python_packages/six.py"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o444, "installed files are read-only");

    env.provider.deploy(&d).await?;
    let ep = endpoint(&env.provider, "withsix")?;
    let r = request(&ep, "POST", "/", &[], "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("six 1.16.0 from "), "{}", r.body);
    assert!(r.body.contains("python_packages"), "{}", r.body);

    // Unchanged: the same artefact, found by its hash without running pip again.
    let started = Instant::now();
    let again = env.function("withsix", Template::Python3, &files, None)?;
    let cached = started.elapsed();
    assert_eq!(again.artefact, d.artefact);
    assert!(
        cached < first / 2,
        "an unchanged rebuild took {cached:?}, the first build {first:?}"
    );
    eprintln!("first build (pip) {first:?}, unchanged rebuild {cached:?}");

    // A changed requirements file is a new artefact.
    let changed = env.function(
        "withsix",
        Template::Python3,
        &[
            ("handler.py", PY_HANDLER),
            ("requirements.txt", "six==1.17.0\n"),
        ],
        None,
    )?;
    assert_ne!(changed.artefact, d.artefact);

    // A changed handler with the same requirements is a new artefact whose packages are
    // those installed for the first one (the same files, linked), without running pip.
    let edited = format!("{PY_HANDLER}\n# edited\n");
    let started = Instant::now();
    let relinked = env.function(
        "withsix",
        Template::Python3,
        &[("handler.py", edited.as_str()), files[1]],
        None,
    )?;
    let linked = started.elapsed();
    assert_ne!(relinked.artefact, d.artefact);
    let again_dir = env
        .store
        .path(&relinked.artefact)
        .ok_or("artefact missing")?;
    assert_eq!(
        inode(&again_dir.join("python_packages/six.py"))?,
        inode(&dir.join("python_packages/six.py"))?,
        "pip ran again for unchanged requirements"
    );
    eprintln!("handler changed, requirements not: built in {linked:?}");
    env.provider.deploy(&relinked).await?;
    let r = request(&endpoint(&env.provider, "withsix")?, "POST", "/", &[], "").await?;
    assert!(r.body.starts_with("six 1.16.0 from "), "{}", r.body);
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn python3_http_and_exec_see_the_packages() -> Result {
    let env = env()?;
    let handler = r#"
import idna

def handle(event, context):
    return {"statusCode": 200, "body": idna.encode("b\u00fccher.example").decode()}
"#;
    let d = env.function(
        "withidna",
        Template::Python3Http,
        &[("handler.py", handler), ("requirements.txt", "idna\n")],
        None,
    )?;
    env.provider.deploy(&d).await?;
    let r = request(&endpoint(&env.provider, "withidna")?, "GET", "/", &[], "").await?;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "xn--bcher-kva.example"),
        "{}",
        r.body
    );

    // exec runs its own interpreter: the packages reach it through PYTHONPATH.
    let script = "import sys, idna\nsys.stdout.write(idna.decode(sys.stdin.read()))\n";
    let d = env.function(
        "execidna",
        Template::Exec,
        &[("run.py", script), ("requirements.txt", "idna\n")],
        Some("python3 run.py"),
    )?;
    env.provider.deploy(&d).await?;
    let r = request(
        &endpoint(&env.provider, "execidna")?,
        "POST",
        "/",
        &[],
        "xn--bcher-kva.example",
    )
    .await?;
    assert_eq!((r.status, r.body.as_str()), (200, "b\u{fc}cher.example"));
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_package_fails_the_build_naming_the_file() -> Result {
    let env = env()?;
    let err = env
        .function(
            "nosuch",
            Template::Python3,
            &[
                ("handler.py", "def handle(req):\n    return req\n"),
                ("requirements.txt", "skyfri-no-such-package-7f3a9c\n"),
            ],
            None,
        )
        .err()
        .ok_or("a build with an unknown package succeeded")?
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("requirements.txt: pip failed"), "{err}");
    // pip's own words, from the tail of its output.
    assert!(
        err.contains("skyfri-no-such-package-7f3a9c")
            && err.contains("No matching distribution found"),
        "{err}"
    );
    assert!(!err.contains(".staging"), "staging paths leak: {err}");
    // Nothing half-built is left behind (nor kept for reuse).
    let leftovers = std::fs::read_dir(env.store.root())?.count();
    assert_eq!(leftovers, 0);
    env.provider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_dependencies_are_installed_and_required() -> Result {
    let env = env()?;
    let handler = r#"
const ms = require('ms');
module.exports = async (event, context) => ({ ms: ms('2 days') });
"#;
    let package = r#"{"name": "withms", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}}"#;
    let d = env.function(
        "withms",
        Template::Node,
        &[("handler.js", handler), ("package.json", package)],
        None,
    )?;
    let dir = env.store.path(&d.artefact).ok_or("artefact missing")?;
    assert!(dir.join("function/node_modules/ms/package.json").is_file());
    assert!(
        !dir.join("function/package-lock.json").exists(),
        "npm wrote a lock file into the artefact"
    );
    env.provider.deploy(&d).await?;
    let r = request(&endpoint(&env.provider, "withms")?, "GET", "/", &[], "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["ms"], 172_800_000);

    // An edited handler with the same package.json links the packages installed before.
    let edited = format!("{handler}// edited\n");
    let relinked = env.function(
        "withms",
        Template::Node,
        &[("handler.js", edited.as_str()), ("package.json", package)],
        None,
    )?;
    let again_dir = env
        .store
        .path(&relinked.artefact)
        .ok_or("artefact missing")?;
    assert_eq!(
        inode(&again_dir.join("function/node_modules/ms/package.json"))?,
        inode(&dir.join("function/node_modules/ms/package.json"))?,
        "npm ran again for an unchanged package.json"
    );

    // With a lock file, `npm ci` installs exactly what it pins, and refuses one that does
    // not match package.json.
    let d = env.function(
        "lockedms",
        Template::Node,
        &[
            ("handler.js", handler),
            ("package.json", package),
            ("package-lock.json", LOCK),
        ],
        None,
    )?;
    let dir = env.store.path(&d.artefact).ok_or("artefact missing")?;
    let installed = std::fs::read_to_string(dir.join("function/node_modules/ms/package.json"))?;
    assert!(installed.contains("\"version\": \"2.1.3\""), "{installed}");
    let err = env
        .function(
            "stalelock",
            Template::Node,
            &[
                ("handler.js", handler),
                ("package.json", &package.replace("2.1.3", "2.1.2")),
                ("package-lock.json", LOCK),
            ],
            None,
        )
        .err()
        .ok_or("npm ci accepted a lock file that does not match package.json")?
        .to_string();
    assert!(err.contains("package.json: npm failed"), "{err}");

    // A dependency that does not exist fails the build, naming package.json.
    let err = env
        .function(
            "nosuchnode",
            Template::Node,
            &[
                ("handler.js", handler),
                (
                    "package.json",
                    r#"{"dependencies": {"skyfri-no-such-package-7f3a9c": "1.0.0"}}"#,
                ),
            ],
            None,
        )
        .err()
        .ok_or("a build with an unknown package succeeded")?
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("package.json: npm failed"), "{err}");
    assert!(err.contains("404"), "{err}");
    env.provider.shutdown().await;
    Ok(())
}

fn inode(path: &std::path::Path) -> std::io::Result<u64> {
    Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(
        path,
    )?))
}

/// `npm install --package-lock-only` for `{"dependencies": {"ms": "2.1.3"}}`.
const LOCK: &str = r#"{
  "name": "withms",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "withms",
      "version": "1.0.0",
      "dependencies": {
        "ms": "2.1.3"
      }
    },
    "node_modules/ms": {
      "version": "2.1.3",
      "integrity": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==",
      "license": "MIT"
    }
  }
}
"#;
