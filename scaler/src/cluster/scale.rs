//! Reading and patching a Deployment's `scale` subresource: the only write
//! wakegate makes to workloads. Both directions are conditional on the current
//! count, so concurrent callers (two gateways waking, a wake racing a
//! scale-down) cannot push a solution past 0 ↔ `wake-replicas`, and an HPA
//! that manages 1 ↔ N above that is left alone.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// The Deployment's desired replicas.
pub async fn replicas(api: &Api<Deployment>, name: &str) -> Result<u32, kube::Error> {
    let scale = api.get_scale(name).await?;
    Ok(scale.spec.and_then(|s| s.replicas).and_then(|r| u32::try_from(r).ok()).unwrap_or(0))
}

async fn set(api: &Api<Deployment>, name: &str, replicas: u32) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

/// Scales `name` to `to` if it is at zero. Returns whether it did, and the
/// replicas after the call.
pub async fn wake(api: &Api<Deployment>, name: &str, to: u32) -> Result<(bool, u32), kube::Error> {
    let current = replicas(api, name).await?;
    if current > 0 {
        return Ok((false, current));
    }
    set(api, name, to).await?;
    Ok((true, to))
}

/// Scales `name` to zero if it is up. Returns whether it did.
pub async fn sleep(api: &Api<Deployment>, name: &str) -> Result<bool, kube::Error> {
    if replicas(api, name).await? == 0 {
        return Ok(false);
    }
    set(api, name, 0).await?;
    Ok(true)
}
