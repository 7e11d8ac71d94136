//! The inference of adoption, pure: from the resources listed under a plan's tags
//! ([`Survey`]), the runs they belong to and, per (source volume, target), the furthest
//! step whose resource exists and is not in `error` ([`infer`], [`rebuild_run`],
//! [`newest_chains`]). The listing itself, from the cloud, is `exec::adopt::survey`.

use std::collections::{BTreeMap, BTreeSet};

use crate::cloud::{Snapshot, SnapshotState, Tags, Volume, VolumeState};
use crate::engine::{Step, VolumeRun};
use crate::ids::{SnapshotId, VolumeId};
use crate::tags::{StepTag, TAG_RUN, TAG_SOURCE_VOLUME, TAG_VERIFY, parse_chain_started};

/// What AWS holds under one plan's tag.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub source_snapshots: Vec<Snapshot>,
    /// Per target of the plan, in its order.
    pub targets: Vec<Held>,
}

/// What one target's account and region hold under the plan's tag.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub snapshots: Vec<Snapshot>,
    pub volumes: Vec<Volume>,
}

fn add_snaps(into: &mut Vec<Snapshot>, from: Vec<Snapshot>) {
    let mut at: std::collections::HashMap<SnapshotId, usize> =
        into.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
    for s in from {
        match at.get(&s.id) {
            Some(&i) => into[i] = s,
            None => {
                at.insert(s.id.clone(), into.len());
                into.push(s);
            }
        }
    }
}

impl Survey {
    /// Adds what `other` saw and this did not (a later listing of the same plan).
    pub fn merge(&mut self, other: Survey) {
        add_snaps(&mut self.source_snapshots, other.source_snapshots);
        if self.targets.len() < other.targets.len() {
            self.targets.resize_with(other.targets.len(), Held::default);
        }
        for (into, from) in self.targets.iter_mut().zip(other.targets) {
            add_snaps(&mut into.snapshots, from.snapshots);
            let mut at: std::collections::HashMap<VolumeId, usize> =
                into.volumes.iter().enumerate().map(|(i, v)| (v.id.clone(), i)).collect();
            for v in from.volumes {
                match at.get(&v.id) {
                    Some(&i) => into.volumes[i] = v,
                    None => {
                        at.insert(v.id.clone(), into.volumes.len());
                        into.volumes.push(v);
                    }
                }
            }
        }
    }

    /// Every snapshot of every target.
    pub fn target_snapshots(&self) -> impl Iterator<Item = &Snapshot> {
        self.targets.iter().flat_map(|t| &t.snapshots)
    }

    /// Every volume of every target.
    pub fn target_volumes(&self) -> impl Iterator<Item = &Volume> {
        self.targets.iter().flat_map(|t| &t.volumes)
    }

    /// The start time of the newest resource, in ms since the epoch.
    pub fn newest_ms(&self) -> Option<i64> {
        let snaps = self.source_snapshots.iter().chain(self.target_snapshots()).filter_map(|s| s.start_time_ms);
        snaps.chain(self.target_volumes().filter_map(|v| v.create_time_ms)).max()
    }
}

/// What the plan asks of a chain, for telling finished from unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub create_volume: bool,
    pub cleanup: bool,
    /// `options.verify`: a completed copy not tagged as matched is verified first.
    pub verify: bool,
}

/// A run found in AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub run_id: String,
    /// The start time of its oldest resource (ms), as the run's creation time.
    pub created_ms: i64,
    pub volumes: Vec<VolumeRun>,
    /// True when some chain of the run is not finished.
    pub unfinished: bool,
}

fn tag<'a>(tags: &'a Tags, key: &str) -> Option<&'a str> {
    tags.get(key).map(String::as_str)
}

/// The newest run of the plan in `survey`, rebuilt per source volume. `now_ms` starts
/// the waits it resumes.
pub fn infer(survey: &Survey, shape: Shape, now_ms: i64) -> Option<Found> {
    let run_id = newest_run(survey)?;
    Some(rebuild_run(survey, &run_id, shape, now_ms))
}

/// The run whose newest resource started last.
pub fn newest_run(survey: &Survey) -> Option<String> {
    survey
        .runs()
        .into_iter()
        .max_by(|(a, (_, last_a)), (b, (_, last_b))| (last_a, a).cmp(&(last_b, b)))
        .map(|(id, _)| id)
}

impl Survey {
    /// Every run in the survey with the start times of its oldest and newest resource.
    fn runs(&self) -> BTreeMap<String, (i64, i64)> {
        let mut runs: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut note = |tags: &Tags, t: Option<i64>| {
            if let Some(run) = tags.get(TAG_RUN) {
                let t = t.unwrap_or(0);
                let e = runs.entry(run.clone()).or_insert((t, t));
                e.0 = e.0.min(t);
                e.1 = e.1.max(t);
            }
        };
        for s in self.source_snapshots.iter().chain(self.target_snapshots()) {
            note(&s.tags, s.start_time_ms);
        }
        for v in self.target_volumes() {
            note(&v.tags, v.create_time_ms);
        }
        runs
    }
}

/// One run of the survey rebuilt per (source volume, target) (no volumes when it has
/// no resources).
pub fn rebuild_run(survey: &Survey, run_id: &str, shape: Shape, now_ms: i64) -> Found {
    let created_ms = survey.runs().get(run_id).map(|t| t.0).unwrap_or(now_ms);
    let run_id = run_id.to_owned();
    let of_run =
        |tags: &Tags, step: StepTag| tag(tags, TAG_RUN) == Some(run_id.as_str()) && StepTag::of(tags) == Some(step);
    let sources: BTreeSet<&str> = survey
        .source_snapshots
        .iter()
        .chain(survey.target_snapshots())
        .map(|s| &s.tags)
        .chain(survey.target_volumes().map(|v| &v.tags))
        .filter(|t| tag(t, TAG_RUN) == Some(run_id.as_str()))
        .filter_map(|t| tag(t, TAG_SOURCE_VOLUME))
        .collect();

    // Each list grouped once by source volume, so a run of many volumes costs one pass.
    fn by_source<'a, T>(list: impl Iterator<Item = &'a T>, tags: impl Fn(&T) -> &Tags) -> BTreeMap<&'a str, Vec<&'a T>>
    where
        T: 'a,
    {
        let mut m: BTreeMap<&str, Vec<&T>> = BTreeMap::new();
        for x in list {
            if let Some(src) = tags(x).get(TAG_SOURCE_VOLUME) {
                m.entry(src.as_str()).or_default().push(x);
            }
        }
        m
    }
    let of_this_run = |t: &Tags| tag(t, TAG_RUN) == Some(run_id.as_str());
    let src_snaps = by_source(survey.source_snapshots.iter().filter(|s| of_this_run(&s.tags)), |s| &s.tags);
    type BySource<'a, T> = BTreeMap<&'a str, Vec<&'a T>>;
    let per_target: Vec<(BySource<Snapshot>, BySource<Volume>)> = survey
        .targets
        .iter()
        .map(|h| {
            (
                by_source(h.snapshots.iter().filter(|s| of_this_run(&s.tags)), |s| &s.tags),
                by_source(h.volumes.iter().filter(|v| of_this_run(&v.tags)), |v| &v.tags),
            )
        })
        .collect();
    // The oldest resource not in error, as a lookup after a crash picks it.
    let pick = |list: Option<&Vec<&Snapshot>>, step: StepTag| -> Option<Snapshot> {
        list.into_iter()
            .flatten()
            .filter(|s| of_run(&s.tags, step) && s.state != SnapshotState::Error)
            .min_by_key(|s| (s.start_time_ms.unwrap_or(0), s.id.clone()))
            .map(|s| (*s).clone())
    };

    let mut volumes = vec![];
    for source in sources {
        let Ok(id) = VolumeId::parse(source) else { continue };
        let snapshot = pick(src_snaps.get(source), StepTag::Snapshot);
        let reencrypted = pick(src_snaps.get(source), StepTag::Reencrypt);
        for (t, (snaps, vols)) in per_target.iter().enumerate() {
            let copy = pick(snaps.get(source), StepTag::Copy);
            let volume = vols
                .get(source)
                .into_iter()
                .flatten()
                .filter(|v| of_run(&v.tags, StepTag::Volume))
                .filter(|v| !matches!(v.state, VolumeState::Error | VolumeState::Deleting | VolumeState::Deleted))
                .min_by_key(|v| (v.create_time_ms.unwrap_or(0), v.id.clone()))
                .map(|v| (*v).clone());
            let mut v = rebuild(id.clone(), shape, t > 0, snapshot.clone(), reencrypted.clone(), copy, volume, now_ms);
            v.target = t as u8;
            v.follower = t > 0;
            volumes.push(v);
        }
    }
    volumes.sort_by(|a, b| (&a.source_volume, a.target).cmp(&(&b.source_volume, b.target)));
    let unfinished = volumes.iter().any(|v| v.step != Step::Done);
    Found { run_id, created_ms, volumes, unfinished }
}

/// Per (source volume, target), its newest chain in any run (recurring plans, whose
/// volumes' chains belong to different runs), each tagged with its run as `chain`.
/// A chain with nothing in a target is no copy to it, unless its lead's chain is
/// unfinished: then that target's copy is still to be made from the lead's snapshot,
/// and it is kept as a follower waiting for it (not a new lead with a snapshot of its
/// own).
pub fn newest_chains(survey: &Survey, shape: Shape, now_ms: i64) -> Vec<VolumeRun> {
    let mut best: BTreeMap<(VolumeId, u8), VolumeRun> = BTreeMap::new();
    for run_id in survey.runs().into_keys() {
        let volumes = rebuild_run(survey, &run_id, shape, now_ms).volumes;
        let open_leads: BTreeSet<VolumeId> =
            volumes.iter().filter(|v| !v.follower && v.step != Step::Done).map(|v| v.source_volume.clone()).collect();
        for mut v in volumes {
            if v.follower
                && v.target_snapshot.is_none()
                && v.target_volume.is_none()
                && !open_leads.contains(&v.source_volume)
            {
                continue;
            }
            v.chain = Some(run_id.clone());
            let key = (v.source_volume.clone(), v.target);
            let newer = best.get(&key).is_none_or(|b| v.started_ms > b.started_ms);
            if newer {
                best.insert(key, v);
            }
        }
    }
    best.into_values().collect()
}

/// One source volume's chain, from what exists of it.
#[allow(clippy::too_many_arguments)]
fn rebuild(
    source: VolumeId,
    shape: Shape,
    follower: bool,
    snapshot: Option<Snapshot>,
    reencrypted: Option<Snapshot>,
    copy: Option<Snapshot>,
    volume: Option<Volume>,
    now_ms: i64,
) -> VolumeRun {
    let mut v = VolumeRun::new(source);
    v.source_snapshot = snapshot.as_ref().map(|s| s.id.clone());
    v.reencrypted_snapshot = reencrypted.as_ref().map(|s| s.id.clone());
    v.target_snapshot = copy.as_ref().map(|s| s.id.clone());
    v.target_volume = volume.as_ref().map(|x| x.id.clone());
    if v.target_snapshot.is_none() {
        // A volume whose copy is no longer listed still names the snapshot it came from.
        v.target_snapshot =
            volume.as_ref().and_then(|x| x.snapshot_id.as_deref()).and_then(|s| SnapshotId::parse(s).ok());
    }
    let intermediates_left = snapshot.is_some() || reencrypted.is_some();
    let finish = |v: VolumeRun| {
        let step = if shape.cleanup && intermediates_left && !follower { Step::Cleanup } else { Step::Done };
        crate::engine::found_at(&v, step, now_ms)
    };
    let wait = |v: VolumeRun, step: Step| crate::engine::found_at(&v, step, now_ms);
    // The chain began when its first resource did: what freshness is measured from.
    // The copy and the volume carry that time in a tag, since with `cleanup: true` the
    // source snapshot is gone once they exist.
    let began = [&snapshot, &reencrypted, &copy]
        .into_iter()
        .flatten()
        .filter_map(|s| s.start_time_ms)
        .chain(volume.iter().filter_map(|x| x.create_time_ms))
        .chain(copy.iter().filter_map(|s| parse_chain_started(&s.tags)))
        .chain(volume.iter().filter_map(|x| parse_chain_started(&x.tags)))
        .min();
    v.started_ms = Some(began.unwrap_or(now_ms));
    match (&volume, &copy) {
        (Some(x), _) if shape.create_volume => {
            if matches!(x.state, VolumeState::Available | VolumeState::InUse) {
                finish(v)
            } else {
                wait(v, Step::WaitVolume)
            }
        }
        (_, Some(c)) => {
            let matched = c.tags.get(TAG_VERIFY).is_some_and(|t| t.starts_with("matched"));
            if c.state == SnapshotState::Completed && !shape.create_volume && shape.verify && !matched {
                crate::engine::found_at(&v, Step::Verify, now_ms)
            } else if c.state == SnapshotState::Completed && !shape.create_volume {
                finish(v)
            } else {
                // Polled first: completed moves on to the volume, pending waits.
                wait(v, Step::WaitCopy)
            }
        }
        _ if reencrypted.is_some() => wait(v, Step::WaitReencrypt),
        _ if snapshot.is_some() => wait(v, Step::WaitSnapshot),
        _ => {
            v.started_ms = None;
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AccountId;
    use crate::tags::{TAG_PLAN, TAG_STEP};

    fn tags(run: &str, vol: &str, step: &str) -> Tags {
        BTreeMap::from([
            (TAG_PLAN.to_owned(), "p".to_owned()),
            (TAG_RUN.to_owned(), run.to_owned()),
            (TAG_SOURCE_VOLUME.to_owned(), vol.to_owned()),
            (TAG_STEP.to_owned(), step.to_owned()),
        ])
    }

    fn snap(n: u32, run: &str, vol: &str, step: &str, state: SnapshotState, t: i64) -> Snapshot {
        Snapshot {
            id: SnapshotId::parse(&format!("snap-{n:017x}")).unwrap(),
            volume_id: None,
            owner: Some(AccountId::parse("111111111111").unwrap()),
            state,
            progress: None,
            state_message: None,
            encrypted: true,
            kms_key_id: None,
            size_gib: Some(8),
            tags: tags(run, vol, step),
            start_time_ms: Some(t),
        }
    }

    fn volume(n: u32, run: &str, vol: &str, state: VolumeState, t: i64) -> Volume {
        Volume {
            id: VolumeId::parse(&format!("vol-{n:017x}")).unwrap(),
            state,
            availability_zone: "eu-west-1a".into(),
            size_gib: 8,
            encrypted: true,
            kms_key_id: None,
            volume_type: None,
            iops: None,
            throughput: None,
            snapshot_id: None,
            tags: tags(run, vol, "volume"),
            attachments: 0,
            create_time_ms: Some(t),
        }
    }

    const V1: &str = "vol-00000000000000001";
    const V2: &str = "vol-00000000000000002";
    const FULL: Shape = Shape { create_volume: true, cleanup: true, verify: false };

    #[test]
    fn nothing_tagged_is_no_run() {
        assert_eq!(infer(&Survey::default(), FULL, 0), None);
    }

    #[test]
    fn each_chain_resumes_at_its_furthest_live_resource() {
        use SnapshotState::*;
        let s = Survey {
            source_snapshots: vec![
                snap(1, "r", V1, "snapshot", Completed, 10),
                snap(2, "r", V1, "reencrypt", Completed, 20),
                snap(3, "r", V2, "snapshot", Pending, 11),
            ],
            targets: vec![Held {
                snapshots: vec![
                    // An errored copy is no progress: the chain is at its re-encryption.
                    snap(4, "r", V2, "copy", Error, 30),
                    snap(5, "r", V1, "copy", Pending, 31),
                ],
                volumes: vec![],
            }],
        };
        let found = infer(&s, FULL, 99).unwrap();
        assert_eq!(found.run_id, "r");
        assert!(found.unfinished);
        assert_eq!(found.created_ms, 10);
        let v1 = &found.volumes[0];
        assert_eq!(
            (v1.step, v1.target_snapshot.as_ref().map(|s| s.as_str())),
            (Step::WaitCopy, Some("snap-00000000000000005"))
        );
        assert_eq!(v1.intermediates().len(), 2, "kept for cleanup");
        let v2 = &found.volumes[1];
        assert_eq!((v2.step, v2.wait_started_ms), (Step::WaitSnapshot, Some(99)));
    }

    #[test]
    fn a_finished_chain_is_done_and_one_with_intermediates_left_is_cleaned_up() {
        use SnapshotState::*;
        let s = Survey {
            source_snapshots: vec![snap(1, "r", V2, "snapshot", Completed, 10)],
            targets: vec![Held {
                snapshots: vec![snap(4, "r", V1, "copy", Completed, 30), snap(5, "r", V2, "copy", Completed, 31)],
                volumes: vec![
                    volume(7, "r", V1, VolumeState::Available, 40),
                    volume(8, "r", V2, VolumeState::InUse, 41),
                ],
            }],
        };
        let found = infer(&s, FULL, 99).unwrap();
        assert_eq!(found.volumes[0].step, Step::Done);
        assert_eq!(found.volumes[1].step, Step::Cleanup);
        assert!(found.unfinished);
        let no_cleanup = infer(&s, Shape { create_volume: true, cleanup: false, verify: false }, 99).unwrap();
        assert!(!no_cleanup.unfinished);
        let found = infer(&s, Shape { create_volume: false, cleanup: true, verify: false }, 99).unwrap();
        assert_eq!(found.volumes[0].step, Step::Done, "a completed copy ends a chain without volumes");
    }

    #[test]
    fn a_volume_still_creating_is_waited_on_and_a_failed_one_is_ignored() {
        use SnapshotState::*;
        let s = Survey {
            source_snapshots: vec![],
            targets: vec![Held {
                snapshots: vec![snap(4, "r", V1, "copy", Completed, 30), snap(5, "r", V2, "copy", Completed, 31)],
                volumes: vec![
                    volume(7, "r", V1, VolumeState::Creating, 40),
                    volume(8, "r", V2, VolumeState::Error, 41),
                ],
            }],
        };
        let found = infer(&s, FULL, 99).unwrap();
        assert_eq!(found.volumes[0].step, Step::WaitVolume);
        assert_eq!(found.volumes[1].step, Step::WaitCopy, "polled, then a new volume is made");
        assert_eq!(found.volumes[1].target_volume, None);
    }

    #[test]
    fn only_the_newest_run_is_a_candidate() {
        use SnapshotState::*;
        let s = Survey {
            source_snapshots: vec![
                snap(1, "old", V1, "snapshot", Pending, 10),
                snap(2, "new", V1, "snapshot", Pending, 50),
            ],
            targets: vec![Held { snapshots: vec![snap(3, "old", V1, "copy", Completed, 20)], volumes: vec![] }],
        };
        let found = infer(&s, FULL, 99).unwrap();
        assert_eq!(found.run_id, "new");
        assert_eq!(found.volumes.len(), 1);
        assert_eq!(found.volumes[0].source_snapshot.as_ref().unwrap().as_str(), "snap-00000000000000002");
    }

    #[test]
    fn with_two_targets_the_first_leads_and_the_second_follows_from_its_own_copy() {
        use SnapshotState::*;
        let s = Survey {
            source_snapshots: vec![snap(1, "r", V1, "snapshot", Completed, 10)],
            targets: vec![
                Held {
                    snapshots: vec![snap(4, "r", V1, "copy", Completed, 30)],
                    volumes: vec![volume(7, "r", V1, VolumeState::Available, 40)],
                },
                Held { snapshots: vec![snap(5, "r", V1, "copy", Pending, 31)], volumes: vec![] },
            ],
        };
        let found = infer(&s, FULL, 99).unwrap();
        let got: Vec<_> = found.volumes.iter().map(|v| (v.target, v.follower, v.step)).collect();
        assert_eq!(got, vec![(0, false, Step::Cleanup), (1, true, Step::WaitCopy)]);
        assert_eq!(
            found.volumes[1].source_snapshot, found.volumes[0].source_snapshot,
            "the follower knows the shared snapshot"
        );
    }

    #[test]
    fn a_later_listing_adds_what_the_first_did_not_see() {
        use SnapshotState::*;
        let mut a = Survey { source_snapshots: vec![snap(1, "r", V1, "snapshot", Pending, 10)], ..Survey::default() };
        let b = Survey {
            source_snapshots: vec![
                snap(1, "r", V1, "snapshot", Completed, 10),
                snap(2, "r", V2, "snapshot", Pending, 12),
            ],
            ..Survey::default()
        };
        a.merge(b);
        assert_eq!(a.source_snapshots.len(), 2);
        assert_eq!(a.source_snapshots[0].state, Completed);
        assert_eq!(a.newest_ms(), Some(12));
    }
}
