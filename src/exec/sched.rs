//! What the runner does after a call ends badly or a wait runs long: retry, queue,
//! stop the invocation, or fail the volume. One pure place for those decisions (no
//! clock, no I/O: the time and the jitter are passed in), so that the rules of
//! "Recovery never destroys or repeats work" are read and tested here alone.
//!
//! - Throttling, lost connections and server faults are retried with back-off, a
//!   bounded number of times.
//! - A copy refused for the account's copy quota queues behind the copies in flight,
//!   bounded by the copy timeout.
//! - A copy that cannot see a just-shared snapshot yet is asked again a few times.
//! - Expired or invalid credentials stop the invocation and fail no volume.
//! - Anything else fails the volume; what it fails with keeps an unknown outcome
//!   unknown (`in_flight`), so the next invocation looks before it issues again.
//! - A wait is judged against its timeout only after this invocation polled it once,
//!   so a resumed run first learns whether AWS finished meanwhile.

use crate::cloud::{CloudError, ErrorKind};
use crate::engine::{self, Action, Ctx, Outcome, VolumeRun};

use super::retry::volume_backoff_ms;

/// Retries of one volume's action after throttling or a lost connection.
pub const MAX_RETRIES: u32 = 30;
/// How long a copy refused for the copy quota waits before asking again (half of it
/// fixed, half jittered).
pub const QUOTA_WAIT_MS: i64 = 60_000;
/// Retries of a copy whose shared source snapshot is not visible yet (about 30 s).
pub const SHARE_LAG_RETRIES: u32 = 5;
/// How long a snapshot or volume may stay invisible before it counts as gone. New
/// resources can be invisible for a moment (eventual consistency, aws-facts.md).
pub const MISSING_GRACE_MS: i64 = 10 * 60_000;
/// The first lookup after a miss waits this long, doubling per miss.
pub const LOOKUP_SPACING_MS: i64 = 5_000;

/// The runner's schedule of one volume for this invocation; not checkpointed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSched {
    /// Nothing is issued for the volume before this time.
    pub not_before_ms: i64,
    /// When the volume's wait is next polled.
    pub next_poll_ms: i64,
    pub retries: u32,
    pub missing_since_ms: Option<i64>,
    /// Since when copies of this volume have been refused for the copy quota.
    pub quota_since_ms: Option<i64>,
    /// This invocation has polled the volume's current wait at least once.
    pub polled: bool,
}

/// What to do after a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Issue the same action again after the delay.
    Retry { delay_ms: i64 },
    /// The account's copy quota is full: lower this destination's limit to what the
    /// run has in flight and ask again after the delay.
    QueueForQuota { delay_ms: i64 },
    /// The credentials expired or are invalid: stop issuing calls, fail nothing.
    Halt,
    /// The volume fails with this outcome.
    Fail(Outcome),
}

impl VolumeSched {
    /// Decides what follows the error `e` of `action` at `now`. `jitter` is in 0..1.
    /// `explain` words the failure when the decision is to fail.
    pub fn on_error(
        &mut self,
        action: &Action,
        e: &CloudError,
        ctx: &Ctx,
        now: i64,
        jitter: f64,
        explain: impl FnOnce() -> (String, Option<String>),
    ) -> Decision {
        if e.kind == ErrorKind::Credentials {
            return Decision::Halt;
        }
        let is_copy = matches!(action, Action::Copy { .. } | Action::Reencrypt { .. });
        if is_copy && e.kind == ErrorKind::LimitExceeded {
            let since = *self.quota_since_ms.get_or_insert(now);
            if now - since <= ctx.timeouts_ms.copy {
                let delay_ms = QUOTA_WAIT_MS / 2 + (QUOTA_WAIT_MS as f64 / 2.0 * jitter) as i64;
                self.not_before_ms = now + delay_ms;
                return Decision::QueueForQuota { delay_ms };
            }
        }
        // A snapshot just shared can be invisible to the target account for a few
        // seconds (the share propagates).
        let share_lag = matches!(action, Action::Copy { .. } | Action::Lock { .. } | Action::LookUpLock { .. })
            && e.kind == ErrorKind::NotFound
            && self.retries < SHARE_LAG_RETRIES;
        if (e.is_retryable() || share_lag) && self.retries < MAX_RETRIES {
            self.retries += 1;
            let delay_ms = volume_backoff_ms(self.retries, jitter);
            self.not_before_ms = now + delay_ms;
            return Decision::Retry { delay_ms };
        }
        let (message, hint) = explain();
        Decision::Fail(Outcome::Fatal { message, hint })
    }

    /// Adjusts an outcome AWS answered with before the step machine sees it: a
    /// resource invisible past the grace period is gone; a lookup miss spaces the
    /// next lookup.
    pub fn on_outcome(&mut self, v: &VolumeRun, outcome: Outcome, polled: bool, now: i64) -> Outcome {
        self.retries = 0;
        self.quota_since_ms = None;
        if polled {
            self.polled = true;
        }
        let outcome = if outcome == Outcome::Missing {
            let since = *self.missing_since_ms.get_or_insert(now);
            if now - since > MISSING_GRACE_MS { Outcome::Vanished } else { Outcome::Missing }
        } else {
            self.missing_since_ms = None;
            outcome
        };
        if outcome == Outcome::NotFound {
            // Give an eventually consistent listing time to show the resource.
            self.not_before_ms = now + LOOKUP_SPACING_MS * (1 << v.lookups_missed.min(4));
        }
        outcome
    }

    /// True when the volume's wait should be given up now: past its timeout, and
    /// polled at least once by this invocation.
    pub fn wait_given_up(&self, v: &VolumeRun, ctx: &Ctx, now: i64) -> bool {
        self.polled && engine::wait_expired(v, ctx, now)
    }

    /// A new step starts its own wait: it has not been polled yet.
    pub fn step_changed(&mut self) {
        self.polled = false;
        self.missing_since_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Step, TimeoutsMs};
    use crate::ids::{KeyArn, SnapshotId, VolumeId};

    fn ctx() -> Ctx {
        Ctx {
            cross_account: true,
            source_key: KeyArn::parse("arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab")
                .unwrap(),
            create_volume: true,
            cleanup: true,
            keep_source: false,
            timeouts_ms: TimeoutsMs { snapshot: 1_000, copy: 100_000, volume: 500 },
            locks: vec![],
            verify: None,
        }
    }

    fn copy() -> Action {
        Action::Copy { from: SnapshotId::parse("snap-00000000000000001").unwrap() }
    }

    fn err(kind: ErrorKind) -> CloudError {
        CloudError::new(kind, "Code", "message")
    }

    fn explain() -> (String, Option<String>) {
        ("failed".into(), Some("hint".into()))
    }

    #[test]
    fn expired_credentials_halt_and_fail_nothing() {
        let mut s = VolumeSched::default();
        for action in [copy(), Action::CreateSnapshot, Action::LookUpVolume] {
            assert_eq!(s.on_error(&action, &err(ErrorKind::Credentials), &ctx(), 0, 0.5, explain), Decision::Halt);
        }
        assert_eq!(s.retries, 0);
    }

    #[test]
    fn throttling_is_retried_with_growing_delays_then_fails() {
        let mut s = VolumeSched::default();
        let mut last = 0;
        for n in 1..=MAX_RETRIES {
            match s.on_error(&Action::CreateSnapshot, &err(ErrorKind::Throttled), &ctx(), 0, 1.0, explain) {
                Decision::Retry { delay_ms } => {
                    assert!(delay_ms >= last, "retry {n}");
                    last = delay_ms;
                }
                d => panic!("retry {n}: {d:?}"),
            }
        }
        assert!(matches!(
            s.on_error(&Action::CreateSnapshot, &err(ErrorKind::Throttled), &ctx(), 0, 1.0, explain),
            Decision::Fail(Outcome::Fatal { .. })
        ));
    }

    #[test]
    fn the_copy_quota_queues_until_the_copy_timeout() {
        let mut s = VolumeSched::default();
        let d = s.on_error(&copy(), &err(ErrorKind::LimitExceeded), &ctx(), 1_000, 0.0, explain);
        assert_eq!(d, Decision::QueueForQuota { delay_ms: QUOTA_WAIT_MS / 2 });
        assert_eq!(s.not_before_ms, 1_000 + QUOTA_WAIT_MS / 2);
        let d = s.on_error(&copy(), &err(ErrorKind::LimitExceeded), &ctx(), 101_000, 0.0, explain);
        assert!(matches!(d, Decision::QueueForQuota { .. }));
        // Past the copy timeout the quota is an error like any other limit: retried,
        // then fatal.
        let d = s.on_error(&copy(), &err(ErrorKind::LimitExceeded), &ctx(), 101_001, 0.0, explain);
        assert!(matches!(d, Decision::Retry { .. }));
    }

    #[test]
    fn a_copy_that_cannot_see_the_share_is_asked_again_a_few_times() {
        let mut s = VolumeSched::default();
        for _ in 0..SHARE_LAG_RETRIES {
            assert!(matches!(
                s.on_error(&copy(), &err(ErrorKind::NotFound), &ctx(), 0, 0.0, explain),
                Decision::Retry { .. }
            ));
        }
        assert!(matches!(s.on_error(&copy(), &err(ErrorKind::NotFound), &ctx(), 0, 0.0, explain), Decision::Fail(_)));
        let mut s = VolumeSched::default();
        assert!(matches!(
            s.on_error(&Action::CreateSnapshot, &err(ErrorKind::NotFound), &ctx(), 0, 0.0, explain),
            Decision::Fail(_)
        ));
    }

    #[test]
    fn access_denied_fails_at_once_with_the_explanation() {
        let mut s = VolumeSched::default();
        let d = s.on_error(&copy(), &err(ErrorKind::AccessDenied), &ctx(), 0, 0.0, explain);
        assert_eq!(d, Decision::Fail(Outcome::Fatal { message: "failed".into(), hint: Some("hint".into()) }));
    }

    #[test]
    fn a_resource_missing_past_the_grace_period_has_vanished() {
        let v = VolumeRun::new(VolumeId::parse("vol-00000000000000001").unwrap());
        let mut s = VolumeSched::default();
        assert_eq!(s.on_outcome(&v, Outcome::Missing, true, 0), Outcome::Missing);
        assert_eq!(s.on_outcome(&v, Outcome::Missing, true, MISSING_GRACE_MS), Outcome::Missing);
        assert_eq!(s.on_outcome(&v, Outcome::Missing, true, MISSING_GRACE_MS + 1), Outcome::Vanished);
        assert_eq!(s.on_outcome(&v, Outcome::VolumePending, true, MISSING_GRACE_MS + 2), Outcome::VolumePending);
        assert_eq!(s.missing_since_ms, None);
    }

    #[test]
    fn a_wait_is_given_up_only_after_this_invocation_polled_it() {
        let mut v = VolumeRun::new(VolumeId::parse("vol-00000000000000001").unwrap());
        v.step = Step::WaitCopy;
        v.target_snapshot = Some(SnapshotId::parse("snap-00000000000000003").unwrap());
        v.wait_started_ms = Some(0);
        let mut s = VolumeSched::default();
        // Long past the timeout, as after a resume the next day: poll first.
        assert!(!s.wait_given_up(&v, &ctx(), 10_000_000));
        s.on_outcome(&v, Outcome::SnapshotPending { progress: Some(50) }, true, 10_000_000);
        assert!(s.wait_given_up(&v, &ctx(), 10_000_000));
        s.step_changed();
        assert!(!s.wait_given_up(&v, &ctx(), 10_000_000));
    }
}
