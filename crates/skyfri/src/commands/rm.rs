//! `skyfri rm NAME`: remove a function and its replicas.

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Rm {
    name: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Rm {
    pub async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let body = serde_json::json!({ "functionName": self.name }).to_string();
        gw.expect_ok(Method::DELETE, "/system/functions", Bytes::from(body))
            .await?;
        println!("removed {}", self.name);
        Ok(())
    }
}
