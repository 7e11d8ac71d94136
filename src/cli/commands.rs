//! One function per command: load what it needs, call the library, render, and say
//! how it ended ([`Done`]) or what stopped it ([`Failure`]); `exit` maps either onto
//! the exit-code table.

use std::path::Path;

use tokio::sync::watch;

use crate::checkpoint::{RunRecord, RunStatus, Store, StoreError};
use crate::cloud::TargetAccess;
use crate::exec::{self, Env, RunConfig};
use crate::ids::RunId;
use crate::plan;

use super::args::{Command, Common, Format, RunArgs, VerifyArgs};
use super::cloud::{Reach, connect, session_name};
use super::exit::Done;
use super::failure::Failure;
use super::plan_file::load_plan;
use super::render::{self, emit};
use super::state::{self, StateReach};

pub async fn dispatch(cli: super::args::Cli) -> Result<Done, Failure> {
    match cli.command {
        Command::Validate { plan, format } => validate(&plan, format),
        Command::Schema => {
            emit(Format::Json, &plan::json_schema(), |_| String::new());
            Ok(Done::Ok)
        }
        Command::Run(args) if args.dry_run => super::dryrun::dry_run(&args).await,
        Command::Run(args) => run(&args).await,
        Command::Status { run_id, common } => status(run_id.as_deref(), &common).await,
        Command::Cleanup { run_id, plan, common } => cleanup(&run_id, plan.as_deref(), &common).await,
        Command::Verify(args) => verify(&args).await,
        Command::Envelope(e) => super::envelope::envelope(e).await,
    }
}

fn validate(path: &Path, format: Format) -> Result<Done, Failure> {
    let plan = load_plan(path, format)?;
    let doc = serde_json::json!({"status": "valid", "plan": plan.name.as_str(), "file": path.display().to_string(),
        "volumes": plan.volumes.len()});
    emit(format, &doc, |_| {
        format!("{}: plan {} is valid ({} volume entries)\n", path.display(), plan.name, plan.volumes.len())
    });
    Ok(Done::Ok)
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

async fn run(args: &RunArgs) -> Result<Done, Failure> {
    let format = args.common.format;
    let plan = load_plan(&args.plan, format)?;
    let run_id = match &args.run_id {
        Some(id) => Some(RunId::parse(id).map_err(|e| Failure::Usage(format!("--run-id {id}: {e}")))?),
        None => None,
    };
    let limit = state::max_duration(args.max_duration.as_deref())?;
    let opened = state::open(
        &args.common,
        StateReach { profile: plan.source.profile.clone(), region: Some(plan.source.region.clone()) },
    )
    .await?;
    let store = opened.store;
    // The plan's lock, taken once for the whole run, before any call to AWS: a second
    // process is refused here. The run releases it as it ends.
    let lock = store.lock_plan(plan.name.as_str()).await?;
    if !args.common.simulate {
        state::warn_credentials(opened.life, limit);
    }
    let session = session_name(run_id.as_ref().map(|r| r.as_str()).unwrap_or(plan.name.as_str()));
    let ready = async {
        let connected = connect(Reach::for_plan(&args.common, &plan, session)).await?;
        let probe_permissions =
            !args.common.simulate && !args.no_permission_probes && super::cloud::endpoint(&args.common)?.is_none();
        Ok::<_, Failure>((connected, probe_permissions))
    };
    let (connected, probe_permissions) = match ready.await {
        Ok(ready) => ready,
        Err(e) => {
            drop(lock);
            state::close(&store).await;
            return Err(e);
        }
    };
    let env = Env { cloud: connected.cloud.clone(), clock: connected.clock.clone(), store: store.clone() };
    let cfg = RunConfig {
        plan: plan.clone(),
        plan_file: args.plan.display().to_string(),
        run_id,
        simulated: args.common.simulate,
        probe_permissions,
        progress: render::progress_bar(format),
    };
    let (stop, shutdown) = shutdown_signal();
    let stopped_at_limit = state::stop_after(limit, stop);
    let result = exec::run_locked(cfg, env, lock, shutdown).await;
    state::close(&store).await;
    connected.save()?;
    let mut report = result?;
    if stopped_at_limit.load(std::sync::atomic::Ordering::SeqCst) && report.status == RunStatus::Interrupted {
        report.stopped_at_limit();
    }
    // The run is over and checkpointed: a metrics file that cannot be written is worth
    // a warning, not a failed run (the next invocation would start a new one).
    if let Some(path) = &args.metrics_file {
        let written = match metrics_of(&store, &plan).await {
            Ok(m) => render::write_metrics(path, &plan, &m).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            tracing::warn!("cannot write metrics file {}: {e}; the run's result stands", path.display());
        }
    }
    emit(format, &report, render::report_text);
    Ok(Done::Run(report.status))
}

/// The metrics of a plan's runs, read one run at a time.
async fn metrics_of(store: &Store, plan: &crate::plan::Plan) -> Result<render::Metrics, StoreError> {
    let mut m = render::Metrics::default();
    for meta in store.list_meta().await?.into_iter().filter(|m| m.plan == plan.name.as_str()) {
        if let Some(r) = store.load_listed(&meta.run_id).await? {
            m.add(plan, &r);
        }
    }
    Ok(m)
}

/// A run's status as `status` shows it: a run checkpointed as running whose plan lock
/// is free has no live process (killed, or its machine lost), so it shows as
/// interrupted, which is what it is: resumable by running the plan again. A state in
/// S3 is only read: its lease says by itself when a holder died.
async fn observed(store: &Store, mut r: RunRecord) -> RunRecord {
    if r.meta.status == RunStatus::Running
        && !store.location().starts_with("s3://")
        && store.lock_plan(&r.meta.plan).await.is_ok()
    {
        r.meta.status = RunStatus::Interrupted;
    }
    r
}

/// For a run the state does not have: when its id is of a plan whose history removed
/// runs, it is most likely one of those, and the message says so.
async fn removed_hint(store: &Store, run_id: &str) -> String {
    let removed_from = store
        .removed_counts()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|(p, n)| *n > 0 && run_id.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('-')));
    match removed_from {
        Some((p, _)) => {
            format!(" (plan {p} keeps only its newest finished runs there, options.history, and removed older ones)")
        }
        None => String::new(),
    }
}

/// The state has no run `run_id`: where it looked, why (a run its plan's history
/// removed), and `then`, what to do.
async fn no_such_run(store: &Store, run_id: &str, then: &str) -> Failure {
    let why = removed_hint(store, run_id).await;
    Failure::NoSuchRun(format!("no run {run_id} in {}{why}; {then}", store.location()))
}

async fn status(run_id: Option<&str>, common: &Common) -> Result<Done, Failure> {
    let store = state::open(common, StateReach::default()).await?.store;
    match run_id {
        Some(id) => {
            let r = match store.load(id).await {
                Ok(r) => r,
                Err(StoreError::NoSuchRun(_)) => {
                    return Err(no_such_run(&store, id, "`snapferry status` lists the runs").await);
                }
                Err(e) => return Err(e.into()),
            };
            let r = observed(&store, r).await;
            emit(common.format, &render::run_status_json(&r), |_| render::run_status_text(&r));
        }
        None => {
            // One run at a time: a recurring plan leaves a run per round.
            let mut runs = render::Runs::default();
            runs.removed = store.removed_counts().await?;
            for meta in store.list_meta().await? {
                if let Some(r) = store.load_listed(&meta.run_id).await? {
                    runs.add(&observed(&store, r).await);
                }
            }
            emit(common.format, &render::runs_json(&runs), |_| render::runs_text(&runs));
        }
    }
    Ok(Done::Ok)
}

async fn cleanup(run_id: &str, plan_path: Option<&Path>, common: &Common) -> Result<Done, Failure> {
    let plan = match plan_path {
        Some(p) => Some(load_plan(p, common.format)?),
        None => None,
    };
    let reach = StateReach {
        profile: plan.as_ref().and_then(|p| p.source.profile.clone()),
        region: plan.as_ref().map(|p| p.source.region.clone()),
    };
    let store = state::open(common, reach).await?.store;
    // The plan's lock before the run is read: the record is the one the lock keeps.
    let exec::cleanup::Held { lock, record, plan: plan_name } =
        match exec::cleanup::lock_and_read(&store, run_id, plan.as_ref().map(|p| &p.name)).await {
            Ok(held) => held,
            Err(StoreError::NoSuchRun(_)) => {
                return Err(no_such_run(
                    &store,
                    run_id,
                    &format!(
                        "to clean it up from its tags in AWS, name its plan: snapferry cleanup --plan PLAN {run_id}"
                    ),
                )
                .await);
            }
            Err(e) => return Err(e.into()),
        };
    let source_region = record
        .as_ref()
        .map(|r| r.meta.source_region.clone())
        .or_else(|| plan.as_ref().map(|p| p.source.region.clone()))
        .ok_or_else(|| Failure::Usage(format!("run {run_id}: no plan names its source region")))?;
    // The target roles stop copies still pending: the ones the run used, else the plan's.
    let targets: Vec<TargetAccess> = match (&record, &plan) {
        (Some(r), _) => r
            .meta
            .targets()
            .iter()
            .map(|t| TargetAccess { role: t.role_arn.clone(), external_id: t.external_id.clone() })
            .collect(),
        (None, Some(p)) => p
            .targets
            .iter()
            .map(|t| TargetAccess { role: t.role_arn.clone(), external_id: t.external_id.clone() })
            .collect(),
        (None, None) => vec![],
    };
    let connected = connect(Reach {
        common,
        plan_name: &plan_name,
        source_region,
        source_profile: plan.as_ref().and_then(|p| p.source.profile.clone()),
        targets,
        session_name: session_name(run_id),
        seed: None,
    })
    .await?;
    let (cloud, clock) = (connected.cloud.as_ref(), connected.clock.as_ref());
    let result = exec::cleanup_loaded(&store, cloud, clock, run_id, record, plan.as_ref()).await;
    drop(lock);
    state::close(&store).await;
    connected.save()?;
    let summary = result?;
    emit(common.format, &summary, render::cleanup_text);
    Ok(Done::CleanedUp { complete: summary.errors.is_empty() })
}

/// `verify RUN_ID`: every completed copy of a finished run whose source snapshot still
/// exists, compared block by block; each copy tagged with the result.
async fn verify(args: &VerifyArgs) -> Result<Done, Failure> {
    let common = &args.common;
    let store = state::open(common, StateReach::default()).await?.store;
    let record = match store.load(&args.run_id).await {
        Ok(r) => r,
        Err(StoreError::NoSuchRun(_)) => {
            return Err(no_such_run(&store, &args.run_id, "`snapferry status` lists the runs").await);
        }
        Err(e) => return Err(e.into()),
    };
    if record.meta.status == RunStatus::Running {
        let lock = store.lock_plan(&record.meta.plan).await?;
        drop(lock);
    }
    let source_region = record.meta.source_region.clone();
    let targets: Vec<TargetAccess> = record
        .meta
        .targets()
        .iter()
        .map(|t| TargetAccess { role: t.role_arn.clone(), external_id: t.external_id.clone() })
        .collect();
    let connected = connect(Reach {
        common,
        plan_name: &record.meta.plan,
        source_region,
        source_profile: None,
        targets,
        session_name: session_name(&args.run_id),
        seed: None,
    })
    .await?;
    let mut seed = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut seed);
    let level = args.level.level();
    let copies = exec::verify::verify_run(
        connected.cloud.as_ref(),
        &record,
        level,
        args.sample,
        u64::from_be_bytes(seed),
        !connected.clock.is_virtual(),
    )
    .await;
    state::close(&store).await;
    connected.save()?;
    if copies.is_empty() {
        return Err(Failure::NothingToVerify(format!(
            "run {} has no completed copy to verify; `snapferry status {}` shows its volumes",
            args.run_id, args.run_id
        )));
    }
    let doc = render::VerifyDoc { run_id: args.run_id.clone(), plan: record.meta.plan.clone(), level, copies };
    if let Some(path) = &args.evidence {
        let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        std::fs::write(path, text).map_err(|e| {
            Failure::File(format!(
                "cannot write the evidence file {}: {e}; check the directory exists and is writable",
                path.display()
            ))
        })?;
    }
    emit(common.format, &doc, render::verify_text);
    Ok(Done::Verified { all_matched: doc.copies.iter().all(|c| c.matched()) })
}
