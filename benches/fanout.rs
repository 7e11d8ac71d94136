//! Fan-out benchmark on the simulated AWS: N volumes (SNAPFERRY_BENCH_VOLUMES, default
//! 20; the seed puts a third under the source key, a third under aws/ebs and a third
//! unencrypted) copied to two targets in two accounts and regions, once by one plan
//! with `targets:` and once by two single-target plans over the same volumes.
//!
//! Prints, for each way, the API calls by action, the calls per (volume, target), and
//! the virtual time to the end. Run with `cargo bench --bench fanout`.

use std::collections::BTreeMap;
use std::sync::Arc;

use snapferry::checkpoint::Store;
use snapferry::cloud::sim::{SimCloud, World, seed_from_plan};
use snapferry::exec::{Env, RunConfig, run};
use snapferry::plan::Plan;

const DR: &str = "  - region: eu-west-1\n    account: \"222222222222\"\n    role_arn: arn:aws:iam::222222222222:role/dr\n    kms_key: alias/dr\n    availability_zone: eu-west-1a\n";
const VAULT: &str = "  - region: us-west-2\n    account: \"333333333333\"\n    role_arn: arn:aws:iam::333333333333:role/vault\n    kms_key: alias/vault\n    availability_zone: us-west-2b\n";

fn plan_text(name: &str, targets: &[&str], n: usize) -> String {
    let mut t = format!(
        "version: 1\nname: {name}\nsource:\n  region: us-east-1\n  account: \"111111111111\"\n  kms_key: alias/share\ntargets:\n"
    );
    for x in targets {
        t.push_str(x);
    }
    t.push_str("volumes:\n");
    for i in 0..n {
        t.push_str(&format!("  - id: vol-{:017x}\n", i + 1));
    }
    t
}

fn parse(text: &str) -> Plan {
    snapferry::plan::parse("fan.yaml", text).expect("valid plan")
}

/// Runs `plan` on `sim` to the end and returns the calls it made by action and the
/// virtual time it took.
async fn measure(sim: &SimCloud, plan: Plan) -> (BTreeMap<String, u64>, i64) {
    let before = sim.with_world(|w| w.calls.clone());
    let start = sim.with_world(|w| w.now_ms);
    let dir = tempfile::tempdir().expect("temp dir");
    let env = Env { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), store: Store::new(dir.path()) };
    let cfg = RunConfig {
        plan,
        plan_file: "fan.yaml".into(),
        run_id: None,
        simulated: true,
        probe_permissions: true,
        progress: None,
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = run(cfg, env, rx).await.expect("run");
    assert_eq!(report.status.as_str(), "succeeded", "{report:#?}");
    let after = sim.with_world(|w| w.calls.clone());
    let mut made = BTreeMap::new();
    for (action, n) in after {
        let d = n - before.get(&action).copied().unwrap_or(0);
        if d > 0 {
            made.insert(action, d);
        }
    }
    (made, sim.with_world(|w| w.now_ms) - start)
}

fn print(way: &str, calls: &BTreeMap<String, u64>, virtual_ms: i64, pairs: usize) {
    let total: u64 = calls.values().sum();
    let mutating: u64 = calls
        .iter()
        .filter(|(a, _)| ["Create", "Copy", "Modify", "Delete", "PutKeyPolicy"].iter().any(|m| a.contains(m)))
        .map(|(_, n)| n)
        .sum();
    println!(
        "\n{way}: {total} calls ({:.2} per volume and target), {mutating} that change AWS ({:.2} per volume and target), {:.1} h virtual",
        total as f64 / pairs as f64,
        mutating as f64 / pairs as f64,
        virtual_ms as f64 / 3_600_000.0
    );
    for (action, n) in calls {
        println!("  {action:<34} {n:>6}  {:>6.2} per volume and target", *n as f64 / pairs as f64);
    }
}

fn main() {
    let n: usize = std::env::var("SNAPFERRY_BENCH_VOLUMES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let fan = parse(&plan_text("fan-bench", &[DR, VAULT], n));
    let (world, sides) = seed_from_plan(&fan, 1_800_000_000_000);
    let world_json = serde_json::to_string(&world).expect("world");
    let fresh = || serde_json::from_str::<World>(&world_json).expect("world");

    let sim = SimCloud::new(fresh(), sides.clone());
    let (calls, t) = rt.block_on(measure(&sim, fan));
    println!("{n} volumes x 2 targets");
    print("one plan with targets: [dr, vault]", &calls, t, 2 * n);

    // The same volumes, the same world, two plans of one target each, one after the other.
    let sim = SimCloud::new(fresh(), sides);
    let (mut both, t1) = rt.block_on(measure(&sim, parse(&plan_text("dr-only", &[DR], n))));
    // The vault plan's one target is reached through the vault's role: its own sides,
    // over the same world (which has both targets' keys and roles).
    let vault_plan = parse(&plan_text("vault-only", &[VAULT], n));
    let sim2 = SimCloud::new(fresh(), seed_from_plan(&vault_plan, 1_800_000_000_000).1);
    let (vault_calls, t2) = rt.block_on(measure(&sim2, vault_plan));
    for (a, c) in vault_calls {
        *both.entry(a).or_default() += c;
    }
    print("two plans, one target each (virtual time: one after the other)", &both, t1 + t2, 2 * n);
}
