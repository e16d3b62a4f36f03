//! `crmsync demo --http`: the sandbox reached through its wire APIs.
//!
//! Starts `crmsync sandbox serve` as a process of its own, with a connected
//! app whose RSA key pair is made for the run by `openssl` (the private key
//! in a file only this user can read); points the demo connection's CRM at
//! it as a Salesforce org logging in with the JWT bearer flow (which can
//! also write as a CSM, for logged-in CSQLs), its MA at it as an Account
//! Engagement business unit, and its CS platform at the org it serves; and reads the API usage the server counted, so the demo can
//! say what the wire path cost.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use crmsync_sandbox_server::Limits;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The connected app the demo logs in with.
const CLIENT_ID: &str = "crmsync-demo";
/// An Enterprise org's daily allowance (100,000 and 1,000 per licence).
const SALESFORCE_DAILY: u64 = 100_000;
/// An Advanced edition business unit's daily API calls.
const PARDOT_DAILY: u64 = 100_000;
/// The business unit the server answers as.
const BUSINESS_UNIT: &str = "0Uv000000000001AAA";

/// A running `crmsync sandbox serve`.
#[derive(Debug)]
pub struct SandboxServer {
    child: Child,
    url: String,
    /// The server's Pub/Sub API (Salesforce's change events).
    pubsub_url: String,
    /// The run's files: the client secret, the key pair.
    files: Vec<PathBuf>,
}

async fn openssl(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    match Command::new("openssl").args(args).stdin(Stdio::null()).output().await {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!("openssl failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => bail!("--http needs the openssl command to make the connected app's key ({e}); install the openssl package"),
    }
}

/// Makes an RSA key pair with the openssl CLI: (private key, public key).
async fn key_pair(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let private = dir.join("sandbox-app.key");
    let public = dir.join("sandbox-app.pub");
    let _ = std::fs::remove_file(&private);
    openssl(&["genrsa".as_ref(), "-out".as_ref(), private.as_os_str(), "2048".as_ref()]).await?;
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    openssl(&["rsa".as_ref(), "-in".as_ref(), private.as_os_str(), "-pubout".as_ref(), "-out".as_ref(), public.as_os_str()]).await?;
    Ok((private, public))
}

/// A secret for this run only: 32 random bytes, hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `content` to `path`, readable by this user only.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

impl SandboxServer {
    /// Starts the server on a free loopback port and waits for the line it
    /// prints when it serves. `env` points it at the demo's database.
    pub async fn start(exe: &Path, env: &[(&str, String)], work_dir: &Path, logs: &Path) -> anyhow::Result<SandboxServer> {
        Self::start_with_allowance(exe, env, work_dir, logs, SALESFORCE_DAILY, PARDOT_DAILY).await
    }

    /// As [`SandboxServer::start`], with the daily API allowances given: a
    /// benchmark moves more records than an org's day allows.
    pub async fn start_with_allowance(
        exe: &Path,
        env: &[(&str, String)],
        work_dir: &Path,
        logs: &Path,
        salesforce_daily: u64,
        pardot_daily: u64,
    ) -> anyhow::Result<SandboxServer> {
        let secret = work_dir.join("sandbox-client-secret");
        write_private(&secret, &new_secret())?;
        let (private_key, public_key) = key_pair(work_dir).await?;
        let log = std::fs::File::create(logs.join("sandbox-serve.log"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["sandbox", "serve", "--bind", "127.0.0.1:0", "--pubsub-bind", "127.0.0.1:0", "--client-id", CLIENT_ID])
            .arg("--salesforce-daily-limit")
            .arg(salesforce_daily.to_string())
            .args(["--pardot-daily-limit", &pardot_daily.to_string(), "--business-unit-id", BUSINESS_UNIT])
            .arg("--client-secret-file")
            .arg(&secret)
            .arg("--jwt-public-key")
            .arg(&public_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting crmsync sandbox serve")?;
        let stdout = child.stdout.take().context("the server's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let url = match first {
            Ok(Ok(Some(line))) => line.strip_prefix("sandbox serving at ").map(str::to_owned),
            _ => None,
        };
        let second = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let pubsub_url = match second {
            Ok(Ok(Some(line))) => line.strip_prefix("pubsub serving at ").map(str::to_owned),
            _ => None,
        };
        let (Some(url), Some(pubsub_url)) = (url, pubsub_url) else {
            let _ = child.kill().await;
            bail!("crmsync sandbox serve did not start; see {}", logs.join("sandbox-serve.log").display());
        };
        Ok(SandboxServer { child, url, pubsub_url, files: vec![secret, private_key, public_key] })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's Pub/Sub API.
    pub fn pubsub_url(&self) -> &str {
        &self.pubsub_url
    }

    /// The server process's pid, for a benchmark's cost sampler.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The connection's CRM: the served org, as Salesforce, logged in to as
    /// `username` (the org's integration user) with the JWT bearer flow.
    pub fn crm_endpoint(&self, username: &str) -> Value {
        json!({
            "kind": "salesforce",
            "oauth": {"login_url": self.url, "flow": "jwt_bearer", "client_id": CLIENT_ID, "username": username,
                      "private_key": {"file": self.files[1]}},
            // The demo's edits and the sync race within seconds.
            "overlap_secs": 5,
            // The org's change events, as a real org's through the Pub/Sub
            // API: an edit wakes its feed at once, and a feed with live
            // events only sweeps. Polls, where a feed falls back to them,
            // stay frequent so the demo moves at a demo's pace.
            "change_events": true,
            "pubsub_url": self.pubsub_url,
            "poll_interval_secs": 2,
            "poll_max_secs": 2,
        })
    }

    /// The connection's MA: the served business unit, through Account
    /// Engagement API v5 with the same login; the engine keeps its mirrors
    /// through the sandbox's mirror extension.
    pub fn ma_endpoint(&self, username: &str) -> Value {
        json!({
            "kind": "account_engagement",
            "base_url": self.url,
            "business_unit_id": BUSINESS_UNIT,
            "oauth": {"login_url": self.url, "flow": "jwt_bearer", "client_id": CLIENT_ID, "username": username,
                      "private_key": {"file": self.files[1]}},
            "overlap_secs": 5,
            // As the CRM's: a demo's pace, not an idle connection's.
            "poll_interval_secs": 2,
            "poll_max_secs": 2,
        })
    }

    /// The CS platform: the sandbox's, writing into the served org.
    pub fn cs_endpoint() -> Value {
        json!({"kind": "sandbox", "tenant": "default", "crm_org": "default"})
    }

    /// The API calls the server has counted today.
    pub async fn usage(&self) -> anyhow::Result<Limits> {
        let url = format!("{}/sandbox-admin/limits", self.url);
        Ok(reqwest::get(&url).await?.error_for_status()?.json().await?)
    }

    /// Stops the server (SIGTERM: it finishes the requests in flight).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_new_each_run_and_files_private() {
        assert_ne!(new_secret(), new_secret());
        assert_eq!(new_secret().len(), 64);
        let path = std::env::temp_dir().join(format!("crmsync-demo-secret-{}", std::process::id()));
        write_private(&path, "s").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(&path).unwrap();
    }
}
