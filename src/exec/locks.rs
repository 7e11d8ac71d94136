//! What AWS says of the locks on a run's copies: read once per locked target at the
//! end of an invocation (one DescribeLockedSnapshots for all of its copies), so the
//! report, `status` and the metrics show each copy's lock as it is, not as it was
//! when it was asked for (a compliance lock leaves its cool-off, a lock expires, a
//! governance lock can be taken off by someone with `ec2:UnlockSnapshot`).

use std::collections::HashMap;

use crate::checkpoint::RunRecord;
use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError, Loc, LockedSnapshot};
use crate::engine::{self, Step};
use crate::ids::SnapshotId;
use crate::lock::LockSpec;

use super::retry::retrying;

/// The locks of `ids` in `dst`, by snapshot id; ids without a lock are absent.
pub async fn read(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    dst: &Loc,
    ids: &[SnapshotId],
) -> Result<HashMap<String, LockedSnapshot>, CloudError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let found = retrying(clock, || cloud.describe_locked_snapshots(dst, ids)).await?;
    Ok(found.into_iter().map(|l| (l.id.to_string(), l)).collect())
}

/// Updates each copy of a locked target with what AWS says of its lock now. Only
/// copies past their lock step (or failed at it) are asked about.
pub async fn refresh(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    dsts: &[Loc],
    locks: &[Option<LockSpec>],
    record: &mut RunRecord,
) -> Result<(), CloudError> {
    for (t, dst) in dsts.iter().enumerate() {
        if locks.get(t).is_none_or(Option::is_none) {
            continue;
        }
        let of_target: Vec<usize> = (0..record.volumes.len())
            .filter(|i| {
                let v = &record.volumes[*i];
                usize::from(v.target) == t
                    && v.target_snapshot.is_some()
                    && (v.lock.is_some() || !matches!(v.step, Step::Lock))
                    && !matches!(v.step, Step::Copy)
            })
            .collect();
        let ids: Vec<SnapshotId> =
            of_target.iter().filter_map(|i| record.volumes[*i].target_snapshot.clone()).collect();
        let found = read(cloud, clock, dst, &ids).await?;
        for i in of_target {
            let v = &record.volumes[i];
            let seen = v.target_snapshot.as_ref().and_then(|s| found.get(s.as_str()));
            if seen.is_none() && v.lock.is_none() {
                continue;
            }
            record.volumes[i] = engine::observe_lock(v, seen.map(|l| l.state), seen.and_then(|l| l.expires_ms));
        }
    }
    Ok(())
}
