use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_queue::{AsyncCall, EmbeddedQueue, Queue};
use skyfri_store::{Store, SCHEMA_VERSION};

use super::paths::{check_link, check_path};
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn entry_paths_must_be_plain_relative_names() {
    for good in [
        "skyfri.db",
        "artefacts/abc/function/handler.py",
        "logs/f.jsonl",
    ] {
        assert_eq!(check_path(Path::new(good)), Ok(()), "{good}");
    }
    for bad in ["", "/etc/passwd", "../evil", "artefacts/../../evil", "./x"] {
        assert!(check_path(Path::new(bad)).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn links_must_stay_inside_the_data_dir() {
    let ok = [
        ("artefacts/a/node_modules/.bin/tool", "../tool/cli.js"),
        ("artefacts/a/lib", "function"),
        ("artefacts/a/up", "../.."),
    ];
    for (link, target) in ok {
        assert_eq!(
            check_link(Path::new(link), Path::new(target)),
            Ok(()),
            "{link} -> {target}"
        );
    }
    let bad = [
        ("top", ".."),
        ("artefacts/a/x", "../../../etc"),
        ("artefacts/a/x", "/etc/passwd"),
        ("artefacts/a/x", "b/../../../../etc"),
        ("artefacts/a/x", "./b"),
        ("artefacts/a/x", ""),
    ];
    for (link, target) in bad {
        assert!(
            check_link(Path::new(link), Path::new(target)).is_err(),
            "{link} -> {target} was accepted"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn call(id: &str) -> AsyncCall {
    AsyncCall {
        id: id.into(),
        function: "echo".into(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: Vec::new(),
        body: Bytes::from_static(b"hello"),
        callback_url: None,
        enqueued_at: Utc::now(),
    }
}

/// A data dir as a running platform has it, with its store and queue open.
async fn live_data_dir(
    dir: &Path,
) -> Result<(Arc<Store>, Arc<EmbeddedQueue>), Box<dyn std::error::Error>> {
    let store = Arc::new(Store::open(&dir.join(STORE_DB))?);
    store.put_function(&Deployment {
        spec: FunctionSpec::new("echo", "echo:latest"),
        artefact: format!("sha256:{}", "ab".repeat(32)),
        template: Template::Python3,
        replicas: 1,
    })?;
    store.create_secret("api-key", b"s3cr3t")?;
    let queue = EmbeddedQueue::open(&dir.join(QUEUE_DB))?;
    queue.enqueue(call("c-1")).await?;
    queue.enqueue(call("c-2")).await?;
    let artefact = dir.join("artefacts").join("ab".repeat(32));
    std::fs::create_dir_all(artefact.join("function"))?;
    std::fs::create_dir_all(artefact.join("node_modules/.bin"))?;
    std::fs::create_dir_all(artefact.join("node_modules/tool"))?;
    std::fs::write(
        artefact.join("function/handler.py"),
        "def handle(r): return r",
    )?;
    std::fs::set_permissions(
        artefact.join("function/handler.py"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::write(artefact.join("node_modules/tool/cli.js"), "1")?;
    std::os::unix::fs::symlink("../tool/cli.js", artefact.join("node_modules/.bin/tool"))?;
    std::os::unix::fs::symlink("/etc/passwd", artefact.join("outside"))?;
    std::fs::create_dir_all(dir.join("artefacts/.staging-x-1"))?;
    std::fs::write(dir.join("artefacts/.staging-x-1/half"), "half")?;
    std::fs::create_dir_all(dir.join("run/replica"))?;
    std::fs::write(dir.join("run/replica/pid"), "1")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::write(dir.join("logs/echo.jsonl"), "{}\n")?;
    std::fs::write(dir.join("admin-password"), "pw\n")?;
    Ok((store, queue))
}

#[tokio::test]
async fn a_live_data_dir_comes_back_whole_in_an_empty_one() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a)?;
    let (store, queue) = live_data_dir(&a).await?;

    let snapshot = Snapshot::take(&a, &a.join("tmp"), "embedded")?;
    // Written after the snapshot: not in the backup.
    queue.enqueue(call("c-late")).await?;
    let m = snapshot.manifest().clone();
    assert_eq!(
        (
            m.functions,
            m.secrets,
            m.queued_calls,
            m.artefacts,
            m.store_schema
        ),
        (1, 1, Some(2), 1, SCHEMA_VERSION)
    );
    assert_eq!(m.skipped.len(), 1, "{:?}", m.skipped);
    assert!(m.skipped[0].path.ends_with("outside"), "{:?}", m.skipped);
    let archive = tmp.path().join("backup.tar.gz");
    std::fs::write(&archive, snapshot.write_to(Vec::new())?)?;
    drop(snapshot);
    assert_eq!(inspect(&archive)?, m);

    let b = tmp.path().join("b");
    assert_eq!(restore(&archive, &b)?, m);
    for gone in [
        "run",
        "tmp",
        "artefacts/.staging-x-1",
        "skyfri.db-wal",
        "queue.db-shm",
    ] {
        assert!(!b.join(gone).exists(), "{gone} was restored");
    }
    for (file, want) in [
        ("skyfri.db", 0o600),
        ("queue.db", 0o600),
        ("secret.key", 0o600),
        ("admin-password", 0o600),
        ("artefacts", 0o700),
        (
            &format!("artefacts/{}/function/handler.py", "ab".repeat(32)),
            0o755,
        ),
    ] {
        assert_eq!(mode(&b.join(file)), want, "{file}");
    }
    let link = b
        .join("artefacts")
        .join("ab".repeat(32))
        .join("node_modules/.bin/tool");
    assert_eq!(std::fs::read_to_string(&link)?, "1");
    assert_eq!(std::fs::read_to_string(b.join("logs/echo.jsonl"))?, "{}\n");

    // The restored store opens with the restored key; the queue holds the two calls.
    let restored = Store::open(&b.join(STORE_DB))?;
    assert_eq!(restored.list_functions()?.len(), 1);
    assert_eq!(restored.get_secret("api-key")?, Some(b"s3cr3t".to_vec()));
    let q = EmbeddedQueue::open(&b.join(QUEUE_DB))?;
    for id in ["c-1", "c-2"] {
        let state = q.get(id).await?.map(|r| r.state.name());
        assert_eq!(state, Some("queued"), "{id}");
    }
    assert!(q.get("c-late").await?.is_none());
    drop((store, queue));
    Ok(())
}

#[tokio::test]
async fn a_non_empty_data_dir_is_refused_and_left_alone() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a)?;
    let _live = live_data_dir(&a).await?;
    let archive = tmp.path().join("backup.tar.gz");
    std::fs::write(
        &archive,
        Snapshot::take(&a, &a.join("tmp"), "embedded")?.write_to(Vec::new())?,
    )?;
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b)?;
    std::fs::write(b.join("mine"), "keep")?;
    let err = restore(&archive, &b).expect_err("restored over a non-empty dir");
    assert!(err.to_string().contains("is not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&b)?.count(), 1);
    Ok(())
}

/// Builds an archive entry by entry, writing names as given (the tar crate refuses to write
/// `..` itself).
struct Crafted {
    tar: tar::Builder<Vec<u8>>,
}

impl Crafted {
    fn new(manifest: &Manifest) -> Crafted {
        let mut c = Crafted {
            tar: tar::Builder::new(Vec::new()),
        };
        let json = serde_json::to_vec(manifest).expect("manifest");
        c.entry(MANIFEST, tar::EntryType::Regular, &json, None);
        c
    }

    fn entry(&mut self, name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.tar.append(&h, data).expect("append");
    }

    /// A store database as the first release wrote it (`user_version` as given).
    fn store(&mut self, user_version: u32) {
        let mut db = vec![0u8; 100];
        db[..16].copy_from_slice(create::SQLITE_MAGIC);
        db[60..64].copy_from_slice(&user_version.to_be_bytes());
        self.entry(STORE_DB, tar::EntryType::Regular, &db, None);
    }

    fn write(self, path: &Path) {
        let tar = self.tar.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        std::fs::write(path, gz.finish().expect("gzip")).expect("write");
    }
}

fn manifest() -> Manifest {
    Manifest {
        format: FORMAT,
        skyfri_version: "0.1.0".into(),
        store_schema: SCHEMA_VERSION,
        created_at: Utc::now(),
        queue: "embedded".into(),
        functions: 0,
        secrets: 0,
        queued_calls: Some(0),
        artefacts: 0,
        contents: Vec::new(),
        bytes: 0,
        skipped: Vec::new(),
    }
}

/// Adds entries to a crafted archive.
type Build = Box<dyn FnOnce(&mut Crafted)>;

/// Restores what `build` crafts into a new dir and returns the error, checking nothing was
/// written.
fn refused(build: impl FnOnce(&mut Crafted), m: Manifest) -> String {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("x.tar.gz");
    let mut c = Crafted::new(&m);
    build(&mut c);
    c.write(&archive);
    let target = tmp.path().join("data");
    let err = restore(&archive, &target).expect_err("a bad archive was restored");
    assert!(
        !target.exists(),
        "the refused restore wrote {}",
        target.display()
    );
    assert!(!tmp.path().join("evil").exists());
    err.to_string()
}

#[test]
fn archives_that_reach_outside_or_are_not_backups_are_refused() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let file = |name: &'static str| {
        move |c: &mut Crafted| {
            c.store(1);
            c.entry(name, Regular, b"x", None);
        }
    };
    let cases: Vec<(Build, &str)> = vec![
        (Box::new(file("../evil")), "`..`"),
        (Box::new(file("logs/../../evil")), "`..`"),
        (Box::new(file("/tmp/evil")), "absolute"),
        (
            Box::new(|c: &mut Crafted| {
                c.store(1);
                c.entry("logs", Symlink, b"", Some("../.."));
            }),
            "outside the data dir",
        ),
        (
            Box::new(|c: &mut Crafted| {
                c.store(1);
                c.entry("up", Symlink, b"", Some("."));
                c.entry("up/evil", Regular, b"x", None);
            }),
            "link",
        ),
        (
            Box::new(|c: &mut Crafted| {
                c.store(1);
                c.entry("here", Directory, b"", None);
                c.entry("here/l", Symlink, b"", Some(".."));
                c.entry("here/l/evil", Regular, b"x", None);
            }),
            "beneath the link",
        ),
        (
            Box::new(|c: &mut Crafted| {
                c.store(1);
                c.entry("hard", Link, b"", Some("/etc/passwd"));
            }),
            "Link",
        ),
        (
            Box::new(|c: &mut Crafted| {
                c.store(1);
                c.store(1);
            }),
            "twice",
        ),
        (Box::new(|_: &mut Crafted| {}), "no skyfri.db"),
        (
            Box::new(|c: &mut Crafted| c.store(SCHEMA_VERSION + 1)),
            "newer skyfri",
        ),
    ];
    for (build, expected) in cases {
        let err = refused(build, manifest());
        assert!(err.contains(expected), "{err:?} does not say {expected:?}");
    }

    let newer = Manifest {
        store_schema: SCHEMA_VERSION + 1,
        ..manifest()
    };
    let err = refused(|c| c.store(1), newer);
    assert!(err.contains("newer skyfri"), "{err}");
    let secrets_without_key = Manifest {
        secrets: 2,
        ..manifest()
    };
    let err = refused(|c| c.store(1), secrets_without_key);
    assert!(err.contains(SECRET_KEY), "{err}");
}

#[test]
fn a_file_that_is_no_backup_is_refused_clearly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let not_gzip = tmp.path().join("notes.txt");
    std::fs::write(&not_gzip, "hello")?;
    let err = inspect(&not_gzip).expect_err("a text file was taken for a backup");
    assert!(
        err.to_string().contains("not a readable skyfri backup"),
        "{err}"
    );

    let other = tmp.path().join("other.tar.gz");
    let mut c = Crafted {
        tar: tar::Builder::new(Vec::new()),
    };
    c.entry("README", tar::EntryType::Regular, b"x", None);
    c.write(&other);
    let err = inspect(&other).expect_err("another archive was taken for a backup");
    assert!(err.to_string().contains("not a skyfri backup"), "{err}");
    Ok(())
}
