//! The state in an object store (`--state-dir s3://BUCKET/PREFIX`), so it outlives
//! the machine, with every write conditional so that two machines never both write it.
//!
//! ```text
//! locks/<plan>.json         the lease: holder (host, pid), run id, expiry
//! runs/<run-id>/<seq>.json  a checkpoint (the whole run, one JSON document with its
//!                           format_version) or a journal batch (the JSON lines of one sync)
//! plans/<plan>.json         the plan's index: runs removed by `options.history`
//! ```
//!
//! `<seq>` is a zero-padded sequence number shared by checkpoints and journal batches,
//! so that one name is one slot: a run is its newest checkpoint with the batches after
//! it replayed in order.
//! Every object is created with `If-None-Match: *` at the next number, so a writer
//! that is no longer the run's only one (its lease was taken over while it was
//! suspended or cut off) fails at its next write instead of overwriting the newer
//! holder's state: taking a run over starts by writing a checkpoint at the next
//! number. Objects older than the newest checkpoint are deleted after it is written.
//!
//! The journal is folded into a new checkpoint once it holds four times the
//! checkpoint's bytes, or more objects than the checkpoint has kilobytes (at least
//! 512): each rewrite is paid for by as many bytes (or, for small syncs, records) of
//! journal, so what one run writes stays linear in its size. A load reads the objects after the newest checkpoint
//! [`READS_IN_FLIGHT`] at a time. A run is removed oldest object first: a removal cut
//! short leaves journal batches without a checkpoint, which is no run (a checkpoint
//! is always written before the batches after it, and only older objects are deleted).
//!
//! The lock is a lease object created with `If-None-Match: *`, renewed with
//! `If-Match` (the entity tag of the holder's last write) every quarter of its
//! duration by a background task, taken over with `If-Match` once its expiry has
//! passed, and deleted with `If-Match` when released. A holder writes nothing once
//! less than a quarter of its lease is left unrenewed, so it has stopped before
//! anyone can take over, even with clocks a little apart.
//!
//! Every write, of the lease or of the state, is bounded: each attempt is given up
//! after an eighth of the lease (half the margin), so no attempt is sent after the
//! lease ended, and a write counts only if the lease was still safe when it came
//! back; one that came back later stops the process as a lost lease does. A write
//! refused by its condition is read back first: S3 can carry out a write and lose
//! its answer, and the SDK's retry is then refused by our own write. A state object
//! whose bytes are ours, or a lease that holds our token, is our success, not
//! another writer's.
//!
//! A stale holder's write that lands late (held in the network past the lease) is
//! at the sequence number after the last object it had written, which is at or
//! below the slot of the checkpoint its successor takes the run over with: it is
//! refused while that checkpoint stands, and once a compaction freed the slot it is
//! older than the newest checkpoint, which readers start from.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::backend::{PlanLock, StateStore};
use super::codec::{parse_checkpoint, parse_index};
use super::error::StoreError;
use super::journal::{Journal, JournalSink, replay};
use super::{FORMAT_VERSION, PlanIndex, RunMeta, RunRecord};
use crate::cloud::object::{Condition, ObjectStats, ObjectStore, refused};
use crate::cloud::{CloudError, ErrorKind};

/// Lets tests (and impatient operators) shorten the lease: whole seconds, at least 4.
pub const LEASE_ENV: &str = "SNAPFERRY_LEASE_SECONDS";
/// A dead holder's lease is taken over at most this long after its last renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);
const MIN_LEASE_SECONDS: u64 = 4;
/// Looks at the lease again when someone else wrote it between our read and write.
const LOCK_ATTEMPTS: u32 = 3;
/// Loads again when a compaction deleted an object between our listing and our read.
const LOAD_ATTEMPTS: u32 = 3;
/// Fold the journal into a checkpoint past this many objects at least ...
const COMPACT_OBJECTS: usize = 512;
/// ... or past one object per this many bytes of the checkpoint, so that a fleet's
/// large checkpoint is rewritten once per as many syncs as it has records, not once per
/// [`COMPACT_OBJECTS`] syncs (which grows with the square of the fleet).
const COMPACT_BYTES_PER_OBJECT: usize = 1024;
/// ... or once the journal holds this many times the checkpoint's bytes (the checkpoint
/// counted as at least [`COMPACT_MIN_BYTES`]): the rewrites then add at most a quarter
/// to what the journal itself writes.
const COMPACT_RATIO: usize = 4;
const COMPACT_MIN_BYTES: usize = 256 * 1024;
/// Deletes of old objects under way at once.
const DELETES_IN_FLIGHT: usize = 16;
/// GETs under way at once when a run is read.
const READS_IN_FLIGHT: usize = 16;
/// How long `close` waits for a lease to be released.
const RELEASE_WAIT: Duration = Duration::from_secs(15);
/// Attempts at one state or lease write whose attempts fail or time out, while the
/// lease allows: a partition outlasts the lease first.
const WRITE_ATTEMPTS: u32 = 8;
const LEASE_FORMAT: u32 = 1;

/// How long a lease lasts unrenewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    pub duration: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { duration: DEFAULT_LEASE }
    }
}

impl LeaseOptions {
    /// The default, or [`LEASE_ENV`] when set.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(LEASE_ENV) {
            Ok(v) if !v.is_empty() => match v.parse::<u64>() {
                Ok(s) if s >= MIN_LEASE_SECONDS => Ok(LeaseOptions { duration: Duration::from_secs(s) }),
                _ => Err(format!("{LEASE_ENV}={v:?}: expected whole seconds, at least {MIN_LEASE_SECONDS}")),
            },
            _ => Ok(LeaseOptions::default()),
        }
    }

    fn renew_every(&self) -> Duration {
        self.duration / 4
    }

    fn duration_ms(&self) -> i64 {
        self.duration.as_millis() as i64
    }

    /// Writes stop this long before the lease's expiry.
    fn margin_ms(&self) -> i64 {
        self.duration_ms() / 4
    }

    /// How long one attempt at a write (or its read-back) may take: half the margin,
    /// so an attempt started before the margin is given up before the lease ends.
    fn attempt_bound(&self) -> Duration {
        self.duration / 8
    }
}

/// What the lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseDoc {
    format_version: u32,
    plan: String,
    host: String,
    pid: u32,
    /// Random per acquisition: tells two leases of one process apart.
    token: String,
    run_id: Option<String>,
    acquired_ms: i64,
    expires_ms: i64,
}

impl LeaseDoc {
    fn holder(&self) -> String {
        let run = self.run_id.as_deref().map(|r| format!(", run {r}")).unwrap_or_default();
        format!("host {} pid {}{run}", self.host, self.pid)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn token() -> String {
    let mut r = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut r);
    r.iter().map(|b| format!("{b:02x}")).collect()
}

/// A lease this process holds.
#[derive(Debug)]
struct Lease {
    plan: String,
    key: String,
    location: String,
    objects: Arc<dyn ObjectStore>,
    opts: LeaseOptions,
    /// The entity tag of our last write and what it said; one writer at a time.
    state: tokio::sync::Mutex<(String, LeaseDoc)>,
    /// When the last successful write makes the lease end.
    expires_ms: AtomicI64,
    /// Why the lease is lost, once it is.
    lost: Mutex<Option<String>>,
}

impl Lease {
    fn lost_error(&self, reason: String) -> StoreError {
        StoreError::LeaseLost { plan: self.plan.clone(), location: self.location.clone(), reason }
    }

    fn mark_lost(&self, reason: String) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.is_none() {
            tracing::error!(plan = %self.plan, reason, "lost the lease on the plan; the run stops at its next write");
            *lost = Some(reason);
        }
    }

    /// Fails when the lease is lost or too close to its end to write safely.
    fn check(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(self.lost_error(reason));
        }
        let expires = self.expires_ms.load(Ordering::SeqCst);
        if now_ms() >= expires - self.opts.margin_ms() {
            let reason = format!("it could not be renewed in time (it ends at {})", when(expires));
            self.mark_lost(reason.clone());
            return Err(self.lost_error(reason));
        }
        Ok(())
    }

    /// After a write came back: it counts only if the lease was still safe then.
    fn confirm(&self) -> Result<(), StoreError> {
        let expires = self.expires_ms.load(Ordering::SeqCst);
        if self.lost.lock().unwrap_or_else(|p| p.into_inner()).is_none() && now_ms() >= expires - self.opts.margin_ms()
        {
            self.mark_lost(format!(
                "a state write came back after the lease's safe end (it ends at {}), so it does not count",
                when(expires)
            ));
        }
        self.check()
    }

    /// True when `bytes` is a lease this acquisition wrote (one of its renewals).
    fn is_ours(&self, doc: &LeaseDoc, bytes: &[u8]) -> bool {
        serde_json::from_slice::<LeaseDoc>(bytes).is_ok_and(|d| d.token == doc.token)
    }

    /// Extends the lease (and records the run id in it). Each attempt is bounded, so a
    /// hung one never holds up the next renewal.
    async fn renew(&self, run_id: Option<&str>) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        for _ in 0..LOCK_ATTEMPTS {
            self.check()?;
            let mut doc = state.1.clone();
            if let Some(r) = run_id {
                doc.run_id = Some(r.to_owned());
            }
            doc.expires_ms = now_ms() + self.opts.duration_ms();
            let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            let condition = Condition::Matches(state.0.clone());
            let written =
                put_reconciled(&*self.objects, &self.location, &self.key, &bytes, &condition, self.opts, &|| {
                    self.check()
                })
                .await?;
            match written {
                Put::Ours(etag) => {
                    self.expires_ms.store(doc.expires_ms, Ordering::SeqCst);
                    *state = (etag, doc);
                    return Ok(());
                }
                // An earlier renewal of ours landed after its answer was lost: carry on
                // from the version it made.
                Put::Refused(Some(o)) if self.is_ours(&state.1, &o.bytes) => {
                    if let Ok(d) = serde_json::from_slice::<LeaseDoc>(&o.bytes) {
                        self.expires_ms.store(d.expires_ms, Ordering::SeqCst);
                        *state = (o.etag, d);
                    }
                }
                Put::Refused(found) => {
                    let who = found
                        .and_then(|o| serde_json::from_slice::<LeaseDoc>(&o.bytes).ok())
                        .map(|d| d.holder())
                        .unwrap_or_else(|| "someone else".to_owned());
                    let reason = format!("it was taken over by {who}");
                    self.mark_lost(reason.clone());
                    return Err(self.lost_error(reason));
                }
            }
        }
        Err(remote(
            &self.location,
            CloudError::new(
                ErrorKind::Transport,
                "LeaseChanging",
                format!("the lease {} keeps changing under its own renewals", self.key),
            ),
        ))
    }

    /// Deletes the lease if it is still ours.
    async fn release(&self) {
        let state = self.state.lock().await;
        if self.lost.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let bound = self.opts.attempt_bound();
        let mut etag = state.0.clone();
        for _ in 0..WRITE_ATTEMPTS {
            let outcome = match tokio::time::timeout(bound, self.objects.delete(&self.key, Some(&etag))).await {
                Ok(r) => r,
                Err(_) => Err(timed_out("s3:DeleteObject", &self.key, bound)),
            };
            match outcome {
                Ok(()) => {
                    tracing::debug!(plan = %self.plan, "released the lease");
                    return;
                }
                // Gone (our delete whose answer was lost), someone else's, or a renewal
                // of ours that landed late: only the last is deleted again.
                Err(e) if refused(&e) => match tokio::time::timeout(bound, self.objects.get(&self.key)).await {
                    Ok(Ok(Some(o))) if self.is_ours(&state.1, &o.bytes) => etag = o.etag,
                    _ => return,
                },
                Err(e) => tracing::debug!(plan = %self.plan, error = %e, "could not release the lease; trying again"),
            }
        }
        tracing::warn!(plan = %self.plan, "could not release the lease; it ends by itself");
    }
}

/// What became of a conditional write.
#[derive(Debug)]
enum Put {
    /// Ours: the entity tag of the version written.
    Ours(String),
    /// Refused by its condition, and what was there instead (read back).
    Refused(Option<crate::cloud::object::Object>),
}

fn timed_out(action: &str, key: &str, bound: Duration) -> CloudError {
    CloudError::new(
        ErrorKind::Transport,
        "Timeout",
        format!("{action} of {key}: no answer in {} ms; it may or may not have taken effect", bound.as_millis()),
    )
}

/// Writes `bytes` at `key` if `condition` holds. Each attempt (and each read-back) is
/// given up after [`LeaseOptions::attempt_bound`], and one is made only while `go`
/// allows; one that failed or timed out is tried again, a little later each time,
/// so that a partition ends the lease before the attempts. A refused attempt is read
/// back: the very bytes we sent are our own earlier attempt, carried out with its
/// answer lost.
async fn put_reconciled(
    objects: &dyn ObjectStore,
    location: &str,
    key: &str,
    bytes: &[u8],
    condition: &Condition,
    opts: LeaseOptions,
    go: &(dyn Fn() -> Result<(), StoreError> + Send + Sync),
) -> Result<Put, StoreError> {
    let bound = opts.attempt_bound();
    let mut last = None;
    for attempt in 0..WRITE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(bound / 4 * attempt).await;
        }
        go()?;
        let outcome = match tokio::time::timeout(bound, objects.put(key, bytes.to_vec(), condition.clone())).await {
            Ok(r) => r,
            Err(_) => Err(timed_out("s3:PutObject", key, bound)),
        };
        let e = match outcome {
            Ok(etag) => return Ok(Put::Ours(etag)),
            Err(e) => e,
        };
        if refused(&e) {
            match tokio::time::timeout(bound, objects.get(key)).await {
                Ok(Ok(Some(o))) if o.bytes == bytes => {
                    tracing::debug!(key, "a write refused on retry had been carried out: its answer was lost");
                    return Ok(Put::Ours(o.etag));
                }
                Ok(Ok(found)) => return Ok(Put::Refused(found)),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(timed_out("s3:GetObject", key, bound)),
            }
        } else if matches!(e.kind, ErrorKind::Transport | ErrorKind::Throttled | ErrorKind::Other) {
            tracing::debug!(key, error = %e, "a state write failed; trying again");
            last = Some(e);
        } else {
            return Err(remote(location, e));
        }
    }
    Err(remote(location, last.unwrap_or_else(|| timed_out("s3:PutObject", key, bound))))
}

/// A state object's bytes made this write's own, so that reading it back tells our
/// write from another writer's with the same content: a checkpoint gets a `write`
/// field, a journal batch a last line that is no record (replaying a batch stops at
/// a line that is not one).
fn stamped(bytes: &[u8], checkpoint: bool) -> Vec<u8> {
    let stamp = format!("\"write\":\"{}\"", token());
    let mut out = Vec::with_capacity(bytes.len() + stamp.len() + 4);
    match bytes.strip_prefix(b"{") {
        Some(rest) if checkpoint => {
            out.push(b'{');
            out.extend_from_slice(stamp.as_bytes());
            if !rest.starts_with(b"}") {
                out.push(b',');
            }
            out.extend_from_slice(rest);
        }
        _ => {
            out.extend_from_slice(bytes);
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.push(b'{');
            out.extend_from_slice(stamp.as_bytes());
            out.extend_from_slice(b"}\n");
        }
    }
    out
}

/// Creates one state object, while this process owns the run: refused when another
/// writer took its slot, and counted only if the lease still held when it came back.
async fn create_object(
    objects: &dyn ObjectStore,
    lease: Option<&Lease>,
    opts: LeaseOptions,
    run_id: &str,
    key: &str,
    bytes: &[u8],
    checkpoint: bool,
) -> Result<(), StoreError> {
    let location = objects.location();
    let location = location.as_str();
    let go = || lease.map_or(Ok(()), Lease::check);
    let bytes = stamped(bytes, checkpoint);
    match put_reconciled(objects, location, key, &bytes, &Condition::Absent, opts, &go).await? {
        Put::Ours(_) => {}
        Put::Refused(_) => {
            return Err(StoreError::Fenced { run_id: run_id.to_owned(), location: location.to_owned() });
        }
    }
    match lease {
        Some(l) => l.confirm(),
        None => Ok(()),
    }
}

/// Renews the lease until the lock is dropped, then releases it. A renewal that
/// failed is tried again after a quarter of the usual wait.
async fn keep(lease: Arc<Lease>, mut stop: oneshot::Receiver<()>) {
    let mut wait = lease.opts.renew_every();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(wait) => {
                match lease.renew(None).await {
                    Ok(()) => wait = lease.opts.renew_every(),
                    Err(StoreError::LeaseLost { .. }) => {
                        let _ = stop.await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(plan = %lease.plan, error = %e, "could not renew the lease; trying again");
                        wait = lease.opts.renew_every() / 4;
                    }
                }
            }
        }
    }
    lease.release().await;
}

/// A lease's renewal task, and a token alive while its lock is held.
type Renewal = (JoinHandle<()>, Weak<()>);

/// What the lock holds: dropping it stops the renewals and releases the lease.
struct LeaseGuard {
    _stop: oneshot::Sender<()>,
    _alive: Arc<()>,
}

fn object_key(run_id: &str, seq: u64) -> String {
    format!("runs/{run_id}/{seq:012}.json")
}

fn parse_key(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let seq = name.strip_suffix(".json")?;
    if seq.len() != 12 {
        return None;
    }
    seq.parse().ok()
}

/// A checkpoint is one JSON document with a `format_version`; a journal batch is
/// JSON lines of records, which have none. Read without building the document.
fn is_checkpoint(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Versioned {
        #[allow(dead_code)]
        format_version: serde::de::IgnoredAny,
    }
    if bytes.starts_with(b"{\"meta\"") || bytes.starts_with(b"{\"volume\"") {
        return false;
    }
    serde_json::from_slice::<Versioned>(bytes).is_ok()
}

fn remote(location: &str, e: CloudError) -> StoreError {
    let hint = if e.kind == ErrorKind::AccessDenied {
        "; the caller needs s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the state bucket (snapferry run PLAN --dry-run prints the policy)"
    } else {
        ""
    };
    StoreError::Remote { location: location.to_owned(), source: e, hint }
}

/// The state in an object store.
#[derive(Debug)]
pub struct RemoteStore {
    objects: Arc<dyn ObjectStore>,
    opts: LeaseOptions,
    /// Leases held by this process, by plan.
    held: Mutex<HashMap<String, Weak<Lease>>>,
    /// The renewal tasks, by plan.
    tasks: Mutex<HashMap<String, Renewal>>,
    /// Per run: the highest sequence number and every key seen at its last load.
    loaded: Mutex<HashMap<String, (u64, Vec<String>)>>,
    /// Per run: its meta as of its newest object's sequence number, so a listing reads
    /// again only the runs written since.
    metas: MetaCache,
}

/// Per run: its meta as of the sequence number of its newest object.
type MetaCache = Arc<Mutex<HashMap<String, (u64, RunMeta)>>>;

impl RemoteStore {
    pub fn new(objects: Arc<dyn ObjectStore>, opts: LeaseOptions) -> Self {
        RemoteStore {
            objects,
            opts,
            held: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            metas: MetaCache::default(),
        }
    }

    /// Stops renewing a lease without releasing it, as a process that froze would.
    #[cfg(test)]
    pub(crate) fn abandon(&self, plan: &str) {
        if let Some((task, _)) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(plan) {
            task.abort();
        }
    }

    fn err(&self, e: CloudError) -> StoreError {
        remote(&self.objects.location(), e)
    }

    /// Holds the lease written as `etag` with `doc`: renews it in the background
    /// until the lock is dropped.
    fn hold(&self, plan: &str, key: String, location: String, etag: String, doc: LeaseDoc) -> PlanLock {
        let lease = Arc::new(Lease {
            plan: plan.to_owned(),
            key,
            location,
            objects: self.objects.clone(),
            opts: self.opts,
            expires_ms: AtomicI64::new(doc.expires_ms),
            state: tokio::sync::Mutex::new((etag, doc)),
            lost: Mutex::new(None),
        });
        let (stop, stopped) = oneshot::channel();
        let alive = Arc::new(());
        let task = tokio::spawn(keep(lease.clone(), stopped));
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(plan.to_owned(), Arc::downgrade(&lease));
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(plan.to_owned(), (task, Arc::downgrade(&alive)));
        PlanLock::new(LeaseGuard { _stop: stop, _alive: alive })
    }

    fn lease_of(&self, plan: &str) -> Option<Arc<Lease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(plan).and_then(Weak::upgrade)
    }

    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.objects.location()))
    }

    /// The ids of the runs under `runs/`.
    async fn run_ids(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.objects.list("runs/").await.map_err(|e| self.err(e))?;
        let mut ids: Vec<String> =
            keys.iter().filter_map(|k| k.strip_prefix("runs/")?.split('/').next()).map(str::to_owned).collect();
        ids.dedup();
        Ok(ids)
    }

    /// One attempt at reading a run; `Ok(None)` when an object vanished meanwhile.
    async fn load_once(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let keys = self.objects.list(&format!("runs/{run_id}/")).await.map_err(|e| self.err(e))?;
        let objects: BTreeMap<u64, &String> = keys.iter().filter_map(|k| parse_key(k).map(|seq| (seq, k))).collect();
        let Some(&last) = objects.keys().next_back() else {
            return Err(StoreError::NoSuchRun(run_id.to_owned()));
        };
        // Newest first, down to the newest checkpoint; older objects are left-overs.
        // Several GETs at once: a resume may have hundreds of batches to read.
        let newest_first: Vec<String> = objects.values().rev().map(|k| (*k).clone()).collect();
        let mut reads = futures::stream::iter(newest_first)
            .map(|key| {
                let store = self.objects.clone();
                async move { (store.get(&key).await, key) }
            })
            .buffered(READS_IN_FLIGHT);
        let mut batches = vec![];
        let mut base = None;
        while let Some((got, key)) = reads.next().await {
            let Some(obj) = got.map_err(|e| self.err(e))? else { return Ok(None) };
            if is_checkpoint(&obj.bytes) {
                base = Some(parse_checkpoint(&obj.bytes, &self.path(&key))?);
                break;
            }
            batches.push(obj.bytes);
        }
        drop(reads);
        // Batches without a checkpoint: what a removal cut short left.
        let Some(mut record) = base else { return Err(StoreError::NoSuchRun(run_id.to_owned())) };
        for batch in batches.iter().rev() {
            replay(&mut record, batch);
        }
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.to_owned(), (last, keys));
        self.metas.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.to_owned(), (last, record.meta.clone()));
        Ok(Some(record))
    }

    /// Deletes objects of a run that a newer checkpoint made useless. Best effort:
    /// what is left is ignored on load and deleted next time.
    async fn prune(&self, keys: Vec<String>) {
        let objects = &self.objects;
        let mut deletes = futures::stream::iter(keys)
            .map(|k| async move { (objects.delete(&k, None).await, k) })
            .buffer_unordered(DELETES_IN_FLIGHT);
        while let Some((result, key)) = deletes.next().await {
            if let Err(e) = result {
                tracing::debug!(key, error = %e, "could not delete an old state object; it is ignored");
            }
        }
    }
}

#[async_trait]
impl StateStore for RemoteStore {
    fn location(&self) -> String {
        self.objects.location()
    }

    async fn lock_plan(&self, plan: &str) -> Result<PlanLock, StoreError> {
        // A lock of this plan that this process just dropped: let its release finish.
        let pending = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            match tasks.get(plan) {
                Some((_, alive)) if alive.upgrade().is_none() => tasks.remove(plan).map(|t| t.0),
                _ => None,
            }
        };
        if let Some(task) = pending {
            let _ = tokio::time::timeout(RELEASE_WAIT, task).await;
        }
        let location = self.location();
        let key = format!("locks/{plan}.json");
        let bound = self.opts.attempt_bound();
        // One token for every attempt: a lease found with it is ours, taken by an
        // attempt whose answer was lost.
        let token = token();
        let mut failed = None;
        for _ in 0..LOCK_ATTEMPTS {
            let current = match tokio::time::timeout(bound, self.objects.get(&key)).await {
                Ok(r) => r.map_err(|e| self.err(e))?,
                Err(_) => return Err(self.err(timed_out("s3:GetObject", &key, bound))),
            };
            let now = now_ms();
            let condition = match &current {
                None => Condition::Absent,
                Some(obj) => {
                    match serde_json::from_slice::<LeaseDoc>(&obj.bytes) {
                        Ok(doc) if doc.token == token && doc.expires_ms - self.opts.margin_ms() > now => {
                            tracing::debug!(plan, "the lease was taken by an attempt whose answer was lost");
                            return Ok(self.hold(plan, key, location, obj.etag.clone(), doc));
                        }
                        Ok(doc) if doc.expires_ms > now && doc.token != token => {
                            return Err(StoreError::Leased {
                                plan: plan.to_owned(),
                                location,
                                holder: doc.holder(),
                                until: when(doc.expires_ms),
                            });
                        }
                        Ok(doc) => tracing::warn!(
                            plan,
                            holder = doc.holder(),
                            expired = when(doc.expires_ms),
                            "taking over the lease of a holder that stopped renewing it"
                        ),
                        Err(e) => tracing::warn!(plan, error = %e, "the lease object is damaged; taking it over"),
                    }
                    Condition::Matches(obj.etag.clone())
                }
            };
            let doc = LeaseDoc {
                format_version: LEASE_FORMAT,
                plan: plan.to_owned(),
                host: hostname(),
                pid: std::process::id(),
                token: token.clone(),
                run_id: None,
                acquired_ms: now,
                expires_ms: now + self.opts.duration_ms(),
            };
            let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            match put_reconciled(&*self.objects, &location, &key, &bytes, &condition, self.opts, &|| Ok(())).await {
                Ok(Put::Ours(etag)) => return Ok(self.hold(plan, key, location, etag, doc)),
                // Someone else wrote the lease between our read and our write (or an
                // earlier attempt of ours did): look again.
                Ok(Put::Refused(_)) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Err(StoreError::Leased {
            plan: plan.to_owned(),
            location,
            holder: "another snapferry taking it at the same moment".to_owned(),
            until: when(now_ms() + self.opts.duration_ms()),
        })
    }

    async fn load(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        for _ in 0..LOAD_ATTEMPTS {
            if let Some(r) = self.load_once(run_id).await? {
                return Ok(r);
            }
        }
        Err(StoreError::Corrupt {
            path: self.path(&format!("runs/{run_id}/")),
            message: "its objects keep changing while being read".to_owned(),
        })
    }

    async fn list(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = vec![];
        for id in self.run_ids().await? {
            runs.extend(self.load_listed(&id).await?);
        }
        runs.sort_by(|a, b| (a.meta.created_ms, &a.meta.run_id).cmp(&(b.meta.created_ms, &b.meta.run_id)));
        Ok(runs)
    }

    /// One listing of every run's objects; a run this process read (or wrote) since
    /// its newest object was written is not read again; any other is read whole (its
    /// newest checkpoint and the batches after it) and kept only as its meta: one run
    /// in memory at a time.
    async fn list_meta(&self) -> Result<Vec<RunMeta>, StoreError> {
        let keys = self.objects.list("runs/").await.map_err(|e| self.err(e))?;
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for k in &keys {
            if let (Some(id), Some(seq)) = (k.strip_prefix("runs/").and_then(|r| r.split('/').next()), parse_key(k)) {
                let e = newest.entry(id).or_insert(seq);
                *e = (*e).max(seq);
            }
        }
        let mut metas = vec![];
        for (id, seq) in newest {
            let cached = self.metas.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
            match cached {
                Some((at, meta)) if at == seq => metas.push(meta),
                _ => metas.extend(self.load_listed(id).await?.map(|r| r.meta)),
            }
        }
        metas.sort_by(|a, b| (a.created_ms, &a.run_id).cmp(&(b.created_ms, &b.run_id)));
        Ok(metas)
    }

    async fn create_or_reopen(&self, record: &RunRecord) -> Result<Journal, StoreError> {
        let run_id = record.meta.run_id.clone();
        let lease = self.lease_of(&record.meta.plan);
        if let Some(l) = &lease {
            // The lease names the run from now on (and proves it is still ours).
            match l.renew(Some(&run_id)).await {
                Err(e @ StoreError::LeaseLost { .. }) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "could not renew the lease; trying again later"),
                Ok(()) => {}
            }
        }
        let known = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(&run_id).cloned();
        let (last, old_keys) = match known {
            Some(k) => k,
            None => {
                let keys = self.objects.list(&format!("runs/{run_id}/")).await.map_err(|e| self.err(e))?;
                let last = keys.iter().filter_map(|k| parse_key(k)).max().unwrap_or(0);
                (last, keys)
            }
        };
        let seq = last + 1;
        let key = object_key(&run_id, seq);
        let bytes = serde_json::to_vec(record)
            .map_err(|e| StoreError::Corrupt { path: self.path(&key), message: e.to_string() })?;
        let snapshot_bytes = bytes.len();
        create_object(&*self.objects, lease.as_deref(), self.opts, &run_id, &key, &bytes, true).await?;
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.clone(), (seq, vec![key.clone()]));
        self.prune(old_keys).await;
        Ok(Journal::new(RemoteJournal {
            objects: self.objects.clone(),
            location: self.location(),
            run_id,
            lease,
            opts: self.opts,
            next: seq + 1,
            written: vec![key],
            since_bytes: 0,
            snapshot_bytes,
            metas: self.metas.clone(),
        }))
    }

    /// Oldest object first, one at a time: what a removal cut short leaves is no run,
    /// never an older state of it.
    async fn remove(&self, run_id: &str) -> Result<(), StoreError> {
        let keys = self.objects.list(&format!("runs/{run_id}/")).await.map_err(|e| self.err(e))?;
        let mut ordered: Vec<(u64, &String)> = keys.iter().filter_map(|k| parse_key(k).map(|s| (s, k))).collect();
        ordered.sort();
        for (_, key) in ordered {
            self.objects.delete(key, None).await.map_err(|e| self.err(e))?;
        }
        // Anything else under the run's prefix, once the run is gone.
        self.prune(keys.into_iter().filter(|k| parse_key(k).is_none()).collect()).await;
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).remove(run_id);
        self.metas.lock().unwrap_or_else(|p| p.into_inner()).remove(run_id);
        Ok(())
    }

    async fn plan_indexes(&self) -> Result<Vec<PlanIndex>, StoreError> {
        let keys = self.objects.list("plans/").await.map_err(|e| self.err(e))?;
        let mut out = vec![];
        for key in keys.iter().filter(|k| k.ends_with(".json")) {
            if let Some(obj) = self.objects.get(key).await.map_err(|e| self.err(e))? {
                out.push(parse_index(&obj.bytes, &self.path(key))?);
            }
        }
        out.sort_by(|a, b| a.plan.cmp(&b.plan));
        Ok(out)
    }

    /// Read, add, write back on the version read: the plan's lease holder is its only
    /// writer, and a refused write is read again.
    async fn count_removed(&self, plan: &str, runs: u64) -> Result<u64, StoreError> {
        let key = format!("plans/{plan}.json");
        for _ in 0..LOCK_ATTEMPTS {
            let (mut index, condition) = match self.objects.get(&key).await.map_err(|e| self.err(e))? {
                Some(obj) => (parse_index(&obj.bytes, &self.path(&key))?, Condition::Matches(obj.etag)),
                None => {
                    (PlanIndex { format_version: FORMAT_VERSION, plan: plan.to_owned(), removed: 0 }, Condition::Absent)
                }
            };
            index.removed += runs;
            let bytes = serde_json::to_vec_pretty(&index)
                .map_err(|e| StoreError::Corrupt { path: self.path(&key), message: e.to_string() })?;
            match self.objects.put(&key, bytes, condition).await {
                Ok(_) => return Ok(index.removed),
                Err(e) if refused(&e) => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(StoreError::Fenced { run_id: format!("index of plan {plan}"), location: self.location() })
    }

    async fn close(&self) {
        let tasks: Vec<JoinHandle<()>> =
            self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, (t, _))| t).collect();
        for t in tasks {
            if tokio::time::timeout(RELEASE_WAIT, t).await.is_err() {
                tracing::warn!("the lease was not released in time; it ends by itself");
            }
        }
    }

    fn stats(&self) -> Option<ObjectStats> {
        Some(self.objects.stats())
    }
}

/// The journal of one run in the object store: one object per sync.
#[derive(Debug)]
struct RemoteJournal {
    objects: Arc<dyn ObjectStore>,
    location: String,
    run_id: String,
    lease: Option<Arc<Lease>>,
    opts: LeaseOptions,
    /// The sequence number of the next object.
    next: u64,
    /// The newest checkpoint's key and the journal objects after it.
    written: Vec<String>,
    since_bytes: usize,
    snapshot_bytes: usize,
    /// The store's metas: a run just compacted need not be read again to be listed.
    metas: MetaCache,
}

impl RemoteJournal {
    /// Creates the next object, if this process still owns the run.
    async fn create(&mut self, bytes: &[u8], checkpoint: bool) -> Result<String, StoreError> {
        let key = object_key(&self.run_id, self.next);
        let lease = self.lease.as_deref();
        create_object(&*self.objects, lease, self.opts, &self.run_id, &key, bytes, checkpoint).await?;
        self.next += 1;
        Ok(key)
    }
}

#[async_trait]
impl JournalSink for RemoteJournal {
    async fn append(&mut self, batch: &[u8], _lines: usize) -> Result<(), StoreError> {
        let key = self.create(batch, false).await?;
        self.written.push(key);
        self.since_bytes += batch.len();
        Ok(())
    }

    async fn compact(&mut self, record: &RunRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|e| StoreError::Corrupt { path: PathBuf::from(&self.location), message: e.to_string() })?;
        let len = bytes.len();
        let key = self.create(&bytes, true).await?;
        if let Some(seq) = parse_key(&key) {
            let mut metas = self.metas.lock().unwrap_or_else(|p| p.into_inner());
            metas.insert(self.run_id.clone(), (seq, record.meta.clone()));
        }
        let old = std::mem::replace(&mut self.written, vec![key]);
        self.since_bytes = 0;
        self.snapshot_bytes = len;
        let objects = &self.objects;
        let mut deletes = futures::stream::iter(old)
            .map(|k| async move { (objects.delete(&k, None).await, k) })
            .buffer_unordered(DELETES_IN_FLIGHT);
        while let Some((result, key)) = deletes.next().await {
            if let Err(e) = result {
                tracing::debug!(key, error = %e, "could not delete an old state object; it is ignored");
            }
        }
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        let objects = COMPACT_OBJECTS.max(self.snapshot_bytes / COMPACT_BYTES_PER_OBJECT);
        self.written.len() > objects || self.since_bytes >= COMPACT_RATIO * self.snapshot_bytes.max(COMPACT_MIN_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sequence_and_parse_back() {
        let a = object_key("r", 9);
        let b = object_key("r", 10);
        assert!(a < b, "{a} {b}");
        assert_eq!(parse_key(&a), Some(9));
        assert_eq!(parse_key(&b), Some(10));
        assert_eq!(parse_key("runs/r/notes.json"), None);
    }

    /// What one run writes stays linear in its size: a large checkpoint is rewritten
    /// once per as many syncs as it has kilobytes, not once per 512 syncs.
    #[test]
    fn a_large_checkpoint_is_rewritten_after_proportionally_many_small_syncs() {
        let journal = |written: usize, since_bytes: usize, snapshot_bytes: usize| RemoteJournal {
            objects: Arc::new(crate::checkpoint::memory::MemoryObjects::new()),
            location: "memory://state".into(),
            run_id: "r".into(),
            lease: None,
            opts: LeaseOptions::default(),
            next: 1,
            written: vec![String::new(); written],
            since_bytes,
            snapshot_bytes,
            metas: MetaCache::default(),
        };
        // A small run: 512 batches, or four times its checkpoint (at least 256 kB).
        assert!(!journal(512, 1000, 10_000).wants_compaction());
        assert!(journal(513, 1000, 10_000).wants_compaction());
        assert!(journal(2, 1 << 20, 10_000).wants_compaction());
        // A fleet's 5 MB checkpoint: 5,000 small batches.
        assert!(!journal(4_000, 4 << 20, 5 << 20).wants_compaction());
        assert!(journal(5_200, 4 << 20, 5 << 20).wants_compaction());
        assert!(journal(10, 20 << 20, 5 << 20).wants_compaction());
    }

    #[test]
    fn a_stamp_leaves_checkpoints_and_batches_as_they_read() {
        let checkpoint = br#"{"format_version":1,"run_id":"r"}"#;
        let a = stamped(checkpoint, true);
        assert_ne!(a, stamped(checkpoint, true), "each write its own");
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!((v["format_version"].as_u64(), v["run_id"].as_str()), (Some(1), Some("r")));
        assert!(is_checkpoint(&a));
        let batch = b"{\"meta\": {}}\n{\"volume\": {}}\n";
        let b = stamped(batch, false);
        assert!(b.starts_with(batch) && b.ends_with(b"\"}\n"), "{}", String::from_utf8_lossy(&b));
        assert_eq!(b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count(), 3);
        assert!(!is_checkpoint(&b));
    }

    #[test]
    fn checkpoints_and_batches_tell_apart() {
        assert!(is_checkpoint(br#"{"format_version": 1, "run_id": "r"}"#));
        assert!(!is_checkpoint(br#"{"meta": {"format_version": 1}}"#));
        assert!(!is_checkpoint(b"{\"meta\": {}}\n{\"volume\": {}}\n"));
    }
}
