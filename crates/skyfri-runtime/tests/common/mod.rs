#![allow(dead_code)]
//! Shared by the local provider's tests: a provider in a temp dir, handler folders, raw HTTP.

use std::sync::Arc;
use std::time::Duration;

use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_runtime::local::Isolation;
use skyfri_runtime::{ArtefactStore, Endpoint, LocalProvider, Provider, SecretSource};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub store: ArtefactStore,
    pub provider: Arc<LocalProvider>,
    pub handlers: std::path::PathBuf,
}

/// Secrets the tests declare, by name.
pub struct Secrets(pub Vec<(&'static str, &'static str)>);

impl SecretSource for Secrets {
    fn secret(&self, name: &str) -> std::result::Result<Option<Vec<u8>>, String> {
        Ok(self
            .0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes().to_vec()))
    }
}

pub fn env() -> Result<Env> {
    env_with(Isolation::detect(), Secrets(Vec::new()))
}

pub fn env_with(isolation: Isolation, secrets: Secrets) -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let store = ArtefactStore::open(dir.path().join("artefacts"))?;
    let provider = LocalProvider::new(
        store.clone(),
        dir.path().join("run"),
        dir.path().join("logs"),
        isolation,
        Arc::new(secrets),
    )?;
    Ok(Env {
        handlers: dir.path().join("src"),
        _dir: dir,
        store,
        provider,
    })
}

impl Env {
    /// Writes a handler folder and builds it into a deployment of one replica.
    pub fn function(
        &self,
        name: &str,
        template: Template,
        files: &[(&str, &str)],
        fprocess: Option<&str>,
    ) -> Result<Deployment> {
        let dir = self.handlers.join(name);
        std::fs::create_dir_all(&dir)?;
        for (file, contents) in files {
            std::fs::write(dir.join(file), contents)?;
        }
        let artefact = self.store.build(template, &dir)?;
        let mut spec = FunctionSpec::new(name, name);
        spec.env_process = fprocess.map(str::to_string);
        spec.env_vars.insert("GREETING".into(), "hej".into());
        Ok(Deployment {
            spec,
            artefact,
            template,
            replicas: 1,
        })
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange on an open connection, as the gateway does it (Content-Length both
/// ways, connection kept alive).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.get_mut().write_all(req.as_bytes()).await?;

    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("bad status line {line:?}"))?
        .parse()?;
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or("bad header")?;
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse()?;
        }
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body)?,
    })
}

pub async fn request(
    endpoint: &Endpoint,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response> {
    match endpoint {
        Endpoint::Unix(p) => {
            let mut s = BufReader::new(UnixStream::connect(p).await?);
            exchange(&mut s, method, target, headers, body).await
        }
        Endpoint::Tcp(a) => {
            let mut s = BufReader::new(TcpStream::connect(a).await?);
            exchange(&mut s, method, target, headers, body).await
        }
    }
}

pub fn endpoint(provider: &LocalProvider, name: &str) -> Result<Endpoint> {
    Ok(provider
        .endpoints(name)
        .into_iter()
        .next()
        .ok_or("no ready endpoint")?)
}

/// Every stored line of `name`.
pub fn all_logs(provider: &LocalProvider, name: &str) -> Vec<skyfri_runtime::LogLine> {
    provider.logs(name, &Default::default()).stored.collect()
}

/// Logs are written by reader tasks: give them a moment.
pub async fn wait_for_log(provider: &LocalProvider, name: &str, needle: &str) -> Result<()> {
    for _ in 0..100 {
        if all_logs(provider, name)
            .iter()
            .any(|l| l.text.contains(needle))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{needle:?} not in logs: {:?}", all_logs(provider, name)).into())
}
