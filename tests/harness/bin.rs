//! The `crmsync` command, built inside the test package so that tests can
//! start tiers as separate processes.

fn main() -> std::process::ExitCode {
    crmsync_cli::main()
}
