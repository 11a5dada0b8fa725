//! `skyfri lambda-shim -- CLIENT...` (hidden): what a Lambda template's replica runs in its
//! sandbox; see `skyfri_runtime::lambda`.

use anyhow::{anyhow, Result};

#[derive(clap::Args)]
pub struct LambdaShim {
    /// The runtime client and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

impl LambdaShim {
    pub async fn run(self) -> Result<()> {
        let config = skyfri_runtime::lambda::Config::from_env(self.command)
            .map_err(|e| anyhow!("lambda-shim: {e}"))?;
        let code = skyfri_runtime::lambda::run(config).await?;
        std::process::exit(code);
    }
}
