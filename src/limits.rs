//! This node's own limits: the publish rate of each key and the number of widget connections.
//! Both refuse with a clear status instead of letting work pile up in memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket per publish key: `rate` alerts a second, in bursts of up to one second's
/// worth. Per node: with N nodes behind a balancer a key gets up to N times the rate.
pub struct PublishRate {
    rate: f64,
    buckets: Mutex<Vec<Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PublishRate {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32, keys: usize) -> Self {
        let full = Bucket {
            tokens: f64::from(rate),
            at: Instant::now(),
        };
        Self {
            rate: f64::from(rate),
            buckets: Mutex::new(vec![full; keys]),
        }
    }

    /// Takes one alert's worth from key `key`, or says how long until there is one.
    pub fn take(&self, key: usize) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

/// Counts this node's widget connections against its maximum.
#[derive(Clone)]
pub struct Connections {
    open: Arc<AtomicU64>,
    max: u64,
}

/// One counted connection; dropping it gives the place back.
pub struct Connection {
    open: Arc<AtomicU64>,
}

impl Connections {
    pub fn new(max: u64) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// A place for one more connection, if the node has one.
    pub fn admit(&self) -> Option<Connection> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| Connection {
            open: self.open.clone(),
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections from each peer address: subscribers of broadcast topics are the public's pages,
/// so one address may hold only so many (`--max-connections-per-ip`).
pub struct PerAddress {
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>>,
    max: u32,
}

/// One counted connection of an address; dropping it gives the place back.
pub struct AddressConnection {
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>>,
    ip: std::net::IpAddr,
}

impl PerAddress {
    /// `max` 0: no limit.
    pub fn new(max: u32) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// A place for one more connection from `ip`, if it has one left.
    pub fn admit(&self, ip: std::net::IpAddr) -> Option<AddressConnection> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressConnection {
            open: self.open.clone(),
            ip,
        })
    }
}

impl Drop for AddressConnection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_connections_and_gets_them_back() {
        let limit = PerAddress::new(2);
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let (a, _b) = (limit.admit(ip).unwrap(), limit.admit(ip).unwrap());
        assert!(limit.admit(ip).is_none());
        assert!(limit.admit("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limit.admit(ip).is_some());
        assert!(
            limit.open.lock().unwrap().len() <= 2,
            "nothing kept for addresses gone"
        );
    }

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let rate = PublishRate::new(3, 2);
        assert!((0..3).all(|_| rate.take(0).is_ok()));
        let wait = rate.take(0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(334));
        assert!(rate.take(1).is_ok(), "keys have their own buckets");
        assert!((0..1000).all(|_| PublishRate::new(0, 1).take(0).is_ok()));
    }

    #[test]
    fn connections_are_counted_and_given_back() {
        let c = Connections::new(2);
        let a = c.admit().unwrap();
        let _b = c.admit().unwrap();
        assert!(c.admit().is_none());
        drop(a);
        assert!(c.admit().is_some());
    }
}
