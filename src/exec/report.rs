//! The run report: what `--format json` prints when a run ends, and what the text
//! rendering summarises. Its shape is the contract's.

use serde::Serialize;

use crate::checkpoint::{RunRecord, RunStatus};
use crate::cloud::Volume;
use crate::engine::Step;

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
            volumes: r
                .volumes
                .iter()
                .map(|v| VolumeReport {
                    source_volume: v.source_volume.to_string(),
                    source_snapshot: v.source_snapshot.as_ref().map(|s| s.to_string()),
                    shared_snapshot: v.shared_snapshot().map(|s| s.to_string()),
                    target_snapshot: v.target_snapshot.as_ref().map(|s| s.to_string()),
                    target_volume: v.target_volume.as_ref().map(|s| s.to_string()),
                    status: match v.step {
                        Step::Done if v.fresh => "fresh",
                        Step::Done => "succeeded",
                        Step::Failed => "failed",
                        _ => "in_progress",
                    }
                    .to_owned(),
                    step: v.failure.as_ref().map(|f| f.step).unwrap_or(v.step).as_str().to_owned(),
                    error: v.failure.as_ref().map(|f| f.message.clone()),
                    hint: v.failure.as_ref().and_then(|f| f.hint.clone()),
                    next_copy: None,
                })
                .collect(),
            retention: None,
            retention_error: None,
        }
    }
}
