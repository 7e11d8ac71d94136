//! The simulated AWS: accounts, regions, volumes, snapshots, KMS keys with policies
//! and roles, in memory, on a virtual clock.
//!
//! It keeps the rules the copy depends on (see aws-facts.md), so a plan can be
//! rehearsed offline and the engine tested without a network:
//! - only snapshots under a customer managed key can be shared;
//! - a copy of another account's snapshot needs the share and a key-policy grant,
//!   else the copy is accepted and goes to `error` later with "Given key ID is not
//!   accessible", as AWS does; so does a copy under a target key that does not exist;
//! - snapshots go pending -> completed and volumes creating -> available on the
//!   virtual clock, with Progress;
//! - 20 concurrent copies per destination account and region, then
//!   ResourceLimitExceeded;
//! - CreateVolume honours ClientToken.
//!
//! Faults can be injected ([`Faults`]): throttling, snapshots invisible for a while
//! after creation, a grant that does not reach one volume's copies, and a halt after
//! N calls that freezes the caller mid-run, as a crash would.

pub mod blocks;
mod seed;
pub use seed::DEFAULT_SOURCE_ACCOUNT;
mod world;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;
use zeroize::Zeroizing;

pub use seed::seed_from_plan;
pub use world::{Faults, SNAPSHOT_LOCKED, SimLock, SimSnapshot, World};

use crate::clock::Clock;
use crate::cloud::{
    Cloud, CloudResult, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, DataKey, Identity, KeyInfo, Loc, Side,
    Snapshot, Tags, TargetAccess, Volume, WrappedKey,
};
use crate::ids::{AccountId, KeyArn, KeyRef, SnapshotId, VolumeId};

/// Who the two sides are, as the AWS adapter would learn from its config.
#[derive(Debug, Clone)]
pub struct SimSides {
    /// The account whose credentials run snapferry.
    pub source_account: AccountId,
    /// How each target's side is reached, in the plan's order.
    pub targets: Vec<TargetAccess>,
}

/// A handle on a shared simulated world with one pair of credentials.
#[derive(Clone)]
pub struct SimCloud {
    world: Arc<Mutex<World>>,
    sides: SimSides,
    halted: watch::Sender<bool>,
}

impl SimCloud {
    pub fn new(world: World, sides: SimSides) -> Self {
        SimCloud { world: Arc::new(Mutex::new(world)), sides, halted: watch::channel(false).0 }
    }

    /// A fresh handle on the same world after a halt: halting is switched off so
    /// the next run can go on.
    pub fn resume_after_halt(&self) -> Self {
        self.with_world(|w| {
            w.faults.halt_after_calls = None;
            w.halted = false;
        });
        SimCloud { world: self.world.clone(), sides: self.sides.clone(), halted: watch::channel(false).0 }
    }

    /// Runs `f` on the world (for tests and seeding).
    pub fn with_world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut w = self.world.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w)
    }

    /// Resolves when a halt fault has frozen a call.
    pub async fn halted(&self) {
        let mut rx = self.halted.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Counts the call, applies the throttling fault, runs `f`, then applies the
    /// halt fault: the call's effect stays, but the caller never hears of it.
    async fn call<T>(&self, action: &'static str, f: impl FnOnce(&mut World) -> CloudResult<T>) -> CloudResult<T> {
        // The lock is never held across an await: the outcome is settled first.
        let settled: Option<CloudResult<T>> = {
            let mut w = self.world.lock().unwrap_or_else(|p| p.into_inner());
            if w.halted {
                None
            } else {
                w.count(action);
                let result = match w.throttle(action).or_else(|| w.deny(action)) {
                    Some(e) => Err(e),
                    None => f(&mut w),
                };
                let result = match result {
                    Ok(_) if w.faults.lose_answers_of.contains(action) => Err(crate::cloud::CloudError::new(
                        crate::cloud::ErrorKind::Transport,
                        "RequestTimeout",
                        format!("{action}: no answer from AWS in time; the call may or may not have taken effect"),
                    )),
                    other => other,
                };
                if w.faults.halt_after_calls.is_some_and(|n| w.total_calls >= n) {
                    w.halted = true;
                    None
                } else {
                    Some(result)
                }
            }
        };
        match settled {
            Some(result) => {
                // Let other tasks run between calls, as a network round trip would.
                tokio::task::yield_now().await;
                result
            }
            None => {
                self.halted.send_replace(true);
                std::future::pending().await
            }
        }
    }

    fn account(&self, w: &World, side: Side) -> CloudResult<AccountId> {
        match side {
            Side::Source => Ok(self.sides.source_account.clone()),
            Side::Target(i) => match self.sides.targets.get(usize::from(i)).map(|t| (&t.role, &t.external_id)) {
                None | Some((None, _)) => Ok(self.sides.source_account.clone()),
                Some((Some(role), external_id)) => w.assume(role, &self.sides.source_account, external_id.as_deref()),
            },
        }
    }
}

#[async_trait]
impl Clock for SimCloud {
    fn now_ms(&self) -> i64 {
        self.with_world(|w| w.now_ms)
    }

    async fn sleep_until(&self, t_ms: i64) {
        self.with_world(|w| w.now_ms = w.now_ms.max(t_ms));
        tokio::task::yield_now().await;
    }

    fn is_virtual(&self) -> bool {
        true
    }
}

#[async_trait]
impl Cloud for SimCloud {
    async fn caller_identity(&self, side: Side) -> CloudResult<Identity> {
        self.call("sts:GetCallerIdentity", |w| {
            let account = self.account(w, side)?;
            let role = match side {
                Side::Target(i) => self.sides.targets.get(usize::from(i)).and_then(|t| t.role.as_ref()),
                Side::Source => None,
            };
            let arn = match role {
                Some(role) => {
                    let name = role.as_str().rsplit('/').next().unwrap_or("role");
                    format!("arn:aws:sts::{account}:assumed-role/{name}/snapferry")
                }
                _ => format!("arn:aws:iam::{account}:user/snapferry"),
            };
            Ok(Identity { account, arn })
        })
        .await
    }

    async fn describe_key(&self, loc: &Loc, key: &KeyRef) -> CloudResult<KeyInfo> {
        self.call("kms:DescribeKey", |w| {
            let acct = self.account(w, loc.side)?;
            w.describe_key(&acct, &loc.region, key)
        })
        .await
    }

    async fn get_key_policy(&self, loc: &Loc, key: &KeyArn) -> CloudResult<String> {
        self.call("kms:GetKeyPolicy", |w| {
            let acct = self.account(w, loc.side)?;
            w.key_own(&acct, key).map(|k| k.policy.clone())
        })
        .await
    }

    async fn put_key_policy(&self, loc: &Loc, key: &KeyArn, policy: &str) -> CloudResult<()> {
        self.call("kms:PutKeyPolicy", |w| {
            let acct = self.account(w, loc.side)?;
            w.put_key_policy(&acct, key, policy)
        })
        .await
    }

    async fn describe_volumes(&self, loc: &Loc, ids: &[VolumeId]) -> CloudResult<Vec<Volume>> {
        self.call("ec2:DescribeVolumes", |w| {
            let acct = self.account(w, loc.side)?;
            Ok(w.volumes_by_ids(&acct, &loc.region, ids))
        })
        .await
    }

    async fn find_volumes(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Volume>> {
        self.call("ec2:DescribeVolumes", |w| {
            let acct = self.account(w, loc.side)?;
            w.lookup_fault()?;
            Ok(w.describe_volumes(&acct, &loc.region, |v| world::has_tags(&v.tags, tags)))
        })
        .await
    }

    async fn create_volume(&self, loc: &Loc, req: &CreateVolumeReq) -> CloudResult<VolumeId> {
        self.call("ec2:CreateVolume", |w| {
            let acct = self.account(w, loc.side)?;
            w.create_volume(&acct, &loc.region, req)
        })
        .await
    }

    async fn delete_volume(&self, loc: &Loc, id: &VolumeId) -> CloudResult<()> {
        self.call("ec2:DeleteVolume", |w| {
            let acct = self.account(w, loc.side)?;
            w.delete_volume(&acct, &loc.region, id)
        })
        .await
    }

    async fn create_snapshot(&self, loc: &Loc, req: &CreateSnapshotReq) -> CloudResult<Snapshot> {
        self.call("ec2:CreateSnapshot", |w| {
            let acct = self.account(w, loc.side)?;
            w.create_snapshot(&acct, &loc.region, req)
        })
        .await
    }

    async fn copy_snapshot(&self, loc: &Loc, req: &CopySnapshotReq) -> CloudResult<SnapshotId> {
        self.call("ec2:CopySnapshot", |w| {
            let acct = self.account(w, loc.side)?;
            w.copy_snapshot(&acct, &loc.region, req)
        })
        .await
    }

    async fn describe_snapshots(&self, loc: &Loc, ids: &[SnapshotId]) -> CloudResult<Vec<Snapshot>> {
        self.call("ec2:DescribeSnapshots", |w| {
            let acct = self.account(w, loc.side)?;
            Ok(w.snapshots_by_ids(&acct, &loc.region, ids))
        })
        .await
    }

    async fn find_snapshots(&self, loc: &Loc, tags: &Tags) -> CloudResult<Vec<Snapshot>> {
        self.call("ec2:DescribeSnapshots", |w| {
            let acct = self.account(w, loc.side)?;
            w.lookup_fault()?;
            Ok(w.describe_snapshots(&acct, &loc.region, |s| world::has_tags(&s.tags, tags)))
        })
        .await
    }

    async fn delete_snapshot(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<()> {
        self.call("ec2:DeleteSnapshot", |w| {
            let acct = self.account(w, loc.side)?;
            w.delete_snapshot(&acct, &loc.region, id)
        })
        .await
    }

    async fn lock_snapshot(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        spec: &crate::lock::LockSpec,
    ) -> CloudResult<crate::cloud::LockedSnapshot> {
        self.call("ec2:LockSnapshot", |w| {
            let acct = self.account(w, loc.side)?;
            w.lock_snapshot(&acct, &loc.region, id, spec)
        })
        .await
    }

    async fn describe_locked_snapshots(
        &self,
        loc: &Loc,
        ids: &[SnapshotId],
    ) -> CloudResult<Vec<crate::cloud::LockedSnapshot>> {
        self.call("ec2:DescribeLockedSnapshots", |w| {
            let acct = self.account(w, loc.side)?;
            Ok(w.locked_snapshots(&acct, &loc.region, ids))
        })
        .await
    }

    async fn share_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()> {
        self.call("ec2:ModifySnapshotAttribute", |w| {
            let acct = self.account(w, loc.side)?;
            with.iter().try_for_each(|a| w.set_share(&acct, &loc.region, id, a, true))
        })
        .await
    }

    async fn unshare_snapshot(&self, loc: &Loc, id: &SnapshotId, with: &[AccountId]) -> CloudResult<()> {
        self.call("ec2:ModifySnapshotAttribute", |w| {
            let acct = self.account(w, loc.side)?;
            with.iter().try_for_each(|a| w.set_share(&acct, &loc.region, id, a, false))
        })
        .await
    }

    async fn snapshot_shared_with(&self, loc: &Loc, id: &SnapshotId) -> CloudResult<Vec<AccountId>> {
        self.call("ec2:DescribeSnapshotAttribute", |w| {
            let acct = self.account(w, loc.side)?;
            w.shared_with(&acct, &loc.region, id)
        })
        .await
    }

    async fn dry_run(&self, loc: &Loc, probe: &crate::cloud::Probe) -> CloudResult<()> {
        // The simulated AWS models no IAM: every probe would succeed.
        // The simulated AWS models IAM only through the `denied` fault.
        self.call("ec2:DryRun", |w| {
            self.account(w, loc.side)?;
            match w.deny(probe.action()) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
        .await
    }

    async fn generate_data_key(
        &self,
        loc: &Loc,
        key: &KeyRef,
        context: &crate::cloud::EncryptionContext,
    ) -> CloudResult<DataKey> {
        self.call("kms:GenerateDataKey", |w| {
            let acct = self.account(w, loc.side)?;
            let (plaintext, ciphertext, key_arn) = w.generate_data_key(&acct, &loc.region, key, context)?;
            Ok(DataKey { plaintext, ciphertext, key_arn })
        })
        .await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        loc: &Loc,
        key: &KeyRef,
        context: &crate::cloud::EncryptionContext,
    ) -> CloudResult<WrappedKey> {
        self.call("kms:GenerateDataKeyWithoutPlaintext", |w| {
            let acct = self.account(w, loc.side)?;
            let (_, ciphertext, key_arn) = w.generate_data_key(&acct, &loc.region, key, context)?;
            Ok(WrappedKey { ciphertext, key_arn })
        })
        .await
    }

    async fn decrypt(
        &self,
        loc: &Loc,
        req: &crate::cloud::DecryptReq<'_>,
    ) -> CloudResult<(Zeroizing<Vec<u8>>, KeyArn)> {
        self.call("kms:Decrypt", |w| {
            let acct = self.account(w, loc.side)?;
            w.decrypt(&acct, &loc.region, req)
        })
        .await
    }

    async fn generate_random(&self, _loc: &Loc, bytes: u32) -> CloudResult<Vec<u8>> {
        self.call("kms:GenerateRandom", |_| {
            let mut out = vec![0u8; bytes as usize];
            aws_lc_rs::rand::fill(&mut out).map_err(|_| {
                crate::cloud::CloudError::new(crate::cloud::ErrorKind::Other, "InternalError", "no randomness")
            })?;
            Ok(out)
        })
        .await
    }

    async fn tag_snapshot(&self, loc: &Loc, id: &SnapshotId, tags: &Tags) -> CloudResult<()> {
        self.call("ec2:CreateTags", |w| {
            let acct = self.account(w, loc.side)?;
            w.tag_snapshot(&acct, &loc.region, id, tags)
        })
        .await
    }

    async fn list_snapshot_blocks(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        start: Option<u64>,
        next_token: Option<&str>,
        max_results: u32,
    ) -> CloudResult<crate::cloud::BlockPage> {
        self.call("ebs:ListSnapshotBlocks", |w| {
            let acct = self.account(w, loc.side)?;
            w.list_snapshot_blocks(&acct, &loc.region, id, start, next_token, max_results)
        })
        .await
    }

    async fn get_snapshot_block(
        &self,
        loc: &Loc,
        id: &SnapshotId,
        index: u64,
        token: &str,
    ) -> CloudResult<crate::cloud::BlockChecksum> {
        self.call("ebs:GetSnapshotBlock", |w| {
            let acct = self.account(w, loc.side)?;
            w.get_snapshot_block(&acct, &loc.region, id, index, token)
        })
        .await
    }
}
