//! Redis's clock, kept by the node: the time every function of the library runs at.
//!
//! The rules' deadlines must mean the same on every node, so they run on one clock, Redis's.
//! Reading it inside every function (`redis.call('TIME')` and two conversions) cost Redis about
//! 12k instructions a call, a tenth of a drained alert (docs/benchmarks.md). So the node reads
//! `TIME` once at start and then with every heartbeat, keeps its offset from its own monotonic
//! clock, and passes the time it estimates with each call. Nodes then agree to within half a round
//! trip to Redis, where the shortest deadline is seconds; a jump of the node's wall clock changes
//! nothing, and one of Redis's is followed within a heartbeat (forward; the time a node gives
//! never goes back, so a measurement a millisecond lower than the last cannot make an alert's
//! trail say it was done before it started: it waits for the clock to catch up).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use super::connection::Connection;
use crate::store::StoreError;

pub(super) struct RedisClock {
    /// The node's monotonic clock starts here.
    epoch: Instant,
    /// Redis's time less the epoch's, in ms, as last measured.
    offset: AtomicI64,
    /// The latest time given, so none is ever earlier.
    given: AtomicU64,
    /// Tests only: when not 0, the time every call runs at.
    fixed: AtomicU64,
}

impl RedisClock {
    /// Reads Redis's clock for the first time.
    pub(super) async fn read(con: &mut Connection) -> Result<Self, StoreError> {
        let clock = Self {
            epoch: Instant::now(),
            offset: AtomicI64::new(0),
            given: AtomicU64::new(0),
            fixed: AtomicU64::new(0),
        };
        clock.sync(con).await?;
        Ok(clock)
    }

    /// Measures the offset again: `TIME`, taken as read halfway through its round trip.
    pub(super) async fn sync(&self, con: &mut Connection) -> Result<(), StoreError> {
        let before = self.epoch.elapsed();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(con).await?;
        let after = self.epoch.elapsed();
        let midway = ((before + after) / 2).as_millis() as i64;
        let redis_ms = secs * 1000 + micros / 1000;
        self.offset.store(redis_ms - midway, Ordering::Relaxed);
        Ok(())
    }

    /// Redis's time now, in ms.
    pub(super) fn now(&self) -> u64 {
        match self.fixed.load(Ordering::Relaxed) {
            0 => {
                let since = self.epoch.elapsed().as_millis() as i64;
                let now = (since + self.offset.load(Ordering::Relaxed)).max(0) as u64;
                self.given.fetch_max(now, Ordering::Relaxed).max(now)
            }
            fixed => fixed,
        }
    }

    /// Tests only: every call runs at `now`; `None` goes back to Redis's clock.
    pub(super) fn fix(&self, now: Option<u64>) {
        self.fixed.store(now.unwrap_or(0), Ordering::Relaxed);
    }
}
