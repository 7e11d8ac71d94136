//! The state in S3 (`--state-dir s3://...`) with the real binary against moto's S3,
//! EC2, KMS and STS on one port: processes in different working directories share one
//! state; a second run is refused while the first holds the lease and changes
//! nothing; after a kill -9 the lease is taken over once it ends and the same run
//! finishes with no duplicate; a writer whose lease was taken over (a frozen process)
//! fails instead of writing; `status` and `cleanup` work from a third directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::moto_e2e::boto3;
use super::support::bin::{Run, against_moto, empty_aws_files, snapferry};
use super::support::fault_proxy::FaultProxy;
use super::support::moto::Moto;

const BUCKET: &str = "snapferry-state";
const STATE: &str = "s3://snapferry-state/ci/prod";
/// Short leases so the takeover tests take seconds; renewed every quarter.
const LEASE_SECONDS: u64 = 6;

/// The state bucket, the source key and volumes, the target key.
const SEED: &str = r#"
client("s3").create_bucket(Bucket=ARGS["bucket"])
kms = client("kms")
src = kms.create_key(Description="e2e source")["KeyMetadata"]
kms.create_alias(AliasName="alias/share", TargetKeyId=src["KeyId"])
ec2 = client("ec2")
vols = [ec2.create_volume(Size=8, AvailabilityZone="us-east-1a", VolumeType="gp3", Encrypted=True,
                          KmsKeyId=src["Arn"])["VolumeId"] for _ in range(ARGS["n"])]
dst = target("kms").create_key(Description="e2e target")["KeyMetadata"]["Arn"]
target("kms").create_alias(AliasName="alias/dr", TargetKeyId=dst)
out({"volumes": vols})
"#;

/// The state bucket's objects (key -> ETag), the lease, and what the runs made.
const INVENTORY: &str = r#"
s3 = client("s3")
listing = s3.list_objects_v2(Bucket=ARGS["bucket"]).get("Contents", [])
objects = {o["Key"]: o["ETag"] for o in listing}
sizes = {o["Key"]: o["Size"] for o in listing}
lease = None
for k in objects:
    if k.endswith("/locks/e2e-s3.json"):
        lease = json.loads(s3.get_object(Bucket=ARGS["bucket"], Key=k)["Body"].read())
def made(c, step):
    return [s["SnapshotId"] for s in c.describe_snapshots(OwnerIds=["self"])["Snapshots"]
            if tags(s).get("snapferry:step") == step]
out({
    "objects": objects,
    "sizes": sizes,
    "lease": lease,
    "copies": made(target("ec2"), "copy"),
    "volumes": [v["VolumeId"] for v in target("ec2").describe_volumes()["Volumes"]
                if tags(v).get("snapferry:step") == "volume"],
    "source_snapshots": made(client("ec2"), "snapshot"),
})
"#;

struct Rig {
    moto: Moto,
    dir: tempfile::TempDir,
    plan: PathBuf,
    volumes: Vec<String>,
}

impl Rig {
    /// A server whose copies stay pending for `copy_pending` seconds, `n` volumes, and
    /// a plan in the rig's directory.
    fn start(n: usize, copy_pending: u64) -> Rig {
        let moto = Moto::start_with(&["--copy-pending-seconds", &copy_pending.to_string()]);
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        empty_aws_files(dir.path());
        let mut rig = Rig { moto, dir, plan: PathBuf::new(), volumes: vec![] };
        let seed = rig.py(SEED, json!({"bucket": BUCKET, "n": n}));
        rig.volumes = seed["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        let mut y = String::from(
            "version: 1\nname: e2e-s3\nsource:\n  region: us-east-1\n  account: \"123456789012\"\n  kms_key: alias/share\n\
             target:\n  region: eu-west-1\n  account: \"222222222222\"\n  role_arn: arn:aws:iam::222222222222:role/dr\n  \
             kms_key: alias/dr\n  availability_zone: eu-west-1a\nvolumes:\n",
        );
        for v in &rig.volumes {
            y.push_str(&format!("  - id: {v}\n"));
        }
        rig.plan = rig.dir.path().join("plan.yaml");
        std::fs::write(&rig.plan, y).unwrap();
        rig
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn py(&self, body: &str, args: Value) -> Value {
        let only_path = |cmd: &mut Command| {
            cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        };
        boto3(only_path, self.dir.path(), &self.moto.endpoint, body, &args)
    }

    fn inventory(&self) -> Value {
        self.py(INVENTORY, json!({"bucket": BUCKET}))
    }

    /// The binary, run from working directory `cwd` (a, b or c) with the S3 state.
    fn command(&self, cwd: &str, args: &[&str]) -> Command {
        let mut cmd = snapferry();
        against_moto(&mut cmd, &self.moto.endpoint, self.dir.path(), "testing")
            .current_dir(self.path(cwd))
            .args(args)
            .args(["--format", "json"])
            .env("SNAPFERRY_STATE_DIR", STATE)
            .env("SNAPFERRY_LEASE_SECONDS", LEASE_SECONDS.to_string());
        cmd
    }

    fn snapferry(&self, cwd: &str, args: &[&str]) -> Run {
        Run::from(self.command(cwd, args).output().expect("run snapferry"))
    }

    fn spawn(&self, cwd: &str, args: &[&str]) -> Child {
        self.command(cwd, args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start snapferry")
    }

    fn plan_arg(&self) -> &str {
        self.plan.to_str().unwrap()
    }

    /// Waits (bounded) until the lease names a run and a copy is under way.
    fn wait_for_copies(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let inv = self.inventory();
            if inv["lease"]["run_id"].is_string() && inv["copies"].as_array().unwrap().len() == self.volumes.len() {
                return inv;
            }
            assert!(Instant::now() < deadline, "the first run never got its copies going: {inv:#}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Checks one copy and one volume per source volume, nothing left on the source.
    fn assert_one_of_each(&self, report: &Value) {
        let inv = self.inventory();
        assert_eq!(report["status"], "succeeded", "{report:#}");
        assert_eq!(inv["copies"].as_array().unwrap().len(), self.volumes.len(), "{inv:#}");
        assert_eq!(inv["volumes"].as_array().unwrap().len(), self.volumes.len(), "{inv:#}");
        assert_eq!(inv["source_snapshots"].as_array().unwrap().len(), 0, "{inv:#}");
        assert!(inv["lease"].is_null(), "the lease is released at the end: {inv:#}");
    }
}

fn no_local_state(dir: &Path) {
    assert!(!dir.join(".snapferry/runs").exists(), "nothing is written to the local dir {}", dir.display());
}

#[test]
fn a_second_machine_is_refused_then_takes_over_a_dead_run_and_finishes_it() {
    let rig = Rig::start(2, 8);
    let mut first = rig.spawn("a", &["run", rig.plan_arg()]);
    let before = rig.wait_for_copies();
    first.kill().unwrap(); // SIGKILL: the lease stays until it ends
    first.wait().unwrap();
    let run_id = before["lease"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(before["lease"]["pid"], first.id());

    // While the dead holder's lease lasts: exit 3, naming it, and nothing changes.
    let held = rig.inventory();
    rig.moto.reset_calls();
    let refused = rig.snapferry("b", &["run", rig.plan_arg()]);
    let doc = refused.expect_json(3);
    let error = doc["error"].as_str().unwrap();
    assert!(error.contains(&format!("pid {}", first.id())) && error.contains(&run_id), "{error}");
    assert!(error.contains("lease ends at"), "{error}");
    assert_eq!(rig.inventory()["objects"], held["objects"], "a refused run writes nothing to the bucket");
    // S3 requests (the checks' own reads too) are in the bucket comparison above.
    let mutating = rig.moto.calls_view("mutating");
    let changed: Vec<_> =
        mutating.as_object().unwrap().iter().filter(|(k, v)| !k.starts_with("s3:") && *v != 0).collect();
    assert!(changed.is_empty(), "a refused run changes nothing in AWS: {mutating}");

    // Once the lease ended, the second machine takes the run over and finishes it.
    std::thread::sleep(Duration::from_secs(LEASE_SECONDS + 1));
    let done = rig.snapferry("b", &["run", rig.plan_arg()]);
    let report = done.expect_json(0);
    assert_eq!(report["run_id"], run_id.as_str(), "the same run, carried on");
    assert!(done.stderr.contains("taking over the lease"), "{}", done.show());
    rig.assert_one_of_each(&report);
    // What the state cost, as the binary counted it.
    let line = done.stderr.lines().find(|l| l.contains("state requests")).unwrap_or_default();
    eprintln!("takeover run: {line}");
    no_local_state(&rig.path("a"));
    no_local_state(&rig.path("b"));

    // status and cleanup from a third directory.
    let status = rig.snapferry("c", &["status"]).expect_json(0);
    let runs = status.as_array().or_else(|| status["runs"].as_array()).expect("a list of runs").clone();
    assert!(runs.iter().any(|r| r["run_id"] == run_id.as_str() && r["status"] == "succeeded"), "{status:#}");
    let one = rig.snapferry("c", &["status", &run_id]).expect_json(0);
    assert_eq!(one["run_id"], run_id.as_str(), "{one:#}");
    let cleaned = rig.snapferry("c", &["cleanup", &run_id, "--plan", rig.plan_arg()]).expect_json(0);
    assert_eq!(cleaned["run_id"], run_id.as_str(), "{cleaned:#}");
    assert!(rig.inventory()["lease"].is_null());
    no_local_state(&rig.path("c"));
}

#[test]
fn a_frozen_holder_whose_lease_was_taken_over_cannot_write() {
    let rig = Rig::start(1, 12);
    let mut first = rig.spawn("a", &["run", rig.plan_arg()]);
    rig.wait_for_copies();
    // Freeze the first run (a suspended laptop, a partitioned runner).
    let pid = first.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(LEASE_SECONDS + 1));
    let second = rig.snapferry("b", &["run", rig.plan_arg()]);
    let report = second.expect_json(0);
    rig.assert_one_of_each(&report);
    let after = rig.inventory();

    // It wakes up: its lease is gone, so it stops at its next write and writes nothing.
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the fenced run did not stop");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("lost the lease") || stderr.contains("written by another snapferry"), "{stderr}");
    let end = rig.inventory();
    assert_eq!(end["objects"], after["objects"], "the fenced writer wrote nothing");
    assert_eq!(end["copies"], after["copies"]);
    assert_eq!(end["volumes"], after["volumes"]);
}

#[test]
fn max_duration_stops_with_exit_4_and_the_next_invocation_carries_on() {
    let rig = Rig::start(2, 6);
    let stopped = rig.snapferry("a", &["run", rig.plan_arg(), "--max-duration", "3s"]);
    let report = stopped.expect_json(4);
    assert_eq!(report["status"], "stopped", "{report:#}");
    assert!(report["volumes"].as_array().unwrap().iter().all(|v| v["status"] == "in_progress"), "{report:#}");
    assert!(rig.inventory()["lease"].is_null(), "the lease is released at a clean stop");
    let line = stopped.stderr.lines().find(|l| l.contains("state requests")).unwrap_or_default();
    eprintln!("stopped run: {line}");
    let done = rig.snapferry("b", &["run", rig.plan_arg()]);
    let end = done.expect_json(0);
    assert_eq!(end["run_id"], report["run_id"]);
    rig.assert_one_of_each(&end);
    let line = done.stderr.lines().find(|l| l.contains("state requests")).unwrap_or_default();
    eprintln!("finishing run: {line}");
}

/// The numbers in the binary's "state requests: ..." log line.
fn state_requests(stderr: &str) -> Vec<u64> {
    let line = stderr.lines().find(|l| l.contains("state requests:")).expect("the state requests line");
    let text = line.split("state requests:").nth(1).unwrap();
    text.split(',')
        .filter_map(|part| {
            part.split_whitespace().next()?.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().ok()
        })
        .collect()
}

#[test]
fn the_state_of_twenty_volumes_costs_writes_in_proportion() {
    let rig = Rig::start(20, 2);
    let done = rig.snapferry("a", &["run", rig.plan_arg()]);
    let report = done.expect_json(0);
    rig.assert_one_of_each(&report);
    let counts = state_requests(&done.stderr);
    let [puts, gets, lists, deletes, written, read] = counts[..] else { panic!("{counts:?}") };
    let inv = rig.inventory();
    let checkpoint = inv["sizes"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("/runs/"))
        .map(|(_, v)| v.as_u64().unwrap())
        .max()
        .unwrap();
    eprintln!(
        "20 volumes on moto: {puts} PUTs, {gets} GETs, {lists} LISTs, {deletes} DELETEs, {written} bytes written, {read} bytes read; final checkpoint {checkpoint} bytes"
    );
    // One PUT per sync, a handful per volume; and far less than rewriting the whole
    // state at every sync.
    assert!(puts <= 20 * 12, "{puts} PUTs for 20 volumes");
    assert!(written < puts * checkpoint / 2, "{written} bytes in {puts} PUTs, checkpoint {checkpoint} bytes");
    // Only what the run wrote last is left: the newest checkpoint.
    let left: Vec<_> = inv["objects"].as_object().unwrap().keys().filter(|k| k.contains("/runs/")).collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// The binary with its S3 (and every other AWS) request going through `proxy`, and
/// a lease of `lease` seconds.
fn via(rig: &Rig, proxy: &FaultProxy, lease: u64, cwd: &str, args: &[&str]) -> Command {
    let mut cmd = rig.command(cwd, args);
    cmd.env("AWS_ENDPOINT_URL", &proxy.endpoint).env("SNAPFERRY_LEASE_SECONDS", lease.to_string());
    cmd
}

/// The requests of the proxy's log that match `method` and a part of the path.
fn logged<'a>(log: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["method"] == method && e["path"].as_str().unwrap_or_default().contains(path)).collect()
}

/// The requests S3 carried out and whose answer the proxy replaced with a 500.
fn lost<'a>(log: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    logged(log, method, path)
        .into_iter()
        .filter(|e| e["fault"] == "lose" && e["status"].as_u64().is_some_and(|s| (200..300).contains(&s)))
        .collect()
}

/// The runs the state holds, as `status` lists them.
fn runs_in_state(rig: &Rig) -> Vec<Value> {
    let status = rig.snapferry("c", &["status"]).expect_json(0);
    status.as_array().or_else(|| status["runs"].as_array()).expect("a list of runs").clone()
}

#[test]
fn a_run_whose_state_writes_lose_their_answers_succeeds_in_one_run() {
    let rig = Rig::start(2, 2);
    let proxy = FaultProxy::start(&rig.moto.endpoint);
    // Every checkpoint and journal batch S3 carries out is answered 500.
    proxy.rules(json!([{"fault": "lose", "methods": ["PUT"], "path": "/runs/", "times": null}]));
    // A lease long enough that each write's bound leaves room for the SDK's back-off.
    let done = Run::from(via(&rig, &proxy, 40, "a", &["run", rig.plan_arg()]).output().unwrap());
    let report = done.expect_json(0);
    rig.assert_one_of_each(&report);
    let log = proxy.log();
    let lost = lost(&log, "PUT", "/runs/");
    let refused = logged(&log, "PUT", "/runs/").into_iter().filter(|e| e["status"] == 412).count();
    // The first checkpoint, the batches, the last checkpoint: each one carried out once
    // with its answer lost, and its retry refused by it.
    assert!(lost.len() >= 3, "{log:#?}");
    assert!(refused >= lost.len(), "every lost answer's retry was refused: {log:#?}");
    eprintln!("lost answers: {} state writes carried out and answered 500, {refused} retries refused", lost.len());
    let runs = runs_in_state(&rig);
    assert_eq!(runs.len(), 1, "no second run: {runs:#?}");
    assert_eq!(runs[0]["run_id"], report["run_id"]);
    assert_eq!(runs[0]["status"], "succeeded");
    let calls = rig.moto.calls();
    // Each step once: nothing was done again by a rerun (the volumes are counted above).
    assert_eq!(calls["ec2:CreateSnapshot"], rig.volumes.len(), "{calls:#}");
    assert_eq!(calls["ec2:CopySnapshot"], rig.volumes.len(), "{calls:#}");
}

#[test]
fn a_lease_whose_answers_are_lost_is_ours_from_take_to_release() {
    let rig = Rig::start(1, 4);
    let proxy = FaultProxy::start(&rig.moto.endpoint);
    // Taking, renewing and releasing the lease: each answer lost once carried out.
    proxy.rules(json!([{"fault": "lose", "methods": ["PUT", "DELETE"], "path": "/locks/", "times": null}]));
    let done = Run::from(via(&rig, &proxy, 8, "a", &["run", rig.plan_arg()]).output().unwrap());
    assert!(!done.stderr.contains("holds the lock"), "{}", done.show());
    let report = done.expect_json(0);
    rig.assert_one_of_each(&report);
    let log = proxy.log();
    let lost_puts = lost(&log, "PUT", "/locks/").len();
    let lost_deletes = lost(&log, "DELETE", "/locks/").len();
    // The takes (the preflight's and the run's), the renewal naming the run, renewals
    // while the copy is pending, and the releases.
    assert!(lost_puts >= 4, "{log:#?}");
    assert!(lost_deletes >= 1, "{log:#?}");
    assert_eq!(runs_in_state(&rig).len(), 1);
}

#[test]
fn a_write_held_past_the_lease_stops_its_holder_and_the_next_holders_state_ignores_it() {
    let rig = Rig::start(1, 8);
    let proxy = FaultProxy::start(&rig.moto.endpoint);
    let mut old = via(&rig, &proxy, LEASE_SECONDS, "a", &["run", rig.plan_arg()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_for_copies();
    // The old holder's next state write starts a partition: everything it sends for
    // the next 45 s is held, then delivered.
    const HOLD: u64 = 45;
    proxy.rules(json!([{"fault": "hold", "methods": ["PUT"], "path": "/runs/", "seconds": HOLD, "times": 1}]));
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the partitioned holder did not stop: {:#?}", proxy.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(old.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("lost the lease"), "{stderr}");
    let log = proxy.log();
    let start = log.iter().find(|e| e["fault"] == "hold").expect("a held write")["received"].as_f64().unwrap();
    let after: Vec<_> = log.iter().filter(|e| e["received"].as_f64().unwrap() >= start).collect();
    assert!(after.iter().all(|e| e["service"] == "s3"), "no AWS call after the partition began: {after:#?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    eprintln!(
        "partitioned holder: stopped {:.1} s after its write was held ({} requests held, all S3)",
        now - start,
        after.len()
    );

    // Once the lease ended, a second machine (not partitioned) takes the run over and
    // finishes it before the held writes land.
    let lease_end = rig.inventory()["lease"]["expires_ms"].as_f64().unwrap() / 1000.0;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64((lease_end - now).max(0.0) + 0.5));
    let done = rig.snapferry("b", &["run", rig.plan_arg()]);
    let report = done.expect_json(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now < start + HOLD as f64, "the takeover finished before the held writes land");

    // The held writes land: a state object in a slot the last checkpoint freed.
    let deadline = Instant::now() + Duration::from_secs(HOLD + 30);
    let log = loop {
        let log = proxy.log();
        if log.iter().filter(|e| e["fault"] == "hold").all(|e| e["status"].is_number()) {
            break log;
        }
        assert!(Instant::now() < deadline, "the held writes never landed: {log:#?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let landed: Vec<_> =
        logged(&log, "PUT", "/runs/").into_iter().filter(|e| e["fault"] == "hold" && e["status"] == 200).collect();
    assert_eq!(landed.len(), 1, "one late write carried out: {log:#?}");
    let path = landed[0]["path"].as_str().unwrap();
    let key = path.split('?').next().unwrap().trim_start_matches(&format!("/{BUCKET}/")).to_owned();
    let inv = rig.inventory();
    assert!(inv["objects"].get(&key).is_some(), "{key} in {inv:#}");
    // Every reader starts from the newest checkpoint: the run is as the new holder left it.
    rig.assert_one_of_each(&report);
    let runs = runs_in_state(&rig);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!((&runs[0]["run_id"], &runs[0]["status"]), (&report["run_id"], &json!("succeeded")));
    let one = rig.snapferry("c", &["status", report["run_id"].as_str().unwrap()]).expect_json(0);
    assert_eq!(one["status"], "succeeded", "{one:#}");
}
