//! The HTTP client the CLI commands use to talk to a skyfri (or OpenFaaS) gateway.

use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::exit::Coded;

pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// Where the gateway is and how to authenticate, shared by every client command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// Gateway URL (else SKYFRI_URL, OPENFAAS_URL, the stack's provider.gateway, or http://127.0.0.1:8080).
    #[arg(long, short = 'g', global = true)]
    pub gateway: Option<String>,
}

impl GatewayArgs {
    /// Resolves the gateway URL; `stack_gateway` is the `provider.gateway` of a stack file.
    pub fn url(&self, stack_gateway: Option<&str>) -> String {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.gateway
            .clone()
            .or_else(|| env("SKYFRI_URL"))
            .or_else(|| env("OPENFAAS_URL"))
            .or_else(|| stack_gateway.map(str::to_string))
            .unwrap_or_else(|| DEFAULT_GATEWAY.to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// A client with the first credential found: SKYFRI_TOKEN, SKYFRI_PASSWORD, then what
    /// `skyfri login` saved for this gateway.
    pub fn connect(&self, stack_gateway: Option<&str>) -> Result<Gateway> {
        let url = self.url(stack_gateway);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let credential = env("SKYFRI_TOKEN")
            .map(Credential::Token)
            .or_else(|| env("SKYFRI_PASSWORD").map(Credential::Password))
            .or_else(|| crate::credentials::load(&url));
        Ok(Gateway::with(url, credential))
    }
}

/// How the CLI authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The admin password (basic auth), sent to `/system/*` only.
    Password(String),
    /// An API token (bearer), sent to `/system/*` and to function calls, where it opens
    /// private functions (the gateway never passes a skyfri token on to a function).
    Token(String),
}

pub struct Gateway {
    pub url: String,
    credential: Option<Credential>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    pub fn new(url: String, password: Option<String>) -> Gateway {
        Gateway::with(url, password.map(Credential::Password))
    }

    pub fn with(url: String, credential: Option<Credential>) -> Gateway {
        Gateway {
            url,
            credential,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.url, path));
        // The password goes to the admin API only: /function/* forwards headers to user code.
        let system = path.starts_with("/system/");
        let invoke = path.starts_with("/function/") || path.starts_with("/async-function/");
        match &self.credential {
            Some(Credential::Password(p)) if system => {
                let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{p}"));
                req = req.header("authorization", format!("Basic {basic}"));
            }
            Some(Credential::Token(t)) if system || invoke => {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            _ => {}
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("invalid request {method} {path}"))?;
        let started = std::time::Instant::now();
        let result = self.client.request(req).await;
        if debug_enabled() {
            // Method, URL, status and time only: never headers (the credentials) or bodies
            // (secret values).
            let outcome = match &result {
                Ok(res) => res.status().to_string(),
                Err(e) => format!("failed: {e}"),
            };
            eprintln!(
                "skyfri debug: {method} {}{path} -> {outcome} ({} ms)",
                self.url,
                started.elapsed().as_millis()
            );
        }
        result.map_err(|e| {
            anyhow::Error::new(Coded {
                code: crate::exit::UNREACHABLE,
                message: format!(
                    "cannot reach the gateway at {} (is `skyfri up` running? set --gateway or SKYFRI_URL)",
                    self.url
                ),
                cause: Some(Box::new(e)),
            })
        })
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let json = [("content-type".to_string(), "application/json".to_string())];
        let res = self.send(method, path, &json, body).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Like `call`, but an answer outside 2xx is an error carrying the gateway's message.
    pub async fn expect_ok(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes> {
        let (status, body) = self.call(method.clone(), path, body).await?;
        if !status.is_success() {
            return Err(status_error(&self.url, &method, path, status, &body));
        }
        Ok(body)
    }
}

impl Gateway {
    /// GETs a JSON list. With `json`, prints it as the gateway sent it (pretty) and returns
    /// `None`; else returns it parsed, for a table.
    pub async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        json: bool,
        what: &str,
    ) -> Result<Option<Vec<T>>> {
        let body = self.expect_ok(Method::GET, path, Bytes::new()).await?;
        if json {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .with_context(|| format!("the gateway's {what} is not JSON"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(None);
        }
        let list = serde_json::from_slice(&body)
            .with_context(|| format!("the gateway's {what} is not readable"))?;
        Ok(Some(list))
    }
}

/// The error for a gateway's answer outside 2xx, with the exit code its status calls for.
pub fn status_error(
    url: &str,
    method: &Method,
    path: &str,
    status: StatusCode,
    body: &[u8],
) -> anyhow::Error {
    let message = match status {
        StatusCode::UNAUTHORIZED => format!(
            "{method} {path}: the gateway at {url} refused the credentials ({}): set SKYFRI_PASSWORD or SKYFRI_TOKEN, or run `skyfri login`",
            error_text(body)
        ),
        _ => format!("{method} {path}: {status}: {}", error_text(body)),
    };
    crate::exit::for_status(status, message)
}

/// Whether `SKYFRI_DEBUG` asks for each HTTP call to be printed.
fn debug_enabled() -> bool {
    std::env::var("SKYFRI_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The `error` field of a JSON error answer, else the body as text.
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// The default data dir: `/var/lib/skyfri` as root, else the XDG data dir.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/skyfri")
    } else {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from(".local/share"))
            .join("skyfri")
    }
}
