//! A plan run in process against the simulated AWS on its virtual clock, for tests
//! that play out a normal or a bad day: the world seeded from the plan and tweaked with
//! faults, the state in a temp dir or in the S3 layout over objects in memory (chosen
//! per rig, or by `SNAPFERRY_TEST_STATE=s3`), crashes right after a call took effect,
//! the state lost at will, and counts of what AWS holds and was asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use snapferry::checkpoint::memory::MemoryObjects;
use snapferry::checkpoint::{LeaseOptions, RunStatus, Store};
use snapferry::cloud::sim::{SimCloud, World, seed_from_plan};
use snapferry::exec::cleanup::CleanupSummary;
use snapferry::exec::{Env, RunConfig, RunError, RunReport, run};
use snapferry::plan::{Plan, parse};
use tokio::sync::watch;

/// When the seeded world's clock starts (ms since the epoch).
pub const EPOCH_MS: i64 = 1_800_000_000_000;
pub const HOUR_MS: i64 = 3_600_000;

/// The mutating EC2 actions, as `Rig::mutating` counts them.
const MUTATING: [&str; 5] =
    ["ec2:CreateSnapshot", "ec2:CopySnapshot", "ec2:CreateVolume", "ec2:DeleteSnapshot", "ec2:DeleteVolume"];

pub fn plan(text: &str) -> Plan {
    parse("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

/// What a run is handed to work on: the simulated AWS as cloud and clock, and `store`.
pub fn sim_env(sim: &SimCloud, store: Store) -> Env {
    Env { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), store }
}

/// Where a rig keeps its state: a local dir, or the S3 layout (lease, conditional
/// writes) over objects in memory with S3's conditional semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Remote,
}

impl Backend {
    /// `Remote` with `SNAPFERRY_TEST_STATE=s3` (scripts/test runs `sim::` both ways).
    pub fn from_env() -> Self {
        match std::env::var("SNAPFERRY_TEST_STATE").as_deref() {
            Ok("s3") => Backend::Remote,
            _ => Backend::Local,
        }
    }
}

pub struct Rig {
    pub plan: Plan,
    pub sim: SimCloud,
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub objects: Arc<MemoryObjects>,
}

impl Rig {
    pub fn new(text: &str) -> Self {
        Self::with(text, |_| {})
    }

    pub fn with(text: &str, tweak: impl FnOnce(&mut World)) -> Self {
        Self::on(Backend::from_env(), plan(text), tweak)
    }

    pub fn on(backend: Backend, plan: Plan, tweak: impl FnOnce(&mut World)) -> Self {
        let (mut world, sides) = seed_from_plan(&plan, EPOCH_MS);
        tweak(&mut world);
        let dir = tempfile::tempdir().unwrap();
        let objects = Arc::new(MemoryObjects::new());
        let store = match backend {
            Backend::Local => Store::new(dir.path()),
            Backend::Remote => Store::remote(objects.clone(), LeaseOptions::default()),
        };
        Rig { plan, sim: SimCloud::new(world, sides), dir, store, objects }
    }

    pub fn env(&self) -> Env {
        sim_env(&self.sim, self.store.clone())
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

    /// Loses the whole state, as a fresh CI runner or a deleted state dir (or bucket
    /// prefix) would.
    pub fn lose_state(&self) {
        std::fs::remove_dir_all(self.dir.path()).unwrap();
        std::fs::create_dir_all(self.dir.path()).unwrap();
        self.objects.clear();
    }

    /// Runs the plan until its `k`-th call from now took effect and hung, as a crash
    /// right after a call and before its outcome was recorded; then the simulated AWS
    /// goes on without that caller. The report when the run ended before that call.
    pub async fn run_until_call(&mut self, k: u64) -> Option<RunReport> {
        self.sim.with_world(|w| w.faults.halt_after_calls = Some(w.total_calls + k));
        let (_tx, rx) = watch::channel(false);
        let ended = tokio::select! {
            r = run(self.cfg(), self.env(), rx) => Some(r.unwrap_or_else(|e| panic!("{e}"))),
            _ = self.sim.halted() => None,
        };
        self.sim = self.sim.resume_after_halt();
        ended
    }

    /// As `run_until_call`: true when the run crashed at that call.
    pub async fn crash_after(&mut self, k: u64) -> bool {
        self.run_until_call(k).await.is_none()
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

    /// Mutating calls the world has seen, by action.
    pub fn mutating(&self) -> Vec<(String, u64)> {
        self.sim.with_world(|w| {
            w.calls.iter().filter(|(a, _)| MUTATING.contains(&a.as_str())).map(|(a, n)| (a.clone(), *n)).collect()
        })
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

    /// How many snapshots and volumes in the world this plan's runs made with `step`.
    pub fn count(&self, step: &str) -> usize {
        self.made(step, None).len()
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

pub fn assert_all_succeeded(r: &RunReport) {
    assert_eq!(r.status, RunStatus::Succeeded, "{r:#?}");
    for v in &r.volumes {
        // A recurring plan resumed after a crash reports what the crashed invocation
        // already finished as fresh.
        assert!(v.status == "succeeded" || v.status == "fresh", "{v:#?}");
        assert!(v.target_snapshot.is_some());
    }
}

/// The calls a run of `text` makes when nothing goes wrong.
pub async fn calls_of_a_clean_run(text: &str) -> u64 {
    let rig = Rig::new(text);
    assert_all_succeeded(&rig.run().await);
    rig.total_calls()
}

/// Runs the plan, halting (as a crash would) right after the k-th call took effect
/// and before its outcome was recorded; then resumes to the end. Also says whether
/// the crash happened (false: the run made fewer calls and simply finished).
pub async fn crash_and_resume(backend: Backend, text: &str, k: u64) -> (Rig, RunReport, bool) {
    let mut rig = Rig::on(backend, plan(text), |_| {});
    if let Some(r) = rig.run_until_call(k).await {
        return (rig, r, false);
    }
    let r = rig.try_run().await.unwrap_or_else(|e| panic!("resume after {k} calls: {e}"));
    (rig, r, true)
}

/// As `crash_and_resume`, but the state is lost with the crash (an ephemeral CI
/// runner): the rerun adopts the run from its tags. Also the id of the lost run;
/// `None` when the run ended before call `k`.
pub async fn crash_and_lose_state_after(text: &str, k: u64) -> Option<(Rig, RunReport, String)> {
    let mut rig = Rig::new(text);
    if rig.run_until_call(k).await.is_some() {
        return None;
    }
    let lost = rig.store.latest_of_plan(rig.plan.name.as_str()).await.unwrap().map(|r| r.meta.run_id);
    rig.lose_state();
    let r = rig.try_run().await.unwrap_or_else(|e| panic!("rerun after {k} calls: {e}"));
    Some((rig, r, lost.unwrap_or_default()))
}
