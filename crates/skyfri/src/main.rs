//! The skyfri binary: parses the command line and runs one command.

mod client;
mod commands;
mod credentials;
mod exit;
mod owned_file;
mod progress;
mod service;
mod stackfile;
mod term;
mod watch;

use clap::Parser;

#[derive(Parser)]
#[command(name = "skyfri", version, about = "Self-hosted Function-as-a-Service")]
pub struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    term::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "{} {e:#}",
                console::style("error:").red().bold().for_stderr()
            );
            exit::code(&e)
        }
    }
}
