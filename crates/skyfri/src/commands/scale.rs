//! `skyfri scale NAME --replicas N`.

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Scale {
    name: String,
    #[arg(long)]
    replicas: u32,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Scale {
    pub async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let gw = self.gateway.connect(None)?;
        let body = serde_json::json!({ "serviceName": self.name, "replicas": self.replicas });
        let path = format!("/system/scale-function/{}", self.name);
        gw.expect_ok(Method::POST, &path, Bytes::from(body.to_string()))
            .await?;
        println!("scaled {} to {} replicas", self.name, self.replicas);
        Ok(())
    }
}
