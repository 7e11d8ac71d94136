//! `--log-format json` as CI and log shippers read it, with the binary on the simulated
//! AWS: every line on stderr is one JSON object with `timestamp`, `level` and `message`,
//! for a good run, an invalid plan, a held lock, a failed volume, a usage error and an
//! envelope command; a failed volume is an ERROR, a warning a WARN.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::bin::{code, run, same_account_plan, spawn_hanging};

/// Every line of stderr as a JSON object with the three keys every line has.
fn json_lines(o: &std::process::Output) -> Vec<Value> {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.trim().is_empty(), "no log lines at all");
    err.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\nall:\n{err}"));
            for k in ["timestamp", "level", "message"] {
                assert!(v[k].is_string(), "no `{k}` in {l}");
            }
            v
        })
        .collect()
}

fn with_level<'a>(lines: &'a [Value], level: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["level"] == level).collect()
}

/// `plans/same-account.yaml` without its named profile, edited, in `dir`.
#[test]
fn a_simulated_run_logs_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| t);
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--log-format", "json", "-v"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let ended = lines.iter().find(|l| l["message"] == "run ended").expect("a run ended line");
    assert_eq!(ended["level"], "INFO");
    assert_eq!(ended["status"], "succeeded");
    assert!(
        lines.iter().any(|l| l["message"] == "volume done" && l["volume"] == "vol-0a1b2c3d4e5f60718"),
        "{lines:#?}"
    );
    // The text report stays on stdout, where it belongs.
    assert!(String::from_utf8_lossy(&o.stdout).contains("succeeded"));
}

#[test]
fn an_invalid_plan_is_one_error_line_per_problem_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nname: Bad_Name\nsource: {}\noptions: {keep: \"7\"}\n").unwrap();
    for args in [&["validate"][..], &["run", "--simulate"][..]] {
        let mut a = args.to_vec();
        a.insert(1, bad.to_str().unwrap());
        a.extend(["--log-format", "json"]);
        let o = run(&a, dir.path());
        assert_eq!(code(&o), 2, "{args:?}");
        let lines = json_lines(&o);
        let problems: Vec<_> = lines.iter().filter(|l| l["field"].is_string()).collect();
        assert!(problems.len() >= 4, "every problem: {lines:#?}");
        for p in &problems {
            assert_eq!(p["level"], "ERROR");
            assert!(p["file"].as_str().unwrap().ends_with("bad.yaml"), "{p}");
            assert!(p["line"].as_u64().unwrap() >= 1 && p["column"].as_u64().unwrap() >= 1, "{p}");
        }
        let name = problems.iter().find(|p| p["field"] == "name").expect("the name problem");
        assert_eq!((name["line"].as_u64(), name["column"].as_u64()), (Some(2), Some(7)), "{name}");
        let keep = problems.iter().find(|p| p["field"] == "options.keep").expect("the quoted number");
        assert_eq!(keep["line"], 4, "{keep}");
        let last = lines.last().unwrap();
        assert_eq!((&last["level"], &last["exit_code"]), (&Value::from("ERROR"), &Value::from(2)), "{last}");
    }
}

#[test]
fn a_held_lock_is_an_error_line_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| t);
    let o = run(&["run", plan.to_str().unwrap(), "--simulate"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    // The next run hangs on a call that never returns, holding the plan's lock.
    let mut holder = spawn_hanging(&plan, dir.path(), "holder");
    let started = Instant::now();
    while !dir.path().join(".snapferry/runs/holder/checkpoint.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the holder never checkpointed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--log-format", "json"], dir.path());
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(code(&o), 3, "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let errors = with_level(&lines, "ERROR");
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert_eq!(errors[0]["exit_code"], 3);
    assert!(errors[0]["message"].as_str().unwrap().contains("build-cache-move"), "names the plan: {}", errors[0]);
}

#[test]
fn a_failed_volume_is_an_error_line_and_a_warning_a_warn_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = same_account_plan(dir.path(), |t| format!("{t}options:\n  every: 1m\n"));
    let o = run(&["run", plan.to_str().unwrap(), "--simulate"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    // The source volume is decommissioned; a metrics file that cannot be written is a
    // warning.
    let world = dir.path().join(".snapferry/simulated-aws/build-cache-move.json");
    let mut w: Value = serde_json::from_slice(&std::fs::read(&world).unwrap()).unwrap();
    w["volumes"].as_object_mut().unwrap().remove("vol-0a1b2c3d4e5f60718").expect("seeded volume");
    std::fs::write(&world, serde_json::to_vec(&w).unwrap()).unwrap();
    let prom = dir.path().join("no/such/dir/dr.prom");
    let args = ["run", plan.to_str().unwrap(), "--simulate", "--log-format", "json", "--metrics-file"];
    let mut args = args.to_vec();
    args.push(prom.to_str().unwrap());
    let o = run(&args, dir.path());
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let errors = with_level(&lines, "ERROR");
    let failed = errors.iter().find(|l| l["message"] == "volume failed").unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(failed["volume"], "vol-0a1b2c3d4e5f60718");
    assert!(failed["error"].as_str().unwrap().contains("no longer exists"), "{failed}");
    assert!(errors.iter().any(|l| l["message"] == "run ended" && l["status"] == "failed"), "{lines:#?}");
    let warns = with_level(&lines, "WARN");
    assert!(warns.iter().any(|l| l["message"].as_str().unwrap().contains("cannot write metrics file")), "{lines:#?}");
}

#[test]
fn a_usage_error_is_a_json_line_too() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["run", "--log-format", "json", "--no-such-option"], dir.path());
    assert_eq!(code(&o), 2);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert!(lines[0]["message"].as_str().unwrap().contains("--no-such-option"), "{}", lines[0]);
}

#[test]
fn an_envelope_command_says_what_it_did_in_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dump.bin");
    std::fs::write(&input, b"some bytes").unwrap();
    let enc = dir.path().join("dump.sfe");
    let (input, enc) = (input.to_str().unwrap(), enc.to_str().unwrap());
    let encrypt = ["envelope", "encrypt", "--key", "alias/backup", "--region", "us-east-1", "--simulate", input, enc];
    let o = run(&[&encrypt[..], &["--log-format", "json"]].concat(), dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let said = lines.iter().any(|l| l["level"] == "INFO" && l["message"].as_str().unwrap().contains("dump.sfe"));
    assert!(said, "{lines:#?}");
    // Without it, the same words are plain text.
    let o = run(&encrypt, dir.path());
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stderr).contains("dump.sfe"));
    assert!(serde_json::from_slice::<Value>(&o.stderr).is_err(), "{}", String::from_utf8_lossy(&o.stderr));
}
