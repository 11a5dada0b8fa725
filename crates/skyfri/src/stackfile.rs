//! Reads a stack.yml or Knative manifest from disk, checks what only the disk can tell
//! (handler folders), and turns its functions into artefact builds and deployments.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use skyfri_core::manifest::{self, Manifest, ManifestFunction};
use skyfri_core::openfaas::FunctionDeployment;

use crate::client::{error_text, Gateway};

pub struct StackFile {
    pub path: PathBuf,
    pub manifest: Manifest,
}

impl StackFile {
    /// Parses and validates the whole file; nothing is sent anywhere before this succeeds.
    pub fn load(path: &Path, filter: Option<&str>) -> Result<StackFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let env = |k: &str| std::env::var(k).ok();
        let read = |rel: &str| {
            std::fs::read_to_string(dir.join(rel))
                .map_err(|e| format!("cannot read {}: {e}", dir.join(rel).display()))
        };
        let file = path.display().to_string();
        let mut manifest = manifest::parse(&file, &text, &env, &read)?;
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
        })
    }

    fn dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).to_path_buf()
    }
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

/// Builds one function's artefact on the gateway; no-op for functions without a handler.
pub async fn build(gw: &Gateway, stack: &StackFile, f: &ManifestFunction) -> Result<()> {
    let (Some(handler), Some(template)) = (&f.handler, f.template) else {
        return Ok(());
    };
    let archive = pack(&stack.dir().join(handler))?;
    let path = format!(
        "/system/artefacts?image={}&template={}",
        urlencode(&f.spec.image),
        template.name()
    );
    let body = gw
        .expect_ok(Method::POST, &path, Bytes::from(archive))
        .await
        .with_context(|| format!("building {}", f.spec.name))?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "built {} -> {} ({})",
        f.spec.name,
        f.spec.image,
        v["artefact"].as_str().unwrap_or("?")
    );
    Ok(())
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
        bail!(
            "deploying {}: {status}: {}",
            f.spec.name,
            error_text(&answer)
        );
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
