//! The verbs on a resource: get, list, create, update (PUT), patch, delete and
//! deletecollection, each a read or one atomic write of the store, with the
//! `status` subresource splitting what a write may change. Watch lives in
//! `watch.rs`, the `scale` subresource in `scale.rs`.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::apply::Owners;
use crate::names;
use crate::patch::{self, PatchKind};
use crate::request::{ApiRequest, Subresource, Verb};
use crate::resource::{Key, Resource};
use crate::response::{self, Body};
use crate::scale;
use crate::selector::Selector;
use crate::status::ApiError;
use crate::store::Store;
use crate::watch::{self, WatchParams};

/// The field manager of writes that name none (kube-apiserver would derive
/// one from the User-Agent, which kube does not send).
const DEFAULT_MANAGER: &str = "unknown";

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Everything but the status (of resources that have a status subresource).
    Main,
    /// Only the status.
    Status,
}

/// Serves one resource request.
pub fn handle(store: &Store, req: &ApiRequest, headers: &HeaderMap, body: &Bytes) -> Response<Body> {
    dispatch(store, req, headers, body).unwrap_or_else(|e| response::error(&e))
}

fn dispatch(store: &Store, req: &ApiRequest, headers: &HeaderMap, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let part = if req.subresource == Some(Subresource::Status) { Part::Status } else { Part::Main };
    match (req.verb, req.subresource) {
        (Verb::Watch, _) => Ok(watch::start(store, WatchParams::from_request(req)?)),
        (Verb::List, _) => list(store, req),
        (Verb::Get, Some(Subresource::Scale)) => scale::get(store, &key(req)?),
        (Verb::Get, _) => {
            let key = key(req)?;
            let obj = store.get(&key).ok_or_else(|| ApiError::not_found(key.resource.get(), &key.name))?;
            Ok(response::json(StatusCode::OK, &obj))
        }
        (Verb::Create, _) => create(store, req, body),
        (Verb::Update, Some(Subresource::Scale)) => scale::replace(store, &key(req)?, &parse_body(body)?, manager(req)),
        (Verb::Update, _) => replace(store, req, body, part),
        (Verb::Patch, sub) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let kind = PatchKind::from_content_type(content_type)?;
            if sub == Some(Subresource::Scale) {
                return scale::patch(store, &key(req)?, kind, &parse_body(body)?, manager(req));
            }
            patch(store, req, kind, body, part)
        }
        (Verb::Delete, _) => delete(store, req, body),
        (Verb::DeleteCollection, _) => delete_collection(store, req),
    }
}

fn key(req: &ApiRequest) -> Result<Key, ApiError> {
    match (&req.namespace, &req.name) {
        (Some(ns), Some(name)) => Ok(Key::new(req.resource, ns.clone(), name.clone())),
        _ => Err(ApiError::NoRoute),
    }
}

fn manager(req: &ApiRequest) -> &str {
    req.query.get("fieldManager").filter(|m| !m.is_empty()).unwrap_or(DEFAULT_MANAGER)
}

/// The request body as a JSON object.
pub fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    if v.is_object() || v.is_array() { Ok(v) } else { Err(ApiError::BadRequest("the request body must be a JSON object".into())) }
}

/// Refuses a body whose `kind` or `apiVersion` names another type.
pub fn check_type(obj: &Value, kind: &str, api_version: &str) -> Result<(), ApiError> {
    for (field, want) in [("kind", kind), ("apiVersion", api_version)] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() || s == want => {}
            Some(other) => return Err(ApiError::BadRequest(format!("{field} {other} does not match the expected {want:?}"))),
        }
    }
    Ok(())
}

/// Refuses a body whose `metadata.name` or `metadata.namespace` contradict the path.
fn check_identity(obj: &Value, key: &Key) -> Result<(), ApiError> {
    let meta = |f: &str| obj.get("metadata").and_then(|m| m.get(f)).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(name) = meta("name").filter(|n| *n != key.name) {
        return Err(ApiError::BadRequest(format!("the name of the object ({name}) does not match the name on the URL ({})", key.name)));
    }
    if let Some(ns) = meta("namespace").filter(|n| *n != key.namespace) {
        return Err(ApiError::BadRequest(format!(
            "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({})",
            key.namespace
        )));
    }
    Ok(())
}

fn check_body(obj: &Value, resource: &Resource, key: &Key) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest("the request body must be a JSON object".into()));
    }
    check_type(obj, resource.kind, &resource.api_version())?;
    check_identity(obj, key)
}

/// Keeps the stored part a write may not change.
fn restrict(resource: &Resource, part: Part, prev: Option<&Value>, mut new: Value) -> Value {
    if !resource.status {
        return new;
    }
    match (part, prev) {
        (Part::Main, prev) => {
            if let Some(obj) = new.as_object_mut() {
                match prev.and_then(|p| p.get("status")) {
                    Some(status) => obj.insert("status".into(), status.clone()),
                    None => obj.remove("status"),
                };
            }
            new
        }
        (Part::Status, Some(prev)) => {
            let mut out = prev.clone();
            let rv = new.pointer("/metadata/resourceVersion").cloned();
            if let (Some(obj), Some(status)) = (out.as_object_mut(), new.get("status")) {
                obj.insert("status".into(), status.clone());
            }
            if let (Some(Value::Object(meta)), Some(rv)) = (out.get_mut("metadata"), rv) {
                meta.insert("resourceVersion".into(), rv);
            }
            out
        }
        (Part::Status, None) => new,
    }
}

fn list(store: &Store, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let q = &req.query;
    let selector = Selector::parse(q.get("labelSelector"), q.get("fieldSelector"))?;
    let limit = usize::try_from(q.number("limit")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let page = store.list(req.resource, req.namespace.as_deref(), &selector, limit, q.get("continue").filter(|c| !c.is_empty()))?;
    let resource = req.resource.get();
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(page.rv.to_string()));
    if let Some(next) = page.next {
        meta.insert("continue".into(), Value::String(next));
    }
    let items: Vec<Value> = page.items.iter().map(|o| (**o).clone()).collect();
    let body = json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version(), "metadata": meta, "items": items});
    Ok(response::json(StatusCode::OK, &body))
}

fn create(store: &Store, req: &ApiRequest, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let resource = req.resource.get();
    let mut obj = parse_body(body)?;
    let namespace = req.namespace.clone().ok_or(ApiError::NoRoute)?;
    let meta = obj.get("metadata");
    let name = match (
        meta.and_then(|m| m.get("name")).and_then(Value::as_str),
        meta.and_then(|m| m.get("generateName")).and_then(Value::as_str),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", names::suffix(5)),
        _ => return Err(ApiError::Invalid("metadata.name: Required value: name or generateName is required".into())),
    };
    names::validate(&name)?;
    let key = Key::new(req.resource, namespace, name);
    check_body(&obj, resource, &key)?;
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("resourceVersion");
    }
    let manager = manager(req);
    let written = store.write(&key, |cur, owners| {
        if cur.is_some() {
            return Err(ApiError::AlreadyExists { qualified: resource.qualified(), name: key.name.clone() });
        }
        let obj = restrict(resource, Part::Main, None, obj);
        owners.record_update(None, &obj, manager);
        Ok(Some(obj))
    })?;
    Ok(response::json(StatusCode::CREATED, &written.object))
}

fn replace(store: &Store, req: &ApiRequest, body: &Bytes, part: Part) -> Result<Response<Body>, ApiError> {
    let resource = req.resource.get();
    let key = key(req)?;
    let obj = parse_body(body)?;
    check_body(&obj, resource, &key)?;
    let manager = manager(req);
    let written = store.write(&key, |cur, owners| {
        let cur = cur.ok_or_else(|| ApiError::not_found(resource, &key.name))?;
        let new = restrict(resource, part, Some(cur), obj);
        owners.record_update(Some(cur), &new, manager);
        Ok(Some(new))
    })?;
    Ok(response::json(StatusCode::OK, &written.object))
}

fn patch(store: &Store, req: &ApiRequest, kind: PatchKind, body: &Bytes, part: Part) -> Result<Response<Body>, ApiError> {
    let resource = req.resource.get();
    let key = key(req)?;
    let body = parse_body(body)?;
    if kind != PatchKind::Json {
        check_body(&body, resource, &key)?;
    }
    let field_manager = req.query.get("fieldManager").filter(|m| !m.is_empty());
    let force = req.query.flag("force");
    let written = store.write(&key, |cur, owners: &mut Owners| {
        let new = match (kind, cur) {
            (PatchKind::Apply, cur) => {
                if cur.is_none() {
                    names::validate(&key.name)?;
                }
                let manager =
                    field_manager.ok_or_else(|| ApiError::Invalid("fieldManager: Required value: is required for apply patch".into()))?;
                owners.apply(cur, &body, manager, force).map_err(|c| ApiError::conflict(resource, &key.name, c.message()))?
            }
            (_, None) => return Err(ApiError::not_found(resource, &key.name)),
            (PatchKind::Merge | PatchKind::StrategicMerge, Some(cur)) => {
                let mut new = cur.clone();
                patch::merge(&mut new, &body);
                new
            }
            (PatchKind::Json, Some(cur)) => patch::json_patch(cur, &body)?,
        };
        let new = restrict(resource, part, cur, new);
        if kind != PatchKind::Apply {
            owners.record_update(cur, &new, field_manager.unwrap_or(DEFAULT_MANAGER));
        }
        Ok(Some(new))
    })?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(response::json(status, &written.object))
}

fn delete(store: &Store, req: &ApiRequest, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let resource = req.resource.get();
    let key = key(req)?;
    let options = if body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { parse_body(body)? };
    let precondition = |f: &str| options.pointer(&format!("/preconditions/{f}")).and_then(Value::as_str).filter(|s| !s.is_empty());
    let written = store.write(&key, |cur, _| {
        let cur = cur.ok_or_else(|| ApiError::not_found(resource, &key.name))?;
        for field in ["uid", "resourceVersion"] {
            let stored = cur.pointer(&format!("/metadata/{field}")).and_then(Value::as_str);
            if let Some(want) = precondition(field).filter(|want| Some(*want) != stored) {
                return Err(ApiError::conflict(resource, &key.name, format!("Precondition failed: {field}: {want}, stored: {stored:?}")));
            }
        }
        Ok(None)
    })?;
    Ok(response::json(StatusCode::OK, &written.object))
}

fn delete_collection(store: &Store, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let resource = req.resource.get();
    let selector = Selector::parse(req.query.get("labelSelector"), req.query.get("fieldSelector"))?;
    let page = store.list(req.resource, req.namespace.as_deref(), &selector, 0, None)?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let meta = |f: &str| obj.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default().to_string();
        let key = Key::new(req.resource, meta("namespace"), meta("name"));
        // Gone in the meantime is fine: it is deleted either way.
        if let Ok(w) = store.write(&key, |cur, _| cur.map(|_| None).ok_or(ApiError::NoRoute)) {
            deleted.push((*w.object).clone());
        }
    }
    let body = json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version(), "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": deleted});
    Ok(response::json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests;
