//! When to renew, and the loop that does it.
//!
//! The schedule is a pure function of the stored certificate (so it survives
//! restarts) and, when the CA offers ACME Renewal Information (RFC 9773), of
//! the window it suggests: a uniformly random moment in the window, chosen
//! once per certificate; without ARI, two thirds into the certificate's
//! lifetime (day 60 of Let's Encrypt's 90). Failures are retried with
//! exponential backoff from 1 minute, doubling to 6 hours, jittered: never a
//! tight loop against a CA that rate-limits.
//!
//! [`Renewer::tick`] is one pass (load what the store holds, serve it if it
//! is new, obtain if due); [`Renewer::run`] repeats it until shutdown.
//!
//! A renewal can also be forced, the way cert-manager users run `cmctl
//! renew`: [`RenewHandle::request`] (the admin listener's `POST /tls/renew`)
//! wakes the loop, and its next pass orders a certificate even if the current
//! one is not due. The request stands until an order succeeds; a failed one is
//! retried with the usual backoff, never in a tight loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use crate::server::stopped;
use crate::tls::acme::{Acme, AcmeError, Issued};
use crate::tls::certkey::{CertBundle, CertInfo};
use crate::tls::metrics::TlsMetrics;
use crate::tls::resolver::CertResolver;

/// First retry after a failed order: a minute is long enough for a transient
/// DNS or network problem to clear, short enough not to leave a gap unnoticed.
pub const RETRY_MIN: Duration = Duration::from_secs(60);
/// Retries never wait longer than 6 hours: with 30 days of margin (a third
/// of 90), that is still over a hundred attempts before expiry.
pub const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// The loop looks again at least hourly: another replica may have renewed,
/// the wall clock may have jumped, the machine may have slept.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Bounds on how often the renewal window is fetched again, whatever the
/// CA's Retry-After says (RFC 9773 suggests hours).
pub const ARI_RECHECK_MIN: Duration = Duration::from_secs(3600);
/// See [`ARI_RECHECK_MIN`].
pub const ARI_RECHECK_MAX: Duration = Duration::from_secs(24 * 3600);

/// A renewal window suggested by the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AriWindow {
    /// Earliest suggested renewal time.
    pub start: SystemTime,
    /// Latest suggested renewal time.
    pub end: SystemTime,
}

/// What to do now about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Order a certificate now.
    Obtain(Why),
    /// Nothing to do before this time.
    WaitUntil(SystemTime),
}

/// Why a certificate is to be ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// None is stored (or the stored one is unusable or for other names).
    Missing,
    /// The stored one has expired.
    Expired,
    /// Its renewal time has come.
    Due,
    /// An operator asked for a new one ([`RenewHandle::request`]).
    Requested,
}

/// When to renew a certificate valid from `cert.not_before` to
/// `cert.not_after`: the moment `jitter` (0..=1) into the CA's window if it
/// gave a sane one (non-empty, ending before expiry), else two thirds into
/// the lifetime.
pub fn renew_at(cert: &CertInfo, ari: Option<AriWindow>, jitter: f64) -> SystemTime {
    let sane = ari.filter(|w| w.start <= w.end && w.end <= cert.not_after);
    if let Some(w) = sane {
        let span = w.end.duration_since(w.start).unwrap_or_default();
        return w.start + span.mul_f64(unit(jitter));
    }
    cert.not_before + cert.lifetime().mul_f64(2.0 / 3.0)
}

/// The decision at `now` for the stored certificate `cert` (if any).
pub fn decide(now: SystemTime, cert: Option<&CertInfo>, ari: Option<AriWindow>, jitter: f64) -> Decision {
    let Some(cert) = cert else { return Decision::Obtain(Why::Missing) };
    if now >= cert.not_after {
        return Decision::Obtain(Why::Expired);
    }
    let at = renew_at(cert, ari, jitter);
    if now >= at { Decision::Obtain(Why::Due) } else { Decision::WaitUntil(at) }
}

/// The wait after the `failures`-th consecutive failure (1 = the first):
/// [`RETRY_MIN`] doubling up to [`RETRY_MAX`], scaled by 0.75..=1.25
/// according to `jitter` (0..=1) so replicas and restarts spread out.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX);
    base.mul_f64(0.75 + 0.5 * unit(jitter)).min(RETRY_MAX)
}

/// `jitter` forced into 0..=1 (NaN counts as the middle).
fn unit(jitter: f64) -> f64 {
    if jitter.is_nan() { 0.5 } else { jitter.clamp(0.0, 1.0) }
}

/// What one [`Renewer::tick`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The certificate served is current; nothing was ordered.
    Current,
    /// A certificate found in the store (restart, or another replica's
    /// renewal) is now served.
    Loaded,
    /// A new certificate was obtained and is now served.
    Obtained(Box<Issued>),
    /// The order failed; the previous certificate (if any) is still served.
    Failed(AcmeError),
}

/// The result of one pass: what happened and how long to wait.
#[derive(Debug)]
pub struct Tick {
    /// What happened.
    pub outcome: Outcome,
    /// Wait this long before the next pass.
    pub next: Duration,
}

/// Asks a [`Renewer`] for a new certificate now; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RenewHandle {
    shared: Arc<Requests>,
}

#[derive(Debug, Default)]
struct Requests {
    /// Renewals requested so far (a generation number).
    requested: AtomicU64,
    /// Wakes the run loop out of its sleep (a permit is kept if it is busy).
    wake: Notify,
}

/// Longest wait at shutdown for a renewer to remove the challenge records of
/// an order it abandons (DNS updates take milliseconds; a provider's hook
/// may take longer).
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// Keeps the served certificate obtained and renewed.
pub struct Renewer {
    acme: Arc<Acme>,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    failures: u32,
    served: Option<Vec<u8>>,
    jitter: f64,
    ari: Option<(Option<AriWindow>, SystemTime)>,
    requests: Arc<Requests>,
    /// The request generation the last successful order answered.
    satisfied: u64,
    /// The request generation the last pass saw.
    seen: u64,
    /// A certificate issued but not saved yet (see [`Issued::unsaved`]).
    unsaved: Option<(CertBundle, CertInfo)>,
    /// What [`Self::run`] is stopped by: an order under way is abandoned
    /// when it turns true.
    stop: Option<watch::Receiver<bool>>,
}

/// The handle of the process's running renewer, for the admin listener.
static REGISTERED: Mutex<Option<RenewHandle>> = Mutex::new(None);

/// Makes `handle` the one [`registered`] returns (the latest wins).
pub fn register(handle: RenewHandle) {
    *REGISTERED.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
}

/// Forgets the renewer whose requests are `shared`, if it is the one
/// registered (it stopped: another replica renews now, or none).
fn unregister(shared: &Arc<Requests>) {
    let mut slot = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_some_and(|h| Arc::ptr_eq(&h.shared, shared)) {
        *slot = None;
    }
}

/// The handle of the renewer this process runs, if the source is ACME.
pub fn registered() -> Option<RenewHandle> {
    REGISTERED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

// === impl RenewHandle ===

impl RenewHandle {
    /// Asks for a new certificate: the renewer's next pass (started at once
    /// if it is sleeping, else right after the current one) orders one even
    /// if the current certificate is not due.
    pub fn request(&self) {
        self.shared.requested.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

// === impl Renewer ===

impl Renewer {
    /// A renewer serving through `resolver`, reporting to `metrics`.
    pub fn new(acme: Arc<Acme>, resolver: Arc<CertResolver>, metrics: TlsMetrics) -> Self {
        metrics.orders_from_zero();
        Self {
            acme,
            resolver,
            metrics,
            failures: 0,
            served: None,
            jitter: fastrand::f64(),
            ari: None,
            requests: Arc::default(),
            satisfied: 0,
            seen: 0,
            unsaved: None,
            stop: None,
        }
    }

    /// A handle that forces a renewal ([`RenewHandle::request`]).
    pub fn handle(&self) -> RenewHandle {
        RenewHandle { shared: self.requests.clone() }
    }

    /// Runs [`Self::tick`] until `shutdown` turns true; a
    /// [`RenewHandle::request`] the last pass did not see cuts the wait short
    /// (one it saw is already ordered, or retried after the backoff).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let requests = self.requests.clone();
        self.stop = Some(shutdown.clone());
        loop {
            let tick = self.tick(SystemTime::now()).await;
            let until = tokio::time::Instant::now() + tick.next;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = requests.wake.notified() => {
                        if requests.requested.load(Ordering::SeqCst) > self.seen {
                            break;
                        }
                    }
                    _ = stopped(&mut shutdown) => {
                        // Another replica renews from now on (or none, at
                        // shutdown): no plan of this one's may linger, and
                        // `POST /tls/renew` no longer reaches it.
                        self.metrics.forget_renewal(&self.acme.config().base);
                        unregister(&self.requests);
                        return;
                    }
                }
            }
        }
    }

    /// One pass at wall-clock time `now`.
    pub async fn tick(&mut self, now: SystemTime) -> Tick {
        self.acme.remove_leftovers().await;
        if let Some((bundle, _)) = &self.unsaved {
            match self.acme.store().save_cert(bundle).await {
                Ok(()) => {
                    tracing::info!("saved the certificate issued earlier");
                    self.unsaved = None;
                }
                Err(e) => tracing::warn!("still cannot save the certificate issued earlier (it is served meanwhile): {e}"),
            }
        }
        let stored = match &self.unsaved {
            Some(issued) => Some(issued.clone()),
            None => match self.load_stored().await {
                Ok(stored) => stored,
                // Not "no certificate": ordering now could spend the CA's
                // limits on one the store already holds.
                Err(()) => {
                    self.failures += 1;
                    return Tick { outcome: Outcome::Current, next: backoff(self.failures, fastrand::f64()) };
                }
            },
        };
        let mut loaded = false;
        if let Some((bundle, info)) = &stored {
            loaded = self.serve(bundle, info);
            self.refresh_ari(bundle, now).await;
        }
        let ari = self.ari.and_then(|(w, _)| w);
        if let Some((_, info)) = &stored {
            self.metrics.renewal(&self.acme.config().base, renew_at(info, ari, self.jitter));
        }
        let requested = self.requests.requested.load(Ordering::SeqCst);
        self.seen = requested;
        let decision = match decide(now, stored.as_ref().map(|(_, i)| i), ari, self.jitter) {
            Decision::WaitUntil(_) if requested > self.satisfied => Decision::Obtain(Why::Requested),
            d => d,
        };
        match decision {
            Decision::WaitUntil(at) => {
                let mut next = at.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
                if let Some((_, recheck)) = self.ari {
                    next = next.min(recheck.duration_since(now).unwrap_or_default());
                }
                let outcome = if loaded { Outcome::Loaded } else { Outcome::Current };
                Tick { outcome, next: next.max(Duration::from_secs(1)) }
            }
            Decision::Obtain(why) => {
                tracing::info!(base = %self.acme.config().base, ?why, "ordering a certificate");
                let tick = self.obtain(stored.as_ref().map(|(b, _)| b), now).await;
                if matches!(tick.outcome, Outcome::Obtained(_)) {
                    self.satisfied = requested;
                }
                tick
            }
        }
    }

    async fn obtain(&mut self, previous: Option<&CertBundle>, now: SystemTime) -> Tick {
        match self.acme.obtain(previous, self.stop.clone()).await {
            Ok(issued) => {
                self.failures = 0;
                self.serve(&issued.bundle, &issued.info);
                if let Some(why) = &issued.unsaved {
                    tracing::warn!("the certificate issued cannot be saved ({why}); serving it, and saving it again at the next pass");
                    self.unsaved = Some((issued.bundle.clone(), issued.info.clone()));
                }
                self.metrics.order_succeeded(now);
                tracing::info!(names = ?issued.info.names, not_after = ?issued.info.not_after, "certificate obtained");
                Tick { outcome: Outcome::Obtained(Box::new(issued)), next: RETRY_MIN }
            }
            Err(AcmeError::Stopped) => {
                tracing::info!("certificate order abandoned: told to stop (its challenge records removed)");
                Tick { outcome: Outcome::Failed(AcmeError::Stopped), next: RETRY_MIN }
            }
            Err(e) => {
                self.metrics.order(e.outcome());
                let next = match e {
                    // Not a failure of ours: look again soon for what the holder saves.
                    AcmeError::Locked { .. } => RETRY_MIN,
                    _ => {
                        self.failures += 1;
                        backoff(self.failures, fastrand::f64())
                    }
                };
                tracing::warn!(outcome = e.outcome(), retry_in = ?next, "certificate order failed: {e}");
                Tick { outcome: Outcome::Failed(e), next }
            }
        }
    }

    /// The stored certificate, if usable and for our names; `Err` when the
    /// store could not be read (not the same as holding none).
    async fn load_stored(&self) -> Result<Option<(CertBundle, CertInfo)>, ()> {
        let base = &self.acme.config().base;
        let bundle = match self.acme.store().load_cert().await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!("cannot read the stored certificate: {e}; nothing is ordered until it can be");
                return Err(());
            }
        };
        let info = match bundle.certified_key().and_then(|_| bundle.info()) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("the stored certificate is unusable: {e}");
                return Ok(None);
            }
        };
        Ok((info.names.contains(base) && info.names.contains(&format!("*.{base}"))).then_some((bundle, info)))
    }

    /// Serves `bundle` unless it is already served; true if it was swapped in.
    fn serve(&mut self, bundle: &CertBundle, info: &CertInfo) -> bool {
        let Ok(key) = bundle.certified_key() else { return false };
        let leaf = key.cert.first().map(|c| c.to_vec());
        if leaf == self.served {
            return false;
        }
        self.resolver.swap(key);
        self.metrics.certificate(&self.acme.config().base, info);
        self.served = leaf;
        self.jitter = fastrand::f64();
        self.ari = None;
        // Until the CA's renewal window is read (the next pass).
        self.metrics.renewal(&self.acme.config().base, renew_at(info, None, self.jitter));
        true
    }

    async fn refresh_ari(&mut self, bundle: &CertBundle, now: SystemTime) {
        if self.ari.is_some_and(|(_, recheck)| now < recheck) {
            return;
        }
        let (window, wait) = match self.acme.renewal_window(bundle).await {
            Ok(Some((w, retry_after))) => (Some(w), retry_after.clamp(ARI_RECHECK_MIN, ARI_RECHECK_MAX)),
            Ok(None) => (None, ARI_RECHECK_MAX),
            Err(e) => {
                tracing::debug!("renewal information unavailable: {e}");
                (self.ari.and_then(|(w, _)| w), ARI_RECHECK_MIN)
            }
        };
        self.ari = Some((window, now + wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_wakes_the_loop_even_when_made_while_it_is_busy() {
        let handle = RenewHandle::default();
        // Made before anyone waits: the permit is kept for the next wait.
        handle.request();
        handle.clone().request();
        assert_eq!(handle.shared.requested.load(Ordering::SeqCst), 2);
        let woke = tokio::time::timeout(Duration::from_secs(1), handle.shared.wake.notified()).await;
        assert!(woke.is_ok(), "the pending request wakes the next wait");
        register(handle.clone());
        assert!(registered().is_some_and(|h| Arc::ptr_eq(&h.shared, &handle.shared)));
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn cert(issued: SystemTime, days: u32) -> CertInfo {
        CertInfo { names: vec![], not_before: issued, not_after: issued + DAY * days }
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    #[test]
    fn without_ari_renews_two_thirds_in() {
        let c = cert(t0(), 90);
        assert_eq!(renew_at(&c, None, 0.9), t0() + DAY * 60);
        assert_eq!(decide(t0() + DAY * 59, Some(&c), None, 0.5), Decision::WaitUntil(t0() + DAY * 60));
        assert_eq!(decide(t0() + DAY * 60, Some(&c), None, 0.5), Decision::Obtain(Why::Due));
        assert_eq!(decide(t0() + DAY * 90, Some(&c), None, 0.5), Decision::Obtain(Why::Expired));
        assert_eq!(decide(t0(), None, None, 0.5), Decision::Obtain(Why::Missing));
    }

    #[test]
    fn ari_window_is_sampled_with_the_jitter() {
        let c = cert(t0(), 90);
        let w = AriWindow { start: t0() + DAY * 50, end: t0() + DAY * 52 };
        assert_eq!(renew_at(&c, Some(w), 0.0), w.start);
        assert_eq!(renew_at(&c, Some(w), 0.5), t0() + DAY * 51);
        assert_eq!(renew_at(&c, Some(w), 1.0), w.end);
        assert_eq!(renew_at(&c, Some(w), 7.0), w.end, "jitter is clamped");
        assert_eq!(decide(t0() + DAY * 50, Some(&c), Some(w), 0.5), Decision::WaitUntil(t0() + DAY * 51));
    }

    #[test]
    fn a_window_in_the_past_means_now() {
        // A CA revoking early moves the window before today: renew at once.
        let c = cert(t0(), 90);
        let w = AriWindow { start: t0() + DAY, end: t0() + DAY * 2 };
        assert_eq!(decide(t0() + DAY * 10, Some(&c), Some(w), 0.3), Decision::Obtain(Why::Due));
    }

    #[test]
    fn insane_windows_fall_back_to_two_thirds() {
        let c = cert(t0(), 90);
        let inverted = AriWindow { start: t0() + DAY * 50, end: t0() + DAY * 40 };
        let past_expiry = AriWindow { start: t0() + DAY * 89, end: t0() + DAY * 95 };
        assert_eq!(renew_at(&c, Some(inverted), 0.5), t0() + DAY * 60);
        assert_eq!(renew_at(&c, Some(past_expiry), 0.5), t0() + DAY * 60);
    }

    #[test]
    fn short_lived_certificates_scale() {
        // Six-day certificates (Let's Encrypt's short-lived profile): day 4.
        let c = cert(t0(), 6);
        assert_eq!(renew_at(&c, None, 0.5), t0() + DAY * 4);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_six_hours_with_jitter() {
        assert_eq!(backoff(1, 0.5), RETRY_MIN);
        assert_eq!(backoff(2, 0.5), RETRY_MIN * 2);
        assert_eq!(backoff(5, 0.5), RETRY_MIN * 16);
        assert_eq!(backoff(9, 0.5), RETRY_MIN * 256);
        assert_eq!(backoff(10, 0.5), RETRY_MAX);
        assert_eq!(backoff(u32::MAX, 1.0), RETRY_MAX);
        assert_eq!(backoff(1, 0.0), Duration::from_secs(45));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(75));
        // Never a tight loop, whatever the inputs.
        for f in [0, 1, 2, 40] {
            for j in [0.0, 0.5, 1.0, -3.0, f64::NAN] {
                assert!(backoff(f, j) >= Duration::from_secs(45), "{f} {j}");
            }
        }
    }
}
