//! [`Store`]: the handle on the state of runs the runner, `status` and `cleanup` use,
//! over a local directory or a bucket (the runner cannot tell them apart).

use std::path::PathBuf;
use std::sync::Arc;

use super::backend::{PlanLock, StateStore};
use super::error::StoreError;
use super::journal::Journal;
use super::local::LocalStore;
use super::remote::{LeaseOptions, RemoteStore};
use super::{RunMeta, RunRecord};

/// A state store: a local directory or an object store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store(Arc<dyn StateStore>);

impl Store {
    /// The local state dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store(Arc::new(LocalStore::new(root)))
    }

    /// Any store.
    pub fn from_backend(backend: Arc<dyn StateStore>) -> Self {
        Store(backend)
    }

    /// The state in an object store (S3, or the in-memory one of tests).
    pub fn remote(objects: Arc<dyn crate::cloud::object::ObjectStore>, lease: LeaseOptions) -> Self {
        Store(Arc::new(RemoteStore::new(objects, lease)))
    }

    pub fn location(&self) -> String {
        self.0.location()
    }

    pub async fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError> {
        self.0.lock_plan(plan).await
    }

    pub async fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        self.0.load(run_id).await
    }

    pub async fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.0.list().await
    }

    pub async fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        self.0.create_or_reopen(record).await
    }

    /// Opens a run that exists (a loaded one) for appending.
    pub async fn reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        self.0.create_or_reopen(record).await
    }

    /// Every run's meta, oldest first, without reading the runs' volumes where the
    /// store can.
    pub async fn list_meta(&self) -> Result<Vec<RunMeta>, StoreError> {
        self.0.list_meta().await
    }

    /// Reads a run listed a moment ago; `None` when it is gone since.
    pub async fn load_listed(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.0.load_listed(run_id).await
    }

    /// The plan's newest run, whole. Only that one is read whole: a recurring plan
    /// leaves a run per round behind, and a fleet's run is large.
    pub async fn latest_of_plan(&self, plan: &str) -> Result<Option<RunRecord>, StoreError> {
        let Some(meta) = self.0.list_meta().await?.into_iter().rfind(|m| m.plan == plan) else {
            return Ok(None);
        };
        match self.0.load_listed(&meta.run_id).await? {
            Some(r) => Ok(Some(r)),
            // Gone since the listing: the newest that is left.
            None => Ok(self.0.list().await?.into_iter().rfind(|r| r.meta.plan == plan)),
        }
    }

    pub async fn close(&self) {
        self.0.close().await
    }

    /// Removes a run from the state.
    pub async fn remove(&self, run_id: &str) -> Result<(), StoreError> {
        self.0.remove(run_id).await
    }

    /// Per plan, how many runs were removed from the state.
    pub async fn removed_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        Ok(self.0.plan_indexes().await?.into_iter().map(|i| (i.plan, i.removed)).collect())
    }

    /// Adds `runs` to the count of runs removed from `plan`.
    pub async fn count_removed(&self, plan: &str, runs: u64) -> Result<u64, StoreError> {
        self.0.count_removed(plan, runs).await
    }

    pub fn stats(&self) -> Option<crate::cloud::object::ObjectStats> {
        self.0.stats()
    }
}
