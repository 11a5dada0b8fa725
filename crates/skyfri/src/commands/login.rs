//! `skyfri login`: save the admin password, or an API token, for a gateway (read from stdin).

use std::io::Read;

use anyhow::{bail, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::client::{error_text, Credential, Gateway, GatewayArgs};

#[derive(clap::Args)]
pub struct Login {
    /// Read the admin password from stdin (the only way: it never appears in shell history).
    #[arg(long, conflicts_with = "token_stdin")]
    password_stdin: bool,
    /// Read an API token (from `skyfri token create`) from stdin instead.
    #[arg(long)]
    token_stdin: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Login {
    pub async fn run(self) -> Result<()> {
        if !self.password_stdin && !self.token_stdin {
            bail!("pass the password or a token on stdin: echo \"$PASSWORD\" | skyfri login --password-stdin, or echo \"$TOKEN\" | skyfri login --token-stdin");
        }
        let mut secret = String::new();
        std::io::stdin().read_to_string(&mut secret)?;
        let secret = secret.trim().to_string();
        if secret.is_empty() {
            bail!("nothing on stdin");
        }
        let credential = if self.token_stdin {
            Credential::Token(secret)
        } else {
            Credential::Password(secret)
        };
        let url = self.gateway.url(None);
        let gw = Gateway::with(url.clone(), Some(credential.clone()));
        let (status, body) = gw.call(Method::GET, "/system/info", Bytes::new()).await?;
        // A token that may only invoke functions is valid, though it may not read /system.
        if !status.is_success() && status != StatusCode::FORBIDDEN {
            bail!("{url} refused the login: {status}: {}", error_text(&body));
        }
        let path = crate::credentials::save(&url, &credential)?;
        println!("logged in to {url} (saved in {})", path.display());
        Ok(())
    }
}
