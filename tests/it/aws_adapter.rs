//! The AWS adapter against moto, a local emulator of EC2, KMS, STS and S3: every call
//! of the `Cloud` trait, and of the state bucket's `ObjectStore` (conditional writes,
//! the bucket's region asked of S3), goes through the real SDK, over loopback HTTP, to
//! the project's moto server ([`Moto`], the same launcher the end-to-end tests use) on
//! a free port.
//!
//! The SDK takes credentials from the environment, and the environment of a running
//! test cannot be changed safely, so the test runs its checks in a child process of
//! this same test binary with the emulator's endpoint and test credentials set. The
//! checks are independent sections, each with its own resources; every section runs
//! and every failing one is reported, so one failure does not hide the others.
//!
//! moto must be installed (`scripts/test` installs the pinned version); the launcher
//! fails with the pip line when it is missing.
//!
//! Moto answers like AWS for what is checked here; what it leaves out (cross-account
//! CopySnapshot, pending states and Progress, ClientToken, key policy enforcement) is
//! covered by the simulated cloud instead.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;

use snapferry::cloud::aws::{AwsCloud, AwsConfig};
use snapferry::cloud::{
    Cloud, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, DecryptReq, EncryptionContext, ErrorKind, KeyManager,
    Loc, Side, SnapshotState, Tags, TargetAccess,
};
use snapferry::ids::{AccountId, AvailabilityZone, KeyArn, KeyRef, Region, RoleArn, SnapshotId, VolumeId};

use super::support::moto::Moto;

/// Set in the child process: the emulator's endpoint.
const ENDPOINT_VAR: &str = "SNAPFERRY_IT_MOTO_ENDPOINT";
/// Set in the child process: what the seed script made, space separated.
const SEED_VAR: &str = "SNAPFERRY_IT_MOTO_SEED";
/// The account moto answers as for plain credentials.
const SOURCE_ACCOUNT: &str = "123456789012";
/// Moto answers as the account of the role assumed.
const TARGET_ACCOUNT: &str = "222222222222";

/// Makes, with boto3 against moto, what the trait cannot: a source volume, a key in
/// each account, and a source-account key in eu-west-1 for copies there (a key only
/// works in its own region). Prints `VOLUME SOURCE_KEY_ARN TARGET_KEY_ARN DR_KEY_ARN`.
const SEED_SCRIPT: &str = r#"
import sys, boto3
ep = sys.argv[1]
ec2 = boto3.client("ec2", endpoint_url=ep, region_name="us-east-1")
vol = ec2.create_volume(Size=8, AvailabilityZone="us-east-1a", TagSpecifications=[
    {"ResourceType": "volume", "Tags": [{"Key": "Backup", "Value": "dr"}, {"Key": "Name", "Value": "it-db"}]}])
kms = boto3.client("kms", endpoint_url=ep, region_name="us-east-1")
src = kms.create_key(Description="snapferry it source")["KeyMetadata"]
kms.create_alias(AliasName="alias/it-src", TargetKeyId=src["KeyId"])
sts = boto3.client("sts", endpoint_url=ep, region_name="us-east-1")
c = sts.assume_role(RoleArn="arn:aws:iam::222222222222:role/snapferry-dr", RoleSessionName="seed")["Credentials"]
tkms = boto3.client("kms", endpoint_url=ep, region_name="eu-west-1", aws_access_key_id=c["AccessKeyId"],
                    aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
dst = tkms.create_key(Description="snapferry it target")["KeyMetadata"]
tkms.create_alias(AliasName="alias/it-dst", TargetKeyId=dst["KeyId"])
dr = boto3.client("kms", endpoint_url=ep, region_name="eu-west-1").create_key(Description="snapferry it dr")
print(vol["VolumeId"], src["Arn"], dst["Arn"], dr["KeyMetadata"]["Arn"])
"#;

/// The environment of the child: test credentials, nothing from the user's own
/// configuration, no instance metadata lookups.
fn isolate(cmd: &mut Command) -> &mut Command {
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_KMS",
        "AWS_ENDPOINT_URL_STS",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/nonexistent/snapferry-it/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/snapferry-it/credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

#[test]
fn adapter_against_moto() {
    if let (Ok(endpoint), Ok(seed)) = (std::env::var(ENDPOINT_VAR), std::env::var(SEED_VAR)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(scenario(&endpoint, &seed));
        return;
    }
    let moto = Moto::start();

    let seed = isolate(Command::new("python3").args(["-c", SEED_SCRIPT, &moto.endpoint]))
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run the seed script");
    assert!(seed.status.success(), "seed script failed: {}", String::from_utf8_lossy(&seed.stderr));
    let seed = String::from_utf8(seed.stdout).unwrap();

    let child = isolate(&mut Command::new(std::env::current_exe().unwrap()))
        .args(["aws_adapter::adapter_against_moto", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENDPOINT_VAR, &moto.endpoint)
        .env(SEED_VAR, seed.trim())
        .output()
        .expect("run the scenario in a child process");
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "sections failed\n--- stdout\n{out}\n--- stderr\n{err}");
    // The child must really have run the scenario, not filtered it away.
    assert!(out.contains("1 passed"), "scenario did not run\n--- stdout\n{out}\n--- stderr\n{err}");
}

fn region(s: &str) -> Region {
    Region::parse(s).unwrap()
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn config(endpoint: &str) -> AwsConfig {
    AwsConfig {
        source_region: region("us-east-1"),
        source_profile: None,
        endpoint_url: Some(endpoint.to_owned()),
        targets: vec![TargetAccess {
            role: Some(RoleArn::parse("arn:aws:iam::222222222222:role/snapferry-dr").unwrap()),
            external_id: Some("it-external-id".to_owned()),
        }],
        session_name: "snapferry-it-run".to_owned(),
    }
}

/// What every section starts from: the adapter on moto and what the seed made.
struct Fixture {
    endpoint: String,
    cloud: AwsCloud,
    volume: VolumeId,
    source_key: KeyArn,
    target_key: KeyArn,
    /// A source-account key in eu-west-1.
    dr_key: KeyArn,
    src: Loc,
    src_dr: Loc,
    dst: Loc,
    target_account: AccountId,
}

type Section = fn(Arc<Fixture>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every section, by name. Each makes its own resources, tagged with its name.
const SECTIONS: [(&str, Section); 10] = [
    ("identities", |f| Box::pin(identities(f))),
    ("keys", |f| Box::pin(keys(f))),
    ("key_policy", |f| Box::pin(key_policy(f))),
    ("volumes", |f| Box::pin(volumes(f))),
    ("snapshots_and_sharing", |f| Box::pin(snapshots_and_sharing(f))),
    ("copy_then_volume", |f| Box::pin(copy_then_volume(f))),
    ("snapshot_lock", |f| Box::pin(snapshot_lock(f))),
    ("envelope_calls", |f| Box::pin(envelope_calls(f))),
    ("configuration", |f| Box::pin(configuration(f))),
    ("unreachable_endpoint", |f| Box::pin(unreachable_endpoint(f))),
];

/// Runs every section, each as its own task so a failed assertion ends only that
/// section, and fails naming every section that failed.
async fn scenario(endpoint: &str, seed: &str) {
    let seed: Vec<&str> = seed.split_whitespace().collect();
    let f = Arc::new(Fixture {
        endpoint: endpoint.to_owned(),
        cloud: AwsCloud::connect(config(endpoint)).await.unwrap(),
        volume: VolumeId::parse(seed[0]).unwrap(),
        source_key: KeyArn::parse(seed[1]).unwrap(),
        target_key: KeyArn::parse(seed[2]).unwrap(),
        dr_key: KeyArn::parse(seed[3]).unwrap(),
        src: Loc::new(Side::Source, &region("us-east-1")),
        src_dr: Loc::new(Side::Source, &region("eu-west-1")),
        dst: Loc::new(Side::TARGET, &region("eu-west-1")),
        target_account: AccountId::parse(TARGET_ACCOUNT).unwrap(),
    });
    let mut failed = vec![];
    for (name, section) in SECTIONS {
        if let Err(e) = tokio::spawn(section(f.clone())).await {
            let why = e
                .try_into_panic()
                .ok()
                .and_then(|p| p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())))
                .unwrap_or_default();
            failed.push(format!("{name}: {why}"));
        }
    }
    assert!(failed.is_empty(), "{} of {} sections failed:\n{}", failed.len(), SECTIONS.len(), failed.join("\n"));
}

/// Plain credentials on the source side, the assumed role on the target.
async fn identities(f: Arc<Fixture>) {
    assert_eq!(f.cloud.caller_identity(Side::Source).await.unwrap().account.as_str(), SOURCE_ACCOUNT);
    let target = f.cloud.caller_identity(Side::TARGET).await.unwrap();
    assert_eq!(target.account, f.target_account);
    assert!(target.arn.contains("snapferry-dr/snapferry-it-run"), "{}", target.arn);
}

/// Aliases resolve to key ARNs, in each account; a missing alias is NotFound.
async fn keys(f: Arc<Fixture>) {
    let key = f.cloud.describe_key(&f.src, &KeyRef::parse("alias/it-src").unwrap()).await.unwrap();
    assert_eq!(key.arn, f.source_key);
    assert_eq!(key.account.as_str(), SOURCE_ACCOUNT);
    assert!(key.enabled && key.is_symmetric());
    assert_eq!(key.manager, KeyManager::Customer);
    let tkey = f.cloud.describe_key(&f.dst, &KeyRef::parse("alias/it-dst").unwrap()).await.unwrap();
    assert_eq!(tkey.arn, f.target_key);
    assert_eq!(tkey.account, f.target_account);
    let missing = f.cloud.describe_key(&f.src, &KeyRef::parse("alias/it-missing").unwrap()).await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    assert!(missing.message.contains("kms:DescribeKey"), "{missing}");
}

/// Key policy: read, replace, read back.
async fn key_policy(f: Arc<Fixture>) {
    let policy = f.cloud.get_key_policy(&f.src, &f.source_key).await.unwrap();
    assert!(policy.contains("Statement"), "{policy}");
    let mut doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
    doc["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Sid": "snapferry-it", "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{TARGET_ACCOUNT}:root")},
        "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"
    }));
    f.cloud.put_key_policy(&f.src, &f.source_key, &doc.to_string()).await.unwrap();
    assert!(f.cloud.get_key_policy(&f.src, &f.source_key).await.unwrap().contains("snapferry-it"));
}

/// Volumes by id leave out the ones that do not exist; by tags, all must match.
async fn volumes(f: Arc<Fixture>) {
    let absent = VolumeId::parse("vol-0123456789abcdef0").unwrap();
    let vols = f.cloud.describe_volumes(&f.src, &[f.volume.clone(), absent.clone()]).await.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].id, f.volume);
    assert_eq!(vols[0].size_gib, 8);
    assert_eq!(vols[0].availability_zone, "us-east-1a");
    assert!(f.cloud.describe_volumes(&f.src, &[absent]).await.unwrap().is_empty());
    let found = f.cloud.find_volumes(&f.src, &tags(&[("Backup", "dr"), ("Name", "it-db")])).await.unwrap();
    assert_eq!(found.iter().map(|v| &v.id).collect::<Vec<_>>(), [&f.volume]);
    assert!(f.cloud.find_volumes(&f.src, &tags(&[("Backup", "none")])).await.unwrap().is_empty());
}

/// A snapshot of the seeded volume, tagged at creation with `section`.
async fn snapshot(f: &Fixture, section: &str) -> (snapferry::cloud::Snapshot, Tags) {
    let run_tags = tags(&[("snapferry:plan", "it"), ("snapferry:run", section), ("snapferry:step", "snapshot")]);
    let req =
        CreateSnapshotReq { volume: f.volume.clone(), description: "snapferry it".into(), tags: run_tags.clone() };
    (f.cloud.create_snapshot(&f.src, &req).await.unwrap(), run_tags)
}

/// Snapshot found again by id and by tags, shared with one account and back, and
/// deleted; deleting it again is NotFound.
async fn snapshots_and_sharing(f: Arc<Fixture>) {
    let (snap, run_tags) = snapshot(&f, "snapshots").await;
    assert_eq!(snap.volume_id.as_deref(), Some(f.volume.as_str()));
    assert_eq!(snap.tags, run_tags);
    let absent = SnapshotId::parse("snap-0123456789abcdef0").unwrap();
    let snaps = f.cloud.describe_snapshots(&f.src, &[absent, snap.id.clone()]).await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, snap.id);
    assert_eq!(snaps[0].state, SnapshotState::Completed);
    assert_eq!(snaps[0].owner.as_ref().map(AccountId::as_str), Some(SOURCE_ACCOUNT));
    assert!(snaps[0].start_time_ms.is_some_and(|t| t > 1_600_000_000_000));
    let by_tags = f.cloud.find_snapshots(&f.src, &run_tags).await.unwrap();
    assert_eq!(by_tags.iter().map(|s| &s.id).collect::<Vec<_>>(), [&snap.id]);

    f.cloud.share_snapshot(&f.src, &snap.id, std::slice::from_ref(&f.target_account)).await.unwrap();
    let shared = f.cloud.snapshot_shared_with(&f.src, &snap.id).await.unwrap();
    assert_eq!(shared, std::slice::from_ref(&f.target_account));
    f.cloud.unshare_snapshot(&f.src, &snap.id, std::slice::from_ref(&f.target_account)).await.unwrap();
    assert!(f.cloud.snapshot_shared_with(&f.src, &snap.id).await.unwrap().is_empty());

    f.cloud.delete_snapshot(&f.src, &snap.id).await.unwrap();
    assert!(f.cloud.describe_snapshots(&f.src, std::slice::from_ref(&snap.id)).await.unwrap().is_empty());
    let again = f.cloud.delete_snapshot(&f.src, &snap.id).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::NotFound, "{again}");
    assert!(again.message.contains("ec2:DeleteSnapshot"), "{again}");
}

/// A copy across regions, sent to the destination region (moto copies within one
/// account only), then a volume from it with type, performance and tags; both
/// deleted again.
async fn copy_then_volume(f: Arc<Fixture>) {
    let (snap, _) = snapshot(&f, "copy").await;
    let copy_tags = tags(&[("snapferry:run", "copy"), ("snapferry:step", "copy")]);
    let copy_req = CopySnapshotReq {
        source_region: region("us-east-1"),
        source_snapshot: snap.id.clone(),
        kms_key: f.dr_key.clone(),
        description: "snapferry it copy".into(),
        tags: copy_tags.clone(),
        // A time-based copy: the parameter reaches the API and is accepted.
        completion_minutes: Some(60),
    };
    let copy = f.cloud.copy_snapshot(&f.src_dr, &copy_req).await.unwrap();
    assert_ne!(copy, snap.id);
    let copied = f.cloud.describe_snapshots(&f.src_dr, std::slice::from_ref(&copy)).await.unwrap();
    assert_eq!(copied.len(), 1);
    assert!(copied[0].encrypted);
    assert_eq!(copied[0].tags, copy_tags);
    assert_eq!(f.cloud.find_snapshots(&f.src_dr, &copy_tags).await.unwrap().len(), 1);
    assert!(f.cloud.describe_snapshots(&f.src, std::slice::from_ref(&copy)).await.unwrap().is_empty());

    let vol_tags = tags(&[("snapferry:step", "volume"), ("Name", "it-db-dr")]);
    let vreq = CreateVolumeReq {
        snapshot: copy.clone(),
        availability_zone: AvailabilityZone::parse("eu-west-1a").unwrap(),
        volume_type: Some("gp3".into()),
        iops: Some(3000),
        throughput: Some(125),
        kms_key: f.dr_key.clone(),
        tags: vol_tags.clone(),
        client_token: "snapferry-it-run-vol-0123456789abcdef0".into(),
    };
    let new_vol = f.cloud.create_volume(&f.src_dr, &vreq).await.unwrap();
    let made = f.cloud.describe_volumes(&f.src_dr, std::slice::from_ref(&new_vol)).await.unwrap();
    assert_eq!(made.len(), 1);
    let made = &made[0];
    assert!(made.encrypted);
    assert_eq!(made.availability_zone, "eu-west-1a");
    assert_eq!(made.volume_type.as_deref(), Some("gp3"));
    assert_eq!(made.iops, Some(3000));
    assert_eq!(made.snapshot_id.as_deref(), Some(copy.as_str()));
    assert_eq!(made.tags, vol_tags);
    assert_eq!(made.attachments, 0);
    assert_eq!(f.cloud.find_volumes(&f.src_dr, &vol_tags).await.unwrap().len(), 1);

    f.cloud.delete_volume(&f.src_dr, &new_vol).await.unwrap();
    assert!(f.cloud.describe_volumes(&f.src_dr, std::slice::from_ref(&new_vol)).await.unwrap().is_empty());
    f.cloud.delete_snapshot(&f.src_dr, &copy).await.unwrap();
    f.cloud.delete_snapshot(&f.src, &snap.id).await.unwrap();
}

/// LockSnapshot in both modes, DescribeLockedSnapshots of a locked and a missing id,
/// and DeleteSnapshot of a locked snapshot refused as InvalidState.
async fn snapshot_lock(f: Arc<Fixture>) {
    use snapferry::lock::{LockMode, LockSpec, LockState};
    let (snap, _) = snapshot(&f, "lock").await;
    let spec = LockSpec { mode: LockMode::Governance, duration_days: 1, cool_off_hours: None };
    let l = f.cloud.lock_snapshot(&f.src, &snap.id, &spec).await.unwrap();
    assert_eq!((l.id.clone(), l.state), (snap.id.clone(), LockState::Governance));
    let completed_ms = l.expires_ms.expect("a completed snapshot's lock has an expiry") - 86_400_000;
    assert!(completed_ms > 1_600_000_000_000, "{l:?}");
    let absent = SnapshotId::parse("snap-0123456789abcdef0").unwrap();
    let found = f.cloud.describe_locked_snapshots(&f.src, &[snap.id.clone(), absent]).await.unwrap();
    assert_eq!(found, vec![l.clone()]);
    let refused = f.cloud.delete_snapshot(&f.src, &snap.id).await.unwrap_err();
    assert_eq!((refused.kind, refused.code.as_deref()), (ErrorKind::InvalidState, Some("SnapshotLocked")), "{refused}");

    let (other, _) = snapshot(&f, "lock-compliance").await;
    let spec = LockSpec { mode: LockMode::Compliance, duration_days: 2, cool_off_hours: Some(24) };
    let c = f.cloud.lock_snapshot(&f.src, &other.id, &spec).await.unwrap();
    assert_eq!(c.state, LockState::ComplianceCooloff);
    // Another account, in another region, sees no lock of it.
    assert!(f.cloud.describe_locked_snapshots(&f.dst, std::slice::from_ref(&other.id)).await.unwrap().is_empty());
}

/// The KMS calls of envelope encryption.
async fn envelope_calls(f: Arc<Fixture>) {
    let alias = KeyRef::parse("alias/it-src").unwrap();
    let none = EncryptionContext::new();
    let context: EncryptionContext = [("purpose".to_owned(), "backup".to_owned())].into();
    let dk = f.cloud.generate_data_key(&f.src, &alias, &context).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.key_arn, f.source_key);
    let req = DecryptReq { ciphertext: &dk.ciphertext, key: Some(&f.source_key), context: &context };
    let (plain, wrapped_by) = f.cloud.decrypt(&f.src, &req).await.unwrap();
    assert_eq!(*plain, *dk.plaintext);
    assert_eq!(wrapped_by, f.source_key);
    // moto binds the encryption context as KMS does: another context, or none, fails.
    let other: EncryptionContext = [("purpose".to_owned(), "other".to_owned())].into();
    for wrong in [&other, &none] {
        let req = DecryptReq { ciphertext: &dk.ciphertext, key: None, context: wrong };
        let refused = f.cloud.decrypt(&f.src, &req).await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("InvalidCiphertextException"), "{refused}");
    }
    let wk = f.cloud.generate_data_key_without_plaintext(&f.src, &alias, &none).await.unwrap();
    assert_eq!(wk.key_arn, f.source_key);
    let req = DecryptReq { ciphertext: &wk.ciphertext, key: None, context: &none };
    assert_eq!(f.cloud.decrypt(&f.src, &req).await.unwrap().0.len(), 32);
    assert_eq!(f.cloud.generate_random(&f.src, 16).await.unwrap().len(), 16);
    assert_eq!(f.cloud.generate_random(&f.src, 0).await.unwrap_err().kind, ErrorKind::Invalid);
}

/// A clear-text endpoint off this machine is refused before anything is sent.
async fn configuration(f: Arc<Fixture>) {
    let mut insecure = config(&f.endpoint);
    insecure.endpoint_url = Some("http://192.0.2.10:4566".into());
    let refused = AwsCloud::connect(insecure).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Invalid);
    assert!(refused.message.contains("TLS"), "{refused}");
}

/// Nothing listening: a transport failure, whose outcome is unknown.
async fn unreachable_endpoint(f: Arc<Fixture>) {
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut unreachable = config(&f.endpoint);
    unreachable.endpoint_url = Some(format!("http://127.0.0.1:{closed_port}"));
    let nowhere = AwsCloud::connect(unreachable).await.unwrap();
    let failed = nowhere.describe_volumes(&f.src, std::slice::from_ref(&f.volume)).await.unwrap_err();
    assert_eq!(failed.kind, ErrorKind::Transport, "{failed}");
    assert!(!failed.outcome_known());
}

/// Set in the child process of the S3 scenario: the emulator's endpoint.
const S3_ENDPOINT_VAR: &str = "SNAPFERRY_IT_MOTO_S3_ENDPOINT";

/// The state bucket, in another region than the client starts in.
const S3_SEED_SCRIPT: &str = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="eu-west-1")
s3.create_bucket(Bucket="it-state", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
print("ok")
"#;

#[test]
fn s3_adapter_against_moto() {
    if let Ok(endpoint) = std::env::var(S3_ENDPOINT_VAR) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(s3_scenario(&endpoint));
        return;
    }
    let moto = Moto::start();
    let seed = isolate(Command::new("python3").args(["-c", S3_SEED_SCRIPT, &moto.endpoint]))
        .output()
        .expect("run the seed script");
    assert!(seed.status.success(), "seed script failed: {}", String::from_utf8_lossy(&seed.stderr));
    let child = isolate(&mut Command::new(std::env::current_exe().unwrap()))
        .args(["aws_adapter::s3_adapter_against_moto", "--exact", "--nocapture", "--test-threads=1"])
        .env(S3_ENDPOINT_VAR, &moto.endpoint)
        .output()
        .expect("run the scenario in a child process");
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "scenario failed\n--- stdout\n{out}\n--- stderr\n{err}");
    assert!(out.contains("1 passed"), "scenario did not run\n--- stdout\n{out}\n--- stderr\n{err}");
}

async fn s3_scenario(endpoint: &str) {
    use snapferry::cloud::aws::{S3Config, S3Objects};
    use snapferry::cloud::object::{Condition, ObjectStore, refused};

    let cfg = |bucket: &str| S3Config {
        bucket: bucket.to_owned(),
        prefix: "state/prod".to_owned(),
        profile: None,
        region: Some(region("us-east-1")),
        endpoint_url: Some(endpoint.to_owned()),
    };
    let missing = S3Objects::connect(cfg("no-such-state")).await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    assert!(missing.message.contains("no-such-state"), "{missing}");

    let s3 = S3Objects::connect(cfg("it-state")).await.unwrap();
    assert_eq!(s3.region(), "eu-west-1", "the bucket's region is asked of S3, not assumed");
    assert_eq!(s3.location(), "s3://it-state/state/prod");
    assert!(s3.list("").await.unwrap().is_empty());
    assert_eq!(s3.get("locks/p.json").await.unwrap(), None);

    // Create only if absent.
    let first = s3.put("locks/p.json", b"one".to_vec(), Condition::Absent).await.unwrap();
    let again = s3.put("locks/p.json", b"two".to_vec(), Condition::Absent).await.unwrap_err();
    assert!(refused(&again), "{again}");
    // Replace only the version read.
    let stale = s3.put("locks/p.json", b"two".to_vec(), Condition::Matches("\"0000\"".into())).await.unwrap_err();
    assert!(refused(&stale), "{stale}");
    let second = s3.put("locks/p.json", b"two".to_vec(), Condition::Matches(first.clone())).await.unwrap();
    let got = s3.get("locks/p.json").await.unwrap().unwrap();
    assert_eq!((got.bytes.as_slice(), &got.etag), (&b"two"[..], &second));
    // Delete only the version read; deleting what is gone succeeds.
    let old = s3.delete("locks/p.json", Some(&first)).await.unwrap_err();
    assert!(refused(&old), "{old}");
    s3.delete("locks/p.json", Some(&second)).await.unwrap();
    assert_eq!(s3.get("locks/p.json").await.unwrap(), None);
    s3.delete("locks/p.json", None).await.unwrap();
    // Replacing what is gone is refused too.
    let gone = s3.put("locks/p.json", b"three".to_vec(), Condition::Matches(second.clone())).await.unwrap_err();
    assert!(refused(&gone), "{gone}");

    // Listing is relative to the prefix and sorted.
    for key in ["runs/r/000000000002.json", "runs/r/000000000001.json", "runs/q/000000000001.json"] {
        s3.put(key, b"{}".to_vec(), Condition::Absent).await.unwrap();
    }
    assert_eq!(
        s3.list("runs/r/").await.unwrap(),
        vec!["runs/r/000000000001.json".to_owned(), "runs/r/000000000002.json".to_owned()]
    );
    assert_eq!(s3.list("runs/").await.unwrap().len(), 3);
    let stats = s3.stats();
    assert_eq!(stats.puts, 8);
    assert!(stats.gets >= 3 && stats.lists >= 3 && stats.deletes == 3, "{stats:?}");
}
