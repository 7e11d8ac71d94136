//! An in-memory [`ObjectStore`] with S3's conditional semantics (create only if
//! absent, replace or delete only the version read), counting requests and bytes.
//! The simulated runs and the tests run the S3-backed state store over it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::cloud::CloudResult;
use crate::cloud::object::{Condition, Counters, Object, ObjectStats, ObjectStore, precondition_failed};

#[derive(Debug, Default)]
struct Objects {
    map: BTreeMap<String, Object>,
    /// Makes every entity tag distinct, as S3's are for distinct contents.
    versions: u64,
}

/// Objects in memory.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: Mutex<Objects>,
    counters: Counters,
}

impl MemoryObjects {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key, for tests.
    pub fn keys(&self) -> Vec<String> {
        self.lock().map.keys().cloned().collect()
    }

    /// Forgets every object, as a deleted bucket prefix would (tests of a lost state).
    pub fn clear(&self) {
        self.lock().map.clear();
    }

    /// An object's bytes, for tests.
    pub fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().map.get(key).map(|o| o.bytes.clone())
    }
}

#[async_trait]
impl ObjectStore for MemoryObjects {
    fn location(&self) -> String {
        "memory://state".to_owned()
    }

    async fn get(&self, key: &str) -> CloudResult<Option<Object>> {
        let found = self.lock().map.get(key).cloned();
        self.counters.get(found.as_ref().map_or(0, |o| o.bytes.len()));
        Ok(found)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, condition: Condition) -> CloudResult<String> {
        self.counters.put(bytes.len());
        let mut objects = self.lock();
        let current = objects.map.get(key).map(|o| o.etag.clone());
        let holds = match (&condition, &current) {
            (Condition::Absent, None) => true,
            (Condition::Matches(want), Some(have)) => want == have,
            _ => false,
        };
        if !holds {
            return Err(precondition_failed("PutObject", key));
        }
        objects.versions += 1;
        let etag = format!("\"{:016x}\"", objects.versions);
        objects.map.insert(key.to_owned(), Object { bytes, etag: etag.clone() });
        Ok(etag)
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> CloudResult<()> {
        self.counters.delete();
        let mut objects = self.lock();
        if let (Some(want), Some(have)) = (if_match, objects.map.get(key))
            && want != have.etag
        {
            return Err(precondition_failed("DeleteObject", key));
        }
        objects.map.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> CloudResult<Vec<String>> {
        self.counters.list();
        Ok(self.lock().map.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn stats(&self) -> ObjectStats {
        self.counters.snapshot()
    }
}
