//! Fleet benchmark on the simulated AWS: a generated cross-account plan of N volumes
//! (SNAPFERRY_BENCH_VOLUMES, default 1000) under the 20-copy limit, with the
//! simulator's size-based pending times on its virtual clock.
//!
//! Prints: wall time, virtual makespan against a lower bound of any schedule, API
//! calls per volume by action, and peak RSS; then the cost of adoption: the same plan
//! crashed half-way with its state dir lost, and the run-level listing calls the
//! rerun makes to find and carry on its run. Run with
//! `cargo bench --bench fleet` (SNAPFERRY_BENCH_VOLUMES=10000 for the large fleet).
//! SNAPFERRY_BENCH_STATE=s3 keeps the state in the S3 layout over an in-memory object
//! store and prints the PUTs, GETs and bytes the state cost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use snapferry::checkpoint::memory::MemoryObjects;
use snapferry::checkpoint::{LeaseOptions, Store};
use snapferry::cloud::sim::{SimCloud, seed_from_plan};
use snapferry::exec::{Env, RunConfig, run};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// How the benchmark runs a plan: simulated, as `snapferry run --simulate` would.
fn config(plan: snapferry::plan::Plan) -> RunConfig {
    RunConfig {
        plan,
        plan_file: "fleet.yaml".into(),
        run_id: None,
        simulated: true,
        probe_permissions: true,
        progress: None,
    }
}

fn main() {
    let n: usize = std::env::var("SNAPFERRY_BENCH_VOLUMES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut text = String::from(
        "version: 1\nname: fleet-bench\nsource:\n  region: us-east-1\n  account: \"111111111111\"\n  kms_key: alias/share\n\
         target:\n  region: eu-west-1\n  account: \"222222222222\"\n  role_arn: arn:aws:iam::222222222222:role/dr\n  \
         kms_key: alias/dr\n  availability_zone: eu-west-1a\nvolumes:\n",
    );
    for i in 0..n {
        text.push_str(&format!("  - id: vol-{:017x}\n", i + 1));
    }
    text.push_str("options:\n  max_concurrent_copies: 20\n");
    let plan = snapferry::plan::parse("fleet.yaml", &text).expect("valid plan");
    let start_ms = 1_800_000_000_000;
    let (world, sides) = seed_from_plan(&plan, start_ms);

    // Lower bound of any schedule: the longest single volume's chain, and the total
    // copy time over the 20 slots of each destination region.
    let t = world.timing.clone();
    let mut chain_max = 0i64;
    let mut copy_sum = 0i64;
    let mut reencrypt_sum = 0i64;
    for v in world.volumes.values() {
        let size = i64::from(v.size_gib);
        let snap = t.snapshot_base_ms + t.snapshot_per_gib_ms * size;
        let copy = t.copy_base_ms + t.copy_per_gib_ms * size;
        let re = if v
            .kms_key
            .as_ref()
            .is_some_and(|k| world.keys.iter().any(|x| &x.arn == k && x.aliases.iter().any(|a| a == "share")))
        {
            0
        } else {
            snap
        };
        chain_max = chain_max.max(snap + re + copy + t.volume_base_ms);
        copy_sum += copy;
        reencrypt_sum += re;
    }
    let bound = chain_max.max(copy_sum / 20).max(reencrypt_sum / 20);

    let sim = SimCloud::new(world, sides);
    let dir = tempfile::tempdir().expect("temp dir");
    let objects = Arc::new(MemoryObjects::new());
    let store = match std::env::var("SNAPFERRY_BENCH_STATE").as_deref() {
        Ok("s3") => Store::remote(objects.clone(), LeaseOptions::default()),
        _ => Store::new(dir.path()),
    };
    let env = Env { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), store: store.clone() };
    let cfg = config(plan);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let wall = Instant::now();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = rt.block_on(async {
        let report = run(cfg, env, rx).await;
        store.close().await;
        report
    });
    let report = report.expect("run");
    let wall = wall.elapsed();
    assert_eq!(report.status, snapferry::checkpoint::RunStatus::Succeeded);

    let (calls, total, end_ms) = sim.with_world(|w| (w.calls.clone(), w.total_calls, w.now_ms));
    let makespan = end_ms - start_ms;
    println!("fleet benchmark: {n} volumes, cross-account, cross-region, max_concurrent_copies 20");
    println!("wall time            {:.2} s", wall.as_secs_f64());
    println!("virtual makespan     {:.2} h", makespan as f64 / 3.6e6);
    println!(
        "lower bound          {:.2} h  (makespan / bound = {:.3})",
        bound as f64 / 3.6e6,
        makespan as f64 / bound as f64
    );
    println!("peak RSS             {:.1} MiB", peak_rss_mib());
    if let Some(stats) = store.stats() {
        println!("state in S3 layout   {stats}");
        println!(
            "  per volume         {:.2} PUTs, {:.0} bytes written",
            stats.puts as f64 / n as f64,
            stats.bytes_written as f64 / n as f64
        );
        let checkpoint = objects.keys().iter().filter_map(|k| objects.bytes(k)).map(|b| b.len()).max().unwrap_or(0);
        println!("  final checkpoint   {checkpoint} bytes");
    }
    println!("API calls per volume {:.2}  ({total} in all)", total as f64 / n as f64);
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in calls {
        by.insert(k, v);
    }
    for (k, v) in by {
        println!("  {k:<36} {:>8.3} per volume  ({v})", v as f64 / n as f64);
    }

    adoption(&rt, &text, total / 2, n);
}

/// Crashes the plan after `halt_at` calls, loses the state dir, reruns, and prints
/// what finding the run by its tags cost.
fn adoption(rt: &tokio::runtime::Runtime, text: &str, halt_at: u64, n: usize) {
    let plan = snapferry::plan::parse("fleet.yaml", text).expect("valid plan");
    let (mut world, sides) = seed_from_plan(&plan, 1_800_000_000_000);
    world.faults.halt_after_calls = Some(halt_at);
    let sim = SimCloud::new(world, sides);
    let cfg = config(plan);
    let lost = tempfile::tempdir().expect("temp dir");
    let env = Env { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), store: Store::new(lost.path()) };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    rt.block_on(async {
        tokio::select! {
            _ = run(cfg.clone(), env, rx) => panic!("the run ended before call {halt_at}"),
            _ = sim.halted() => {}
        }
    });
    let resumed = sim.resume_after_halt();
    let (listings, tagged) = sim.with_world(|w| {
        let snaps = w.snapshots.values().filter(|s| s.tags.contains_key("snapferry:plan")).count();
        let vols = w.volumes.values().filter(|v| v.tags.contains_key("snapferry:plan")).count();
        (w.listings, (snaps, vols))
    });
    let fresh = tempfile::tempdir().expect("temp dir");
    let env =
        Env { cloud: Arc::new(resumed.clone()), clock: Arc::new(resumed.clone()), store: Store::new(fresh.path()) };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = rt.block_on(run(cfg, env, rx)).expect("rerun");
    assert_eq!(report.status, snapferry::checkpoint::RunStatus::Succeeded);
    let (after, copies) = resumed.with_world(|w| {
        (
            w.listings,
            w.snapshots.values().filter(|s| s.tags.get("snapferry:step").map(String::as_str) == Some("copy")).count(),
        )
    });
    assert_eq!(copies, n, "one copy per volume after adoption");
    // AWS pages DescribeSnapshots by 1,000 and DescribeVolumes by 500 per call.
    let pages = tagged.0.div_ceil(1000).max(1) * 2 + tagged.1.div_ceil(500).max(1);
    println!(
        "adoption after a crash at call {halt_at} and a lost state dir: {} listing calls by tag in the rerun \
         ({} tagged snapshots, {} tagged volumes in AWS at the crash; against AWS about {pages} pages a round), \
         one copy per volume",
        after - listings,
        tagged.0,
        tagged.1
    );
}
