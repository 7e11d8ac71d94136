//! Seeds a simulated world from a plan, so any plan can be rehearsed with
//! `--simulate`: its accounts, keys, role and volumes are made to exist.
//!
//! Volumes named by id are made in the source region with sizes from 8 to 512 GiB
//! and, in turn, under the source key, under the AWS managed `aws/ebs` key and
//! unencrypted, so a rehearsal shows every path (re-encryption included). Each
//! selector gets three matching volumes.

use crate::cloud::{KeyManager, TargetAccess};
use crate::ids::{AccountId, AvailabilityZone, KeyArn, KeyRef, Region, VolumeId};
use crate::plan::{Pick, Plan};

use super::{SimSides, World};

/// Account ids used when a plan leaves them out.
pub const DEFAULT_SOURCE_ACCOUNT: &str = "111111111111";

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Makes `key` exist in the account and region, as a customer managed key.
fn ensure_key(w: &mut World, account: &AccountId, region: &Region, key: &KeyRef) -> KeyArn {
    let s = key.as_str();
    if let Some(alias) = s.strip_prefix("alias/") {
        if let Some(k) =
            w.keys.iter().find(|k| &k.account == account && &k.region == region && k.aliases.iter().any(|a| a == alias))
        {
            return k.arn.clone();
        }
        return w.add_key(account, region, Some(s), KeyManager::Customer);
    }
    let arn = w.add_key(account, region, None, KeyManager::Customer);
    // Give the key the id or ARN the plan names.
    let wanted = if s.starts_with("arn:") && s.contains(":key/") {
        KeyArn::parse(s).ok()
    } else if !s.starts_with("arn:") {
        KeyArn::parse(&format!("arn:{}:kms:{region}:{account}:key/{s}", region.partition())).ok()
    } else {
        None
    };
    match (wanted, w.keys.last_mut()) {
        (Some(want), Some(k)) => {
            k.arn = want.clone();
            want
        }
        _ => arn,
    }
}

/// A world in which `plan` can run, and the sides its caller has.
pub fn seed_from_plan(plan: &Plan, now_ms: i64) -> (World, SimSides) {
    let mut w = World::new(now_ms);
    let source =
        plan.source.account.clone().unwrap_or_else(|| AccountId::parse(DEFAULT_SOURCE_ACCOUNT).expect("valid"));
    let source_key = ensure_key(&mut w, &source, &plan.source.region, &plan.source.kms_key);
    for t in &plan.targets {
        let target =
            t.account.clone().or_else(|| t.role_arn.as_ref().map(|r| r.account())).unwrap_or_else(|| source.clone());
        ensure_key(&mut w, &target, &t.region, &t.kms_key);
        if let Some(role) = &t.role_arn
            && !w.roles.iter().any(|r| &r.arn == role)
        {
            w.roles.push(super::world::SimRole {
                arn: role.clone(),
                trusted: vec![source.clone()],
                external_id: t.external_id.clone(),
            });
        }
    }
    let aws_ebs = w.aws_ebs_key(&source, &plan.source.region);
    let az = AvailabilityZone::parse(&format!("{}a", plan.source.region)).expect("valid zone");
    let mut n = 0usize;
    let mut add = |w: &mut World, id: Option<VolumeId>, tags, seed: u64| {
        let size = 8 + (seed % 505) as i32;
        let key = match n % 3 {
            0 => Some(source_key.clone()),
            1 => Some(aws_ebs.clone()),
            _ => None,
        };
        n += 1;
        w.add_volume(id, &source, &az, size, key, tags)
    };
    for spec in &plan.volumes {
        match &spec.pick {
            Pick::Id(id) => {
                add(&mut w, Some(id.clone()), Default::default(), hash(id.as_str()));
            }
            Pick::Selector(tags) => {
                for i in 0..3 {
                    let seed = hash(&format!("{tags:?}{i}"));
                    let id = VolumeId::parse(&format!("vol-{:017x}", seed & 0x0fff_ffff_ffff_ffff_u64)).expect("valid");
                    let mut t = tags.clone();
                    t.insert("Name".into(), format!("selected-{i}"));
                    add(&mut w, Some(id), t, seed);
                }
            }
        }
    }
    let sides = SimSides {
        source_account: source,
        targets: plan
            .targets
            .iter()
            .map(|t| TargetAccess { role: t.role_arn.clone(), external_id: t.external_id.clone() })
            .collect(),
    };
    (w, sides)
}
