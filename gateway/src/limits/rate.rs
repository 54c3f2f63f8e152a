//! Rate limiting with the generic cell rate algorithm (GCRA): one `u64` per
//! key (its theoretical arrival time), updated with a compare-and-swap, so a
//! check takes no lock beyond a shard of the key map. Keys are client
//! addresses (IPv6 by /64); the table is capped, and once full, new clients
//! share one overflow bucket: a flood of spoofed sources can neither grow
//! memory without bound nor push out clients that are already known.
//!
//! Why not `governor`: its keyed limiter cannot tell whether a key is already
//! known without inserting it, which the cap policy above needs, and the
//! `Retry-After`/`RateLimit` figures fall out of the same arithmetic here.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `remaining` more requests would be allowed right now.
    Allow {
        /// Requests left in the burst.
        remaining: u32,
    },
    /// Refused; allowed again after `retry_after`.
    Deny {
        /// Wait before the next request is allowed.
        retry_after: Duration,
    },
}

/// A GCRA limiter, keyed (per client) or not (one bucket).
pub struct RateLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// Requests allowed at once.
    burst: u32,
    cells: DashMap<IpAddr, AtomicU64>,
    overflow: AtomicU64,
    max_clients: usize,
    epoch: Instant,
}

impl RateLimiter {
    /// `rps` requests per second with bursts of `burst` (0 = `rps`), keeping at
    /// most `max_clients` keys.
    pub fn new(rps: u32, burst: u32, max_clients: usize) -> Self {
        let rps = rps.max(1);
        Self {
            // At least 1 ns: above 10⁹ requests per second (a setting meant
            // as "no real limit") the quotient would be 0, and a divisor.
            interval: (1_000_000_000 / u64::from(rps)).max(1),
            burst: if burst == 0 { rps } else { burst },
            cells: DashMap::new(),
            overflow: AtomicU64::new(0),
            max_clients,
            epoch: Instant::now(),
        }
    }

    /// Requests allowed at once (the quota of the `RateLimit-Policy` header).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Seconds it takes to refill a whole burst (the policy's window).
    pub fn window_secs(&self) -> u64 {
        (u64::from(self.burst) * self.interval).div_ceil(1_000_000_000).max(1)
    }

    /// Keys tracked now.
    pub fn clients(&self) -> usize {
        self.cells.len()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Checks one request from `key`.
    pub fn check_key(&self, key: IpAddr) -> Verdict {
        let now = self.now();
        if let Some(cell) = self.cells.get(&key) {
            return self.check_cell(&cell, now);
        }
        if self.cells.len() >= self.max_clients {
            return self.check_cell(&self.overflow, now);
        }
        let cell = self.cells.entry(key).or_insert_with(|| AtomicU64::new(0));
        self.check_cell(&cell, now)
    }

    /// Checks one request against the single, unkeyed bucket.
    pub fn check(&self) -> Verdict {
        self.check_cell(&self.overflow, self.now())
    }

    fn check_cell(&self, cell: &AtomicU64, now: u64) -> Verdict {
        let capacity = u64::from(self.burst) * self.interval;
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now) + self.interval;
            let allowed_at = now + capacity;
            if new_tat > allowed_at {
                return Verdict::Deny { retry_after: Duration::from_nanos(new_tat - allowed_at) };
            }
            match cell.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    let remaining = (allowed_at - new_tat) / self.interval;
                    return Verdict::Allow { remaining: u32::try_from(remaining).unwrap_or(u32::MAX) };
                }
                Err(actual) => tat = actual,
            }
        }
    }

    /// Drops keys whose bucket is full again (they behave exactly like
    /// unknown keys), freeing their memory.
    pub fn prune(&self) {
        let now = self.now();
        self.cells.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        self.cells.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn any_rate_a_setting_can_hold_works() {
        for rps in [999_999_999, 1_000_000_001, u32::MAX] {
            let l = RateLimiter::new(rps, 0, 10);
            assert!(matches!(l.check_key(ip("10.0.0.1")), Verdict::Allow { .. }), "{rps}");
            assert!(matches!(l.check(), Verdict::Allow { .. }), "{rps}");
            assert!(l.window_secs() >= 1);
        }
    }

    #[test]
    fn allows_a_burst_then_refuses_with_the_wait() {
        let l = RateLimiter::new(2, 3, 10);
        for left in [2, 1, 0] {
            assert_eq!(l.check_key(ip("10.0.0.1")), Verdict::Allow { remaining: left });
        }
        match l.check_key(ip("10.0.0.1")) {
            Verdict::Deny { retry_after } => assert!(retry_after <= Duration::from_millis(500) && retry_after > Duration::from_millis(400)),
            v => panic!("{v:?}"),
        }
        assert!(matches!(l.check_key(ip("10.0.0.2")), Verdict::Allow { .. }), "another client is unaffected");
    }

    #[test]
    fn refills_at_the_rate() {
        let l = RateLimiter::new(50, 1, 10);
        assert!(matches!(l.check_key(ip("10.0.0.1")), Verdict::Allow { .. }));
        assert!(matches!(l.check_key(ip("10.0.0.1")), Verdict::Deny { .. }));
        std::thread::sleep(Duration::from_millis(25));
        assert!(matches!(l.check_key(ip("10.0.0.1")), Verdict::Allow { .. }));
    }

    #[test]
    fn a_full_table_sends_new_clients_to_the_overflow_bucket() {
        let l = RateLimiter::new(1, 1, 2);
        assert!(matches!(l.check_key(ip("10.0.0.1")), Verdict::Allow { .. }));
        assert!(matches!(l.check_key(ip("10.0.0.2")), Verdict::Allow { .. }));
        // New clients share one bucket: the first gets through, the rest wait.
        assert!(matches!(l.check_key(ip("10.0.0.3")), Verdict::Allow { .. }));
        assert!(matches!(l.check_key(ip("10.0.0.4")), Verdict::Deny { .. }));
        assert_eq!(l.clients(), 2, "the table did not grow");
    }

    #[test]
    fn pruning_forgets_refilled_clients() {
        let l = RateLimiter::new(1000, 1, 100);
        for i in 0..50 {
            l.check_key(IpAddr::from([10, 0, 0, i]));
        }
        assert_eq!(l.clients(), 50);
        std::thread::sleep(Duration::from_millis(5));
        l.prune();
        assert_eq!(l.clients(), 0);
    }
}
