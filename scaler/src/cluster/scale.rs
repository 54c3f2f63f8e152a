//! Reading and patching a Deployment's `scale` subresource: the only write
//! wakegate makes to workloads. Both directions are conditional: a patch
//! carries the `resourceVersion` of the reading it was decided on, so the API
//! server refuses it (409 Conflict) if the Deployment changed in between.
//! Concurrent callers (two gateways waking, a wake racing a scale-down, an
//! operator's `kubectl scale` or an HPA while the reaper confirms an idle
//! decision) therefore cannot push a solution past 0 ↔ `wake-replicas` or
//! undo someone else's count; an HPA that manages 1 ↔ N above that is left
//! alone.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// A reading of a Deployment's scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Desired replicas.
    pub replicas: u32,
    /// The Deployment's `resourceVersion` when read (empty if the server sent none).
    pub resource_version: String,
}

/// Reads the Deployment's scale.
pub async fn read(api: &Api<Deployment>, name: &str) -> Result<Seen, kube::Error> {
    let scale = api.get_scale(name).await?;
    Ok(Seen {
        replicas: scale.spec.and_then(|s| s.replicas).and_then(|r| u32::try_from(r).ok()).unwrap_or(0),
        resource_version: scale.metadata.resource_version.unwrap_or_default(),
    })
}

/// Sets the replicas if the Deployment is still as `seen`. `Ok(false)`: it
/// changed since (409 Conflict), nothing was written.
async fn set_if(api: &Api<Deployment>, name: &str, seen: &Seen, replicas: u32) -> Result<bool, kube::Error> {
    let mut patch = serde_json::json!({ "spec": { "replicas": replicas } });
    if !seen.resource_version.is_empty() {
        patch["metadata"] = serde_json::json!({ "resourceVersion": seen.resource_version });
    }
    match api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Readings a wake makes at most when the Deployment keeps changing under it.
const WAKE_ATTEMPTS: usize = 3;

/// Scales `name` to `to` if it is at zero. Returns whether it did, and the
/// replicas after the call. A Deployment that changed between the reading
/// and the patch is read again: someone else may have woken it.
pub async fn wake(api: &Api<Deployment>, name: &str, to: u32) -> Result<(bool, u32), kube::Error> {
    let mut last = None;
    for _ in 0..WAKE_ATTEMPTS {
        let seen = read(api, name).await?;
        if seen.replicas > 0 {
            return Ok((false, seen.replicas));
        }
        if set_if(api, name, &seen, to).await? {
            return Ok((true, to));
        }
        last = Some(seen);
    }
    // Still at zero after every attempt, and changing each time: say so
    // rather than report it up.
    let rv = last.map(|s| s.resource_version).unwrap_or_default();
    let message = format!("deployment {name} changed during each of {WAKE_ATTEMPTS} attempts to scale it up (last resourceVersion {rv})");
    Err(kube::Error::Api(kube::core::Status::failure(&message, "Conflict").with_code(409).boxed()))
}

/// Scales `name` to zero if it is still as `seen` (up, and unchanged since
/// that reading). Returns whether it did.
pub async fn sleep(api: &Api<Deployment>, name: &str, seen: &Seen) -> Result<bool, kube::Error> {
    if seen.replicas == 0 {
        return Ok(false);
    }
    set_if(api, name, seen, 0).await
}
