//! `skyfri deploy -f FILE`: validate the whole file, build, then deploy each function.

use std::path::PathBuf;

use anyhow::Result;

use crate::client::GatewayArgs;
use crate::progress::Progress;
use crate::stackfile::{self, StackFile};

#[derive(clap::Args)]
pub struct Deploy {
    /// stack.yml or Knative Service manifest.
    #[arg(short = 'f', long = "yaml", default_value = "stack.yml")]
    file: PathBuf,
    /// Only this function.
    #[arg(long)]
    filter: Option<String>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Deploy {
    pub async fn run(self) -> Result<()> {
        let stack = StackFile::load(&self.file, self.filter.as_deref())?;
        let gw = self.gateway.connect(stack.manifest.gateway.as_deref())?;
        deploy_all(&gw, &stack, &Progress::new()).await
    }
}

/// Builds every function first, then deploys: a build failure deploys nothing.
pub async fn deploy_all(
    gw: &crate::client::Gateway,
    stack: &StackFile,
    progress: &Progress,
) -> Result<()> {
    stackfile::build_all(gw, stack, progress).await?;
    for f in &stack.manifest.functions {
        stackfile::deploy(gw, f).await?;
    }
    Ok(())
}
