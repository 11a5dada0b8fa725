//! `skyfri version`: this client's version and the gateway's.

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Version {
    /// Print JSON: the client's version and the gateway's /system/info (or its error).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Version {
    pub async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let info = gw
            .expect_ok(Method::GET, "/system/info", Bytes::new())
            .await;
        if self.json {
            let gateway = match info {
                Ok(body) => serde_json::from_slice(&body)?,
                Err(e) => serde_json::json!({ "url": gw.url, "error": format!("{e:#}") }),
            };
            let v = serde_json::json!({ "client": env!("CARGO_PKG_VERSION"), "gateway": gateway });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!("skyfri client {}", env!("CARGO_PKG_VERSION"));
        match info {
            Ok(body) => {
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                println!(
                    "gateway {} at {}: {} {} ({})",
                    v["version"]["release"].as_str().unwrap_or("?"),
                    gw.url,
                    v["provider"]["provider"].as_str().unwrap_or("?"),
                    v["provider"]["orchestration"].as_str().unwrap_or("?"),
                    v["arch"].as_str().unwrap_or("?"),
                );
            }
            Err(e) => println!("gateway: {e:#}"),
        }
        Ok(())
    }
}
