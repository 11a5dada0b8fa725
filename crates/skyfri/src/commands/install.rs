//! `skyfri install --systemd`: writes the systemd unit (and, when there is none yet, its
//! environment file) and says how to enable it. Why the unit runs as root: `crate::service`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::owned_file;
use crate::service::{self, DEFAULT_DATA_DIR, DEFAULT_ENV_FILE, DEFAULT_UNIT, UNIT_MARKER};

#[derive(clap::Args)]
pub struct Install {
    /// Install as a systemd service (the only kind so far).
    #[arg(long)]
    systemd: bool,
    /// Where the unit goes.
    #[arg(long, default_value = DEFAULT_UNIT)]
    output: PathBuf,
    /// Print the unit instead of writing anything.
    #[arg(long)]
    print: bool,
    /// The data dir the service runs with.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The environment file the unit reads; written (0600) only if it does not exist.
    #[arg(long, default_value = DEFAULT_ENV_FILE)]
    env_file: PathBuf,
    /// The skyfri binary the unit starts (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Replace a unit file skyfri did not write.
    #[arg(long)]
    force: bool,
}

impl Install {
    pub async fn run(self) -> Result<()> {
        if !self.systemd {
            bail!("say how to install: skyfri install --systemd");
        }
        let binary = match self.binary {
            Some(b) => b,
            None => {
                std::env::current_exe().context("cannot find this binary's path; pass --binary")?
            }
        };
        let binary = service::check_unit_path("--binary", &binary)?;
        let data_dir = service::check_unit_path("--data-dir", &self.data_dir)?;
        let env_path = service::check_unit_path("--env-file", &self.env_file)?;
        let unit = service::unit(&binary, &data_dir, &env_path);
        if self.print {
            print!("{unit}");
            return Ok(());
        }
        owned_file::write(&self.output, UNIT_MARKER, &unit, 0o644, self.force)?;
        println!("wrote {}", self.output.display());
        if owned_file::create_once(&self.env_file, &service::env_file(&data_dir), 0o600)? {
            println!(
                "wrote {} (0600): set SKYFRI_ADMIN_PASSWORD and the listen address there",
                self.env_file.display()
            );
        } else {
            println!("kept {} as it is", self.env_file.display());
        }
        println!("check the host first: skyfri doctor");
        println!("then enable it: systemctl daemon-reload && systemctl enable --now skyfri");
        Ok(())
    }
}
