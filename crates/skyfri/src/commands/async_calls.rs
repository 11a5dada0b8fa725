//! `skyfri async ls|get|cancel|redrive`: the async calls the gateway keeps
//! (`/system/async/calls`). Calls are made with `skyfri invoke NAME --async`.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::Method;
use skyfri_gateway::api::async_calls::CallView;

use crate::client::GatewayArgs;

#[derive(clap::Subcommand)]
pub enum Async {
    /// List async calls, newest first.
    Ls(Ls),
    /// Show one call: its state, last status and error, and the request.
    Get(Get),
    /// Cancel a call that is queued or waiting for a retry.
    Cancel(Cancel),
    /// Queue a dead call again, from its first attempt.
    Redrive(Redrive),
}

impl Async {
    pub async fn run(self) -> Result<()> {
        match self {
            Async::Ls(c) => c.run().await,
            Async::Get(c) => c.run().await,
            Async::Cancel(c) => c.run().await,
            Async::Redrive(c) => c.run().await,
        }
    }
}

/// A call id as a path segment: everything but unreserved characters percent-encoded.
fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// "12s", "5m", "3h", "2d".
fn age(of: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - of).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ms = (at - now).num_milliseconds().max(0);
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        age(now, at)
    }
}

/// What to say about a call after its state: the error, or when it runs next.
fn detail(c: &CallView, now: DateTime<Utc>) -> String {
    let mut parts = Vec::new();
    if let Some(at) = c.next_at {
        parts.push(format!("next run in {}", until(at, now)));
    }
    if let Some(e) = &c.error {
        parts.push(e.clone());
    }
    parts.join("; ")
}

#[derive(clap::Args)]
pub struct Ls {
    /// Only this function's calls.
    #[arg(long)]
    function: Option<String>,
    /// Only calls in this state: queued, running, retrying, done, dead, cancelled.
    #[arg(long)]
    state: Option<String>,
    /// At most this many (the gateway caps it at 1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Ls {
    async fn run(self) -> Result<()> {
        let mut path = format!("/system/async/calls?limit={}", self.limit);
        if let Some(f) = &self.function {
            skyfri_core::validate_name(f).map_err(anyhow::Error::msg)?;
            path.push_str(&format!("&function={f}"));
        }
        if let Some(s) = &self.state {
            path.push_str(&format!("&state={}", segment(s)));
        }
        let gw = self.gateway.connect(None)?;
        let body = gw.expect_ok(Method::GET, &path, Bytes::new()).await?;
        let calls: Vec<CallView> =
            serde_json::from_slice(&body).context("the gateway's call list is not readable")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&calls)?);
            return Ok(());
        }
        let now = Utc::now();
        let header = format!(
            "{:<36}  {:<20} {:<9} {:>7} {:>6} {:>5}  DETAIL",
            "CALL ID", "FUNCTION", "STATE", "ATTEMPT", "STATUS", "AGE"
        );
        println!("{}", crate::term::header(&header));
        for c in &calls {
            let status = c.status.map_or("-".to_string(), |s| s.to_string());
            let mut detail = detail(c, now);
            if detail.chars().count() > 80 {
                detail = detail.chars().take(77).collect::<String>() + "...";
            }
            println!(
                "{:<36}  {:<20} {:<9} {:>7} {:>6} {:>5}  {detail}",
                c.id,
                c.function,
                c.state,
                c.attempt,
                status,
                age(c.enqueued_at, now)
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Get {
    call_id: String,
    /// Print the gateway's JSON (with the body, base64).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Get {
    async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let path = format!("/system/async/calls/{}", segment(&self.call_id));
        let body = gw.expect_ok(Method::GET, &path, Bytes::new()).await?;
        let c: CallView =
            serde_json::from_slice(&body).context("the gateway's call is not readable")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&c)?);
            return Ok(());
        }
        let now = Utc::now();
        println!("Call:        {}", c.id);
        println!("Function:    {}", c.function);
        let mut state = c.state.clone();
        if c.attempt > 0 {
            state.push_str(&format!(" (attempt {}", c.attempt));
            if let Some(s) = c.status {
                state.push_str(&format!(", status {s}"));
            }
            state.push(')');
        }
        println!("State:       {state}");
        if let Some(at) = c.next_at {
            println!("Next run:    {} (in {})", at.to_rfc3339(), until(at, now));
        }
        if let Some(e) = &c.error {
            println!("Error:       {e}");
        }
        if let Some(ms) = c.duration_ms {
            println!("Duration:    {:.3}s", ms as f64 / 1000.0);
        }
        let query = match c.query.as_str() {
            "" => String::new(),
            q => format!("?{q}"),
        };
        println!(
            "Request:     {} {}{query} ({} bytes)",
            c.method, c.path, c.body_bytes
        );
        for (k, v) in &c.headers {
            println!("Header:      {k}: {v}");
        }
        if let Some(url) = &c.callback_url {
            println!("Callback:    {url}");
        }
        println!(
            "Enqueued:    {} ({} ago)",
            c.enqueued_at.to_rfc3339(),
            age(c.enqueued_at, now)
        );
        println!("Updated:     {}", c.updated_at.to_rfc3339());
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Cancel {
    call_id: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Cancel {
    async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let path = format!("/system/async/calls/{}", segment(&self.call_id));
        gw.expect_ok(Method::DELETE, &path, Bytes::new()).await?;
        println!("cancelled {}", self.call_id);
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Redrive {
    call_id: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Redrive {
    async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let path = format!("/system/async/calls/{}/redrive", segment(&self.call_id));
        gw.expect_ok(Method::POST, &path, Bytes::new()).await?;
        println!("re-driven {}: queued again", self.call_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_path_segments() {
        assert_eq!(segment("550e8400-e29b"), "550e8400-e29b");
        assert_eq!(segment("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
    }

    #[test]
    fn ages() {
        let now = Utc::now();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(
            [ago(5), ago(300), ago(7200), ago(200_000), ago(-5)],
            ["5s", "5m", "2h", "2d", "0s"]
        );
    }
}
