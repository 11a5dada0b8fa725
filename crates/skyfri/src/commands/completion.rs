//! `skyfri completion bash|zsh|fish`: the shell completion script, on stdout.

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;

#[derive(clap::Args)]
#[command(
    after_help = "bash: skyfri completion bash > /etc/bash_completion.d/skyfri
zsh:  skyfri completion zsh > \"${fpath[1]}/_skyfri\"
fish: skyfri completion fish > ~/.config/fish/completions/skyfri.fish"
)]
pub struct Completion {
    shell: Shell,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Completion {
    pub async fn run(self) -> Result<()> {
        let shell = match self.shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        };
        let mut cmd = crate::Cli::command();
        // Into a buffer first: clap_complete panics on a write error (a closed pipe).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "skyfri", &mut script);
        match std::io::stdout().write_all(&script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }
}
