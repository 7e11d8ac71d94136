//! Bounded, jittered exponential back-off for the runner's own calls, on the run's
//! clock (so simulated runs wait in virtual time).

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;

use crate::clock::Clock;
use crate::cloud::CloudResult;

/// Attempts for one run-level call (preflight, key policy) before it fails.
pub const RUN_CALL_ATTEMPTS: usize = 10;

/// Calls `f` until it succeeds, fails for good, or the attempts run out. Only
/// errors the cloud marks retryable (throttling, limits, lost connections) are
/// retried; anything else is returned at once.
pub async fn retrying<T, F, Fut>(clock: &dyn Clock, mut f: F) -> CloudResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = CloudResult<T>>,
{
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_max_times(RUN_CALL_ATTEMPTS - 1)
        .with_jitter()
        .build();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => match delays.next() {
                Some(d) => clock.sleep_until(clock.now_ms() + d.as_millis() as i64).await,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// The delay before the `n`th retry of a volume's action (n from 1): exponential
/// from 1 s to a cap, with the jitter fraction `jitter` in 0..1 supplied by the
/// caller so the step machine's schedule stays reproducible.
pub fn volume_backoff_ms(n: u32, jitter: f64) -> i64 {
    const BASE_MS: i64 = 1_000;
    const CAP_MS: i64 = 60_000;
    let exp = BASE_MS.saturating_mul(1i64 << n.min(16).saturating_sub(1)).min(CAP_MS);
    // Full jitter over the upper half keeps retries of many volumes apart.
    exp / 2 + ((exp / 2) as f64 * jitter) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_backoff_grows_and_is_capped() {
        assert_eq!(volume_backoff_ms(1, 0.0), 500);
        assert_eq!(volume_backoff_ms(1, 1.0), 1000);
        assert_eq!(volume_backoff_ms(3, 1.0), 4000);
        assert_eq!(volume_backoff_ms(30, 1.0), 60_000);
        assert!(volume_backoff_ms(30, 0.0) >= 30_000);
    }
}
