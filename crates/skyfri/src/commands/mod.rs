//! One module per CLI command, each a clap struct with `run(self)`.

mod async_calls;
mod audit;
mod backup;
mod build;
mod completion;
mod cost;
pub mod deploy;
mod describe;
mod doctor;
mod info;
mod install;
mod invoke;
mod lambda_shim;
mod login;
mod logs;
mod ls;
mod new;
mod restore;
mod rm;
mod scale;
mod secret;
mod template;
mod token;
mod up;
mod version;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the platform: gateway, store and local runtime.
    Up(up::Up),
    /// Create a function: a starter handler folder and its entry in stack.yml.
    New(new::New),
    /// The built-in templates `skyfri new` starts from.
    #[command(subcommand)]
    Template(template::TemplateCmd),
    /// Build and deploy the functions of a stack.yml or Knative Service.
    Deploy(deploy::Deploy),
    /// Build the functions of a stack.yml into artefacts on the gateway.
    Build(build::Build),
    /// List deployed functions.
    Ls(ls::Ls),
    /// Show one function.
    Describe(describe::Describe),
    /// Call a function (body from stdin); --async queues the call.
    Invoke(invoke::Invoke),
    /// Inspect, cancel and re-drive async calls.
    #[command(subcommand)]
    Async(async_calls::Async),
    /// Remove a function.
    Rm(rm::Rm),
    /// Show a function's logs.
    Logs(logs::Logs),
    /// Set a function's replica count.
    Scale(scale::Scale),
    /// Manage the secrets functions read from /var/openfaas/secrets/.
    #[command(subcommand)]
    Secret(secret::Secret),
    /// Manage API tokens (scoped credentials for CI and private functions).
    #[command(subcommand)]
    Token(token::Token),
    /// Show the audit log of admin actions and failed logins.
    Audit(audit::Audit),
    /// Save the admin password or an API token for a gateway.
    Login(login::Login),
    /// What this month's usage would cost on a pay-per-request FaaS, beside the servers.
    Cost(cost::Cost),
    /// Print the client's and the gateway's versions.
    Version(version::Version),
    /// Check this host: kernel settings, isolation, limits, disk, interpreters, NATS.
    Doctor(doctor::Doctor),
    /// Install skyfri as a service (--systemd).
    Install(install::Install),
    /// Show the gateway's information; --residency: where data lives and what leaves the machine.
    Info(info::Info),
    /// Download a backup of a running platform (functions, artefacts, secrets, async queue).
    Backup(backup::Backup),
    /// Restore a backup into a new or empty data dir (offline).
    Restore(restore::Restore),
    /// Print the shell completion script for bash, zsh or fish.
    Completion(completion::Completion),
    /// Run in a Lambda replica's sandbox: serve the Runtime API to a runtime client.
    #[command(hide = true)]
    LambdaShim(lambda_shim::LambdaShim),
}

impl Command {
    pub fn is_lambda_shim(&self) -> bool {
        matches!(self, Command::LambdaShim(_))
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Up(c) => c.run().await,
            Command::New(c) => c.run().await,
            Command::Template(c) => c.run().await,
            Command::Deploy(c) => c.run().await,
            Command::Build(c) => c.run().await,
            Command::Ls(c) => c.run().await,
            Command::Describe(c) => c.run().await,
            Command::Invoke(c) => c.run().await,
            Command::Async(c) => c.run().await,
            Command::Rm(c) => c.run().await,
            Command::Logs(c) => c.run().await,
            Command::Scale(c) => c.run().await,
            Command::Secret(c) => c.run().await,
            Command::Token(c) => c.run().await,
            Command::Audit(c) => c.run().await,
            Command::Login(c) => c.run().await,
            Command::Cost(c) => c.run().await,
            Command::Version(c) => c.run().await,
            Command::Doctor(c) => c.run().await,
            Command::Install(c) => c.run().await,
            Command::Info(c) => c.run().await,
            Command::Backup(c) => c.run().await,
            Command::Restore(c) => c.run().await,
            Command::Completion(c) => c.run().await,
            Command::LambdaShim(c) => c.run().await,
        }
    }
}
