//! A plan run in process against the simulated AWS on its virtual clock, for tests
//! that play out a bad day: the world seeded from the plan and tweaked with faults,
//! the state in a temp dir or (with `SNAPFERRY_TEST_STATE=s3`) in the S3 layout over
//! objects in memory, the state lost at will, and counts of what AWS holds and was
//! asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use snapferry::checkpoint::memory::MemoryObjects;
use snapferry::checkpoint::{LeaseOptions, Store};
use snapferry::cloud::sim::{SimCloud, World, seed_from_plan};
use snapferry::exec::cleanup::CleanupSummary;
use snapferry::exec::{Env, RunConfig, RunError, RunReport, run};
use snapferry::plan::{Plan, parse};
use tokio::sync::watch;

/// When the seeded world's clock starts (ms since the epoch).
pub const EPOCH_MS: i64 = 1_800_000_000_000;
pub const HOUR_MS: i64 = 3_600_000;

pub fn plan(text: &str) -> Plan {
    parse("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

pub struct Rig {
    pub plan: Plan,
    pub sim: SimCloud,
    dir: tempfile::TempDir,
    pub store: Store,
    objects: Arc<MemoryObjects>,
}

impl Rig {
    pub fn new(text: &str) -> Self {
        Self::with(text, |_| {})
    }

    pub fn with(text: &str, tweak: impl FnOnce(&mut World)) -> Self {
        let plan = plan(text);
        let (mut world, sides) = seed_from_plan(&plan, EPOCH_MS);
        tweak(&mut world);
        let dir = tempfile::tempdir().unwrap();
        let objects = Arc::new(MemoryObjects::new());
        let store = match std::env::var("SNAPFERRY_TEST_STATE").as_deref() {
            Ok("s3") => Store::remote(objects.clone(), LeaseOptions::default()),
            _ => Store::new(dir.path()),
        };
        Rig { plan, sim: SimCloud::new(world, sides), dir, store, objects }
    }

    pub fn env(&self) -> Env {
        Env { cloud: Arc::new(self.sim.clone()), clock: Arc::new(self.sim.clone()), store: self.store.clone() }
    }

    pub fn cfg(&self) -> RunConfig {
        RunConfig {
            plan: self.plan.clone(),
            plan_file: "test.yaml".into(),
            run_id: None,
            simulated: true,
            probe_permissions: true,
            progress: None,
        }
    }

    pub async fn run(&self) -> RunReport {
        self.try_run().await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn try_run(&self) -> Result<RunReport, RunError> {
        let (_tx, rx) = watch::channel(false);
        run(self.cfg(), self.env(), rx).await
    }

    pub async fn cleanup(&self, run_id: &str, with_plan: bool) -> CleanupSummary {
        let env = self.env();
        let plan = with_plan.then_some(&self.plan);
        snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), run_id, plan)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Loses the whole state, as a fresh CI runner or a deleted state dir would.
    pub fn lose_state(&self) {
        std::fs::remove_dir_all(self.dir.path()).unwrap();
        std::fs::create_dir_all(self.dir.path()).unwrap();
        self.objects.clear();
    }

    /// Runs the plan until its `k`-th call from now took effect and hung, as a crash
    /// right after a call and before its outcome was recorded; then the simulated AWS
    /// goes on without that caller. False when the run ended before that call.
    pub async fn crash_after(&mut self, k: u64) -> bool {
        self.sim.with_world(|w| w.faults.halt_after_calls = Some(w.total_calls + k));
        let (_tx, rx) = watch::channel(false);
        let ended = tokio::select! {
            r = run(self.cfg(), self.env(), rx) => {
                r.unwrap_or_else(|e| panic!("{e}"));
                true
            }
            _ = self.sim.halted() => false,
        };
        self.sim = self.sim.resume_after_halt();
        !ended
    }

    pub fn total_calls(&self) -> u64 {
        self.sim.with_world(|w| w.total_calls)
    }

    pub fn advance(&self, ms: i64) {
        self.sim.with_world(|w| w.now_ms += ms);
    }

    pub fn calls(&self, action: &str) -> u64 {
        self.sim.with_world(|w| w.calls.get(action).copied().unwrap_or(0))
    }

    /// Ids of the snapshots (or, for `volume`, volumes) tagged with `step`, optionally
    /// only those of one account, sorted.
    pub fn made(&self, step: &str, account: Option<&str>) -> Vec<String> {
        self.sim.with_world(|w| {
            let tagged = |t: &BTreeMap<String, String>| t.get("snapferry:step").map(String::as_str) == Some(step);
            let mine = |owner: &str| account.is_none_or(|a| a == owner);
            let mut out: Vec<String> = w
                .snapshots
                .values()
                .filter(|s| mine(s.owner.as_str()) && tagged(&s.tags))
                .map(|s| s.id.to_string())
                .collect();
            out.extend(
                w.volumes.values().filter(|v| mine(v.owner.as_str()) && tagged(&v.tags)).map(|v| v.id.to_string()),
            );
            out.sort();
            out
        })
    }

    /// The tags of a snapshot or volume in the world.
    pub fn tags_of(&self, id: &str) -> BTreeMap<String, String> {
        self.sim.with_world(|w| {
            w.snapshots
                .get(id)
                .map(|s| s.tags.clone())
                .or_else(|| w.volumes.get(id).map(|v| v.tags.clone()))
                .unwrap_or_default()
        })
    }
}
