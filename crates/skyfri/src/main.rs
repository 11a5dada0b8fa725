//! The skyfri binary: parses the command line and runs one command.

mod client;
mod commands;
mod credentials;
mod owned_file;
mod service;
mod stackfile;

use clap::Parser;

#[derive(Parser)]
#[command(name = "skyfri", version, about = "Self-hosted Function-as-a-Service")]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
