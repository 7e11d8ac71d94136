//! The tags snapferry puts on everything a run creates in AWS (the contract's tag
//! table), by which a run finds its resources again without its state: the keys, and
//! the values of `snapferry:step` as [`StepTag`]. Pure: the one home of the keys and
//! the step values (the values of `snapferry:verify` are `verify`'s).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The plan name.
pub const TAG_PLAN: &str = "snapferry:plan";
/// The run id (of the chain: a recurring plan's carried chain keeps the run that began it).
pub const TAG_RUN: &str = "snapferry:run";
/// The source volume id.
pub const TAG_SOURCE_VOLUME: &str = "snapferry:source-volume";
/// Which step made the resource: a [`StepTag`].
pub const TAG_STEP: &str = "snapferry:step";
/// On a target copy and volume: when the chain they come from began (RFC 3339), its
/// source snapshot's time, which `every` counts from. Kept here because with
/// `cleanup: true` the source snapshot is gone once the copy is made, and freshness
/// rebuilt from tags (a lost state) must date from the same moment as with the state.
pub const TAG_CHAIN_STARTED: &str = "snapferry:chain-started";
/// On a target copy: the verification's result, `matched:<level>` or `failed`.
pub const TAG_VERIFY: &str = "snapferry:verify";

/// The value of [`TAG_STEP`]: which step of a volume's chain made a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepTag {
    /// The source snapshot (CreateSnapshot).
    Snapshot,
    /// The source snapshot copied under the source key (CopySnapshot in the source).
    Reencrypt,
    /// The copy in the target account and region (CopySnapshot in the target).
    Copy,
    /// The volume created from the copy (CreateVolume).
    Volume,
}

impl StepTag {
    pub const ALL: [StepTag; 4] = [StepTag::Snapshot, StepTag::Reencrypt, StepTag::Copy, StepTag::Volume];

    /// The tag value, as AWS stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepTag::Snapshot => "snapshot",
            StepTag::Reencrypt => "reencrypt",
            StepTag::Copy => "copy",
            StepTag::Volume => "volume",
        }
    }

    /// The step of the resource these tags mark, if they carry a known one.
    pub fn of(tags: &BTreeMap<String, String>) -> Option<StepTag> {
        tags.get(TAG_STEP)?.parse().ok()
    }

    /// True for what is made in a target account: it carries [`TAG_CHAIN_STARTED`].
    pub fn on_target(self) -> bool {
        matches!(self, StepTag::Copy | StepTag::Volume)
    }

    /// What a resource of this step is called in its description.
    pub fn noun(self) -> &'static str {
        match self {
            StepTag::Reencrypt => "re-encrypted snapshot",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for StepTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `snapferry:step` value that is none of [`StepTag`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown snapferry:step value {0:?}: expected snapshot, reencrypt, copy or volume")]
pub struct UnknownStepTag(pub String);

impl FromStr for StepTag {
    type Err = UnknownStepTag;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepTag::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownStepTag(s.to_owned()))
    }
}

/// The value of [`TAG_CHAIN_STARTED`] for a chain that began at `ms`.
pub fn chain_started_tag(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

/// The time a [`TAG_CHAIN_STARTED`] value stands for, in ms since the epoch.
pub fn parse_chain_started(tags: &BTreeMap<String, String>) -> Option<i64> {
    tags.get(TAG_CHAIN_STARTED)?.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_is_the_contracts_and_parses_back() {
        let values: Vec<&str> = StepTag::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(values, ["snapshot", "reencrypt", "copy", "volume"]);
        for t in StepTag::ALL {
            assert_eq!(t.as_str().parse::<StepTag>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert!("Snapshot".parse::<StepTag>().is_err(), "values are matched exactly");
        assert!("".parse::<StepTag>().is_err());
    }

    #[test]
    fn of_reads_the_step_key_only() {
        let tags = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(StepTag::of(&tags(TAG_STEP, "copy")), Some(StepTag::Copy));
        assert_eq!(StepTag::of(&tags(TAG_STEP, "lock")), None);
        assert_eq!(StepTag::of(&tags(TAG_RUN, "copy")), None);
        assert_eq!(StepTag::of(&BTreeMap::new()), None);
    }

    #[test]
    fn chain_started_round_trips() {
        let t = chain_started_tag(1_700_000_000_123).unwrap();
        assert_eq!(parse_chain_started(&BTreeMap::from([(TAG_CHAIN_STARTED.to_owned(), t)])), Some(1_700_000_000_123));
    }
}
