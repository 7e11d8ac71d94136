//! The real `snapferry` binary end to end against the patched moto server
//! (tests/support/moto/): two accounts, two regions, keys, volumes, key policies,
//! pending states, throttling and call counting. Each test starts its own server, seeds
//! it with boto3, writes a plan into a temporary directory, runs the binary with
//! `--format json`, and then counts in moto what the run left behind.
//!
//! Accounts: plain credentials act as moto's default account 123456789012 (source);
//! AssumeRole into `arn:aws:iam::222222222222:role/dr` acts as 222222222222 (target).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::bin::{Run, against_moto, empty_aws_files, snapferry};
use super::support::moto::Moto;

const SOURCE_ACCOUNT: &str = "123456789012";
const TARGET_ACCOUNT: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/dr";
const TARGET_AZ: &str = "eu-west-1a";
const SID_PREFIX: &str = "SnapferryShare-";
/// The tag every resource a run creates carries, with its step.
const TAG_PLAN: &str = "snapferry:plan";
const TAG_RUN: &str = "snapferry:run";
const TAG_SOURCE_VOLUME: &str = "snapferry:source-volume";
const TAG_STEP: &str = "snapferry:step";

/// Put in front of every Python script: clients for both accounts, JSON in and out.
/// argv: endpoint, JSON arguments. (The S3 state tests use it too.)
pub(super) const PRELUDE: &str = r#"
import sys, json, boto3
EP = sys.argv[1]
ARGS = json.loads(sys.argv[2])
def client(svc, region="us-east-1", creds=None):
    creds = creds or {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
    return boto3.client(svc, endpoint_url=EP, region_name=region,
                        aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds.get("SessionToken"))
_role = []
def target(svc, region="eu-west-1"):
    if not _role:
        _role.append(client("sts").assume_role(
            RoleArn="arn:aws:iam::222222222222:role/dr", RoleSessionName="e2e-check")["Credentials"])
    return client(svc, region, _role[0])
def tags(x):
    return {t["Key"]: t["Value"] for t in x.get("Tags") or []}
def out(v):
    print(json.dumps(v, default=str))
"#;

/// Runs PRELUDE + `body` with python (`SNAPFERRY_TEST_PYTHON` or python3) and boto3
/// against moto at `endpoint`, with the empty AWS files under `home`, after `prepare`
/// set the rest of its environment; `body` reads the endpoint and `args` from argv and
/// prints one JSON value.
pub(super) fn boto3(
    prepare: impl FnOnce(&mut Command),
    home: &Path,
    endpoint: &str,
    body: &str,
    args: &Value,
) -> Value {
    let python = std::env::var("SNAPFERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut cmd = Command::new(&python);
    prepare(&mut cmd);
    let out = cmd
        .arg("-c")
        .arg(format!("{PRELUDE}\n{body}"))
        .arg(endpoint)
        .arg(args.to_string())
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "boto3 script failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("boto3 script printed no JSON ({e}): {text}"))
}

/// The source key (alias/share), volumes of the kinds asked for, and the target key
/// alias/dr: in the target account (`cross`), the source account (`same`) or nowhere.
const SEED: &str = r#"
kms = client("kms")
src = kms.create_key(Description="e2e source")["KeyMetadata"]
kms.create_alias(AliasName="alias/share", TargetKeyId=src["KeyId"])
ec2 = client("ec2")
vols = []
for i, kind in enumerate(ARGS["volumes"]):
    kw = dict(Size=8, AvailabilityZone="us-east-1a", VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": "e2e-%s-%d" % (kind, i)}]}])
    if kind == "cmk":
        kw.update(Encrypted=True, KmsKeyId=src["Arn"])
    elif kind == "ebs":
        kw.update(Encrypted=True, KmsKeyId="alias/aws/ebs")
    vols.append(ec2.create_volume(**kw)["VolumeId"])
dst = None
if ARGS["target_key"] == "cross":
    dst = target("kms").create_key(Description="e2e target")["KeyMetadata"]["Arn"]
    target("kms").create_alias(AliasName="alias/dr", TargetKeyId=dst)
elif ARGS["target_key"] == "same":
    dst = client("kms", "eu-west-1").create_key(Description="e2e target")["KeyMetadata"]["Arn"]
    client("kms", "eu-west-1").create_alias(AliasName="alias/dr", TargetKeyId=dst)
out({"volumes": vols, "source_key": src["Arn"], "target_key": dst})
"#;

/// Everything there is to count: snapshots and volumes of both accounts in both
/// regions, and the source key's policy.
const INVENTORY: &str = r#"
def snaps(c):
    return [{"id": s["SnapshotId"], "state": s["State"], "kms": s.get("KmsKeyId"),
             "encrypted": s.get("Encrypted"), "tags": tags(s)}
            for s in c.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
def vols(c):
    return [{"id": v["VolumeId"], "state": v["State"], "kms": v.get("KmsKeyId"),
             "az": v["AvailabilityZone"], "snapshot": v.get("SnapshotId"), "tags": tags(v)}
            for v in c.describe_volumes()["Volumes"]]
out({
    "source_snapshots": snaps(client("ec2")) + snaps(client("ec2", "eu-west-1")),
    "source_volumes_eu": vols(client("ec2", "eu-west-1")),
    "target_snapshots": snaps(target("ec2")) + snaps(target("ec2", "us-east-1")),
    "target_volumes": vols(target("ec2")),
    "policy": json.loads(client("kms").get_key_policy(KeyId=ARGS["key"], PolicyName="default")["Policy"]),
})
"#;

/// What the seed script made.
struct Seed {
    volumes: Vec<String>,
    source_key: String,
    target_key: Option<String>,
}

/// Where the target volumes go in a plan.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// Account 222222222222 through the role, eu-west-1.
    Cross,
    /// The source account, eu-west-1: no role, no share.
    Same,
}

/// A moto server, a temporary directory for plans and state, and the credentials the
/// binary runs with.
struct Rig {
    moto: Moto,
    dir: tempfile::TempDir,
    secret: String,
    session_token: Option<String>,
    started: Instant,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        eprintln!("{test}: {:.1}s", self.started.elapsed().as_secs_f64());
    }
}

impl Rig {
    fn start(flags: &[&str]) -> Rig {
        let moto = Moto::start_with(flags);
        let dir = tempfile::tempdir().expect("temporary directory");
        empty_aws_files(dir.path());
        Rig { moto, dir, secret: "testing".into(), session_token: None, started: Instant::now() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Runs PRELUDE + `body` with boto3 against the server; `body` prints one JSON value.
    fn py(&self, body: &str, args: Value) -> Value {
        let keep_env = |cmd: &mut Command| {
            for var in ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN"] {
                cmd.env_remove(var);
            }
        };
        boto3(keep_env, self.dir.path(), &self.moto.endpoint, body, &args)
    }

    /// Creates the keys and volumes (`cmk`, `ebs` or `plain` each).
    fn seed(&self, kinds: &[&str], target: Option<Target>) -> Seed {
        let target_key = match target {
            Some(Target::Cross) => "cross",
            Some(Target::Same) => "same",
            None => "none",
        };
        let v = self.py(SEED, json!({"volumes": kinds, "target_key": target_key}));
        Seed {
            volumes: v["volumes"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
            source_key: v["source_key"].as_str().unwrap().to_owned(),
            target_key: v["target_key"].as_str().map(str::to_owned),
        }
    }

    fn inventory(&self, seed: &Seed) -> Value {
        self.py(INVENTORY, json!({"key": seed.source_key}))
    }

    /// Writes a plan and returns its path.
    fn plan(&self, name: &str, volumes: &[String], target: Target, cleanup: Option<bool>) -> PathBuf {
        let mut y = format!(
            "version: 1\nname: {name}\nsource:\n  region: us-east-1\n  account: \"{SOURCE_ACCOUNT}\"\n  \
             kms_key: alias/share\ntarget:\n  region: eu-west-1\n"
        );
        if target == Target::Cross {
            y.push_str(&format!("  account: \"{TARGET_ACCOUNT}\"\n  role_arn: {ROLE}\n"));
        }
        y.push_str(&format!("  kms_key: alias/dr\n  availability_zone: {TARGET_AZ}\nvolumes:\n"));
        for (i, v) in volumes.iter().enumerate() {
            y.push_str(&format!("  - id: {v}\n    tags: {{Name: dr-{i}}}\n"));
        }
        y.push_str("options:\n  tags: {Owner: sre}\n");
        if let Some(c) = cleanup {
            y.push_str(&format!("  cleanup: {c}\n"));
        }
        let path = self.path(&format!("{name}.yaml"));
        fs::write(&path, y).unwrap();
        path
    }

    /// The binary with nothing of the developer's AWS setup: the server's endpoint,
    /// test credentials, empty config files, the rig's state dir and JSON output.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = snapferry();
        against_moto(&mut cmd, &self.moto.endpoint, self.dir.path(), &self.secret).args(args).args([
            "--state-dir",
            self.state_dir().to_str().unwrap(),
            "--format",
            "json",
        ]);
        if let Some(t) = &self.session_token {
            cmd.env("AWS_SESSION_TOKEN", t);
        }
        cmd
    }

    fn snapferry(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run snapferry"))
    }

    /// Starts the binary in the background, its output thrown away.
    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start snapferry")
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a plan's runs made, from an inventory list, optionally of one step and one
/// source volume.
fn made<'a>(list: &'a Value, plan: &str, step: Option<&str>, source: Option<&str>) -> Vec<&'a Value> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tags"][TAG_PLAN] == plan)
        .filter(|r| step.is_none_or(|s| r["tags"][TAG_STEP] == s))
        .filter(|r| source.is_none_or(|s| r["tags"][TAG_SOURCE_VOLUME] == s))
        .collect()
}

/// The key policy's statements snapferry added.
fn grants(inventory: &Value) -> Vec<&Value> {
    inventory["policy"]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Sid"].as_str().is_some_and(|sid| sid.starts_with(SID_PREFIX)))
        .collect()
}

fn count(calls: &Value, action: &str) -> u64 {
    calls[action].as_u64().unwrap_or(0)
}

/// Checks a run that succeeded: every source volume ends as exactly one completed copy
/// and one target volume under the target key, tagged as the contract says, and no
/// source-side snapshot of the plan is left.
fn assert_copied(inv: &Value, report: &Value, seed: &Seed, plan: &str, target: Target) {
    let run_id = report["run_id"].as_str().unwrap();
    let target_key = seed.target_key.as_deref().unwrap();
    let (snaps, vols) = match target {
        Target::Cross => (&inv["target_snapshots"], &inv["target_volumes"]),
        Target::Same => (&inv["source_snapshots"], &inv["source_volumes_eu"]),
    };
    assert_eq!(report["status"], "succeeded", "{report:#}");
    let volumes = report["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), seed.volumes.len(), "{report:#}");
    for (i, src) in seed.volumes.iter().enumerate() {
        let entry = volumes.iter().find(|v| v["source_volume"] == src.as_str()).expect("volume in the report");
        assert_eq!(entry["status"], "succeeded", "{entry:#}");
        assert!(entry["error"].is_null(), "{entry:#}");

        let copies = made(snaps, plan, Some("copy"), Some(src));
        assert_eq!(copies.len(), 1, "copies of {src}: {copies:#?}");
        let copy = copies[0];
        assert_eq!(copy["state"], "completed", "{copy:#}");
        assert_eq!(copy["kms"], target_key, "{copy:#}");
        assert_eq!(entry["target_snapshot"], copy["id"], "{entry:#}");

        let targets = made(vols, plan, Some("volume"), Some(src));
        assert_eq!(targets.len(), 1, "target volumes of {src}: {targets:#?}");
        let vol = targets[0];
        assert_eq!(vol["kms"], target_key, "{vol:#}");
        assert_eq!(vol["az"], TARGET_AZ, "{vol:#}");
        assert_eq!(vol["snapshot"], copy["id"], "{vol:#}");
        assert_eq!(entry["target_volume"], vol["id"], "{entry:#}");

        for r in [copy, vol] {
            assert_eq!(r["tags"][TAG_RUN], run_id, "{r:#}");
            assert_eq!(r["tags"]["Owner"], "sre", "{r:#}");
        }
        assert_eq!(vol["tags"]["Name"], format!("dr-{i}"), "{vol:#}");
    }
    let left = made(&inv["source_snapshots"], plan, None, None);
    let left: Vec<_> = left.into_iter().filter(|s| s["tags"][TAG_STEP] != "copy").collect();
    assert!(left.is_empty(), "source-side snapshots left: {left:#?}");
    // Nothing else of this plan anywhere: one copy and one volume per source volume.
    assert_eq!(made(snaps, plan, None, None).len(), seed.volumes.len(), "{snaps:#}");
    assert_eq!(made(vols, plan, None, None).len(), seed.volumes.len(), "{vols:#}");
}

/// A small reproducible generator for the kill times.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const THREE: [&str; 3] = ["cmk", "ebs", "plain"];

#[test]
fn cross_account_cross_region_copy() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-cross", &seed.volumes, Target::Cross, None);
    let before = grants(&rig.inventory(&seed)).len();
    assert_eq!(before, 0);

    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    let report = run.json();
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &report, &seed, "e2e-cross", Target::Cross);
    let added = grants(&inv);
    assert_eq!(added.len(), 1, "{:#}", inv["policy"]);
    let statements = inv["policy"]["Statement"].as_array().unwrap().len();
    // The source side keeps no volume of its own in the target region.
    assert!(made(&inv["source_volumes_eu"], "e2e-cross", None, None).is_empty());

    // A second run of the plan (a new copy, as a schedule would do) edits no policy.
    rig.moto.reset_calls();
    let again = rig.snapferry(&["run", arg(&plan)]);
    again.expect(0);
    assert_eq!(again.json()["status"], "succeeded");
    assert_eq!(count(&rig.moto.calls(), "kms:PutKeyPolicy"), 0, "{:#}", rig.moto.calls());
    let inv = rig.inventory(&seed);
    assert_eq!(grants(&inv), added, "{:#}", inv["policy"]);
    assert_eq!(inv["policy"]["Statement"].as_array().unwrap().len(), statements);
}

#[test]
fn same_account_cross_region_copy() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Same));
    let plan = rig.plan("e2e-same", &seed.volumes, Target::Same, None);
    rig.moto.reset_calls();

    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    let calls = rig.moto.calls();
    for action in ["ec2:ModifySnapshotAttribute", "sts:AssumeRole", "kms:PutKeyPolicy"] {
        assert_eq!(count(&calls, action), 0, "{action}: {calls:#}");
    }
    let by_account = rig.moto.calls_view("by-account");
    assert!(by_account.get(TARGET_ACCOUNT).is_none(), "{by_account:#}");
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &run.json(), &seed, "e2e-same", Target::Same);
    assert!(grants(&inv).is_empty(), "{:#}", inv["policy"]);
    assert!(made(&inv["target_volumes"], "e2e-same", None, None).is_empty());
}

#[test]
fn missing_target_key_stops_in_preflight() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&["cmk"], None);
    let plan = rig.plan("e2e-nokey", &seed.volumes, Target::Cross, None);
    rig.moto.reset_calls();

    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(2);
    assert!(run.stdout.contains("alias/dr") && run.stderr.contains("alias/dr"), "{}", run.show());
    assert_eq!(run.json()["exit_code"], 2);
    assert_eq!(rig.moto.calls_view("mutating"), json!({}), "{}", run.show());

    rig.py(
        r#"k = target("kms").create_key(Description="e2e target")["KeyMetadata"]
target("kms").create_alias(AliasName="alias/dr", TargetKeyId=k["KeyId"])
out(k["Arn"])"#,
        json!({}),
    );
    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    assert_eq!(run.json()["status"], "succeeded");
}

#[test]
fn source_key_denied_then_fixed() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-deny", &seed.volumes, Target::Cross, None);
    // An explicit Deny for the target account: no Allow snapferry adds can help.
    rig.py(
        r#"kms = client("kms")
p = json.loads(kms.get_key_policy(KeyId=ARGS["key"], PolicyName="default")["Policy"])
p["Statement"].append({"Sid": "DenyDr", "Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
                       "Action": "kms:*", "Resource": "*"})
kms.put_key_policy(KeyId=ARGS["key"], PolicyName="default", Policy=json.dumps(p))
out(True)"#,
        json!({"key": seed.source_key}),
    );

    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(1);
    let report = run.json();
    assert_eq!(report["status"], "failed", "{report:#}");
    let volumes = report["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 3);
    for v in volumes {
        assert_eq!(v["status"], "failed", "{v:#}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains("Given key ID is not accessible"), "{v:#}");
    }
    let inv = rig.inventory(&seed);
    let errored = made(&inv["target_snapshots"], "e2e-deny", Some("copy"), None);
    assert_eq!(errored.len(), 3, "{errored:#?}");
    assert!(errored.iter().all(|s| s["state"] == "error"), "{errored:#?}");

    rig.py(
        r#"kms = client("kms")
p = json.loads(kms.get_key_policy(KeyId=ARGS["key"], PolicyName="default")["Policy"])
p["Statement"] = [s for s in p["Statement"] if s.get("Sid") != "DenyDr"]
kms.put_key_policy(KeyId=ARGS["key"], PolicyName="default", Policy=json.dumps(p))
out(True)"#,
        json!({"key": seed.source_key}),
    );
    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    let report = run.json();
    let inv = rig.inventory(&seed);
    // The copies in error were deleted before the step was issued again.
    assert_copied(&inv, &report, &seed, "e2e-deny", Target::Cross);
    assert_eq!(grants(&inv).len(), 1, "{:#}", inv["policy"]);
}

#[test]
fn kill_nine_at_random_moments_then_resume() {
    let rig = Rig::start(&[
        "--snapshot-pending-seconds",
        "1.5",
        "--copy-pending-seconds",
        "2.5",
        "--volume-pending-seconds",
        "1",
    ]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-kill", &seed.volumes, Target::Cross, None);
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut kills = vec![];
    let mut landed = 0;
    for _ in 0..5 {
        let after = Duration::from_secs_f64(0.3 + 2.2 * rng.next_f64());
        let mut child = rig.spawn(&["run", arg(&plan)]);
        std::thread::sleep(after);
        let status = match child.try_wait().unwrap() {
            Some(status) => status,
            None => {
                child.kill().unwrap(); // SIGKILL
                let status = child.wait().unwrap();
                // The kill landed mid-run: the process was alive and its run unfinished.
                let runs = rig.snapferry(&["status"]);
                let unfinished = runs.json()["runs"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["plan"] == "e2e-kill" && r["status"] != "succeeded"));
                assert!(unfinished, "a kill at {after:?} found the run finished: {}", runs.show());
                landed += 1;
                status
            }
        };
        kills.push(format!("{:.2}s: {status}", after.as_secs_f64()));
    }
    assert!(landed >= 3, "only {landed} of 5 kills landed mid-run: {kills:?}");
    let started = Instant::now();
    let run = rig.snapferry(&["run", arg(&plan)]);
    eprintln!("kills: {kills:?}; final run took {:.1}s", started.elapsed().as_secs_f64());
    run.expect(0);
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &run.json(), &seed, "e2e-kill", Target::Cross);
    assert_eq!(grants(&inv).len(), 1, "{:#}", inv["policy"]);
}

#[test]
fn sigint_and_sigterm_save_the_checkpoint_exit_130_and_the_run_resumes() {
    let rig = Rig::start(&[
        "--snapshot-pending-seconds",
        "4",
        "--copy-pending-seconds",
        "4",
        "--volume-pending-seconds",
        "2",
    ]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-signal", &seed.volumes, Target::Cross, None);
    let mut run_id = None;
    for signal in ["-INT", "-TERM"] {
        let child = rig.command(&["run", arg(&plan)]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        let sent = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let out = Run::from(child.wait_with_output().unwrap());
        out.expect(130);
        let doc = out.json();
        assert_eq!(doc["status"], "interrupted", "{}", out.show());
        // Both interruptions belong to the same run.
        let id = doc["run_id"].as_str().unwrap().to_owned();
        assert_eq!(run_id.get_or_insert(id.clone()), &id);
    }
    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    assert_eq!(run.json()["run_id"].as_str(), run_id.as_deref(), "the interrupted run is resumed");
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &run.json(), &seed, "e2e-signal", Target::Cross);
}

/// Named to sort first: the slowest test (the SDK's adaptive retry slows the client
/// down after each throttle) then runs beside the others instead of after them.
#[test]
fn a_quarter_of_ec2_calls_throttled_still_succeeds() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-throttle", &seed.volumes, Target::Cross, None);
    rig.moto.reset_calls();
    rig.moto.configure(json!({"throttle_rate": 0.25, "throttle_seed": 42}));

    let run = rig.snapferry(&["run", arg(&plan)]);
    let throttled = rig.moto.calls_view("throttled");
    rig.moto.configure(json!({"throttle_rate": 0.0}));
    run.expect(0);
    let total: u64 = throttled.as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert!(total > 0, "nothing was throttled: {throttled:#}");
    eprintln!("throttled: {throttled}");
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &run.json(), &seed, "e2e-throttle", Target::Cross);
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() { out.extend(files(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn no_credential_in_state_or_output() {
    let mut rig = Rig::start(&[]);
    rig.secret = "sf-secret-XYZ-4f1c9a7e2b8d6035".into();
    rig.session_token = Some("sf-token-XYZ-9b2e7c4d1a6f8035".into());
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let one = rig.plan("e2e-secret-v", &seed.volumes[..1], Target::Cross, None);
    let all = rig.plan("e2e-secret-vv", &seed.volumes, Target::Cross, None);

    // Two plans on one source key at once: both statements must end in its policy.
    let (v, vv) = std::thread::scope(|s| {
        let v = s.spawn(|| rig.snapferry(&["-v", "run", arg(&one)]));
        let vv = rig.snapferry(&["-vv", "run", arg(&all)]);
        (v.join().unwrap(), vv)
    });
    v.expect(0);
    vv.expect(0);
    assert_eq!(grants(&rig.inventory(&seed)).len(), 2);
    let status = rig.snapferry(&["-vv", "status"]);
    status.expect(0);
    // The most verbose log really is: with -vv the SDK logs its requests.
    assert!(vv.stderr.contains("DEBUG"), "{}", &vv.stderr[..vv.stderr.len().min(2000)]);

    // Every secret in play: the source credentials and what AssumeRole handed out.
    let issued = rig.py(
        r#"import urllib.request
d = json.loads(urllib.request.urlopen(EP + "/moto-api/data.json").read())
out([x for r in d["sts"]["AssumedRole"] for x in (r["secret_access_key"], r["session_token"])])"#,
        json!({}),
    );
    let mut secrets: Vec<String> = issued.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    assert!(secrets.len() >= 4, "the runs assumed the role: {issued}");
    secrets.push(rig.secret.clone());
    secrets.push(rig.session_token.clone().unwrap());
    // moto's session tokens all begin so; no fragment of one may show either.
    secrets.push("FQoGZXIvYXdzEBYaD".into());

    let state = files(&rig.state_dir());
    assert!(state.len() >= 4, "{state:?}");
    let mut places: Vec<(String, String)> = state
        .iter()
        .map(|p| (p.display().to_string(), String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned()))
        .collect();
    for (name, r) in [("-v", &v), ("-vv", &vv), ("status", &status)] {
        places.push((format!("{name} stdout"), r.stdout.clone()));
        places.push((format!("{name} stderr"), r.stderr.clone()));
    }
    for (place, text) in &places {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{place} holds a credential ({}...)", &s[..12]);
        }
    }
}

#[test]
fn dry_run_changes_nothing_and_offline_calls_nothing() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-dry", &seed.volumes, Target::Cross, None);
    rig.moto.reset_calls();

    let run = rig.snapferry(&["run", arg(&plan), "--dry-run"]);
    run.expect(0);
    assert_eq!(rig.moto.calls_view("mutating"), json!({}), "{:#}", rig.moto.calls());
    let doc = run.json();
    assert_eq!(doc["plan"], "e2e-dry");
    assert_eq!(doc["steps"].as_array().map(Vec::len), Some(3), "{doc:#}");
    let statement = &doc["key_policy"]["add_statement"];
    assert!(statement["Sid"].as_str().is_some_and(|s| s.starts_with(SID_PREFIX)), "{doc:#}");
    assert_eq!(doc["key_policy"]["key_arn"], seed.source_key.as_str());
    assert_eq!(doc["key_policy"]["already_present"], false);
    for part in ["source_caller", "target_role", "target_role_trust"] {
        assert!(doc["iam"][part]["Statement"].is_array(), "iam.{part}: {doc:#}");
    }
    let inv = rig.inventory(&seed);
    assert!(grants(&inv).is_empty());
    assert!(made(&inv["source_snapshots"], "e2e-dry", None, None).is_empty());

    rig.moto.reset_calls();
    let offline = rig.snapferry(&["run", arg(&plan), "--dry-run", "--offline"]);
    offline.expect(0);
    assert_eq!(rig.moto.calls(), json!({}));
    let doc = offline.json();
    assert_eq!(doc["plan"], "e2e-dry");
    assert!(doc["key_policy"]["add_statement"].is_object(), "{doc:#}");
    assert!(doc["iam"]["target_role_trust"].is_object(), "{doc:#}");
}

#[test]
fn cleanup_after_a_run_without_cleanup() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-keep", &seed.volumes, Target::Cross, Some(false));

    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    let report = run.json();
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let inv = rig.inventory(&seed);
    // One snapshot per volume, plus a re-encrypted one for the two not under the
    // source key; all tagged with their step.
    let left = made(&inv["source_snapshots"], "e2e-keep", None, None);
    assert_eq!(left.len(), 5, "{left:#?}");
    for s in &left {
        assert_eq!(s["tags"][TAG_RUN], run_id.as_str());
        assert!(s["tags"][TAG_STEP] == "snapshot" || s["tags"][TAG_STEP] == "reencrypt", "{s:#}");
        assert!(seed.volumes.iter().any(|v| s["tags"][TAG_SOURCE_VOLUME] == v.as_str()), "{s:#}");
    }
    assert_eq!(made(&inv["source_snapshots"], "e2e-keep", Some("reencrypt"), None).len(), 2);
    assert_eq!(grants(&inv).len(), 1);

    let clean = rig.snapferry(&["cleanup", &run_id]);
    clean.expect(0);
    let summary = clean.json();
    assert_eq!(summary["deleted_snapshots"].as_array().map(Vec::len), Some(5), "{summary:#}");
    assert_eq!(summary["grant"], "revoked", "{summary:#}");
    let inv = rig.inventory(&seed);
    assert!(made(&inv["source_snapshots"], "e2e-keep", None, None).is_empty());
    assert!(grants(&inv).is_empty(), "{:#}", inv["policy"]);
    // What the run was for stays.
    assert_eq!(made(&inv["target_volumes"], "e2e-keep", None, None).len(), 3);
}

#[test]
fn envelope_round_trip_one_kms_call_each_way() {
    let rig = Rig::start(&[]);
    rig.seed(&[], None);
    let input = rig.path("data.bin");
    let sealed = rig.path("data.bin.sf");
    let back = rig.path("data.back");
    let mut rng = Rng(0xe4e1_09e0);
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|_| (rng.next_f64() * 256.0) as u8).collect();
    fs::write(&input, &data).unwrap();

    rig.moto.reset_calls();
    rig.snapferry(&["envelope", "encrypt", "--key", "alias/share", arg(&input), arg(&sealed)]).expect(0);
    assert_eq!(rig.moto.calls(), json!({"kms:GenerateDataKey": 1}));
    let sealed_bytes = fs::read(&sealed).unwrap();
    assert!(sealed_bytes.len() > data.len());
    assert!(!sealed_bytes.windows(64).any(|w| w == &data[..64]), "plaintext in the output");

    rig.moto.reset_calls();
    rig.snapferry(&["envelope", "decrypt", "--discovery", arg(&sealed), arg(&back)]).expect(0);
    assert_eq!(rig.moto.calls(), json!({"kms:Decrypt": 1}));
    assert!(fs::read(&back).unwrap() == data, "round trip changed the data");

    // An alias allowed by name is resolved to its ARN first.
    rig.moto.reset_calls();
    fs::remove_file(&back).unwrap();
    rig.snapferry(&["envelope", "decrypt", "--key", "alias/share", arg(&sealed), arg(&back)]).expect(0);
    assert_eq!(rig.moto.calls(), json!({"kms:DescribeKey": 1, "kms:Decrypt": 1}));
    assert!(fs::read(&back).unwrap() == data, "round trip changed the data");
}

#[test]
fn second_run_of_a_plan_while_the_first_runs_exits_3() {
    let rig = Rig::start(&["--snapshot-pending-seconds", "30"]);
    let seed = rig.seed(&["cmk"], Some(Target::Cross));
    let plan = rig.plan("e2e-lock", &seed.volumes, Target::Cross, None);
    let mut first = rig.spawn(&["run", arg(&plan)]);
    let started = Instant::now();
    while count(&rig.moto.calls(), "ec2:CreateSnapshot") == 0 {
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        assert!(started.elapsed() < Duration::from_secs(30), "the first run never snapshotted");
        std::thread::sleep(Duration::from_millis(100));
    }
    rig.moto.reset_calls();
    let second = rig.snapferry(&["run", arg(&plan)]);
    let still_running = first.try_wait().unwrap().is_none();
    let _ = first.kill();
    let _ = first.wait();
    assert!(still_running, "the first run ended before the second started");
    second.expect(3);
    assert_eq!(second.json()["exit_code"], 3);
    assert!(second.stderr.contains("e2e-lock"), "{}", second.show());
    assert_eq!(rig.moto.calls(), json!({}), "the second run reached AWS");
}

#[test]
fn clear_text_endpoint_off_loopback_is_refused() {
    let rig = Rig::start(&[]);
    let plan = rig.plan("e2e-tls", &["vol-0123456789abcdef0".to_owned()], Target::Cross, None);
    let bad = "http://10.0.0.1:9";
    let cases: Vec<(&str, Command)> = vec![
        ("--endpoint-url", {
            let mut c = rig.command(&["run", arg(&plan), "--endpoint-url", bad]);
            c.env("AWS_ENDPOINT_URL", &rig.moto.endpoint);
            c
        }),
        ("AWS_ENDPOINT_URL", {
            let mut c = rig.command(&["run", arg(&plan)]);
            c.env("AWS_ENDPOINT_URL", bad);
            c
        }),
        ("AWS_ENDPOINT_URL_EC2", {
            let mut c = rig.command(&["run", arg(&plan)]);
            c.env("AWS_ENDPOINT_URL_EC2", bad);
            c
        }),
        ("dry run", {
            let mut c = rig.command(&["run", arg(&plan), "--dry-run", "--endpoint-url", bad]);
            c.env("AWS_ENDPOINT_URL", &rig.moto.endpoint);
            c
        }),
        ("envelope", {
            let mut c = rig.command(&["envelope", "encrypt", "--key", "alias/share", arg(&plan), "/dev/null"]);
            c.env("AWS_ENDPOINT_URL", bad);
            c
        }),
    ];
    for (name, mut cmd) in cases {
        let started = Instant::now();
        let run = Run::from(cmd.output().unwrap());
        assert_eq!(run.code, 2, "{name}\n{}", run.show());
        assert!(run.stderr.contains("10.0.0.1"), "{name}\n{}", run.show());
        // Refused before any connection attempt (which would take the connect timeout).
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
        assert_eq!(rig.moto.calls(), json!({}), "{name} reached the loopback server");
    }
}

#[test]
fn twenty_volumes_calls_per_volume() {
    let (snapshot_s, copy_s, volume_s) = (2.0, 3.0, 2.0);
    let rig = Rig::start(&[
        "--snapshot-pending-seconds",
        &snapshot_s.to_string(),
        "--copy-pending-seconds",
        &copy_s.to_string(),
        "--volume-pending-seconds",
        &volume_s.to_string(),
    ]);
    // A fleet as found: half under the shared key, a quarter each under aws/ebs and
    // unencrypted (those two are re-encrypted first: one more copy each).
    let kinds: Vec<&str> = (0..20).map(|i| ["ebs", "plain", "cmk", "cmk"][i % 4]).collect();
    let seed = rig.seed(&kinds, Some(Target::Cross));
    let plan = rig.plan("e2e-fleet", &seed.volumes, Target::Cross, None);
    rig.moto.reset_calls();

    let started = Instant::now();
    let run = rig.snapferry(&["run", arg(&plan)]);
    let wall = started.elapsed().as_secs_f64();
    run.expect(0);
    let calls = rig.moto.calls();
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &run.json(), &seed, "e2e-fleet", Target::Cross);

    let n = seed.volumes.len() as f64;
    let total: u64 = calls.as_object().unwrap().values().filter_map(Value::as_u64).sum();
    let reencrypted = kinds.iter().filter(|k| **k != "cmk").count() as f64;
    let per_volume_chain = snapshot_s + copy_s + volume_s;
    let pending_sum = n * per_volume_chain + reencrypted * copy_s;
    eprintln!("20 volumes: API calls per volume by action:");
    for (action, c) in calls.as_object().unwrap() {
        eprintln!("  {action:<32} {:>6.2}  ({c})", c.as_u64().unwrap_or(0) as f64 / n);
    }
    eprintln!("  {:<32} {:>6.2}  ({total})", "total", total as f64 / n);
    eprintln!(
        "wall time {wall:.1}s; pending time of one volume's chain {per_volume_chain:.0}s \
         ({:.0}s when re-encrypted); sum over all volumes {pending_sum:.0}s",
        per_volume_chain + copy_s
    );
    assert!((total as f64 / n) < 12.0, "{:.2} calls per volume: {calls:#}", total as f64 / n);
}

/// Waits (bounded) until `check` holds of the inventory.
fn wait_for(rig: &Rig, seed: &Seed, what: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let inv = rig.inventory(seed);
        if check(&inv) {
            return inv;
        }
        assert!(start.elapsed() < limit, "gave up waiting for {what} after {limit:?}: {inv:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Adds `options` lines to a written plan.
fn with_options(path: &Path, lines: &str) {
    let text = fs::read_to_string(path).unwrap();
    fs::write(path, text.replace("options:\n", &format!("options:\n{lines}"))).unwrap();
}

#[test]
fn a_copy_past_its_timeout_is_waited_on_again_never_made_again() {
    let rig = Rig::start(&["--copy-pending-seconds", "14"]);
    let seed = rig.seed(&["cmk", "cmk"], Some(Target::Cross));
    let plan = rig.plan("e2e-timeout", &seed.volumes, Target::Cross, None);
    with_options(&plan, "  timeouts: {copy: 1s}\n");

    let first = rig.snapferry(&["run", arg(&plan)]);
    first.expect(1);
    let report = first.json();
    for v in report["volumes"].as_array().unwrap() {
        assert_eq!(v["step"], "wait-copy", "{v:#}");
        assert!(v["error"].as_str().unwrap().contains("stopped waiting"), "{v:#}");
    }
    // Run again while the copies are still pending: looked at, not made again.
    rig.snapferry(&["run", arg(&plan)]).expect(1);
    let inv = rig.inventory(&seed);
    assert_eq!(made(&inv["target_snapshots"], "e2e-timeout", Some("copy"), None).len(), 2, "{inv:#}");

    wait_for(&rig, &seed, "the copies to complete", Duration::from_secs(60), |inv| {
        made(&inv["target_snapshots"], "e2e-timeout", Some("copy"), None).iter().all(|c| c["state"] == "completed")
    });
    let done = rig.snapferry(&["run", arg(&plan)]);
    done.expect(0);
    assert_eq!(done.json()["run_id"], report["run_id"]);
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &done.json(), &seed, "e2e-timeout", Target::Cross);
    let by_account = rig.moto.calls_view("by-account");
    let calls = rig.moto.calls_view("mutating");
    eprintln!("calls over three invocations: {calls}; by account: {by_account}");
    assert_eq!(count(&calls, "ec2:CopySnapshot"), 2, "one target CopySnapshot per volume: {calls}");
    assert_eq!(count(&calls, "ec2:CreateSnapshot"), 2, "{calls}");
    assert_eq!(count(&calls, "ec2:DeleteSnapshot"), 2, "only the cleanup of the source snapshots: {calls}");
    assert_eq!(count(&calls, "ec2:DeleteVolume"), 0, "{calls}");
}

#[test]
fn kill_nine_with_copies_pending_and_the_state_dir_lost_then_rerun() {
    let rig = Rig::start(&["--snapshot-pending-seconds", "1", "--copy-pending-seconds", "8"]);
    let seed = rig.seed(&["cmk", "cmk", "ebs", "plain"], Some(Target::Cross));
    let plan = rig.plan("e2e-lost", &seed.volumes, Target::Cross, None);
    let mut child = rig.spawn(&["run", arg(&plan)]);
    wait_for(&rig, &seed, "four pending copies", Duration::from_secs(90), |inv| {
        made(&inv["target_snapshots"], "e2e-lost", Some("copy"), None).len() == 4
    });
    assert!(child.try_wait().unwrap().is_none(), "the run ended before the kill");
    child.kill().unwrap(); // SIGKILL, mid-run: the copies are pending
    child.wait().unwrap();
    let inv = rig.inventory(&seed);
    let pending = made(&inv["target_snapshots"], "e2e-lost", Some("copy"), None);
    assert!(pending.iter().any(|c| c["state"] == "pending"), "the kill landed after the copies ended: {pending:#?}");
    let lost_run = pending[0]["tags"][TAG_RUN].as_str().unwrap().to_owned();
    fs::remove_dir_all(rig.state_dir()).unwrap();
    rig.moto.reset_calls();

    let rerun = rig.snapferry(&["run", arg(&plan)]);
    rerun.expect(0);
    let report = rerun.json();
    assert_eq!(report["run_id"], lost_run.as_str(), "the lost run is carried on under its own id");
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &report, &seed, "e2e-lost", Target::Cross);
    let calls = rig.moto.calls();
    eprintln!("calls of the rerun after the state was lost: {calls}");
    assert_eq!(count(&calls, "ec2:CopySnapshot"), 0, "{calls}");
    assert_eq!(count(&calls, "ec2:CreateSnapshot"), 0, "{calls}");
}

#[test]
fn cleanup_during_a_pending_copy_stops_it_then_deletes_its_source() {
    let rig = Rig::start(&["--copy-pending-seconds", "60"]);
    // Volumes under the source key: no re-encryption copy, both copies start at once.
    let seed = rig.seed(&["cmk", "cmk"], Some(Target::Cross));
    let plan = rig.plan("e2e-undo", &seed.volumes, Target::Cross, None);
    with_options(&plan, "  timeouts: {copy: 1s}\n");
    let first = rig.snapferry(&["run", arg(&plan)]);
    first.expect(1);
    let run_id = first.json()["run_id"].as_str().unwrap().to_owned();
    let inv = rig.inventory(&seed);
    assert_eq!(made(&inv["target_snapshots"], "e2e-undo", Some("copy"), None).len(), 2);

    let clean = rig.snapferry(&["cleanup", &run_id]);
    clean.expect(0);
    let summary = clean.json();
    assert_eq!(summary["stopped_copies"].as_array().map(Vec::len), Some(2), "{summary:#}");
    assert_eq!(summary["grant"], "revoked", "{summary:#}");
    let inv = rig.inventory(&seed);
    assert!(made(&inv["target_snapshots"], "e2e-undo", None, None).is_empty(), "{inv:#}");
    assert!(made(&inv["source_snapshots"], "e2e-undo", None, None).is_empty(), "{inv:#}");
    assert!(grants(&inv).is_empty(), "{:#}", inv["policy"]);
}

#[test]
fn a_recurring_plan_over_three_invocations_with_a_volume_deleted_after_the_first() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&["cmk", "cmk", "ebs"], Some(Target::Cross));
    let plan = rig.plan("e2e-every", &seed.volumes, Target::Cross, None);
    with_options(&plan, "  every: 2s\n");

    let first = rig.snapferry(&["run", arg(&plan)]);
    first.expect(0);
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &first.json(), &seed, "e2e-every", Target::Cross);
    let gone = seed.volumes[1].clone();
    rig.py(r#"client("ec2").delete_volume(VolumeId=ARGS["id"]); out(1)"#, json!({"id": gone}));

    for round in 2..=3 {
        std::thread::sleep(Duration::from_secs(2));
        let r = rig.snapferry(&["run", arg(&plan)]);
        r.expect(1);
        let report = r.json();
        for v in report["volumes"].as_array().unwrap() {
            if v["source_volume"] == gone.as_str() {
                assert_eq!(v["status"], "failed", "{v:#}");
                assert!(v["error"].as_str().unwrap().contains("no longer exists"), "{v:#}");
            } else {
                assert_eq!(v["status"], "succeeded", "round {round}: {v:#}");
            }
        }
        let inv = rig.inventory(&seed);
        for src in &seed.volumes {
            let copies = made(&inv["target_snapshots"], "e2e-every", Some("copy"), Some(src)).len();
            let want = if *src == gone { 1 } else { round };
            assert_eq!(copies, want, "round {round}: copies of {src}");
        }
        let left: Vec<_> = made(&inv["source_snapshots"], "e2e-every", None, None)
            .into_iter()
            .filter(|s| s["tags"][TAG_STEP] != "copy")
            .collect();
        assert!(left.is_empty(), "round {round}: source-side snapshots left: {left:#?}");
    }

    // Within the interval nothing is due: every healthy volume is fresh, nothing changes.
    let text = fs::read_to_string(&plan).unwrap();
    fs::write(&plan, text.replace("every: 2s", "every: 1h")).unwrap();
    rig.moto.reset_calls();
    let fresh = rig.snapferry(&["run", arg(&plan)]);
    fresh.expect(1);
    for v in fresh.json()["volumes"].as_array().unwrap() {
        let want = if v["source_volume"] == gone.as_str() { "failed" } else { "fresh" };
        assert_eq!(v["status"], want, "{v:#}");
    }
    let calls = rig.moto.calls_view("mutating");
    assert_eq!(calls.as_object().map(|m| m.values().filter_map(Value::as_u64).sum::<u64>()), Some(0), "{calls}");
}

/// The vault: a third account, reached through its own role, with its key in us-west-2.
const VAULT_ACCOUNT: &str = "333333333333";
const VAULT_ROLE: &str = "arn:aws:iam::333333333333:role/vault";

/// argv JSON: {"seed": true} makes alias/vault in the vault account and us-west-2;
/// either way prints what the vault holds there.
const VAULT: &str = r#"
creds = client("sts").assume_role(RoleArn="arn:aws:iam::333333333333:role/vault",
                                  RoleSessionName="e2e-vault")["Credentials"]
key = None
if ARGS.get("seed"):
    kms = client("kms", "us-west-2", creds)
    key = kms.create_key(Description="e2e vault")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/vault", TargetKeyId=key)
c = client("ec2", "us-west-2", creds)
out({
    "key": key,
    "snapshots": [{"id": s["SnapshotId"], "state": s["State"], "kms": s.get("KmsKeyId"), "tags": tags(s)}
                  for s in c.describe_snapshots(OwnerIds=["self"])["Snapshots"]],
    "volumes": [{"id": v["VolumeId"], "kms": v.get("KmsKeyId"), "az": v["AvailabilityZone"],
                 "snapshot": v.get("SnapshotId"), "tags": tags(v)} for v in c.describe_volumes()["Volumes"]],
})
"#;

#[test]
fn fan_out_to_two_accounts_in_two_regions_copies_each_volume_to_both_under_each_key() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let vault_key = rig.py(VAULT, json!({"seed": true}))["key"].as_str().unwrap().to_owned();
    let name = "e2e-fan";
    let mut y = format!(
        "version: 1\nname: {name}\nsource:\n  region: us-east-1\n  account: \"{SOURCE_ACCOUNT}\"\n  kms_key: alias/share\n\
         targets:\n  - region: eu-west-1\n    account: \"{TARGET_ACCOUNT}\"\n    role_arn: {ROLE}\n    kms_key: alias/dr\n    availability_zone: {TARGET_AZ}\n\
         \x20 - region: us-west-2\n    account: \"{VAULT_ACCOUNT}\"\n    role_arn: {VAULT_ROLE}\n    kms_key: alias/vault\n    availability_zone: us-west-2b\n\
         volumes:\n"
    );
    for v in &seed.volumes {
        y.push_str(&format!("  - id: {v}\n"));
    }
    let plan = rig.path(&format!("{name}.yaml"));
    fs::write(&plan, y).unwrap();

    // The dry-run names both accounts' statements and both roles' documents.
    let dry = rig.snapferry(&["run", arg(&plan), "--dry-run"]);
    dry.expect(0);
    let d = dry.json();
    assert_eq!(d["targets"].as_array().map(Vec::len), Some(2), "{d:#}");
    assert_eq!(d["key_policy"]["add_statements"].as_array().map(Vec::len), Some(2), "{d:#}");

    rig.moto.reset_calls();
    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    let report = run.json();
    let calls = rig.moto.calls();
    assert_eq!(count(&calls, "ec2:CreateSnapshot"), 3, "one snapshot per volume: {calls:#}");
    assert_eq!(count(&calls, "ec2:CopySnapshot"), 2 + 6, "two re-encryptions and six copies: {calls:#}");
    assert_eq!(count(&calls, "kms:PutKeyPolicy"), 1, "{calls:#}");
    assert_eq!(count(&calls, "ec2:ModifySnapshotAttribute"), 3, "one share per volume for both: {calls:#}");

    let inv = rig.inventory(&seed);
    let vault = rig.py(VAULT, json!({}));
    let sids: Vec<&str> = grants(&inv).iter().filter_map(|s| s["Sid"].as_str()).collect();
    assert_eq!(sids.len(), 2, "{:#}", inv["policy"]);
    for account in [TARGET_ACCOUNT, VAULT_ACCOUNT] {
        assert!(sids.iter().any(|s| s.ends_with(account)), "no statement for {account}: {sids:?}");
    }
    let places = [
        (&inv["target_snapshots"], &inv["target_volumes"], seed.target_key.as_deref().unwrap(), TARGET_AZ, 0),
        (&vault["snapshots"], &vault["volumes"], vault_key.as_str(), "us-west-2b", 1),
    ];
    for src in &seed.volumes {
        let entry = report["volumes"].as_array().unwrap().iter().find(|v| v["source_volume"] == src.as_str()).unwrap();
        assert_eq!(entry["status"], "succeeded", "{entry:#}");
        for (snaps, vols, key, az, i) in places {
            let copies = made(snaps, name, Some("copy"), Some(src));
            assert_eq!(copies.len(), 1, "copies of {src} in target {i}: {copies:#?}");
            assert_eq!(copies[0]["state"], "completed");
            assert_eq!(copies[0]["kms"], key, "{:#}", copies[0]);
            let made_vols = made(vols, name, Some("volume"), Some(src));
            assert_eq!(made_vols.len(), 1, "volumes of {src} in target {i}");
            assert_eq!((made_vols[0]["kms"].as_str(), made_vols[0]["az"].as_str()), (Some(key), Some(az)));
            let c = &entry["copies"][i];
            assert_eq!(c["status"], "succeeded", "{entry:#}");
            assert_eq!(c["target_snapshot"], copies[0]["id"], "{entry:#}");
            assert_eq!(c["target_volume"], made_vols[0]["id"], "{entry:#}");
        }
    }
    let left: Vec<_> = made(&inv["source_snapshots"], name, None, None)
        .into_iter()
        .filter(|s| s["tags"][TAG_STEP] != "copy")
        .collect();
    assert!(left.is_empty(), "intermediates left: {left:#?}");
}

/// The locks of the target copies as the target account sees them, and what
/// DeleteSnapshot of the first answers.
const LOCKS: &str = r#"
from botocore.exceptions import ClientError
ec2 = target("ec2")
locks = ec2.describe_locked_snapshots(SnapshotIds=ARGS["copies"])["Snapshots"]
try:
    ec2.delete_snapshot(SnapshotId=ARGS["copies"][0])
    refused = None
except ClientError as e:
    refused = e.response["Error"]["Code"]
mine = client("ec2", "eu-west-1").describe_locked_snapshots(SnapshotIds=ARGS["copies"])["Snapshots"]
out({"locks": {l["SnapshotId"]: l["LockState"] for l in locks}, "refused": refused, "seen_by_source": len(mine)})
"#;

/// `lock` across accounts: every copy is locked (while pending) with the target role,
/// never the source credentials; the report gives each copy's lock; a governance
/// lock refuses DeleteSnapshot; and the IAM policy the dry-run prints for the target
/// role allows every lock call the run made, bounded to the plan's duration.
#[test]
fn cross_account_copies_are_locked_under_the_target_role() {
    let rig = Rig::start(&["--copy-pending-seconds", "1.5"]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let plan = rig.plan("e2e-lock", &seed.volumes, Target::Cross, None);
    with_options(&plan, "  lock: {mode: governance, duration: 2d}\n");

    let dry = rig.snapferry(&["run", arg(&plan), "--dry-run"]);
    dry.expect(0);
    let d = dry.json();
    let role_policy = d["iam"]["target_role"].clone();
    assert_eq!(d["locks"][0]["mode"], "governance", "{d:#}");
    assert!(d["dr_account_scp"]["Statement"][0]["Action"].to_string().contains("ec2:UnlockSnapshot"), "{d:#}");
    let warned = d["warnings"].to_string();
    assert!(warned.contains("does not deny kms:ScheduleKeyDeletion"), "the target key has the default policy: {d:#}");

    rig.moto.reset_calls();
    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(0);
    let report = run.json();
    let inv = rig.inventory(&seed);
    assert_copied(&inv, &report, &seed, "e2e-lock", Target::Cross);
    for v in report["volumes"].as_array().unwrap() {
        assert_eq!(v["lock"]["mode"], "governance", "{v:#}");
        assert_eq!(v["lock"]["state"], "governance", "{v:#}");
        assert!(v["lock"]["expires"].as_str().is_some_and(|e| e.ends_with('Z')), "{v:#}");
    }
    let by_account = rig.moto.calls_view("by-account");
    assert_eq!(count(&by_account[TARGET_ACCOUNT], "ec2:LockSnapshot"), 3, "{by_account:#}");
    assert_eq!(count(&by_account[SOURCE_ACCOUNT], "ec2:LockSnapshot"), 0, "{by_account:#}");
    let describes = count(&by_account[TARGET_ACCOUNT], "ec2:DescribeLockedSnapshots");
    assert!(describes >= 1, "{by_account:#}");

    let copies: Vec<String> = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["target_snapshot"].as_str().unwrap().to_owned())
        .collect();
    let seen = rig.py(LOCKS, json!({"copies": copies}));
    for c in &copies {
        assert_eq!(seen["locks"][c], "governance", "{seen:#}");
    }
    assert_eq!(seen["refused"], "SnapshotLocked", "{seen:#}");
    assert_eq!(seen["seen_by_source"], 0, "the locks are the target account's");

    // Every lock call the run made is allowed by the printed policy; a longer one is not.
    let allows = |action: &str, resource: &str, days: Option<&str>| {
        let context = days.map(|d| [("ec2:SnapshotLockDuration".to_owned(), d.to_owned())].into()).unwrap_or_default();
        snapferry::policy::identity_allows(
            &role_policy,
            &snapferry::policy::IamRequest { action: action.into(), resource: resource.into(), context },
        )
    };
    for c in &copies {
        assert!(
            allows("ec2:LockSnapshot", &format!("arn:aws:ec2:eu-west-1::snapshot/{c}"), Some("2")),
            "{role_policy:#}"
        );
    }
    assert!(allows("ec2:DescribeLockedSnapshots", "*", None), "{role_policy:#}");
    assert!(!allows("ec2:LockSnapshot", &format!("arn:aws:ec2:eu-west-1::snapshot/{}", copies[0]), Some("30")));

    // `status` finds no copy that should be locked and is not.
    let status = rig.snapferry(&["status"]);
    status.expect(0);
    assert_eq!(status.json()["unlocked_copies"], json!([]), "{}", status.show());
}

/// Lists the copies in the target account (eu-west-1) with their tags.
const TARGET_COPIES: &str = r#"
snaps = target("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
out([{"id": s["SnapshotId"], "tags": tags(s)} for s in snaps if tags(s).get("snapferry:step") == "copy"])
"#;

/// Verified copies against moto, cross-account and cross-region, `verify: full`, with
/// the server giving one volume's copy a different block: that volume fails naming the
/// block, its copy is kept and tagged `failed`, the others are tagged `matched:full`;
/// `snapferry verify RUN_ID --level full --evidence FILE` exits 1 and its evidence
/// shows the one mismatch and equal digests for the others.
#[test]
fn verified_copies_full_one_corrupted_copy_fails_alone() {
    let rig = Rig::start(&[]);
    let seed = rig.seed(&THREE, Some(Target::Cross));
    let bad_volume = seed.volumes[0].clone();
    rig.moto.configure(json!({"corrupt_copies_of": bad_volume}));
    let plan = rig.plan("e2e-verify", &seed.volumes, Target::Cross, None);
    with_options(&plan, "  verify: full\n  keep_source: 1\n");
    let run = rig.snapferry(&["run", arg(&plan)]);
    run.expect(1);
    let report = run.json();
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let mut bad_copy = String::new();
    for v in report["volumes"].as_array().unwrap() {
        let rec = &v["verify"];
        assert_eq!(rec["level"], "full", "{v:#}");
        if v["source_volume"] == bad_volume.as_str() {
            assert_eq!(v["status"], "failed");
            assert_eq!(v["step"], "verify");
            assert_eq!(rec["result"], "failed");
            let block = rec["first_mismatch"]["block"].as_u64().unwrap();
            assert!(v["error"].as_str().unwrap().contains(&format!("block {block}")), "{v:#}");
            bad_copy = v["target_snapshot"].as_str().unwrap().to_owned();
        } else {
            assert_eq!(v["status"], "succeeded", "{v:#}");
            assert_eq!(rec["result"], "matched");
            assert_eq!(rec["source_digest"], rec["copy_digest"]);
            assert_eq!(rec["blocks_compared"], 150);
        }
    }
    let copies = rig.py(TARGET_COPIES, json!({}));
    let copies = copies.as_array().unwrap();
    assert_eq!(copies.len(), 3, "the differing copy is kept: {copies:#?}");
    for c in copies {
        let want = if c["id"] == bad_copy.as_str() { "failed" } else { "matched:full" };
        assert_eq!(c["tags"]["snapferry:verify"], want, "{c:#}");
    }
    assert!(count(&rig.moto.calls(), "ebs:GetSnapshotBlock") >= 2 * 150 * 2);

    let evidence = rig.path("evidence.json");
    let v = rig.snapferry(&["verify", &run_id, "--level", "full", "--evidence", arg(&evidence)]);
    v.expect(1);
    let ev: Value = serde_json::from_slice(&fs::read(&evidence).unwrap()).unwrap();
    let entries = ev["copies"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{ev:#}");
    for e in entries {
        assert_eq!(e["source"]["account"], SOURCE_ACCOUNT);
        assert_eq!(e["source"]["region"], "us-east-1");
        assert_eq!(e["copy"]["account"], TARGET_ACCOUNT);
        assert_eq!(e["copy"]["region"], "eu-west-1");
        let r = &e["verify"];
        if e["copy"]["snapshot"] == bad_copy.as_str() {
            assert_eq!(r["result"], "failed");
            assert!(r["first_mismatch"]["block"].is_u64());
        } else {
            assert_eq!(r["result"], "matched", "{e:#}");
            // One list page and 150 blocks per side.
            assert_eq!((r["source_requests"].as_u64(), r["copy_requests"].as_u64()), (Some(151), Some(151)), "{e:#}");
            assert_eq!(r["source_digest"], r["copy_digest"]);
        }
    }
}
