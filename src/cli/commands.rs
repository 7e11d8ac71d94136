//! One function per command: load what it needs, call the library, render, and map
//! the result onto the exit-code table.

use std::path::Path;

use tokio::sync::watch;

use crate::checkpoint::{RunRecord, StoreError};
use crate::exec::{self, Env, RunConfig, RunError};
use crate::ids::RunId;
use crate::plan::{self, LoadError, Plan};

use super::args::{Command, Common, Format, RunArgs};
use super::cloud::{Reach, connect, session_name};
use super::state::{self, StateReach};
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
        Command::Status { run_id, common } => status(run_id.as_deref(), &common).await,
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
fn shutdown_signal() -> (std::sync::Arc<watch::Sender<bool>>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let tx = std::sync::Arc::new(tx);
    let sender = tx.clone();
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
    (sender, rx)
}

async fn run(args: &RunArgs) -> Result<u8, Failure> {
    let format = args.common.format;
    let plan = load_plan(&args.plan, format)?;
    let run_id = match &args.run_id {
        Some(id) => Some(RunId::parse(id).map_err(|e| Failure::new(exit::USAGE, format!("--run-id {id}: {e}")))?),
        None => None,
    };
    let limit = state::max_duration(args.max_duration.as_deref())?;
    let opened = state::open(
        &args.common,
        StateReach { profile: plan.source.profile.clone(), region: Some(plan.source.region.clone()) },
    )
    .await?;
    let store = opened.store;
    // Fail fast on a held lock, before any call to AWS.
    drop(store.lock_plan(plan.name.as_str()).await.map_err(|e| store_failure(&e))?);
    if !args.common.simulate {
        state::warn_credentials(opened.life, limit);
    }

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
    let (stop, shutdown) = shutdown_signal();
    let stopped_at_limit = state::stop_after(limit, stop);
    let result = exec::run(cfg, env, shutdown).await;
    state::close(&store).await;
    connected.save()?;
    let mut report = match result {
        Ok(r) => r,
        Err(e) => return Err(run_failure(&e)),
    };
    let stopped = stopped_at_limit.load(std::sync::atomic::Ordering::SeqCst) && report.status == "interrupted";
    if stopped {
        report.stopped_at_limit();
    }
    if let Some(path) = &args.metrics_file {
        let runs = store.list().await.map_err(|e| store_failure(&e))?;
        render::write_metrics(path, &plan, &runs)
            .map_err(|e| Failure::new(exit::FAILED, format!("cannot write metrics file {}: {e}", path.display())))?;
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Format::Text => print!("{}", render::report_text(&report)),
    }
    Ok(match report.status.as_str() {
        "succeeded" => exit::OK,
        "stopped" => exit::STOPPED,
        "interrupted" => exit::INTERRUPTED,
        _ => exit::FAILED,
    })
}

fn store_failure(e: &StoreError) -> Failure {
    let code = if e.is_lock_conflict() { exit::LOCKED } else { exit::FAILED };
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

async fn status(run_id: Option<&str>, common: &Common) -> Result<u8, Failure> {
    let store = state::open(common, StateReach::default()).await?.store;
    match run_id {
        Some(id) => {
            let r = store.load(id).await.map_err(|e| match e {
                StoreError::NoSuchRun(_) => Failure::new(
                    exit::USAGE,
                    format!("no run {id} in {}; `snapferry status` lists the runs", store.location()),
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
            let runs: Vec<RunRecord> = store.list().await.map_err(|e| store_failure(&e))?;
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
    let plan = match plan_path {
        Some(p) => Some(load_plan(p, common.format)?),
        None => None,
    };
    let reach = StateReach {
        profile: plan.as_ref().and_then(|p| p.source.profile.clone()),
        region: plan.as_ref().map(|p| p.source.region.clone()),
    };
    let store = state::open(common, reach).await?.store;
    let record = store.load(run_id).await.map_err(|e| match e {
        StoreError::NoSuchRun(_) => Failure::new(exit::USAGE, format!("no run {run_id} in {}", store.location())),
        e => store_failure(&e),
    })?;
    let lock = store.lock_plan(&record.meta.plan).await.map_err(|e| store_failure(&e))?;
    let source_region = crate::ids::Region::parse(&record.meta.source_region)
        .map_err(|e| Failure::new(exit::FAILED, format!("checkpoint of {run_id}: source region: {e}")))?;
    let connected = connect(Reach {
        common,
        plan_name: &record.meta.plan,
        source_region,
        source_profile: plan.as_ref().and_then(|p| p.source.profile.clone()),
        target_role: None,
        external_id: None,
        session_name: session_name(run_id),
        seed: None,
    })
    .await?;
    let result = exec::cleanup(&store, connected.cloud.as_ref(), connected.clock.as_ref(), run_id).await;
    drop(lock);
    state::close(&store).await;
    connected.save()?;
    let summary = result.map_err(|e| run_failure(&e))?;
    match common.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default()),
        Format::Text => print!("{}", render::cleanup_text(&summary)),
    }
    Ok(if summary.errors.is_empty() { exit::OK } else { exit::FAILED })
}
