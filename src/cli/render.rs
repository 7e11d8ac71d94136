//! Rendering of results: text for people, JSON for CI, and the Prometheus textfile.
//! The output format is matched here alone ([`emit`] and its kin): everything else
//! hands over a value and its text.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::checkpoint::{RunMeta, RunRecord, RunStatus};
use crate::engine::Step;
use crate::exec::cleanup::CleanupSummary;
use crate::exec::{RunError, RunReport};
use crate::plan::{InvalidPlan, Plan};

use super::args::Format;
use super::failure::Failure;

/// Where the text for people of a command's result goes; the JSON document for CI
/// always goes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextTo {
    /// stdout, as it is: a report, a status, a dry-run.
    Stdout,
    /// stderr, a line (an INFO log line under `--log-format json`): the envelope
    /// commands, whose stdout stays free for CI's document.
    Stderr,
}

/// Prints a command's result on stdout: `value` as one JSON document for CI, or `text`
/// of it for people. Both come from the same value, so they cannot disagree.
pub fn emit<T: serde::Serialize + ?Sized>(format: Format, value: &T, text: impl FnOnce(&T) -> String) {
    emit_to(TextTo::Stdout, format, value, text)
}

/// [`emit`], with the text for people sent where `to` says.
pub fn emit_to<T: serde::Serialize + ?Sized>(to: TextTo, format: Format, value: &T, text: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => {
            // Streamed: a report of many volumes is never held as one string.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let _ = serde_json::to_writer_pretty(&mut out, value)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
                .and_then(|()| out.flush());
        }
        Format::Text => match to {
            TextTo::Stdout => print!("{}", text(value)),
            TextTo::Stderr => super::logs::say(&text(value)),
        },
    }
}

/// Prints the text for people of a result that ends in a [`Failure`] whose document
/// is that result (a dry-run with problems): for CI, the failure's document is the one
/// JSON document on stdout.
pub fn emit_before_failure<T: ?Sized>(format: Format, value: &T, text: impl FnOnce(&T) -> String) {
    if format == Format::Text {
        print!("{}", text(value));
    }
}

/// Prints a failed command's JSON document on stdout under `--format json`; for people,
/// the closing `error:` line on stderr says it all.
pub fn failure(format: Format, f: &Failure) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&failure_document(f)).unwrap_or_default());
    }
}

/// The JSON document of a failed command.
pub fn failure_document(f: &Failure) -> Value {
    let code = super::exit::of_failure(f);
    match f {
        Failure::InvalidPlan { file, errors, .. } => {
            json!({"status": "invalid", "exit_code": code, "file": file, "errors": errors})
        }
        Failure::WouldStop { report, .. } => report.clone(),
        Failure::Run(e) => {
            let mut doc = json!({"status": "error", "exit_code": code, "error": e.to_string()});
            if let RunError::Preflight(problems) = e {
                doc["problems"] = problems
                    .iter()
                    .map(|p| json!({"resource": p.resource, "message": p.message}))
                    .collect::<Vec<_>>()
                    .into();
            }
            doc
        }
        other => json!({"status": "error", "exit_code": code, "error": other.message()}),
    }
}

/// Shows the problems of an invalid plan, each once with file:line:column: as a
/// graphical report on stderr for people, as one ERROR log line each with
/// `--log-format json`, and for `--format json` in the failure's message (its document
/// lists them). Returns that closing message.
pub fn invalid_plan(format: Format, path: &Path, invalid: InvalidPlan) -> String {
    if super::logs::json_logs() {
        // One ERROR line per problem, each with its place and field.
        for i in &invalid.issues {
            tracing::error!(file = %invalid.file, line = i.line, column = i.column, field = %i.field, "{}", i.message);
        }
        return format!("{} is not a valid plan: {} problem(s), logged above", path.display(), invalid.issues.len());
    }
    match format {
        Format::Text => {
            let n = invalid.issues.len();
            eprintln!("{:?}", invalid.into_report());
            // The report above names every problem; the closing line only counts them.
            format!("{} is not a valid plan: {n} problem(s), listed above", path.display())
        }
        Format::Json => format!("{} is not a valid plan:\n{invalid}", path.display()),
    }
}

fn ts(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

pub fn report_text(r: &RunReport) -> String {
    let mut s = String::new();
    let ok = r.volumes.iter().filter(|v| v.status == "succeeded").count();
    let _ = writeln!(
        s,
        "run {} of plan {}: {} ({ok}/{} volumes succeeded) in {}h{:02}m{:02}s{}",
        r.run_id,
        r.plan,
        r.status.as_str(),
        r.volumes.len(),
        r.duration_seconds / 3600,
        r.duration_seconds % 3600 / 60,
        r.duration_seconds % 60,
        if r.simulated { " of simulated time" } else { "" }
    );
    for v in &r.volumes {
        let _ = writeln!(
            s,
            "  {}  {:<9} snapshot {}  shared {}  copy {}  volume {}",
            v.source_volume,
            v.status,
            v.source_snapshot.as_deref().unwrap_or("-"),
            v.shared_snapshot.as_deref().unwrap_or("-"),
            v.target_snapshot.as_deref().unwrap_or("-"),
            v.target_volume.as_deref().unwrap_or("-"),
        );
        if let Some(e) = &v.error {
            let _ = writeln!(s, "      error at {}: {e}", v.step);
        }
        if let Some(h) = &v.hint {
            let _ = writeln!(s, "      what to do: {h}");
        }
        for c in &v.copies {
            let _ = writeln!(
                s,
                "      to {} in {}: {:<11} copy {}  volume {}{}",
                c.account.as_deref().unwrap_or("-"),
                c.region,
                c.status,
                c.target_snapshot.as_deref().unwrap_or("-"),
                c.target_volume.as_deref().unwrap_or("-"),
                c.error.as_deref().map(|e| format!("\n        error: {e}")).unwrap_or_default()
            );
        }
        if let Some(k) = v.next_copy.as_ref().filter(|k| k.expected == "full") {
            let _ = writeln!(s, "      next copy: full, {}", k.why);
        }
    }
    if let Some(p) = &r.retention {
        let _ = writeln!(s, "retention: {}", retention_summary(p));
    }
    if let Some(e) = &r.retention_error {
        let _ = writeln!(s, "warning: {e}; the copies of this run are complete, older ones were not pruned");
    }
    match r.status {
        RunStatus::Failed => {
            let _ = writeln!(s, "fix what is named above, then run the same command again: done volumes are kept");
        }
        RunStatus::Interrupted => {
            let _ = writeln!(s, "interrupted: run the same command again to resume");
        }
        RunStatus::Stopped => {
            let _ = writeln!(
                s,
                "stopped at --max-duration: AWS goes on with the copies under way; run the same command again to carry on"
            );
        }
        RunStatus::Succeeded | RunStatus::Running => {}
    }
    s
}

fn retention_summary(p: &crate::exec::retention::Pruned) -> String {
    let mut s = format!("deleted {} older snapshot(s) and {} volume(s)", p.snapshots.len(), p.volumes.len());
    if !p.in_use.is_empty() {
        let _ = write!(s, "; left {} attached volume(s) alone: {}", p.in_use.len(), p.in_use.join(", "));
    }
    for l in &p.locked {
        let until = l.until.as_deref().unwrap_or("its completion plus the lock duration");
        let _ = write!(s, "; kept {}, locked until {until}", l.snapshot);
    }
    s
}

fn counts(r: &RunRecord) -> Value {
    let c = |f: fn(Step) -> bool| r.volumes.iter().filter(|v| f(v.step)).count();
    json!({
        "total": r.volumes.len(),
        "succeeded": c(|s| s == Step::Done),
        "failed": c(|s| s == Step::Failed),
        "pending": c(|s| !s.is_terminal()),
    })
}

type Newest = (i64, Option<i64>, String, Option<String>, Option<String>);

/// What `status` shows of every run, gathered one run at a time: a recurring plan
/// leaves a run per round, and only one of them is held at once.
#[derive(Debug, Default)]
pub struct Runs {
    /// Per run, in the order added: its meta and its volumes by status.
    rows: Vec<(RunMeta, Value)>,
    /// Per (plan, source volume, target): the newest successful copy (finished, began,
    /// run, target snapshot, target label).
    newest: std::collections::BTreeMap<(String, String, u8), Newest>,
    /// Per plan, what its newest run says: when it was created, its `every`, and its
    /// failing volumes.
    newest_run: std::collections::BTreeMap<String, NewestRun>,
    /// Per plan, the runs `options.history` removed from the state.
    pub removed: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug)]
struct NewestRun {
    created_ms: i64,
    every_ms: Option<i64>,
    failing: Vec<Value>,
    /// Copies of locked targets that have no lock.
    unlocked: Vec<Value>,
}

impl Runs {
    /// Adds a run; runs come oldest first, as the store lists them.
    pub fn add(&mut self, r: &RunRecord) {
        self.rows.push((r.meta.clone(), counts(r)));
        for v in &r.volumes {
            let Some(f) = v.delivered_at() else { continue };
            let key = (r.meta.plan.clone(), v.source_volume.to_string(), v.target);
            if self.newest.get(&key).is_none_or(|e| e.0 < f) {
                let run = v.chain_run(&r.meta.run_id).to_owned();
                let target = target_label(r, v.target);
                self.newest
                    .insert(key, (f, v.started_ms, run, v.target_snapshot.as_ref().map(|s| s.to_string()), target));
            }
        }
        if self.newest_run.get(r.meta.plan.as_str()).is_none_or(|n| r.meta.created_ms >= n.created_ms) {
            let mut failing = vec![];
            for v in r.volumes.iter().filter(|v| v.step == Step::Failed) {
                let since = v.failing_since_ms.or(v.finished_ms).unwrap_or(r.meta.updated_ms);
                let mut e = json!({"plan": r.meta.plan, "source_volume": v.source_volume.to_string(),
                                "since": ts(since), "error": v.failure.as_ref().map(|f| f.message.clone())});
                if let Some(t) = target_label(r, v.target) {
                    e["target"] = json!(t);
                }
                failing.push(e);
            }
            let targets = r.meta.targets();
            let mut unlocked = vec![];
            for v in r.volumes.iter().filter(|v| v.copy_unlocked()) {
                let Some(mode) = targets.get(usize::from(v.target)).and_then(|t| t.lock.clone()) else { continue };
                let mut e = json!({"plan": r.meta.plan, "source_volume": v.source_volume.to_string(),
                                "target_snapshot": v.target_snapshot.as_ref().map(|s| s.to_string()),
                                "lock": mode, "step": v.failure.as_ref().map(|f| f.step).unwrap_or(v.step).as_str()});
                if let Some(t) = target_label(r, v.target) {
                    e["target"] = json!(t);
                }
                unlocked.push(e);
            }
            let newest = NewestRun { created_ms: r.meta.created_ms, every_ms: r.meta.every_ms, failing, unlocked };
            self.newest_run.insert(r.meta.plan.clone(), newest);
        }
    }

    /// Per plan and source volume: the newest successful copy, when it finished and
    /// how old it is now, for DR freshness; for a recurring plan also whether it is
    /// older than `every` (from when it began, as `every` counts).
    pub fn last_success(&self, now_ms: i64) -> Value {
        Value::Array(
            self.newest
                .iter()
                .map(|((plan, vol, _), (f, began, run, snap, target))| {
                    let mut e = json!({"plan": plan, "source_volume": vol, "run_id": run, "finished": ts(*f),
                           "age_seconds": (now_ms - f).max(0) / 1000, "target_snapshot": snap});
                    if let Some(t) = target {
                        e["target"] = json!(t);
                    }
                    if let (Some(every_ms), Some(began)) = (self.newest_run.get(plan).and_then(|n| n.every_ms), began) {
                        e["stale"] = json!(now_ms - began > every_ms);
                    }
                    e
                })
                .collect(),
        )
    }

    /// Per plan, the copies of its latest run that should be locked and are not.
    pub fn unlocked(&self) -> Value {
        Value::Array(self.newest_run.values().flat_map(|n| n.unlocked.iter().cloned()).collect())
    }

    /// Per plan, the volumes failing in its latest run, and since when.
    pub fn failing(&self) -> Value {
        Value::Array(self.newest_run.values().flat_map(|n| n.failing.iter().cloned()).collect())
    }
}

/// `account/region` of target `t` of a run with several targets; `None` with one.
fn target_label(r: &RunRecord, t: u8) -> Option<String> {
    let targets = r.meta.targets();
    targets
        .get(usize::from(t))
        .filter(|_| targets.len() > 1)
        .map(|x| format!("{}/{}", x.account.as_ref().map_or("source", |a| a.as_str()), x.region))
}

pub fn runs_json(runs: &Runs) -> Value {
    json!({"last_success": runs.last_success(crate::clock::Clock::now_ms(&crate::clock::WallClock)),
           "failing": runs.failing(),
           "unlocked_copies": runs.unlocked(),
           "removed_runs": runs.removed,
           "runs": runs.rows.iter().map(|(m, counts)| json!({
        "run_id": m.run_id,
        "plan": m.plan,
        "status": m.status.as_str(),
        "created": ts(m.created_ms),
        "updated": ts(m.updated_ms),
        "finished": m.finished_ms.map(ts),
        "simulated": m.simulated,
        "cleaned_up": m.cleaned_up,
        "volumes": counts,
    })).collect::<Vec<_>>()})
}

pub fn runs_text(runs: &Runs) -> String {
    if runs.rows.is_empty() {
        return "no runs in the state dir\n".into();
    }
    let mut s = String::new();
    let _ = writeln!(s, "{:<48} {:<12} {:>6} {:>6} {:>6}  updated", "run", "status", "done", "failed", "total");
    for (m, c) in &runs.rows {
        let _ = writeln!(
            s,
            "{:<48} {:<12} {:>6} {:>6} {:>6}  {}{}",
            m.run_id,
            m.status.as_str(),
            c["succeeded"].as_u64().unwrap_or(0),
            c["failed"].as_u64().unwrap_or(0),
            c["total"].as_u64().unwrap_or(0),
            ts(m.updated_ms),
            if m.cleaned_up { " (cleaned up)" } else { "" }
        );
    }
    let fresh = runs.last_success(crate::clock::Clock::now_ms(&crate::clock::WallClock));
    if let Some(list) = fresh.as_array().filter(|l| !l.is_empty()) {
        let _ = writeln!(s, "\nlast successful copy per source volume:");
        for e in list {
            let age = e["age_seconds"].as_i64().unwrap_or(0);
            let _ = writeln!(
                s,
                "  {:<24} {:<24} {}  ({}h{:02}m ago, run {}){}",
                e["plan"].as_str().unwrap_or(""),
                e["source_volume"].as_str().unwrap_or(""),
                e["finished"].as_str().unwrap_or(""),
                age / 3600,
                age % 3600 / 60,
                e["run_id"].as_str().unwrap_or(""),
                if e["stale"] == json!(true) { "  STALE: older than the plan's every" } else { "" }
            );
        }
    }
    if let Some(list) = runs.unlocked().as_array().filter(|l| !l.is_empty()) {
        let _ = writeln!(s, "\ncopies that should be locked and are not:");
        for e in list {
            let _ = writeln!(
                s,
                "  {:<24} {:<24} {} ({} lock, at step {})",
                e["plan"].as_str().unwrap_or(""),
                e["source_volume"].as_str().unwrap_or(""),
                e["target_snapshot"].as_str().unwrap_or("-"),
                e["lock"].as_str().unwrap_or(""),
                e["step"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(list) = runs.failing().as_array().filter(|l| !l.is_empty()) {
        let _ = writeln!(s, "\nfailing source volumes:");
        for e in list {
            let _ = writeln!(
                s,
                "  {:<24} {:<24} since {}: {}",
                e["plan"].as_str().unwrap_or(""),
                e["source_volume"].as_str().unwrap_or(""),
                e["since"].as_str().unwrap_or(""),
                e["error"].as_str().unwrap_or("")
            );
        }
    }
    let removed: Vec<_> = runs.removed.iter().filter(|(_, n)| **n > 0).collect();
    if !removed.is_empty() {
        let _ = writeln!(s, "\nruns removed from the state (options.history):");
        for (plan, n) in removed {
            let _ = writeln!(s, "  {plan:<24} {n} older finished runs removed");
        }
    }
    s
}

pub fn run_status_json(r: &RunRecord) -> Value {
    let mut v = serde_json::to_value(RunReport::from_record(r)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("created".into(), json!(ts(r.meta.created_ms)));
        m.insert("updated".into(), json!(ts(r.meta.updated_ms)));
        m.insert("source_account".into(), json!(r.meta.source_account));
        m.insert("target_account".into(), json!(r.meta.target_account));
        m.insert("source_key_arn".into(), json!(r.meta.source_key_arn));
        m.insert("target_key_arn".into(), json!(r.meta.target_key_arn));
        m.insert("grant".into(), serde_json::to_value(&r.meta.grant).unwrap_or(Value::Null));
        m.insert("cleaned_up".into(), json!(r.meta.cleaned_up));
        m.insert("volumes_by_status".into(), counts(r));
    }
    v
}

pub fn run_status_text(r: &RunRecord) -> String {
    let mut s = report_text(&RunReport::from_record(r));
    let _ = writeln!(s, "  created {}  updated {}", ts(r.meta.created_ms), ts(r.meta.updated_ms));
    for v in r.volumes.iter().filter(|v| !v.step.is_terminal()) {
        let _ = writeln!(
            s,
            "  {} at step {}{}",
            v.source_volume,
            v.step.as_str(),
            v.progress.map(|p| format!(" ({p}%)")).unwrap_or_default()
        );
    }
    s
}

pub fn cleanup_text(c: &CleanupSummary) -> String {
    let mut s = format!(
        "cleanup of run {}: deleted {} snapshot(s), key-policy statement {}\n",
        c.run_id,
        c.deleted_snapshots.len(),
        c.grant
    );
    for k in &c.carried {
        let _ = writeln!(
            s,
            "  {}: left alone, run {} carries this chain on (it is cleaned up with that run)",
            k.source_volume, k.carried_by
        );
    }
    for e in &c.errors {
        let _ = writeln!(s, "  error: {e}");
    }
    s
}

/// A metric's labels for one volume run: the volume, and with several targets the
/// target (`account/region`) as well.
fn series(plan: &Plan, v: &crate::engine::VolumeRun) -> String {
    match plan.targets.get(usize::from(v.target)).filter(|_| plan.targets.len() > 1) {
        Some(t) => format!(
            "volume=\"{}\",target=\"{}/{}\"",
            v.source_volume,
            t.account.as_ref().map(|a| a.as_str()).unwrap_or("source"),
            t.region
        ),
        None => format!("volume=\"{}\"", v.source_volume),
    }
}

/// What the metrics file says, gathered one run at a time: a recurring plan leaves a
/// run per round, and only one of them is held at once.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per series, when its last successful copy finished.
    last_success: std::collections::BTreeMap<String, i64>,
    /// Per series, the latest attempt: (ended, duration, succeeded).
    latest: std::collections::BTreeMap<String, (i64, i64, bool)>,
    /// Per series, when its newest good copy began.
    newest: std::collections::BTreeMap<String, i64>,
    /// The failing series of the plan's newest run, and since when; with that run's
    /// creation time.
    failing: Option<(i64, std::collections::BTreeMap<String, i64>)>,
    /// The copies of the plan's newest run that should be locked and are not; with
    /// that run's creation time.
    unlocked: Option<(i64, usize)>,
}

impl Metrics {
    /// Adds a run of `plan` (runs of other plans are left out), in any order.
    pub fn add(&mut self, plan: &Plan, r: &RunRecord) {
        if r.meta.plan != plan.name.as_str() {
            return;
        }
        for v in &r.volumes {
            let id = series(plan, v);
            // A lead whose copy is delivered and whose cleanup waits for another
            // target's copy counts as that copy's success, as in the report.
            let delivered = v.delivered_at();
            if let Some(f) = delivered {
                let e = self.last_success.entry(id.clone()).or_default();
                *e = (*e).max(f);
            }
            if let (Some(_), Some(start)) = (delivered, v.started_ms) {
                let e = self.newest.entry(id.clone()).or_insert(start);
                *e = (*e).max(start);
            }
            if let (Some(start), Some(end)) = (v.started_ms, delivered.or(v.finished_ms)) {
                let e = self.latest.entry(id).or_insert((0, 0, false));
                if end >= e.0 {
                    *e = (end, end - start, delivered.is_some());
                }
            }
        }
        if self.failing.as_ref().is_none_or(|(created, _)| r.meta.created_ms >= *created) {
            let failing = r
                .volumes
                .iter()
                .filter(|v| v.step == Step::Failed)
                .filter_map(|v| v.failing_since_ms.map(|since| (series(plan, v), since)))
                .collect();
            self.failing = Some((r.meta.created_ms, failing));
            let unlocked = r
                .volumes
                .iter()
                .filter(|v| plan.targets.get(usize::from(v.target)).is_some_and(|t| t.lock.is_some()))
                .filter(|v| v.copy_unlocked())
                .count();
            self.unlocked = Some((r.meta.created_ms, unlocked));
        }
    }
}

/// Writes a Prometheus textfile (for node_exporter's textfile collector) with, per
/// source volume of the plan, the time of its last successful copy, the duration
/// and the outcome of its latest attempt. Written atomically.
pub fn write_metrics(path: &Path, plan: &Plan, m: &Metrics) -> std::io::Result<()> {
    let (last_success, latest) = (&m.last_success, &m.latest);
    let p = plan.name.as_str();
    let mut s = String::new();
    let _ =
        writeln!(s, "# HELP snapferry_last_success_timestamp_seconds When the volume's last successful copy finished.");
    let _ = writeln!(s, "# TYPE snapferry_last_success_timestamp_seconds gauge");
    for (v, t) in last_success {
        let _ = writeln!(s, "snapferry_last_success_timestamp_seconds{{plan=\"{p}\",{v}}} {}", t / 1000);
    }
    let _ = writeln!(s, "# HELP snapferry_last_duration_seconds How long the volume's latest copy took.");
    let _ = writeln!(s, "# TYPE snapferry_last_duration_seconds gauge");
    for (v, (_, d, _)) in latest {
        let _ = writeln!(s, "snapferry_last_duration_seconds{{plan=\"{p}\",{v}}} {:.3}", *d as f64 / 1000.0);
    }
    let _ = writeln!(s, "# HELP snapferry_last_success Whether the volume's latest copy succeeded (1) or failed (0).");
    let _ = writeln!(s, "# TYPE snapferry_last_success gauge");
    for (v, (_, _, ok)) in latest {
        let _ = writeln!(s, "snapferry_last_success{{plan=\"{p}\",{v}}} {}", u8::from(*ok));
    }
    if plan.locks() {
        let n = m.unlocked.map(|(_, n)| n).unwrap_or(0);
        let _ = writeln!(
            s,
            "# HELP snapferry_unlocked_copies Copies of the newest run on locked targets that have no lock."
        );
        let _ = writeln!(s, "# TYPE snapferry_unlocked_copies gauge");
        let _ = writeln!(s, "snapferry_unlocked_copies{{plan=\"{p}\"}} {n}");
    }
    if let Some(every) = plan.options.every {
        // Recurring plans: how old each volume's newest good copy is (from when it
        // began, as `every` counts), whether that is older than `every`, and since when
        // a volume has been failing.
        let every_ms = every.as_millis() as i64;
        let now = crate::clock::Clock::now_ms(&crate::clock::WallClock);
        let newest = &m.newest;
        let empty = std::collections::BTreeMap::new();
        let failing = m.failing.as_ref().map(|(_, f)| f).unwrap_or(&empty);
        let _ =
            writeln!(s, "# HELP snapferry_copy_age_seconds Age of the volume's newest good copy, from when it began.");
        let _ = writeln!(s, "# TYPE snapferry_copy_age_seconds gauge");
        for (v, start) in newest {
            let _ = writeln!(s, "snapferry_copy_age_seconds{{plan=\"{p}\",{v}}} {}", (now - start).max(0) / 1000);
        }
        let _ =
            writeln!(s, "# HELP snapferry_stale Whether the volume's newest good copy is older than options.every.");
        let _ = writeln!(s, "# TYPE snapferry_stale gauge");
        for (v, start) in newest {
            let _ = writeln!(s, "snapferry_stale{{plan=\"{p}\",{v}}} {}", u8::from(now - start > every_ms));
        }
        let _ = writeln!(s, "# HELP snapferry_failing_since_timestamp_seconds Since when the volume has been failing.");
        let _ = writeln!(s, "# TYPE snapferry_failing_since_timestamp_seconds gauge");
        for (v, since) in failing {
            let _ = writeln!(s, "snapferry_failing_since_timestamp_seconds{{plan=\"{p}\",{v}}} {}", since / 1000);
        }
    }
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, s)?;
    std::fs::rename(tmp, path)
}

/// A progress bar on stderr when it is a terminal and the output is for people; plain
/// log lines otherwise (CI, pipes, `--format json`, `--log-format json`).
pub fn progress_bar(format: Format) -> Option<std::sync::Arc<dyn crate::exec::Progress>> {
    use std::io::IsTerminal;
    if format != Format::Text || !std::io::stderr().is_terminal() || super::logs::json_logs() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} volumes done {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    Some(std::sync::Arc::new(Bar(bar)))
}

struct Bar(indicatif::ProgressBar);

impl crate::exec::Progress for Bar {
    fn update(&self, t: &crate::exec::Tally) {
        self.0.set_length(t.total as u64);
        self.0.set_position(t.done as u64);
        let mut msg = format!("({} copying", t.copying);
        if t.failed > 0 {
            msg.push_str(&format!(", {} failed", t.failed));
        }
        msg.push(')');
        self.0.set_message(msg);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// What `verify RUN_ID` prints (with `--format json`) and writes to `--evidence`.
#[derive(Debug, serde::Serialize)]
pub struct VerifyDoc {
    pub run_id: String,
    pub plan: String,
    pub level: crate::verify::Level,
    pub copies: Vec<crate::exec::verify::Evidence>,
}

/// One line per copy: matched, differs (with the first differing block) or could not
/// be verified (with why).
pub fn verify_text(doc: &VerifyDoc) -> String {
    let mut s = String::new();
    for c in &doc.copies {
        let what = match (&c.verify, &c.error) {
            (Some(r), _) if r.matched() => format!("matched at {} ({} blocks compared)", r.level, r.blocks_compared),
            (Some(r), _) => format!(
                "DIFFERS at {}: {}",
                r.level,
                r.first_mismatch.as_ref().map(|m| m.to_string()).unwrap_or_default()
            ),
            (None, Some(e)) => format!("not verified: {e}"),
            (None, None) => "not verified".to_owned(),
        };
        s.push_str(&format!(
            "{} {} -> {} ({}): {what}\n",
            c.source_volume, c.source.snapshot, c.copy.snapshot, c.copy.region
        ));
    }
    let matched = doc.copies.iter().filter(|c| c.matched()).count();
    s.push_str(&format!("{matched} of {} copies of run {} matched\n", doc.copies.len(), doc.run_id));
    s
}
