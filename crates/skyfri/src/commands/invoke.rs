//! `skyfri invoke NAME`: call a function with the body from stdin.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Invoke {
    name: String,
    /// Extra header, `Name=Value` or `Name: Value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value = "POST")]
    method: String,
    /// Query string parameter `key=value`; repeatable.
    #[arg(long)]
    query: Vec<String>,
    /// Path after the function name.
    #[arg(long, default_value = "")]
    path: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Invoke {
    pub async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let method = Method::from_bytes(self.method.to_uppercase().as_bytes())
            .with_context(|| format!("--method {:?} is not an HTTP method", self.method))?;
        let mut headers = Vec::new();
        for h in &self.headers {
            let Some((k, v)) = h.split_once('=').or_else(|| h.split_once(':')) else {
                bail!("-H {h:?}: expected Name=Value");
            };
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut body = Vec::new();
        if method != Method::GET && method != Method::HEAD {
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading the body from stdin")?;
        }
        let mut path = format!("/function/{}", self.name);
        if !self.path.is_empty() {
            path.push('/');
            path.push_str(self.path.trim_start_matches('/'));
        }
        if !self.query.is_empty() {
            path.push('?');
            path.push_str(&self.query.join("&"));
        }
        let gw = self.gateway.connect(None)?;
        let res = gw.send(method, &path, &headers, Bytes::from(body)).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        std::io::stdout().write_all(&body)?;
        if !status.is_success() {
            bail!("{} answered {status}", self.name);
        }
        Ok(())
    }
}
