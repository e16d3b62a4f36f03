//! Stopping and starting the machine's own RabbitMQ, Redis and PostgreSQL,
//! as installed by `scripts/services.sh`: the fault suite's service faults.
//!
//! Each service is stopped for real (its process ends, every connection to
//! it breaks), held down for a moment so the tiers see it gone, then brought
//! back by `scripts/services.sh`, which starts whatever does not answer and
//! waits for its port. Redis runs without persistence, so it comes back
//! empty: every lock and the budget state vanish, as the suite intends.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One of the three services the tiers depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    RabbitMq,
    Redis,
    Postgres,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::RabbitMq => "RabbitMQ",
            Service::Redis => "Redis",
            Service::Postgres => "PostgreSQL",
        }
    }

    fn port(self) -> u16 {
        match self {
            Service::RabbitMq => 5672,
            Service::Redis => 6379,
            Service::Postgres => 5432,
        }
    }
}

/// The workspace root, where `scripts/` lives.
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command as root (directly in CI, through `sudo -n` otherwise, as
/// `scripts/services.sh` does).
fn as_root(program: &str, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(program);
        c
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// The PostgreSQL cluster version, found as `scripts/services.sh` finds it.
fn pg_version() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql (the suite restarts the Debian-packaged PostgreSQL)")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    versions.sort_unstable();
    versions.last().expect("a PostgreSQL cluster").to_string()
}

/// Stops `service` and waits until its port is closed.
pub async fn stop(service: Service) {
    let out = match service {
        // The whole node, Erlang VM and all: a real process restart.
        Service::RabbitMq => as_root("rabbitmqctl", &["-q", "shutdown"]),
        // No save: Redis comes back empty, as after a crash with no persistence.
        Service::Redis => as_root("redis-cli", &["-p", "6379", "shutdown", "nosave"]),
        Service::Postgres => as_root("pg_ctlcluster", &[&pg_version(), "main", "stop", "-m", "fast"]),
    };
    // redis-cli reports the connection it lost as an error; the port decides.
    let started = Instant::now();
    while port_open(service.port()) {
        assert!(started.elapsed() < Duration::from_secs(60), "{} did not stop: {}", service.name(), String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts every service that is down (`scripts/services.sh`), and waits for
/// RabbitMQ to finish booting; panics if they do not come back.
pub async fn start_all() {
    let root = workspace_root();
    let out = tokio::process::Command::new("bash")
        .arg(root.join("scripts/services.sh"))
        .current_dir(&root)
        // The suite restarts the packaged services, never a compose stack.
        .env("CRMSYNC_NO_DOCKER", "1")
        .output()
        .await
        .expect("run scripts/services.sh");
    assert!(out.status.success(), "scripts/services.sh failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stops `service`, keeps it down for `down`, and brings it back; how long
/// it was unreachable.
pub async fn restart(service: Service, down: Duration) -> Duration {
    let started = Instant::now();
    stop(service).await;
    tokio::time::sleep(down).await;
    start_all().await;
    assert!(port_open(service.port()), "{} is back", service.name());
    started.elapsed()
}
