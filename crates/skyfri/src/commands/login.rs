//! `skyfri login`: save the admin password for a gateway (read from stdin).

use std::io::Read;

use anyhow::{bail, Result};
use bytes::Bytes;
use hyper::Method;

use crate::client::{Gateway, GatewayArgs};

#[derive(clap::Args)]
pub struct Login {
    /// Read the password from stdin (the only way: it never appears in shell history).
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Login {
    pub async fn run(self) -> Result<()> {
        if !self.password_stdin {
            bail!("pass the password on stdin: echo \"$PASSWORD\" | skyfri login --password-stdin");
        }
        let mut password = String::new();
        std::io::stdin().read_to_string(&mut password)?;
        let password = password.trim().to_string();
        let url = self.gateway.url(None);
        let gw = Gateway::new(url.clone(), Some(password.clone()));
        gw.expect_ok(Method::GET, "/system/info", Bytes::new())
            .await?;
        let path = crate::credentials::save(&url, &password)?;
        println!("logged in to {url} (saved in {})", path.display());
        Ok(())
    }
}
