//! The AWS adapter against moto, a local emulator of EC2, KMS, STS and S3: every call
//! of the `Cloud` trait, and of the state bucket's `ObjectStore` (conditional writes,
//! the bucket's region asked of S3), goes through the real SDK, over loopback HTTP, to
//! a moto server the test starts on a free port and stops when done.
//!
//! The SDK takes credentials from the environment, and the environment of a running
//! test cannot be changed safely, so the test runs its scenario in a child process of
//! this same test binary with the emulator's endpoint and test credentials set.
//!
//! moto (`python3 -m moto.server`) must be installed: `.ci/run` installs it, and the
//! test fails with the pip line when it is missing.
//!
//! Moto answers like AWS for what is checked here; what it leaves out (cross-account
//! CopySnapshot, pending states and Progress, ClientToken, key policy enforcement) is
//! covered by the simulated cloud instead.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use snapferry::cloud::aws::{AwsCloud, AwsConfig};
use snapferry::cloud::{
    Cloud, CopySnapshotReq, CreateSnapshotReq, CreateVolumeReq, ErrorKind, KeyManager, Loc, Side, SnapshotState, Tags,
};
use snapferry::ids::{AccountId, AvailabilityZone, KeyArn, KeyRef, Region, RoleArn, SnapshotId, VolumeId};

/// Set in the child process: the emulator's endpoint.
const ENDPOINT_VAR: &str = "SNAPFERRY_IT_MOTO_ENDPOINT";
/// Set in the child process: what the seed script made, space separated.
const SEED_VAR: &str = "SNAPFERRY_IT_MOTO_SEED";
/// The account moto answers as for plain credentials.
const SOURCE_ACCOUNT: &str = "123456789012";
/// Moto answers as the account of the role assumed.
const TARGET_ACCOUNT: &str = "222222222222";
/// A moto server is up in a second or two; a slow machine gets more.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes, with boto3 against moto, what the trait cannot: a source volume and a key in
/// each account. Prints `VOLUME SOURCE_KEY_ARN TARGET_KEY_ARN`.
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
print(vol["VolumeId"], src["Arn"], dst["Arn"])
"#;

/// A moto server, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        // Bind port 0 to have the OS pick a free port, then hand it to moto.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m moto.server");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < MOTO_START_TIMEOUT, "moto did not listen on port {port} in time");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_available() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

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
    assert!(
        moto_available(),
        "python3 cannot import moto.server: install it with python3 -m pip install 'moto[server]==5.2.1'"
    );
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
    assert!(child.status.success(), "scenario failed\n--- stdout\n{out}\n--- stderr\n{err}");
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
        target_role: Some(RoleArn::parse("arn:aws:iam::222222222222:role/snapferry-dr").unwrap()),
        external_id: Some("it-external-id".to_owned()),
        session_name: "snapferry-it-run".to_owned(),
    }
}

async fn scenario(endpoint: &str, seed: &str) {
    let seed: Vec<&str> = seed.split_whitespace().collect();
    let volume = VolumeId::parse(seed[0]).unwrap();
    let source_key = KeyArn::parse(seed[1]).unwrap();
    let target_key = KeyArn::parse(seed[2]).unwrap();

    let cloud = AwsCloud::connect(config(endpoint)).await.unwrap();
    let src = Loc::new(Side::Source, &region("us-east-1"));
    let src_dr = Loc::new(Side::Source, &region("eu-west-1"));
    let dst = Loc::new(Side::Target, &region("eu-west-1"));
    let target_account = AccountId::parse(TARGET_ACCOUNT).unwrap();

    // Identities: plain credentials on the source side, the assumed role on the target.
    assert_eq!(cloud.caller_identity(Side::Source).await.unwrap().account.as_str(), SOURCE_ACCOUNT);
    let target = cloud.caller_identity(Side::Target).await.unwrap();
    assert_eq!(target.account, target_account);
    assert!(target.arn.contains("snapferry-dr/snapferry-it-run"), "{}", target.arn);

    // Keys: aliases resolve to key ARNs, in each account.
    let key = cloud.describe_key(&src, &KeyRef::parse("alias/it-src").unwrap()).await.unwrap();
    assert_eq!(key.arn, source_key);
    assert_eq!(key.account.as_str(), SOURCE_ACCOUNT);
    assert!(key.enabled && key.is_symmetric());
    assert_eq!(key.manager, KeyManager::Customer);
    let tkey = cloud.describe_key(&dst, &KeyRef::parse("alias/it-dst").unwrap()).await.unwrap();
    assert_eq!(tkey.arn, target_key);
    assert_eq!(tkey.account, target_account);
    let missing = cloud.describe_key(&src, &KeyRef::parse("alias/it-missing").unwrap()).await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    assert!(missing.message.contains("kms:DescribeKey"), "{missing}");

    // Key policy: read, replace, read back.
    let policy = cloud.get_key_policy(&src, &key.arn).await.unwrap();
    assert!(policy.contains("Statement"), "{policy}");
    let mut doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
    doc["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Sid": "snapferry-it", "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{TARGET_ACCOUNT}:root")},
        "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"
    }));
    cloud.put_key_policy(&src, &key.arn, &doc.to_string()).await.unwrap();
    assert!(cloud.get_key_policy(&src, &key.arn).await.unwrap().contains("snapferry-it"));

    // Volumes by id leave out the ones that do not exist; by tags, all must match.
    let absent_volume = VolumeId::parse("vol-0123456789abcdef0").unwrap();
    let vols = cloud.describe_volumes(&src, &[volume.clone(), absent_volume.clone()]).await.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].id, volume);
    assert_eq!(vols[0].size_gib, 8);
    assert_eq!(vols[0].availability_zone, "us-east-1a");
    assert!(cloud.describe_volumes(&src, &[absent_volume]).await.unwrap().is_empty());
    let found = cloud.find_volumes(&src, &tags(&[("Backup", "dr"), ("Name", "it-db")])).await.unwrap();
    assert_eq!(found.iter().map(|v| &v.id).collect::<Vec<_>>(), [&volume]);
    assert!(cloud.find_volumes(&src, &tags(&[("Backup", "none")])).await.unwrap().is_empty());

    // Snapshot, tagged at creation, found again by id and by tags.
    let run_tags = tags(&[("snapferry:plan", "it"), ("snapferry:run", "it-run"), ("snapferry:step", "snapshot")]);
    let req = CreateSnapshotReq { volume: volume.clone(), description: "snapferry it".into(), tags: run_tags.clone() };
    let snap = cloud.create_snapshot(&src, &req).await.unwrap();
    assert_eq!(snap.volume_id.as_deref(), Some(volume.as_str()));
    assert_eq!(snap.tags, run_tags);
    let absent_snap = SnapshotId::parse("snap-0123456789abcdef0").unwrap();
    let snaps = cloud.describe_snapshots(&src, &[absent_snap.clone(), snap.id.clone()]).await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, snap.id);
    assert_eq!(snaps[0].state, SnapshotState::Completed);
    assert_eq!(snaps[0].owner.as_ref().map(AccountId::as_str), Some(SOURCE_ACCOUNT));
    assert!(snaps[0].start_time_ms.is_some_and(|t| t > 1_600_000_000_000));
    let by_tags = cloud.find_snapshots(&src, &run_tags).await.unwrap();
    assert_eq!(by_tags.iter().map(|s| &s.id).collect::<Vec<_>>(), [&snap.id]);

    // Sharing with one account, and back.
    cloud.share_snapshot(&src, &snap.id, &target_account).await.unwrap();
    let shared = cloud.snapshot_shared_with(&src, &snap.id).await.unwrap();
    assert_eq!(shared, std::slice::from_ref(&target_account));
    cloud.unshare_snapshot(&src, &snap.id, &target_account).await.unwrap();
    assert!(cloud.snapshot_shared_with(&src, &snap.id).await.unwrap().is_empty());

    // Copy across regions, sent to the destination region (moto copies within one
    // account only).
    let copy_tags = tags(&[("snapferry:run", "it-run"), ("snapferry:step", "copy")]);
    let copy_req = CopySnapshotReq {
        source_region: region("us-east-1"),
        source_snapshot: snap.id.clone(),
        kms_key: source_key.clone(),
        description: "snapferry it copy".into(),
        tags: copy_tags.clone(),
    };
    let copy = cloud.copy_snapshot(&src_dr, &copy_req).await.unwrap();
    assert_ne!(copy, snap.id);
    let copied = cloud.describe_snapshots(&src_dr, std::slice::from_ref(&copy)).await.unwrap();
    assert_eq!(copied.len(), 1);
    assert!(copied[0].encrypted);
    assert_eq!(copied[0].tags, copy_tags);
    assert_eq!(cloud.find_snapshots(&src_dr, &copy_tags).await.unwrap().len(), 1);
    assert!(cloud.describe_snapshots(&src, std::slice::from_ref(&copy)).await.unwrap().is_empty());

    // Volume from the copy, with type, performance and tags.
    let vol_tags = tags(&[("snapferry:step", "volume"), ("Name", "it-db-dr")]);
    let vreq = CreateVolumeReq {
        snapshot: copy.clone(),
        availability_zone: AvailabilityZone::parse("eu-west-1a").unwrap(),
        volume_type: Some("gp3".into()),
        iops: Some(3000),
        throughput: Some(125),
        kms_key: source_key.clone(),
        tags: vol_tags.clone(),
        client_token: "snapferry-it-run-vol-0123456789abcdef0".into(),
    };
    let new_vol = cloud.create_volume(&src_dr, &vreq).await.unwrap();
    let made = cloud.describe_volumes(&src_dr, std::slice::from_ref(&new_vol)).await.unwrap();
    assert_eq!(made.len(), 1);
    let made = &made[0];
    assert!(made.encrypted);
    assert_eq!(made.availability_zone, "eu-west-1a");
    assert_eq!(made.volume_type.as_deref(), Some("gp3"));
    assert_eq!(made.iops, Some(3000));
    assert_eq!(made.snapshot_id.as_deref(), Some(copy.as_str()));
    assert_eq!(made.tags, vol_tags);
    assert_eq!(made.attachments, 0);
    assert_eq!(cloud.find_volumes(&src_dr, &vol_tags).await.unwrap().len(), 1);

    // Clean up; what is gone is left out, and deleting it again is NotFound.
    cloud.delete_volume(&src_dr, &new_vol).await.unwrap();
    assert!(cloud.describe_volumes(&src_dr, std::slice::from_ref(&new_vol)).await.unwrap().is_empty());
    cloud.delete_snapshot(&src_dr, &copy).await.unwrap();
    cloud.delete_snapshot(&src, &snap.id).await.unwrap();
    assert!(cloud.describe_snapshots(&src, std::slice::from_ref(&snap.id)).await.unwrap().is_empty());
    let again = cloud.delete_snapshot(&src, &snap.id).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::NotFound, "{again}");
    assert!(again.message.contains("ec2:DeleteSnapshot"), "{again}");

    // Envelope encryption calls.
    let alias = KeyRef::parse("alias/it-src").unwrap();
    let dk = cloud.generate_data_key(&src, &alias).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.key_arn, source_key);
    let (plain, wrapped_by) = cloud.decrypt(&src, &dk.ciphertext).await.unwrap();
    assert_eq!(*plain, *dk.plaintext);
    assert_eq!(wrapped_by, source_key);
    let wk = cloud.generate_data_key_without_plaintext(&src, &alias).await.unwrap();
    assert_eq!(wk.key_arn, source_key);
    assert_eq!(cloud.decrypt(&src, &wk.ciphertext).await.unwrap().0.len(), 32);
    assert_eq!(cloud.generate_random(&src, 16).await.unwrap().len(), 16);
    assert_eq!(cloud.generate_random(&src, 0).await.unwrap_err().kind, ErrorKind::Invalid);

    // Configuration checks.
    let mut insecure = config(endpoint);
    insecure.endpoint_url = Some("http://192.0.2.10:4566".into());
    let refused = AwsCloud::connect(insecure).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Invalid);
    assert!(refused.message.contains("TLS"), "{refused}");

    // Nothing listening: a transport failure, whose outcome is unknown.
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut unreachable = config(endpoint);
    unreachable.endpoint_url = Some(format!("http://127.0.0.1:{closed_port}"));
    let nowhere = AwsCloud::connect(unreachable).await.unwrap();
    let failed = nowhere.describe_volumes(&src, std::slice::from_ref(&volume)).await.unwrap_err();
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
    assert!(
        moto_available(),
        "python3 cannot import moto.server: install it with python3 -m pip install 'moto[server]==5.2.1'"
    );
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
