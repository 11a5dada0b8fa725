//! `skyfri ls`: the deployed functions.

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;
use skyfri_core::openfaas::FunctionStatus;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Ls {
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Ls {
    pub async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let body = gw
            .expect_ok(Method::GET, "/system/functions", Bytes::new())
            .await?;
        let list: Vec<FunctionStatus> = serde_json::from_slice(&body)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(());
        }
        let header = format!(
            "{:<32} {:>12} {:>9}  IMAGE",
            "FUNCTION", "INVOCATIONS", "REPLICAS"
        );
        println!("{}", crate::term::header(&header));
        for f in list {
            println!(
                "{:<32} {:>12} {:>4}/{:<4}  {}",
                f.name, f.invocation_count, f.available_replicas, f.replicas, f.image
            );
        }
        Ok(())
    }
}
