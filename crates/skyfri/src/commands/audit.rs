//! `skyfri audit`: the gateway's audit log (admin actions, failed logins, refusals).

use anyhow::Result;
use skyfri_core::auth::AuditRecord;

use crate::client::GatewayArgs;

#[derive(clap::Args)]
pub struct Audit {
    /// Only entries newer than this RFC3339 time, or this long ago (90m, 1h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// At most this many, the latest (up to 10000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Audit {
    pub async fn run(self) -> Result<()> {
        let mut path = format!("/system/audit?limit={}", self.limit);
        if let Some(s) = &self.since {
            let ok = s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-:.".contains(&b));
            if !ok {
                anyhow::bail!("--since {s:?}: expected an RFC3339 time or a duration such as 1h");
            }
            path.push_str(&format!("&since={}", s.replace('+', "%2B")));
        }
        let gw = self.gateway.connect(None)?;
        let Some(entries) = gw
            .list::<AuditRecord>(&path, self.json, "audit log")
            .await?
        else {
            return Ok(());
        };
        println!(
            "{:<24} {:<20} {:<16} {:<16} {:<28} OUTCOME",
            "TIME (UTC)", "WHO", "FROM", "ACTION", "TARGET"
        );
        for e in entries {
            let outcome = match e.count {
                1 => e.outcome,
                n => format!("{} (x{n})", e.outcome),
            };
            println!(
                "{:<24} {:<20} {:<16} {:<16} {:<28} {outcome}",
                e.at, e.who, e.client, e.action, e.target
            );
        }
        Ok(())
    }
}
