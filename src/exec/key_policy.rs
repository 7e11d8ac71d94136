//! Writing a KMS key policy, the one home of its read-merge-write-verify loop.
//!
//! KMS has no conditional PutKeyPolicy: a write replaces the whole document, and
//! another writer that read the policy before ours can replace it again with a copy
//! lacking our change. So a write is never retried with the document it was made
//! from: every attempt reads the policy again and merges the change into what it
//! reads, and after a write the policy is left to settle, then read back and checked
//! for the change (a grant present, a revoked statement absent). A write whose answer
//! was lost counts as possibly made: the next read tells.

use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError, Loc};
use crate::ids::KeyArn;

use super::retry::{retrying, volume_backoff_ms};

/// How long a key-policy write is left to settle before it is read back, so that a
/// concurrent writer's overlapping read-merge-write shows.
pub const POLICY_SETTLE_MS: i64 = 2_000;
/// Rounds of read, merge, write and read-back before a policy that keeps changing
/// (or keeps refusing writes for throttling) is given up.
const EDIT_ROUNDS: u32 = 6;

/// Why an edit of a key policy did not hold.
#[derive(Debug)]
pub enum EditError {
    /// GetKeyPolicy or PutKeyPolicy failed for good.
    Cloud { call: &'static str, source: CloudError },
    /// The merge refused the policy text (not JSON, a statement it cannot read).
    Merge(String),
    /// The change kept being lost to other writers, or writes kept being throttled.
    KeepsChanging,
}

/// A change to a policy text: the text to put, and whether anything changed (an
/// unchanged result means the policy holds the change already); an error says why the
/// text cannot take it.
pub type Merge<'a> = dyn Fn(&str) -> Result<(String, bool), String> + Send + Sync + 'a;

/// Applies `merge` to the policy of `key` until the policy read back holds it.
/// `merge` takes the current text and returns the text to put and whether anything
/// changed; an unchanged result means the policy already holds the change. Returns
/// whether this call wrote the policy (or may have: a write whose answer was lost).
pub async fn edit(
    cloud: &dyn Cloud,
    clock: &dyn Clock,
    loc: &Loc,
    key: &KeyArn,
    merge: &Merge<'_>,
) -> Result<bool, EditError> {
    let read = || async {
        retrying(clock, || cloud.get_key_policy(loc, key))
            .await
            .map_err(|source| EditError::Cloud { call: "GetKeyPolicy", source })
    };
    let mut wrote = false;
    for round in 1..=EDIT_ROUNDS {
        let current = read().await?;
        let (next, changed) = merge(&current).map_err(EditError::Merge)?;
        if !changed {
            return Ok(wrote);
        }
        // One write of the document just merged; a retry reads and merges again.
        match cloud.put_key_policy(loc, key, &next).await {
            Ok(()) => wrote = true,
            Err(e) if e.is_retryable() => {
                wrote |= !e.outcome_known();
                tracing::warn!(key = %key, round, error = %e, "PutKeyPolicy not confirmed; reading the policy again");
                clock.sleep_until(clock.now_ms() + volume_backoff_ms(round, 0.5)).await;
                continue;
            }
            Err(source) => return Err(EditError::Cloud { call: "PutKeyPolicy", source }),
        }
        clock.sleep_until(clock.now_ms() + POLICY_SETTLE_MS).await;
        let back = read().await?;
        if !merge(&back).map(|(_, c)| c).unwrap_or(true) {
            return Ok(true);
        }
        tracing::warn!(key = %key, round, "the key policy changed under us; merging again");
        clock.sleep_until(clock.now_ms() + 1_000 * i64::from(round)).await;
    }
    Err(EditError::KeepsChanging)
}
