//! `crmsync`: one binary for every tier and every operator command.

/// jemalloc rather than the system allocator: see the workspace manifest.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    crmsync_cli::main()
}
