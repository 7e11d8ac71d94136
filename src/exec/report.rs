//! The run report: what `--format json` prints when a run ends, and what the text
//! rendering summarises. Its shape is the contract's.

use serde::Serialize;

use crate::checkpoint::{RunRecord, RunStatus};
use crate::cloud::Volume;
use crate::engine::{Step, VolumeRun};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeReport {
    pub source_volume: String,
    pub source_snapshot: Option<String>,
    pub shared_snapshot: Option<String>,
    pub target_snapshot: Option<String>,
    pub target_volume: Option<String>,
    /// `succeeded`, `failed`, `fresh` (a recurring plan left it alone: its newest copy is
    /// recent, and the ids are that copy's) or `in_progress` (the run stopped before this
    /// volume ended).
    pub status: String,
    /// The step reached (or the one that failed).
    pub step: String,
    pub error: Option<String>,
    pub hint: Option<String>,
    /// Whether the volume's next copy is expected full or incremental, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_copy: Option<CopyKind>,
    /// With several targets: one entry per target, in the plan's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyReport>,
    /// The (first) copy's lock; `null` without one.
    pub lock: Option<LockReport>,
    /// What the verification of the (first) copy found (`options.verify`); `null`
    /// when it was not verified.
    pub verify: Option<crate::verify::Record>,
}

/// A copy's EBS snapshot lock as AWS last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockReport {
    /// `governance` or `compliance`.
    pub mode: &'static str,
    /// `governance`, `compliance-cooloff`, `compliance` or `expired`.
    pub state: &'static str,
    /// When the lock expires (RFC 3339, UTC); `null` while the copy is pending (the
    /// lock's duration starts at completion).
    pub expires: Option<String>,
}

impl LockReport {
    pub fn of(v: &VolumeRun) -> Option<Self> {
        v.lock.as_ref().map(|l| LockReport {
            mode: l.mode.as_str(),
            state: l.state.as_str(),
            expires: l.expires_ms.and_then(|ms| {
                jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            }),
        })
    }
}

/// One target's copy of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub account: Option<String>,
    pub region: String,
    pub target_snapshot: Option<String>,
    pub target_volume: Option<String>,
    /// `succeeded`, `failed`, `fresh` or `in_progress`, as a volume's.
    pub status: String,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The copy's lock; `null` without one.
    pub lock: Option<LockReport>,
    /// What the verification of the copy found; `null` when it was not verified.
    pub verify: Option<crate::verify::Record>,
}

/// The kind of copy a volume's next copy into the target is expected to be (EBS User
/// Guide, "Copy an Amazon EBS snapshot", incremental copies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyKind {
    pub source_volume: String,
    pub size_gib: i32,
    /// `full`, or `incremental` when AWS's conditions hold.
    pub expected: &'static str,
    pub why: String,
}

/// The expected kind of `volume`'s next copy: a volume under the source key copies
/// incrementally once a copy exists in the target; any other is re-encrypted first,
/// which makes a full copy every time.
pub fn copy_kind(volume: &Volume, source_key: &str) -> CopyKind {
    let under_source = volume.kms_key_id.as_deref() == Some(source_key);
    let (expected, why) = if under_source {
        (
            "incremental",
            "full the first time; incremental while this plan's newest copy of it still exists in the \
             target under the same key (deleting that copy, or changing target.kms_key, makes the next \
             one full)"
                .to_owned(),
        )
    } else {
        let key = if volume.encrypted { "under another key (aws/ebs or another)" } else { "unencrypted" };
        (
            "full",
            format!(
                "the volume is {key}: each snapshot is re-encrypted under source.kms_key, a full copy every \
                 time ({} GiB); move the volume to the customer managed key to make later copies incremental",
                volume.size_gib
            ),
        )
    };
    CopyKind { source_volume: volume.id.to_string(), size_gib: volume.size_gib, expected, why }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub plan: String,
    /// `succeeded`, `failed`, `interrupted` or `running`.
    pub status: RunStatus,
    pub simulated: bool,
    /// From the run's creation to its end (or to now, for a run that has not ended);
    /// virtual time under simulation.
    pub duration_seconds: i64,
    pub volumes: Vec<VolumeReport>,
    /// What `options.keep` pruned after this run, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<super::retention::Pruned>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_error: Option<String>,
}

impl RunReport {
    /// Marks a run that `--max-duration` stopped: `stopped`; its unfinished volumes are
    /// `in_progress` already.
    pub fn stopped_at_limit(&mut self) {
        self.status = RunStatus::Stopped;
    }

    pub fn from_record(r: &RunRecord) -> Self {
        RunReport {
            run_id: r.meta.run_id.clone(),
            plan: r.meta.plan.clone(),
            status: r.meta.status,
            simulated: r.meta.simulated,
            duration_seconds: (r.meta.finished_ms.unwrap_or(r.meta.updated_ms) - r.meta.created_ms).max(0) / 1000,
            volumes: volume_reports(r),
            retention: None,
            retention_error: None,
        }
    }
}

/// The status word of one volume run.
fn unit_status(v: &VolumeRun, sibling_failed: bool) -> &'static str {
    match v.step {
        Step::Done if v.fresh => "fresh",
        Step::Done => "succeeded",
        Step::Failed => "failed",
        // A lead's own copy is complete; its cleanup waits for a failed sibling's copy.
        Step::Cleanup if sibling_failed => "succeeded",
        _ => "in_progress",
    }
}

/// One report per source volume, in the run's order. A volume with several targets
/// reports its lead's source side and first copy in the flat fields, and every copy in
/// `copies`; its status is `failed` when any copy failed, `in_progress` when any is
/// unfinished, `fresh` when all were fresh, else `succeeded`.
fn volume_reports(r: &RunRecord) -> Vec<VolumeReport> {
    let targets = r.meta.targets();
    let fan_out = targets.len() > 1 || r.volumes.iter().any(|v| v.target > 0);
    // A locked single target lists its copy too, so each copy's `lock` is in `copies`
    // whatever the number of targets.
    let with_copies = fan_out || targets.iter().any(|t| t.lock.is_some());
    // Grouped in one pass, in the run's order.
    let mut order: Vec<&crate::ids::VolumeId> = vec![];
    let mut groups: std::collections::HashMap<&crate::ids::VolumeId, Vec<&VolumeRun>> = Default::default();
    for v in &r.volumes {
        let g = groups.entry(&v.source_volume).or_default();
        if g.is_empty() {
            order.push(&v.source_volume);
        }
        g.push(v);
    }
    order
        .into_iter()
        .map(|id| {
            let mut units: Vec<&VolumeRun> = groups.remove(id).unwrap_or_default();
            units.sort_by_key(|v| v.target);
            let any_failed = units.iter().any(|v| v.step == Step::Failed);
            let statuses: Vec<&str> = units.iter().map(|v| unit_status(v, any_failed)).collect();
            let status = if statuses.contains(&"failed") {
                "failed"
            } else if statuses.contains(&"in_progress") {
                "in_progress"
            } else if statuses.iter().all(|s| *s == "fresh") {
                "fresh"
            } else {
                "succeeded"
            };
            // The source side is the lead's (of the newest chain when some are fresh).
            let lead = units.iter().find(|v| !v.follower && !v.fresh).or(units.first()).copied().expect("one unit");
            let first = units[0];
            let failed = units.iter().find(|v| v.step == Step::Failed).copied();
            let copies = if with_copies {
                units
                    .iter()
                    .zip(&statuses)
                    .map(|(v, st)| {
                        let t = targets.get(usize::from(v.target));
                        CopyReport {
                            account: t.and_then(|t| t.account.as_ref().map(|a| a.to_string())),
                            region: t.map(|t| t.region.to_string()).unwrap_or_default(),
                            target_snapshot: v.target_snapshot.as_ref().map(|s| s.to_string()),
                            target_volume: v.target_volume.as_ref().map(|s| s.to_string()),
                            status: (*st).to_owned(),
                            error: v.failure.as_ref().map(|f| f.message.clone()),
                            hint: v.failure.as_ref().and_then(|f| f.hint.clone()),
                            lock: LockReport::of(v),
                            verify: v.verify.clone(),
                        }
                    })
                    .collect()
            } else {
                vec![]
            };
            let about = failed.unwrap_or(first);
            VolumeReport {
                source_volume: id.to_string(),
                source_snapshot: lead.source_snapshot.as_ref().map(|s| s.to_string()),
                shared_snapshot: lead.shared_snapshot().map(|s| s.to_string()),
                target_snapshot: first.target_snapshot.as_ref().map(|s| s.to_string()),
                target_volume: first.target_volume.as_ref().map(|s| s.to_string()),
                status: status.to_owned(),
                step: about.failure.as_ref().map(|f| f.step).unwrap_or(about.step).as_str().to_owned(),
                error: failed.and_then(|v| v.failure.as_ref()).map(|f| {
                    match (fan_out, targets.get(usize::from(failed.map(|v| v.target).unwrap_or(0)))) {
                        (true, Some(t)) => {
                            format!(
                                "copy to {} in {}: {}",
                                t.account.as_ref().map_or("?", |a| a.as_str()),
                                t.region,
                                f.message
                            )
                        }
                        _ => f.message.clone(),
                    }
                }),
                hint: failed.and_then(|v| v.failure.as_ref()).and_then(|f| f.hint.clone()),
                next_copy: None,
                copies,
                lock: LockReport::of(first),
                verify: first.verify.clone(),
            }
        })
        .collect()
}
