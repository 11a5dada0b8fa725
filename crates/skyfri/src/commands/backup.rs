//! `skyfri backup FILE`: downloads a backup of a running platform (`GET /system/backup`)
//! into FILE (mode 0600), checks it reads back whole, and says what it holds.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use skyfri_gateway::backup::Manifest;
use tokio::io::AsyncWriteExt;

use crate::client::{status_error, GatewayArgs};

#[derive(clap::Args)]
pub struct Backup {
    /// Where to write the backup (a tar.gz). It holds the secret key and the admin password:
    /// keep it as safe as they are.
    file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Backup {
    pub async fn run(self) -> Result<()> {
        if !self.force && self.file.exists() {
            bail!(
                "{} exists: pick another name, or pass --force to replace it",
                self.file.display()
            );
        }
        let mut partial = OsString::from(&self.file);
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let gw = self.gateway.connect(None)?;
        let result = download(&gw, &partial).await;
        let manifest = match result {
            Ok(()) => {
                let check = partial.clone();
                tokio::task::spawn_blocking(move || skyfri_gateway::backup::inspect(&check))
                    .await?
                    .context("the downloaded backup does not read back")
            }
            Err(e) => Err(e),
        };
        let manifest = match manifest {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        std::fs::rename(&partial, &self.file)
            .with_context(|| format!("cannot move the backup to {}", self.file.display()))?;
        let size = std::fs::metadata(&self.file)?.len();
        println!(
            "backup of {} written to {} ({} compressed)",
            gw.url,
            self.file.display(),
            human(size)
        );
        print!("{}", summary(&manifest));
        println!(
            "{} holds the secret key and the admin password: keep it as safe as they are (it is mode 0600)",
            self.file.display()
        );
        Ok(())
    }
}

/// Streams `GET /system/backup` into `path`, created mode 0600.
async fn download(gw: &crate::client::Gateway, path: &Path) -> Result<()> {
    let res = gw
        .send(Method::GET, "/system/backup", &[], Bytes::new())
        .await?;
    let status = res.status();
    if !status.is_success() {
        let body = res.into_body().collect().await?.to_bytes();
        return Err(status_error(
            &gw.url,
            &Method::GET,
            "/system/backup",
            status,
            &body,
        ));
    }
    // A partial file left by an earlier attempt may have another mode: start afresh.
    let _ = tokio::fs::remove_file(path).await;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut body = res.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the backup stream broke off (see the gateway's log)")?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What a backup holds, a few lines for people.
pub fn summary(m: &Manifest) -> String {
    let calls = match m.queued_calls {
        Some(n) => format!("{n} async call(s) still to run"),
        None => format!(
            "async calls: none (they live in the {} queue, not in the data dir)",
            m.queue
        ),
    };
    let mut out = format!(
        "  taken {} by skyfri {} (store schema {})\n  {} function(s), {} artefact(s), {} secret(s) (encrypted), {calls}\n  {} of files\n",
        m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        m.skyfri_version,
        m.store_schema,
        m.functions,
        m.artefacts,
        m.secrets,
        human(m.bytes),
    );
    for s in &m.skipped {
        out.push_str(&format!("  not backed up: {} ({})\n", s.path, s.reason));
    }
    out
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
