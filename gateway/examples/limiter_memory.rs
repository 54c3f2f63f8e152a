//! Memory of the per-client rate limiter with 1,000,000 distinct client
//! addresses, with the cap at 1,000,000 (every client tracked) and at the
//! default 100,000 (the rest share the overflow bucket).
//! Run: `cargo run --release -p wakegate --example limiter_memory`.

use std::net::IpAddr;

use wakegate::limits::RateLimiter;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn main() {
    for cap in [1_000_000usize, 100_000] {
        let before = rss_kib();
        let limiter = RateLimiter::new(10, 20, cap);
        for i in 0..1_000_000u32 {
            // Spread over 10.0.0.0/8 so every address is its own key.
            let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            std::hint::black_box(limiter.check_key(ip));
        }
        let after = rss_kib();
        println!(
            "cap {cap:>9}: {} clients tracked, RSS +{:.1} MiB for 1,000,000 distinct clients",
            limiter.clients(),
            (after.saturating_sub(before)) as f64 / 1024.0
        );
        drop(limiter);
    }
}
