//! Patch bodies: JSON merge patch (RFC 7386, also used for strategic merge
//! patches, which differ only in how they merge keyed lists) and JSON patch
//! (RFC 6902). Server-side apply, which merges too, lives in `apply.rs`.

use serde_json::Value;

use crate::status::ApiError;

/// The kinds of PATCH, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`; merged like `Merge` (lists are replaced whole).
    StrategicMerge,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`, with a JSON body: server-side apply.
    Apply,
}

impl PatchKind {
    /// The kind for a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Result<PatchKind, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::StrategicMerge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            _ => Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                    .into(),
            )),
        }
    }
}

/// Applies an RFC 7386 merge patch to `target` in place: objects merge key by
/// key, `null` removes a key, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`,
/// `test`) to a copy of `target`; on any failed operation nothing changes.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, ApiError> {
    let ops = ops.as_array().ok_or_else(|| ApiError::BadRequest("a JSON patch must be an array of operations".into()))?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut doc, op).map_err(|why| ApiError::Invalid(format!("JSON patch operation {i}: {why}")))?;
    }
    Ok(doc)
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let field = |name: &str| op.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing string field {name:?}"));
    let path = parse_pointer(field("path")?)?;
    let value = || op.get("value").cloned().ok_or_else(|| "missing field \"value\"".to_string());
    match field("op")? {
        "add" => add(doc, &path, value()?),
        "remove" => remove(doc, &path).map(drop),
        "replace" => {
            remove(doc, &path)?;
            add(doc, &path, value()?)
        }
        "move" => {
            let from = parse_pointer(field("from")?)?;
            let v = remove(doc, &from)?;
            add(doc, &path, v)
        }
        "copy" => {
            let from = parse_pointer(field("from")?)?;
            let v = lookup(doc, &from).cloned().ok_or("\"from\" does not exist")?;
            add(doc, &path, v)
        }
        "test" => match lookup(doc, &path) {
            Some(actual) if *actual == value()? => Ok(()),
            _ => Err(format!("test failed at {}", field("path")?)),
        },
        other => Err(format!("unknown op {other:?}")),
    }
}

/// Splits a JSON pointer into unescaped tokens.
fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest = p.strip_prefix('/').ok_or_else(|| format!("path {p:?} does not start with '/'"))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn parent<'a>(doc: &'a mut Value, path: &'a [String]) -> Result<(&'a mut Value, &'a String), String> {
    let (last, init) = path.split_last().ok_or("the root cannot be the target")?;
    let mut v = doc;
    for t in init {
        v = match v {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path segment {t:?} does not exist"))?;
    }
    Ok((v, last))
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    match parent(doc, path)? {
        (Value::Object(m), key) => {
            m.insert(key.clone(), value);
            Ok(())
        }
        (Value::Array(a), idx) if idx == "-" => {
            a.push(value);
            Ok(())
        }
        (Value::Array(a), idx) => match idx.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!("array index {idx:?} out of range")),
        },
        _ => Err("the parent is not an object or array".into()),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    match parent(doc, path)? {
        (Value::Object(m), key) => m.remove(key).ok_or_else(|| format!("{key:?} does not exist")),
        (Value::Array(a), idx) => match idx.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(format!("array index {idx:?} out of range")),
        },
        _ => Err("the parent is not an object or array".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [3]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3]}));
        let mut doc = json!({"spec": {"replicas": 0}});
        merge(&mut doc, &json!({"spec": {"replicas": 3}}));
        assert_eq!(doc["spec"]["replicas"], 3);
    }

    #[test]
    fn json_patch_ops() {
        let doc = json!({"metadata": {"labels": {"a/b": "1"}}, "spec": {"ports": [1, 3]}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
                {"op": "add", "path": "/spec/ports/1", "value": 2},
                {"op": "add", "path": "/spec/ports/-", "value": 4},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "copy", "from": "/spec/ports/0", "path": "/spec/first"},
                {"op": "move", "from": "/spec/first", "path": "/spec/one"},
                {"op": "remove", "path": "/spec/ports/3"}
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"a/b": "2"}}, "spec": {"ports": [1, 2, 3], "one": 1}}));
    }

    #[test]
    fn json_patch_failures_change_nothing() {
        let doc = json!({"a": 1});
        for ops in [
            json!([{"op": "test", "path": "/a", "value": 2}]),
            json!([{"op": "remove", "path": "/b"}]),
            json!([{"op": "replace", "path": "/b", "value": 1}]),
            json!([{"op": "add", "path": "/x/y", "value": 1}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
        ] {
            assert_eq!(json_patch(&doc, &ops).unwrap_err().code(), 422, "{ops}");
        }
        assert_eq!(json_patch(&doc, &json!({"op": "add"})).unwrap_err().code(), 400);
    }

    #[test]
    fn content_types() {
        assert_eq!(PatchKind::from_content_type("application/apply-patch+yaml").unwrap(), PatchKind::Apply);
        assert_eq!(PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(), PatchKind::Merge);
        assert_eq!(PatchKind::from_content_type("application/json").unwrap_err().code(), 415);
    }
}
