//! `crmsync`: one binary for every tier and every operator command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = crmsync_cli::args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crmsync: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crmsync_cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crmsync: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
