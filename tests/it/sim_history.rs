//! `options.history` against the simulated AWS: a recurring plan's state stays the size
//! of a few rounds over hundreds of rounds, keeps the runs whose chains a later run
//! carries, counts what it removed, and a removed run is cleaned up from its tags.

use std::time::{Duration, Instant};

use snapferry::checkpoint::RunStatus;

use super::cross;
use crate::support::rig::{Rig, assert_all_succeeded};

const DAY: i64 = 24 * 3_600_000;
const PLAN: &str = "crash-test";

impl Rig {
    /// Bytes the state holds: every file under the state dir, or every object.
    fn state_bytes(&self) -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(self.dir.path())
            + self.objects.keys().iter().map(|k| self.objects.bytes(k).map_or(0, |b| b.len() as u64)).sum::<u64>()
    }

    async fn run_ids(&self) -> Vec<String> {
        self.store.list_meta().await.unwrap().into_iter().map(|m| m.run_id).collect()
    }

    async fn removed(&self) -> u64 {
        self.store.removed_counts().await.unwrap().get(PLAN).copied().unwrap_or(0)
    }
}

/// The median: a round slowed by another process on the machine does not count.
fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

/// 400 daily rounds with `history: 5`: at most 5 finished runs stay, the state after
/// 400 rounds is the size it was after 10, and a round takes no longer at the end.
#[tokio::test]
async fn four_hundred_daily_rounds_keep_the_state_and_the_rounds_bounded() {
    let rig = Rig::new(&format!("{}  every: 24h\n  keep: 2\n  history: 5\n", cross()));
    let mut times = vec![];
    let mut size_after_10 = 0;
    for round in 1..=400u64 {
        let started = Instant::now();
        let r = rig.try_run().await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        times.push(started.elapsed());
        assert_all_succeeded(&r);
        let metas = rig.store.list_meta().await.unwrap();
        assert!(metas.iter().all(|m| m.status == RunStatus::Succeeded), "round {round}");
        assert_eq!(metas.len() as u64, round.min(5), "round {round}: the newest 5 finished runs stay");
        assert_eq!(metas.last().unwrap().run_id, r.run_id, "round {round}");
        assert_eq!(rig.removed().await, round.saturating_sub(5), "round {round}");
        if round == 10 {
            size_after_10 = rig.state_bytes();
        }
        rig.sim.with_world(|w| w.now_ms += DAY);
    }
    let size = rig.state_bytes();
    assert!(size * 10 <= size_after_10 * 12, "{size} bytes after 400 rounds, {size_after_10} after 10");
    let (early, late) = (median(&times[10..20]), median(&times[390..400]));
    assert!(late <= early * 2, "rounds 391-400 took {late:?} (median), rounds 11-20 {early:?}");
}

/// A run whose chain a later run still carries (a volume failing round after round
/// carries its first round's copy on) stays however old it is; once the volume's
/// chain is finished and replaced, it goes. A removed run is cleaned up from its tags.
#[tokio::test]
async fn a_run_whose_chain_is_carried_stays_and_a_removed_run_is_cleaned_up_from_tags() {
    let text = format!("{}  every: 24h\n  cleanup: false\n  history: 1\n", cross());
    let rig = Rig::with(&text, |w| w.faults.key_inaccessible_for = Some("vol-00000000000000002".parse().unwrap()));
    let first = rig.run().await;
    assert_eq!(first.status, RunStatus::Failed);
    let mut ids = vec![first.run_id.clone()];
    for round in 2..=4 {
        rig.sim.with_world(|w| w.now_ms += DAY);
        let r = rig.run().await;
        assert_eq!(r.status, RunStatus::Failed, "round {round}");
        ids.push(r.run_id.clone());
        // The first round's chain of the failing volume is carried on: it stays, with
        // the newest; the rounds between go.
        assert_eq!(rig.run_ids().await, [first.run_id.clone(), r.run_id.clone()], "round {round}");
    }
    assert_eq!(rig.removed().await, 2);
    // Fixed: the failing volume's chain finishes, then is copied anew a day later.
    rig.sim.with_world(|w| {
        w.faults.key_inaccessible_for = None;
        w.now_ms += DAY;
    });
    assert_all_succeeded(&rig.run().await);
    rig.sim.with_world(|w| w.now_ms += DAY);
    let last = rig.run().await;
    assert_all_succeeded(&last);
    assert_eq!(rig.run_ids().await, [last.run_id]);
    assert_eq!(rig.removed().await, 5);

    // Round 2's source snapshots (cleanup: false) are left in AWS: cleanup finds them
    // by their tags, with the plan; without it, it says to name the plan.
    let env = rig.env();
    let removed = &ids[1];
    let err = snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), removed, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--plan"), "{err}");
    let tagged = |run: &str| {
        rig.sim.with_world(|w| {
            w.snapshots
                .values()
                .filter(|s| s.tags.get("snapferry:run").map(String::as_str) == Some(run))
                .filter(|s| s.tags.get("snapferry:step").map(String::as_str) != Some("copy"))
                .count()
        })
    };
    assert!(tagged(removed) > 0, "round 2 left source snapshots");
    let summary =
        snapferry::exec::cleanup(&env.store, env.cloud.as_ref(), env.clock.as_ref(), removed, Some(&rig.plan))
            .await
            .unwrap();
    assert!(summary.errors.is_empty(), "{summary:#?}");
    assert!(!summary.deleted_snapshots.is_empty(), "{summary:#?}");
    assert_eq!(tagged(removed), 0);
}
