//! `options.history`: the state keeps every unfinished run of a plan, every run whose
//! chains a kept run still carries on, and the newest `history` finished runs; older
//! runs are removed at the end of an invocation, so a recurring plan's state stays
//! the size of a few rounds however many rounds it has run.
//!
//! A removed run's resources are untouched: `cleanup --plan PLAN RUN_ID` finds them by
//! their tags, as for a lost state.

use std::collections::{BTreeSet, HashMap};

use crate::checkpoint::{RunMeta, RunStatus, Store, StoreError};

/// A run the plan may still need from the state: it did not end, or (without
/// `every`) it failed and the next invocation resumes it whole. A recurring plan
/// carries on only its newest run: an older one that did not end was superseded by a
/// round that carries its unfinished chains on, which keeps it (`carries`) as long as
/// they are.
fn unfinished(m: &RunMeta, newest: bool) -> bool {
    if m.cleaned_up {
        return false;
    }
    match m.status {
        RunStatus::Running | RunStatus::Interrupted | RunStatus::Stopped => m.every_ms.is_none() || newest,
        RunStatus::Failed => m.every_ms.is_none(),
        RunStatus::Succeeded => false,
    }
}

/// The runs of one plan to remove, oldest first. Pure. `runs` are the plan's runs,
/// oldest first; `carries` the runs each one's chains carry on; `current` the run
/// this invocation used, which is never removed.
fn removable(runs: &[RunMeta], carries: &HashMap<String, Vec<String>>, history: u32, current: &str) -> Vec<String> {
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    kept.insert(current);
    let mut finished = 0u32;
    for (i, m) in runs.iter().rev().enumerate() {
        if unfinished(m, i == 0) {
            kept.insert(&m.run_id);
        } else if finished < history {
            finished += 1;
            kept.insert(&m.run_id);
        }
    }
    // What a kept run carries is kept, and what that carries, and so on.
    let mut todo: Vec<&str> = kept.iter().copied().collect();
    while let Some(id) = todo.pop() {
        for c in carries.get(id).into_iter().flatten() {
            if kept.insert(c) {
                todo.push(c);
            }
        }
    }
    runs.iter().filter(|m| !kept.contains(m.run_id.as_str())).map(|m| m.run_id.clone()).collect()
}

/// Removes the plan's runs beyond its history; returns how many were removed. A run
/// gone meanwhile counts as removed by whoever removed it.
pub async fn prune(store: &Store, plan: &str, history: u32, current: &str) -> Result<u64, StoreError> {
    let runs: Vec<RunMeta> = store.list_meta().await?.into_iter().filter(|m| m.plan == plan).collect();
    if runs.len() <= history as usize {
        return Ok(0);
    }
    let mut carries = HashMap::new();
    for m in &runs {
        let c = match &m.carries {
            Some(c) => c.clone(),
            // Written before runs recorded it: their volumes say.
            None => match store.load_listed(&m.run_id).await? {
                Some(r) => r.carried_runs(),
                None => continue,
            },
        };
        carries.insert(m.run_id.clone(), c);
    }
    let gone = removable(&runs, &carries, history, current);
    if gone.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    let mut result = Ok(());
    for id in &gone {
        match store.remove(id).await {
            Ok(()) => removed += 1,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if removed > 0 {
        let total = store.count_removed(plan, removed).await?;
        tracing::info!(
            plan,
            removed,
            total,
            "removed the plan's oldest finished runs from the state (options.history)"
        );
    }
    result.map(|()| removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TargetMeta;
    use crate::ids::Region;

    fn meta(id: &str, status: RunStatus, every: bool) -> RunMeta {
        let target = TargetMeta {
            account: None,
            region: Region::parse("eu-west-1").unwrap(),
            key_arn: None,
            cross_account: false,
            role_arn: None,
            external_id: None,
            lock: None,
        };
        let mut meta = RunMeta::new(id.into(), "p".into(), Region::parse("us-east-1").unwrap(), vec![target], 0);
        meta.plan_file = "p.yaml".into();
        meta.status = status;
        meta.every_ms = every.then_some(86_400_000);
        meta.simulated = true;
        meta.carries = Some(vec![]);
        meta
    }

    #[test]
    fn keeps_the_newest_finished_the_unfinished_the_carried_and_the_current() {
        use RunStatus::*;
        let runs = vec![
            meta("r0", Succeeded, true),
            meta("r1", Failed, true),
            meta("r2", Interrupted, false),
            meta("r3", Succeeded, true),
            meta("r4", Succeeded, true),
            meta("r5", Succeeded, true),
            meta("r6", Succeeded, true),
        ];
        // r6 carries a chain of r3, which carries one of r1.
        let carries: HashMap<String, Vec<String>> =
            [("r6".to_owned(), vec!["r3".to_owned()]), ("r3".to_owned(), vec!["r1".to_owned()])].into();
        assert_eq!(removable(&runs, &carries, 2, "r6"), ["r0", "r4"]);
        // The current run stays even when older than the history.
        assert_eq!(removable(&runs, &HashMap::new(), 1, "r0"), ["r1", "r3", "r4", "r5"]);
    }

    #[test]
    fn an_interrupted_round_superseded_by_a_later_one_stays_only_while_carried() {
        use RunStatus::*;
        let runs = vec![meta("r0", Interrupted, true), meta("r1", Succeeded, true), meta("r2", Interrupted, true)];
        // r1 carries r0's unfinished chains on; r2, the newest, did not end.
        let carries: HashMap<String, Vec<String>> = [("r1".to_owned(), vec!["r0".to_owned()])].into();
        assert!(removable(&runs, &carries, 1, "r2").is_empty());
        assert_eq!(removable(&runs, &HashMap::new(), 1, "r2"), ["r0"]);
        // Without every, a run that did not end is resumed whole: it stays.
        let once = vec![meta("a", Interrupted, false), meta("b", Succeeded, false)];
        assert!(removable(&once, &HashMap::new(), 1, "b").is_empty());
    }

    #[test]
    fn a_failed_run_of_a_plan_without_every_is_unfinished() {
        let runs = vec![meta("a", RunStatus::Failed, false), meta("b", RunStatus::Succeeded, false)];
        assert!(removable(&runs, &HashMap::new(), 1, "b").is_empty());
        let mut cleaned = meta("a", RunStatus::Failed, false);
        cleaned.cleaned_up = true;
        assert_eq!(removable(&[cleaned, meta("b", RunStatus::Succeeded, false)], &HashMap::new(), 1, "b"), ["a"]);
    }
}
