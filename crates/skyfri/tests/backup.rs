//! Backup and restore end to end through the real binary: a backup taken from a running
//! platform, with a function reading a secret and async calls still waiting, restored into
//! an empty data dir where `skyfri up` brings it all back; restoring into a non-empty dir
//! and restoring a tampered archive are refused.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{fixtures, Platform};

const VALUE: &str = "backup-secret-5e1f0c";
/// Calls queued behind the long one.
const QUEUED: [&str; 3] = ["q-1", "q-2", "q-3"];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The archive's tar, uncompressed.
fn unzip(path: &Path) -> Vec<u8> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open backup"))
        .read_to_end(&mut tar)
        .expect("gunzip backup");
    tar
}

/// A copy of the backup at `from` with one more entry, `../evil`, written as raw header bytes
/// (the tar crate refuses to write such a name itself).
fn tamper(from: &Path, to: &Path) {
    let tar = unzip(from);
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut header = entry.header().clone();
        let path = entry.path().expect("path").into_owned();
        let copied = match entry.link_name().expect("link") {
            Some(target) => {
                let target = target.into_owned();
                out.append_link(&mut header, &path, target)
            }
            None => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("read entry");
                out.append_data(&mut header, &path, data.as_slice())
            }
        };
        copied.expect("copy entry");
    }
    let mut evil = tar::Header::new_old();
    evil.as_old_mut().name[..7].copy_from_slice(b"../evil");
    evil.set_entry_type(tar::EntryType::Regular);
    evil.set_mode(0o644);
    evil.set_size(4);
    evil.set_cksum();
    out.append(&evil, &b"evil"[..]).expect("append evil");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&out.into_inner().expect("tar")).expect("gzip");
    std::fs::write(to, gz.finish().expect("gzip")).expect("write tampered");
}

#[test]
fn a_backup_of_a_running_platform_restores_functions_secrets_and_queued_calls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let p = Platform::start_in(&a, &[]);
    let out = p.cli(
        &["secret", "create", "api-key", "--from-literal", VALUE],
        "",
    );
    assert!(out.ok, "{}", out.stderr);
    let out = p.cli_in(
        &fixtures().join("backup"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(out.ok, "deploy: {}\n{}", out.stderr, out.stdout);
    let r = p.http("POST", "/function/reader", &[], b"api-key");
    assert_eq!((r.status, r.text().as_str()), (200, VALUE));

    // `slow` runs one async call at a time: while the first sleeps, the others wait. It
    // sleeps long enough for the backup to be taken meanwhile; the stop waits for it to end.
    let r = p.http(
        "POST",
        "/async-function/slow",
        &[("X-Call-Id", "long")],
        b"15",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    p.wait_call_state("long", "running", Duration::from_secs(30));
    for id in QUEUED {
        let r = p.http("POST", "/async-function/slow", &[("X-Call-Id", id)], b"0");
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(
            p.wait_call_state(id, "queued", Duration::ZERO)["state"],
            "queued"
        );
    }

    // The backup, while it all runs; only for the admin.
    let r = p.http("GET", "/system/backup", &[], b"");
    assert_eq!(
        r.status, 401,
        "a backup was handed out without the password"
    );
    let file = tmp.path().join("skyfri-backup.tar.gz");
    let file_arg = file.to_str().expect("utf-8 path");
    let out = p.cli(&["backup", file_arg], "");
    assert!(out.ok, "backup: {}\n{}", out.stderr, out.stdout);
    for said in [
        "2 function(s)",
        "2 artefact(s)",
        "1 secret(s) (encrypted)",
        // The three queued and the running one, which runs again after a restore.
        "4 async call(s) still to run",
        "keep it as safe",
    ] {
        assert!(
            out.stdout.contains(said),
            "the summary misses {said:?}: {}",
            out.stdout
        );
    }
    assert_eq!(mode(&file), 0o600, "the backup is readable by others");
    let tar = unzip(&file);
    assert!(
        !tar.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
        "the secret is in the backup in the clear"
    );
    assert!(!out.stdout.contains(VALUE) && !out.stderr.contains(VALUE));
    let out = p.cli(&["backup", file_arg], "");
    assert!(!out.ok && out.stderr.contains("--force"), "{}", out.stderr);
    p.stop();

    // Not over an existing install.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).expect("mkdir");
    std::fs::write(busy.join("mine"), "keep").expect("write");
    let out = restore(&file, &busy);
    assert!(!out.ok, "restored into a non-empty dir: {}", out.stdout);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&busy).expect("read busy").count(), 1);

    // Not a tampered archive: nothing is written, inside or outside.
    let tampered = tmp.path().join("tampered.tar.gz");
    tamper(&file, &tampered);
    let c = tmp.path().join("c");
    let out = restore(&tampered, &c);
    assert!(!out.ok, "a tampered backup was restored: {}", out.stdout);
    assert!(
        out.stderr.contains("\"../evil\"") && out.stderr.contains("`..`"),
        "the error does not name the entry: {}",
        out.stderr
    );
    assert!(!c.exists() && !tmp.path().join("evil").exists());

    // Into a new dir: everything comes back.
    let b = tmp.path().join("b");
    let out = restore(&file, &b);
    assert!(out.ok, "restore: {}\n{}", out.stderr, out.stdout);
    assert!(
        out.stdout.contains("skyfri up --data-dir"),
        "{}",
        out.stdout
    );
    for f in ["skyfri.db", "queue.db", "secret.key", "admin-password"] {
        assert_eq!(mode(&b.join(f)), 0o600, "{f}");
    }
    let p = Platform::start_in(&b, &[]);
    assert!(p.logs().contains("restored 2 function(s)"), "{}", p.logs());
    let r = p.http("POST", "/function/reader", &[], b"api-key");
    assert_eq!((r.status, r.text().as_str()), (200, VALUE));
    for id in QUEUED {
        let call = p.wait_call_state(id, "done", Duration::from_secs(60));
        assert_eq!(call["status"], 200, "{call}");
    }
}

/// `skyfri restore FILE --data-dir DIR`, offline.
fn restore(file: &Path, dir: &Path) -> common::Output {
    let file = file.to_str().expect("utf-8 path");
    let dir = dir.to_str().expect("utf-8 path");
    common::cli(
        Path::new("."),
        &["restore", file, "--data-dir", dir],
        "",
        &[],
    )
}
