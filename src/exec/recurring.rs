//! Recurring plans (`options.every`): what one invocation does per volume. Pure.
//!
//! Each invocation carries on every unfinished volume where it stands (a failed one is
//! retried), starts a new copy of each volume whose newest successful copy began at
//! least 90% of `every` ago, and leaves the others alone (`fresh`). A volume never
//! holds back another: each has its own chain, tagged with the run that began it
//! (`VolumeRun::chain`), so one run record can carry chains of several runs.
//!
//! When nothing is due, the previous run goes on as it is; when something is due, a
//! new run starts with the due volumes, the unfinished ones carried over and the fresh
//! ones recorded as they were.
//!
//! With several targets all of this is per (volume, target): a target whose copy is
//! fresh is left alone while another target of the same volume is copied anew. The
//! due copies of one volume share one new snapshot: the first is the lead, the others
//! its followers.

use std::collections::{BTreeSet, HashMap};

use crate::engine::{Step, VolumeRun};
use crate::ids::VolumeId;
use crate::plan::Options;

/// What to run this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recur {
    /// Nothing is due: carry on the previous run as it is.
    Resume,
    /// Something is due: a new run with these volumes.
    Start(Vec<VolumeRun>),
}

/// Decides this invocation's work. `previous` are the volume runs of the plan's latest
/// run (`previous_run` its id), or the newest chains found by tag when the state is
/// gone; `wanted` the volumes the plan picks now, each copied to `targets` targets.
pub fn plan(
    previous: &[VolumeRun],
    previous_run: Option<&str>,
    wanted: &[VolumeId],
    targets: u8,
    options: &Options,
    now_ms: i64,
) -> Recur {
    let mut out = vec![];
    let mut any_due = previous_run.is_none() && !previous.iter().any(|v| v.step != Step::Done);
    let mut seen = BTreeSet::new();
    // The previous run's volume runs by source volume: a look per volume, not a scan.
    let mut of_volume: HashMap<&VolumeId, Vec<&VolumeRun>> = HashMap::new();
    for v in previous {
        of_volume.entry(&v.source_volume).or_default().push(v);
    }
    for id in wanted {
        let mine = of_volume.get(id).map(Vec::as_slice).unwrap_or_default();
        if !seen.insert(id.clone()) {
            continue;
        }
        // A lead whose copy is delivered, held only so that a failing follower can still
        // read its intermediates, counts as its target's copy: once due, its target gets
        // a new round, and the first unfinished follower of its chain takes the old
        // source side over (it cleans the intermediates up once its copy is made).
        let handed_over: Vec<&Option<String>> = mine
            .iter()
            .filter(|l| l.held_for_followers() && options.due(l.started_ms, now_ms))
            .filter(|l| mine.iter().any(|f| takes_over(f, &l.chain)))
            .map(|l| &l.chain)
            .collect();
        let mut took_over: Vec<&Option<String>> = vec![];
        // The volume's due copies share one new snapshot: the first one leads.
        let mut lead_taken = false;
        let mut fresh_copy = |out: &mut Vec<VolumeRun>, t: u8| {
            out.push(VolumeRun::for_target(id.clone(), t, lead_taken));
            lead_taken = true;
        };
        for t in 0..targets.max(1) {
            match mine.iter().copied().find(|v| v.target == t) {
                Some(v) if v.step == Step::Done => {
                    if options.due(v.started_ms, now_ms) {
                        any_due = true;
                        fresh_copy(&mut out, t);
                    } else {
                        out.push(carried(v, previous_run, true));
                    }
                }
                Some(v) if v.held_for_followers() && handed_over.contains(&&v.chain) => {
                    any_due = true;
                    fresh_copy(&mut out, t);
                }
                Some(v)
                    if takes_over(v, &v.chain) && handed_over.contains(&&v.chain) && !took_over.contains(&&v.chain) =>
                {
                    took_over.push(&v.chain);
                    let mut c = carried(v, previous_run, false);
                    c.follower = false;
                    out.push(c);
                }
                // A follower that never joined and whose lead is not carried on starts
                // over with this round's snapshot.
                Some(v)
                    if v.awaits_source()
                        && !mine.iter().any(|l| !l.follower && l.chain == v.chain && l.step != Step::Done) =>
                {
                    any_due = true;
                    fresh_copy(&mut out, t);
                }
                Some(v) => out.push(carried(v, previous_run, false)),
                None => {
                    any_due = true;
                    fresh_copy(&mut out, t);
                }
            }
        }
    }
    // A volume the plan no longer picks still finishes what it began.
    for v in previous.iter().filter(|v| v.step != Step::Done && !seen.contains(&v.source_volume)) {
        out.push(carried(v, previous_run, false));
    }
    if previous_run.is_some() && !any_due { Recur::Resume } else { Recur::Start(out) }
}

/// True for a follower of `chain` that can take its source side over: it joined the
/// lead's snapshot and its own copy is not made yet.
fn takes_over(f: &VolumeRun, chain: &Option<String>) -> bool {
    f.follower && &f.chain == chain && f.shared_snapshot().is_some() && !f.copy_complete()
}

fn carried(v: &VolumeRun, previous_run: Option<&str>, fresh: bool) -> VolumeRun {
    let mut c = v.clone();
    if c.chain.is_none() {
        c.chain = previous_run.map(str::to_owned);
    }
    c.fresh = fresh;
    c
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: i64 = 3_600_000;

    fn vol(n: u8) -> VolumeId {
        VolumeId::parse(&format!("vol-{n:017x}")).unwrap()
    }

    fn opts() -> Options {
        Options { every: Some(Duration::from_secs(24 * 3600)), ..Options::default() }
    }

    fn done(n: u8, started: i64) -> VolumeRun {
        let mut v = VolumeRun::new(vol(n));
        v.step = Step::Done;
        v.started_ms = Some(started);
        v
    }

    #[test]
    fn nothing_due_resumes_the_previous_run() {
        let prev = [done(1, 0), done(2, HOUR)];
        assert_eq!(plan(&prev, Some("r1"), &[vol(1), vol(2)], 1, &opts(), 20 * HOUR), Recur::Resume);
    }

    #[test]
    fn due_volumes_start_anew_fresh_ones_stay_and_unfinished_ones_carry_on() {
        let mut failed = VolumeRun::new(vol(3));
        failed.step = Step::Failed;
        let prev = [done(1, 0), done(2, 10 * HOUR), failed];
        // 90% of a day after volume 1's copy began: due; volume 2's is recent.
        let Recur::Start(vs) = plan(&prev, Some("r1"), &[vol(1), vol(2), vol(3)], 1, &opts(), 22 * HOUR) else {
            panic!("a volume is due")
        };
        assert_eq!((vs[0].step, vs[0].chain.as_deref(), vs[0].fresh), (Step::Snapshot, None, false));
        assert_eq!((vs[1].step, vs[1].chain.as_deref(), vs[1].fresh), (Step::Done, Some("r1"), true));
        assert_eq!((vs[2].step, vs[2].chain.as_deref(), vs[2].fresh), (Step::Failed, Some("r1"), false));
    }

    #[test]
    fn ninety_percent_of_every_is_due() {
        let prev = [done(1, 0)];
        assert_eq!(plan(&prev, Some("r"), &[vol(1)], 1, &opts(), 21 * HOUR), Recur::Resume);
        assert!(matches!(plan(&prev, Some("r"), &[vol(1)], 1, &opts(), 21 * HOUR + 36 * 60_000), Recur::Start(_)));
    }

    #[test]
    fn a_new_volume_is_due_and_a_dropped_unfinished_one_still_finishes() {
        let mut half = VolumeRun::new(vol(9));
        half.step = Step::WaitCopy;
        let prev = [done(1, 20 * HOUR), half];
        let Recur::Start(vs) = plan(&prev, Some("r1"), &[vol(1), vol(2)], 1, &opts(), 21 * HOUR) else { panic!() };
        let ids: Vec<_> = vs.iter().map(|v| (v.source_volume.clone(), v.step)).collect();
        assert_eq!(ids, vec![(vol(1), Step::Done), (vol(2), Step::Snapshot), (vol(9), Step::WaitCopy)]);
    }

    #[test]
    fn per_target_a_fresh_copy_stays_while_the_due_one_starts_with_its_own_lead() {
        let mut t0 = done(1, 20 * HOUR);
        t0.target = 0;
        let mut t1 = done(1, 0);
        t1.target = 1;
        t1.follower = true;
        let mut t2 = done(1, 0);
        t2.target = 2;
        t2.follower = true;
        let Recur::Start(vs) = plan(&[t0, t1, t2], Some("r1"), &[vol(1)], 3, &opts(), 22 * HOUR) else { panic!() };
        let got: Vec<_> = vs.iter().map(|v| (v.target, v.step, v.fresh, v.follower)).collect();
        assert_eq!(
            got,
            vec![(0, Step::Done, true, false), (1, Step::Snapshot, false, false), (2, Step::Snapshot, false, true)],
            "target 1 leads the new round since target 0 is fresh"
        );
    }

    #[test]
    fn a_lead_held_for_a_failing_follower_counts_as_its_targets_copy_and_hands_its_chain_over() {
        let snap = crate::ids::SnapshotId::parse("snap-00000000000000001").unwrap();
        let mut lead = VolumeRun::for_target(vol(1), 0, false);
        lead.step = Step::Cleanup;
        lead.started_ms = Some(0);
        lead.source_snapshot = Some(snap.clone());
        let mut failing = VolumeRun::for_target(vol(1), 1, true);
        failing.step = Step::Failed;
        failing.started_ms = Some(0);
        failing.source_snapshot = Some(snap);
        failing.failure = Some(crate::engine::Failure {
            step: Step::WaitCopy,
            kind: crate::engine::FailureKind::ResourceError,
            message: "x".into(),
            hint: None,
        });
        // Not due yet: both carried as they are.
        let prev = [lead.clone(), failing.clone()];
        let Recur::Resume = plan(&prev, Some("r1"), &[vol(1)], 2, &opts(), 10 * HOUR) else { panic!("nothing due") };
        // Due: the lead's target gets a new round; the follower takes the old chain over.
        let Recur::Start(vs) = plan(&prev, Some("r1"), &[vol(1)], 2, &opts(), 22 * HOUR) else { panic!("due") };
        let got: Vec<_> = vs.iter().map(|v| (v.target, v.step, v.follower, v.chain.as_deref())).collect();
        assert_eq!(got, vec![(0, Step::Snapshot, false, None), (1, Step::Failed, false, Some("r1"))]);
    }

    #[test]
    fn without_a_previous_run_found_chains_keep_their_own_run() {
        let mut a = done(1, 20 * HOUR);
        a.chain = Some("old".into());
        let Recur::Start(vs) = plan(&[a], None, &[vol(1)], 1, &opts(), 21 * HOUR) else { panic!() };
        assert_eq!((vs[0].fresh, vs[0].chain.as_deref()), (true, Some("old")));
    }
}
