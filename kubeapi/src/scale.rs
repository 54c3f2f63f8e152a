//! The `scale` subresource of Deployments: an autoscaling/v1 `Scale` view of
//! `spec.replicas`, `status.replicas` and the selector. Reads build the view;
//! writes (PUT, or any patch type applied to the view) change only
//! `spec.replicas` of the Deployment, under its resourceVersion.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::patch::{self, PatchKind};
use crate::resource::Key;
use crate::response::{self, Body};
use crate::status::ApiError;
use crate::store::Store;
use crate::verbs::check_type;

/// `GET .../deployments/<name>/scale`.
pub fn get(store: &Store, key: &Key) -> Result<Response<Body>, ApiError> {
    let obj = store.get(key).ok_or_else(|| ApiError::not_found(key.resource.get(), &key.name))?;
    Ok(response::json(StatusCode::OK, &view(&obj)))
}

/// `PUT .../scale` with a whole `Scale`.
pub fn replace(store: &Store, key: &Key, body: &Value, manager: &str) -> Result<Response<Body>, ApiError> {
    write(store, key, manager, |_| Ok(body.clone()))
}

/// `PATCH .../scale`: the patch applies to the `Scale` view (an apply patch merges).
pub fn patch(store: &Store, key: &Key, kind: PatchKind, body: &Value, manager: &str) -> Result<Response<Body>, ApiError> {
    write(store, key, manager, |scale| match kind {
        PatchKind::Json => patch::json_patch(scale, body),
        PatchKind::Merge | PatchKind::StrategicMerge | PatchKind::Apply => {
            let mut scale = scale.clone();
            patch::merge(&mut scale, body);
            Ok(scale)
        }
    })
}

fn write(store: &Store, key: &Key, manager: &str, f: impl FnOnce(&Value) -> Result<Value, ApiError>) -> Result<Response<Body>, ApiError> {
    let resource = key.resource.get();
    let written = store.write(key, |cur, owners| {
        let cur = cur.ok_or_else(|| ApiError::not_found(resource, &key.name))?;
        let scale = f(&view(cur))?;
        check_type(&scale, "Scale", "autoscaling/v1")?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .filter(|r| *r >= 0)
            .ok_or_else(|| ApiError::Invalid("spec.replicas: Invalid value: must be a non-negative integer".into()))?;
        let mut new = cur.clone();
        patch::merge(&mut new, &json!({"spec": {"replicas": replicas}}));
        if let Some(rv) = scale.pointer("/metadata/resourceVersion").filter(|rv| !rv.is_null()) {
            patch::merge(&mut new, &json!({"metadata": {"resourceVersion": rv}}));
        }
        owners.record_update(Some(cur), &new, manager);
        Ok(Some(new))
    })?;
    Ok(response::json(StatusCode::OK, &view(&written.object)))
}

/// The `Scale` view of a Deployment.
pub fn view(deployment: &Value) -> Value {
    let meta = |f: &str| deployment.pointer(&format!("/metadata/{f}")).cloned().unwrap_or(Value::Null);
    let selector = deployment
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta("name"),
            "namespace": meta("namespace"),
            "uid": meta("uid"),
            "resourceVersion": meta("resourceVersion"),
            "creationTimestamp": meta("creationTimestamp"),
        },
        "spec": {"replicas": replicas(deployment)},
        "status": {
            "replicas": deployment.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector.unwrap_or_default(),
        },
    })
}

/// `spec.replicas` of a Deployment (Kubernetes' default is 1).
pub fn replicas(deployment: &Value) -> i64 {
    deployment.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}
