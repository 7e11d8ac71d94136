//! Chooses and builds the cloud a command talks to: the simulated AWS (its world
//! kept in the state dir between invocations) or AWS through the SDK adapter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::{Clock, WallClock};
use crate::cloud::aws::{AwsCloud, AwsConfig, check_endpoint};
use crate::cloud::sim::{SimCloud, SimSides, World, seed_from_plan};
use crate::cloud::{Cloud, TargetAccess};
use crate::ids::{AccountId, Region};
use crate::plan::Plan;

use super::args::Common;
use super::failure::Failure;

/// A cloud and the clock that goes with it.
pub struct Connected {
    pub cloud: Arc<dyn Cloud>,
    pub clock: Arc<dyn Clock>,
    /// Set under `--simulate`: where to save the world when the command ends.
    pub sim: Option<(SimCloud, PathBuf)>,
}

impl Connected {
    /// Saves the simulated world, so the next `--simulate` invocation (a resume, a
    /// cleanup, a status) sees what this one made.
    pub fn save(&self) -> Result<(), Failure> {
        if let Some((sim, path)) = &self.sim {
            if let Some(dir) = path.parent() {
                crate::private_fs::create_dir_all(dir)
                    .map_err(|e| Failure::File(format!("cannot create {}: {e}", dir.display())))?;
            }
            sim.with_world(|w| crate::checkpoint::write_atomic(path, w)).map_err(|e| Failure::File(e.to_string()))?;
        }
        Ok(())
    }
}

/// Where the simulated world of a plan lives in the state dir.
pub fn sim_world_path(state_dir: &Path, plan: &str) -> PathBuf {
    state_dir.join("simulated-aws").join(format!("{plan}.json"))
}

/// The endpoint to use, from `--endpoint-url` or AWS_ENDPOINT_URL, after the
/// loopback rule: plain http only to this machine.
pub fn endpoint(common: &Common) -> Result<Option<String>, Failure> {
    let url = common.endpoint_url.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()).filter(|u| !u.is_empty());
    if let Some(u) = &url {
        check_endpoint(u).map_err(Failure::Usage)?;
    }
    Ok(url)
}

/// What a command needs to know to reach AWS.
pub struct Reach<'a> {
    pub common: &'a Common,
    /// The plan's name, for the simulated world's file.
    pub plan_name: &'a str,
    pub source_region: Region,
    pub source_profile: Option<String>,
    /// How each target is reached, in the plan's order.
    pub targets: Vec<TargetAccess>,
    pub session_name: String,
    /// Under `--simulate`, the plan to seed a new world from.
    pub seed: Option<&'a Plan>,
}

impl<'a> Reach<'a> {
    /// Everything a plan says about reaching its two accounts.
    pub fn for_plan(common: &'a Common, plan: &'a Plan, session_name: String) -> Self {
        Reach {
            common,
            plan_name: plan.name.as_str(),
            source_region: plan.source.region.clone(),
            source_profile: plan.source.profile.clone(),
            targets: plan
                .targets
                .iter()
                .map(|t| TargetAccess { role: t.role_arn.clone(), external_id: t.external_id.clone() })
                .collect(),
            session_name,
            seed: Some(plan),
        }
    }
}

/// Connects to the simulated AWS or to AWS.
pub async fn connect(reach: Reach<'_>) -> Result<Connected, Failure> {
    if reach.common.simulate {
        // With the state in S3 the simulated world stays on this machine.
        let remote_state = reach.common.state_dir.to_str().is_some_and(|d| d.starts_with("s3://"));
        let base = if remote_state { Path::new(".snapferry") } else { &reach.common.state_dir };
        let path = sim_world_path(base, reach.plan_name);
        let sides = SimSides {
            source_account: reach
                .seed
                .and_then(|p| p.source.account.clone())
                .unwrap_or_else(|| AccountId::parse(crate::cloud::sim::DEFAULT_SOURCE_ACCOUNT).expect("valid")),
            targets: reach.targets.clone(),
        };
        // Read as a stream: a large world is never held twice, as text and as parsed.
        let world = match std::fs::File::open(&path) {
            Ok(file) => serde_json::from_reader::<_, World>(std::io::BufReader::new(file)).map_err(|e| {
                Failure::File(format!("simulated world {} is damaged ({e}); delete it to start afresh", path.display()))
            })?,
            Err(_) => match reach.seed {
                Some(plan) => seed_from_plan(plan, WallClock.now_ms()).0,
                None => World::new(WallClock.now_ms()),
            },
        };
        let sim = SimCloud::new(world, sides);
        return Ok(Connected { cloud: Arc::new(sim.clone()), clock: Arc::new(sim.clone()), sim: Some((sim, path)) });
    }
    let endpoint_url = endpoint(reach.common)?;
    let cfg = AwsConfig {
        source_region: reach.source_region,
        source_profile: reach.source_profile,
        endpoint_url,
        targets: reach.targets,
        session_name: reach.session_name,
    };
    // `connect` sends nothing; what it refuses (a clear-text endpoint from any of the
    // endpoint variables, a bad session name) is a usage error.
    let aws = AwsCloud::connect(cfg)
        .await
        .map_err(|source| Failure::Setup { what: "cannot set up AWS clients".to_owned(), source })?;
    Ok(Connected { cloud: Arc::new(aws), clock: Arc::new(WallClock), sim: None })
}

/// A session name for the assumed role: names the run, fits STS's 64 characters.
pub fn session_name(run: &str) -> String {
    let mut s: String = format!("snapferry-{run}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .collect();
    s.truncate(64);
    s
}
