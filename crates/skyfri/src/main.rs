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

/// mimalloc: per-thread free lists suit the gateway's one-call-one-thread workers, and its
/// malloc/free take fewer instructions than glibc's on the invoke path (bench/README.md).
/// Built without transparent huge pages (`no_thp`, root Cargo.toml): with them, mimalloc
/// asks for 2 MiB pages for its arenas, and a few bytes used in one cost the whole page:
/// 12 MB of skyfri's RSS with no function, 34 MB with 1,000 idle ones (bench/density.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skyfri", version, about = "Self-hosted Function-as-a-Service")]
pub struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    term::init();
    // The lambda shim runs in every Lambda replica and serves one event at a time: one
    // thread is plenty, and each worker thread would cost the replica memory.
    let runtime = if cli.command.is_lambda_shim() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
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
