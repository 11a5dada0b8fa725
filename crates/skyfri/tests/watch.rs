//! `skyfri up --watch` and redeploys under load: a new version takes over without a failed
//! call, a broken edit leaves the old version serving and says why, and the stack file's
//! functions follow its edits.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixtures, Platform};

/// Callers sending calls one after another, each as soon as its previous answer is in.
const CALLERS: usize = 4;

/// A copy of the `watch` fixture to edit, and a data dir beside it.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stack");
    copy_dir(&fixtures().join("watch"), &dir);
    (tmp, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Saves `text` to `path` as editors do: a swap file and a backup beside it, then the new
/// content written to a temporary file renamed over the old one.
fn save(path: &Path, text: &str) {
    let dir = path.parent().expect("folder");
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::write(dir.join(format!(".{name}.swp")), "swap").expect("swap");
    if path.exists() {
        std::fs::copy(path, dir.join(format!("{name}~"))).expect("backup");
    }
    let tmp = dir.join(format!(".{name}.tmp-save"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
    std::fs::remove_file(dir.join(format!(".{name}.swp"))).expect("unswap");
}

/// One answer: its status (0: no HTTP answer at all) and body.
type Answer = (u16, String);

/// Calls of `/function/NAME` from [`CALLERS`] threads until stopped, every answer kept in
/// order per caller.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Vec<Arc<Mutex<Vec<Answer>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, function: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut answers = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..CALLERS {
            let mine = Arc::new(Mutex::new(Vec::new()));
            answers.push(Arc::clone(&mine));
            let (stop, addr) = (Arc::clone(&stop), addr.to_string());
            let path = format!("/function/{function}");
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = call(&addr, &path);
                    mine.lock().expect("lock").push(answer);
                }
            }));
        }
        Load {
            stop,
            answers,
            threads,
        }
    }

    fn count(&self, pred: impl Fn(&Answer) -> bool) -> usize {
        self.answers
            .iter()
            .map(|a| a.lock().expect("lock").iter().filter(|x| pred(x)).count())
            .sum()
    }

    /// Waits until `n` more answers with `body` came in than there were when called.
    fn wait_for(&self, body: &str, n: usize, within: Duration, p: &Platform) {
        let before = self.count(|(_, b)| b == body);
        let deadline = Instant::now() + within;
        while self.count(|(_, b)| b == body) < before + n {
            assert!(
                Instant::now() < deadline,
                "no {n} answers {body:?} within {within:?}; answers so far: {:?}\n{}",
                self.summary(),
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many answers of each (status, body).
    fn summary(&self) -> std::collections::BTreeMap<Answer, usize> {
        let mut all = std::collections::BTreeMap::new();
        for a in &self.answers {
            for x in a.lock().expect("lock").iter() {
                *all.entry(x.clone()).or_insert(0) += 1;
            }
        }
        all
    }

    /// Stops the callers and returns each one's answers, in order.
    fn stop(self) -> Vec<Vec<Answer>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("caller thread");
        }
        self.answers
            .into_iter()
            .map(|a| std::mem::take(&mut *a.lock().expect("lock")))
            .collect()
    }
}

/// One call on a connection of its own; any failure to get an HTTP answer is status 0.
fn call(addr: &str, path: &str) -> Answer {
    let attempt = || -> std::io::Result<Answer> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        );
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let r = common::parse_response(&raw);
        Ok((r.status, r.text()))
    };
    attempt().unwrap_or_else(|e| (0, format!("no answer: {e}")))
}

/// Every answer was a 200 from one of `versions`, and each caller, once it got a version,
/// never got an earlier one again: traffic moved once, forwards.
fn assert_switched(per_caller: &[Vec<Answer>], versions: &[&str], p: &Platform) {
    let total: usize = per_caller.iter().map(Vec::len).sum();
    eprintln!(
        "{total} calls: {:?}",
        per_caller
            .iter()
            .flatten()
            .fold(std::collections::BTreeMap::new(), |mut m, a| {
                *m.entry(a.clone()).or_insert(0) += 1;
                m
            })
    );
    let failed: Vec<&Answer> = per_caller
        .iter()
        .flatten()
        .filter(|(status, body)| *status != 200 || !versions.contains(&body.as_str()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} calls failed during the switch: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(10)],
        p.logs()
    );
    for (i, answers) in per_caller.iter().enumerate() {
        let order: Vec<usize> = answers
            .iter()
            .filter_map(|(_, b)| versions.iter().position(|v| v == b))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "caller {i} went back to an older version: {order:?}"
        );
    }
    let last = versions.last().expect("versions");
    assert!(
        per_caller.iter().flatten().any(|(_, b)| b == last),
        "never answered {last:?}"
    );
}

fn start_watching(dir: &Path, data: &Path) -> Platform {
    let stack = dir.join("stack.yml");
    let p = Platform::start_in(data, &["-f", stack.to_str().expect("utf8"), "--watch"]);
    assert!(
        p.logs().contains("deployed greet:") && p.logs().contains("deployed idle:"),
        "up --watch did not deploy the stack:\n{}",
        p.logs()
    );
    p
}

#[test]
fn an_edit_switches_versions_without_a_failed_call() {
    let (tmp, dir) = workspace();
    let p = start_watching(&dir, &tmp.path().join("data"));

    let load = Load::start(&p.addr, "greet");
    load.wait_for("greet v1", 20, Duration::from_secs(60), &p);
    let handler = dir.join("greet/handler.py");
    let v2 = std::fs::read_to_string(&handler)
        .expect("handler")
        .replace("greet v1", "greet v2");
    save(&handler, &v2);
    load.wait_for("greet v2", 40, Duration::from_secs(120), &p);
    let answers = load.stop();
    assert_switched(&answers, &["greet v1", "greet v2"], &p);
    let logs = p.logs();
    assert!(
        logs.contains("watch: greet: handler.py changed; building"),
        "the change was not reported by file:\n{logs}"
    );
    // The editor's swap and backup files were no change of their own, and idle was not
    // touched: one rebuild, of greet alone.
    let rebuilds = logs.lines().filter(|l| l.starts_with("watch: ")).count();
    assert_eq!(rebuilds, 1, "{logs}");

    // A function at zero has no replica to replace: its next call starts the new version.
    let idle = dir.join("idle/handler.py");
    save(&idle, "def handle(req):\n    return \"idle v2\"\n");
    p.wait_output("deployed idle:", 2, Duration::from_secs(120));
    let r = p.http("POST", "/function/idle", &[], b"");
    assert_eq!((r.status, r.text()), (200, "idle v2".to_string()));
    assert_eq!(r.header("x-skyfri-cold-start"), Some("true"));
}

#[test]
fn a_broken_edit_keeps_the_old_version_serving() {
    let (tmp, dir) = workspace();
    let p = start_watching(&dir, &tmp.path().join("data"));
    let load = Load::start(&p.addr, "greet");
    load.wait_for("greet v1", 10, Duration::from_secs(60), &p);

    // A syntax error: the build fails naming the file and line; v1 keeps answering.
    let handler = dir.join("greet/handler.py");
    let good = std::fs::read_to_string(&handler).expect("handler");
    save(&handler, "def handle(req)\n    return 'greet v2'\n");
    p.wait_output("watch: greet: not deployed", 1, Duration::from_secs(120));
    load.wait_for("greet v1", 10, Duration::from_secs(60), &p);
    let logs = p.logs();
    assert!(
        logs.contains("handler.py changed") && logs.contains("line 1"),
        "the failure does not name the file and line:\n{logs}"
    );

    // A requirement that does not exist: pip's failure, naming the file, and still v1.
    save(&handler, &good);
    save(
        &dir.join("greet/requirements.txt"),
        "skyfri-no-such-package-for-tests==0.0.1\n",
    );
    p.wait_output("watch: greet: not deployed", 2, Duration::from_secs(180));
    load.wait_for("greet v1", 10, Duration::from_secs(60), &p);
    let answers = load.stop();
    assert_switched(&answers, &["greet v1"], &p);
    let logs = p.logs();
    assert!(
        logs.contains("./greet/requirements.txt: pip failed"),
        "the failure does not name requirements.txt:\n{logs}"
    );
    // pip's own last lines, about the requirement it could not install.
    assert!(
        logs.lines()
            .any(|l| !l.contains("watch: ") && l.contains("skyfri-no-such-package-for-tests")),
        "the installer's output is not shown:\n{logs}"
    );

    // The stack file: a function added is deployed, then removed with its entry.
    let stack = dir.join("stack.yml");
    let before = std::fs::read_to_string(&stack).expect("stack");
    std::fs::remove_file(dir.join("greet/requirements.txt")).expect("rm requirements");
    let added = format!(
        "{before}  extra:\n    lang: python3\n    handler: ./idle\n    image: skyfri-tests/watch-extra:latest\n"
    );
    save(&stack, &added);
    p.wait_output("deployed extra:", 1, Duration::from_secs(120));
    let r = p.http("POST", "/function/extra", &[], b"");
    assert_eq!((r.status, r.text()), (200, "idle v1".to_string()));
    save(&stack, &before);
    p.wait_output("watch: extra: no longer in", 1, Duration::from_secs(60));
    assert_eq!(p.admin("GET", "/system/function/extra", "").status, 404);
    // A stack file that does not parse changes nothing.
    save(&stack, "functions: [");
    p.wait_output(
        "not applied; the functions run as they were",
        1,
        Duration::from_secs(60),
    );
    let r = p.http("POST", "/function/greet", &[], b"");
    assert_eq!((r.status, r.text()), (200, "greet v1".to_string()));
}

#[test]
fn a_deploy_under_load_loses_no_call() {
    let (tmp, dir) = workspace();
    let p = Platform::start_in(&tmp.path().join("data"), &[]);
    let deploy = |version: &str| {
        let out = p.cli_with_env(
            &dir,
            &["deploy", "-f", "rollout.yml"],
            "",
            &[("VERSION", version)],
        );
        assert!(out.ok, "deploy failed: {}\n{}", out.stderr, p.logs());
    };
    // Two replicas (its minimum): a new version takes over once both of its own are ready.
    deploy("1");

    let load = Load::start(&p.addr, "web");
    load.wait_for("web v1", 20, Duration::from_secs(60), &p);
    // A long call in flight on a v1 replica when v2 takes over.
    let slow = {
        let addr = p.addr.clone();
        std::thread::spawn(move || call(&addr, "/function/web/slow"))
    };
    // The server takes a second to start: calls keep going to v1 meanwhile.
    deploy("2");
    load.wait_for("web v2", 20, Duration::from_secs(60), &p);
    deploy("3");
    load.wait_for("web v3", 20, Duration::from_secs(60), &p);
    let answers = load.stop();
    assert_switched(&answers, &["web v1", "web v2", "web v3"], &p);
    assert_eq!(
        slow.join().expect("slow call"),
        (200, "web v1 slow".to_string()),
        "the call in flight on the old version did not finish"
    );
    let status = p.admin("GET", "/system/function/web", "").json();
    assert_eq!(status["availableReplicas"], 2, "{status}");
}
