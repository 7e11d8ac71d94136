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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::RunStatus;
    use crate::cloud::{Identity, KeyInfo, KeyManager};
    use crate::exec::preflight::ResolvedTarget;
    use crate::ids::KeyArn;

    const PLAN: &str = r#"
version: 1
name: two-places
source:
  region: us-east-1
  kms_key: alias/share
targets:
  - region: eu-west-1
    account: "222222222222"
    role_arn: arn:aws:iam::222222222222:role/dr
    external_id: ext-dr
    kms_key: alias/dr
    availability_zone: eu-west-1a
    lock: {mode: governance, duration: 7d}
  - region: us-west-2
    kms_key: alias/vault
    availability_zone: us-west-2b
volumes:
  - id: vol-0123456789abcdef0
options:
  every: 1d
"#;

    fn key(region: &str, account: &str) -> KeyInfo {
        KeyInfo {
            arn: KeyArn::parse(&format!("arn:aws:kms:{region}:{account}:key/11111111-2222-3333-4444-555555555555"))
                .unwrap(),
            account: AccountId::parse(account).unwrap(),
            enabled: true,
            spec: "SYMMETRIC_DEFAULT".into(),
            manager: KeyManager::Customer,
        }
    }

    fn resolved() -> Resolved {
        let source = AccountId::parse("111111111111").unwrap();
        let dr = AccountId::parse("222222222222").unwrap();
        Resolved {
            source_identity: Identity { account: source.clone(), arn: "arn:aws:iam::111111111111:user/ops".into() },
            cross_account: true,
            source_key: key("us-east-1", "111111111111"),
            targets: vec![
                ResolvedTarget {
                    identity: None,
                    account: dr,
                    cross_account: true,
                    key: key("eu-west-1", "222222222222"),
                },
                ResolvedTarget {
                    identity: None,
                    account: source,
                    cross_account: false,
                    key: key("us-west-2", "111111111111"),
                },
            ],
            volumes: vec![],
            missing: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn every_context_of_a_run_comes_from_the_one_scope() {
        let plan = crate::plan::parse("two-places.yaml", PLAN).unwrap();
        let scope = RunScope::new(&plan, resolved(), false);
        let accounts = |ids: &[AccountId]| ids.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(accounts(&scope.share_with), ["222222222222"]);
        assert_eq!(scope.dsts.iter().map(|l| l.region.as_str()).collect::<Vec<_>>(), ["eu-west-1", "us-west-2"]);

        let act = scope.act("two-places-r1");
        assert_eq!((act.run_id.as_str(), act.plan.as_str()), ("two-places-r1", "two-places"));
        assert_eq!(act.share_with, scope.share_with);
        assert_eq!(act.target(1).account.as_str(), "111111111111");
        assert!(act.target(0).lock.is_some() && act.target(1).lock.is_none());
        assert!(act.pacer.is_none(), "unpaced on virtual time");

        assert!(scope.engine.cross_account);
        assert_eq!(scope.engine.source_key, scope.resolved.source_key.arn);
        assert_eq!(scope.engine.locks, plan.targets.iter().map(|t| t.lock).collect::<Vec<_>>());

        let meta = scope.meta("two-places-r1".into(), "two-places.yaml".into(), true, 7);
        assert_eq!((meta.status, meta.created_ms, meta.simulated), (RunStatus::Running, 7, true));
        assert_eq!(meta.source_account.as_ref(), Some(scope.source_account()));
        assert_eq!(meta.every_ms, Some(86_400_000));
        let targets = meta.targets();
        assert_eq!(targets, scope.targets);
        assert_eq!(targets[0].role_arn.as_ref().map(|r| r.as_str()), Some("arn:aws:iam::222222222222:role/dr"));
        assert_eq!(targets[0].external_id.as_deref(), Some("ext-dr"));
        assert_eq!((targets[1].role_arn.as_ref(), targets[1].cross_account), (None, false));
        assert_eq!(targets[0].lock.as_deref(), Some("governance"));

        // A resumed run's meta is stamped with the same fields a new one gets.
        let mut resumed =
            RunMeta::new("two-places-r1".into(), "two-places".into(), plan.source.region.clone(), vec![], 7);
        resumed.plan_file = "two-places.yaml".into();
        resumed.simulated = true;
        scope.stamp(&mut resumed);
        assert_eq!(resumed, meta);
    }
}
