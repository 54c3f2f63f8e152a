//! The task that follows one cluster solution: it watches the Service's
//! EndpointSlices and publishes the solution's state, and on a wake command
//! while cold asks the scaler to scale the Deployment up (one call in flight
//! at most: the task owns it, so wake-ups are single-flight by construction).
//!
//! Phases: `Cold` (no ready endpoint) → `Starting` (wake requested) →
//! `Probing` (a pod runs, not ready yet) → `Ready`. While waking, the
//! solution's Pods are watched for the waiting page's finer steps (scale
//! requested → pod scheduled → container started) and what holds them up.
//! A Service reported ready is connected to once before `Ready` is
//! published: the API can announce an
//! endpoint a moment before this replica can reach it, and a held request
//! released then would fail. A wake that does not end in time is `Failed`
//! with a backoff; the scaler, not the gateway, scales down, so `Sleep` is
//! ignored. While the API is unreachable the last known endpoints serve.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use proto::cluster::{WakeRequest, WakeResponse};
use proto::solution::ClusterRef;
use proto::{Backend, Phase, Probe, SolutionSpec, WakeStep};
use scaler::probe::{self, ProbeResult};
use scaler::{Cmd, Failure, Observer, SolutionState, StateCell, WakeOutcome};
use tokio::sync::mpsc;

use super::endpoints::{self, Slices};
use super::pods;
use super::wake::{CallError, Waker};

/// Past wake-ups kept for the estimate shown on the waiting page.
const HISTORY: usize = 5;
/// How long a newly ready endpoint is given to accept a connection before it
/// is trusted anyway (the proxy retries refused connects on its own).
const PROBE_WINDOW: Duration = Duration::from_secs(5);
/// Pause between two connects while probing.
const PROBE_PAUSE: Duration = Duration::from_millis(20);
/// Longest wait for one connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// First backoff after a failed wake-up; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A solution that keeps failing to wake is retried at least this often.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

type SliceStream = Pin<Box<dyn Stream<Item = Result<Event<EndpointSlice>, watcher::Error>> + Send>>;
type Pending<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

/// Follows one solution.
pub struct Supervisor {
    spec: SolutionSpec,
    target: ClusterRef,
    cell: Arc<StateCell>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    observer: Arc<dyn Observer>,
    client: kube::Client,
    waker: Arc<Waker>,
    slices: Slices,
    stream: SliceStream,
    watch_failing: bool,
    /// When the wake-up under way began.
    waking: Option<Instant>,
    /// The Pods of the wake-up under way (when the Service has a selector).
    pods: Option<pods::Watch>,
    call: Pending<Result<WakeResponse, CallError>>,
    probe: Pending<(SocketAddr, bool)>,
    history: VecDeque<Duration>,
    failures: u32,
}

fn slice_stream(client: kube::Client, target: &ClusterRef) -> SliceStream {
    let api: Api<EndpointSlice> = Api::namespaced(client, &target.namespace);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", target.service));
    Box::pin(watcher(api, config).default_backoff())
}

async fn pending<T>(slot: &mut Pending<T>) -> T {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

type PodEvent = Option<Result<watcher::Event<k8s_openapi::api::core::v1::Pod>, watcher::Error>>;

async fn next_pod(pods: &mut Option<pods::Watch>) -> PodEvent {
    match pods {
        Some(w) => w.stream.next().await,
        None => std::future::pending().await,
    }
}

/// A wake-up's step as the phase confirms it: a Pod that the EndpointSlices
/// show started is at least "container started", whatever its watch says
/// (or when there is no Pod watch at all).
fn with_phase(step: Option<WakeStep>, phase: Phase) -> Option<WakeStep> {
    match phase {
        Phase::Probing => Some(step.map_or(WakeStep::ContainerStarted, |s| s.max(WakeStep::ContainerStarted))),
        _ => step,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Connects to `addr` until it accepts or [`PROBE_WINDOW`] has passed.
async fn probe_until_open(addr: SocketAddr) -> (SocketAddr, bool) {
    let until = Instant::now() + PROBE_WINDOW;
    loop {
        if probe::check(&Probe::Tcp, addr, PROBE_TIMEOUT).await == ProbeResult::Ready {
            return (addr, true);
        }
        if Instant::now() >= until {
            return (addr, false);
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

impl Supervisor {
    /// A task for `spec` (reached through `target`), publishing to `cell`, obeying `rx`.
    pub fn new(
        spec: SolutionSpec,
        target: ClusterRef,
        cell: Arc<StateCell>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        observer: Arc<dyn Observer>,
        client: kube::Client,
        waker: Arc<Waker>,
    ) -> Self {
        let stream = slice_stream(client.clone(), &target);
        Self {
            spec,
            target,
            cell,
            rx,
            observer,
            client,
            waker,
            slices: Slices::default(),
            stream,
            watch_failing: false,
            waking: None,
            pods: None,
            call: None,
            probe: None,
            history: VecDeque::new(),
            failures: 0,
        }
    }

    /// Runs until shut down or removed.
    pub async fn run(mut self) {
        loop {
            let deadline = self.waking.map(|t| t + self.spec.settings.startup_timeout);
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Wake) => self.wake(),
                    Some(Cmd::Sleep(..)) => {}
                    Some(Cmd::Update(spec)) => self.update(*spec),
                    Some(Cmd::Shutdown(_, ack)) => {
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                },
                event = self.stream.next() => match event {
                    Some(Ok(e)) => self.observed(e),
                    Some(Err(e)) => self.watch_failed(&e),
                    None => self.stream = slice_stream(self.client.clone(), &self.target),
                },
                r = pending(&mut self.call) => {
                    self.call = None;
                    self.called(r);
                }
                (addr, ok) = pending(&mut self.probe) => {
                    self.probe = None;
                    self.probed(addr, ok);
                }
                event = next_pod(&mut self.pods) => self.pod_event(event),
                _ = sleep_until(deadline), if deadline.is_some() => self.timed_out(),
            }
        }
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn publish(&self, state: SolutionState) {
        tracing::debug!(solution = self.name(), phase = state.phase.as_str(), endpoints = state.endpoints.len(), "phase");
        self.cell.publish(state);
    }

    fn ready_now(&self) -> Vec<SocketAddr> {
        endpoints::ready(self.slices.iter(), self.target.port.as_deref())
    }

    fn observed(&mut self, event: Event<EndpointSlice>) {
        if self.watch_failing {
            self.watch_failing = false;
            tracing::info!(solution = self.name(), "watching EndpointSlices again");
        }
        if self.slices.apply(event) {
            self.reconcile();
        }
    }

    fn watch_failed(&mut self, e: &watcher::Error) {
        let known = self.ready_now().len();
        if self.watch_failing {
            tracing::debug!(solution = self.name(), "watching EndpointSlices: {e}");
        } else {
            self.watch_failing = true;
            tracing::warn!(solution = self.name(), "watching EndpointSlices: {e}; serving the {known} endpoint(s) known");
        }
    }

    /// Publishes what the slices say now.
    fn reconcile(&mut self) {
        let addrs = self.ready_now();
        let cur = self.cell.load();
        if addrs.is_empty() {
            self.probe = None;
            if self.waking.is_some() {
                if cur.phase == Phase::Starting && endpoints::starting(self.slices.iter()) {
                    let mut next = cur.to(Phase::Probing);
                    next.step = with_phase(next.step, Phase::Probing);
                    self.publish(next);
                }
            } else if cur.phase == Phase::Ready {
                tracing::info!(solution = self.name(), "no ready endpoints: cold");
                let mut next = cur.to(Phase::Cold);
                next.endpoints = Arc::from(Vec::new());
                self.publish(next);
            }
            return;
        }
        if cur.phase == Phase::Ready {
            if *cur.endpoints != addrs[..] {
                let mut next = (*cur).clone();
                next.endpoints = Arc::from(addrs);
                self.publish(next);
            }
            return;
        }
        if self.probe.is_none() {
            self.probe = Some(Box::pin(probe_until_open(addrs[0])));
        }
    }

    fn pod_event(&mut self, event: PodEvent) {
        let name = self.spec.name.clone();
        let Some(w) = &mut self.pods else { return };
        match event {
            Some(Ok(e)) => {
                if w.failing {
                    w.failing = false;
                    tracing::info!(solution = %name, "watching Pods again");
                }
                if !w.known.apply(e) {
                    return;
                }
            }
            Some(Err(e)) => {
                // The page then shows the phases only (no RBAC for Pods, API away).
                if !w.failing {
                    w.failing = true;
                    tracing::warn!(solution = %name, "watching Pods for the waiting page: {e}");
                }
                return;
            }
            None => {
                self.pods = None;
                return;
            }
        }
        let p = pods::progress(w.known.iter());
        if p.said != w.said {
            if let Some(said) = &p.said {
                tracing::info!(solution = %name, step = p.step.as_str(), "pod: {said}");
            }
            w.said = p.said;
        }
        self.show_step(p.step, p.reason);
    }

    /// Publishes the wake-up's step (as the phase confirms it) and what it
    /// waits for, while it wakes and if they changed.
    fn show_step(&mut self, step: WakeStep, reason: Option<String>) {
        let cur = self.cell.load();
        let step = with_phase(Some(step), cur.phase);
        if !cur.phase.is_waking() || (cur.step == step && cur.detail.as_deref() == reason.as_deref()) {
            return;
        }
        let mut next = (*cur).clone();
        next.step = step;
        next.detail = reason.map(Arc::from);
        self.publish(next);
    }

    /// Follows the wake-up's Pods, if the Service says which they are.
    fn watch_pods(&mut self) {
        self.pods = self.target.pods.as_deref().map(|sel| pods::Watch::new(self.client.clone(), &self.target.namespace, sel));
    }

    fn probed(&mut self, addr: SocketAddr, ok: bool) {
        let addrs = self.ready_now();
        if addrs.is_empty() {
            return;
        }
        if !ok {
            tracing::warn!(solution = self.name(), endpoint = %addr, "reported ready but refuses connections after {PROBE_WINDOW:?}; trusting the API");
        }
        let mut next = self.cell.load().to(Phase::Ready);
        next.endpoints = Arc::from(addrs);
        next.failure = None;
        next.wake_started = None;
        self.pods = None;
        match self.waking.take() {
            Some(started) => {
                self.call = None;
                self.failures = 0;
                let took = started.elapsed();
                self.history.push_back(took);
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
                next.wakeups += 1;
                next.eta = self.eta();
                tracing::info!(solution = self.name(), took_ms = took.as_millis() as u64, endpoints = next.endpoints.len(), "ready");
                self.publish(next);
                self.observer.woke(self.name(), WakeOutcome::Ready, took);
            }
            None => {
                tracing::info!(solution = self.name(), endpoints = next.endpoints.len(), "ready");
                self.publish(next);
            }
        }
    }

    fn wake(&mut self) {
        let cur = self.cell.load();
        let now = Instant::now();
        if self.waking.is_some() || self.probe.is_some() || cur.phase == Phase::Ready || cur.in_backoff(now) {
            return;
        }
        self.waking = Some(now);
        let phase = if endpoints::starting(self.slices.iter()) { Phase::Probing } else { Phase::Starting };
        let mut next = cur.to(phase);
        next.wake_started = Some(now);
        next.eta = self.eta();
        next.failure = None;
        next.step = with_phase(Some(WakeStep::ScaleRequested), phase);
        next.detail = None;
        self.publish(next);
        self.watch_pods();
        let req = WakeRequest {
            namespace: self.target.namespace.clone(),
            deployment: self.target.deployment.clone(),
            replicas: self.spec.settings.wake_replicas.get(),
        };
        tracing::info!(solution = self.name(), deployment = %req.deployment, replicas = req.replicas, "waking");
        let waker = self.waker.clone();
        self.call = Some(Box::pin(async move { waker.wake(&req).await }));
        // Endpoints may be ready already (woken by another replica).
        self.reconcile();
    }

    fn called(&mut self, result: Result<WakeResponse, CallError>) {
        match result {
            Ok(r) => tracing::info!(solution = self.name(), scaled = r.scaled, replicas = r.replicas, "the scaler took the wake-up"),
            Err(e) => {
                let took = self.waking.map(|t| t.elapsed()).unwrap_or_default();
                self.fail(e.to_string(), WakeOutcome::Failed, took);
            }
        }
    }

    fn timed_out(&mut self) {
        let Some(started) = self.waking else { return };
        let wait = proto::units::format_duration(self.spec.settings.startup_timeout);
        let cur = self.cell.load();
        let why = match (&self.call, &cur.step, &cur.detail) {
            (Some(_), ..) => " (the scaler could not be reached)".to_string(),
            (None, Some(step), Some(detail)) => format!(" (at {}: {detail})", step.as_str()),
            (None, Some(step), None) => format!(" (at {})", step.as_str()),
            (None, None, _) => String::new(),
        };
        self.fail(format!("did not become ready within {wait}{why}"), WakeOutcome::Timeout, started.elapsed());
    }

    fn fail(&mut self, message: String, outcome: WakeOutcome, took: Duration) {
        self.failures += 1;
        let backoff = FIRST_BACKOFF.saturating_mul(1 << (self.failures - 1).min(16)).min(MAX_BACKOFF);
        self.waking = None;
        self.call = None;
        self.probe = None;
        self.pods = None;
        tracing::warn!(solution = self.name(), retry_in = ?backoff, "wake-up failed: {message}");
        let mut next = self.cell.load().to(Phase::Failed);
        next.endpoints = Arc::from(Vec::new());
        next.wake_started = None;
        next.failure = Some(Failure { message, retry_at: Instant::now() + backoff });
        self.publish(next);
        self.observer.woke(self.name(), outcome, took);
        // Endpoints that turned ready meanwhile still get served.
        self.reconcile();
    }

    fn update(&mut self, spec: SolutionSpec) {
        if let Backend::Cluster(target) = &spec.backend {
            if (&target.namespace, &target.service) != (&self.target.namespace, &self.target.service) {
                tracing::info!(solution = %spec.name, service = %target.service, "now follows another Service");
                self.slices.clear();
                self.probe = None;
                self.stream = slice_stream(self.client.clone(), target);
                let cur = self.cell.load();
                if cur.phase == Phase::Ready {
                    let mut next = cur.to(Phase::Cold);
                    next.endpoints = Arc::from(Vec::new());
                    self.publish(next);
                }
            }
            let pods_moved = (&target.namespace, &target.pods) != (&self.target.namespace, &self.target.pods);
            self.target = target.clone();
            if pods_moved && self.waking.is_some() {
                // The old Pods' step and reason go with them: the page says
                // what the phase alone says until the new selector's Pods
                // (if any) tell more.
                self.watch_pods();
                self.show_step(WakeStep::ScaleRequested, None);
            }
        }
        self.spec = spec;
        self.reconcile();
    }

    fn eta(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.history.iter().copied().collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }
}
