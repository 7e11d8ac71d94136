//! Raw plan -> [`Plan`]: every rule a plan must meet before a run may rely on it.
//!
//! Checks run to the end whatever they find, so a user fixes a plan in one round
//! instead of one error per attempt. A value that fails its own check is left out of
//! the checks that combine it with others, so one mistake is reported once.
//!
//! Rules that span fields:
//! - `target.role_arn` is required when `target.account` is given and differs from
//!   `source.account`. When `source.account` is omitted the accounts cannot be compared
//!   before the run, so a `target.account` without `role_arn` is refused: give
//!   `source.account` (equal to `target.account`) for a same-account copy, or the role.
//! - When `target.account` is omitted and `role_arn` is given, the target account is
//!   the role's: the role lives in the target account.
//! - A key given as an ARN must be in its side's region, the zone in `target.region`,
//!   the role in `target.account`.
//! - Exactly one of `target:` and `targets:`. Each entry of `targets:` meets the rules
//!   of `target:` (its fields named `targets[i].…`), and no two entries share an
//!   account and region: their copies would be the same resources.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::duration;
use super::error::PlanIssue;
use super::model::{CopyWithin, Options, Pick, Plan, Source, Target, TargetVolume, Timeouts, VolumeSpec};
use super::raw::{
    AccountText, RawLock, RawLockSetting, RawOptions, RawPlan, RawSelector, RawSource, RawTarget, RawTimeouts,
    RawVolume, TagMap,
};
use super::yaml::SourceText;
use crate::ids::{AccountId, AvailabilityZone, IdError, KeyRef, PlanName, Region, RoleArn, VolumeId};
use crate::lock::{self, LockMode, LockSpec};

/// The only plan format version this build reads.
pub const PLAN_VERSION: i64 = 1;

/// EBS quota "Concurrent snapshot copies per destination Region" (Amazon EBS
/// endpoints and quotas): more copies in flight are refused by AWS.
pub const MAX_CONCURRENT_COPIES: u32 = 20;

/// The highest provisioned IOPS of any EBS volume type (io2 Block Express).
pub const MAX_IOPS: i64 = 256_000;

/// The highest throughput in MiB/s of any EBS volume type (io2 Block Express).
pub const MAX_THROUGHPUT: i64 = 4_000;

/// The EBS volume types CreateVolume accepts.
pub const VOLUME_TYPES: [&str; 7] = ["standard", "gp2", "gp3", "io1", "io2", "st1", "sc1"];

/// Tag limits of EC2 (Tag your Amazon EC2 resources, "Tag restrictions"): key 1 to 128
/// characters, value up to 256, 50 tags per resource.
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;
const MAX_TAGS_PER_RESOURCE: usize = 50;

/// The tags snapferry itself puts on everything a run creates (`snapferry:plan`, `:run`,
/// `:source-volume`, `:step`); they count against the per-resource limit.
const OWN_TAGS: usize = 4;

/// Prefixes a plan may not use in tag keys: `aws:` is reserved by AWS, `snapferry:`
/// holds the run's own bookkeeping tags, which resume relies on.
const RESERVED_TAG_PREFIXES: [&str; 2] = ["aws:", "snapferry:"];

/// AssumeRole's ExternalId: 2 to 1224 characters of `[\w+=,.@:/-]` (STS API
/// reference, AssumeRole).
const EXTERNAL_ID_CHARS: std::ops::RangeInclusive<usize> = 2..=1224;

/// Checks a raw plan; on success every value of the [`Plan`] is well formed and the
/// fields agree with each other.
pub(crate) fn validate(raw: &Spanned<RawPlan>, src: &SourceText) -> Result<Plan, Vec<PlanIssue>> {
    let mut c = Checker { src, issues: Vec::new() };
    let plan = c.plan(raw);
    match plan {
        Some(plan) if c.issues.is_empty() => Ok(plan),
        _ => Err(c.issues),
    }
}

/// The outcome of checking an optional value: absent, valid, or reported as invalid.
enum Checked<T> {
    Absent,
    Valid(T),
    Invalid,
}

impl<T> Checked<T> {
    /// The value for the model: `None` when absent; `Err` when already reported.
    fn into_model(self) -> Result<Option<T>, ()> {
        match self {
            Checked::Absent => Ok(None),
            Checked::Valid(v) => Ok(Some(v)),
            Checked::Invalid => Err(()),
        }
    }

    fn valid(&self) -> Option<&T> {
        match self {
            Checked::Valid(v) => Some(v),
            _ => None,
        }
    }
}

struct Checker<'a> {
    src: &'a SourceText<'a>,
    issues: Vec<PlanIssue>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

impl Checker<'_> {
    fn report(&mut self, loc: &Location, field: &str, message: impl Into<String>) {
        self.issues.push(self.src.issue(loc, field, message));
    }

    /// A required value, or an issue at its parent mapping saying it is missing.
    fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        parent: &Location,
        parent_field: &str,
        key: &str,
        expected: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.report(parent, &join(parent_field, key), format!("missing required key `{key}`: expected {expected}"));
        }
        value.as_ref()
    }

    /// A string run through an identifier's checking constructor.
    fn id<T>(&mut self, value: &Spanned<String>, field: &str, parse: impl Fn(&str) -> Result<T, IdError>) -> Option<T> {
        match parse(&value.value) {
            Ok(v) => Some(v),
            Err(e) => {
                let message = format!("expected {}, found `{}`", e.expected, value.value);
                self.report(&value.referenced, field, message);
                None
            }
        }
    }

    fn optional_id<T>(
        &mut self,
        value: &Option<Spanned<String>>,
        field: &str,
        parse: impl Fn(&str) -> Result<T, IdError>,
    ) -> Checked<T> {
        match value {
            None => Checked::Absent,
            Some(v) => self.id(v, field, parse).map_or(Checked::Invalid, Checked::Valid),
        }
    }

    fn plan(&mut self, raw: &Spanned<RawPlan>) -> Option<Plan> {
        let top = &raw.referenced;
        let p = &raw.value;

        self.version(p.version.as_ref(), top);
        let name = self
            .required(&p.name, top, "", "name", "1 to 48 characters of a-z, 0-9 and -")
            .and_then(|n| self.id(n, "name", PlanName::parse));
        let (source, source_account) =
            match self.required(&p.source, top, "", "source", "a mapping with region and kms_key") {
                Some(s) => self.source(s),
                None => (None, None),
            };
        let options = match &p.options {
            Some(o) => self.options(&o.value),
            None => Some(Options::default()),
        };
        let default_lock = options.as_ref().and_then(|o| o.lock);
        let targets = self.targets(p, top, source_account, default_lock);
        let volumes = self
            .required(&p.volumes, top, "", "volumes", "a list of at least one volume")
            .and_then(|v| self.volumes(v, options.as_ref()));

        let fan_out = p.targets.is_some();
        Some(Plan { name: name?, source: source?, targets: targets?, fan_out, volumes: volumes?, options: options? })
    }

    fn version(&mut self, version: Option<&Spanned<i64>>, top: &Location) {
        match version {
            None => {
                self.report(top, "version", format!("missing required key `version`: expected version: {PLAN_VERSION}"))
            }
            Some(v) if v.value != PLAN_VERSION => self.report(
                &v.referenced,
                "version",
                format!(
                    "expected {PLAN_VERSION}, found {}: this snapferry reads version {PLAN_VERSION} plans only",
                    v.value
                ),
            ),
            Some(_) => {}
        }
    }

    fn account(&mut self, value: &Option<Spanned<AccountText>>, field: &str) -> Checked<AccountId> {
        let Some(v) = value else {
            return Checked::Absent;
        };
        match &v.value {
            AccountText::Number => {
                let literal = self.src.snippet(&v.referenced);
                let message = format!(
                    "expected a 12-digit account id in quotes, found the unquoted number `{literal}`: \
                     YAML reads it as an integer and drops leading zeros; write \"{literal}\""
                );
                self.report(&v.referenced, field, message);
                Checked::Invalid
            }
            AccountText::Text(text) => match AccountId::parse(text) {
                Ok(a) => Checked::Valid(a),
                Err(e) => {
                    let message = format!("expected {}, found `{text}`", e.expected);
                    self.report(&v.referenced, field, message);
                    Checked::Invalid
                }
            },
        }
    }

    /// A KMS key reference for one side: well formed, customer managed, and in that
    /// side's region when written as an ARN.
    fn key(&mut self, value: &Spanned<String>, field: &str, region: Option<&Region>, side: &str) -> Option<KeyRef> {
        let key = self.id(value, field, KeyRef::parse)?;
        let loc = &value.referenced;
        if key.is_aws_managed_alias() {
            let why = if side == "source" {
                "AWS managed keys cannot be shared with another account; create a customer \
                 managed symmetric key in the source account and region and name it here"
            } else {
                "snapferry encrypts the copies only under a key the plan's owner controls; \
                 create a customer managed symmetric key in the target account and region and \
                 name it here"
            };
            let message = format!("expected a customer managed key, found the AWS managed key `{key}`: {why}");
            self.report(loc, field, message);
            return None;
        }
        if let (Some(region), Some(key_region)) = (region, key.arn_region())
            && &key_region != region
        {
            let message = format!(
                "expected a key in {side}.region {region}, found a key in {key_region}: EBS \
                 encrypts a snapshot only under a key in the snapshot's own region"
            );
            self.report(loc, field, message);
            return None;
        }
        Some(key)
    }

    /// The source side, and its account on its own (`None` when invalid, `Some(None)`
    /// when omitted) so the target's role rule can be judged even when another source
    /// field is wrong.
    fn source(&mut self, raw: &Spanned<RawSource>) -> (Option<Source>, Option<Option<AccountId>>) {
        let at = &raw.referenced;
        let s = &raw.value;
        let region = self
            .required(&s.region, at, "source", "region", "an AWS region name like us-east-1")
            .and_then(|r| self.id(r, "source.region", Region::parse));
        let account = self.account(&s.account, "source.account");
        let profile = match &s.profile {
            Some(p) if p.value.trim().is_empty() || p.value.chars().any(char::is_whitespace) => {
                let message = format!("expected the name of a profile in the AWS config files, found `{}`", p.value);
                self.report(&p.referenced, "source.profile", message);
                None
            }
            Some(p) => Some(Some(p.value.clone())),
            None => Some(None),
        };
        let kms_key = self
            .required(&s.kms_key, at, "source", "kms_key", "a customer managed KMS key, like alias/prod-ebs-share")
            .and_then(|k| self.key(k, "source.kms_key", region.as_ref(), "source"));
        let account = account.into_model().ok();
        let source =
            (|| Some(Source { region: region?, account: account.clone()?, profile: profile?, kms_key: kms_key? }))();
        (source, account)
    }

    /// `target:` or `targets:`, exactly one of them; each entry checked as a target,
    /// then the list as a whole: at most one target per account and region.
    fn targets(
        &mut self,
        p: &RawPlan,
        top: &Location,
        source_account: Option<Option<AccountId>>,
        default_lock: Option<LockSpec>,
    ) -> Option<Vec<Target>> {
        match (&p.target, &p.targets) {
            (Some(t), None) => self.target(t, source_account, "target", default_lock).map(|t| vec![t]),
            (None, None) => {
                self.report(
                    top,
                    "target",
                    "missing required key `target`: expected a mapping with region, kms_key and \
                     availability_zone (or `targets:`, a list of them)",
                );
                None
            }
            (Some(_), Some(list)) => {
                self.report(
                    &list.referenced,
                    "targets",
                    "expected exactly one of `target` and `targets`, found both: put every target \
                     in the `targets` list, or keep `target` alone",
                );
                None
            }
            (None, Some(list)) => {
                if list.value.is_empty() {
                    self.report(&list.referenced, "targets", "expected at least one target, found an empty list");
                    return None;
                }
                let mut out = Some(Vec::with_capacity(list.value.len()));
                let mut seen: Vec<(Option<AccountId>, Region, usize)> = vec![];
                for (i, raw) in list.value.iter().enumerate() {
                    let field = format!("targets[{i}]");
                    let Some(t) = self.target(raw, source_account.clone(), &field, default_lock) else {
                        out = None;
                        continue;
                    };
                    // Same account: written out or, when omitted, the source account.
                    let account = t.account.clone().or_else(|| source_account.clone().flatten());
                    if let Some((_, _, first)) = seen.iter().find(|(a, r, _)| a == &account && r == &t.region) {
                        let where_ = match &account {
                            Some(a) => format!("account {a}, region {}", t.region),
                            None => format!("the source account, region {}", t.region),
                        };
                        let message = format!(
                            "expected one target per account and region, found a second one for {where_} \
                             (first at targets[{first}]): the copies of both would be the same resources; \
                             remove one"
                        );
                        self.report(&raw.referenced, &field, message);
                        out = None;
                        continue;
                    }
                    seen.push((account, t.region.clone(), i));
                    if let Some(v) = out.as_mut() {
                        v.push(t);
                    }
                }
                if let Some(v) = &out
                    && v.len() > usize::from(u8::MAX)
                {
                    self.report(&list.referenced, "targets", "expected at most 255 targets");
                    return None;
                }
                out
            }
        }
    }

    fn target(
        &mut self,
        raw: &Spanned<RawTarget>,
        source_account: Option<Option<AccountId>>,
        pfx: &str,
        default_lock: Option<LockSpec>,
    ) -> Option<Target> {
        let at = &raw.referenced;
        let t = &raw.value;
        let f = |name: &str| format!("{pfx}.{name}");
        let region = self
            .required(&t.region, at, pfx, "region", "an AWS region name like eu-west-1")
            .and_then(|r| self.id(r, &f("region"), Region::parse));
        let account = self.account(&t.account, &f("account"));
        let role = self.optional_id(&t.role_arn, &f("role_arn"), RoleArn::parse);
        let external_id = self.external_id(t, &role, pfx);
        let kms_key = self
            .required(&t.kms_key, at, pfx, "kms_key", "a customer managed KMS key, like alias/dr-ebs")
            .and_then(|k| self.key(k, &f("kms_key"), region.as_ref(), "target"));
        let zone = self
            .required(
                &t.availability_zone,
                at,
                pfx,
                "availability_zone",
                "an availability zone in target.region, like eu-west-1a",
            )
            .and_then(|z| self.zone(z, region.as_ref(), pfx));
        let lock = match &t.lock {
            None => Some(default_lock),
            Some(l) => match &l.value {
                RawLockSetting::Word(w) if w == "none" => Some(None),
                RawLockSetting::Word(w) => {
                    let message = format!("expected a mapping with mode and duration, or `none`, found `{w}`");
                    self.report(&l.referenced, &f("lock"), message);
                    None
                }
                RawLockSetting::Lock(raw) => self.lock(raw, &l.referenced, &f("lock")).map(Some),
            },
        };

        if let (Some(role_arn), Some(region)) = (&t.role_arn, &region)
            && let Some(role) = role.valid()
        {
            let partition = role.as_str().split(':').nth(1).unwrap_or_default();
            if partition != region.partition() {
                let message = format!(
                    "expected a role in partition {} (that of {pfx}.region {region}), found one in {partition}",
                    region.partition()
                );
                self.report(&role_arn.referenced, &f("role_arn"), message);
            }
        }
        if let (Some(role_arn), Some(role), Some(account)) = (&t.role_arn, role.valid(), account.valid())
            && &role.account() != account
        {
            let message = format!(
                "expected a role in {pfx}.account {account}, found a role in account {}: \
                 the role is assumed to work in the target account",
                role.account()
            );
            self.report(&role_arn.referenced, &f("role_arn"), message);
        }
        if let (Checked::Valid(target_account), Checked::Absent) = (&account, &role) {
            match source_account {
                Some(Some(source_account)) if &source_account == target_account => {}
                Some(Some(source_account)) => {
                    let message = format!(
                        "missing required key `role_arn`: {pfx}.account {target_account} differs \
                         from source.account {source_account}, so a role in the target account \
                         is needed, like arn:aws:iam::{target_account}:role/snapferry"
                    );
                    self.report(at, &f("role_arn"), message);
                }
                Some(None) => {
                    let message = format!(
                        "missing required key `role_arn`: {pfx}.account {target_account} is given \
                         without source.account, so the copy may cross accounts; expected a role \
                         in the target account, like arn:aws:iam::{target_account}:role/snapferry, \
                         or source.account equal to {pfx}.account for a same-account copy"
                    );
                    self.report(at, &f("role_arn"), message);
                }
                // The source side failed its own checks; the rule cannot be judged.
                None => {}
            }
        }

        let role = role.into_model().ok()?;
        let account = match account.into_model().ok()? {
            Some(a) => Some(a),
            None => role.as_ref().map(RoleArn::account),
        };
        Some(Target {
            region: region?,
            account,
            role_arn: role,
            external_id: external_id?,
            kms_key: kms_key?,
            availability_zone: zone?,
            lock: lock?,
        })
    }

    /// A lock mapping: mode governance|compliance, duration in days, cool_off in hours
    /// (compliance only, and required there).
    fn lock(&mut self, raw: &RawLock, at: &Location, field: &str) -> Option<LockSpec> {
        let f = |name: &str| format!("{field}.{name}");
        let mode = self.required(&raw.mode, at, field, "mode", "governance or compliance").and_then(|m| {
            match m.value.as_str() {
                "governance" => Some(LockMode::Governance),
                "compliance" => Some(LockMode::Compliance),
                other => {
                    let message = format!("expected governance or compliance, found `{other}`");
                    self.report(&m.referenced, &f("mode"), message);
                    None
                }
            }
        });
        let duration = self
            .required(&raw.duration, at, field, "duration", "a number of days from 1d to 36500d, like 30d")
            .and_then(|d| {
                let days = d.value.strip_suffix('d').and_then(|n| n.parse::<u32>().ok());
                match days.filter(|n| lock::DURATION_DAYS.contains(n)) {
                    Some(n) => Some(n),
                    None => {
                        let message = format!(
                            "expected a number of days from 1d to 36500d (LockSnapshot LockDuration), found `{}`",
                            d.value
                        );
                        self.report(&d.referenced, &f("duration"), message);
                        None
                    }
                }
            });
        let cool_off = match (&raw.cool_off, mode) {
            (Some(c), Some(LockMode::Governance)) => {
                let message = format!(
                    "expected no cool_off with mode governance, found `{}`: a cool-off period is for \
                     compliance mode only; remove it",
                    c.value
                );
                self.report(&c.referenced, &f("cool_off"), message);
                None
            }
            (None, Some(LockMode::Compliance)) => {
                let message = "missing required key `cool_off`: compliance mode needs a cool-off period \
                               from 1h to 72h, like 24h, during which a mistaken lock can still be undone";
                self.report(at, &f("cool_off"), message);
                None
            }
            (Some(c), _) => {
                let hours = c.value.strip_suffix('h').and_then(|n| n.parse::<u32>().ok());
                match hours.filter(|n| lock::COOL_OFF_HOURS.contains(n)) {
                    Some(n) => Some(Some(n)),
                    None => {
                        let message = format!(
                            "expected a number of hours from 1h to 72h (LockSnapshot CoolOffPeriod), found `{}`",
                            c.value
                        );
                        self.report(&c.referenced, &f("cool_off"), message);
                        None
                    }
                }
            }
            (None, _) => Some(None),
        };
        Some(LockSpec { mode: mode?, duration_days: duration?, cool_off_hours: cool_off? })
    }

    fn external_id(&mut self, t: &RawTarget, role: &Checked<RoleArn>, pfx: &str) -> Option<Option<String>> {
        let Some(ext) = &t.external_id else {
            return Some(None);
        };
        let loc = &ext.referenced;
        let field = &format!("{pfx}.external_id");
        let value = &ext.value;
        let len = chars(value);
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c);
        if !EXTERNAL_ID_CHARS.contains(&len) {
            let message = format!(
                "expected an external id of {} to {} characters, found {len}",
                EXTERNAL_ID_CHARS.start(),
                EXTERNAL_ID_CHARS.end()
            );
            self.report(loc, field, message);
            return None;
        }
        if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
            let message =
                format!("expected an external id of letters, digits and _+=,.@:/-, found `{bad}` in `{value}`");
            self.report(loc, field, message);
            return None;
        }
        if matches!(role, Checked::Absent) {
            let message = format!(
                "expected external_id only together with role_arn, found it alone: it is passed \
                 to AssumeRole; set {pfx}.role_arn or remove external_id"
            );
            self.report(loc, field, message);
            return None;
        }
        Some(Some(value.clone()))
    }

    fn zone(&mut self, value: &Spanned<String>, region: Option<&Region>, pfx: &str) -> Option<AvailabilityZone> {
        let field = &format!("{pfx}.availability_zone");
        let zone = self.id(value, field, AvailabilityZone::parse)?;
        if let Some(region) = region
            && &zone.region() != region
        {
            let message = format!(
                "expected a zone in {pfx}.region {region}, like {region}a, found `{zone}` in {}",
                zone.region()
            );
            self.report(&value.referenced, field, message);
            return None;
        }
        Some(zone)
    }

    fn volumes(
        &mut self,
        raw: &Spanned<Vec<Spanned<RawVolume>>>,
        options: Option<&Options>,
    ) -> Option<Vec<VolumeSpec>> {
        if raw.value.is_empty() {
            self.report(&raw.referenced, "volumes", "expected at least one volume, by id or selector, found none");
            return None;
        }
        let mut first_seen: HashMap<VolumeId, u64> = HashMap::new();
        let mut specs = Some(Vec::with_capacity(raw.value.len()));
        for (i, entry) in raw.value.iter().enumerate() {
            let field = format!("volumes[{i}]");
            let spec = self.volume(entry, &field, options);
            let duplicate = entry.value.id.as_ref().and_then(|id| {
                let parsed = VolumeId::parse(&id.value).ok()?;
                match first_seen.get(&parsed) {
                    Some(first) => Some((id, *first)),
                    None => {
                        first_seen.insert(parsed, id.referenced.line());
                        None
                    }
                }
            });
            if let Some((id, first)) = duplicate {
                let message = format!("expected each volume once, found `{}` again (first at line {first})", id.value);
                self.report(&id.referenced, &join(&field, "id"), message);
                specs = None;
            }
            match (spec, specs.as_mut()) {
                (Some(spec), Some(specs)) => specs.push(spec),
                _ => specs = None,
            }
        }
        specs
    }

    fn volume(&mut self, raw: &Spanned<RawVolume>, field: &str, options: Option<&Options>) -> Option<VolumeSpec> {
        let v = &raw.value;
        let pick = match (&v.id, &v.selector) {
            (Some(_), Some(selector)) => {
                self.report(
                    &selector.referenced,
                    field,
                    "expected exactly one of id or selector, found both: split them into two entries",
                );
                None
            }
            (None, None) => {
                self.report(&raw.referenced, field, "expected exactly one of id or selector, found neither");
                None
            }
            (Some(id), None) => self.id(id, &join(field, "id"), VolumeId::parse).map(Pick::Id),
            (None, Some(selector)) => self.selector(selector, &join(field, "selector")).map(Pick::Selector),
        };

        let volume_type = match &v.volume_type {
            Some(t) if !VOLUME_TYPES.contains(&t.value.as_str()) => {
                let message = format!("expected one of {}, found `{}`", VOLUME_TYPES.join(", "), t.value);
                self.report(&t.referenced, &join(field, "volume_type"), message);
                None
            }
            Some(t) => Some(Some(t.value.clone())),
            None => Some(None),
        };
        let kind = volume_type.clone().flatten();
        let iops = self.performance(
            v.iops.as_ref(),
            &join(field, "iops"),
            PerformanceLimit { what: "iops", max: MAX_IOPS, types: &["gp3", "io1", "io2"] },
            kind.as_deref(),
        );
        let throughput = self.performance(
            v.throughput.as_ref(),
            &join(field, "throughput"),
            PerformanceLimit { what: "throughput in MiB/s", max: MAX_THROUGHPUT, types: &["gp3"] },
            kind.as_deref(),
        );
        let tags = match &v.tags {
            Some(tags) => self.tags(tags, &join(field, "tags"), true),
            None => Some(BTreeMap::new()),
        };
        if let (Some(raw_tags), Some(tags), Some(options)) = (&v.tags, &tags, options) {
            let total = tags.keys().chain(options.tags.keys().filter(|k| !tags.contains_key(*k))).count();
            if total + OWN_TAGS > MAX_TAGS_PER_RESOURCE {
                let message = format!(
                    "expected at most {} tags from options.tags and this volume's tags together, \
                     found {total}: AWS allows {MAX_TAGS_PER_RESOURCE} per resource and snapferry adds {OWN_TAGS}",
                    MAX_TAGS_PER_RESOURCE - OWN_TAGS
                );
                self.report(&raw_tags.referenced, &join(field, "tags"), message);
                return None;
            }
        }

        Some(VolumeSpec {
            pick: pick?,
            target: TargetVolume { volume_type: volume_type?, iops: iops?, throughput: throughput?, tags: tags? },
        })
    }

    fn selector(&mut self, raw: &Spanned<RawSelector>, field: &str) -> Option<BTreeMap<String, String>> {
        let tags = self.required(
            &raw.value.tags,
            &raw.referenced,
            field,
            "tags",
            "a mapping of the tags to select volumes by",
        )?;
        if tags.value.0.is_empty() {
            self.report(
                &tags.referenced,
                &join(field, "tags"),
                "expected at least one tag, found none: an empty selector would pick every \
                 volume in source.region",
            );
            return None;
        }
        // Selecting by AWS's own tags (aws:cloudformation:stack-name, ...) is legitimate,
        // so reserved prefixes are allowed here: nothing is written with these tags.
        self.tags(tags, &join(field, "tags"), false)
    }

    /// An iops or throughput override: positive, within the largest EBS volume's limit,
    /// and meaningful for the volume type when the plan names one.
    fn performance(
        &mut self,
        value: Option<&Spanned<i64>>,
        field: &str,
        limit: PerformanceLimit,
        volume_type: Option<&str>,
    ) -> Option<Option<u32>> {
        let Some(v) = value else {
            return Some(None);
        };
        let n = v.value;
        if !(1..=limit.max).contains(&n) {
            let message = format!(
                "expected {} from 1 to {} (the most any EBS volume type allows), found {n}",
                limit.what, limit.max
            );
            self.report(&v.referenced, field, message);
            return None;
        }
        if let Some(kind) = volume_type
            && !limit.types.contains(&kind)
        {
            let message = format!(
                "expected {} only with volume_type {}, found it with {kind}, which does not take it",
                limit.what,
                limit.types.join(", ")
            );
            self.report(&v.referenced, field, message);
            return None;
        }
        u32::try_from(n).ok().map(Some)
    }

    /// A tag map: EC2's key and value lengths, and, for tags snapferry writes, no key
    /// under a reserved prefix.
    fn tags(&mut self, raw: &Spanned<TagMap>, field: &str, written: bool) -> Option<BTreeMap<String, String>> {
        let mut out = Some(BTreeMap::new());
        for (key, value) in &raw.value.0 {
            let key_field = if key.value.is_empty() { field.to_owned() } else { join(field, &key.value) };
            let key_chars = chars(&key.value);
            let reserved = RESERVED_TAG_PREFIXES
                .iter()
                .find(|p| key.value.to_ascii_lowercase().starts_with(*p))
                .filter(|_| written);
            let mut ok = true;
            if key.value.trim().is_empty() {
                self.report(
                    &key.referenced,
                    &key_field,
                    format!("expected a tag key of 1 to {MAX_TAG_KEY_CHARS} characters, found an empty key"),
                );
                ok = false;
            } else if key_chars > MAX_TAG_KEY_CHARS {
                self.report(
                    &key.referenced,
                    &key_field,
                    format!("expected a tag key of at most {MAX_TAG_KEY_CHARS} characters, found {key_chars}"),
                );
                ok = false;
            } else if let Some(prefix) = reserved {
                let owner = if *prefix == "aws:" {
                    "AWS reserves it"
                } else {
                    "snapferry sets these tags itself to find what a run created"
                };
                self.report(
                    &key.referenced,
                    &key_field,
                    format!("expected a tag key not starting with {prefix}, found `{}`: {owner}", key.value),
                );
                ok = false;
            }
            let value_chars = chars(&value.value);
            if value_chars > MAX_TAG_VALUE_CHARS {
                self.report(
                    &value.referenced,
                    &key_field,
                    format!("expected a tag value of at most {MAX_TAG_VALUE_CHARS} characters, found {value_chars}"),
                );
                ok = false;
            }
            match (&mut out, ok) {
                (Some(map), true) => {
                    map.insert(key.value.clone(), value.value.clone());
                }
                _ => out = None,
            }
        }
        out
    }

    fn options(&mut self, o: &RawOptions) -> Option<Options> {
        let defaults = Options::default();
        // Each field checked in the plan's order, every problem reported before any `?`.
        let tags = self.option_tags(o.tags.as_ref());
        let max_concurrent_copies = self.max_concurrent_copies(o.max_concurrent_copies.as_ref(), &defaults);
        let keep = self.keep(o.keep.as_ref());
        let timeouts = match &o.timeouts {
            Some(t) => self.timeouts(&t.value, defaults.timeouts),
            None => Some(defaults.timeouts),
        };
        let every = match &o.every {
            Some(v) => self.duration(Some(v), "options.every", Duration::ZERO).map(Some),
            None => Some(None),
        };
        let copy_within = self.copy_within(o.copy_within.as_ref());
        let keep_source = self.keep_source(o.keep_source.as_ref());
        let lock = match &o.lock {
            Some(l) => self.lock(&l.value, &l.referenced, "options.lock").map(Some),
            None => Some(None),
        };
        let history = self.history(o.history.as_ref(), &defaults);
        let verify = self.verify_level(o.verify.as_ref());
        Some(Options {
            verify: verify?,
            lock: lock?,
            tags: tags?,
            max_concurrent_copies: max_concurrent_copies?,
            cleanup: o.cleanup.as_ref().map_or(defaults.cleanup, |v| v.value),
            create_volume: o.create_volume.as_ref().map_or(defaults.create_volume, |v| v.value),
            keep: keep?,
            timeouts: timeouts?,
            every: every?,
            copy_within: copy_within?,
            keep_source: keep_source?,
            history: history?,
        })
    }

    /// `options.tags`: within what AWS allows per resource beside snapferry's own.
    fn option_tags(&mut self, tags: Option<&Spanned<TagMap>>) -> Option<BTreeMap<String, String>> {
        match tags {
            Some(t) => self.tags(t, "options.tags", true).and_then(|tags| {
                if tags.len() + OWN_TAGS > MAX_TAGS_PER_RESOURCE {
                    let message = format!(
                        "expected at most {} tags, found {}: AWS allows {MAX_TAGS_PER_RESOURCE} per resource and snapferry adds {OWN_TAGS}",
                        MAX_TAGS_PER_RESOURCE - OWN_TAGS,
                        tags.len()
                    );
                    self.report(&t.referenced, "options.tags", message);
                    return None;
                }
                Some(tags)
            }),
            None => Some(BTreeMap::new()),
        }
    }

    /// `options.max_concurrent_copies`: 1 to what AWS runs at once per region.
    fn max_concurrent_copies(&mut self, v: Option<&Spanned<i64>>, defaults: &Options) -> Option<u32> {
        match v {
            Some(v) if !(1..=i64::from(MAX_CONCURRENT_COPIES)).contains(&v.value) => {
                let message = format!(
                    "expected 1 to {MAX_CONCURRENT_COPIES}, found {}: AWS runs at most \
                     {MAX_CONCURRENT_COPIES} snapshot copies at once per destination region",
                    v.value
                );
                self.report(&v.referenced, "options.max_concurrent_copies", message);
                None
            }
            Some(v) => u32::try_from(v.value).ok(),
            None => Some(defaults.max_concurrent_copies),
        }
    }

    /// `options.keep`: how many copies retention keeps, if any limit.
    fn keep(&mut self, keep: Option<&Spanned<i64>>) -> Option<Option<u32>> {
        match keep {
            Some(v) => match u32::try_from(v.value) {
                Ok(0) | Err(_) if v.value < 1 => {
                    let message =
                        format!("expected 1 or more, found {}: to keep every snapshot, leave keep out", v.value);
                    self.report(&v.referenced, "options.keep", message);
                    None
                }
                Err(_) => {
                    let message = format!("expected at most {}, found {}", u32::MAX, v.value);
                    self.report(&v.referenced, "options.keep", message);
                    None
                }
                Ok(n) => Some(Some(n)),
            },
            None => Some(None),
        }
    }

    /// `options.copy_within`: a CompletionDurationMinutes AWS accepts.
    fn copy_within(&mut self, copy_within: Option<&Spanned<String>>) -> Option<Option<CopyWithin>> {
        match copy_within {
            Some(v) => self.duration(Some(v), "options.copy_within", Duration::ZERO).and_then(|d| {
                let secs = d.as_secs();
                let minutes = u32::try_from(secs / 60).ok().filter(|_| secs % 60 == 0);
                match minutes.and_then(CopyWithin::from_minutes) {
                    Some(c) => Some(Some(c)),
                    None => {
                        let message = format!(
                            "expected 15m to 48h in steps of 15 minutes (CopySnapshot CompletionDurationMinutes), found `{}`",
                            v.value
                        );
                        self.report(&v.referenced, "options.copy_within", message);
                        None
                    }
                }
            }),
            None => Some(None),
        }
    }

    /// `options.keep_source`: source snapshots kept after cleanup.
    fn keep_source(&mut self, keep_source: Option<&Spanned<i64>>) -> Option<u32> {
        match keep_source {
            Some(v) => match u32::try_from(v.value) {
                Ok(n) => Some(n),
                Err(_) => {
                    let message = format!("expected 0 or more, found {}", v.value);
                    self.report(&v.referenced, "options.keep_source", message);
                    None
                }
            },
            None => Some(0),
        }
    }

    /// `options.history`: finished runs kept in the state, at least one.
    fn history(&mut self, history: Option<&Spanned<i64>>, defaults: &Options) -> Option<u32> {
        match history {
            Some(v) => match u32::try_from(v.value) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    let message = format!(
                        "expected a whole number from 1 to {}, found {}: the finished runs of the plan kept in the state",
                        u32::MAX,
                        v.value
                    );
                    self.report(&v.referenced, "options.history", message);
                    None
                }
            },
            None => Some(defaults.history),
        }
    }

    /// `options.verify`: none or a level.
    fn verify_level(&mut self, verify: Option<&Spanned<String>>) -> Option<Option<crate::verify::Level>> {
        match verify {
            Some(v) if v.value == "none" => Some(None),
            Some(v) => match crate::verify::Level::parse(&v.value) {
                Some(level) => Some(Some(level)),
                None => {
                    let message = format!("expected none, map, sample or full, found `{}`", v.value);
                    self.report(&v.referenced, "options.verify", message);
                    None
                }
            },
            None => Some(None),
        }
    }

    fn timeouts(&mut self, t: &RawTimeouts, defaults: Timeouts) -> Option<Timeouts> {
        let snapshot = self.duration(t.snapshot.as_ref(), "options.timeouts.snapshot", defaults.snapshot);
        let copy = self.duration(t.copy.as_ref(), "options.timeouts.copy", defaults.copy);
        let volume = self.duration(t.volume.as_ref(), "options.timeouts.volume", defaults.volume);
        Some(Timeouts { snapshot: snapshot?, copy: copy?, volume: volume? })
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, field: &str, default: Duration) -> Option<Duration> {
        let Some(v) = value else {
            return Some(default);
        };
        match duration::parse(&v.value) {
            Ok(d) if d.is_zero() => {
                let message = format!("expected a duration greater than zero, found `{}`", v.value);
                self.report(&v.referenced, field, message);
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                let message = format!("expected {}, found `{}`: {e}", duration::EXPECTED, v.value);
                self.report(&v.referenced, field, message);
                None
            }
        }
    }
}

/// The bounds of one performance override.
struct PerformanceLimit {
    what: &'static str,
    max: i64,
    /// Volume types that accept the setting.
    types: &'static [&'static str],
}
