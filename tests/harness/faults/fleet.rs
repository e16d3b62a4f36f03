//! The tier replicas of a fault run, each a `crmsync` process of its own:
//! started, killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT) by pid,
//! and watched like an orchestrator would watch them.
//!
//! A replica that exits by itself is an unplanned exit: the fleet starts a
//! replacement (as Kubernetes would) and counts it, because a lost service
//! should be a pause for a tier, never a crash.

use std::path::PathBuf;
use std::process::Stdio;

use crate::{TestApp, Tier, TierProcess};

/// One replica slot: the process filling it now, and its log file.
#[derive(Debug)]
struct Slot {
    process: TierProcess,
    /// Starts of this slot so far (the first start and every replacement).
    generation: u32,
}

/// The running replicas, by slot.
#[derive(Debug)]
pub struct Fleet {
    exe: String,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    slots: Vec<Slot>,
    /// Replicas that exited by themselves: (slot name, exit status).
    pub unplanned_exits: Vec<(String, String)>,
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Producer => "producer",
        Tier::Matcher => "matcher",
        Tier::Applier => "applier",
    }
}

/// Sends a signal by name (`KILL`, `STOP`, `CONT`) to a process, through
/// `kill(1)`: the workspace forbids `unsafe`, so no raw `libc::kill`.
pub fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid}");
}

impl Fleet {
    /// Starts `producers`, `matchers` and `appliers` replicas configured like
    /// `app`'s tiers plus `env`, each logging to a file under `log_dir`.
    pub fn start(
        app: &TestApp,
        exe: &str,
        env: &[(&str, &str)],
        log_dir: PathBuf,
        (producers, matchers, appliers): (usize, usize, usize),
    ) -> Fleet {
        std::fs::create_dir_all(&log_dir).expect("the fleet's log directory");
        let mut fleet = Fleet {
            exe: exe.to_owned(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            log_dir,
            slots: Vec::new(),
            unplanned_exits: Vec::new(),
        };
        for (tier, n) in [(Tier::Producer, producers), (Tier::Matcher, matchers), (Tier::Applier, appliers)] {
            for _ in 0..n {
                let process = fleet.spawn(app, tier, fleet.slots.len(), 1);
                fleet.slots.push(Slot { process, generation: 1 });
            }
        }
        fleet
    }

    fn spawn(&self, app: &TestApp, tier: Tier, slot: usize, generation: u32) -> TierProcess {
        let log = self.log_dir.join(format!("{}-{slot}.{generation}.log", tier_name(tier)));
        let file = std::fs::File::create(&log).expect("a replica's log file");
        let mut cmd = app.tier_command(&self.exe, tier);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).stdout(Stdio::null()).stderr(file);
        TierProcess::new(tier, cmd.spawn().expect("start a tier process"))
    }

    /// A slot's name for reports: `matcher-3`.
    pub fn name(&self, slot: usize) -> String {
        format!("{}-{slot}", tier_name(self.slots[slot].process.tier))
    }

    /// Slots holding replicas of any of `tiers`.
    pub fn slots_of(&self, tiers: &[Tier]) -> Vec<usize> {
        (0..self.slots.len()).filter(|&i| tiers.contains(&self.slots[i].process.tier)).collect()
    }

    pub fn pid(&self, slot: usize) -> u32 {
        self.slots[slot].process.pid().expect("a running replica")
    }

    /// SIGKILLs a replica and starts its replacement at once.
    pub async fn kill_and_replace(&mut self, app: &TestApp, slot: usize) {
        self.slots[slot].process.kill().await;
        self.replace(app, slot);
    }

    fn replace(&mut self, app: &TestApp, slot: usize) {
        let tier = self.slots[slot].process.tier;
        let generation = self.slots[slot].generation + 1;
        let process = self.spawn(app, tier, slot, generation);
        self.slots[slot] = Slot { process, generation };
    }

    /// Replaces every replica that exited by itself, recording each.
    pub fn supervise(&mut self, app: &TestApp) {
        for slot in 0..self.slots.len() {
            if let Some(status) = self.slots[slot].process.exited() {
                self.unplanned_exits.push((self.name(slot), status.to_string()));
                self.replace(app, slot);
            }
        }
    }

    /// Stops every replica (SIGTERM, drain); the slots that did not exit 0.
    pub async fn stop(self) -> Vec<String> {
        let mut unclean = Vec::new();
        for (i, slot) in self.slots.into_iter().enumerate() {
            let name = format!("{}-{i}", tier_name(slot.process.tier));
            if !slot.process.terminate().await {
                unclean.push(name);
            }
        }
        unclean
    }

    pub fn log_dir(&self) -> &std::path::Path {
        &self.log_dir
    }
}
