//! `skyfri invoke NAME`: call a function with the body from stdin; with `--async`, queue the
//! call (`/async-function/NAME`) and print its id.

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
    /// Queue the call and print its id instead of waiting for the answer (see `skyfri async`).
    #[arg(long = "async")]
    is_async: bool,
    /// With --async: where the result is POSTed once the call is done or dead.
    #[arg(long, requires = "is_async")]
    callback_url: Option<String>,
    /// The call's X-Call-Id (with --async, a retried invoke with the same id runs once).
    #[arg(long)]
    call_id: Option<String>,
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
        if let Some(url) = &self.callback_url {
            headers.push(("X-Callback-Url".to_string(), url.clone()));
        }
        if let Some(id) = &self.call_id {
            headers.push(("X-Call-Id".to_string(), id.clone()));
        }
        let route = if self.is_async {
            "async-function"
        } else {
            "function"
        };
        let mut path = format!("/{route}/{}", self.name);
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
        let call_id = res
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = res.into_body().collect().await?.to_bytes();
        if self.is_async {
            return match (status.as_u16(), call_id) {
                (202, Some(id)) => {
                    println!("{id}");
                    Ok(())
                }
                _ => bail!(
                    "{} was not queued: {status}: {}",
                    self.name,
                    crate::client::error_text(&body)
                ),
            };
        }
        if status == hyper::StatusCode::NOT_FOUND && from_gateway(&body) {
            return Err(crate::exit::for_status(
                status,
                format!("{}: {}", self.name, crate::client::error_text(&body)),
            ));
        }
        std::io::stdout().write_all(&body)?;
        if !status.is_success() {
            bail!("{} answered {status}", self.name);
        }
        Ok(())
    }
}

/// Whether an answer is the gateway's own error (`{"error", "source", "status"}`), not the
/// function's: only then does a 404 mean that no such function is deployed.
fn from_gateway(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("error").is_some() && v.get("source").is_some())
}
