//! Conversions between SDK shapes and snapferry's domain types, and the small parsers
//! they need: progress percentages, timestamps, tags and the ids named in EC2's
//! "does not exist" messages.

use aws_sdk_ec2::types as ec2;
use aws_smithy_types::DateTime;

use super::error::bad_answer;
use crate::cloud::{CloudResult, Snapshot, SnapshotState, Tags, Volume, VolumeState};
use crate::ids::{AccountId, SnapshotId, VolumeId};

/// `"37%"` (EC2's `Progress`) to 37; anything unreadable to `None`, since progress is
/// only shown to the user, never decided on.
pub(crate) fn parse_progress(s: &str) -> Option<u8> {
    let n: u8 = s.trim().trim_end_matches('%').trim().parse().ok()?;
    (n <= 100).then_some(n)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn millis(t: Option<&DateTime>) -> Option<i64> {
    t.and_then(|t| t.to_millis().ok())
}

/// Every id with `prefix` (`snap-` or `vol-`) named in an EC2 error message, such as
/// `The snapshot 'snap-0123' does not exist.` or
/// `The volumes 'vol-1, vol-2' do not exist.`
pub(crate) fn ids_in_message(message: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find(prefix) {
        // A match inside a longer word (e.g. "xsnap-") is not an id.
        let preceded_by_word = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric());
        let tail = &rest[at + prefix.len()..];
        let len = tail.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
        if !preceded_by_word && len > 0 {
            out.push(format!("{prefix}{}", &tail[..len]));
        }
        rest = &tail[len..];
    }
    out
}

pub(crate) fn to_sdk_tags(tags: &Tags) -> Vec<ec2::Tag> {
    tags.iter().map(|(k, v)| ec2::Tag::builder().key(k).value(v).build()).collect()
}

/// A `TagSpecifications` entry, or none for no tags: EC2 refuses an empty tag list.
pub(crate) fn tag_spec(kind: ec2::ResourceType, tags: &Tags) -> Option<Vec<ec2::TagSpecification>> {
    (!tags.is_empty())
        .then(|| vec![ec2::TagSpecification::builder().resource_type(kind).set_tags(Some(to_sdk_tags(tags))).build()])
}

/// One `tag:KEY = VALUE` filter per tag, so a resource must carry all of them.
pub(crate) fn tag_filters(tags: &Tags) -> Vec<ec2::Filter> {
    tags.iter().map(|(k, v)| ec2::Filter::builder().name(format!("tag:{k}")).values(v).build()).collect()
}

fn from_sdk_tags(tags: Option<Vec<ec2::Tag>>) -> Tags {
    tags.unwrap_or_default().into_iter().filter_map(|t| Some((t.key?, t.value.unwrap_or_default()))).collect()
}

fn snapshot_state(s: Option<&ec2::SnapshotState>) -> SnapshotState {
    match s {
        Some(ec2::SnapshotState::Pending) => SnapshotState::Pending,
        Some(ec2::SnapshotState::Completed) => SnapshotState::Completed,
        Some(ec2::SnapshotState::Error) => SnapshotState::Error,
        _ => SnapshotState::Other,
    }
}

fn volume_state(s: Option<&ec2::VolumeState>) -> VolumeState {
    match s {
        Some(ec2::VolumeState::Creating) => VolumeState::Creating,
        Some(ec2::VolumeState::Available) => VolumeState::Available,
        Some(ec2::VolumeState::InUse) => VolumeState::InUse,
        Some(ec2::VolumeState::Deleting) => VolumeState::Deleting,
        Some(ec2::VolumeState::Deleted) => VolumeState::Deleted,
        Some(ec2::VolumeState::Error) => VolumeState::Error,
        _ => VolumeState::Other,
    }
}

/// EC2 reports "no such value" as an empty string in places (a volume's SnapshotId).
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

pub(crate) fn snapshot(action: &str, s: ec2::Snapshot) -> CloudResult<Snapshot> {
    let raw_id = s.snapshot_id.unwrap_or_default();
    let id = SnapshotId::parse(&raw_id).map_err(|_| bad_answer(action, &format!("snapshot id {raw_id:?}")))?;
    Ok(Snapshot {
        id,
        volume_id: non_empty(s.volume_id),
        owner: s.owner_id.as_deref().and_then(|o| AccountId::parse(o).ok()),
        state: snapshot_state(s.state.as_ref()),
        progress: s.progress.as_deref().and_then(parse_progress),
        state_message: non_empty(s.state_message),
        encrypted: s.encrypted.unwrap_or(false),
        kms_key_id: non_empty(s.kms_key_id),
        size_gib: s.volume_size,
        tags: from_sdk_tags(s.tags),
        start_time_ms: millis(s.start_time.as_ref()),
    })
}

pub(crate) fn volume(action: &str, v: ec2::Volume) -> CloudResult<Volume> {
    let raw_id = v.volume_id.unwrap_or_default();
    let id = VolumeId::parse(&raw_id).map_err(|_| bad_answer(action, &format!("volume id {raw_id:?}")))?;
    Ok(Volume {
        id,
        state: volume_state(v.state.as_ref()),
        availability_zone: v.availability_zone.unwrap_or_default(),
        size_gib: v.size.unwrap_or(0),
        encrypted: v.encrypted.unwrap_or(false),
        kms_key_id: non_empty(v.kms_key_id),
        volume_type: v.volume_type.map(|t| t.as_str().to_owned()),
        iops: v.iops,
        throughput: v.throughput,
        snapshot_id: non_empty(v.snapshot_id),
        tags: from_sdk_tags(v.tags),
        attachments: v.attachments.map_or(0, |a| a.len()),
        create_time_ms: millis(v.create_time.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::{StepTag, TAG_STEP};

    #[test]
    fn progress_is_parsed_from_percent_strings() {
        assert_eq!(parse_progress("37%"), Some(37));
        assert_eq!(parse_progress("0%"), Some(0));
        assert_eq!(parse_progress("100%"), Some(100));
        assert_eq!(parse_progress(" 5 % "), Some(5));
        assert_eq!(parse_progress("42"), Some(42));
        assert_eq!(parse_progress(""), None);
        assert_eq!(parse_progress("101%"), None);
        assert_eq!(parse_progress("abc"), None);
    }

    #[test]
    fn missing_ids_are_read_from_not_found_messages() {
        assert_eq!(
            ids_in_message("The snapshot 'snap-0123456789abcdef0' does not exist.", "snap-"),
            vec!["snap-0123456789abcdef0"]
        );
        assert_eq!(
            ids_in_message("The volumes 'vol-11111111, vol-22222222' do not exist.", "vol-"),
            vec!["vol-11111111", "vol-22222222"]
        );
        assert_eq!(ids_in_message("The snapshot 'snap-1,snap-2' does not exist.", "snap-"), vec!["snap-1", "snap-2"]);
        assert!(ids_in_message("The snapshot ID does not exist.", "snap-").is_empty());
        assert!(ids_in_message("xsnap-1 snap-", "snap-").is_empty());
    }

    #[test]
    fn tags_round_trip_and_filters_require_each_tag() {
        let tags: Tags = [("a".to_owned(), "1".to_owned()), ("b".to_owned(), String::new())].into();
        assert_eq!(from_sdk_tags(Some(to_sdk_tags(&tags))), tags);
        let filters = tag_filters(&tags);
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0].name(), Some("tag:a"));
        assert_eq!(filters[0].values(), ["1".to_owned()]);
        assert!(tag_spec(ec2::ResourceType::Snapshot, &Tags::new()).is_none());
    }

    #[test]
    fn snapshots_convert_with_progress_and_time() {
        let s = ec2::Snapshot::builder()
            .snapshot_id("snap-0123456789abcdef0")
            .volume_id("vol-0123456789abcdef0")
            .owner_id("111111111111")
            .state(ec2::SnapshotState::Pending)
            .progress("37%")
            .encrypted(true)
            .kms_key_id("arn:aws:kms:us-east-1:111111111111:key/k")
            .volume_size(8)
            .start_time(DateTime::from_millis(1_700_000_000_123))
            .tags(ec2::Tag::builder().key(TAG_STEP).value(StepTag::Snapshot.as_str()).build())
            .build();
        let d = snapshot("ec2:DescribeSnapshots", s).unwrap();
        assert_eq!(d.state, SnapshotState::Pending);
        assert_eq!(d.progress, Some(37));
        assert_eq!(d.start_time_ms, Some(1_700_000_000_123));
        assert_eq!(d.owner.unwrap().as_str(), "111111111111");
        assert_eq!(StepTag::of(&d.tags), Some(StepTag::Snapshot));
        assert!(snapshot("ec2:DescribeSnapshots", ec2::Snapshot::builder().build()).is_err());
    }

    #[test]
    fn volumes_convert_with_empty_strings_as_none() {
        let v = ec2::Volume::builder()
            .volume_id("vol-0123456789abcdef0")
            .state(ec2::VolumeState::InUse)
            .availability_zone("eu-west-1a")
            .size(100)
            .snapshot_id("")
            .volume_type(ec2::VolumeType::Gp3)
            .attachments(ec2::VolumeAttachment::builder().build())
            .build();
        let d = volume("ec2:DescribeVolumes", v).unwrap();
        assert_eq!(d.state, VolumeState::InUse);
        assert_eq!(d.snapshot_id, None);
        assert_eq!(d.volume_type.as_deref(), Some("gp3"));
        assert_eq!(d.attachments, 1);
    }
}
