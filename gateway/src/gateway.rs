//! The gateway's shared state: the routing table and settings (swapped whole on
//! reload), metrics, upstream pools, and the orchestrator it asks for wake-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use proto::{Config, Settings};
use scaler::Orchestrator;
use scaler::reaper::{ActivitySource, Candidate};

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::router::Routes;
use crate::solution::SolutionRt;
use crate::upstream::Pools;

/// How often [`Gateway::tidy`] runs.
const TIDY_INTERVAL: Duration = Duration::from_secs(10);

/// What the request path needs of the TLS settings (live).
#[derive(Debug, Clone, Default)]
pub struct TlsView {
    /// Redirect plain HTTP to HTTPS.
    pub ssl_redirect: bool,
    /// The `Strict-Transport-Security` value, if on (rendered once, not per response).
    pub hsts: Option<http::HeaderValue>,
    /// The HTTPS port to redirect to.
    pub https_port: u16,
}

/// Everything a request needs.
pub struct Gateway {
    /// TLS behaviour of the request path.
    pub tls: ArcSwap<TlsView>,
    /// Where the HTTPS listener's certificate comes from (none while TLS is off).
    certificates: std::sync::OnceLock<Arc<crate::tls::CertResolver>>,
    routes: ArcSwap<Routes>,
    settings: ArcSwap<Settings>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Idle upstream connections.
    pub pools: Pools,
    orchestrator: Arc<dyn Orchestrator>,
    /// Solutions removed from the configuration while requests to them were
    /// under way, with when they are stopped regardless: the orchestrator
    /// keeps them (their process runs) until those requests end, as nginx's
    /// old workers finish theirs after a reload. Also what serialises
    /// [`Gateway::apply`] with [`Gateway::tidy`].
    retiring: std::sync::Mutex<Vec<(Arc<SolutionRt>, Instant)>>,
    draining: AtomicBool,
    /// One JSON line per request (`access-log`).
    pub access: AccessLog,
}

/// `specs` and those of the solutions still `retiring`.
fn with_retiring(specs: impl Iterator<Item = proto::SolutionSpec>, retiring: &[(Arc<SolutionRt>, Instant)]) -> Vec<proto::SolutionSpec> {
    specs.chain(retiring.iter().map(|(rt, _)| (**rt.spec.load()).clone())).collect()
}

impl Gateway {
    /// A gateway serving `config`.
    pub fn new(config: &Config, orchestrator: Arc<dyn Orchestrator>, metrics: Arc<Metrics>) -> Arc<Self> {
        let gw = Arc::new(Self {
            tls: ArcSwap::from_pointee(TlsView::default()),
            routes: ArcSwap::from_pointee(Routes::new(config.settings.base_domain.clone(), Vec::new())),
            settings: ArcSwap::from_pointee(config.settings.clone()),
            access: AccessLog::new(metrics.access_log_dropped.clone()),
            metrics,
            pools: Pools::default(),
            orchestrator,
            retiring: std::sync::Mutex::default(),
            draining: AtomicBool::new(false),
            certificates: std::sync::OnceLock::new(),
        });
        gw.apply(config);
        gw
    }

    /// Applies a loaded configuration, TLS behaviour included.
    pub fn apply_loaded(&self, loaded: &crate::config::Loaded) {
        self.tls.store(Arc::new(TlsView {
            ssl_redirect: loaded.ssl_redirect,
            hsts: loaded.hsts().and_then(|d| http::HeaderValue::from_str(&format!("max-age={}; includeSubDomains", d.as_secs())).ok()),
            https_port: loaded.tls.listen.port(),
        }));
        self.apply(&loaded.config);
    }

    /// Applies a new configuration to new requests. Requests already under way
    /// keep what they started with; solutions that stay keep their state.
    pub fn apply(&self, config: &Config) {
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.routes.load_full();
        let now = Instant::now();
        for rt in old.list.iter().filter(|rt| !config.solutions.iter().any(|s| *s.name == *rt.name)) {
            if rt.metrics.busy() == 0 {
                tracing::info!(solution = %rt.name, "removed from the configuration: stopped");
                continue;
            }
            tracing::info!(solution = %rt.name, "removed from the configuration: stopped once the requests under way have ended");
            let s = &rt.spec.load().settings;
            retiring.push((rt.clone(), now + s.hold_timeout + s.upstream_response_timeout));
        }
        retiring.retain(|(rt, _)| !config.solutions.iter().any(|s| *s.name == *rt.name));
        self.orchestrator.apply(&with_retiring(config.solutions.iter().cloned(), &retiring));
        let mut list = Vec::with_capacity(config.solutions.len());
        for spec in &config.solutions {
            match old.get(&spec.name) {
                Some(rt) if rt.spec.load().scales() == spec.scales() => {
                    rt.update(spec.clone(), config.settings.rate_limit_max_clients.get());
                    list.push(rt.clone());
                }
                _ => {
                    let Some(handle) = self.orchestrator.handle(&spec.name) else {
                        tracing::error!(solution = %spec.name, "the orchestrator has no handle for this solution");
                        continue;
                    };
                    let metrics = self.metrics.solution(&spec.name);
                    list.push(Arc::new(SolutionRt::new(spec.clone(), handle, metrics, config.settings.rate_limit_max_clients.get())));
                }
            }
        }
        for rt in &old.list {
            if !list.iter().any(|n| Arc::ptr_eq(n, rt)) && !list.iter().any(|n| n.name == rt.name) {
                self.metrics.forget(&rt.metrics);
            }
        }
        self.routes.store(Arc::new(Routes::new(config.settings.base_domain.clone(), list)));
        self.settings.store(Arc::new(config.settings.clone()));
        self.access.set(&config.settings.access_log, config.settings.access_log_query);
        self.pools.prune();
    }

    /// Stops the removed solutions whose requests have ended (or that
    /// outlived their wait).
    fn retire(&self) {
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let before = retiring.len();
        let now = Instant::now();
        retiring.retain(|(rt, until)| rt.metrics.busy() > 0 && now < *until);
        if retiring.len() != before {
            let current = self.routes.load().list.iter().map(|rt| (**rt.spec.load()).clone()).collect::<Vec<_>>();
            self.orchestrator.apply(&with_retiring(current.into_iter(), &retiring));
        }
    }

    /// The current routing table.
    pub fn routes(&self) -> Guard<Arc<Routes>> {
        self.routes.load()
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// The current settings, borrowed (cheaper on the request path).
    pub fn settings_ref(&self) -> Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Periodic housekeeping until `shutdown`: see [`Gateway::tidy`].
    pub async fn tidy_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TIDY_INTERVAL) => self.tidy(),
                _ = crate::server::stopped(&mut shutdown) => return,
            }
        }
    }

    /// Drops refilled rate-limiter entries (and reports how many remain), and
    /// closes idle upstream connections their solution has closed or that
    /// went unused for [`crate::upstream::IDLE_TIMEOUT`].
    pub fn tidy(&self) {
        self.retire();
        self.pools.sweep(TIDY_INTERVAL);
        let mut clients = 0;
        for s in &self.routes.load().list {
            if let Some(l) = &s.limits.load().client {
                l.prune();
                clients += l.clients();
            }
        }
        self.metrics.rate_limiter_clients(clients);
    }

    /// The orchestrator.
    pub fn orchestrator(&self) -> &Arc<dyn Orchestrator> {
        &self.orchestrator
    }

    /// Marks the gateway as shutting down (`/readyz` turns 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether it is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The HTTPS listener serves what `resolver` holds.
    pub fn serve_certificates_from(&self, resolver: Arc<crate::tls::CertResolver>) {
        let _ = self.certificates.set(resolver);
    }

    /// Whether the HTTPS listener has a certificate to serve: until then
    /// (ACME's first order, files not there yet) plain HTTP is not
    /// redirected to a handshake that would fail.
    pub fn certificate_served(&self) -> bool {
        self.certificates.get().is_some_and(|r| r.has_certificate())
    }
}

impl crate::server::Policy for Gateway {
    fn options(&self) -> crate::server::Options {
        let s = self.settings.load();
        crate::server::Options {
            proxy_protocol: s.proxy_protocol,
            limit_connections: s.limit_connections,
            header_timeout: s.client_header_timeout,
            keepalive: s.keepalive_timeout,
            max_header_size: s.max_header_size,
            max_headers: s.max_headers,
            h2_max_streams: s.http2_max_concurrent_streams,
        }
    }

    fn rejected(&self, reason: &'static str, client: std::net::IpAddr, status: u16, rid: Option<&http::HeaderValue>) {
        self.metrics.rejected_unrouted(reason);
        self.access.refused(client, status, reason, rid);
    }

    fn handshake_failed(&self, e: &std::io::Error) {
        self.metrics.tls.handshake_error(e);
    }
}

impl ActivitySource for Gateway {
    fn candidates(&self) -> Vec<Candidate> {
        self.routes.load().list.iter().filter_map(SolutionRt::candidate).collect()
    }

    fn interval(&self) -> Duration {
        self.settings.load().reaper_interval
    }
}
