//! `skyfri describe NAME`: one function's configuration and state.

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;
use skyfri_core::openfaas::FunctionStatus;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Describe {
    name: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Describe {
    pub async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let gw = self.gateway.connect(None)?;
        let path = format!("/system/function/{}", self.name);
        let body = gw.expect_ok(Method::GET, &path, Bytes::new()).await?;
        let f: FunctionStatus = serde_json::from_slice(&body)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&f)?);
            return Ok(());
        }
        println!("Name:        {}", f.name);
        println!("Image:       {}", f.image);
        println!(
            "Replicas:    {}/{} available",
            f.available_replicas, f.replicas
        );
        println!("Invocations: {}", f.invocation_count);
        println!("URL:         {}/function/{}", gw.url, f.name);
        if let Some(p) = &f.env_process {
            println!("Process:     {p}");
        }
        if let Some(l) = &f.limits {
            println!(
                "Limits:      memory {} cpu {}",
                l.memory.as_deref().unwrap_or("-"),
                l.cpu.as_deref().unwrap_or("-")
            );
        }
        for (k, v) in &f.labels {
            println!("Label:       {k}={v}");
        }
        for (k, v) in &f.annotations {
            println!("Annotation:  {k}={v}");
        }
        if let Some(c) = &f.created_at {
            println!("Created:     {c}");
        }
        Ok(())
    }
}
