//! Host normalisation on arbitrary UTF-8, with the invariants of
//! `gateway/tests/properties.rs`: no panic; an accepted host is idempotent and
//! has no ASCII upper case, trailing dot or port left.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wakegate::router::normalize_host;

fn has_port(host: &str) -> bool {
    if host.starts_with('[') {
        return host.find(']').is_some_and(|i| i + 1 < host.len());
    }
    host.rsplit_once(':').is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Some(once) = normalize_host(raw) else { return };
    assert_eq!(normalize_host(&once).as_deref(), Some(&*once), "not idempotent on {raw:?}");
    assert!(!once.bytes().any(|b| b.is_ascii_uppercase()), "upper case left: {raw:?} -> {once:?}");
    assert!(!once.ends_with('.'), "trailing dot left: {raw:?} -> {once:?}");
    assert!(!has_port(&once), "port left: {raw:?} -> {once:?}");
});
