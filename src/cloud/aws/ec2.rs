//! The EC2 calls: volumes, snapshots, their copies and who they are shared with.

use std::future::Future;

use aws_config::retry::RetryConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{LockMode, OperationType, ResourceType, SnapshotAttributeName, VolumeType};

use super::convert::{self, ids_in_message, tag_filters, tag_spec};
use super::error::{bad_answer, from_sdk};
use crate::cloud::{
    CloudError, CloudResult, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, ErrorKind, LockedSnapshot, Snapshot,
    Tags, Volume,
};
use crate::ids::{AccountId, SnapshotId, VolumeId};
use crate::lock::{LockSpec, LockState};

/// DescribeSnapshots takes at most 1,000 snapshot ids per call (EC2 API reference,
/// DescribeSnapshots). DescribeVolumes documents no such bound; the same size keeps
/// its query string well within limits.
const MAX_IDS_PER_CALL: usize = 1000;

/// Page size for filtered listings: the largest DescribeVolumes accepts (500) keeps
/// the number of calls, and so throttling, low (EC2 API reference, MaxResults).
const VOLUME_PAGE: i32 = 500;
/// The largest page DescribeSnapshots accepts (EC2 API reference, MaxResults).
const SNAPSHOT_PAGE: i32 = 1000;

/// Config for calls that are not idempotent and have no ClientToken (CreateSnapshot,
/// CopySnapshot): the SDK must not resend one whose answer was lost, or a second
/// snapshot appears. The runner sees the transport error, looks the snapshot up by
/// its tags, and only then sends again.
fn no_retries() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled())
}

pub(crate) async fn describe_volumes(client: &Client, ids: &[VolumeId]) -> CloudResult<Vec<Volume>> {
    const ACTION: &str = "ec2:DescribeVolumes";
    let ids = ids.iter().map(|i| i.as_str().to_owned()).collect();
    describe_by_ids(ids, "vol-", "InvalidVolume.NotFound", |batch| async move {
        let out =
            client.describe_volumes().set_volume_ids(Some(batch)).send().await.map_err(|e| from_sdk(ACTION, e))?;
        out.volumes.unwrap_or_default().into_iter().map(|v| convert::volume(ACTION, v)).collect()
    })
    .await
}

pub(crate) async fn find_volumes(client: &Client, tags: &Tags) -> CloudResult<Vec<Volume>> {
    const ACTION: &str = "ec2:DescribeVolumes";
    let mut pages =
        client.describe_volumes().set_filters(Some(tag_filters(tags))).max_results(VOLUME_PAGE).into_paginator().send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| from_sdk(ACTION, e))?;
        for v in page.volumes.unwrap_or_default() {
            out.push(convert::volume(ACTION, v)?);
        }
    }
    Ok(out)
}

pub(crate) async fn create_volume(client: &Client, req: &CreateVolumeReq) -> CloudResult<VolumeId> {
    const ACTION: &str = "ec2:CreateVolume";
    let out = client
        .create_volume()
        // Same token and parameters return the first volume: a resumed run that
        // lost the answer gets the volume it already made.
        .client_token(&req.client_token)
        .snapshot_id(req.snapshot.as_str())
        .availability_zone(req.availability_zone.as_str())
        .encrypted(true)
        .kms_key_id(req.kms_key.as_str())
        .set_volume_type(req.volume_type.as_deref().map(VolumeType::from))
        .set_iops(req.iops.map(to_i32).transpose()?)
        .set_throughput(req.throughput.map(to_i32).transpose()?)
        .set_tag_specifications(tag_spec(ResourceType::Volume, &req.tags))
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    let id = out.volume_id.unwrap_or_default();
    VolumeId::parse(&id).map_err(|_| bad_answer(ACTION, &format!("volume id {id:?}")))
}

fn to_i32(n: u32) -> CloudResult<i32> {
    i32::try_from(n)
        .map_err(|_| CloudError::new(ErrorKind::Invalid, "InvalidParameterValue", format!("{n} is out of range")))
}

pub(crate) async fn delete_volume(client: &Client, id: &VolumeId) -> CloudResult<()> {
    client.delete_volume().volume_id(id.as_str()).send().await.map_err(|e| from_sdk("ec2:DeleteVolume", e))?;
    Ok(())
}

pub(crate) async fn create_snapshot(client: &Client, req: &CreateSnapshotReq) -> CloudResult<Snapshot> {
    const ACTION: &str = "ec2:CreateSnapshot";
    let out = client
        .create_snapshot()
        .volume_id(req.volume.as_str())
        .description(&req.description)
        // Tagged at creation, atomically: a run resumed after a crash finds the
        // snapshot by these tags (CreateSnapshot has no ClientToken).
        .set_tag_specifications(tag_spec(ResourceType::Snapshot, &req.tags))
        .customize()
        .config_override(no_retries())
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    // CreateSnapshot answers with the snapshot itself; reuse the one conversion.
    let snap = aws_sdk_ec2::types::Snapshot::builder()
        .set_snapshot_id(out.snapshot_id)
        .set_volume_id(out.volume_id)
        .set_owner_id(out.owner_id)
        .set_state(out.state)
        .set_progress(out.progress)
        .set_state_message(out.state_message)
        .set_encrypted(out.encrypted)
        .set_kms_key_id(out.kms_key_id)
        .set_volume_size(out.volume_size)
        .set_tags(out.tags)
        .set_start_time(out.start_time)
        .build();
    convert::snapshot(ACTION, snap)
}

pub(crate) async fn copy_snapshot(client: &Client, req: &CopySnapshotReq) -> CloudResult<SnapshotId> {
    const ACTION: &str = "ec2:CopySnapshot";
    let out = client
        .copy_snapshot()
        .source_region(req.source_region.as_str())
        .source_snapshot_id(req.source_snapshot.as_str())
        .encrypted(true)
        .kms_key_id(req.kms_key.as_str())
        .description(&req.description)
        .set_completion_duration_minutes(req.completion_minutes.map(|m| m as i32))
        // Tags are not copied from the source snapshot; these are how a resumed run
        // finds the copy.
        .set_tag_specifications(tag_spec(ResourceType::Snapshot, &req.tags))
        .customize()
        .config_override(no_retries())
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    let id = out.snapshot_id.unwrap_or_default();
    SnapshotId::parse(&id).map_err(|_| bad_answer(ACTION, &format!("snapshot id {id:?}")))
}

pub(crate) async fn describe_snapshots(client: &Client, ids: &[SnapshotId]) -> CloudResult<Vec<Snapshot>> {
    const ACTION: &str = "ec2:DescribeSnapshots";
    let ids = ids.iter().map(|i| i.as_str().to_owned()).collect();
    describe_by_ids(ids, "snap-", "InvalidSnapshot.NotFound", |batch| async move {
        let out =
            client.describe_snapshots().set_snapshot_ids(Some(batch)).send().await.map_err(|e| from_sdk(ACTION, e))?;
        out.snapshots.unwrap_or_default().into_iter().map(|s| convert::snapshot(ACTION, s)).collect()
    })
    .await
}

pub(crate) async fn find_snapshots(client: &Client, tags: &Tags) -> CloudResult<Vec<Snapshot>> {
    const ACTION: &str = "ec2:DescribeSnapshots";
    let mut pages = client
        .describe_snapshots()
        // Only the caller's own: snapshots shared with the account carry no tags of
        // its runs, and listing public snapshots would be slow and pointless.
        .owner_ids("self")
        .set_filters(Some(tag_filters(tags)))
        .max_results(SNAPSHOT_PAGE)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| from_sdk(ACTION, e))?;
        for s in page.snapshots.unwrap_or_default() {
            out.push(convert::snapshot(ACTION, s)?);
        }
    }
    Ok(out)
}

pub(crate) async fn delete_snapshot(client: &Client, id: &SnapshotId) -> CloudResult<()> {
    client.delete_snapshot().snapshot_id(id.as_str()).send().await.map_err(|e| from_sdk("ec2:DeleteSnapshot", e))?;
    Ok(())
}

/// DescribeLockedSnapshots pages: the largest it accepts (EC2 API reference,
/// DescribeLockedSnapshots MaxResults, 5 to 1,000).
const LOCKED_PAGE: i32 = 1000;

fn lock_state(action: &str, state: Option<&aws_sdk_ec2::types::LockState>) -> CloudResult<LockState> {
    let s = state.map(|s| s.as_str()).unwrap_or_default();
    LockState::parse(s).ok_or_else(|| bad_answer(action, &format!("lock state {s:?}")))
}

/// CreateTags on one snapshot.
pub(crate) async fn tag_snapshot(client: &Client, id: &SnapshotId, tags: &crate::cloud::Tags) -> CloudResult<()> {
    client
        .create_tags()
        .resources(id.as_str())
        .set_tags(Some(convert::to_sdk_tags(tags)))
        .send()
        .await
        .map_err(|e| from_sdk("ec2:CreateTags", e))?;
    Ok(())
}

pub(crate) async fn lock_snapshot(client: &Client, id: &SnapshotId, spec: &LockSpec) -> CloudResult<LockedSnapshot> {
    const ACTION: &str = "ec2:LockSnapshot";
    let mode = match spec.mode {
        crate::lock::LockMode::Governance => LockMode::Governance,
        crate::lock::LockMode::Compliance => LockMode::Compliance,
    };
    let out = client
        .lock_snapshot()
        .snapshot_id(id.as_str())
        .lock_mode(mode)
        .lock_duration(spec.duration_days as i32)
        .set_cool_off_period(spec.cool_off_hours.map(|h| h as i32))
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    Ok(LockedSnapshot {
        id: id.clone(),
        state: lock_state(ACTION, out.lock_state())?,
        expires_ms: convert::millis(out.lock_expires_on()),
    })
}

pub(crate) async fn describe_locked_snapshots(client: &Client, ids: &[SnapshotId]) -> CloudResult<Vec<LockedSnapshot>> {
    const ACTION: &str = "ec2:DescribeLockedSnapshots";
    let mut out = Vec::new();
    for batch in ids.chunks(MAX_IDS_PER_CALL) {
        let mut token: Option<String> = None;
        // Bounded: each page answers at most LOCKED_PAGE of the batch's ids.
        for _ in 0..=batch.len() / LOCKED_PAGE as usize + 1 {
            let page = client
                .describe_locked_snapshots()
                .set_snapshot_ids(Some(batch.iter().map(|i| i.as_str().to_owned()).collect()))
                .max_results(LOCKED_PAGE)
                .set_next_token(token.take())
                .send()
                .await;
            let page = match page {
                Err(e) => match from_sdk(ACTION, e) {
                    // An id that does not exist (deleted outside snapferry) has no lock.
                    e if e.kind == ErrorKind::NotFound && batch.len() == 1 => break,
                    // Which one is not said reliably: ask for each on its own.
                    e if e.kind == ErrorKind::NotFound => {
                        for id in batch {
                            out.extend(Box::pin(describe_locked_snapshots(client, std::slice::from_ref(id))).await?);
                        }
                        break;
                    }
                    e => return Err(e),
                },
                Ok(p) => p,
            };
            for s in page.snapshots.unwrap_or_default() {
                let Some(id) = s.snapshot_id().and_then(|i| SnapshotId::parse(i).ok()) else { continue };
                out.push(LockedSnapshot {
                    id,
                    state: lock_state(ACTION, s.lock_state())?,
                    expires_ms: convert::millis(s.lock_expires_on()),
                });
            }
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Adds or removes one account's createVolumePermission. Always by account id: the
/// group `all` would make the snapshot public.
pub(crate) async fn set_shared(client: &Client, id: &SnapshotId, with: &[AccountId], add: bool) -> CloudResult<()> {
    if with.is_empty() {
        return Ok(());
    }
    client
        .modify_snapshot_attribute()
        .snapshot_id(id.as_str())
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(if add { OperationType::Add } else { OperationType::Remove })
        .set_user_ids(Some(with.iter().map(|a| a.as_str().to_owned()).collect()))
        .send()
        .await
        .map_err(|e| from_sdk("ec2:ModifySnapshotAttribute", e))?;
    Ok(())
}

/// The accounts a snapshot is shared with. A group permission (public) is not an
/// account and is not listed.
pub(crate) async fn shared_with(client: &Client, id: &SnapshotId) -> CloudResult<Vec<AccountId>> {
    const ACTION: &str = "ec2:DescribeSnapshotAttribute";
    let out = client
        .describe_snapshot_attribute()
        .snapshot_id(id.as_str())
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    out.create_volume_permissions
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.user_id)
        .map(|u| AccountId::parse(&u).map_err(|_| bad_answer(ACTION, &format!("account id {u:?}"))))
        .collect()
}

/// Describes resources by id, leaving out the ones that do not exist.
///
/// EC2 fails the whole call with `not_found_code` when any id is missing, naming the
/// missing ids in the message: the call is repeated without them. When the message
/// names none of the ids asked for, or all of them, the batch is split in halves
/// until the missing ones are isolated. Each call either answers, drops at least one id or halves a
/// batch, so the number of calls is bounded by about three per id.
async fn describe_by_ids<T, F, Fut>(
    ids: Vec<String>,
    prefix: &str,
    not_found_code: &str,
    mut fetch: F,
) -> CloudResult<Vec<T>>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = CloudResult<Vec<T>>>,
{
    let mut queue: Vec<Vec<String>> = ids.chunks(MAX_IDS_PER_CALL).map(<[String]>::to_vec).collect();
    let max_calls = 3 * ids.len() + queue.len();
    let mut calls = 0;
    let mut out = Vec::new();
    while let Some(batch) = queue.pop() {
        if batch.is_empty() {
            continue;
        }
        calls += 1;
        if calls > max_calls {
            // Unreachable by the argument above; a guard against an endpoint that
            // answers in a way it does not expect.
            return Err(CloudError::new(
                ErrorKind::Other,
                not_found_code,
                format!("could not tell which of {} ids exist", ids.len()),
            ));
        }
        match fetch(batch.clone()).await {
            Ok(found) => out.extend(found),
            Err(e) if e.code.as_deref() == Some(not_found_code) => {
                let missing = ids_in_message(&e.message, prefix);
                let rest: Vec<String> = batch.iter().filter(|id| !missing.contains(id)).cloned().collect();
                // Trusted only when it names some but not all of the batch: some
                // emulators name every id asked for, or none.
                if !rest.is_empty() && rest.len() < batch.len() {
                    queue.push(rest);
                } else if batch.len() > 1 {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push(first);
                    queue.push(second);
                }
                // else: a single id that does not exist; leave it out.
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Sends `probe` with `DryRun=true`. AWS answers DryRunOperation when the call would
/// have succeeded and UnauthorizedOperation when a permission is missing; nothing is
/// created either way.
pub(crate) async fn dry_run(client: &Client, probe: &crate::cloud::Probe) -> CloudResult<()> {
    use crate::cloud::Probe;
    let action = probe.action();
    let result = match probe {
        Probe::CreateSnapshot { volume } => client
            .create_snapshot()
            .dry_run(true)
            .volume_id(volume.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| from_sdk(action, e)),
        Probe::CreateVolume { availability_zone, kms_key } => client
            .create_volume()
            .dry_run(true)
            .availability_zone(availability_zone.as_str())
            .size(1)
            .encrypted(true)
            .kms_key_id(kms_key.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| from_sdk(action, e)),
    };
    match result {
        Err(e) if e.code.as_deref() == Some("DryRunOperation") => Ok(()),
        // An answer without an error means the emulator ignored DryRun: nothing to learn.
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;

    /// A fake DescribeSnapshots over `existing`, failing like EC2 does; `named`
    /// decides whether the failure message names the missing ids.
    async fn run(asked: &[&str], existing: &[&str], named: bool) -> (Vec<String>, usize) {
        let existing: BTreeSet<String> = existing.iter().map(|s| s.to_string()).collect();
        let calls = Mutex::new(0);
        let ids = asked.iter().map(|s| s.to_string()).collect();
        let found = describe_by_ids(ids, "snap-", "InvalidSnapshot.NotFound", |batch| {
            *calls.lock().unwrap() += 1;
            let missing: Vec<String> = batch.iter().filter(|id| !existing.contains(*id)).cloned().collect();
            async move {
                if missing.is_empty() {
                    Ok(batch)
                } else {
                    let msg = if named {
                        format!("The snapshot '{}' does not exist.", missing.join(","))
                    } else {
                        "The snapshot ID does not exist.".to_owned()
                    };
                    Err(CloudError::new(ErrorKind::NotFound, "InvalidSnapshot.NotFound", msg))
                }
            }
        })
        .await
        .unwrap();
        let mut found = found;
        found.sort();
        (found, calls.into_inner().unwrap())
    }

    #[tokio::test]
    async fn missing_ids_named_in_the_message_are_dropped_and_asked_again() {
        let (found, calls) = run(&["snap-1", "snap-2", "snap-3"], &["snap-1", "snap-3"], true).await;
        assert_eq!(found, ["snap-1", "snap-3"]);
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn unnamed_missing_ids_are_isolated_by_halving() {
        let (found, calls) =
            run(&["snap-1", "snap-2", "snap-3", "snap-4", "snap-5"], &["snap-2", "snap-5"], false).await;
        assert_eq!(found, ["snap-2", "snap-5"]);
        assert!(calls <= 3 * 5 + 1, "{calls}");
        let (found, _) = run(&["snap-1"], &[], false).await;
        assert!(found.is_empty());
    }

    #[tokio::test]
    async fn a_message_naming_every_id_is_not_trusted() {
        let existing = ["snap-2"];
        let asked = vec!["snap-1".to_owned(), "snap-2".to_owned()];
        let found = describe_by_ids(asked, "snap-", "InvalidSnapshot.NotFound", |batch| async move {
            if batch.iter().all(|id| existing.contains(&id.as_str())) {
                Ok(batch)
            } else {
                let msg = format!("The snapshot '{}' does not exist.", batch.join(","));
                Err(CloudError::new(ErrorKind::NotFound, "InvalidSnapshot.NotFound", msg))
            }
        })
        .await
        .unwrap();
        assert_eq!(found, ["snap-2"]);
    }

    #[tokio::test]
    async fn many_ids_are_asked_in_chunks_of_a_thousand() {
        let asked: Vec<String> = (0..2500).map(|i| format!("snap-{i:08x}")).collect();
        let asked_ref: Vec<&str> = asked.iter().map(String::as_str).collect();
        let (found, calls) = run(&asked_ref, &asked_ref, true).await;
        assert_eq!(found.len(), 2500);
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn other_errors_are_returned() {
        let r: CloudResult<Vec<String>> =
            describe_by_ids(vec!["snap-1".into()], "snap-", "InvalidSnapshot.NotFound", |_| async {
                Err(CloudError::new(ErrorKind::AccessDenied, "UnauthorizedOperation", "no"))
            })
            .await;
        assert_eq!(r.unwrap_err().kind, ErrorKind::AccessDenied);
    }
}
