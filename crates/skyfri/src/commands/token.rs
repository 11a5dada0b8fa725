//! `skyfri token create|ls|revoke`: API tokens for CI and callers of private functions. A
//! token is printed once, by `create`, and never again: the gateway keeps only its hash.

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use skyfri_core::auth::{CreatedToken, Scope, TokenInfo};

use crate::client::GatewayArgs;

#[derive(clap::Subcommand)]
pub enum Token {
    /// Create a token and print it (once) on stdout.
    Create(Create),
    /// List tokens: names, scopes and times, never the tokens.
    Ls(Ls),
    /// Revoke a token: it stops working at once.
    Revoke(Revoke),
}

impl Token {
    pub async fn run(self) -> Result<()> {
        match self {
            Token::Create(c) => c.run().await,
            Token::Ls(c) => c.run().await,
            Token::Revoke(c) => c.run().await,
        }
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Scopes: read (GET /system/*), deploy (read + deploy, update, remove, scale, build), admin (everything, with secrets, tokens and the audit log), invoke:FUNCTION (call a private function).\n\nExample: TOKEN=$(skyfri token create ci --scope deploy --expires 30d)"
)]
pub struct Create {
    /// Token name: lower-case letters, digits and '-'.
    name: String,
    /// read, deploy, admin or invoke:FUNCTION; repeatable or comma-separated.
    #[arg(long = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    /// Give invoke rights on this private function (same as --scope invoke:NAME); repeatable.
    #[arg(long = "function")]
    functions: Vec<String>,
    /// Lifetime, such as 30d, 12h or 2w; without it the token lasts until revoked.
    #[arg(long)]
    expires: Option<String>,
    /// Also usable as AWS SDK credentials for the Lambda Invoke API: access key id = NAME,
    /// secret access key = the token (the gateway then keeps it encrypted under secret.key,
    /// besides its hash).
    #[arg(long)]
    sigv4: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Create {
    async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(|e| anyhow::anyhow!("token {e}"))?;
        let mut scopes = self.scopes.clone();
        scopes.extend(self.functions.iter().map(|f| format!("invoke:{f}")));
        let scopes: Vec<String> = Scope::parse_all(&scopes)
            .map_err(anyhow::Error::msg)?
            .iter()
            .map(Scope::to_string)
            .collect();
        if let Some(e) = &self.expires {
            skyfri_core::auth::parse_lifetime(e).map_err(|m| anyhow::anyhow!("--expires: {m}"))?;
        }
        let body = serde_json::json!({
            "name": self.name,
            "scopes": scopes,
            "expiresIn": self.expires,
            "sigv4": self.sigv4,
        });
        let gw = self.gateway.connect(None)?;
        let answer = gw
            .expect_ok(
                Method::POST,
                "/system/tokens",
                Bytes::from(body.to_string()),
            )
            .await?;
        let created: CreatedToken =
            serde_json::from_slice(&answer).context("the gateway's answer has no token")?;
        let expires = created
            .info
            .expires_at
            .map_or("never expires".to_string(), |t| format!("expires {t}"));
        let sigv4 = if created.info.sigv4 {
            format!(
                "; AWS SDKs: access key id {}, secret access key the token",
                created.info.name
            )
        } else {
            String::new()
        };
        eprintln!(
            "created token {} (scopes: {}; {expires}{sigv4}); it is shown only now:",
            created.info.name,
            created.info.scopes.join(", ")
        );
        println!("{}", created.token);
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Ls {
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Ls {
    async fn run(self) -> Result<()> {
        let gw = self.gateway.connect(None)?;
        let Some(list) = gw
            .list::<TokenInfo>("/system/tokens", self.json, "token list")
            .await?
        else {
            return Ok(());
        };
        println!(
            "{:<24} {:<30} {:<20} {:<20} {:<20} SIGV4",
            "NAME", "SCOPES", "CREATED", "LAST USED", "EXPIRES"
        );
        for t in list {
            println!(
                "{:<24} {:<30} {:<20} {:<20} {:<20} {}",
                t.name,
                t.scopes.join(","),
                t.created_at,
                t.last_used.as_deref().unwrap_or("never"),
                t.expires_at.as_deref().unwrap_or("never"),
                if t.sigv4 { "yes" } else { "no" },
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Revoke {
    name: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl Revoke {
    async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(|e| anyhow::anyhow!("token {e}"))?;
        let gw = self.gateway.connect(None)?;
        gw.expect_ok(
            Method::DELETE,
            &format!("/system/tokens/{}", self.name),
            Bytes::new(),
        )
        .await?;
        println!("revoked token {}", self.name);
        Ok(())
    }
}
