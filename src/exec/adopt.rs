//! Adoption: a run rebuilt from what AWS holds under the plan's tags, for when the
//! state has no unfinished run (a fresh CI runner, a deleted state dir, another
//! machine). A lost state then costs a few listing calls, never a second copy.
//!
//! Every resource a run makes carries `snapferry:plan`, `snapferry:run`,
//! `snapferry:source-volume` and `snapferry:step`. [`survey`] lists them with
//! paginated calls (source snapshots, then per target its snapshots and volumes);
//! [`infer`] (in `adopt/infer.rs`, pure: no cloud, no clock, the time passed in)
//! groups them by run and rebuilds, per (source volume, target), the
//! furthest step whose resource exists and is not in `error`. The first target's
//! chain leads (it holds the source side); the others follow it.
//!
//! A finished chain is told from an unfinished one by what exists, with no marker
//! of its own: a chain is finished when its last resource is ready (the target
//! volume available, or with `create_volume: false` the copy completed) and, with
//! `cleanup: true`, no intermediate source snapshot is left. A run is unfinished when
//! any of its chains is. Only the newest run of the plan (by its resources' start
//! times) is a candidate: older runs were either finished or given up by a newer one.

use std::collections::BTreeMap;

use crate::clock::Clock;
use crate::cloud::{Cloud, CloudResult, Loc, Tags};
use crate::tags::TAG_PLAN;

use super::retry::retrying;

mod infer;

pub use self::infer::{Found, Held, Shape, Survey, infer, newest_chains, newest_run, rebuild_run};

/// Lists every resource tagged with the plan: source snapshots, and in each target
/// (`dsts`, the plan's order) its snapshots and volumes. Each listing is paginated by
/// the cloud.
pub async fn survey(cloud: &dyn Cloud, clock: &dyn Clock, plan: &str, src: &Loc, dsts: &[Loc]) -> CloudResult<Survey> {
    let tags: Tags = BTreeMap::from([(TAG_PLAN.to_owned(), plan.to_owned())]);
    let source_snapshots = retrying(clock, || cloud.find_snapshots(src, &tags)).await?;
    let mut targets = Vec::with_capacity(dsts.len());
    for dst in dsts {
        targets.push(Held {
            snapshots: {
                // A copy that failed verification is never adopted: it is made again.
                let mut found = retrying(clock, || cloud.find_snapshots(dst, &tags)).await?;
                found.retain(|s| !crate::verify::failed_tag(&s.tags));
                found
            },
            volumes: retrying(clock, || cloud.find_volumes(dst, &tags)).await?,
        });
    }
    Ok(Survey { source_snapshots, targets })
}
