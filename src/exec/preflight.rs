//! Preflight: read-only checks of the whole plan against AWS before any change.
//! Every problem is collected, not just the first, and each names its resource and
//! what to do about it.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError, ErrorKind, Identity, KeyInfo, KeyManager, Loc, Probe, Side, Volume};
use crate::ids::{AccountId, KeyRef, VolumeId};
use crate::plan::{Pick, Plan, Target, TargetVolume};

use super::retry::retrying;

/// One problem preflight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightError {
    /// The resource it is about: a key, a volume, a role, an account.
    pub resource: String,
    pub message: String,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.resource, self.message)
    }
}

/// A source volume picked by the plan, with what its target volume should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceVolume {
    pub volume: Volume,
    pub target: TargetVolume,
}

/// What preflight learnt about one target.
#[derive(Debug, Clone)]
pub struct ResolvedTarget {
    /// The assumed role's identity, when the target has a role.
    pub identity: Option<Identity>,
    /// The account its resources live in: the role's, else the caller's own.
    pub account: AccountId,
    /// In another account than the source: shared with, granted, reached by the role.
    pub cross_account: bool,
    pub key: KeyInfo,
}

/// What preflight learnt: who the caller is on each side, the keys and the volumes.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub source_identity: Identity,
    /// Any target is in another account than the source.
    pub cross_account: bool,
    pub source_key: KeyInfo,
    /// One per target of the plan, in its order.
    pub targets: Vec<ResolvedTarget>,
    /// Shared with the runner's jobs, not copied per job.
    pub volumes: Vec<Arc<SourceVolume>>,
    /// Listed volumes that no longer exist, in a recurring plan (where they fail alone
    /// instead of refusing the plan).
    pub missing: Vec<VolumeId>,
    /// What does not stop the run but weakens it: a locked target's key whose policy
    /// lets it be deleted or disabled.
    pub warnings: Vec<String>,
}

impl Resolved {
    /// The accounts snapshots are shared with and the key policy grants: every target
    /// account other than the source's, each once, in the plan's order. The one place
    /// this is worked out.
    pub fn share_with(&self) -> Vec<AccountId> {
        let mut out: Vec<AccountId> = vec![];
        for t in self.targets.iter().filter(|t| t.cross_account) {
            if !out.contains(&t.account) {
                out.push(t.account.clone());
            }
        }
        out
    }
}

fn problem(resource: impl Into<String>, message: impl Into<String>) -> PreflightError {
    PreflightError { resource: resource.into(), message: message.into() }
}

fn describe_error(e: &CloudError) -> String {
    match e.kind {
        ErrorKind::AccessDenied => format!(
            "access denied: {e}; grant the permission to the identity running snapferry (snapferry run PLAN --dry-run prints the policies)"
        ),
        _ => e.to_string(),
    }
}

/// Checks that a key is usable for EBS sharing and copying.
fn check_key(info: &KeyInfo, key: &KeyRef, side: &str) -> Vec<PreflightError> {
    let mut out = vec![];
    let name = format!("{side} key {key}");
    if info.manager != KeyManager::Customer {
        out.push(problem(
            &name,
            "is an AWS managed key, which cannot be shared across accounts; create a customer managed symmetric key and name it in the plan",
        ));
    }
    if !info.enabled {
        out.push(problem(&name, format!("{} is disabled; enable it (kms enable-key) or name another key", info.arn)));
    }
    if !info.is_symmetric() {
        out.push(problem(
            &name,
            format!("{} has key spec {}; EBS only works with symmetric keys (SYMMETRIC_DEFAULT)", info.arn, info.spec),
        ));
    }
    out
}

/// Runs every preflight check. `Ok` only when the plan can run as written.
///
/// With `probe`, the calls that change EC2 are tried with `DryRun=true` once everything
/// else checks out, so every missing permission is reported before the first change.
pub async fn preflight(
    plan: &Plan,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    probe: bool,
) -> Result<Resolved, Vec<PreflightError>> {
    let mut errors = vec![];
    let src_loc = Loc::new(Side::Source, &plan.source.region);

    let source_identity = match retrying(clock, || cloud.caller_identity(Side::Source)).await {
        Ok(id) => id,
        Err(e) => {
            return Err(vec![problem(
                "source credentials",
                format!(
                    "cannot read the caller identity: {}; check AWS credentials (env, profile, SSO) for the source account",
                    describe_error(&e)
                ),
            )]);
        }
    };
    if let Some(want) = &plan.source.account
        && want != &source_identity.account
    {
        errors.push(problem(
            format!("source.account {want}"),
            format!(
                "the credentials belong to account {} ({}); use credentials of account {want} or fix the plan",
                source_identity.account, source_identity.arn
            ),
        ));
    }

    let source_key = check_source_key(plan, cloud, clock, &src_loc, &source_identity, &mut errors).await;

    // Each target: its role assumed (when it has one), its key checked in its account.
    let mut targets: Vec<Option<ResolvedTarget>> = vec![];
    for (i, t) in plan.targets.iter().enumerate() {
        targets.push(check_target(plan, i, t, cloud, clock, &source_identity, &mut errors).await);
    }
    let mut missing_ids = vec![];
    let volumes = match resolve_volumes(plan, cloud, clock, &src_loc).await {
        Ok((v, missing)) => {
            if plan.options.every.is_some() {
                // A recurring plan goes on without a decommissioned volume: that volume
                // fails alone, every run, until the plan drops it.
                missing_ids = missing.into_iter().filter_map(|m| m.volume).collect();
            } else {
                errors.extend(missing.into_iter().map(|m| m.problem));
            }
            v
        }
        Err(e) => {
            errors.push(problem(format!("volumes in {}", plan.source.region), describe_error(&e)));
            vec![]
        }
    };

    if let (true, true, Some(first)) = (probe, errors.is_empty(), volumes.first()) {
        probe_permissions(plan, cloud, clock, &src_loc, &first.volume.id, &targets, &mut errors).await;
    }

    let warnings = if errors.is_empty() { locked_key_warnings(plan, cloud, clock, &targets).await } else { vec![] };

    let targets: Option<Vec<ResolvedTarget>> = targets.into_iter().collect();
    match (source_key, targets) {
        (Some(source_key), Some(targets)) if errors.is_empty() => {
            let cross_account = targets.iter().any(|t| t.cross_account);
            Ok(Resolved {
                source_identity,
                cross_account,
                source_key,
                targets,
                volumes: {
                    let mut v: Vec<_> = volumes.into_iter().map(Arc::new).collect();
                    // Collected in place: give back the room the volumes themselves took.
                    v.shrink_to_fit();
                    v
                },
                missing: missing_ids,
                warnings,
            })
        }
        _ => Err(errors),
    }
}

/// The source key described and checked: customer managed, enabled, symmetric, in
/// the source account. `None` when it cannot be described; the problems are in
/// `errors`.
async fn check_source_key(
    plan: &Plan,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    src_loc: &Loc,
    source_identity: &Identity,
    errors: &mut Vec<PreflightError>,
) -> Option<KeyInfo> {
    let name = || format!("source key {}", plan.source.kms_key);
    match retrying(clock, || cloud.describe_key(src_loc, &plan.source.kms_key)).await {
        Ok(k) => {
            errors.extend(check_key(&k, &plan.source.kms_key, "source"));
            if k.account != source_identity.account {
                errors.push(problem(
                    name(),
                    format!("belongs to account {}, not the source account {}", k.account, source_identity.account),
                ));
            }
            Some(k)
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            errors.push(problem(
                name(),
                format!(
                    "does not exist in account {} region {}; create it or fix source.kms_key",
                    source_identity.account, plan.source.region
                ),
            ));
            None
        }
        Err(e) => {
            errors.push(problem(name(), describe_error(&e)));
            None
        }
    }
}

/// The calls that change EC2 tried with `DryRun=true`: CreateSnapshot of the first
/// volume, and CreateVolume in each usable target when the plan makes volumes. A
/// refusal is a problem in `errors`; any other answer is inconclusive.
async fn probe_permissions(
    plan: &Plan,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    src_loc: &Loc,
    first: &VolumeId,
    targets: &[Option<ResolvedTarget>],
    errors: &mut Vec<PreflightError>,
) {
    let mut probes = vec![(
        src_loc.clone(),
        Probe::CreateSnapshot { volume: first.clone() },
        "the identity running snapferry".to_owned(),
    )];
    if plan.options.create_volume {
        for (i, (t, r)) in plan.targets.iter().zip(targets).enumerate() {
            let Some(r) = r else { continue };
            probes.push((
                Loc::new(Side::Target(i as u8), &t.region),
                Probe::CreateVolume { availability_zone: t.availability_zone.clone(), kms_key: r.key.arn.clone() },
                match &t.role_arn {
                    Some(role) => format!("the target role {role}"),
                    None => "the identity running snapferry".to_owned(),
                },
            ));
        }
    }
    for (loc, p, who) in probes {
        match retrying(clock, || cloud.dry_run(&loc, &p)).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::AccessDenied => errors.push(problem(
                format!("permission {}", p.action()),
                format!(
                    "{who} may not call {} in {} ({}); add it to its IAM policy (snapferry run PLAN --dry-run prints the policy)",
                    p.action(),
                    loc.region,
                    e.message
                ),
            )),
            Err(e) => tracing::debug!(probe = p.action(), error = %e, "permission probe inconclusive"),
        }
    }
}

/// The warnings of the locked targets' keys (see [`check_locked_key`]), each logged.
async fn locked_key_warnings(
    plan: &Plan,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    targets: &[Option<ResolvedTarget>],
) -> Vec<String> {
    let mut warnings = vec![];
    for (i, (t, r)) in plan.targets.iter().zip(targets).enumerate() {
        let (Some(_), Some(r)) = (t.lock, r) else { continue };
        if let Some(w) = check_locked_key(cloud, clock, &Loc::new(Side::Target(i as u8), &t.region), &r.key).await {
            tracing::warn!(key = %r.key.arn, "{w}");
            warnings.push(w);
        }
    }
    warnings
}

/// A locked target's key: a warning naming it when its policy does not deny
/// `kms:ScheduleKeyDeletion` and `kms:DisableKey` to all but a break-glass principal
/// (AWS lets the key of a locked snapshot be deleted), or cannot be read.
async fn check_locked_key(cloud: &dyn Cloud, clock: &dyn Clock, loc: &Loc, key: &KeyInfo) -> Option<String> {
    match retrying(clock, || cloud.get_key_policy(loc, &key.arn)).await {
        Ok(p) if crate::policy::denies_key_removal(&p) => None,
        Ok(_) => Some(format!(
            "target key {} of locked copies: its key policy does not deny kms:ScheduleKeyDeletion and kms:DisableKey to all but a break-glass principal, so whoever may delete the key can make every locked copy unreadable; add the statement snapferry run PLAN --dry-run prints to its policy",
            key.arn
        )),
        Err(e) => Some(format!(
            "target key {} of locked copies: its key policy could not be read ({}), so whether it protects the key from deletion is unknown; check it denies kms:ScheduleKeyDeletion and kms:DisableKey to all but a break-glass principal",
            key.arn,
            describe_error(&e)
        )),
    }
}

/// Target `i`: its role assumed and its account checked, its key described and
/// checked. `None` when it cannot be used; the problems are in `errors`.
async fn check_target(
    plan: &Plan,
    i: usize,
    t: &Target,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    source_identity: &Identity,
    errors: &mut Vec<PreflightError>,
) -> Option<ResolvedTarget> {
    let side = Side::Target(i as u8);
    let name = if plan.targets.len() > 1 && plan.fan_out { format!("targets[{i}]") } else { "target".to_owned() };
    let cross_account = t.crosses(&source_identity.account);
    if cross_account && t.role_arn.is_none() {
        errors.push(problem(
            format!("{name}.role_arn"),
            "the target account differs from the caller's account: name a role in the target account to assume",
        ));
    }
    let mut identity = None;
    if let Some(role) = &t.role_arn {
        match retrying(clock, || cloud.caller_identity(side)).await {
            Ok(id) => {
                if let Some(want) = &t.account
                    && want != &id.account
                {
                    errors.push(problem(
                        format!("{name}.account {want}"),
                        format!("the role's credentials belong to account {}", id.account),
                    ));
                }
                identity = Some(id);
            }
            Err(e) => {
                errors.push(problem(
                    format!("{name}.role_arn {role}"),
                    format!(
                        "cannot be assumed: {e}; its trust policy must allow {} to call sts:AssumeRole{} (snapferry run PLAN --dry-run prints it)",
                        source_identity.arn,
                        if t.external_id.is_some() { " with the plan's external_id" } else { "" }
                    ),
                ));
                return None;
            }
        }
    }
    let account = identity.as_ref().map(|i| i.account.clone()).unwrap_or_else(|| source_identity.account.clone());
    let loc = Loc::new(side, &t.region);
    let key = match retrying(clock, || cloud.describe_key(&loc, &t.kms_key)).await {
        Ok(k) => {
            errors.extend(check_key(&k, &t.kms_key, &name));
            k
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            errors.push(problem(
                format!("{name} key {}", t.kms_key),
                format!("does not exist in account {account} region {}; create it or fix {name}.kms_key", t.region),
            ));
            return None;
        }
        Err(e) => {
            errors.push(problem(format!("{name} key {}", t.kms_key), describe_error(&e)));
            return None;
        }
    };
    // A cross-account target crosses by the account the role lands in.
    let cross_account = account != source_identity.account;
    Some(ResolvedTarget { identity, account, cross_account, key })
}

/// The plan's volumes, ids and selectors together, each once, in plan order; and a
/// problem for every id that does not exist and every selector that picks nothing.
/// A volume (or selector) of the plan that found nothing.
#[derive(Debug, Clone)]
pub struct Missing {
    /// The listed volume id; `None` for a selector that picks nothing.
    pub volume: Option<VolumeId>,
    pub problem: PreflightError,
}

pub async fn resolve_volumes(
    plan: &Plan,
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    loc: &Loc,
) -> Result<(Vec<SourceVolume>, Vec<Missing>), CloudError> {
    let ids: Vec<VolumeId> = plan
        .volumes
        .iter()
        .filter_map(|s| match &s.pick {
            Pick::Id(id) => Some(id.clone()),
            Pick::Selector(_) => None,
        })
        .collect();
    let mut found: HashMap<VolumeId, Volume> = HashMap::with_capacity(ids.len());
    // DescribeVolumes takes at most 500 ids per call with filters; stay well within.
    for chunk in ids.chunks(200) {
        found.extend(
            retrying(clock, || cloud.describe_volumes(loc, chunk)).await?.into_iter().map(|v| (v.id.clone(), v)),
        );
    }
    let mut out = vec![];
    let mut problems = vec![];
    let mut seen = BTreeSet::new();
    for spec in &plan.volumes {
        match &spec.pick {
            Pick::Id(id) => match found.get(id) {
                Some(v) => {
                    if seen.insert(v.id.clone()) {
                        out.push(SourceVolume { volume: v.clone(), target: spec.target.clone() });
                    }
                }
                None => problems.push(Missing {
                    volume: Some(id.clone()),
                    problem: problem(
                        format!("volume {id}"),
                        format!(
                            "does not exist in the source account in {}; fix the id or the source region",
                            loc.region
                        ),
                    ),
                }),
            },
            Pick::Selector(tags) => {
                let picked = retrying(clock, || cloud.find_volumes(loc, tags)).await?;
                if picked.is_empty() {
                    problems.push(Missing {
                        volume: None,
                        problem: problem(
                            format!("selector {tags:?}"),
                            format!("picks no volume in {}; check the tags", loc.region),
                        ),
                    });
                }
                let mut picked = picked;
                picked.sort_by(|a, b| a.id.cmp(&b.id));
                for v in picked {
                    if seen.insert(v.id.clone()) {
                        out.push(SourceVolume { volume: v, target: spec.target.clone() });
                    }
                }
            }
        }
    }
    Ok((out, problems))
}
