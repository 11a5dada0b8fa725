//! `skyfri build -f FILE`: turn handler folders into artefacts registered under their image.

use std::path::PathBuf;

use anyhow::Result;

use crate::client::GatewayArgs;
use crate::progress::Progress;
use crate::stackfile::{self, StackFile};

#[derive(clap::Args)]
pub struct Build {
    #[arg(short = 'f', long = "yaml", default_value = "stack.yml")]
    file: PathBuf,
    #[arg(long)]
    filter: Option<String>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Build {
    pub async fn run(self) -> Result<()> {
        let stack = StackFile::load(&self.file, self.filter.as_deref())?;
        let gw = self.gateway.connect(stack.manifest.gateway.as_deref())?;
        stackfile::build_all(&gw, &stack, &Progress::new()).await
    }
}
