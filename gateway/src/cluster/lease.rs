//! A `coordination.k8s.io` Lease as a lock held by one replica at a time,
//! written with plain get / create / replace: the `resourceVersion` a replace
//! carries makes two replicas racing for the same Lease end with one winner
//! and one 409 Conflict.
//!
//! Expiry is judged the way client-go's leader election judges it, on this
//! replica's own clock: another holder's Lease is stale once it has not
//! changed for its `leaseDurationSeconds` *as observed here*, so clock skew
//! between nodes cannot make a live holder look dead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::tls::store::LockState;

/// One Lease, taken and renewed as `identity`.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The other holder's record (resourceVersion) and when it was first seen.
    observed: Mutex<Option<(String, Instant)>>,
}

impl LeaseLock {
    /// The Lease `name` in `api`'s namespace, held as `identity` for `duration` per renewal.
    pub fn new(api: Api<Lease>, name: impl Into<String>, identity: impl Into<String>, duration: Duration) -> Self {
        Self { api, name: name.into(), identity: identity.into(), duration, observed: Mutex::new(None) }
    }

    /// Who this replica is.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How long one renewal holds the Lease.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Takes the Lease if it is free, stale or ours (renewing it), else says who holds it.
    pub async fn try_acquire(&self) -> Result<LockState, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LockState::Acquired),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(LockState::HeldBy("another replica (raced)".into())),
                Err(e) => Err(e),
            };
        };
        let rv = lease.resource_version().unwrap_or_default();
        let spec = lease.spec.get_or_insert_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if let Some(h) = &holder
            && !mine
        {
            let theirs = spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map_or(self.duration, Duration::from_secs);
            if !self.stale(rv, theirs) {
                return Ok(LockState::HeldBy(h.clone()));
            }
            tracing::info!(lease = %self.name, stale_holder = %h, "taking over a Lease its holder stopped renewing");
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(LockState::Acquired),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(LockState::HeldBy(holder.unwrap_or_else(|| "another replica (raced)".into()))),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it (others need not wait for it to expire).
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(self.identity.as_str())) else {
            return Ok(());
        };
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
    }

    /// Whether another holder's record `rv` has stayed unchanged for `duration`, as seen from here.
    fn stale(&self, rv: String, duration: Duration) -> bool {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == rv => since.elapsed() >= duration,
            _ => {
                *observed = Some((rv, Instant::now()));
                false
            }
        }
    }
}
