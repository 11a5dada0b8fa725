//! `skyfri version`: this client's version and the gateway's.

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Version {
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Version {
    pub async fn run(self) -> Result<()> {
        println!("skyfri client {}", env!("CARGO_PKG_VERSION"));
        let gw = self.gateway.connect(None)?;
        match gw
            .expect_ok(Method::GET, "/system/info", Bytes::new())
            .await
        {
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
