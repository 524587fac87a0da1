//! Requests per second per API key, in this process: a token bucket per key (`burst` tokens,
//! refilled at `rate` a second). Kept in memory: a limit holds per API process, so with N
//! replicas behind a balancer a key gets up to N times it (the same as a per-node limit of a
//! reverse proxy would give). Written here rather than taken from a crate: it is twenty lines,
//! and the limits are per tenant, changed with the configuration.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

/// Keys remembered at once; beyond it, every bucket starts full again.
const MAX_BUCKETS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A request over the limit: how long until the next one is allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limited {
    pub rate: u32,
    pub burst: u32,
    pub retry_after: Duration,
}

/// The buckets of every key that made a request here (the nil id: requests to an open server).
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    buckets: Arc<Mutex<HashMap<Uuid, Bucket>>>,
}

impl RateLimiter {
    /// Takes a token of `key`'s bucket (`rate` a second, at most `burst` saved), or says how long
    /// until one is there.
    pub fn take(&self, key: Uuid, rate: u32, burst: u32) -> Result<(), Limited> {
        self.take_at(key, rate, burst, Instant::now())
    }

    fn take_at(&self, key: Uuid, rate: u32, burst: u32, now: Instant) -> Result<(), Limited> {
        let (rate_f, burst_f) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.clear();
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst_f,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate_f;
        bucket.tokens = (bucket.tokens + refilled).min(burst_f);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Limited {
            rate,
            burst,
            retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / rate_f),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let limiter = RateLimiter::default();
        let (key, start) = (Uuid::now_v7(), Instant::now());
        for _ in 0..5 {
            assert_eq!(limiter.take_at(key, 10, 5, start), Ok(()));
        }
        let refused = limiter.take_at(key, 10, 5, start).unwrap_err();
        assert_eq!((refused.rate, refused.burst), (10, 5));
        assert!(refused.retry_after > Duration::from_millis(90));
        assert!(refused.retry_after <= Duration::from_millis(100));
        // A tenth of a second refills one token, and only one.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.take_at(key, 10, 5, later), Ok(()));
        assert!(limiter.take_at(key, 10, 5, later).is_err());
        // Another key has its own bucket.
        assert_eq!(limiter.take_at(Uuid::now_v7(), 10, 5, later), Ok(()));
        // Idle for long: full again, never more than the burst.
        let idle = later + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.take_at(key, 10, 5, idle), Ok(()));
        }
        assert!(limiter.take_at(key, 10, 5, idle).is_err());
    }
}
