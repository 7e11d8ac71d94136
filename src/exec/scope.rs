//! The scope of one invocation of a run: everything derived from the plan and from
//! what preflight resolved, built once after preflight and handed to every phase.
//! The contexts the other parts take are derived from it, each by one function: the
//! step machine's [`Ctx`], the actions' [`ActCtx`] and the checkpoint's [`RunMeta`].

use std::sync::Arc;

use crate::checkpoint::{RunMeta, TargetMeta};
use crate::cloud::{Loc, Side};
use crate::engine::{Ctx, TimeoutsMs};
use crate::ids::{AccountId, VolumeId};
use crate::plan::Plan;

use super::act::{ActCtx, TargetCtx};
use super::adopt::Shape;
use super::preflight::Resolved;

/// One invocation's plan, what preflight learnt, and what follows from the two.
pub struct RunScope<'a> {
    pub plan: &'a Plan,
    pub resolved: Resolved,
    /// Where the source side's calls go.
    pub src: Loc,
    /// Where each target's calls go, in the plan's order.
    pub dsts: Vec<Loc>,
    /// What the plan asks of a chain, for adoption to tell finished from unfinished.
    pub shape: Shape,
    /// The accounts snapshots are shared with and the key policy grants.
    pub share_with: Vec<AccountId>,
    /// What the checkpoint keeps of each target, in the plan's order.
    pub targets: Vec<TargetMeta>,
    /// The step machine's view of the plan.
    pub engine: Ctx,
    /// Verified copies pace their EBS direct API requests (not on virtual time).
    paced: bool,
}

impl<'a> RunScope<'a> {
    /// The scope of `plan` once preflight resolved it; `paced` on the wall clock.
    pub fn new(plan: &'a Plan, resolved: Resolved, paced: bool) -> Self {
        let targets = target_metas(plan, &resolved);
        let engine = Ctx {
            cross_account: resolved.cross_account,
            source_key: resolved.source_key.arn.clone(),
            create_volume: plan.options.create_volume,
            cleanup: plan.options.cleanup,
            keep_source: plan.options.keep_source > 0,
            timeouts_ms: TimeoutsMs {
                snapshot: plan.options.timeouts.snapshot.as_millis() as i64,
                copy: plan.options.timeouts.copy.as_millis() as i64,
                volume: plan.options.timeouts.volume.as_millis() as i64,
            },
            locks: plan.targets.iter().map(|t| t.lock).collect(),
            verify: plan.options.verify,
        };
        RunScope {
            src: Loc::new(Side::Source, &plan.source.region),
            dsts: target_locs(plan),
            shape: shape(plan),
            share_with: resolved.share_with(),
            targets,
            engine,
            plan,
            resolved,
            paced,
        }
    }

    /// What every action of run `run_id` needs to know.
    pub fn act(&self, run_id: &str) -> ActCtx {
        let plan = self.plan;
        ActCtx {
            plan: plan.name.to_string(),
            run_id: run_id.to_owned(),
            source_region: plan.source.region.clone(),
            source_key: self.resolved.source_key.arn.clone(),
            share_with: self.share_with.clone(),
            targets: plan
                .targets
                .iter()
                .zip(&self.resolved.targets)
                .map(|(t, r)| TargetCtx {
                    region: t.region.clone(),
                    account: r.account.clone(),
                    key: r.key.arn.clone(),
                    availability_zone: t.availability_zone.clone(),
                    lock: t.lock,
                })
                .collect(),
            extra_tags: plan.options.tags.clone(),
            copy_within_minutes: plan.options.copy_within.map(|c| c.minutes()),
            verify: plan.options.verify,
            pacer: self.paced.then(|| Arc::new(super::verify::Pacer::default())),
        }
    }

    /// The meta of a new run `run_id` of this plan, begun at `created_ms`.
    pub fn meta(&self, run_id: String, plan_file: String, simulated: bool, created_ms: i64) -> RunMeta {
        let plan = self.plan;
        let mut meta =
            RunMeta::new(run_id, plan.name.to_string(), plan.source.region.clone(), self.targets.clone(), created_ms);
        meta.plan_file = plan_file;
        meta.simulated = simulated;
        self.stamp(&mut meta);
        meta
    }

    /// Records on a run's meta (new or resumed) what this invocation resolved: the
    /// source account and key, the targets, and `every`.
    pub fn stamp(&self, meta: &mut RunMeta) {
        meta.source_account = Some(self.resolved.source_identity.account.clone());
        meta.source_key_arn = Some(self.resolved.source_key.arn.clone());
        meta.set_targets(self.targets.clone());
        meta.every_ms = self.plan.options.every.map(|d| d.as_millis() as i64);
    }

    /// The volumes preflight found, then the listed ones a recurring plan no longer
    /// finds, in preflight's order.
    pub fn volume_ids(&self) -> impl Iterator<Item = &VolumeId> {
        self.resolved.volumes.iter().map(|sv| &sv.volume.id).chain(&self.resolved.missing)
    }

    /// The caller's account: the slot of re-encryption copies.
    pub fn source_account(&self) -> &AccountId {
        &self.resolved.source_identity.account
    }
}

/// What `plan` asks of a chain.
pub fn shape(plan: &Plan) -> Shape {
    Shape {
        create_volume: plan.options.create_volume,
        cleanup: plan.options.cleanup,
        verify: plan.options.verify.is_some(),
    }
}

/// Where each target's calls go, in the plan's order.
pub fn target_locs(plan: &Plan) -> Vec<Loc> {
    plan.targets.iter().enumerate().map(|(i, t)| Loc::new(Side::Target(i as u8), &t.region)).collect()
}

/// What the checkpoint keeps of each target.
fn target_metas(plan: &Plan, resolved: &Resolved) -> Vec<TargetMeta> {
    plan.targets
        .iter()
        .zip(&resolved.targets)
        .map(|(t, r)| TargetMeta {
            account: Some(r.account.clone()),
            region: t.region.clone(),
            key_arn: Some(r.key.arn.clone()),
            cross_account: r.cross_account,
            role_arn: t.role_arn.clone().filter(|_| r.cross_account),
            external_id: t.external_id.clone().filter(|_| r.cross_account),
            lock: t.lock.map(|l| l.mode.to_string()),
        })
        .collect()
}
