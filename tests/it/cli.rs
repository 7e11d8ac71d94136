//! The binary's outside, as the contract describes it, on the simulated AWS: exit
//! codes, JSON documents, the dry-run's golden output, status, cleanup and envelope
//! encryption. (The binary against moto is in `moto_e2e`.)

use std::path::Path;

use serde_json::Value;

use crate::support::bin::{bin, code, json, root, run};

#[test]
fn validate_accepts_the_examples_and_refuses_a_bad_plan_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for p in [
        "plans/example.yaml",
        "plans/same-account.yaml",
        "plans/fleet.yaml",
        "plans/fan-out.yaml",
        "plans/recurring.yaml",
    ] {
        let o = run(&["validate", root(p).to_str().unwrap()], dir.path());
        assert_eq!(code(&o), 0, "{p}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nname: Bad_Name\nsource: {}\n").unwrap();
    let o = run(&["validate", bad.to_str().unwrap(), "--format", "json"], dir.path());
    assert_eq!(code(&o), 2);
    let doc = json(&o);
    assert_eq!(doc["status"], "invalid");
    let errors = doc["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "every problem at once: {errors:?}");
    assert!(errors.iter().any(|e| e["field"] == "name" && e["line"] == 2), "{errors:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("bad.yaml:2:"), "file:line in the message: {stderr}");
}

#[test]
fn schema_is_a_json_schema_of_the_plan() {
    let o = run(&["schema"], Path::new("."));
    assert_eq!(code(&o), 0);
    let doc = json(&o);
    assert!(doc["properties"]["volumes"].is_object(), "{doc}");
    assert!(doc["properties"]["source"].is_object());
}

#[test]
fn simulated_run_prints_the_contract_report_and_status_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let doc = json(&o);
    assert_eq!(doc["plan"], "prod-db-dr");
    assert_eq!(doc["status"], "succeeded");
    let vols = doc["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 3);
    for v in vols {
        for k in ["source_volume", "source_snapshot", "shared_snapshot", "target_snapshot", "target_volume"] {
            assert!(v[k].as_str().is_some_and(|s| !s.is_empty()), "{k} in {v}");
        }
        assert_eq!(v["status"], "succeeded");
        assert!(v["error"].is_null());
    }
    // The default state dir is .snapferry in the working directory.
    assert!(dir.path().join(".snapferry/runs").is_dir());
    let run_id = doc["run_id"].as_str().unwrap();
    let o = run(&["status", run_id, "--format", "json"], dir.path());
    assert_eq!(code(&o), 0);
    assert_eq!(json(&o)["status"], "succeeded");
    let o = run(&["status", "--format", "json"], dir.path());
    assert_eq!(json(&o)["runs"].as_array().unwrap().len(), 1);
    let o = run(&["status", "no-such-run"], dir.path());
    assert_eq!(code(&o), 2);
}

#[test]
fn state_dir_comes_from_the_option_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/same-account.yaml");
    let o = bin()
        .args(["run", plan.to_str().unwrap(), "--simulate"])
        .env("SNAPFERRY_STATE_DIR", dir.path().join("from-env"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("from-env/runs").is_dir());
    assert!(!dir.path().join(".snapferry").exists());
}

#[test]
fn dry_run_offline_matches_its_golden_output_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    for (format, golden) in [("json", "dry-run-offline.json"), ("text", "dry-run-offline.txt")] {
        let o = run(&["run", plan.to_str().unwrap(), "--dry-run", "--offline", "--format", format], dir.path());
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let got = String::from_utf8(o.stdout).unwrap();
        let path = root(&format!("tests/fixtures/golden/{golden}"));
        if std::env::var_os("SNAPFERRY_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).expect("golden file (SNAPFERRY_UPDATE_GOLDEN=1 writes it)");
        assert_eq!(got, want, "dry-run {format} output changed; review and rerun with SNAPFERRY_UPDATE_GOLDEN=1");
    }
    assert!(!dir.path().join(".snapferry").exists(), "a dry-run writes no state");
}

#[test]
fn dry_run_json_has_the_contract_fields() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    let o = run(&["run", plan.to_str().unwrap(), "--dry-run", "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let d = json(&o);
    assert_eq!(d["plan"], "prod-db-dr");
    assert!(d["steps"].as_array().is_some_and(|s| s.len() == 3));
    assert!(d["key_policy"]["key_arn"].as_str().unwrap().starts_with("arn:aws:kms:us-east-1:111111111111:key/"));
    assert_eq!(d["key_policy"]["already_present"], false);
    assert_eq!(d["key_policy"]["add_statement"]["Principal"]["AWS"], "arn:aws:iam::222222222222:root");
    for k in ["source_caller", "target_role", "target_role_trust"] {
        assert!(d["iam"][k]["Statement"].is_array(), "iam.{k}: {}", d["iam"][k]);
    }
    let trust = d["iam"]["target_role_trust"].to_string();
    assert!(trust.contains("sts:ExternalId") && trust.contains("dr-2026"), "{trust}");
    let role = d["iam"]["target_role"].to_string();
    assert!(role.contains("arn:aws:ec2:us-east-1::snapshot/*"), "the source snapshot ARN: {role}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    let o = run(&["run", plan.to_str().unwrap(), "--endpoint-url", "http://10.1.2.3:4566"], dir.path());
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("TLS"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["run", "/no/such/plan.yaml"], dir.path());
    assert_eq!(code(&o), 2);
    let o = run(&["frobnicate"], dir.path());
    assert_eq!(code(&o), 2);
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--run-id", "bad id"], dir.path());
    assert_eq!(code(&o), 2);
}

#[test]
fn cleanup_removes_intermediates_and_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root("plans/example.yaml")).unwrap().replace("cleanup: true", "cleanup: false");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, text).unwrap();
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let run_id = json(&o)["run_id"].as_str().unwrap().to_owned();
    let o = run(&["cleanup", &run_id, "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let c = json(&o);
    assert_eq!(c["grant"], "revoked", "{c}");
    assert!(c["deleted_snapshots"].as_array().unwrap().len() >= 3, "{c}");
    let world: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".snapferry/simulated-aws/prod-db-dr.json")).unwrap())
            .unwrap();
    let snaps = world["snapshots"].as_object().unwrap();
    assert!(snaps.values().all(|s| s["tags"]["snapferry:step"] == "copy"), "only the copies remain");
    let key = world["keys"].as_array().unwrap().iter().find(|k| k["aliases"][0] == "prod-ebs-share").unwrap();
    assert!(!key["policy"].as_str().unwrap().contains("SnapferryShare"), "statement removed");
}

#[test]
fn envelope_round_trip_on_the_simulated_kms() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dump.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let enc = dir.path().join("dump.sfe");
    let dec = dir.path().join("dump.out");
    let o = run(
        &[
            "envelope",
            "encrypt",
            "--key",
            "alias/backup",
            "--region",
            "us-east-1",
            "--simulate",
            input.to_str().unwrap(),
            enc.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["envelope", "decrypt", "--simulate", enc.to_str().unwrap(), dec.to_str().unwrap()], dir.path());
    assert_eq!(code(&o), 2, "a message needs --key or --discovery");
    assert!(!dec.exists());
    let o = run(
        &["envelope", "decrypt", "--simulate", "--discovery", enc.to_str().unwrap(), dec.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&dec).unwrap(), data);
    // A flipped bit fails with exit 1 and leaves no output.
    let mut bytes = std::fs::read(&enc).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&enc, bytes).unwrap();
    let bad = dir.path().join("bad.out");
    let o = run(
        &["envelope", "decrypt", "--simulate", "--discovery", enc.to_str().unwrap(), bad.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code(&o), 1);
    assert!(!bad.exists());

    // With a context: the simulated KMS binds it to the data key as KMS does, so a
    // message whose context was changed is refused at Decrypt, before any output.
    let ctx = dir.path().join("ctx.sfe");
    let o = run(
        &[
            "envelope",
            "encrypt",
            "--key",
            "alias/backup",
            "--region",
            "us-east-1",
            "--simulate",
            "--context",
            "purpose=backup",
            input.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let back = dir.path().join("ctx.out");
    let decrypt = |file: &std::path::Path, out: &std::path::Path| {
        run(
            &[
                "envelope",
                "decrypt",
                "--simulate",
                "--region",
                "us-east-1",
                "--key",
                "alias/backup",
                "--context",
                "purpose=backup",
                file.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
            dir.path(),
        )
    };
    let o = decrypt(&ctx, &back);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let mut bytes = std::fs::read(&ctx).unwrap();
    let at = bytes.windows(6).position(|w| w == b"backup").unwrap();
    bytes[at] = b'B';
    let altered = dir.path().join("altered.sfe");
    std::fs::write(&altered, bytes).unwrap();
    let never = dir.path().join("never.out");
    let o = run(
        &["envelope", "decrypt", "--simulate", "--discovery", altered.to_str().unwrap(), never.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("InvalidCiphertextException"), "{o:?}");
    assert!(!never.exists());
    let o = decrypt(&altered, &never);
    assert_eq!(code(&o), 1, "the required pair is gone");
    assert!(!never.exists());
}

#[test]
fn metrics_file_reports_freshness_per_volume() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    let prom = dir.path().join("dr.prom");
    let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--metrics-file", prom.to_str().unwrap()], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&prom).unwrap();
    for v in ["vol-0123456789abcdef0", "vol-0fedcba9876543210", "vol-00112233445566778"] {
        let line = format!("snapferry_last_success{{plan=\"prod-db-dr\",volume=\"{v}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
        assert!(
            text.contains(&format!("snapferry_last_success_timestamp_seconds{{plan=\"prod-db-dr\",volume=\"{v}\"}} "))
        );
    }
    assert!(text.contains("# TYPE snapferry_last_duration_seconds gauge"));
}

#[test]
fn dry_run_says_which_copies_are_full_and_what_the_schedule_implies() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root("plans/example.yaml")).unwrap();
    let text = text.replace("options:\n", "options:\n  every: 24h\n  copy_within: 2h\n  keep_source: 1\n");
    let plan = dir.path().join("recurring.yaml");
    std::fs::write(&plan, text).unwrap();
    let o = run(&["run", plan.to_str().unwrap(), "--dry-run", "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let d = json(&o);
    let kinds = d["copy_kinds"].as_array().expect("copy_kinds");
    assert!(!kinds.is_empty());
    for k in kinds {
        let why = k["why"].as_str().unwrap();
        match k["expected"].as_str().unwrap() {
            "full" => assert!(why.contains("re-encrypted") && why.contains("GiB"), "{k:#}"),
            "incremental" => assert!(why.contains("full the first time"), "{k:#}"),
            other => panic!("unexpected kind {other}"),
        }
    }
    let schedule: Vec<&str> = d["schedule"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(schedule.len(), 3, "{schedule:#?}");
    assert!(schedule[1].contains("120 minutes") && schedule[1].contains("per GiB"), "{schedule:#?}");
    let o = run(&["run", plan.to_str().unwrap(), "--dry-run", "--simulate"], dir.path());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("== next copy per volume") && text.contains("== schedule"), "{text}");
}

#[test]
fn metrics_of_a_recurring_plan_say_how_old_each_copy_is_and_what_fails() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root("plans/example.yaml")).unwrap();
    let plan = dir.path().join("recurring.yaml");
    std::fs::write(&plan, text.replace("options:\n", "options:\n  every: 1m\n")).unwrap();
    let prom = dir.path().join("dr.prom");
    let args = ["run", plan.to_str().unwrap(), "--simulate", "--metrics-file", prom.to_str().unwrap()];
    let o = run(&args, dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    // The volume is decommissioned in the simulated world.
    let world_path = dir.path().join(".snapferry/simulated-aws/prod-db-dr.json");
    let mut world: Value = serde_json::from_slice(&std::fs::read(&world_path).unwrap()).unwrap();
    world["volumes"].as_object_mut().unwrap().remove("vol-0123456789abcdef0").expect("seeded volume");
    std::fs::write(&world_path, serde_json::to_vec(&world).unwrap()).unwrap();
    let o = run(&args, dir.path());
    assert_eq!(code(&o), 1, "a failing volume fails the invocation: {}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&prom).unwrap();
    for v in ["vol-0fedcba9876543210", "vol-00112233445566778"] {
        assert!(text.contains(&format!("snapferry_stale{{plan=\"prod-db-dr\",volume=\"{v}\"}} 0")), "{text}");
        assert!(text.contains(&format!("snapferry_copy_age_seconds{{plan=\"prod-db-dr\",volume=\"{v}\"}} ")), "{text}");
    }
    assert!(
        text.contains(
            "snapferry_failing_since_timestamp_seconds{plan=\"prod-db-dr\",volume=\"vol-0123456789abcdef0\"} "
        ),
        "{text}"
    );
    // `status` says the same: staleness per volume against every, and what fails since when.
    let o = run(&["status", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let st = json(&o);
    let fresh = st["last_success"].as_array().unwrap();
    assert!(fresh.iter().all(|e| e["stale"].is_boolean()), "{st:#}");
    let failing = st["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{st:#}");
    assert_eq!(failing[0]["source_volume"], "vol-0123456789abcdef0");
    assert!(failing[0]["error"].as_str().unwrap().contains("no longer exists"), "{st:#}");
    let o = run(&["status"], dir.path());
    assert!(String::from_utf8_lossy(&o.stdout).contains("failing source volumes:"));
}

#[test]
fn dry_run_with_the_state_in_s3_asks_for_the_bucket_in_the_source_policy() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    let o = run(
        &[
            "run",
            plan.to_str().unwrap(),
            "--dry-run",
            "--offline",
            "--format",
            "json",
            "--state-dir",
            "s3://dr-state/prod",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let doc = json(&o);
    let stmts = doc["iam"]["source_caller"]["Statement"].as_array().unwrap();
    let objects = stmts.iter().find(|s| s["Sid"] == "SnapferryStateObjects").expect("the state bucket's statement");
    assert_eq!(objects["Resource"], "arn:aws:s3:::dr-state/prod/*");
    assert!(stmts.iter().any(|s| s["Sid"] == "SnapferryStateList"));
}

#[test]
fn bad_state_locations_and_durations_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/example.yaml");
    let p = plan.to_str().unwrap();
    let o = run(&["run", p, "--simulate", "--state-dir", "s3://Not_A_Bucket/x"], dir.path());
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not an S3 bucket name"));
    let o = run(&["run", p, "--simulate", "--max-duration", "soon"], dir.path());
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-duration soon"));
}

#[test]
fn a_fan_out_plan_is_rehearsed_reported_per_target_and_dry_run_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let plan = root("plans/fan-out.yaml");
    let metrics = dir.path().join("snapferry.prom");
    let o = run(
        &["run", plan.to_str().unwrap(), "--simulate", "--format", "json", "--metrics-file", metrics.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let doc = json(&o);
    assert_eq!(doc["status"], "succeeded");
    for v in doc["volumes"].as_array().unwrap() {
        let copies = v["copies"].as_array().unwrap();
        let places: Vec<_> = copies.iter().map(|c| (c["account"].clone(), c["region"].clone())).collect();
        assert_eq!(
            places,
            vec![("222222222222".into(), "eu-west-1".into()), ("333333333333".into(), "us-west-2".into())],
            "{v}"
        );
        for c in copies {
            assert_eq!(c["status"], "succeeded", "{c}");
            assert!(c["target_snapshot"].is_string() && c["target_volume"].is_string(), "{c}");
            assert!(c["error"].is_null());
        }
        // The flat fields are the first target's.
        assert_eq!(v["target_snapshot"], copies[0]["target_snapshot"]);
    }
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("target=\"333333333333/us-west-2\""), "{prom}");
    let o = run(&["status", "--format", "json"], dir.path());
    let last = json(&o)["last_success"].as_array().unwrap().clone();
    assert_eq!(last.len(), 6, "one entry per volume and target: {last:?}");

    let o = run(&["run", plan.to_str().unwrap(), "--dry-run", "--offline", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let d = json(&o);
    let targets = d["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert!(t["iam_policy"]["Statement"].is_array() && t["trust_policy"].is_object(), "{t}");
    }
    let statements = d["key_policy"]["add_statements"].as_array().unwrap();
    let sids: Vec<&str> = statements.iter().map(|s| s["Sid"].as_str().unwrap()).collect();
    assert_eq!(sids, ["SnapferryShare-prod-db-fanout-222222222222", "SnapferryShare-prod-db-fanout-333333333333"]);
    let caller = d["iam"]["source_caller"].to_string();
    for role in ["role/snapferry-dr", "role/snapferry-vault"] {
        assert!(caller.contains(role), "the caller may assume {role}: {caller}");
    }
}

/// `history: 1`: each round removes the one before it from the state; `status` says how
/// many were removed, and `cleanup` of a removed run says to name its plan, then finds
/// the run's snapshots by their tags.
#[test]
fn status_counts_the_runs_history_removed_and_cleanup_of_one_works_from_tags() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root("plans/example.yaml")).unwrap().replace("cleanup: true", "cleanup: false");
    let plan = dir.path().join("recurring.yaml");
    std::fs::write(&plan, text.replace("options:\n", "options:\n  every: 1m\n  history: 1\n")).unwrap();
    let mut ids = vec![];
    for _ in 0..3 {
        let o = run(&["run", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        ids.push(json(&o)["run_id"].as_str().unwrap().to_owned());
    }
    let o = run(&["status", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let st = json(&o);
    assert_eq!(st["removed_runs"]["prod-db-dr"], 2, "{st:#}");
    let runs: Vec<&str> = st["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs, [ids[2].as_str()]);
    let text = String::from_utf8(run(&["status"], dir.path()).stdout).unwrap();
    assert!(text.contains("prod-db-dr") && text.contains("2 older finished runs removed"), "{text}");

    let o = run(&["status", &ids[0]], dir.path());
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("options.history"), "{o:?}");
    let o = run(&["status", &ids[0]], dir.path());
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("options.history"), "{o:?}");
    let o = run(&["cleanup", &ids[0], "--simulate"], dir.path());
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("options.history") && err.contains("cleanup --plan PLAN"), "{err}");
    let o = run(&["cleanup", &ids[0], "--plan", plan.to_str().unwrap(), "--simulate", "--format", "json"], dir.path());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!json(&o)["deleted_snapshots"].as_array().unwrap().is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
}
