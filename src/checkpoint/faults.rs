//! Tests of the state in S3 on a bad day, over the in-memory store with faults: a
//! write carried out whose answer is lost (the SDK's retry then refused by it), and a
//! write held in the network that lands later, whatever its sender did meanwhile.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::error::StoreError;
use super::memory::MemoryObjects;
use super::remote::{LeaseOptions, RemoteStore};
use super::store::Store;
use super::{RunRecord, RunStatus};
use crate::cloud::CloudResult;
use crate::cloud::object::{Condition, Object, ObjectStats, ObjectStore, precondition_failed};

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Carried out, then answered as the SDK's retry is: refused by its condition.
    LoseAnswer,
    /// Lands after this long, even when the caller gave up waiting.
    Hold(Duration),
}

#[derive(Debug)]
struct Rule {
    prefix: &'static str,
    fault: Fault,
    /// How many more writes it applies to.
    times: usize,
}

/// An object store whose writes (puts and deletes) under a prefix go wrong.
#[derive(Debug, Default)]
struct Faulty {
    inner: Arc<MemoryObjects>,
    rules: Mutex<Vec<Rule>>,
    /// Writes that went wrong: lost answers, and held writes that landed.
    lost: Mutex<Vec<String>>,
    landed: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Faulty {
    fn new(inner: Arc<MemoryObjects>) -> Arc<Self> {
        Arc::new(Faulty { inner, ..Default::default() })
    }

    fn add(&self, prefix: &'static str, fault: Fault, times: usize) {
        self.rules.lock().unwrap().push(Rule { prefix, fault, times });
    }

    fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    fn fault(&self, key: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| r.times > 0 && key.starts_with(r.prefix))?;
        rule.times -= 1;
        Some(rule.fault)
    }

    fn lost(&self) -> Vec<String> {
        self.lost.lock().unwrap().clone()
    }

    /// The held writes that landed, and whether each was carried out.
    fn landed(&self) -> Vec<(String, bool)> {
        self.landed.lock().unwrap().clone()
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn get(&self, key: &str) -> CloudResult<Option<Object>> {
        self.inner.get(key).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, condition: Condition) -> CloudResult<String> {
        match self.fault(key) {
            None => self.inner.put(key, bytes, condition).await,
            Some(Fault::LoseAnswer) => {
                self.inner.put(key, bytes, condition).await?;
                self.lost.lock().unwrap().push(format!("PUT {key}"));
                Err(precondition_failed("PutObject", key))
            }
            Some(Fault::Hold(d)) => {
                let (inner, key, landed) = (self.inner.clone(), key.to_owned(), self.landed.clone());
                let task = tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let r = inner.put(&key, bytes, condition).await;
                    landed.lock().unwrap().push((key, r.is_ok()));
                    r
                });
                task.await.expect("the held write ends")
            }
        }
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> CloudResult<()> {
        match self.fault(key) {
            Some(Fault::LoseAnswer) => {
                self.inner.delete(key, if_match).await?;
                self.lost.lock().unwrap().push(format!("DELETE {key}"));
                Err(precondition_failed("DeleteObject", key))
            }
            _ => self.inner.delete(key, if_match).await,
        }
    }

    async fn list(&self, prefix: &str) -> CloudResult<Vec<String>> {
        self.inner.list(prefix).await
    }

    fn stats(&self) -> ObjectStats {
        self.inner.stats()
    }
}

fn record(n: usize) -> RunRecord {
    super::tests::record("run", n)
}

fn lease(ms: u64) -> LeaseOptions {
    LeaseOptions { duration: Duration::from_millis(ms) }
}

fn run_keys(objects: &MemoryObjects) -> Vec<String> {
    objects.keys().into_iter().filter(|k| k.starts_with("runs/")).collect()
}

#[tokio::test]
async fn a_lost_answer_to_a_state_write_is_our_success() {
    let objects = Arc::new(MemoryObjects::new());
    let faulty = Faulty::new(objects.clone());
    faulty.add("runs/", Fault::LoseAnswer, usize::MAX);
    let store = Store::remote(faulty.clone(), LeaseOptions::default());
    let _lock = store.lock_plan("p").await.unwrap();
    let mut r = record(2);
    let mut j = store.create_or_reopen(&r).await.unwrap();
    r.volumes[0] = crate::engine::begin(&r.volumes[0], 1);
    j.volume(0, &r.volumes[0]).unwrap();
    j.sync().await.unwrap();
    r.meta.status = RunStatus::Succeeded;
    j.meta(&r.meta).unwrap();
    j.compact(&r).await.unwrap();
    // The first checkpoint, two batches, the last checkpoint: each answer lost (and
    // those of the compaction's deletes).
    let puts = faulty.lost().into_iter().filter(|k| k.starts_with("PUT ")).count();
    assert_eq!(puts, 4, "{:?}", faulty.lost());
    assert_eq!(run_keys(&objects), ["runs/run/000000000004.json"]);
    assert_eq!(store.load("run").await.unwrap(), r);
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_lost_answer_to_taking_renewing_or_releasing_the_lease_is_ours() {
    let objects = Arc::new(MemoryObjects::new());
    let faulty = Faulty::new(objects.clone());
    faulty.add("locks/", Fault::LoseAnswer, usize::MAX);
    let store = Store::remote(faulty.clone(), lease(400));
    let lock = store.lock_plan("p").await.expect("the lease taken by an answer lost is ours");
    let mut j = store.create_or_reopen(&record(1)).await.unwrap();
    // Two lease durations of renewals, each answer lost: still ours.
    tokio::time::sleep(Duration::from_millis(800)).await;
    j.meta(&record(1).meta).unwrap();
    j.sync().await.expect("the lease holds");
    let doc: serde_json::Value = serde_json::from_slice(&objects.bytes("locks/p.json").unwrap()).unwrap();
    assert_eq!(doc["run_id"], "run");
    assert_eq!(doc["pid"], std::process::id());
    drop(lock);
    store.close().await;
    let lost = faulty.lost();
    // The take, the renewal naming the run, at least four background renewals, the release.
    assert!(lost.len() >= 7, "{lost:?}");
    assert!(objects.bytes("locks/p.json").is_none(), "released: {:?}", objects.keys());
    let other = Store::remote(objects.clone(), lease(400));
    assert!(other.lock_plan("p").await.is_ok());
}

#[tokio::test]
async fn a_write_held_past_the_lease_stops_its_writer_and_readers_ignore_it_when_it_lands() {
    let objects = Arc::new(MemoryObjects::new());
    let faulty = Faulty::new(objects.clone());
    let old = Store::remote(faulty.clone(), lease(400));
    let lock = old.lock_plan("p").await.unwrap();
    let mut r = record(2);
    let mut stale = old.create_or_reopen(&r).await.unwrap();
    // A partition: every write of the old holder lands 1.5 s late.
    faulty.add("", Fault::Hold(Duration::from_millis(1500)), usize::MAX);
    let started = Instant::now();
    r.volumes[0] = crate::engine::begin(&r.volumes[0], 1);
    stale.volume(0, &r.volumes[0]).unwrap();
    let err = stale.sync().await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500), "the write was bounded: {:?}", started.elapsed());
    drop(lock);

    // The lease ends; another holder takes the run over and finishes it (its last
    // checkpoint frees the slot the held write is aimed at).
    tokio::time::sleep(Duration::from_millis(450)).await;
    let new = Store::remote(objects.clone(), lease(400));
    let _lock = new.lock_plan("p").await.unwrap();
    let mut loaded = new.load("run").await.unwrap();
    assert!(!loaded.volumes[0].in_flight, "the held batch had not landed");
    let mut j = new.create_or_reopen(&loaded).await.unwrap();
    loaded.meta.status = RunStatus::Succeeded;
    j.meta(&loaded.meta).unwrap();
    j.compact(&loaded).await.unwrap();
    assert_eq!(run_keys(&objects), ["runs/run/000000000004.json"]);

    // The held writes land: the batch in the freed slot, beneath the newest checkpoint.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()) + Duration::from_millis(300))
        .await;
    let landed = faulty.landed();
    assert!(landed.contains(&("runs/run/000000000002.json".to_owned(), true)), "{landed:?}");
    assert!(run_keys(&objects).contains(&"runs/run/000000000002.json".to_owned()));
    assert_eq!(new.load("run").await.unwrap(), loaded, "a reader ignores the late write");
    let runs = new.list().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].meta.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_write_that_comes_back_after_the_lease_is_safe_does_not_count() {
    let objects = Arc::new(MemoryObjects::new());
    let faulty = Faulty::new(objects.clone());
    let backend = Arc::new(RemoteStore::new(faulty.clone(), lease(4000)));
    let store = Store::from_backend(backend.clone());
    let _lock = store.lock_plan("p").await.unwrap();
    let mut j = store.create_or_reopen(&record(1)).await.unwrap();
    // Renewed just now, by the reopen: safe for 3 s. Renewals stop; a write starts
    // inside that and comes back, carried out within its bound of 0.5 s, after it.
    let renewed = Instant::now();
    backend.abandon("p");
    tokio::time::sleep(Duration::from_millis(2650).saturating_sub(renewed.elapsed())).await;
    faulty.add("runs/", Fault::Hold(Duration::from_millis(400)), 1);
    j.meta(&record(1).meta).unwrap();
    let err = j.sync().await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains("came back after the lease's safe end"), "{err}");
    assert_eq!(faulty.landed(), [("runs/run/000000000002.json".to_owned(), true)]);
    // The process stops as a lost lease does: no later write either.
    j.meta(&record(1).meta).unwrap();
    assert!(matches!(j.sync().await, Err(StoreError::LeaseLost { .. })));
}

#[tokio::test]
async fn a_hung_renewal_does_not_hold_up_the_next() {
    let objects = Arc::new(MemoryObjects::new());
    let faulty = Faulty::new(objects.clone());
    let store = Store::remote(faulty.clone(), lease(400));
    let _lock = store.lock_plan("p").await.unwrap();
    let mut j = store.create_or_reopen(&record(1)).await.unwrap();
    // The next renewal hangs for five lease durations.
    faulty.add("locks/", Fault::Hold(Duration::from_secs(2)), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    j.meta(&record(1).meta).unwrap();
    j.sync().await.expect("later renewals kept the lease");
    let before = objects.stats().puts;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(objects.stats().puts > before, "renewals go on");
    faulty.clear();
}
