//! The settings schema: flat keys named as the Kubernetes ConfigMap names them
//! (`idle-timeout: "30m"`), typed once here. The embedded TOML `[settings]`
//! table, the ConfigMap and per-solution overrides all go through [`Settings::set`]
//! and [`SolutionSettings::set`], so a value means the same wherever it is written.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::ConfigError;
use crate::units::{format_duration, parse_duration};

/// Public listener: loopback, so a first run exposes nothing by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Admin listener (metrics, health, status): loopback, never the public port.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `*.localhost` resolves to loopback in curl and browsers: works with no DNS.
pub const DEFAULT_BASE_DOMAIN: &str = "localhost";
/// 30 minutes: the platform's agreed idle period before a solution sleeps.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// 2 minutes: longer than any solution's cold start we know, shorter than
/// typical client timeouts (curl has none, browsers ~5 min).
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);
/// 1000 held requests per solution bounds memory (a few KiB each) under a burst.
pub const DEFAULT_MAX_HELD: u32 = 1000;
/// 60 s for a process to pass its readiness probe before the start counts as failed.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// 10 s between SIGTERM and SIGKILL, like Kubernetes' shorter grace periods.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// 30 s for in-flight requests to finish on shutdown (Kubernetes' default grace).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// 5 s to connect to a solution: loopback and in-cluster connects take microseconds.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// 30 s between idle checks; the embedded reaper also checks at a quarter of the
/// shortest idle timeout, so short test timeouts are honoured promptly.
pub const DEFAULT_REAPER_INTERVAL: Duration = Duration::from_secs(30);

/// Where a key may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only in the global settings.
    Global,
    /// In the global settings (as the default) and per solution.
    Solution,
}

/// One documented settings key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The key as written in TOML and in the ConfigMap.
    pub name: &'static str,
    /// Where it may be written.
    pub scope: Scope,
    /// The default, as written.
    pub default: &'static str,
    /// One line for operators.
    pub doc: &'static str,
}

/// Every key wakegate knows, in documentation order.
pub const KEYS: &[Key] = &[
    Key {
        name: "base-domain",
        scope: Scope::Global,
        default: DEFAULT_BASE_DOMAIN,
        doc: "solutions are served at <name>.<base-domain>; the bare domain shows the catalog",
    },
    Key { name: "listen", scope: Scope::Global, default: DEFAULT_LISTEN, doc: "public HTTP listener (restart to change)" },
    Key {
        name: "admin-listen",
        scope: Scope::Global,
        default: DEFAULT_ADMIN_LISTEN,
        doc: "admin listener: /metrics, /healthz, /readyz, /status (restart to change)",
    },
    Key { name: "workers", scope: Scope::Global, default: "0", doc: "runtime worker threads; 0 = one per core (restart to change)" },
    Key { name: "shutdown-grace", scope: Scope::Global, default: "30s", doc: "on SIGTERM, how long in-flight requests may take to finish" },
    Key { name: "reaper-interval", scope: Scope::Global, default: "30s", doc: "how often idle solutions are looked for" },
    Key {
        name: "idle-timeout",
        scope: Scope::Solution,
        default: "30m",
        doc: "a solution with no request for this long is scaled to zero; 0 = never",
    },
    Key {
        name: "hold-timeout",
        scope: Scope::Solution,
        default: "120s",
        doc: "how long a request is held while its solution wakes, then 503",
    },
    Key {
        name: "max-held-requests",
        scope: Scope::Solution,
        default: "1000",
        doc: "held requests per solution beyond which new ones get 503",
    },
    Key {
        name: "startup-timeout",
        scope: Scope::Solution,
        default: "60s",
        doc: "how long a starting solution may take to pass its readiness probe",
    },
    Key {
        name: "stop-grace",
        scope: Scope::Solution,
        default: "10s",
        doc: "time between SIGTERM and SIGKILL when a process solution is stopped",
    },
    Key { name: "upstream-connect-timeout", scope: Scope::Solution, default: "5s", doc: "connect timeout to a solution's endpoint" },
];

/// Settings that every solution has, and that each may override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolutionSettings {
    /// Scale to zero after this long without a request; zero = never.
    pub idle_timeout: Duration,
    /// Longest a request is held during a wake-up.
    pub hold_timeout: Duration,
    /// Most requests held at once for this solution.
    pub max_held_requests: NonZeroU32,
    /// Longest a start may take to pass readiness.
    pub startup_timeout: Duration,
    /// SIGTERM → SIGKILL grace for process solutions.
    pub stop_grace: Duration,
    /// Connect timeout to an endpoint.
    pub upstream_connect_timeout: Duration,
}

impl Default for SolutionSettings {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            max_held_requests: NonZeroU32::new(DEFAULT_MAX_HELD).unwrap_or(NonZeroU32::MIN),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            upstream_connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        }
    }
}

impl SolutionSettings {
    /// Sets one key from its written value. `Ok(false)` if the key is not a
    /// per-solution key; `Err(reason)` if the value is invalid.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "idle-timeout" => self.idle_timeout = parse_duration(value)?,
            "hold-timeout" => self.hold_timeout = positive(parse_duration(value)?)?,
            "max-held-requests" => self.max_held_requests = parse_nonzero(value)?,
            "startup-timeout" => self.startup_timeout = positive(parse_duration(value)?)?,
            "stop-grace" => self.stop_grace = parse_duration(value)?,
            "upstream-connect-timeout" => self.upstream_connect_timeout = positive(parse_duration(value)?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The effective values as flat key/value pairs (for `/status` and docs).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("idle-timeout", format_duration(self.idle_timeout)),
            ("hold-timeout", format_duration(self.hold_timeout)),
            ("max-held-requests", self.max_held_requests.to_string()),
            ("startup-timeout", format_duration(self.startup_timeout)),
            ("stop-grace", format_duration(self.stop_grace)),
            ("upstream-connect-timeout", format_duration(self.upstream_connect_timeout)),
        ]
    }
}

/// The global settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Solutions live at `<name>.<base_domain>`; lower case, no trailing dot.
    pub base_domain: String,
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Period of the idle check.
    pub reaper_interval: Duration,
    /// Defaults for every solution.
    pub solution: SolutionSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base_domain: DEFAULT_BASE_DOMAIN.into(),
            listen: parse_addr(DEFAULT_LISTEN),
            admin_listen: parse_addr(DEFAULT_ADMIN_LISTEN),
            workers: 0,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reaper_interval: DEFAULT_REAPER_INTERVAL,
            solution: SolutionSettings::default(),
        }
    }
}

impl Settings {
    /// Builds settings from flat key/value pairs (a ConfigMap's `data`, or the
    /// TOML `[settings]` table rendered to strings). Keys are reported as
    /// `<prefix><key>`; every problem is returned, not just the first.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, prefix: &str) -> Result<Settings, Vec<ConfigError>> {
        let mut s = Settings::default();
        let mut errors = Vec::new();
        for (key, value) in pairs {
            if let Err(reason) = s.set(key, value) {
                errors.push(ConfigError::new(format!("{prefix}{key}"), reason));
            }
        }
        if errors.is_empty() { Ok(s) } else { Err(errors) }
    }

    /// Sets one key from its written value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "base-domain" => self.base_domain = parse_domain(value)?,
            "listen" => self.listen = value.trim().parse().map_err(|_| addr_reason(value))?,
            "admin-listen" => self.admin_listen = value.trim().parse().map_err(|_| addr_reason(value))?,
            "workers" => {
                self.workers = value.trim().parse().map_err(|_| format!("invalid number {value:?}"))?;
                if self.workers > 1024 {
                    return Err(format!("{} worker threads is more than any machine needs (max 1024)", self.workers));
                }
            }
            "shutdown-grace" => self.shutdown_grace = parse_duration(value)?,
            "reaper-interval" => self.reaper_interval = positive(parse_duration(value)?)?,
            _ => {
                if !self.solution.set(key, value)? {
                    return Err(unknown_key(key));
                }
            }
        }
        Ok(())
    }
}

/// The reason for an unknown key, with the nearest known key as a hint.
pub fn unknown_key(key: &str) -> String {
    let best = KEYS.iter().map(|k| (edit_distance(key, k.name), k.name)).min().filter(|(d, _)| *d <= 3);
    match best {
        Some((_, name)) => format!("unknown key (did you mean {name:?}?)"),
        None => "unknown key".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() { Err("must be greater than zero".into()) } else { Ok(d) }
}

fn parse_nonzero(value: &str) -> Result<NonZeroU32, String> {
    value.trim().parse::<NonZeroU32>().map_err(|_| format!("expected a whole number from 1 to {}, got {value:?}", u32::MAX))
}

fn addr_reason(value: &str) -> String {
    format!("invalid address {value:?}: expected IP:port, e.g. 127.0.0.1:8080 or [::]:8080")
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Parses and normalises a DNS name: lower case, no trailing dot, valid labels.
pub fn parse_domain(value: &str) -> Result<String, String> {
    let d = value.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err("empty domain".into());
    }
    if d.len() > 253 {
        return Err("domain longer than 253 characters".into());
    }
    for label in d.split('.') {
        if let Err(reason) = check_label(label) {
            return Err(format!("invalid domain {value:?}: {reason}"));
        }
    }
    Ok(d)
}

/// Checks one DNS label (RFC 1123: a-z, 0-9, '-', not at either end, ≤ 63).
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 characters"));
    }
    if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!("label {label:?} may hold only a-z, 0-9 and '-'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} may not start or end with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_match_documented_keys() {
        let mut s = Settings::default();
        for k in KEYS {
            s.set(k.name, k.default).unwrap_or_else(|e| panic!("default of {}: {e}", k.name));
        }
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let errs = Settings::from_pairs(
            [("idle-timeout", "soon"), ("max-held-requests", "0"), ("listen", "nowhere"), ("idel-timeout", "1m")],
            "settings.",
        )
        .unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["settings.idle-timeout", "settings.max-held-requests", "settings.listen", "settings.idel-timeout"]);
        assert!(errs[3].reason.contains("did you mean \"idle-timeout\""), "{}", errs[3].reason);
    }

    #[test]
    fn domains() {
        assert_eq!(parse_domain("AIM.Example.com."), Ok("aim.example.com".into()));
        assert!(parse_domain("bad_domain.com").is_err());
        assert!(parse_domain("a..b").is_err());
        assert!(parse_domain("-a.com").is_err());
    }

    proptest! {
        #[test]
        fn set_never_panics(key in "[a-z-]{0,24}", value in ".{0,32}") {
            let _ = Settings::default().set(&key, &value);
        }
    }
}
