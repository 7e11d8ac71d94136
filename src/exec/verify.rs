//! Verifies one copy against its source snapshot through the EBS direct APIs: each
//! side listed with its own credentials, page by page, merged in block index order and
//! fed to the pure [`crate::verify::Comparison`]; checksums read only where it asks.
//! Memory holds one page per side, whatever the volume's size. Requests are paced
//! below the EBS direct API rates, per side (one account), across every copy verified
//! at once, and throttled requests are retried.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cloud::{Cloud, CloudError, CloudResult, ErrorKind, Loc, Side};
use crate::ids::SnapshotId;
use crate::verify::{Comparison, Level, Presence, Record, sample_ranks};

/// Blocks per ListSnapshotBlocks page (the API allows 100 to 10,000).
pub const PAGE: u32 = 10_000;

/// GetSnapshotBlock per second per account snapferry stays under: 80% of AWS's 1,000.
pub const GETS_PER_SECOND: u32 = 800;
/// ListSnapshotBlocks per second per account: 80% of AWS's 50.
pub const LISTS_PER_SECOND: u32 = 40;

/// Throttled or unanswered requests are sent again this many times before the
/// verification gives up (and the volume fails, resumable).
const ATTEMPTS: u32 = 6;

/// Spaces requests per side and kind so each account stays below the API rates.
#[derive(Debug, Default)]
pub struct Pacer {
    next: Mutex<HashMap<(Side, bool), Instant>>,
}

impl Pacer {
    async fn wait(&self, side: Side, list: bool) {
        let gap = Duration::from_secs(1) / if list { LISTS_PER_SECOND } else { GETS_PER_SECOND };
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.get(&(side, list)).copied().filter(|t| *t > now).unwrap_or(now);
            next.insert((side, list), slot + gap);
            slot
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// One side of a comparison: its listing, a page at a time.
struct Listing<'a> {
    cloud: &'a dyn Cloud,
    pacer: Option<&'a Pacer>,
    loc: &'a Loc,
    id: &'a SnapshotId,
    page: VecDeque<(u64, String)>,
    next_token: Option<String>,
    started: bool,
    /// The last block taken, to list again from after it when a page token expired.
    last: Option<u64>,
    size: (i64, u32),
    requests: u64,
}

impl<'a> Listing<'a> {
    fn new(cloud: &'a dyn Cloud, pacer: Option<&'a Pacer>, loc: &'a Loc, id: &'a SnapshotId) -> Self {
        Listing {
            cloud,
            pacer,
            loc,
            id,
            page: VecDeque::new(),
            next_token: None,
            started: false,
            last: None,
            size: (0, 0),
            requests: 0,
        }
    }

    async fn pace(&self, list: bool) {
        if let Some(p) = self.pacer {
            p.wait(self.loc.side, list).await;
        }
    }

    /// The next listed block's index, fetching a page when needed.
    async fn peek(&mut self) -> CloudResult<Option<u64>> {
        while self.page.is_empty() && (!self.started || self.next_token.is_some()) {
            let mut attempt = 0;
            let page = loop {
                self.pace(true).await;
                self.requests += 1;
                let start = if self.next_token.is_none() { self.last.map(|l| l + 1) } else { None };
                match self.cloud.list_snapshot_blocks(self.loc, self.id, start, self.next_token.as_deref(), PAGE).await
                {
                    Ok(p) => break p,
                    // A page token lives an hour: list again from the last block taken.
                    Err(e) if e.kind == ErrorKind::Invalid && self.next_token.is_some() => self.next_token = None,
                    Err(e) if retryable(&e) && attempt + 1 < ATTEMPTS => backoff(&mut attempt).await,
                    Err(e) => return Err(e),
                }
            };
            self.started = true;
            self.size = (page.volume_size_gib, page.block_size);
            self.next_token = page.next_token;
            let last = self.last;
            self.page.extend(page.blocks.into_iter().filter(|(i, _)| last.is_none_or(|l| *i > l)));
        }
        Ok(self.page.front().map(|(i, _)| *i))
    }

    fn take(&mut self) -> Option<(u64, String)> {
        let b = self.page.pop_front();
        if let Some((i, _)) = &b {
            self.last = Some(*i);
        }
        b
    }

    async fn checksum(&mut self, index: u64, token: &str) -> CloudResult<String> {
        let mut attempt = 0;
        loop {
            self.pace(false).await;
            self.requests += 1;
            match self.cloud.get_snapshot_block(self.loc, self.id, index, token).await {
                Ok(b) => return Ok(b.checksum),
                Err(e) if retryable(&e) && attempt + 1 < ATTEMPTS => backoff(&mut attempt).await,
                Err(e) => return Err(e),
            }
        }
    }
}

fn retryable(e: &CloudError) -> bool {
    matches!(e.kind, ErrorKind::Throttled | ErrorKind::Transport)
}

async fn backoff(attempt: &mut u32) {
    let ms = 50u64 << (*attempt).min(6);
    *attempt += 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// What is compared: the source snapshot (read on the source side) and the copy.
pub struct Pair<'a> {
    pub source: (&'a Loc, &'a SnapshotId),
    pub copy: (&'a Loc, &'a SnapshotId),
}

/// Counts the blocks written on either side, for the sample's ranks.
async fn count_union(a: &mut Listing<'_>, b: &mut Listing<'_>) -> CloudResult<u64> {
    let mut n = 0;
    loop {
        let (x, y) = (a.peek().await?, b.peek().await?);
        match (x, y) {
            (None, None) => return Ok(n),
            (Some(i), Some(j)) if i == j => {
                a.take();
                b.take();
            }
            (Some(i), Some(j)) if i < j => {
                a.take();
            }
            (Some(_), None) => {
                a.take();
            }
            _ => {
                b.take();
            }
        }
        n += 1;
    }
}

/// Compares `pair` at `level` (`sample` blocks drawn from `seed`); an error is a
/// verification that could not run, not a mismatch.
pub async fn verify_copy(
    cloud: &dyn Cloud,
    pacer: Option<&Pacer>,
    pair: Pair<'_>,
    level: Level,
    sample: u32,
    seed: u64,
) -> CloudResult<Record> {
    let started = Instant::now();
    let mut extra_requests = (0, 0);
    let ranks = if level == Level::Sample {
        let mut a = Listing::new(cloud, pacer, pair.source.0, pair.source.1);
        let mut b = Listing::new(cloud, pacer, pair.copy.0, pair.copy.1);
        let written = count_union(&mut a, &mut b).await?;
        extra_requests = (a.requests, b.requests);
        sample_ranks(seed, sample, written)
    } else {
        Default::default()
    };
    let mut a = Listing::new(cloud, pacer, pair.source.0, pair.source.1);
    let mut b = Listing::new(cloud, pacer, pair.copy.0, pair.copy.1);
    let mut c = Comparison::new(level, ranks);
    a.peek().await?;
    b.peek().await?;
    c.sizes(a.size, b.size);
    while !c.differs() {
        let (x, y) = (a.peek().await?, b.peek().await?);
        let (index, presence) = match (x, y) {
            (None, None) => break,
            (Some(i), Some(j)) if i == j => (i, Presence::Both),
            (Some(i), Some(j)) if i < j => (i, Presence::SourceOnly),
            (Some(i), None) => (i, Presence::SourceOnly),
            (_, Some(j)) => (j, Presence::CopyOnly),
        };
        let need = c.need(presence);
        let sa = match presence {
            Presence::CopyOnly => None,
            _ => a.take(),
        };
        let sb = match presence {
            Presence::SourceOnly => None,
            _ => b.take(),
        };
        let source_sum = match (&sa, need.source) {
            (Some((i, t)), true) => Some(a.checksum(*i, t).await?),
            _ => None,
        };
        let copy_sum = match (&sb, need.copy) {
            (Some((i, t)), true) => Some(b.checksum(*i, t).await?),
            _ => None,
        };
        c.record(index, presence, source_sum.as_deref(), copy_sum.as_deref());
    }
    let verdict = c.finish();
    Ok(Record {
        level,
        result: if verdict.matched() { "matched" } else { "failed" }.to_owned(),
        source_snapshot: pair.source.1.to_string(),
        copy_snapshot: pair.copy.1.to_string(),
        sample_seed: (level == Level::Sample).then_some(seed),
        sample_size: (level == Level::Sample).then_some(sample),
        blocks_compared: verdict.blocks_compared,
        first_mismatch: verdict.first_mismatch,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        source_requests: a.requests + extra_requests.0,
        copy_requests: b.requests + extra_requests.1,
        source_digest: verdict.source_digest,
        copy_digest: verdict.copy_digest,
    })
}

/// Where one side of a verified copy is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Place {
    pub snapshot: String,
    pub region: String,
    pub account: Option<String>,
}

/// One copy of a finished run, verified (or why it could not be): the evidence file's
/// entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Evidence {
    pub source_volume: String,
    pub source: Place,
    pub copy: Place,
    /// What the comparison found; `null` when it could not run.
    pub verify: Option<Record>,
    /// Why the copy could not be verified (the source snapshot gone, no permission).
    pub error: Option<String>,
}

impl Evidence {
    pub fn matched(&self) -> bool {
        self.verify.as_ref().is_some_and(Record::matched)
    }

    pub fn differs(&self) -> bool {
        self.verify.as_ref().is_some_and(|r| !r.matched())
    }
}

/// Verifies every completed copy of `run` whose source snapshot still exists, tags each
/// copy with the result, and returns one entry per copy. `seed` varies the samples;
/// each copy's own seed is in its record.
pub async fn verify_run(
    cloud: &dyn Cloud,
    run: &crate::checkpoint::RunRecord,
    level: Level,
    sample: u32,
    seed: u64,
    paced: bool,
) -> Vec<Evidence> {
    let pacer = Pacer::default();
    let pacer = paced.then_some(&pacer);
    let targets = run.meta.targets();
    let mut out = vec![];
    for v in &run.volumes {
        let (Some(source), Some(copy)) = (v.shared_snapshot(), v.target_snapshot.as_ref()) else { continue };
        let failed_verify = v.failure.as_ref().is_some_and(|f| f.step == crate::engine::Step::Verify);
        if !(v.step == crate::engine::Step::Done || v.copy_complete() || failed_verify) {
            continue;
        }
        let t = targets.get(usize::from(v.target));
        let copy_region = t.map(|t| t.region.clone());
        let mut e = Evidence {
            source_volume: v.source_volume.to_string(),
            source: Place {
                snapshot: source.to_string(),
                region: run.meta.source_region.to_string(),
                account: run.meta.source_account.as_ref().map(|a| a.to_string()),
            },
            copy: Place {
                snapshot: copy.to_string(),
                region: t.map(|t| t.region.to_string()).unwrap_or_default(),
                account: t.and_then(|t| t.account.as_ref().map(|a| a.to_string())),
            },
            verify: None,
            error: None,
        };
        let Some(cr) = &copy_region else {
            e.error = Some("the checkpoint names no valid region for this copy".to_owned());
            out.push(e);
            continue;
        };
        let src = Loc::new(Side::Source, &run.meta.source_region);
        let dst = Loc::new(Side::Target(v.target), cr);
        let result = async {
            let found = cloud.describe_snapshots(&src, std::slice::from_ref(source)).await?;
            if found.is_empty() {
                return Err(CloudError::new(
                    ErrorKind::NotFound,
                    "InvalidSnapshot.NotFound",
                    format!(
                        "source snapshot {source} is gone (cleanup deleted it); keep source snapshots with options.keep_source to verify later"
                    ),
                ));
            }
            let own_seed = crate::verify::seed_for(&[&seed.to_string(), copy.as_str()]);
            let pair = Pair { source: (&src, source), copy: (&dst, copy) };
            let record = verify_copy(cloud, pacer, pair, level, sample, own_seed).await?;
            let tag = std::collections::BTreeMap::from([(crate::tags::TAG_VERIFY.to_owned(), record.tag())]);
            cloud.tag_snapshot(&dst, copy, &tag).await?;
            Ok(record)
        }
        .await;
        match result {
            Ok(r) => e.verify = Some(r),
            Err(err) => e.error = Some(format!("could not verify copy {copy} against {source}: {err}")),
        }
        out.push(e);
    }
    out
}
