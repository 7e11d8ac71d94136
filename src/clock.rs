//! Time for the runner: the wall clock with tokio's timers, or the simulated AWS's
//! virtual clock, which jumps ahead instead of sleeping so that hours of snapshot
//! and copy time pass in milliseconds.

use async_trait::async_trait;

/// The runner's only source of time.
#[async_trait]
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Waits until `now_ms() >= t_ms`.
    async fn sleep_until(&self, t_ms: i64);

    /// True for a virtual clock, which moves only when slept on: the runner then never
    /// sleeps while a call is under way.
    fn is_virtual(&self) -> bool {
        false
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

#[async_trait]
impl Clock for WallClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    async fn sleep_until(&self, t_ms: i64) {
        let wait = t_ms - self.now_ms();
        if wait > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
        }
    }
}
