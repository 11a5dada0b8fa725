//! `skyfri up -f stack.yml --watch`: keeps a stack's functions deployed as their files
//! change. A change under a function's handler folder (its code, `requirements.txt`,
//! `package.json`) or to its entry in the stack file rebuilds and redeploys that function
//! alone; a function added to the file is deployed, one removed from it is removed. A build
//! or deploy that fails leaves the running version serving and says why, naming the file.
//! The switch itself loses no call: the provider's deploy starts the new replicas beside
//! the old ones and moves traffic once they are ready.

mod paths;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use skyfri_core::manifest::ManifestFunction;
use skyfri_core::openfaas::FunctionDeployment;
use tokio::sync::{mpsc, watch};

use crate::client::{status_error, Gateway};
use crate::progress::Progress;
use crate::stackfile::{self, StackFile};

/// A save is often several writes (a temporary file, a rename, a backup): a file's changes
/// are taken once it has been quiet this long.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Batches of changes this close together are one change (a `git checkout`, a formatter
/// rewriting several files).
const SETTLE: Duration = Duration::from_millis(200);
/// Batches of file events waiting to be handled; the watcher's thread waits beyond.
const QUEUE: usize = 64;
/// Changed files named in a message, at most.
const NAMED: usize = 3;

/// Debounced file events from the folders being watched.
pub struct FileEvents {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    rx: mpsc::Receiver<DebounceEventResult>,
    watched: HashSet<PathBuf>,
}

impl FileEvents {
    /// Starts the watcher (inotify on Linux), watching nothing yet.
    pub fn new() -> Result<FileEvents> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let debouncer = new_debouncer(DEBOUNCE, None, move |events| {
            // On the debouncer's own thread; fails only once the receiver is gone.
            let _ = tx.blocking_send(events);
        })
        .context("cannot watch files for --watch")?;
        Ok(FileEvents {
            debouncer,
            rx,
            watched: HashSet::new(),
        })
    }

    /// Watches exactly `folders` from now on, each on its own (not recursively).
    fn watch_only(&mut self, folders: HashSet<PathBuf>) {
        for gone in self.watched.difference(&folders) {
            let _ = self.debouncer.unwatch(gone);
        }
        let mut watched = HashSet::new();
        for folder in folders {
            if self.watched.contains(&folder) {
                watched.insert(folder);
                continue;
            }
            match self.debouncer.watch(&folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(folder);
                }
                // Gone again (a temporary folder), or out of inotify watches.
                Err(e) => tracing::warn!(folder = %folder.display(), error = %e, "not watched"),
            }
        }
        self.watched = watched;
    }

    /// The paths changed in the next batch of events and in those right after it; `None`
    /// once the watcher is gone. Reads are no change: a build reads every file it packs.
    async fn next(&mut self) -> Option<Vec<PathBuf>> {
        let mut paths = Vec::new();
        let mut add = |batch: DebounceEventResult| match batch {
            Ok(events) => paths.extend(
                events
                    .into_iter()
                    .filter(|e| !matches!(e.kind, EventKind::Access(_)))
                    .flat_map(|e| e.event.paths),
            ),
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "file watching");
                }
            }
        };
        add(self.rx.recv().await?);
        while let Ok(Some(batch)) = tokio::time::timeout(SETTLE, self.rx.recv()).await {
            add(batch);
        }
        Some(paths)
    }
}

/// What this watch last deployed of a function: the same again is not redeployed.
#[derive(Debug, PartialEq)]
struct Deployed {
    artefact: Option<String>,
    /// The `FunctionDeployment` sent, as JSON.
    deployment: Vec<u8>,
}

/// What a batch of changed paths touched.
#[derive(Debug, Default, PartialEq)]
struct Touched {
    /// The stack file, or a file it includes (an `environment_file`).
    stack: bool,
    /// Per function, the changed files of its handler folder (relative to it).
    functions: BTreeMap<String, Vec<PathBuf>>,
}

/// Sorts `changed` paths into what they touch: `stack_files` and the handler folders by
/// function (all resolved as [`paths::resolve`] does).
fn touched(
    stack_files: &[PathBuf],
    handlers: &BTreeMap<String, PathBuf>,
    changed: &[PathBuf],
) -> Touched {
    let mut t = Touched::default();
    for path in changed {
        if stack_files.contains(path) {
            t.stack = true;
        }
        for (name, folder) in handlers {
            let Ok(relative) = path.strip_prefix(folder) else {
                continue;
            };
            // The folder itself (its times) is no change to the function.
            if relative.as_os_str().is_empty() || paths::ignored(relative) {
                continue;
            }
            let files = t.functions.entry(name.clone()).or_default();
            if !files.iter().any(|f| f == relative) {
                files.push(relative.to_path_buf());
            }
        }
    }
    t
}

/// `handler.py, requirements.txt changed` for a message.
fn describe(files: &[PathBuf]) -> String {
    let mut names: Vec<String> = files
        .iter()
        .take(NAMED)
        .map(|f| f.display().to_string())
        .collect();
    if files.len() > NAMED {
        names.push(format!("{} more", files.len() - NAMED));
    }
    format!("{} changed", names.join(", "))
}

/// Keeps one stack file's functions deployed on one gateway as their files change.
pub struct StackWatch {
    gw: Gateway,
    files: FileEvents,
    stack: StackFile,
    /// The stack file and the files it includes, resolved.
    stack_files: Vec<PathBuf>,
    /// Each function's handler folder, resolved.
    handlers: BTreeMap<String, PathBuf>,
    deployed: HashMap<String, Deployed>,
}

impl StackWatch {
    pub fn new(files: FileEvents, gw: Gateway, stack: StackFile) -> StackWatch {
        let mut w = StackWatch {
            gw,
            files,
            stack,
            stack_files: Vec::new(),
            handlers: BTreeMap::new(),
            deployed: HashMap::new(),
        };
        w.follow();
        w
    }

    /// Builds and deploys every function of the stack, one at a time; a failure is
    /// reported, and the function is tried again when its files change.
    pub async fn deploy_all(&mut self) {
        for f in self.stack.manifest.functions.clone() {
            self.update(&f, None).await;
        }
    }

    /// Handles changes until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        println!(
            "watching {} and its functions' folders for changes",
            self.stack.path.display()
        );
        loop {
            let changed = tokio::select! {
                changed = self.files.next() => match changed {
                    Some(changed) => changed,
                    None => break,
                },
                () = stopped(&mut stop) => break,
            };
            let touched = touched(&self.stack_files, &self.handlers, &changed);
            tracing::debug!(?changed, ?touched, "files changed");
            self.apply(touched).await;
        }
    }

    /// Watches what the current stack names: the stack file's folder (the file itself may
    /// be replaced, as editors save), its includes' folders, and every handler folder.
    fn follow(&mut self) {
        let file = std::iter::once(&self.stack.path).chain(&self.stack.includes);
        self.stack_files = file.filter_map(|f| paths::resolve(f)).collect();
        self.handlers = self
            .stack
            .manifest
            .functions
            .iter()
            .filter_map(|f| {
                let folder = std::fs::canonicalize(self.stack.handler_dir(f)?).ok()?;
                Some((f.spec.name.clone(), folder))
            })
            .collect();
        let mut folders: HashSet<PathBuf> = self
            .stack_files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for folder in self.handlers.values() {
            folders.extend(paths::folders(folder));
        }
        self.files.watch_only(folders);
    }

    async fn apply(&mut self, touched: Touched) {
        let mut todo: BTreeMap<String, String> = touched
            .functions
            .iter()
            .map(|(name, files)| (name.clone(), describe(files)))
            .collect();
        if touched.stack {
            self.reload(&mut todo).await;
        }
        for (name, why) in todo {
            let f = self
                .stack
                .manifest
                .functions
                .iter()
                .find(|f| f.spec.name == name)
                .cloned();
            if let Some(f) = f {
                self.update(&f, Some(&why)).await;
            }
        }
        // New folders under a handler are watched from now on.
        self.follow();
    }

    /// Reads the stack file again: functions added or whose entry changed go into `todo`,
    /// functions no longer in it are removed. A file that does not load changes nothing.
    async fn reload(&mut self, todo: &mut BTreeMap<String, String>) {
        let file = self.stack.path.display().to_string();
        let stack = match StackFile::load(&self.stack.path, None) {
            Ok(stack) => stack,
            Err(e) => {
                eprintln!(
                    "watch: {e:#}\nwatch: {file} not applied; the functions run as they were"
                );
                return;
            }
        };
        let before = std::mem::replace(&mut self.stack, stack);
        for old in &before.manifest.functions {
            let name = &old.spec.name;
            if !self
                .stack
                .manifest
                .functions
                .iter()
                .any(|f| &f.spec.name == name)
            {
                self.remove(name, &file).await;
            }
        }
        for f in &self.stack.manifest.functions {
            let name = &f.spec.name;
            let why = match before
                .manifest
                .functions
                .iter()
                .find(|o| &o.spec.name == name)
            {
                None => format!("added to {file}"),
                Some(old) if old != f => format!("its entry in {file} changed"),
                Some(_) => continue,
            };
            todo.insert(name.clone(), why);
        }
    }

    /// Builds and deploys `f` unless neither its artefact nor its deployment changed since
    /// this watch deployed it. `why` is the change that led here.
    async fn update(&mut self, f: &ManifestFunction, why: Option<&str>) {
        let name = &f.spec.name;
        if let Some(why) = why {
            println!("watch: {name}: {why}; building");
        }
        let progress = Progress::plain();
        let mut task = progress.task(name, name.len());
        let artefact = match stackfile::build(&self.gw, &self.stack, f, &mut task).await {
            Ok(artefact) => artefact,
            Err(e) => return self.failed(name, why, &e),
        };
        let deployment = match serde_json::to_vec(&FunctionDeployment::from(&f.spec)) {
            Ok(d) => d,
            Err(e) => return self.failed(name, why, &e.into()),
        };
        let now = Deployed {
            artefact,
            deployment,
        };
        if self.deployed.get(name) == Some(&now) {
            println!("watch: {name}: same files and settings as deployed; not redeployed");
            return;
        }
        match stackfile::deploy(&self.gw, f).await {
            Ok(()) => {
                self.deployed.insert(name.clone(), now);
            }
            Err(e) => self.failed(name, why, &e),
        }
    }

    fn failed(&self, name: &str, why: Option<&str>, e: &anyhow::Error) {
        let serving = if self.deployed.contains_key(name) {
            "the running version keeps serving"
        } else {
            "a version deployed before, if any, keeps serving"
        };
        let after = why.map(|w| format!(" ({w})")).unwrap_or_default();
        eprintln!("watch: {name}: not deployed{after}; {serving}:\n{e:#}");
    }

    async fn remove(&mut self, name: &str, file: &str) {
        self.deployed.remove(name);
        let body = Bytes::from(serde_json::json!({ "functionName": name }).to_string());
        let path = "/system/functions";
        match self.gw.call(Method::DELETE, path, body).await {
            Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                println!("watch: {name}: no longer in {file}; removed");
            }
            Ok((status, body)) => {
                let e = status_error(&self.gw.url, &Method::DELETE, path, status, &body);
                eprintln!("watch: {name}: no longer in {file}, but not removed: {e:#}");
            }
            Err(e) => eprintln!("watch: {name}: no longer in {file}, but not removed: {e:#}"),
        }
    }
}

/// Resolves once a stop was requested (without holding the channel's guard, which is not
/// `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_go_to_their_function() {
        let stack = vec![PathBuf::from("/p/stack.yml"), PathBuf::from("/p/env.yml")];
        let handlers = BTreeMap::from([
            ("hello".to_string(), PathBuf::from("/p/hello")),
            ("orders".to_string(), PathBuf::from("/p/orders")),
        ]);
        let changed: Vec<PathBuf> = [
            "/p/hello/handler.py",
            "/p/hello/.handler.py.swp",
            "/p/hello/handler.py",
            "/p/hello",
            "/p/orders/node_modules/x/index.js",
            "/p/hello-world/handler.py",
            "/p/README.md",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let t = touched(&stack, &handlers, &changed);
        assert!(!t.stack);
        assert_eq!(
            t.functions,
            BTreeMap::from([("hello".to_string(), vec![PathBuf::from("handler.py")])])
        );
        let t = touched(&stack, &handlers, &[PathBuf::from("/p/env.yml")]);
        assert!(t.stack && t.functions.is_empty());
    }

    #[test]
    fn messages_name_a_few_files() {
        let files: Vec<PathBuf> = ["a.py", "b.py", "c.py", "d.py", "e.py"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(describe(&files[..1]), "a.py changed");
        assert_eq!(describe(&files), "a.py, b.py, c.py, 2 more changed");
    }
}
