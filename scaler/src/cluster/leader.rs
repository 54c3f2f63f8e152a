//! Leader election on a `coordination.k8s.io` Lease with optimistic
//! concurrency (GET, then create or replace carrying the resourceVersion): a
//! conflicting writer gets 409 and tries again next round, so at most one
//! replica believes it leads. A holder that stops renewing is replaced once
//! its lease has expired; a replica shutting down releases it at once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use super::metrics::ScalerMetrics;

/// Contends for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `identity`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    /// Renews or acquires every third of the lease duration, publishing
    /// whether this replica leads, until `shutdown`; then releases.
    pub async fn run(self, tx: watch::Sender<bool>, metrics: Arc<ScalerMetrics>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let leading = match self.try_lead().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(lease = %self.name, "lease round failed: {e}");
                    false
                }
            };
            if tx.send_if_modified(|v| std::mem::replace(v, leading) != leading) {
                tracing::info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
            }
            metrics.set_leader(leading);
            tokio::select! {
                _ = tokio::time::sleep(self.duration / 3) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        if *tx.borrow() {
            let _ = tx.send(false);
            metrics.set_leader(false);
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.name, "release failed: {e}");
            }
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX).max(1)),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: `Ok(true)` if this replica holds the lease afterwards.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() }, spec: Some(self.spec(0, None)) };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = match holder {
            Some(h) if h == self.identity => self.spec(transitions, spec.acquire_time.clone()),
            Some(_) if !expired(&spec) => return Ok(false),
            _ => self.spec(transitions + 1, None),
        };
        lease.spec = Some(next);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        lease.spec = Some(spec);
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
    }
}

/// Whether a lease's holder has stopped renewing it.
fn expired(spec: &LeaseSpec) -> bool {
    let Some(renewed) = &spec.renew_time else { return true };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let age = Timestamp::now().as_second() - renewed.0.as_second();
    age > secs
}
