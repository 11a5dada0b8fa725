//! `skyfri info`: the gateway's `/system/info`; `--residency`: where every piece of data
//! lives and what leaves the machine (`/system/info/residency`).

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;
use skyfri_gateway::api::residency::Residency;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Info {
    /// Where data lives: data dir paths, servers, the endpoints functions were given
    /// (credentials masked), which functions reach the network, and what skyfri sends out.
    #[arg(long)]
    residency: bool,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Info {
    pub async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let path = if self.residency {
            "/system/info/residency"
        } else {
            "/system/info"
        };
        let body = gw.expect_ok(Method::GET, path, Bytes::new()).await?;
        if self.json {
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else if self.residency {
            print_residency(&serde_json::from_slice(&body)?);
        } else {
            print_info(&serde_json::from_slice(&body)?);
        }
        Ok(())
    }
}

fn print_info(info: &serde_json::Value) {
    let provider = &info["provider"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    println!("gateway:   {}", gw_version(info));
    println!("provider:  {}", text(&provider["provider"]));
    println!("queue:     {}", text(&provider["queue"]["backend"]));
    println!("arch:      {}", text(&info["arch"]));
    if let Some(runtime) = provider.get("runtime").filter(|r| !r.is_null()) {
        println!("runtime:   {runtime}");
    }
}

fn gw_version(info: &serde_json::Value) -> String {
    let v = &info["version"];
    format!(
        "{} ({})",
        v["release"].as_str().unwrap_or("?"),
        v["sha"].as_str().unwrap_or("?")
    )
}

fn print_residency(r: &Residency) {
    println!("Data dir: {}", r.data_dir);
    for p in &r.paths {
        println!("  {:<15} {}\n  {:<15} {}", p.what, p.location, "", p.holds);
    }
    if !r.servers.is_empty() {
        println!("\nServers:");
        for s in &r.servers {
            println!("  {:<24} {}  ({})", s.what, s.location, s.holds);
        }
    }
    println!("\nFunctions:");
    if r.functions.is_empty() {
        println!("  (none deployed)");
    }
    for f in &r.functions {
        println!("  {}  network: {}", f.name, f.network);
        for e in &f.endpoints {
            let kind = if e.data_store { "data" } else { "endpoint" };
            println!("    {kind:<8} {}={}", e.env, e.url);
        }
        if !f.secrets.is_empty() {
            println!("    secrets  {} (values not shown)", f.secrets.join(", "));
        }
        if !f.topics.is_empty() {
            println!("    topics   {}", f.topics.join(", "));
        }
    }
    println!("\nWhat skyfri itself connects to:");
    for o in &r.outbound {
        println!("  {}\n    {}", o.to, o.when);
    }
    println!("\nTelemetry: {}", r.telemetry);
}
