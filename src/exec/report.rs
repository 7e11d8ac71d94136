//! The run report: what `--format json` prints when a run ends, and what the text
//! rendering summarises. Its shape is the contract's.

use serde::Serialize;

use crate::checkpoint::{RunRecord, RunStatus};
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
                })
                .collect(),
            retention: None,
            retention_error: None,
        }
    }
}
