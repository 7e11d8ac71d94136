//! The plan file exactly as written: serde structs that mirror the YAML, every value
//! paired with its position, nothing checked beyond its YAML type.
//!
//! Every field is optional here, even the required ones, so that a missing key is
//! reported by validation together with every other problem instead of stopping serde
//! at the first one. Unknown keys are refused (`deny_unknown_fields`). The JSON Schema
//! printed by `snapferry schema` is derived from these structs, so their doc comments
//! are the field descriptions users see, and the schema marks as required what
//! validation requires.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A snapferry plan: which EBS volumes to copy, from where to where, under which keys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "snapferry plan")]
#[schemars(extend("oneOf" = [{"required": ["target"]}, {"required": ["targets"]}]))]
pub struct RawPlan {
    /// Format version of the plan file; only 1 exists.
    #[schemars(with = "u64", extend("const" = 1))]
    pub version: Option<Spanned<i64>>,
    /// 1 to 48 characters of a-z, 0-9 and -. It appears in tags, run ids and the
    /// key-policy statement id.
    #[schemars(with = "String", regex(pattern = r"^[a-z0-9-]{1,48}$"))]
    pub name: Option<Spanned<String>>,
    /// Where the volumes are: region, account, and the key the shared snapshot is under.
    #[schemars(with = "RawSource")]
    pub source: Option<Spanned<RawSource>>,
    /// Where the copies go: region, account, role, key and availability zone. Exactly
    /// one of `target` and `targets`.
    #[schemars(with = "Option<RawTarget>")]
    pub target: Option<Spanned<RawTarget>>,
    /// Instead of `target`: several targets, each copy of every volume made in each;
    /// at most one per account and region.
    #[schemars(with = "Option<Vec<RawTarget>>", length(min = 1))]
    pub targets: Option<Spanned<Vec<Spanned<RawTarget>>>>,
    /// The volumes to copy, by id or by tag selector; at least one entry.
    #[schemars(with = "Vec<RawVolume>", length(min = 1))]
    pub volumes: Option<Spanned<Vec<Spanned<RawVolume>>>>,
    /// How the run behaves; every field is optional.
    #[schemars(with = "Option<RawOptions>")]
    pub options: Option<Spanned<RawOptions>>,
}

/// The source side of the copy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Source")]
pub struct RawSource {
    /// AWS region of the source volumes, like us-east-1.
    #[schemars(with = "String")]
    pub region: Option<Spanned<String>>,
    /// 12-digit account id, quoted. When given, checked against the caller identity.
    #[schemars(with = "Option<AccountText>")]
    pub account: Option<Spanned<AccountText>>,
    /// Named profile from the shared AWS config files.
    #[schemars(with = "Option<String>")]
    pub profile: Option<Spanned<String>>,
    /// Customer managed symmetric KMS key in the source region that the shared snapshot
    /// is encrypted under: alias/NAME, key id, key ARN or alias ARN. Not alias/aws/ebs,
    /// which cannot be shared.
    #[schemars(with = "String")]
    pub kms_key: Option<Spanned<String>>,
}

/// The target side of the copy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Target")]
pub struct RawTarget {
    /// AWS region the copies go to, like eu-west-1.
    #[schemars(with = "String")]
    pub region: Option<Spanned<String>>,
    /// 12-digit account id, quoted. Omitted or equal to the source account: a
    /// same-account copy, with no share and no role.
    #[schemars(with = "Option<AccountText>")]
    pub account: Option<Spanned<AccountText>>,
    /// IAM role in the target account to assume for the target side. Required when the
    /// target account differs from the source account, and when target.account is
    /// given without source.account.
    #[schemars(with = "Option<String>")]
    pub role_arn: Option<Spanned<String>>,
    /// External id passed to AssumeRole; only with role_arn.
    #[schemars(with = "Option<String>", length(min = 2, max = 1224), regex(pattern = r"^[\w+=,.@:/-]+$"))]
    pub external_id: Option<Spanned<String>>,
    /// Customer managed symmetric KMS key in the target account and region that the
    /// copies are encrypted under.
    #[schemars(with = "String")]
    pub kms_key: Option<Spanned<String>>,
    /// Availability zone in target.region for the new volumes, like eu-west-1a.
    #[schemars(with = "String")]
    pub availability_zone: Option<Spanned<String>>,
    /// The lock of this target's copies, instead of options.lock: a mapping like
    /// options.lock, or `none` for no lock at all.
    #[schemars(with = "Option<RawLockSetting>")]
    pub lock: Option<Spanned<RawLockSetting>>,
}

/// One entry of `volumes`: exactly one of `id` or `selector`, and optional overrides for
/// the target volumes it yields.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Volume")]
#[schemars(extend("oneOf" = [{"required": ["id"]}, {"required": ["selector"]}]))]
pub struct RawVolume {
    /// A source volume id: vol- followed by 8 or 17 lower-case hex digits.
    #[schemars(with = "Option<String>", regex(pattern = r"^vol-([0-9a-f]{8}|[0-9a-f]{17})$"))]
    pub id: Option<Spanned<String>>,
    /// Every volume in source.region carrying all of these tags.
    #[schemars(with = "Option<RawSelector>")]
    pub selector: Option<Spanned<RawSelector>>,
    /// EBS volume type of the target volume; default: the source volume's.
    #[schemars(
        with = "Option<String>",
        extend("enum" = ["standard", "gp2", "gp3", "io1", "io2", "st1", "sc1", null])
    )]
    pub volume_type: Option<Spanned<String>>,
    /// Provisioned IOPS of the target volume (gp3, io1, io2); default: the source's.
    #[schemars(with = "Option<u32>", range(min = 1, max = 256_000))]
    pub iops: Option<Spanned<i64>>,
    /// Throughput in MiB/s of the target volume (gp3); default: the source's.
    #[schemars(with = "Option<u32>", range(min = 1, max = 4_000))]
    pub throughput: Option<Spanned<i64>>,
    /// Tags on the target volume, besides the run's own.
    #[schemars(with = "Option<TagMap>")]
    pub tags: Option<Spanned<TagMap>>,
}

/// Picks source volumes by their tags.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Selector")]
pub struct RawSelector {
    /// Tags a volume must all carry to be picked; at least one.
    #[schemars(with = "TagMap")]
    pub tags: Option<Spanned<TagMap>>,
}

/// Run behaviour; every field optional.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Options")]
pub struct RawOptions {
    /// Tags on every resource the run creates. Keys starting with aws: or snapferry: are
    /// reserved.
    #[schemars(with = "Option<TagMap>")]
    pub tags: Option<Spanned<TagMap>>,
    /// Snapshot copies in flight per destination region, 1 to 20 (the EBS quota);
    /// default 20.
    #[schemars(with = "Option<u32>", range(min = 1, max = 20))]
    pub max_concurrent_copies: Option<Spanned<i64>>,
    /// After success, unshare and delete the intermediate source-side snapshots;
    /// default true.
    #[schemars(with = "Option<bool>")]
    pub cleanup: Option<Spanned<bool>>,
    /// False: stop at the target snapshot (scheduled replication); default true.
    #[schemars(with = "Option<bool>")]
    pub create_volume: Option<Spanned<bool>>,
    /// Retention: per source volume, keep the newest N target snapshots and volumes this
    /// plan made and delete older ones; default: keep all.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub keep: Option<Spanned<i64>>,
    /// The longest each kind of wait may take before its volume fails.
    #[schemars(with = "Option<RawTimeouts>")]
    pub timeouts: Option<Spanned<RawTimeouts>>,
    /// Recurring replication: each invocation copies a volume again only when its newest
    /// successful copy began at least 90% of this long ago (24h, 1h, ...).
    #[schemars(with = "Option<String>", length(min = 2), regex(pattern = DURATION_PATTERN))]
    pub every: Option<Spanned<String>>,
    /// Time-based copy: CopySnapshot's CompletionDurationMinutes, 15m to 48h in steps
    /// of 15 minutes.
    #[schemars(with = "Option<String>", length(min = 2), regex(pattern = DURATION_PATTERN))]
    pub copy_within: Option<Spanned<String>>,
    /// Keep the newest N source-side snapshots per volume even with cleanup: true;
    /// default 0.
    #[schemars(with = "Option<u32>", range(min = 0))]
    pub keep_source: Option<Spanned<i64>>,
    /// Finished runs of this plan kept in the state; older ones are removed at the end
    /// of an invocation (unfinished runs, and runs whose chains a later run carries,
    /// always stay); default 30.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub history: Option<Spanned<i64>>,
    /// Immutable copies: every target copy is locked (EBS snapshot lock) right after
    /// CopySnapshot returns; a target's own `lock` replaces this.
    #[schemars(with = "Option<RawLock>")]
    pub lock: Option<Spanned<RawLock>>,
    /// Verified copies: compare each copy with its source snapshot through the EBS
    /// direct APIs before the source side is cleaned up: `none` (default), `map` (the
    /// written blocks), `sample` (plus 256 blocks' checksums) or `full` (every block).
    #[schemars(with = "Option<String>", extend("enum" = ["none", "map", "sample", "full"]))]
    pub verify: Option<Spanned<String>>,
}

/// EBS snapshot lock of the target copies.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Lock")]
pub struct RawLock {
    /// `governance` (principals with ec2:UnlockSnapshot may unlock) or `compliance`
    /// (after cool_off nobody, root included, can unlock or delete the copy before its
    /// lock expires).
    #[schemars(with = "String", extend("enum" = ["governance", "compliance"]))]
    pub mode: Option<Spanned<String>>,
    /// How long each copy is locked, from its completion, in days: 1d to 36500d.
    #[schemars(with = "String", regex(pattern = r"^[0-9]+d$"))]
    pub duration: Option<Spanned<String>>,
    /// Compliance only, and required there: 1h to 72h during which the lock can still
    /// be undone.
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+h$"))]
    pub cool_off: Option<Spanned<String>>,
}

/// A target's `lock`: a mapping like options.lock, or the string `none`.
#[derive(Debug)]
pub enum RawLockSetting {
    Lock(Box<RawLock>),
    /// A string: `none`, or anything else (refused by validation).
    Word(String),
}

impl<'de> Deserialize<'de> for RawLockSetting {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LockVisitor;

        impl<'de> Visitor<'de> for LockVisitor {
            type Value = RawLockSetting;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping with mode and duration, or `none`")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawLockSetting, E> {
                Ok(RawLockSetting::Word(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawLockSetting, A::Error> {
                RawLock::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|l| RawLockSetting::Lock(Box::new(l)))
            }
        }

        deserializer.deserialize_any(LockVisitor)
    }
}

impl JsonSchema for RawLockSetting {
    fn schema_name() -> Cow<'static, str> {
        "TargetLock".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let lock = generator.subschema_for::<RawLock>();
        json_schema!({
            "description": "The lock of this target's copies, or `none` for no lock.",
            "oneOf": [lock, {"const": "none"}],
        })
    }
}

/// Wait limits, each a duration like 6h, 30m, 90s, 1h30m or 2d.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Timeouts")]
pub struct RawTimeouts {
    /// Source snapshot (and re-encryption copy) to complete; default 6h.
    #[schemars(with = "Option<String>", length(min = 2), regex(pattern = DURATION_PATTERN))]
    pub snapshot: Option<Spanned<String>>,
    /// Cross-region copy to complete; default 24h.
    #[schemars(with = "Option<String>", length(min = 2), regex(pattern = DURATION_PATTERN))]
    pub copy: Option<Spanned<String>>,
    /// Target volume to become available; default 30m.
    #[schemars(with = "Option<String>", length(min = 2), regex(pattern = DURATION_PATTERN))]
    pub volume: Option<Spanned<String>>,
}

const DURATION_PATTERN: &str = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$";

/// An account id as written. YAML reads an unquoted `111111111111` as an integer,
/// which would lose leading zeros; this keeps the integer apart so validation can ask
/// for quotes instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountText {
    /// A quoted (or otherwise non-numeric) string.
    Text(String),
    /// An unquoted number.
    Number,
}

impl<'de> Deserialize<'de> for AccountText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AccountVisitor;

        impl Visitor<'_> for AccountVisitor {
            type Value = AccountText;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 12-digit account id in quotes")
            }
            fn visit_str<E>(self, v: &str) -> Result<AccountText, E> {
                Ok(AccountText::Text(v.to_owned()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<AccountText, E> {
                Ok(AccountText::Number)
            }
            fn visit_i64<E>(self, _: i64) -> Result<AccountText, E> {
                Ok(AccountText::Number)
            }
            fn visit_u128<E>(self, _: u128) -> Result<AccountText, E> {
                Ok(AccountText::Number)
            }
            fn visit_i128<E>(self, _: i128) -> Result<AccountText, E> {
                Ok(AccountText::Number)
            }
            fn visit_f64<E>(self, _: f64) -> Result<AccountText, E> {
                Ok(AccountText::Number)
            }
        }

        deserializer.deserialize_any(AccountVisitor)
    }
}

impl JsonSchema for AccountText {
    fn schema_name() -> Cow<'static, str> {
        "AccountId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{12}$",
            "description": "A 12-digit AWS account id, quoted so YAML keeps it a string.",
        })
    }
}

/// A tag map in source order, each key and value with its position. Duplicate keys are
/// refused by the parser before this sees them.
#[derive(Debug, Default)]
pub struct TagMap(pub Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for TagMap {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagVisitor;

        impl<'de> Visitor<'de> for TagVisitor {
            type Value = TagMap;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of tag keys to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TagMap, A::Error> {
                let mut tags = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    tags.push(entry);
                }
                Ok(TagMap(tags))
            }
        }

        deserializer.deserialize_map(TagVisitor)
    }
}

impl JsonSchema for TagMap {
    fn schema_name() -> Cow<'static, str> {
        "Tags".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "EC2 tags: keys of 1 to 128 characters, values of up to 256. A number or true/false is taken as its text (`CostCenter: 1234`).",
            "propertyNames": {"minLength": 1, "maxLength": 128},
            "additionalProperties": {"anyOf": [{"type": "string", "maxLength": 256}, {"type": "number"}, {"type": "boolean"}]},
        })
    }
}
