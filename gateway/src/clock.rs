//! Coarse clocks, for timestamps taken on every request where a few
//! milliseconds do not matter: a connection's last activity (keep-alive and
//! request-head timeouts are seconds) and a solution's last request (idle
//! scale-down is minutes). The kernel's `CLOCK_*_COARSE` clocks are read
//! from memory, without the `rdtsc` of `Instant::now()` (≈ 30 ns each on
//! this project's virtual machines, several times per request); they lag by
//! at most one scheduler tick (1–4 ms).

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// Monotonic time since an arbitrary start (`Instant`'s clock, a tick late).
pub fn monotonic() -> Duration {
    read(ClockId::CLOCK_MONOTONIC_COARSE, ClockId::CLOCK_MONOTONIC)
}

/// Time since the Unix epoch.
pub fn unix() -> Duration {
    read(ClockId::CLOCK_REALTIME_COARSE, ClockId::CLOCK_REALTIME)
}

/// `coarse`, or `precise` where the kernel has no coarse clock (Linux has
/// had them since 2.6.32).
fn read(coarse: ClockId, precise: ClockId) -> Duration {
    match clock_gettime(coarse).or_else(|_| clock_gettime(precise)) {
        Ok(t) => Duration::new(u64::try_from(t.tv_sec()).unwrap_or(0), u32::try_from(t.tv_nsec()).unwrap_or(0)),
        Err(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn the_coarse_clocks_follow_the_precise_ones_within_a_tick() {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let coarse = unix();
        assert!(coarse <= wall + Duration::from_millis(1) && wall - coarse < Duration::from_millis(50), "{coarse:?} vs {wall:?}");
        let (start, t0) = (Instant::now(), monotonic());
        std::thread::sleep(Duration::from_millis(30));
        let passed = monotonic().saturating_sub(t0);
        let real = start.elapsed();
        assert!(passed > Duration::from_millis(15) && passed < real + Duration::from_millis(20), "{passed:?} vs {real:?}");
    }
}
