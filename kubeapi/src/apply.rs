//! Server-side apply, simplified: every leaf field of an object (a scalar, a
//! list, or an empty map; labels and annotations one by one; never `kind`,
//! `apiVersion` or the rest of `metadata`) has a set of managers. An apply
//! merges its body into the object and makes its manager an owner of every
//! leaf it sets; setting a leaf another manager owns to a different value is
//! a 409 `Conflict` unless `force=true`. Fields a manager applied before and
//! omits now are removed unless someone else owns them too. Any other write
//! makes its field manager the only owner of the leaves it changed.
//!
//! That is enough for the Lease races that kube-lease-manager relies on; it is
//! not the structured-merge-diff of kube-apiserver (lists are atomic here).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::patch::merge;

/// A leaf's path from the root of its object.
type Path = Vec<String>;

/// The field owners of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners(BTreeMap<Path, BTreeSet<String>>);

/// Why an apply was refused: the contested fields, with their other owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict(pub Vec<(Path, Vec<String>)>);

impl ApplyConflict {
    /// The message kube-apiserver gives, e.g.
    /// `Apply failed with 1 conflict: conflict with "other": .spec.holderIdentity`.
    pub fn message(&self) -> String {
        let n = self.0.len();
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(path, owners)| {
                let who: Vec<String> = owners.iter().map(|o| format!("{o:?}")).collect();
                format!("conflict with {}: .{}", who.join(", "), path.join("."))
            })
            .collect();
        format!("Apply failed with {n} conflict{}: {}", if n == 1 { "" } else { "s" }, list.join("; "))
    }
}

impl Owners {
    /// Applies `applied` for `manager` on top of `live` (absent: a create) and
    /// returns the new object; `self` then records the new ownership.
    pub fn apply(&mut self, live: Option<&Value>, applied: &Value, manager: &str, force: bool) -> Result<Value, ApplyConflict> {
        let mine = leaves(applied);
        let mut obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
        let mut conflicts = Vec::new();
        for (path, value) in &mine {
            let others: Vec<String> = self.0.get(path).into_iter().flatten().filter(|m| *m != manager).cloned().collect();
            if !others.is_empty() && value_at(&obj, path) != Some(*value) {
                conflicts.push((path.clone(), others));
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApplyConflict(conflicts));
        }
        let dropped: Vec<Path> =
            self.0.iter().filter(|(p, m)| m.contains(manager) && !mine.contains_key(*p)).map(|(p, _)| p.clone()).collect();
        for path in dropped {
            let managers = self.0.entry(path.clone()).or_default();
            managers.remove(manager);
            if managers.is_empty() {
                self.0.remove(&path);
                remove_at(&mut obj, &path);
            }
        }
        for (path, value) in &mine {
            let changed = value_at(&obj, path) != Some(*value);
            let managers = self.0.entry(path.clone()).or_default();
            if changed {
                managers.clear();
            }
            managers.insert(manager.to_string());
        }
        merge(&mut obj, applied);
        self.retain_present(&obj);
        Ok(obj)
    }

    /// Records a write that is not an apply: `manager` becomes the only owner
    /// of every leaf that changed; leaves that are gone lose their owners.
    pub fn record_update(&mut self, old: Option<&Value>, new: &Value, manager: &str) {
        let before = old.map(leaves).unwrap_or_default();
        for (path, value) in leaves(new) {
            if before.get(&path) != Some(&value) {
                self.0.insert(path, BTreeSet::from([manager.to_string()]));
            }
        }
        self.retain_present(new);
    }

    /// Managers of the leaf at `path` (dotted), for tests and debugging.
    pub fn managers_of(&self, path: &str) -> Vec<String> {
        let path: Path = path.split('.').map(str::to_string).collect();
        self.0.get(&path).map(|m| m.iter().cloned().collect()).unwrap_or_default()
    }

    fn retain_present(&mut self, obj: &Value) {
        let present = leaves(obj);
        self.0.retain(|p, m| !m.is_empty() && present.contains_key(p));
    }
}

/// The tracked leaves of an object, with their values.
fn leaves(obj: &Value) -> BTreeMap<Path, &Value> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else { return out };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for sub in ["labels", "annotations"] {
                    for (lk, lv) in v.get(sub).and_then(Value::as_object).into_iter().flatten() {
                        out.insert(vec!["metadata".into(), sub.into(), lk.clone()], lv);
                    }
                }
            }
            _ => walk(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn walk<'a>(v: &'a Value, path: Path, out: &mut BTreeMap<Path, &'a Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(child, p, out);
            }
        }
        _ => {
            out.insert(path, v);
        }
    }
}

fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.get(k))
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, init)) = path.split_last() else { return };
    let parent = init.iter().try_fold(obj, |v, k| v.get_mut(k));
    if let Some(Value::Object(m)) = parent {
        m.remove(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": holder, "leaseDurationSeconds": 5}})
    }

    #[test]
    fn second_manager_conflicts_unless_forced() {
        let mut owners = Owners::default();
        let live = json!({"metadata": {"name": "l"}});
        let a = owners.apply(Some(&live), &lease("a"), "ma", false).unwrap();
        assert_eq!(a["spec"]["holderIdentity"], "a");
        assert_eq!(owners.managers_of("spec.holderIdentity"), ["ma"]);

        let err = owners.apply(Some(&a), &lease("b"), "mb", false).unwrap_err();
        assert_eq!(err.message(), "Apply failed with 1 conflict: conflict with \"ma\": .spec.holderIdentity");

        // The same value is shared ownership, not a conflict.
        owners.apply(Some(&a), &lease("a"), "mb", false).unwrap();
        assert_eq!(owners.managers_of("spec.holderIdentity"), ["ma", "mb"]);

        let b = owners.apply(Some(&a), &lease("b"), "mb", true).unwrap();
        assert_eq!(b["spec"]["holderIdentity"], "b");
        assert_eq!(owners.managers_of("spec.holderIdentity"), ["mb"]);
        assert_eq!(owners.managers_of("spec.leaseDurationSeconds"), ["ma", "mb"]);
    }

    #[test]
    fn omitted_fields_are_removed_unless_shared() {
        let mut owners = Owners::default();
        let one = owners.apply(None, &json!({"spec": {"x": 1, "y": 2}, "metadata": {"labels": {"l": "v"}}}), "m", false).unwrap();
        let two = owners.apply(Some(&one), &json!({"spec": {"x": 1}}), "m", false).unwrap();
        assert_eq!(two, json!({"spec": {"x": 1}, "metadata": {"labels": {}}}));
        owners.apply(Some(&two), &json!({"spec": {"x": 1}}), "other", false).unwrap();
        let three = owners.apply(Some(&two), &json!({"spec": {"z": 3}}), "m", false).unwrap();
        assert_eq!(three["spec"], json!({"x": 1, "z": 3}));
    }

    #[test]
    fn updates_take_changed_fields() {
        let mut owners = Owners::default();
        let a = owners.apply(None, &lease("a"), "ma", false).unwrap();
        let mut released = a.clone();
        released["spec"]["holderIdentity"] = Value::Null;
        if let Some(spec) = released["spec"].as_object_mut() {
            spec.remove("holderIdentity");
        }
        owners.record_update(Some(&a), &released, "ma");
        assert!(owners.managers_of("spec.holderIdentity").is_empty());
        // Nobody owns the holder now: a new manager takes it without force.
        let b = owners.apply(Some(&released), &lease("b"), "mb", false).unwrap();
        owners.record_update(Some(&b), &json!({"spec": {"holderIdentity": "c", "leaseDurationSeconds": 5}}), "put");
        assert_eq!(owners.managers_of("spec.holderIdentity"), ["put"]);
        assert_eq!(owners.managers_of("spec.leaseDurationSeconds"), ["ma", "mb"]);
    }
}
