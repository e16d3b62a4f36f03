//! `crmsync`: one binary for every tier and every operator command.

fn main() -> std::process::ExitCode {
    crmsync_cli::main()
}
