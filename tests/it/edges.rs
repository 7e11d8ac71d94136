//! What a user meets at the edges of the binary, on the simulated AWS unless said
//! otherwise: log lines without colour codes in files, `status` of a run whose process
//! was killed, cleanup waiting for the plan's lock, a retention failure in the text report, a run id of another plan, a
//! metrics file that cannot be written, missing credentials, and an invalid plan.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::bin::{bin, code, edit_world, json, root, run, same_account_plan, spawn_hanging, world_path};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of `plans/same-account.yaml` in `dir` with `edit` applied, without the
/// named profile (the simulated AWS needs none).
#[test]
fn log_lines_carry_no_colour_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| t);
    // Piped, as under cron, systemd or CI; NO_COLOR unset.
    let o = bin()
        .args(["run", plan.to_str().unwrap(), "--simulate"])
        .env_remove("NO_COLOR")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("run ended"), "log lines on stderr: {err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape codes in piped logs: {err:?}");

    use snapferry::cli::colour_allowed;
    assert!(colour_allowed(true, None));
    assert!(!colour_allowed(false, None));
    assert!(!colour_allowed(true, Some("1".as_ref())));
    assert!(colour_allowed(true, Some("".as_ref())), "an empty NO_COLOR does not count (no-color.org)");
}

/// The status of the one run named `run_id`, as `status --format json` shows it.
fn status_of(dir: &Path, run_id: &str) -> String {
    let o = run(&["status", run_id, "--format", "json"], dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    json(&o)["status"].as_str().unwrap().to_owned()
}

#[test]
fn status_of_a_killed_run_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| t);
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A call late in the next run (past preflight, which checkpoints nothing) takes
    // effect and never returns: the process lives on, checkpointed as running, until
    // it is killed.
    let mut child = spawn_hanging(&plan, dir.path(), "killed-run");
    let started = Instant::now();
    let checkpoint = dir.path().join(".snapferry/runs/killed-run/checkpoint.json");
    while !checkpoint.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the run never checkpointed");
        assert!(child.try_wait().unwrap().is_none(), "the run ended instead of hanging");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_of(dir.path(), "killed-run"), "running", "its process holds the lock");
    child.kill().unwrap(); // SIGKILL: no chance to checkpoint an end
    child.wait().unwrap();
    assert_eq!(status_of(dir.path(), "killed-run"), "interrupted", "no process holds the lock any more");
    let o = run(&["status"], dir.path());
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.starts_with("killed-run")).unwrap();
    assert!(line.contains("interrupted") && !line.contains("running"), "{text}");
}

/// The number of calls the simulated AWS in `dir` has answered.
fn calls_answered(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(world_path(dir)).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["total_calls"].as_u64().unwrap()
}

#[test]
fn cleanup_waits_for_the_plans_lock_before_it_reads_the_run_or_calls_aws() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| format!("{t}options:\n  cleanup: false\n"));
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first = json(&o)["run_id"].as_str().unwrap().to_owned();
    assert!(first.starts_with("build-cache-move-"), "{first}");

    // Another run of the plan holds its lock: cleanup of the first run (a minted id,
    // which names the plan) is refused before it reads the state or calls AWS.
    let mut child = spawn_hanging(&plan, dir.path(), "held-run");
    let started = Instant::now();
    while !dir.path().join(".snapferry/runs/held-run/checkpoint.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the run never checkpointed");
        assert!(child.try_wait().unwrap().is_none(), "the run ended instead of hanging");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = calls_answered(dir.path());
    let o = run(&["cleanup", &first, "--simulate"], dir.path());
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("holds the lock on plan build-cache-move"), "{}", stderr(&o));
    assert_eq!(calls_answered(dir.path()), before, "cleanup called AWS while the plan was locked");
    child.kill().unwrap();
    child.wait().unwrap();
    edit_world(dir.path(), |w| w["faults"]["halt_after_calls"] = serde_json::Value::Null);

    // Once the lock is free: the minted id, and a chosen id shaped like a minted one
    // of another plan (whose lock cleanup lets go of for the run's own).
    let o = run(&["cleanup", &first, "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let chosen = "nightly-20261201T000000Z-beef";
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--run-id", chosen], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(&["cleanup", chosen, "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["run_id"], chosen);
    let o = run(&["cleanup", "held-run", "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn text_report_names_a_retention_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| format!("{t}options:\n  keep: 1\n  cleanup: false\n"));
    let o = run(&["run", plan.to_str().unwrap(), "--simulate"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Only retention deletes snapshots in this plan; take that permission away.
    edit_world(dir.path(), |w| w["faults"]["denied"] = serde_json::json!(["ec2:DeleteSnapshot"]));
    let o = run(&["run", plan.to_str().unwrap(), "--simulate"], dir.path());
    assert_eq!(code(&o), 0, "the copies succeeded: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains("retention")).unwrap_or_else(|| panic!("no retention line in:\n{out}"));
    assert!(line.starts_with("warning: retention in us-east-2"), "{out}");
    assert!(line.contains("ec2:DeleteSnapshot") || line.contains("not authorized"), "{out}");
}

#[test]
fn run_id_of_another_plan_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let example = root("plans/example.yaml");
    let o = run(&["run", example.to_str().unwrap(), "--simulate", "--run-id", "shared-id"], dir.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let other = same_account_plan(dir.path(), |t| t);
    let o =
        run(&["run", other.to_str().unwrap(), "--simulate", "--run-id", "shared-id", "--format", "json"], dir.path());
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(json(&o)["exit_code"], 2);
    assert!(stderr(&o).contains("belongs to plan prod-db-dr"), "{}", stderr(&o));
}

#[test]
fn metrics_file_failure_keeps_exit_0_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| t);
    let prom = dir.path().join("no/such/dir/dr.prom");
    let o = run(
        &["run", plan.to_str().unwrap(), "--simulate", "--format", "json", "--metrics-file", prom.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let report = json(&o);
    assert_eq!(report["status"], "succeeded");
    let err = stderr(&o);
    assert!(err.contains("cannot write metrics file") && err.contains("dr.prom"), "{err}");
    // The run is done: the next invocation does not start it again.
    let again = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&again), 0);
    let o = run(&["status", "--format", "json"], dir.path());
    assert_eq!(json(&o)["runs"].as_array().unwrap().len(), 2, "a second run after success, not a resumed one");
    assert_eq!(json(&again)["status"], "succeeded");
    assert_ne!(json(&again)["run_id"], report["run_id"]);
}

#[test]
fn missing_credentials_are_one_readable_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| t);
    // Nothing listens there: no request may be needed to find there are no credentials.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = bin();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL_KMS",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    let o = cmd
        .args(["run", plan.to_str().unwrap(), "--endpoint-url", &format!("http://127.0.0.1:{port}")])
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "a preflight problem: {}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("no usable AWS credentials").count(), 1, "said once: {err}");
    for dump in ["ProviderError", "raw:", "Response {", "headers", "CredentialsNotLoaded"] {
        assert!(!err.contains(dump), "SDK debug output ({dump}) in: {err}");
    }
    for hint in ["AWS_PROFILE", "aws sso login", "AWS_WEB_IDENTITY_TOKEN_FILE", "-v"] {
        assert!(err.contains(hint), "what to set ({hint}) in: {err}");
    }
}

#[test]
fn an_invalid_plan_names_each_problem_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nname: Bad_Name\nsource: {}\n").unwrap();
    let o = run(&["validate", bad.to_str().unwrap()], dir.path());
    assert_eq!(code(&o), 2);
    // The graphical report wraps long lines inside its box: compare words only.
    let words = |s: &str| s.replace(['│', '·'], " ").split_whitespace().collect::<Vec<_>>().join(" ");
    let err = words(&stderr(&o));
    let o = run(&["validate", bad.to_str().unwrap(), "--format", "json"], dir.path());
    let problems: Vec<String> =
        json(&o)["errors"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect();
    assert!(problems.len() >= 3, "{problems:?}");
    for p in &problems {
        let listed = problems.iter().filter(|q| *q == p).count();
        assert_eq!(err.matches(&words(p)).count(), listed, "{p:?} once per problem in:\n{err}");
    }
}
