//! `skyfri secret create|ls|update|rm`: the secrets functions read from
//! `/var/openfaas/secrets/NAME`. Values are sent to the gateway and never printed.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;

use crate::client::GatewayArgs;

/// Largest value the gateway accepts.
const MAX_VALUE_BYTES: u64 = 1 << 20;

#[derive(clap::Subcommand)]
pub enum Secret {
    /// Create a secret (value from --from-literal, --from-file or stdin).
    Create(Write),
    /// List secret names.
    Ls(Ls),
    /// Replace a secret's value (value from --from-literal, --from-file or stdin).
    Update(Write),
    /// Remove a secret.
    Rm(Rm),
}

impl Secret {
    pub async fn run(self) -> Result<()> {
        match self {
            Secret::Create(c) => c.run(Method::POST, "created").await,
            Secret::Ls(c) => c.run().await,
            Secret::Update(c) => c.run(Method::PUT, "updated").await,
            Secret::Rm(c) => c.run().await,
        }
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "With neither --from-literal nor --from-file, the value is read from stdin, without its trailing newline."
)]
pub struct Write {
    /// Secret name: lower-case letters, digits, '-' and '.'.
    name: String,
    /// The value, given on the command line (visible in shell history and `ps`).
    #[arg(long, conflicts_with = "from_file")]
    from_literal: Option<String>,
    /// Read the value from this file, byte for byte.
    #[arg(long)]
    from_file: Option<PathBuf>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Write {
    async fn run(self, method: Method, done: &str) -> Result<()> {
        skyfri_core::validate_secret_name(&self.name).map_err(anyhow::Error::msg)?;
        let value = self.value()?;
        if value.is_empty() {
            bail!("the value of secret {:?} is empty", self.name);
        }
        // Text goes as `value`, anything else as base64 `rawValue`, as faas-cli does.
        let body = match std::str::from_utf8(&value) {
            Ok(text) => serde_json::json!({ "name": self.name, "value": text }),
            Err(_) => serde_json::json!({
                "name": self.name,
                "rawValue": base64::engine::general_purpose::STANDARD.encode(&value),
            }),
        };
        let gw = self.gateway.connect(None)?;
        gw.expect_ok(method, "/system/secrets", Bytes::from(body.to_string()))
            .await?;
        println!("{done} secret {}", self.name);
        Ok(())
    }

    fn value(&self) -> Result<Vec<u8>> {
        if let Some(v) = &self.from_literal {
            return Ok(v.clone().into_bytes());
        }
        if let Some(path) = &self.from_file {
            let file = std::fs::File::open(path)
                .with_context(|| format!("--from-file: cannot read {}", path.display()))?;
            return read_limited(file, &path.display().to_string());
        }
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("Reading the value from stdin, end with Ctrl-D:");
        }
        // `echo value | skyfri secret create NAME` means the value without the newline.
        let mut value = read_limited(stdin.lock(), "stdin")?;
        while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            value.pop();
        }
        Ok(value)
    }
}

fn read_limited(reader: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    reader
        .take(MAX_VALUE_BYTES + 1)
        .read_to_end(&mut value)
        .with_context(|| format!("reading the value from {what}"))?;
    if value.len() as u64 > MAX_VALUE_BYTES {
        bail!("the value from {what} is larger than the {MAX_VALUE_BYTES} bytes a secret may hold");
    }
    Ok(value)
}

#[derive(clap::Args)]
pub struct Ls {
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[derive(Deserialize)]
struct Listed {
    name: String,
}

impl Ls {
    async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let Some(list) = gw
            .list::<Listed>("/system/secrets", self.json, "secret list")
            .await?
        else {
            return Ok(());
        };
        println!("{}", crate::term::header("NAME"));
        for s in list {
            println!("{}", s.name);
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Rm {
    name: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Rm {
    async fn run(self) -> Result<()> {
        skyfri_core::validate_secret_name(&self.name).map_err(anyhow::Error::msg)?;
        let gw = self.gateway.connect(None)?;
        let body = serde_json::json!({ "name": self.name }).to_string();
        gw.expect_ok(Method::DELETE, "/system/secrets", Bytes::from(body))
            .await?;
        println!("removed secret {}", self.name);
        Ok(())
    }
}
