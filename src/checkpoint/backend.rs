//! What a state store is: the [`StateStore`] trait the local directory and the object
//! store implement, and [`PlanLock`], the hold on one plan either gives.

use std::fmt;

use async_trait::async_trait;

use super::error::StoreError;
use super::journal::Journal;
use super::{PlanIndex, RunMeta, RunRecord};

/// What a state store does; the runner, `status` and `cleanup` only use this.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Where the state lives, for messages: a directory or `s3://BUCKET/PREFIX`.
    fn location(&self) -> String;
    /// Takes the plan's lock without waiting; [`StoreError::is_lock_conflict`] when
    /// another snapferry holds it.
    async fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError>;
    /// Reads a run: the checkpoint with its journal replayed.
    async fn load(&self, run_id: &str) -> Result<RunRecord, StoreError>;
    /// Every run, oldest first by creation time.
    async fn list(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// Reads a run listed a moment ago: `None` when it is gone since (another
    /// process's cleanup), which a listing passes over.
    async fn load_listed(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        match self.load(run_id).await {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NoSuchRun(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Every run's meta, in the order of [`StateStore::list`]; a store that can read a
    /// run's meta without its volumes does so.
    async fn list_meta(&self) -> Result<Vec<RunMeta>, StoreError> {
        Ok(self.list().await?.into_iter().map(|r| r.meta).collect())
    }
    /// Opens a run for appending: creates it if it is new, else folds its journal into
    /// a fresh checkpoint of `record`.
    async fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError>;
    /// Removes a run from the state, every file or object of it. A removal cut short
    /// leaves a run that no longer loads (it is passed over), never an older state of it.
    async fn remove(&self, run_id: &str) -> Result<(), StoreError>;
    /// Every plan's index, by plan name.
    async fn plan_indexes(&self) -> Result<Vec<PlanIndex>, StoreError>;
    /// Adds `runs` to the count of runs removed from `plan`; returns the new count.
    async fn count_removed(&self, plan: &str, runs: u64) -> Result<u64, StoreError>;
    /// Waits (bounded) for background work of the store to end, such as the release
    /// of a lock just dropped. Call before the process exits.
    async fn close(&self) {}
    /// Request and byte counts of the store's backend, when it counts them.
    fn stats(&self) -> Option<crate::cloud::object::ObjectStats> {
        None
    }
}

/// An exclusive hold on one plan; released when dropped. A local lock is released by
/// the kernel when the process dies; a lease in S3 ends at most one lease duration
/// after its holder stopped renewing it.
pub struct PlanLock {
    _guard: Box<dyn Send + Sync>,
}

impl PlanLock {
    pub(crate) fn new(guard: impl Send + Sync + 'static) -> Self {
        PlanLock { _guard: Box::new(guard) }
    }
}

impl fmt::Debug for PlanLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlanLock")
    }
}
