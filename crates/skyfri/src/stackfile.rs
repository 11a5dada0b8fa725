//! Reads a stack.yml or Knative manifest from disk, checks what only the disk can tell
//! (handler folders), and turns its functions into artefact builds and deployments.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use skyfri_core::manifest::{self, Manifest, ManifestFunction};
use skyfri_core::openfaas::FunctionDeployment;

use crate::client::{error_text, status_error, Gateway};
use crate::progress::{Progress, Task};

pub struct StackFile {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Other files the manifest was read from (its `environment_file`s).
    pub includes: Vec<PathBuf>,
}

impl StackFile {
    /// Parses and validates the whole file; nothing is sent anywhere before this succeeds.
    pub fn load(path: &Path, filter: Option<&str>) -> Result<StackFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let file = path.display().to_string();
        let (mut manifest, includes) = parse_with_includes(path, &text)?;
        if let Some(name) = filter {
            manifest.functions.retain(|f| f.spec.name == name);
            if manifest.functions.is_empty() {
                bail!("{file}: no function named {name:?} (--filter)");
            }
        }
        for f in &manifest.functions {
            if let Some(h) = &f.handler {
                let folder = dir.join(h);
                if !folder.is_dir() {
                    bail!(
                        "{file}: functions.{}.handler: folder {} does not exist (create it, e.g. with `skyfri new`)",
                        f.spec.name,
                        folder.display()
                    );
                }
            }
        }
        Ok(StackFile {
            path: path.to_path_buf(),
            manifest,
            includes,
        })
    }

    fn dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// The folder a function's handler is built from, if it has one.
    pub fn handler_dir(&self, f: &ManifestFunction) -> Option<PathBuf> {
        f.handler.as_ref().map(|h| self.dir().join(h))
    }
}

/// Parses `text` as the manifest at `path`: `${VAR}`s from the environment, an
/// `environment_file` relative to the file's folder.
pub fn parse(path: &Path, text: &str) -> Result<Manifest> {
    parse_with_includes(path, text).map(|(manifest, _)| manifest)
}

/// As [`parse`], and the files it read besides `path`.
fn parse_with_includes(path: &Path, text: &str) -> Result<(Manifest, Vec<PathBuf>)> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let env = |k: &str| std::env::var(k).ok();
    let includes = std::cell::RefCell::new(Vec::new());
    let read = |rel: &str| {
        let file = dir.join(rel);
        includes.borrow_mut().push(file.clone());
        std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))
    };
    let manifest = manifest::parse(&path.display().to_string(), text, &env, &read)?;
    Ok((manifest, includes.into_inner()))
}

fn pack(folder: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    // Links are resolved here, on the user's machine: the gateway accepts only files and
    // folders.
    builder.follow_symlinks(true);
    builder
        .append_dir_all(".", folder)
        .with_context(|| format!("cannot pack {}", folder.display()))?;
    Ok(builder.into_inner()?)
}

/// Builds at most this many functions at once: each build may run an installer on the
/// gateway's host, and two or three keep it busy without starving it.
const PARALLEL_BUILDS: usize = 3;

/// Builds the artefacts of every function with a handler, a few at a time, showing each
/// one's progress. Every build is tried; the error lists each one that failed.
pub async fn build_all(gw: &Gateway, stack: &StackFile, progress: &Progress) -> Result<()> {
    use futures_util::StreamExt;

    let functions: Vec<&ManifestFunction> = stack
        .manifest
        .functions
        .iter()
        .filter(|f| f.handler.is_some() && f.template.is_some())
        .collect();
    let width = functions
        .iter()
        .map(|f| f.spec.name.len())
        .max()
        .unwrap_or(0);
    let tasks: Vec<_> = functions
        .iter()
        .map(|f| (*f, progress.task(&f.spec.name, width)))
        .collect();
    let results: Vec<Result<()>> = futures_util::stream::iter(tasks)
        .map(|(f, mut task)| async move {
            let result = build(gw, stack, f, &mut task).await.map(|_| ());
            if let Err(e) = &result {
                let text = format!("{e:#}");
                let first = text.lines().next().unwrap_or_default();
                let prefix = format!("{}: ", f.spec.name);
                task.failed(first.strip_prefix(&prefix).unwrap_or(first));
            }
            result
        })
        .buffer_unordered(PARALLEL_BUILDS)
        .collect()
        .await;
    let mut failures: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    // Refused credentials or an unreachable gateway fail every build alike: once is enough,
    // with its exit code.
    let shared = |e: &anyhow::Error| {
        [crate::exit::AUTH, crate::exit::UNREACHABLE].contains(&crate::exit::raw(e))
    };
    if !failures.is_empty() && failures.iter().all(shared) {
        return Err(failures.remove(0));
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => {
            let all: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
            bail!(
                "{n} of {} functions failed to build:\n\n{}",
                functions.len(),
                all.join("\n\n")
            )
        }
    }
}

/// Builds one function's artefact on the gateway, which installs its dependencies; returns
/// the artefact's name (the hash of its content), `None` for a function without a handler.
pub async fn build(
    gw: &Gateway,
    stack: &StackFile,
    f: &ManifestFunction,
    task: &mut Task,
) -> Result<Option<String>> {
    let (Some(handler), Some(template)) = (&f.handler, f.template) else {
        return Ok(None);
    };
    task.step(format!("packing {handler}"));
    let folder = stack.dir().join(handler);
    let archive = {
        let folder = folder.clone();
        tokio::task::spawn_blocking(move || pack(&folder)).await??
    };
    task.step(format!(
        "building on the gateway ({} KiB; dependencies are installed there)",
        archive.len().div_ceil(1024)
    ));
    let path = format!(
        "/system/artefacts?image={}&template={}",
        urlencode(&f.spec.image),
        template.name()
    );
    let (status, body) = gw.call(Method::POST, &path, Bytes::from(archive)).await?;
    if status == StatusCode::BAD_REQUEST {
        let text = error_text(&body);
        // The gateway's wrapping says nothing the user needs.
        let text = text.strip_prefix("build failed: ").unwrap_or(&text);
        let text = text.strip_prefix("invalid deployment: ").unwrap_or(text);
        bail!(
            "{}: build failed: {}",
            f.spec.name,
            name_file(handler, &folder, text)
        );
    }
    if !status.is_success() {
        return Err(status_error(&gw.url, &Method::POST, &path, status, &body))
            .with_context(|| format!("building {}", f.spec.name));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let artefact = v["artefact"].as_str().unwrap_or("?").to_string();
    let short = artefact.get(..19).unwrap_or(&artefact);
    task.done(
        &format!("{} ({short}) in {}", f.spec.image, task.elapsed()),
        &format!(
            "built {} -> {} ({artefact}) in {}",
            f.spec.name,
            f.spec.image,
            task.elapsed()
        ),
    );
    Ok(Some(artefact))
}

/// A build error that starts with a file of the handler folder (`requirements.txt: pip
/// failed...`) names it as the user sees it (`./orders/requirements.txt: ...`).
fn name_file(handler: &str, folder: &Path, message: &str) -> String {
    match message.split_once(": ") {
        Some((file, rest))
            if !file.contains(char::is_whitespace) && folder.join(file).is_file() =>
        {
            format!("{}/{file}: {rest}", handler.trim_end_matches('/'))
        }
        _ => message.to_string(),
    }
}

/// Deploys as faas-cli does: PUT, then POST when the function does not exist yet.
pub async fn deploy(gw: &Gateway, f: &ManifestFunction) -> Result<()> {
    let body = Bytes::from(serde_json::to_vec(&FunctionDeployment::from(&f.spec))?);
    let (status, answer) = gw
        .call(Method::PUT, "/system/functions", body.clone())
        .await?;
    let (status, answer) = if status == StatusCode::NOT_FOUND {
        gw.call(Method::POST, "/system/functions", body).await?
    } else {
        (status, answer)
    };
    if !status.is_success() {
        return Err(status_error(
            &gw.url,
            &Method::POST,
            "/system/functions",
            status,
            &answer,
        ))
        .with_context(|| format!("deploying {}", f.spec.name));
    }
    println!(
        "deployed {}: {}/function/{}",
        f.spec.name, gw.url, f.spec.name
    );
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
