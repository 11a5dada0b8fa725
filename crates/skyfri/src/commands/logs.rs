//! `skyfri logs NAME`: a function's logs, kept across restarts and scale to zero.

use std::io::Write;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::{status_error, GatewayArgs};

#[derive(clap::Args)]
pub struct Logs {
    name: String,
    /// Keep printing new lines.
    #[arg(long)]
    follow: bool,
    /// Only lines newer than this RFC3339 time, or this long ago (30s, 5m, 2h).
    #[arg(long)]
    since: Option<String>,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<u32>,
    /// Only the lines of this replica (the second column, e.g. `NAME-1a2b3c4d`).
    #[arg(long)]
    instance: Option<String>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn since_param(s: &str) -> Result<String> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok(s.to_string());
    }
    match skyfri_core::openfaas::parse_duration_secs(s) {
        Some(secs) => Ok(
            (chrono::Utc::now() - chrono::Duration::seconds(secs as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        None => bail!("--since {s:?}: expected an RFC3339 time or a duration such as 5m"),
    }
}

impl Logs {
    pub async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let mut path = format!("/system/logs?name={}&follow={}", self.name, self.follow);
        if let Some(t) = self.tail {
            path.push_str(&format!("&tail={t}"));
        }
        if let Some(i) = &self.instance {
            // Instances are `<function>-<hex>`, which need no escaping in a query.
            let plain = i
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !plain || i.is_empty() || i.len() > 80 {
                bail!("--instance {i:?}: expected a replica name such as {}-1a2b3c4d (the second column of `skyfri logs`)", self.name);
            }
            path.push_str(&format!("&instance={i}"));
        }
        if let Some(s) = &self.since {
            path.push_str(&format!("&since={}", since_param(s)?.replace('+', "%2B")));
        }
        let gw = self.gateway.connect(None)?;
        let res = gw.send(Method::GET, &path, &[], Bytes::new()).await?;
        let status = res.status();
        let mut body = res.into_body();
        if !status.is_success() {
            let b = body.collect().await?.to_bytes();
            return Err(status_error(&gw.url, &Method::GET, &path, status, &b))
                .with_context(|| format!("logs of {}", self.name));
        }
        let mut pending = Vec::new();
        let mut out = std::io::stdout();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                    writeln!(
                        out,
                        "{} {} {}",
                        v["timestamp"].as_str().unwrap_or(""),
                        v["instance"].as_str().unwrap_or(""),
                        v["text"].as_str().unwrap_or("")
                    )?;
                }
            }
            out.flush()?;
        }
        Ok(())
    }
}
