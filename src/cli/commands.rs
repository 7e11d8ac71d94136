//! One function per command: load what it needs, call the library, render, and map
//! the result onto the exit-code table.

use std::path::Path;

use tokio::sync::watch;

use crate::checkpoint::{RunRecord, Store, StoreError};
use crate::exec::{self, Env, RunConfig, RunError};
use crate::ids::RunId;
use crate::plan::{self, LoadError, Plan};

use super::args::{Command, Common, Format, RunArgs};
use super::cloud::{Reach, connect, session_name};
use super::{Failure, exit, render};

pub async fn dispatch(cli: super::Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Validate { plan, format } => validate(&plan, format),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&plan::json_schema()).unwrap_or_default());
            Ok(exit::OK)
        }
        Command::Run(args) if args.dry_run => super::dryrun::dry_run(&args).await,
        Command::Run(args) => run(&args).await,
        Command::Status { run_id, common } => status(run_id.as_deref(), &common),
        Command::Cleanup { run_id, plan, common } => cleanup(&run_id, plan.as_deref(), &common).await,
        Command::Envelope(e) => super::envelope::envelope(e).await,
    }
}

/// Loads a plan or fails with exit 2 and every problem, each with file:line:column.
pub fn load_plan(path: &Path, format: Format) -> Result<Plan, Failure> {
    plan::load(path).map_err(|e| match e {
        LoadError::Invalid(invalid) => {
            let json = serde_json::json!({
                "status": "invalid",
                "exit_code": exit::USAGE,
                "file": invalid.file,
                "errors": invalid.issues.iter().map(|i| serde_json::json!({
                    "line": i.line, "column": i.column, "field": i.field, "message": i.message,
                })).collect::<Vec<_>>(),
            });
            if format == Format::Text {
                eprintln!("{:?}", invalid.clone().into_report());
            }
            Failure {
                code: exit::USAGE,
                message: format!("{} is not a valid plan:\n{invalid}", path.display()),
                json: Some(json),
            }
        }
        other => Failure::new(exit::USAGE, other.to_string()),
    })
}

fn validate(path: &Path, format: Format) -> Result<u8, Failure> {
    let plan = load_plan(path, format)?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({"status": "valid", "plan": plan.name.as_str(), "file": path.display().to_string(),
                "volumes": plan.volumes.len()})
        ),
        Format::Text => {
            println!("{}: plan {} is valid ({} volume entries)", path.display(), plan.name, plan.volumes.len())
        }
    }
    Ok(exit::OK)
}

/// Turns SIGINT and SIGTERM into a shutdown request for the runner.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    let _ = tx.send(true);
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::warn!("interrupted: finishing the calls under way and saving the checkpoint");
        let _ = tx.send(true);
    });
    rx
}

async fn run(args: &RunArgs) -> Result<u8, Failure> {
    let format = args.common.format;
    let plan = load_plan(&args.plan, format)?;
    let run_id = match &args.run_id {
        Some(id) => Some(RunId::parse(id).map_err(|e| Failure::new(exit::USAGE, format!("--run-id {id}: {e}")))?),
        None => None,
    };
    let store = Store::new(&args.common.state_dir);
    // Fail fast on a held lock, before any call to AWS.
    drop(store.lock_plan(plan.name.as_str()).map_err(|e| store_failure(&e))?);

    let session = session_name(run_id.as_ref().map(|r| r.as_str()).unwrap_or(plan.name.as_str()));
    let connected = connect(Reach::for_plan(&args.common, &plan, session)).await?;
    let env = Env { cloud: connected.cloud.clone(), clock: connected.clock.clone(), store: store.clone() };
    let cfg = RunConfig {
        plan: plan.clone(),
        plan_file: args.plan.display().to_string(),
        run_id,
        simulated: args.common.simulate,
        probe_permissions: !args.common.simulate
            && !args.no_permission_probes
            && super::cloud::endpoint(&args.common)?.is_none(),
        progress: render::progress_bar(format),
    };
    let result = exec::run(cfg, env, shutdown_signal()).await;
    connected.save()?;
    let report = match result {
        Ok(r) => r,
        Err(e) => return Err(run_failure(&e)),
    };
    if let Some(path) = &args.metrics_file {
        let runs = store.list().map_err(|e| store_failure(&e))?;
        render::write_metrics(path, &plan, &runs)
            .map_err(|e| Failure::new(exit::FAILED, format!("cannot write metrics file {}: {e}", path.display())))?;
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Format::Text => print!("{}", render::report_text(&report)),
    }
    Ok(match report.status.as_str() {
        "succeeded" => exit::OK,
        "interrupted" => exit::INTERRUPTED,
        _ => exit::FAILED,
    })
}

fn store_failure(e: &StoreError) -> Failure {
    let code = if matches!(e, StoreError::Locked { .. }) { exit::LOCKED } else { exit::FAILED };
    Failure::new(code, e.to_string())
}

fn run_failure(e: &RunError) -> Failure {
    let code = e.exit_code() as u8;
    let mut doc = serde_json::json!({"status": "error", "exit_code": code, "error": e.to_string()});
    if let RunError::Preflight(problems) = e {
        doc["problems"] = problems
            .iter()
            .map(|p| serde_json::json!({"resource": p.resource, "message": p.message}))
            .collect::<Vec<_>>()
            .into();
    }
    Failure { code, message: e.to_string(), json: Some(doc) }
}

fn status(run_id: Option<&str>, common: &Common) -> Result<u8, Failure> {
    let store = Store::new(&common.state_dir);
    match run_id {
        Some(id) => {
            let r = store.load(id).map_err(|e| match e {
                StoreError::NoSuchRun(_) => Failure::new(
                    exit::USAGE,
                    format!("no run {id} in {}; `snapferry status` lists the runs", common.state_dir.display()),
                ),
                e => store_failure(&e),
            })?;
            match common.format {
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&render::run_status_json(&r)).unwrap_or_default())
                }
                Format::Text => print!("{}", render::run_status_text(&r)),
            }
        }
        None => {
            let runs: Vec<RunRecord> = store.list().map_err(|e| store_failure(&e))?;
            match common.format {
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&render::runs_json(&runs)).unwrap_or_default())
                }
                Format::Text => print!("{}", render::runs_text(&runs)),
            }
        }
    }
    Ok(exit::OK)
}

async fn cleanup(run_id: &str, plan_path: Option<&Path>, common: &Common) -> Result<u8, Failure> {
    let store = Store::new(&common.state_dir);
    let plan = match plan_path {
        Some(p) => Some(load_plan(p, common.format)?),
        None => None,
    };
    // The state's record of the run, or (with --plan) nothing: the run is then
    // found by its tags.
    let record = match store.load(run_id) {
        Ok(r) => Some(r),
        Err(StoreError::NoSuchRun(_)) if plan.is_some() => None,
        Err(StoreError::NoSuchRun(_)) => {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "no run {run_id} in {}; to clean it up from its tags in AWS, name its plan: snapferry cleanup --plan PLAN {run_id}",
                    common.state_dir.display()
                ),
            ));
        }
        Err(e) => return Err(store_failure(&e)),
    };
    let plan_name = record.as_ref().map(|r| r.meta.plan.clone()).or_else(|| plan.as_ref().map(|p| p.name.to_string()));
    let plan_name = plan_name.unwrap_or_default();
    let _lock = store.lock_plan(&plan_name).map_err(|e| store_failure(&e))?;
    let region_text = record
        .as_ref()
        .map(|r| r.meta.source_region.clone())
        .or_else(|| plan.as_ref().map(|p| p.source.region.to_string()))
        .unwrap_or_default();
    let source_region = crate::ids::Region::parse(&region_text)
        .map_err(|e| Failure::new(exit::FAILED, format!("checkpoint of {run_id}: source region: {e}")))?;
    // The target role stops copies still pending: the plan's, else the one the run used.
    let target_role = plan.as_ref().and_then(|p| p.target.role_arn.clone()).or_else(|| {
        record.as_ref().and_then(|r| r.meta.target_role_arn.as_deref()).and_then(|a| crate::ids::RoleArn::parse(a).ok())
    });
    let connected = connect(Reach {
        common,
        plan_name: &plan_name,
        source_region,
        source_profile: plan.as_ref().and_then(|p| p.source.profile.clone()),
        target_role,
        external_id: plan.as_ref().and_then(|p| p.target.external_id.clone()),
        session_name: session_name(run_id),
        seed: None,
    })
    .await?;
    let result = exec::cleanup(&store, connected.cloud.as_ref(), connected.clock.as_ref(), run_id, plan.as_ref()).await;
    connected.save()?;
    let summary = result.map_err(|e| run_failure(&e))?;
    match common.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default()),
        Format::Text => print!("{}", render::cleanup_text(&summary)),
    }
    Ok(if summary.errors.is_empty() { exit::OK } else { exit::FAILED })
}
