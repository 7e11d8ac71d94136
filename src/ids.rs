//! Identifiers shared by every layer: accounts, regions, volumes, snapshots, keys,
//! roles and zones, each a newtype whose constructor checks its syntax.
//!
//! A value of one of these types is known to be well formed, so code past the plan
//! parser never re-checks a string. They hold no AWS SDK types and do no I/O.

use std::fmt;

/// Why a string is not a valid identifier of some kind: what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub expected: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}", self.expected)
    }
}

impl std::error::Error for IdError {}

macro_rules! newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        // Checkpoints are read back through the same checks as the plan.
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

newtype!(
    /// A 12-digit AWS account id.
    AccountId
);
impl AccountId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError { expected: "a 12-digit AWS account id in quotes, like \"111111111111\"" })
        }
    }
}

newtype!(
    /// An AWS region name such as `us-east-1` or `us-gov-west-1`.
    Region
);
impl Region {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        // <area>(-<sub>)*-<direction>-<digit>, all lower case: us-east-1, ap-southeast-2,
        // us-gov-west-1, cn-north-1, eu-central-2, il-central-1, mx-central-1.
        let parts: Vec<&str> = s.split('-').collect();
        let ok = parts.len() >= 3
            && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts[0].len() == 2
            && parts.last().is_some_and(|d| !d.is_empty() && d.len() <= 2 && d.bytes().all(|b| b.is_ascii_digit()));
        if ok { Ok(Self(s.to_owned())) } else { Err(IdError { expected: "an AWS region name like us-east-1" }) }
    }

    /// The ARN partition this region belongs to.
    pub fn partition(&self) -> &'static str {
        if self.0.starts_with("cn-") {
            "aws-cn"
        } else if self.0.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        }
    }
}

newtype!(
    /// An availability zone name: its region followed by a letter, like `eu-west-1a`.
    AvailabilityZone
);
impl AvailabilityZone {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = IdError { expected: "an availability zone name like eu-west-1a" };
        let Some(last) = s.chars().last() else { return Err(err) };
        if !last.is_ascii_lowercase() {
            return Err(err);
        }
        Region::parse(&s[..s.len() - 1]).map_err(|_| err.clone())?;
        Ok(Self(s.to_owned()))
    }

    /// The region this zone lies in.
    pub fn region(&self) -> Region {
        Region(self.0[..self.0.len() - 1].to_owned())
    }
}

newtype!(
    /// An EBS volume id, `vol-` and 8 or 17 hex digits.
    VolumeId
);
impl VolumeId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.strip_prefix("vol-") {
            Some(h) if (h.len() == 8 || h.len() == 17) && is_lower_hex(h) => Ok(Self(s.to_owned())),
            _ => Err(IdError { expected: "a volume id: vol- followed by 8 or 17 lower-case hex digits" }),
        }
    }
}

newtype!(
    /// An EBS snapshot id, `snap-` and 8 or 17 hex digits.
    SnapshotId
);
impl SnapshotId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.strip_prefix("snap-") {
            Some(h) if (h.len() == 8 || h.len() == 17) && is_lower_hex(h) => Ok(Self(s.to_owned())),
            _ => Err(IdError { expected: "a snapshot id: snap- followed by 8 or 17 lower-case hex digits" }),
        }
    }
}

newtype!(
    /// A reference to a KMS key as a user writes it: `alias/NAME`, a key id (UUID or
    /// `mrk-` id), a key ARN or an alias ARN.
    KeyRef
);
impl KeyRef {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = IdError { expected: "a KMS key: alias/NAME, a key id, a key ARN or an alias ARN" };
        let alias_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 250
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
        };
        let key_id_ok = |id: &str| {
            let uuid = id.len() == 36
                && id
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() });
            let mrk =
                id.strip_prefix("mrk-").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            uuid || mrk
        };
        let ok = if let Some(name) = s.strip_prefix("alias/") {
            alias_ok(name)
        } else if let Some(rest) = s.strip_prefix("arn:") {
            // arn:PARTITION:kms:REGION:ACCOUNT:key/ID or :alias/NAME
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            parts.len() == 5
                && parts[1] == "kms"
                && Region::parse(parts[2]).is_ok()
                && AccountId::parse(parts[3]).is_ok()
                && (parts[4].strip_prefix("key/").is_some_and(key_id_ok)
                    || parts[4].strip_prefix("alias/").is_some_and(alias_ok))
        } else {
            key_id_ok(s)
        };
        if ok { Ok(Self(s.to_owned())) } else { Err(err) }
    }

    /// `alias/aws/...` (or its ARN form): an AWS managed key such as `aws/ebs`, which cannot be shared.
    pub fn is_aws_managed_alias(&self) -> bool {
        // Every alias under alias/aws/ names an AWS managed key (aws/ebs among them).
        self.0.starts_with("alias/aws/") || self.0.contains(":alias/aws/")
    }

    /// The region named in an ARN form, if any.
    pub fn arn_region(&self) -> Option<Region> {
        let rest = self.0.strip_prefix("arn:")?;
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        Region::parse(parts.get(2)?).ok()
    }

    /// The account named in an ARN form, if any.
    pub fn arn_account(&self) -> Option<AccountId> {
        let rest = self.0.strip_prefix("arn:")?;
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        AccountId::parse(parts.get(3)?).ok()
    }
}

newtype!(
    /// The ARN of a KMS key (never an alias): what key policies and IAM resources name.
    KeyArn
);
impl KeyArn {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let k = KeyRef::parse(s).map_err(|_| IdError { expected: "a KMS key ARN" })?;
        if s.starts_with("arn:") && s.contains(":key/") {
            Ok(Self(k.0))
        } else {
            Err(IdError { expected: "a KMS key ARN" })
        }
    }

    pub fn region(&self) -> Option<Region> {
        KeyRef(self.0.clone()).arn_region()
    }

    pub fn account(&self) -> Option<AccountId> {
        KeyRef(self.0.clone()).arn_account()
    }
}

newtype!(
    /// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
    RoleArn
);
impl RoleArn {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = IdError { expected: "an IAM role ARN like arn:aws:iam::222222222222:role/NAME" };
        let Some(rest) = s.strip_prefix("arn:") else { return Err(err) };
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let ok = parts.len() == 5
            && ["aws", "aws-cn", "aws-us-gov"].contains(&parts[0])
            && parts[1] == "iam"
            && parts[2].is_empty()
            && AccountId::parse(parts[3]).is_ok()
            && parts[4].strip_prefix("role/").is_some_and(|n| {
                !n.is_empty()
                    && n.len() <= 512
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
            });
        if ok { Ok(Self(s.to_owned())) } else { Err(err) }
    }

    /// The account the role lives in.
    pub fn account(&self) -> AccountId {
        AccountId(self.0.split(':').nth(4).unwrap_or_default().to_owned())
    }
}

newtype!(
    /// A plan name: 1 to 48 characters of `[a-z0-9-]`. It appears in tags, run ids and
    /// the key-policy statement id.
    PlanName
);
impl PlanName {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if !s.is_empty()
            && s.len() <= 48
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError { expected: "1 to 48 characters of a-z, 0-9 and -" })
        }
    }
}

newtype!(
    /// A run id: the plan name, a UTC timestamp and a random suffix, or a name the user
    /// chose with `--run-id` (1 to 64 characters of `[A-Za-z0-9._-]`).
    RunId
);
impl RunId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !s.starts_with('.')
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError { expected: "1 to 64 characters of A-Z, a-z, 0-9, ., _ and -, not starting with ." })
        }
    }

    /// A run id minted for `plan` at `now_ms` with the random `suffix`:
    /// `<plan>-<UTC yyyymmddThhmmssZ>-<4 hex>`, sortable, readable, unique.
    pub fn mint(plan: &str, now_ms: i64, suffix: [u8; 2]) -> String {
        let ts = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        format!("{plan}-{}-{:02x}{:02x}", ts.strftime("%Y%m%dT%H%M%SZ"), suffix[0], suffix[1])
    }

    /// The plan a minted run id names (`<plan>-<yyyymmddThhmmssZ>-<4 hex>`); none for a
    /// name chosen with `--run-id` that has not that shape.
    pub fn minted_plan(s: &str) -> Option<PlanName> {
        let (rest, suffix) = s.rsplit_once('-')?;
        let (plan, stamp) = rest.rsplit_once('-')?;
        let stamp_ok = stamp.len() == 16
            && stamp.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'T',
                15 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        let suffix_ok = suffix.len() == 4 && suffix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !(stamp_ok && suffix_ok) {
            return None;
        }
        PlanName::parse(plan).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_run_id_names_its_plan() {
        let id = RunId::mint("prod-db-dr", 1_795_000_000_123, [0x0a, 0x9f]);
        assert_eq!(id, "prod-db-dr-20261118T110640Z-0a9f");
        assert_eq!(RunId::minted_plan(&id).unwrap().as_str(), "prod-db-dr");
        assert!(RunId::parse(&id).is_ok());
        assert_eq!(RunId::minted_plan("prod-db-dr-20261201T000000Z-0a9f").unwrap().as_str(), "prod-db-dr");
        assert!(RunId::minted_plan("nightly").is_none());
        assert!(RunId::minted_plan("p-20261201T000000-0a9f").is_none());
        assert!(RunId::minted_plan("p-20261201T000000Z-0A9F").is_none());
        assert!(RunId::minted_plan("Prod-20261201T000000Z-0a9f").is_none());
        assert!(RunId::minted_plan("-20261201T000000Z-0a9f").is_none());
    }

    #[test]
    fn accepts_well_formed_ids() {
        assert!(AccountId::parse("111111111111").is_ok());
        assert!(Region::parse("us-east-1").is_ok());
        assert!(Region::parse("us-gov-west-1").is_ok());
        assert!(AvailabilityZone::parse("eu-west-1a").unwrap().region().as_str() == "eu-west-1");
        assert!(VolumeId::parse("vol-0123456789abcdef0").is_ok());
        assert!(VolumeId::parse("vol-01234567").is_ok());
        assert!(SnapshotId::parse("snap-0123456789abcdef0").is_ok());
        assert!(KeyRef::parse("alias/prod-ebs-share").is_ok());
        assert!(KeyRef::parse("1234abcd-12ab-34cd-56ef-1234567890ab").is_ok());
        assert!(KeyRef::parse("arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab").is_ok());
        assert!(KeyRef::parse("arn:aws:kms:us-east-1:111111111111:alias/x").is_ok());
        assert!(
            RoleArn::parse("arn:aws:iam::222222222222:role/snapferry-dr").unwrap().account().as_str() == "222222222222"
        );
        assert!(PlanName::parse("prod-db-dr").is_ok());
    }

    #[test]
    fn refuses_malformed_ids() {
        assert!(AccountId::parse("11111111111").is_err());
        assert!(AccountId::parse("11111111111a").is_err());
        assert!(Region::parse("useast1").is_err());
        assert!(Region::parse("US-EAST-1").is_err());
        assert!(AvailabilityZone::parse("eu-west-1").is_err());
        assert!(VolumeId::parse("vol-xyz").is_err());
        assert!(VolumeId::parse("snap-0123456789abcdef0").is_err());
        assert!(KeyRef::parse("prod-key").is_err());
        assert!(RoleArn::parse("arn:aws:iam::222222222222:user/x").is_err());
        assert!(PlanName::parse("Prod").is_err());
        assert!(PlanName::parse(&"a".repeat(49)).is_err());
    }
}
