//! The rate limit of the ICMP errors a device sends: one token bucket shared by every worker,
//! like the kernel's global limit (`net.ipv4.icmp_msgs_per_sec`, `net.ipv4.icmp_msgs_burst`).
//!
//! The bucket is a GCRA (the virtual-scheduling form of a token bucket): one atomic word, the
//! time at which the bucket will be full again ("theoretical arrival time"). Taking a token
//! moves it one interval (1 s / rate) later; a token is there while it stays no further than
//! `burst` intervals ahead of now. A worker asks once per error it would send, never per
//! packet: a load and, when a token is there, one compare-and-swap. A refusal writes nothing,
//! so a flood of refused errors does not bounce the cache line between workers. The clock is
//! the caller's (`now`), so tests inject it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// A token bucket shared by threads without a lock. Its rate and burst are given with each
/// request (they follow the settings, which a reload replaces).
#[derive(Debug)]
pub struct TokenBucket {
    /// The clock's origin: times are nanoseconds since it.
    base: Instant,
    /// When the bucket is full again, in nanoseconds since `base` (at or before now: full).
    full_at: AtomicU64,
}

impl TokenBucket {
    /// A full bucket; times are measured from `base` (earlier times count as `base`).
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            full_at: AtomicU64::new(0),
        }
    }

    /// Take a token at `now` from a bucket of `burst` tokens that refills at `rate` tokens a
    /// second (0: unlimited, always true). Returns whether there was one.
    pub fn take(&self, now: Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let interval = (1_000_000_000 / u64::from(rate)).max(1);
        let depth = interval.saturating_mul(u64::from(burst));
        let now =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        let limit = now.saturating_add(depth);
        let mut full_at = self.full_at.load(Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(interval);
            if next > limit {
                if full_at > limit {
                    // Further ahead than this rate and burst allow (they were lowered, and
                    // raised again): an empty bucket, not a longer wait. Rare; a lost race
                    // just leaves it to the next request.
                    let _ = self
                        .full_at
                        .compare_exchange(full_at, limit, Relaxed, Relaxed);
                }
                return false;
            }
            match self
                .full_at
                .compare_exchange_weak(full_at, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn taken(b: &TokenBucket, at: Instant, rate: u32, burst: u32, tries: usize) -> usize {
        (0..tries).filter(|_| b.take(at, rate, burst)).count()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new(t0);
        // The kernel's defaults: 1000 a second, bursts of 50.
        assert_eq!(
            taken(&b, t0, 1000, 50, 200),
            50,
            "a full bucket holds the burst"
        );
        assert_eq!(taken(&b, t0, 1000, 50, 10), 0, "and is empty after it");
        // One token a millisecond.
        let t = t0 + Duration::from_millis(1);
        assert_eq!(taken(&b, t, 1000, 50, 10), 1);
        let t = t + Duration::from_micros(999);
        assert_eq!(
            taken(&b, t, 1000, 50, 10),
            0,
            "not before the interval is over"
        );
        let t = t + Duration::from_micros(1);
        assert_eq!(taken(&b, t, 1000, 50, 10), 1);
        // 20 ms later: 20 tokens.
        let t = t + Duration::from_millis(20);
        assert_eq!(taken(&b, t, 1000, 50, 100), 20);
        // A long pause refills it to the burst, not beyond.
        let t = t + Duration::from_secs(3600);
        assert_eq!(taken(&b, t, 1000, 50, 100), 50);
    }

    #[test]
    fn over_a_second_of_steady_requests_the_rate_holds() {
        let t0 = Instant::now();
        let b = TokenBucket::new(t0);
        // A request every 100 µs (10,000 a second) for one second.
        let sent = (0..10_000)
            .filter(|i| b.take(t0 + Duration::from_micros(100 * i), 1000, 50))
            .count();
        // The burst, and then one a millisecond (the last one at 999.9 ms).
        assert_eq!(sent, 50 + 999);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let b = TokenBucket::new(t0);
        assert_eq!(taken(&b, t0, 0, 1, 10_000), 10_000);
    }

    #[test]
    fn times_before_the_base_count_as_the_base() {
        let t0 = Instant::now();
        let b = TokenBucket::new(t0 + Duration::from_secs(10));
        assert_eq!(taken(&b, t0, 1, 3, 10), 3);
    }

    #[test]
    fn lowering_and_raising_the_rate_does_not_starve_the_bucket() {
        let t0 = Instant::now();
        let b = TokenBucket::new(t0);
        // At 1 a second the bucket's horizon is 50 s ahead once the burst is spent.
        assert_eq!(taken(&b, t0, 1, 50, 100), 50);
        // At 1000 a second it is empty, and refills at the new rate.
        assert_eq!(taken(&b, t0, 1000, 50, 100), 0);
        let t = t0 + Duration::from_millis(10);
        assert_eq!(taken(&b, t, 1000, 50, 100), 10);
    }

    #[test]
    fn threads_share_one_budget() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(TokenBucket::new(t0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || taken(&b, t0, 1000, 50, 1000))
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(
            total, 50,
            "every thread at the same instant: the burst, once"
        );
    }
}
