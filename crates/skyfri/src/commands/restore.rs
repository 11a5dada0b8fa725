//! `skyfri restore FILE`: unpacks a backup into a new or empty data dir, offline; `skyfri up`
//! on that dir then brings every function back (an older store is migrated then).

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Restore {
    /// A backup written by `skyfri backup`.
    file: PathBuf,
    /// The data dir to restore into; it must be empty or not exist yet (default: as for
    /// `skyfri up`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Restore {
    pub async fn run(self) -> Result<()> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(crate::client::default_data_dir);
        let (file, dir) = (self.file.clone(), data_dir.clone());
        let manifest =
            tokio::task::spawn_blocking(move || skyfri_gateway::backup::restore(&file, &dir))
                .await?
                .with_context(|| format!("cannot restore {}", self.file.display()))?;
        println!(
            "restored {} into {}",
            self.file.display(),
            data_dir.display()
        );
        print!("{}", super::backup::summary(&manifest));
        println!("start it with: skyfri up --data-dir {}", data_dir.display());
        Ok(())
    }
}
