//! The cluster reaper: on the leader, every `reaper-interval`, read all
//! gateway replicas (or Prometheus, `activity-source = prometheus`), apply
//! [`crate::reaper::decide`] to every solution that is up, confirm with a
//! second reading, then scale it to zero and record an Event on its
//! Deployment. An unreadable replica makes the round scale nothing down; a
//! solution that no replica reports (not yet known to the gateways, or not
//! scraped by Prometheus) is not scaled down either.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::Resource;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use proto::settings::ActivitySource;
use proto::{Phase, Settings, SolutionSpec};
use tokio::sync::watch;

use super::declared;
use super::scrape::{self, Activity, ScrapeError};
use super::{Args, metrics::ScalerMetrics, scale};
use crate::reaper::{Decision, Observed, decide};

/// Longest wait for Prometheus to scrape every gateway after an idle decision
/// (several scrape intervals of the usual 15–60 s).
const CONFIRM_WAIT: Duration = Duration::from_secs(180);
/// Pause between two readings while waiting for that scrape.
const CONFIRM_POLL: Duration = Duration::from_secs(1);

/// The leader's idle loop.
pub struct Reaper {
    client: kube::Client,
    args: Args,
    metrics: Arc<ScalerMetrics>,
    recorder: Recorder,
    /// When each Deployment was first seen up (by this replica).
    up_since: HashMap<(String, String), SystemTime>,
    /// Why the ConfigMap's `prometheus-*` keys cannot be used as written
    /// (empty: they can). Unlike other keys they do not fall back to their
    /// defaults: that could mean no credentials, or the system's CAs instead
    /// of the one named.
    prometheus_refused: Vec<String>,
    /// The settings of the last ConfigMap read: a failed read keeps them (a
    /// transient API error must not make a round use the defaults, e.g.
    /// 30 minutes where the operator set `idle-timeout = "8h"`).
    last_good: Option<Settings>,
    /// Deployments whose scale could not be read, told once until it can.
    unreadable: std::collections::HashSet<(String, String)>,
}

impl Reaper {
    /// A reaper for the solutions and gateways named in `args`.
    pub fn new(client: kube::Client, args: Args, metrics: Arc<ScalerMetrics>) -> Self {
        let reporter = Reporter { controller: "wakegate-scaler".into(), instance: Some(args.identity.clone()) };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            args,
            metrics,
            recorder,
            up_since: HashMap::new(),
            prometheus_refused: Vec::new(),
            last_good: None,
            unreadable: std::collections::HashSet::new(),
        }
    }

    /// Runs until `shutdown`, working only while `leader` is true.
    pub async fn run(mut self, mut leader: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let settings = self.settings().await;
            let interval = settings.as_ref().map_or(Settings::default().reaper_interval, |s| s.reaper_interval);
            if *leader.borrow_and_update() {
                match &settings {
                    Some(settings) => self.round(settings, &leader).await,
                    // Never read yet: nothing to go by.
                    None => self.metrics.round("skipped"),
                }
            } else {
                self.up_since.clear();
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = leader.changed() => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            }
        }
    }

    /// The ConfigMap's settings (defaults where it is missing or a key is
    /// invalid: the gateways report a bad edit; the reaper keeps working,
    /// except with Prometheus keys it cannot use: see `prometheus_refused`).
    /// A failed read gives the last good settings, or `None` before any.
    async fn settings(&mut self) -> Option<Settings> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.args.namespace);
        let data = match api.get_opt(&self.args.configmap).await {
            Ok(Some(cm)) => cm.data.unwrap_or_default(),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!("reading ConfigMap {}: {e}; the settings read before stay", self.args.configmap);
                return self.last_good.clone();
            }
        };
        let mut s = Settings::default();
        let mut refused = Vec::new();
        for (k, v) in &data {
            if let Err(reason) = s.set(k, v) {
                if k.starts_with("prometheus-") {
                    refused.push(format!("{k}: {reason}"));
                }
                tracing::debug!(key = %k, "ignored: {reason}");
            }
        }
        refused.extend(s.prometheus_access_errors().into_iter().map(|(k, reason)| format!("{k}: {reason}")));
        self.prometheus_refused = refused;
        self.last_good = Some(s.clone());
        Some(s)
    }

    /// The solutions the cluster declares, as the gateways build them
    /// ([`declared::build`]): labelled Services and the hosts of Ingresses
    /// of class `wakegate` alike (problems are the gateways' to report).
    async fn solutions(&self, settings: &Settings) -> Result<Vec<SolutionSpec>, kube::Error> {
        let ns = &self.args.solutions_namespace;
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let ingresses: Api<Ingress> = Api::namespaced(self.client.clone(), ns);
        let objects = declared::Objects {
            services: services.list(&ListParams::default()).await?.into_iter().map(Arc::new).collect(),
            ingresses: ingresses.list(&ListParams::default()).await?.into_iter().map(Arc::new).collect(),
        };
        Ok(declared::build(ns, settings, &objects).0)
    }

    async fn round(&mut self, settings: &Settings, leader: &watch::Receiver<bool>) {
        let solutions = match self.solutions(settings).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("listing solutions: {e}");
                self.metrics.round("skipped");
                return;
            }
        };
        let Some(activity) = self.read(settings).await else { return };
        let now = SystemTime::now();
        let mut idle = Vec::new();
        // Deployments a solution still uses: two solutions may name one (two
        // Services, or `wakegate.io/deployment`), and it sleeps only when
        // every one of them is idle.
        let mut busy = std::collections::HashSet::new();
        for spec in solutions {
            let proto::Backend::Cluster(c) = &spec.backend else { continue };
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &c.namespace);
            let key = (c.namespace.clone(), c.deployment.clone());
            let seen = match scale::read(&api, &c.deployment).await {
                Ok(seen) if seen.replicas == 0 => {
                    self.unreadable.remove(&key);
                    self.up_since.remove(&key);
                    continue;
                }
                Ok(seen) => {
                    self.unreadable.remove(&key);
                    seen
                }
                Err(e) => {
                    busy.insert(key.clone());
                    if self.unreadable.insert(key) {
                        tracing::warn!(namespace = %c.namespace, deployment = %c.deployment, solution = %spec.name, "cannot read the scale, so it is never scaled down until it can: {e}");
                    }
                    continue;
                }
            };
            let since = *self.up_since.entry(key.clone()).or_insert(now);
            if let Some(Decision::Sleep(_)) = observe(&activity, &spec, since).map(|o| decide(now, &o)) {
                idle.push(Idle { spec, api, key, since, seen });
            } else {
                busy.insert(key);
            }
        }
        idle.retain(|i| !busy.contains(&i.key));
        if !idle.is_empty() {
            // Confirm with a reading taken after this decision: a request may have arrived since.
            let Some(again) = self.confirm(settings, &activity).await else { return };
            if !*leader.borrow() {
                return;
            }
            let mut sleeping = Vec::new();
            for i in idle {
                match observe(&again, &i.spec, i.since).map(|o| decide(SystemTime::now(), &o)) {
                    Some(Decision::Sleep(for_)) => sleeping.push((i, for_)),
                    _ => {
                        busy.insert(i.key);
                    }
                }
            }
            let mut done = std::collections::HashSet::new();
            for (i, for_) in sleeping {
                if !busy.contains(&i.key) && done.insert(i.key.clone()) {
                    self.scale_down(&i, for_).await;
                }
            }
        }
        self.metrics.round("done");
    }

    async fn read(&self, settings: &Settings) -> Option<Activity> {
        let reading = match (settings.activity_source, &settings.prometheus_url) {
            (ActivitySource::Gateways, _) => scrape::activity(&self.client, &self.args.namespace, &self.args.gateway_service).await,
            (ActivitySource::Prometheus, url) if !self.prometheus_refused.is_empty() => Err(ScrapeError::Prometheus {
                url: url.as_ref().map(ToString::to_string).unwrap_or_default(),
                reason: format!("not asked, the ConfigMap's keys are refused: {}", self.prometheus_refused.join("; ")),
            }),
            (ActivitySource::Prometheus, Some(url)) => {
                async {
                    let ready = scrape::gateways(&self.client, &self.args.namespace, &self.args.gateway_service).await?;
                    // A terminating replica may be gone: Prometheus is not waited on for it.
                    let expected = ready.iter().filter(|r| !r.terminating).count();
                    super::prometheus::activity(url, settings, expected).await
                }
                .await
            }
            (ActivitySource::Prometheus, None) => Err(ScrapeError::Prometheus {
                url: String::new(),
                reason: "activity-source is prometheus but prometheus-url is missing or invalid".into(),
            }),
        };
        match reading {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!("not scaling anything down this round: {e}");
                self.metrics.scrape_failed();
                self.metrics.round("skipped");
                None
            }
        }
    }

    /// A reading that includes every request up to the `first` reading at
    /// least. The gateways are read live; Prometheus has to have scraped every
    /// gateway since it answered `first` (its samples may be one scrape
    /// interval old; both times by its clock), waited for up to [`CONFIRM_WAIT`].
    async fn confirm(&self, settings: &Settings, first: &Activity) -> Option<Activity> {
        let deadline = tokio::time::Instant::now() + CONFIRM_WAIT;
        loop {
            let reading = self.read(settings).await?;
            match (first.evaluated, reading.as_of) {
                (Some(decided), Some(as_of)) if as_of < decided => {}
                _ => return Some(reading),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "Prometheus has not scraped every gateway within {}s of the idle decision: not scaling anything down this round",
                    CONFIRM_WAIT.as_secs()
                );
                self.metrics.round("skipped");
                return None;
            }
            tokio::time::sleep(CONFIRM_POLL).await;
        }
    }

    /// Scales `i`'s Deployment to zero, idle for `idle`, if it is still as
    /// the round's first reading saw it: one changed since (woken, scaled by
    /// someone else, rolled out) is looked at again next round.
    async fn scale_down(&self, i: &Idle, idle: Duration) {
        let (api, spec, deployment) = (&i.api, &i.spec, i.key.1.as_str());
        match scale::sleep(api, deployment, &i.seen).await {
            Ok(true) => {
                let idle_s = proto::units::format_duration(Duration::from_secs(idle.as_secs()));
                tracing::info!(solution = %spec.name, deployment, "scaled to zero after {idle_s} idle");
                self.metrics.scaled_down(&spec.name, "idle");
                if let Ok(d) = api.get(deployment).await {
                    let ev = Event {
                        type_: EventType::Normal,
                        reason: "ScaledToZero".into(),
                        note: Some(format!("scaled to zero after {idle_s} idle")),
                        action: "Scale".into(),
                        secondary: None,
                    };
                    if let Err(e) = self.recorder.publish(&ev, &d.object_ref(&())).await {
                        tracing::debug!("event not recorded: {e}");
                    }
                }
            }
            Ok(false) => {
                tracing::info!(solution = %spec.name, deployment, "not scaled to zero: the Deployment changed since this round read it; it is looked at again next round");
                self.metrics.round_conflict();
            }
            Err(e) => tracing::warn!(solution = %spec.name, deployment, "scale to zero failed: {e}"),
        }
    }
}

/// A Deployment a round's first reading found idle.
struct Idle {
    spec: SolutionSpec,
    api: Api<Deployment>,
    /// Namespace and name of the Deployment.
    key: (String, String),
    /// When it was first seen up.
    since: SystemTime,
    /// Its scale as read: the scale-down is conditional on it.
    seen: scale::Seen,
}

/// What the reading `a` says of `spec`, up since `since`; `None` (logged)
/// when no gateway reports it: every gateway that knows a solution reports
/// its gauge (0 before the first request), so its activity is unknown.
fn observe(a: &Activity, spec: &SolutionSpec, since: SystemTime) -> Option<Observed> {
    let Some(last) = a.last_request.get(&spec.name) else {
        tracing::warn!(solution = %spec.name, "no gateway reports this solution: not scaling it down");
        return None;
    };
    let last = (*last > 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(*last));
    let busy = a.busy.get(&spec.name).copied().unwrap_or(0.0).max(0.0) as u64;
    Some(Observed { phase: Phase::Ready, ready_since: since, last_request: last, busy, idle_timeout: spec.settings.idle_timeout })
}
