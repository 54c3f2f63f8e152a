//! The settings schema: flat keys named as the Kubernetes ConfigMap names them
//! (`idle-timeout: "30m"`), typed once here. The embedded TOML `[settings]`
//! table, the ConfigMap and per-solution overrides all go through [`Settings::set`]
//! and [`SolutionSettings::set`], so a value means the same wherever it is written.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::net::{Cidr, parse_cidrs};
use crate::units::{format_duration, parse_duration, parse_size};

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

/// 16 MiB, ingress-nginx's common `proxy-body-size`: enough for documents and
/// images sent to a demo, small enough that a flood of bodies cannot fill memory
/// or disks behind us.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 << 20;
/// 32 KiB of request line + headers, nginx's `large_client_header_buffers 4 8k`.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;
/// 100 header fields: hyper's default, ample for browsers (they send ~20).
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// 8 KiB request target, nginx's limit.
pub const DEFAULT_MAX_URI_LENGTH: u64 = 8 << 10;
/// 15 s to send a request's headers: a slow mobile link needs ~1 s, a slowloris
/// attacker needs them open for minutes.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// 60 s between two reads of a request body (nginx's `client_body_timeout`).
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// 75 s idle keep-alive, nginx's default (longer than most clients' own idle close).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// 300 s for a solution's response headers: AI inference can take minutes,
/// and a held request's wake-up is not counted here.
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// 15 min without a byte either way closes an upgraded connection (WebSocket):
/// longer than nginx's 60 s `proxy_read_timeout` and Envoy's 5 min stream idle
/// timeout, which cut quiet but live sockets, and half the default idle
/// timeout, so a forgotten tab does not keep its solution awake for good.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// 100 concurrent HTTP/2 streams per connection (RFC 9113's recommended minimum).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;
/// 100,000 rate-limited clients tracked per solution (~6 MiB); beyond it new
/// clients share one bucket, so a spoofed flood cannot grow memory or evict
/// established clients.
pub const DEFAULT_RATE_LIMIT_MAX_CLIENTS: u32 = 100_000;

/// 256 requests at once per endpoint: far above what one demo pod serves in
/// parallel, low enough that releasing thousands of held requests after a
/// wake-up neither floods the pod nor opens thousands of connections to it.
pub const DEFAULT_MAX_CONCURRENT: u32 = 256;

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

/// Keys of the TLS/ACME group: stored as written in [`Settings::tls`] and
/// typed by the gateway's TLS module (which depends on crypto crates that
/// `proto` must not), then validated with every other key.
pub const TLS_KEYS: &[Key] = &[
    Key { name: "tls-source", scope: Scope::Global, default: "self-signed", doc: "self-signed, files, acme or off" },
    Key { name: "tls-listen", scope: Scope::Global, default: "127.0.0.1:8443", doc: "the HTTPS listener (restart to change)" },
    Key { name: "tls-dir", scope: Scope::Global, default: "", doc: "where the ACME account and certificate are kept (required for acme)" },
    Key { name: "tls-cert-file", scope: Scope::Global, default: "", doc: "PEM chain, leaf first (tls-source files)" },
    Key { name: "tls-key-file", scope: Scope::Global, default: "", doc: "PEM private key (tls-source files)" },
    Key {
        name: "ssl-redirect",
        scope: Scope::Global,
        default: "auto",
        doc: "308 from http to https: true, false, or auto (on for files/acme, off for self-signed)",
    },
    Key {
        name: "hsts",
        scope: Scope::Global,
        default: "off",
        doc: "Strict-Transport-Security: on (one year), off, or a max-age such as 180d",
    },
    Key { name: "acme-directory", scope: Scope::Global, default: "", doc: "CA directory URL, or letsencrypt / letsencrypt-staging" },
    Key { name: "acme-email", scope: Scope::Global, default: "", doc: "ACME account contact" },
    Key {
        name: "acme-ca-file",
        scope: Scope::Global,
        default: "",
        doc: "PEM root of the CA's own HTTPS certificate (test CAs such as pebble)",
    },
    Key { name: "acme-eab-kid", scope: Scope::Global, default: "", doc: "External Account Binding key id" },
    Key { name: "acme-eab-hmac", scope: Scope::Global, default: "", doc: "External Account Binding HMAC key (base64url)" },
    Key {
        name: "acme-eab-hmac-file",
        scope: Scope::Global,
        default: "",
        doc: "a file holding the EAB HMAC key instead (a mounted Secret, e.g. /var/run/wakegate/acme/eab-hmac)",
    },
    Key { name: "acme-dns-provider", scope: Scope::Global, default: "rfc2136", doc: "rfc2136 or exec" },
    Key { name: "rfc2136-server", scope: Scope::Global, default: "", doc: "host[:port] of the primary nameserver taking dynamic updates" },
    Key { name: "rfc2136-zone", scope: Scope::Global, default: "", doc: "the zone to update (default: the base domain)" },
    Key { name: "rfc2136-tsig-key", scope: Scope::Global, default: "", doc: "TSIG key name" },
    Key { name: "rfc2136-tsig-algorithm", scope: Scope::Global, default: "hmac-sha256", doc: "hmac-sha256, hmac-sha384 or hmac-sha512" },
    Key { name: "rfc2136-tsig-secret", scope: Scope::Global, default: "", doc: "TSIG secret, base64" },
    Key {
        name: "rfc2136-tsig-secret-file",
        scope: Scope::Global,
        default: "",
        doc: "a file holding the TSIG secret instead (a mounted Secret, e.g. /var/run/wakegate/acme/tsig-secret)",
    },
    Key {
        name: "acme-exec-command",
        scope: Scope::Global,
        default: "",
        doc: "run as <cmd> present|cleanup <fqdn> <value> (acme-dns-provider exec)",
    },
    Key {
        name: "acme-propagation-nameservers",
        scope: Scope::Global,
        default: "",
        doc: "ip:port list asked for the TXT record before the CA is told to look (default: the rfc2136 server; list the zone's public secondaries too when that server is a hidden primary; required with exec)",
    },
    Key { name: "acme-propagation-timeout", scope: Scope::Global, default: "2m", doc: "longest wait for those nameservers" },
    Key { name: "acme-propagation-delay", scope: Scope::Global, default: "0", doc: "fixed pause after publishing (slow DNS APIs)" },
];

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
    Key {
        name: "access-log",
        scope: Scope::Global,
        default: "stdout",
        doc: "one JSON line per request: stdout, stderr, off, or the absolute path of a file (reopened when it is rotated)",
    },
    Key {
        name: "access-log-query",
        scope: Scope::Global,
        default: "keep",
        doc: "query strings in the access log's uri and referer: keep, or drop (when they may carry tokens or personal data)",
    },
    Key {
        name: "shutdown-grace",
        scope: Scope::Global,
        default: "30s",
        doc: "on SIGTERM, how long in-flight requests may take to finish (restart to change; in a cluster, with terminationGracePeriodSeconds)",
    },
    Key { name: "reaper-interval", scope: Scope::Global, default: "30s", doc: "how often idle solutions are looked for" },
    Key {
        name: "activity-source",
        scope: Scope::Global,
        default: "gateways",
        doc: "where the cluster scaler reads activity: gateways (every replica's /metrics) or prometheus (prometheus-url)",
    },
    Key {
        name: "prometheus-url",
        scope: Scope::Global,
        default: "",
        doc: "Prometheus scraping the gateways, http or https (e.g. http://prometheus-operated.monitoring:9090); for activity-source prometheus",
    },
    Key {
        name: "prometheus-ca-file",
        scope: Scope::Global,
        default: "",
        doc: "PEM file of the CAs that sign an https prometheus-url's certificate; empty = the system's; read at every reading",
    },
    Key {
        name: "prometheus-cert-file",
        scope: Scope::Global,
        default: "",
        doc: "PEM client certificate (chain) for an https prometheus-url that asks for one (mutual TLS); with prometheus-key-file; read at every reading",
    },
    Key {
        name: "prometheus-key-file",
        scope: Scope::Global,
        default: "",
        doc: "PEM private key of prometheus-cert-file; read at every reading",
    },
    Key {
        name: "prometheus-bearer-token-file",
        scope: Scope::Global,
        default: "",
        doc: "file whose token is sent to Prometheus as a bearer token (e.g. /var/run/secrets/kubernetes.io/serviceaccount/token behind kube-rbac-proxy); read at every reading",
    },
    Key {
        name: "prometheus-username",
        scope: Scope::Global,
        default: "",
        doc: "basic auth user for Prometheus (its web config's basic_auth_users); with prometheus-password-file",
    },
    Key {
        name: "prometheus-password-file",
        scope: Scope::Global,
        default: "",
        doc: "file holding prometheus-username's password; read at every reading",
    },
    Key {
        name: "prometheus-selector",
        scope: Scope::Global,
        default: "",
        doc: "label matchers added to every query, for a Prometheus that scrapes other wakegate installs too (e.g. namespace=\"wakegate\")",
    },
    Key {
        name: "trusted-proxies",
        scope: Scope::Global,
        default: "",
        doc: "CIDRs of proxies whose X-Forwarded-For is believed (right-most untrusted hop is the client)",
    },
    Key {
        name: "proxy-protocol",
        scope: Scope::Global,
        default: "false",
        doc: "expect a PROXY protocol v1/v2 header on every connection (NLB); refuse connections without one",
    },
    Key { name: "limit-connections", scope: Scope::Global, default: "0", doc: "open connections per client address; 0 = unlimited" },
    Key {
        name: "rate-limit-max-clients",
        scope: Scope::Global,
        default: "100000",
        doc: "clients tracked per rate limiter; beyond it new clients share one bucket",
    },
    Key { name: "max-header-size", scope: Scope::Global, default: "32Ki", doc: "request line + headers; larger → 431" },
    Key { name: "max-headers", scope: Scope::Global, default: "100", doc: "header fields per request; more → 431" },
    Key { name: "max-uri-length", scope: Scope::Global, default: "8Ki", doc: "request target length; longer → 414" },
    Key {
        name: "client-header-timeout",
        scope: Scope::Global,
        default: "15s",
        doc: "time to receive a request's headers; slower → 408 and close",
    },
    Key { name: "keepalive-timeout", scope: Scope::Global, default: "75s", doc: "idle time before a keep-alive connection is closed" },
    Key { name: "http2-max-concurrent-streams", scope: Scope::Global, default: "100", doc: "concurrent streams per HTTP/2 connection" },
    Key {
        name: "rate-limit-rps",
        scope: Scope::Solution,
        default: "0",
        doc: "requests per second per client (IPv4 address or IPv6 /64); 0 = unlimited",
    },
    Key {
        name: "rate-limit-burst",
        scope: Scope::Solution,
        default: "0",
        doc: "requests a client may send at once above its rate; 0 = one second's worth",
    },
    Key {
        name: "solution-rate-limit-rps",
        scope: Scope::Solution,
        default: "0",
        doc: "requests per second to the solution from all clients together (per replica); 0 = unlimited",
    },
    Key { name: "max-body-size", scope: Scope::Solution, default: "16Mi", doc: "request body size; larger → 413; 0 = unlimited" },
    Key {
        name: "client-body-timeout",
        scope: Scope::Solution,
        default: "60s",
        doc: "longest pause between two reads of a request body → 408",
    },
    Key {
        name: "upstream-response-timeout",
        scope: Scope::Solution,
        default: "300s",
        doc: "time for a solution to send its response headers → 504",
    },
    Key {
        name: "tunnel-idle-timeout",
        scope: Scope::Solution,
        default: "15m",
        doc: "an upgraded connection (WebSocket) with no bytes either way for this long is closed; an open one keeps its solution awake; 0 = never",
    },
    Key {
        name: "max-concurrent-requests",
        scope: Scope::Solution,
        default: "256",
        doc: "requests forwarded to one endpoint at once; more wait (so a just-woken pod is not flooded); 0 = unlimited",
    },
    Key { name: "wake-replicas", scope: Scope::Solution, default: "1", doc: "replicas a cluster solution is scaled to when it wakes" },
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
    Key {
        name: "upstream-connect-timeout",
        scope: Scope::Solution,
        default: "5s",
        doc: "connect timeout to a solution's endpoint; a ready solution whose endpoints refuse connections this long → 502",
    },
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
    /// Requests per second per client; 0 = unlimited.
    pub rate_limit_rps: u32,
    /// Burst above the rate; 0 = one second's worth.
    pub rate_limit_burst: u32,
    /// Requests per second to the solution from all clients; 0 = unlimited.
    pub solution_rate_limit_rps: u32,
    /// Largest request body in bytes; 0 = unlimited.
    pub max_body_size: u64,
    /// Longest pause while reading a request body.
    pub client_body_timeout: Duration,
    /// Longest wait for a solution's response headers.
    pub upstream_response_timeout: Duration,
    /// An upgraded connection quiet both ways this long is closed; zero = never.
    pub tunnel_idle_timeout: Duration,
    /// Replicas a cluster solution wakes to.
    pub wake_replicas: NonZeroU32,
    /// Requests forwarded to one endpoint at once; 0 = unlimited.
    pub max_concurrent_requests: u32,
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
            rate_limit_rps: 0,
            rate_limit_burst: 0,
            solution_rate_limit_rps: 0,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
            upstream_response_timeout: DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
            tunnel_idle_timeout: DEFAULT_TUNNEL_IDLE_TIMEOUT,
            wake_replicas: NonZeroU32::MIN,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT,
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
            "rate-limit-rps" => self.rate_limit_rps = parse_u32(value)?,
            "rate-limit-burst" => self.rate_limit_burst = parse_u32(value)?,
            "solution-rate-limit-rps" => self.solution_rate_limit_rps = parse_u32(value)?,
            "max-body-size" => self.max_body_size = parse_size(value)?,
            "client-body-timeout" => self.client_body_timeout = positive(parse_duration(value)?)?,
            "upstream-response-timeout" => self.upstream_response_timeout = positive(parse_duration(value)?)?,
            "tunnel-idle-timeout" => self.tunnel_idle_timeout = parse_duration(value)?,
            "wake-replicas" => self.wake_replicas = parse_nonzero(value)?,
            "max-concurrent-requests" => self.max_concurrent_requests = parse_u32(value)?,
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
            ("rate-limit-rps", self.rate_limit_rps.to_string()),
            ("rate-limit-burst", self.rate_limit_burst.to_string()),
            ("solution-rate-limit-rps", self.solution_rate_limit_rps.to_string()),
            ("max-body-size", self.max_body_size.to_string()),
            ("client-body-timeout", format_duration(self.client_body_timeout)),
            ("upstream-response-timeout", format_duration(self.upstream_response_timeout)),
            ("tunnel-idle-timeout", format_duration(self.tunnel_idle_timeout)),
            ("wake-replicas", self.wake_replicas.to_string()),
            ("max-concurrent-requests", self.max_concurrent_requests.to_string()),
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
    /// Where the access log goes.
    pub access_log: AccessLog,
    /// The access log keeps query strings (of the target and the `Referer`).
    pub access_log_query: bool,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Period of the idle check.
    pub reaper_interval: Duration,
    /// Where the cluster scaler reads the gateways' activity.
    pub activity_source: ActivitySource,
    /// Prometheus's query API, for [`ActivitySource::Prometheus`].
    pub prometheus_url: Option<HttpUrl>,
    /// Label matchers scoping those queries to this installation (may be empty).
    pub prometheus_selector: String,
    /// CAs trusted for an https `prometheus_url`; `None`: the system's.
    pub prometheus_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS, with `prometheus_key_file`.
    pub prometheus_cert_file: Option<PathBuf>,
    /// Its private key.
    pub prometheus_key_file: Option<PathBuf>,
    /// Bearer token sent with every query (read at every reading).
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// Basic auth user, with `prometheus_password_file`.
    pub prometheus_username: Option<String>,
    /// Basic auth password (read at every reading).
    pub prometheus_password_file: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Whether every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Open connections per client; 0 = unlimited.
    pub limit_connections: u32,
    /// Clients tracked per rate limiter.
    pub rate_limit_max_clients: NonZeroU32,
    /// Largest request line + headers, bytes.
    pub max_header_size: usize,
    /// Most header fields per request.
    pub max_headers: usize,
    /// Longest request target, bytes.
    pub max_uri_length: usize,
    /// Time to receive a request's headers.
    pub client_header_timeout: Duration,
    /// Idle keep-alive time.
    pub keepalive_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// The TLS/ACME keys as written (see [`TLS_KEYS`]).
    pub tls: std::collections::BTreeMap<String, String>,
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
            access_log: AccessLog::Stdout,
            access_log_query: true,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reaper_interval: DEFAULT_REAPER_INTERVAL,
            activity_source: ActivitySource::Gateways,
            prometheus_url: None,
            prometheus_selector: String::new(),
            prometheus_ca_file: None,
            prometheus_cert_file: None,
            prometheus_key_file: None,
            prometheus_bearer_token_file: None,
            prometheus_username: None,
            prometheus_password_file: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            limit_connections: 0,
            rate_limit_max_clients: NonZeroU32::new(DEFAULT_RATE_LIMIT_MAX_CLIENTS).unwrap_or(NonZeroU32::MIN),
            max_header_size: DEFAULT_MAX_HEADER_SIZE as usize,
            max_headers: DEFAULT_MAX_HEADERS as usize,
            max_uri_length: DEFAULT_MAX_URI_LENGTH as usize,
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            http2_max_concurrent_streams: DEFAULT_H2_MAX_STREAMS,
            tls: std::collections::BTreeMap::new(),
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
        if s.activity_source == ActivitySource::Prometheus && s.prometheus_url.is_none() && errors.is_empty() {
            errors.push(ConfigError::new(format!("{prefix}prometheus-url"), "required when activity-source is prometheus"));
        }
        for (key, reason) in s.prometheus_access_errors() {
            errors.push(ConfigError::new(format!("{prefix}{key}"), reason));
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
            "access-log" => self.access_log = AccessLog::parse(value)?,
            "access-log-query" => {
                self.access_log_query = match value.trim() {
                    "keep" => true,
                    "drop" => false,
                    _ => return Err(format!("expected keep or drop, got {value:?}")),
                }
            }
            "shutdown-grace" => self.shutdown_grace = parse_duration(value)?,
            "reaper-interval" => self.reaper_interval = positive(parse_duration(value)?)?,
            "activity-source" => self.activity_source = ActivitySource::parse(value)?,
            "prometheus-url" => {
                self.prometheus_url = if value.trim().is_empty() { None } else { Some(HttpUrl::parse(value)?) };
            }
            "prometheus-selector" => {
                let v = value.trim();
                if v.contains(['{', '}', '\n']) {
                    return Err(format!("{v:?}: label matchers only, without braces, e.g. namespace=\"wakegate\""));
                }
                self.prometheus_selector = v.to_string();
            }
            "prometheus-ca-file" => self.prometheus_ca_file = parse_path(value)?,
            "prometheus-cert-file" => self.prometheus_cert_file = parse_path(value)?,
            "prometheus-key-file" => self.prometheus_key_file = parse_path(value)?,
            "prometheus-bearer-token-file" => self.prometheus_bearer_token_file = parse_path(value)?,
            "prometheus-password-file" => self.prometheus_password_file = parse_path(value)?,
            "prometheus-username" => {
                let v = value.trim();
                if v.contains(|c: char| c == ':' || c.is_control()) {
                    // Not echoed: "user:password" is the likely mistake.
                    return Err("a basic auth user name has no ':' and no control characters".into());
                }
                self.prometheus_username = Some(v.to_string()).filter(|v| !v.is_empty());
            }
            "trusted-proxies" => self.trusted_proxies = parse_cidrs(value)?,
            "proxy-protocol" => self.proxy_protocol = parse_bool(value)?,
            "limit-connections" => self.limit_connections = parse_u32(value)?,
            "rate-limit-max-clients" => self.rate_limit_max_clients = parse_nonzero(value)?,
            "max-header-size" => self.max_header_size = bounded_size(value, 8192, 1 << 20)?,
            "max-headers" => self.max_headers = bounded_size(value, 8, 10_000)?,
            "max-uri-length" => self.max_uri_length = bounded_size(value, 64, 1 << 20)?,
            "client-header-timeout" => self.client_header_timeout = positive(parse_duration(value)?)?,
            "keepalive-timeout" => self.keepalive_timeout = positive(parse_duration(value)?)?,
            "http2-max-concurrent-streams" => self.http2_max_concurrent_streams = parse_nonzero(value)?.get(),
            _ if TLS_KEYS.iter().any(|k| k.name == key) => {
                self.tls.insert(key.to_string(), value.to_string());
            }
            _ => {
                if !self.solution.set(key, value)? {
                    return Err(unknown_key(key));
                }
            }
        }
        Ok(())
    }
}

impl Settings {
    /// What is wrong with the Prometheus keys taken together, by key (the
    /// scaler, which reads the ConfigMap key by key, checks it too).
    pub fn prometheus_access_errors(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.prometheus_bearer_token_file.is_some() && (self.prometheus_username.is_some() || self.prometheus_password_file.is_some()) {
            errors.push((
                "prometheus-bearer-token-file",
                "set either it or prometheus-username and prometheus-password-file, not both".into(),
            ));
        }
        // Keys that go together: either one alone is refused.
        for ((a, a_set), (b, b_set)) in [
            (
                ("prometheus-username", self.prometheus_username.is_some()),
                ("prometheus-password-file", self.prometheus_password_file.is_some()),
            ),
            (("prometheus-cert-file", self.prometheus_cert_file.is_some()), ("prometheus-key-file", self.prometheus_key_file.is_some())),
        ] {
            match (a_set, b_set) {
                (true, false) => errors.push((b, format!("required with {a}"))),
                (false, true) => errors.push((a, format!("required with {b}"))),
                _ => {}
            }
        }
        let http = self.prometheus_url.as_ref().is_some_and(|u| !u.tls);
        for (key, set) in
            [("prometheus-ca-file", self.prometheus_ca_file.is_some()), ("prometheus-cert-file", self.prometheus_cert_file.is_some())]
        {
            if set && http {
                errors.push((key, "only used with an https prometheus-url".into()));
            }
        }
        errors
    }
}

/// An absolute file path as written; empty means none. The value is not
/// echoed in the reason: a token or password pasted here by mistake would
/// end up in Events and logs.
fn parse_path(value: &str) -> Result<Option<PathBuf>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if !v.starts_with('/') || v.contains(|c: char| c.is_control()) {
        return Err("expected the absolute path of a file mounted into the pod, e.g. /etc/wakegate/prometheus/password".into());
    }
    Ok(Some(PathBuf::from(v)))
}

/// Where the access log's lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// Standard output (the diagnostic log is on standard error), as
    /// ingress-nginx and the nginx image do: what `kubectl logs` collects.
    Stdout,
    /// Standard error, with the diagnostic log.
    Stderr,
    /// Appended to this file, opened again when it is renamed or removed
    /// (logrotate without `copytruncate`).
    File(PathBuf),
}

impl AccessLog {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "off" | "false" => Ok(Self::Off),
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            v if v.starts_with('/') && !v.ends_with('/') && !v.contains(|c: char| c.is_control()) => Ok(Self::File(PathBuf::from(v))),
            _ => Err(format!("expected stdout, stderr, off, or the absolute path of a file, got {value:?}")),
        }
    }
}

/// Where the cluster scaler reads how busy each solution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivitySource {
    /// Every gateway replica's `/metrics`, read directly; one unreadable
    /// replica makes the round scale nothing down.
    Gateways,
    /// The same metrics through Prometheus's query API (`prometheus-url`).
    Prometheus,
}

impl ActivitySource {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "gateways" => Ok(Self::Gateways),
            "prometheus" => Ok(Self::Prometheus),
            _ => Err(format!("expected gateways or prometheus, got {value:?}")),
        }
    }
}

/// An HTTP base URL (`http[s]://host[:port][/path]`), as the scaler's own
/// HTTP client reaches it: no credentials (they have keys of their own), no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`: the connection is TLS, the certificate checked against `host`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets), to connect to.
    pub host: String,
    /// Port; 80 (https: 443) when none is written.
    pub port: u16,
    /// `host:port` as the `Host` field carries it (IPv6 in brackets).
    pub authority: String,
    /// Path prefix without a trailing `/` (empty for the root).
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path]`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        let (tls, rest) = match (v.strip_prefix("http://"), v.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("{v:?}: expected http[s]://host[:port][/path]")),
        };
        // Neither reason echoes the value: what is wrong with it may be a secret.
        if rest.contains('@') {
            return Err("no credentials in the URL; use prometheus-username and prometheus-password-file".into());
        }
        if rest.contains(['?', '#']) {
            return Err("no query or fragment, only http[s]://host[:port][/path]".into());
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (ip, after) = v6.split_once(']').ok_or_else(|| format!("{v:?}: unclosed [ in the host"))?;
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("{v:?}: invalid IPv6 address {ip:?}"));
                }
                (ip, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
            return Err(format!("{v:?}: missing or invalid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{v:?}: invalid port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Self { tls, host: host.to_string(), port, authority: authority.to_string(), path: path.trim_end_matches('/').to_string() })
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

/// The reason for an unknown key, with the nearest known key as a hint.
pub fn unknown_key(key: &str) -> String {
    let best = KEYS.iter().chain(TLS_KEYS).map(|k| (edit_distance(key, k.name), k.name)).min().filter(|(d, _)| *d <= 3);
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

fn parse_u32(value: &str) -> Result<u32, String> {
    value.trim().parse::<u32>().map_err(|_| format!("expected a whole number from 0 to {}, got {value:?}", u32::MAX))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {value:?}")),
    }
}

fn bounded_size(value: &str, min: u64, max: u64) -> Result<usize, String> {
    let n = parse_size(value)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} is out of range ({min} to {max})"));
    }
    usize::try_from(n).map_err(|_| "too large".to_string())
}

/// A timeout that must exist: 1 ms at least (a shorter one is shown, and
/// acts, as none).
fn positive(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_millis(1) { Err("must be at least 1ms".into()) } else { Ok(d) }
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
    fn access_log_destinations() {
        let dest = |v: &str| Settings::from_pairs([("access-log", v)], "").map(|s| s.access_log);
        assert_eq!(dest(" off "), Ok(AccessLog::Off));
        assert_eq!(dest("stderr"), Ok(AccessLog::Stderr));
        assert_eq!(dest("/var/log/wakegate/access.log"), Ok(AccessLog::File("/var/log/wakegate/access.log".into())));
        for bad in ["access.log", "/var/log/", "yes", ""] {
            let errs = dest(bad).unwrap_err();
            assert_eq!(errs[0].key, "access-log");
            assert!(errs[0].reason.contains("stdout, stderr, off"), "{bad:?}: {}", errs[0].reason);
        }
        let query = |v: &str| Settings::from_pairs([("access-log-query", v)], "").map(|s| s.access_log_query);
        assert!(Settings::default().access_log_query);
        assert_eq!((query("drop"), query(" keep ")), (Ok(false), Ok(true)));
        let errs = query("strip").unwrap_err();
        assert_eq!((errs[0].key.as_str(), errs[0].reason.as_str()), ("access-log-query", "expected keep or drop, got \"strip\""));
    }

    #[test]
    fn activity_source_and_prometheus_url() {
        let s = Settings::from_pairs([("activity-source", "prometheus"), ("prometheus-url", "http://prom.monitoring:9090/p/")], "")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.activity_source, ActivitySource::Prometheus);
        let url = s.prometheus_url.expect("prometheus-url was set");
        assert_eq!(
            (url.host.as_str(), url.port, url.authority.as_str(), url.path.as_str()),
            ("prom.monitoring", 9090, "prom.monitoring:9090", "/p")
        );
        assert_eq!(url.to_string(), "http://prom.monitoring:9090/p");
        let v6 = HttpUrl::parse("http://[::1]:9090").expect("an IPv6 URL");
        assert_eq!((v6.host.as_str(), v6.port, v6.authority.as_str(), v6.path.as_str()), ("::1", 9090, "[::1]:9090", ""));
        assert_eq!(HttpUrl::parse("http://prometheus").expect("a URL without a port").port, 80);
        let https = HttpUrl::parse("https://thanos-querier.monitoring/").expect("an https URL");
        assert_eq!((https.tls, https.port, https.path.as_str()), (true, 443, ""));
        assert_eq!(https.to_string(), "https://thanos-querier.monitoring");
        assert!(!url.tls);

        let errs = Settings::from_pairs([("activity-source", "prometheus")], "").unwrap_err();
        assert_eq!((errs[0].key.as_str(), errs[0].reason.as_str()), ("prometheus-url", "required when activity-source is prometheus"));
        for (value, says) in [
            ("ftp://prom:9090", "expected http[s]://"),
            ("prom:9090", "expected http[s]://"),
            ("http://me:pw@prom:9090", "use prometheus-username and prometheus-password-file"),
            ("http://:9090", "invalid host"),
            ("http://prom:0", "invalid port"),
            ("http://prom:x", "invalid port"),
            ("http://[::1:9090", "unclosed"),
            ("http://prom:9090/?q=1", "no query"),
        ] {
            let e = HttpUrl::parse(value).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
        }
        assert!(Settings::from_pairs([("prometheus-selector", "{job=\"x\"}")], "").unwrap_err()[0].reason.contains("without braces"));
        let e = Settings::from_pairs([("activity-source", "kafka")], "").unwrap_err();
        assert!(e[0].reason.contains("expected gateways or prometheus"), "{}", e[0].reason);
    }

    #[test]
    fn prometheus_access_keys() {
        let https = ("prometheus-url", "https://thanos-querier.monitoring:9091");
        let s = Settings::from_pairs(
            [https, ("prometheus-ca-file", " /run/ca.crt "), ("prometheus-username", "wakegate"), ("prometheus-password-file", "/run/pw")],
            "",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.prometheus_ca_file.as_deref(), Some(std::path::Path::new("/run/ca.crt")));
        assert_eq!(s.prometheus_username.as_deref(), Some("wakegate"));
        assert_eq!(s.prometheus_password_file.as_deref(), Some(std::path::Path::new("/run/pw")));
        let s = Settings::from_pairs([https, ("prometheus-bearer-token-file", "/var/run/secrets/kubernetes.io/serviceaccount/token")], "")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.prometheus_bearer_token_file.is_some() && s.prometheus_username.is_none());
        // Empty values are the defaults: nothing.
        let s = Settings::from_pairs([("prometheus-ca-file", ""), ("prometheus-username", " ")], "").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((s.prometheus_ca_file, s.prometheus_username), (None, None));

        let refused = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            Settings::from_pairs(pairs.iter().copied(), "settings.").unwrap_err().into_iter().map(|e| (e.key, e.reason)).collect()
        };
        let e = refused(&[("prometheus-bearer-token-file", "/t"), ("prometheus-username", "u"), ("prometheus-password-file", "/p")]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "settings.prometheus-bearer-token-file");
        assert!(e[0].1.contains("not both"), "{}", e[0].1);
        assert_eq!(
            refused(&[("prometheus-username", "u")])[0],
            ("settings.prometheus-password-file".into(), "required with prometheus-username".into())
        );
        assert_eq!(refused(&[("prometheus-password-file", "/p")])[0].0, "settings.prometheus-username");
        let e = refused(&[("prometheus-url", "http://prom:9090"), ("prometheus-ca-file", "/ca.pem")]);
        assert_eq!(e[0], ("settings.prometheus-ca-file".into(), "only used with an https prometheus-url".into()));
        let e = refused(&[("prometheus-url", "http://prom:9090"), ("prometheus-cert-file", "/c.pem"), ("prometheus-key-file", "/k.pem")]);
        assert_eq!(e[0], ("settings.prometheus-cert-file".into(), "only used with an https prometheus-url".into()));
        assert_eq!(
            refused(&[("prometheus-cert-file", "/c.pem")])[0],
            ("settings.prometheus-key-file".into(), "required with prometheus-cert-file".into())
        );
        assert_eq!(refused(&[("prometheus-key-file", "/k.pem")])[0].0, "settings.prometheus-cert-file");
        // Reasons that may be about a secret do not repeat the value.
        let e = refused(&[("prometheus-username", "wakegate:hunter2")]);
        assert!(e[0].1.contains("no ':'") && !e[0].1.contains("hunter2"), "{}", e[0].1);
        for pasted in ["eyJhbGciOiJSUzI1NiJ9.secret", "/a\nb", "relative/password"] {
            let e = refused(&[("prometheus-bearer-token-file", pasted)]);
            assert!(e[0].1.starts_with("expected the absolute path") && !e[0].1.contains("secret"), "{}", e[0].1);
        }
        let e = HttpUrl::parse("https://me:hunter2@prom:9090").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = HttpUrl::parse("https://prom:9090/?access_token=hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
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
