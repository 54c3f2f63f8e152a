//! Rendering and parsing for manifests.rs: `kubectl kustomize` on each tree
//! under deploy/, every object typed by its kind, and the accessors and
//! helpers the checks share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kustomize trees under deploy/, each rendered on its own.
pub(crate) const TREES: [&str; 3] = ["base", "overlays/aws", "overlays/examples"];

/// One rendered object, typed by its kind.
#[allow(clippy::large_enum_variant)] // a few dozen objects, parsed once per test process
pub(crate) enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Deployment),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    IngressClass(IngressClass),
    /// A CRD (Prometheus Operator): no k8s-openapi type, checked field by field.
    ServiceMonitor(Value),
    /// The same (required fields checked in `parse`); its rules are run
    /// through promtool by tests/alerts.rs.
    PrometheusRule,
}

/// A rendered object with its identity.
pub(crate) struct Obj {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) object: Object,
}

/// A rendered kustomize tree.
pub(crate) struct Tree {
    pub(crate) name: &'static str,
    pub(crate) objects: Vec<Obj>,
}

pub(crate) fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tree, rendered and parsed on first use (once per test process).
pub(crate) fn tree(name: &str) -> Result<&'static Tree> {
    static RENDERED: [OnceLock<Result<Tree, String>>; TREES.len()] = [const { OnceLock::new() }; TREES.len()];
    let i = TREES.iter().position(|t| *t == name).ok_or_else(|| anyhow!("no tree {name}"))?;
    match RENDERED[i].get_or_init(|| render(TREES[i]).map_err(|e| format!("{e:#}"))) {
        Ok(t) => Ok(t),
        Err(e) => bail!("deploy/{name}: {e}"),
    }
}

pub(crate) fn render(name: &'static str) -> Result<Tree> {
    let dir = deploy_dir().join(name);
    let out = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "kubectl is not installed (not on PATH): these tests render deploy/ with `kubectl kustomize`. \
             Install kubectl 1.27 or later (kustomize v5; Debian 12's kubernetes-client is too old) and run them again."
        ),
        Err(e) => return Err(e).context("running kubectl kustomize"),
    };
    ensure!(out.status.success(), "kubectl kustomize {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?;
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).context("kustomize output is not valid YAML")?;
        if value.is_null() {
            continue;
        }
        objects.push(parse(value)?);
    }
    ensure!(!objects.is_empty(), "deploy/{name} rendered no objects");
    Ok(Tree { name, objects })
}

pub(crate) fn parse(doc: Value) -> Result<Obj> {
    let str_at = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let (api, kind, name, namespace) = (str_at("/apiVersion"), str_at("/kind"), str_at("/metadata/name"), str_at("/metadata/namespace"));
    ensure!(!name.is_empty(), "a {kind} has no metadata.name");
    let what = format!("{kind} {namespace}/{name}");
    let object = match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(typed(&doc, &what)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(typed(&doc, &what)?),
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(&doc, &what)?),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(typed(&doc, &what)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(&doc, &what)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Object::ClusterRoleBinding(typed(&doc, &what)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(&doc, &what)?),
        ("v1", "Secret") => Object::Secret(typed(&doc, &what)?),
        ("apps/v1", "Deployment") => Object::Deployment(typed(&doc, &what)?),
        ("v1", "Service") => Object::Service(typed(&doc, &what)?),
        ("policy/v1", "PodDisruptionBudget") => Object::PodDisruptionBudget(typed(&doc, &what)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(&doc, &what)?),
        ("networking.k8s.io/v1", "IngressClass") => Object::IngressClass(typed(&doc, &what)?),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            for field in ["/spec/selector", "/spec/endpoints/0/port"] {
                ensure!(doc.pointer(field).is_some(), "{what}: {field} is required");
            }
            Object::ServiceMonitor(doc)
        }
        ("monitoring.coreos.com/v1", "PrometheusRule") => {
            for field in ["/spec/groups/0/name", "/spec/groups/0/rules/0/expr"] {
                ensure!(doc.pointer(field).is_some(), "{what}: {field} is required");
            }
            Object::PrometheusRule
        }
        _ => bail!("{what}: unknown kind {api}/{kind}; give it its k8s-openapi type in parse() or leave it out of deploy/"),
    };
    Ok(Obj { kind, name, namespace, object })
}

/// Parses `doc` as `K` and fails if serialising it back loses or changes anything.
pub(crate) fn typed<K: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> Result<K> {
    let k: K = serde_json::from_value(doc.clone()).with_context(|| format!("{what} does not parse"))?;
    let back = serde_json::to_value(&k)?;
    let mut lost = Vec::new();
    diff(doc, &back, "", &mut lost);
    ensure!(lost.is_empty(), "{what}: fields its type does not know (a typo?): {}", lost.join(", "));
    Ok(k)
}

pub(crate) fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path} ({a} read as {b})")),
    }
}

// === accessors ===

macro_rules! of_kind {
    ($fn:ident, $variant:ident, $ty:ty) => {
        pub(crate) fn $fn(&self) -> impl Iterator<Item = (&Obj, &$ty)> {
            self.objects.iter().filter_map(|o| match &o.object {
                Object::$variant(x) => Some((o, x)),
                _ => None,
            })
        }
    };
}

impl Tree {
    of_kind!(namespaces, Namespace, Namespace);
    of_kind!(service_accounts, ServiceAccount, ServiceAccount);
    of_kind!(roles, Role, Role);
    of_kind!(role_bindings, RoleBinding, RoleBinding);
    of_kind!(cluster_role_bindings, ClusterRoleBinding, ClusterRoleBinding);
    of_kind!(config_maps, ConfigMap, ConfigMap);
    of_kind!(secrets, Secret, Secret);
    of_kind!(deployments, Deployment, Deployment);
    of_kind!(services, Service, Service);
    of_kind!(pdbs, PodDisruptionBudget, PodDisruptionBudget);
    of_kind!(network_policies, NetworkPolicy, NetworkPolicy);
    of_kind!(ingress_classes, IngressClass, IngressClass);
    of_kind!(service_monitors, ServiceMonitor, Value);

    pub(crate) fn rules(&self) -> impl Iterator<Item = (&Obj, &PolicyRule)> {
        self.objects.iter().flat_map(|o| {
            let rules = match &o.object {
                Object::Role(r) => r.rules.as_deref().unwrap_or_default(),
                Object::ClusterRole(r) => r.rules.as_deref().unwrap_or_default(),
                _ => &[],
            };
            rules.iter().map(move |r| (o, r))
        })
    }

    pub(crate) fn deployment(&self, name: &str) -> Result<&Deployment> {
        self.deployments().find(|(o, _)| o.name == name).map(|(_, d)| d).ok_or_else(|| anyhow!("{}: no Deployment {name}", self.name))
    }

    pub(crate) fn service(&self, name: &str) -> Result<&Service> {
        self.services().find(|(o, _)| o.name == name).map(|(_, s)| s).ok_or_else(|| anyhow!("{}: no Service {name}", self.name))
    }

    pub(crate) fn config(&self) -> Result<&BTreeMap<String, String>> {
        self.config_maps()
            .find(|(o, _)| o.name == "wakegate-config" && o.namespace == "wakegate")
            .and_then(|(_, c)| c.data.as_ref())
            .ok_or_else(|| anyhow!("{}: no ConfigMap wakegate/wakegate-config with data", self.name))
    }
}

pub(crate) fn pod_spec(d: &Deployment) -> Result<&PodSpec> {
    d.spec.template.spec.as_ref().ok_or_else(|| anyhow!("Deployment without a pod spec"))
}

pub(crate) fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

pub(crate) fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(crate) fn label_selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(s) = selector else { return false };
    if s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        return false; // not used in deploy/; treat as "does not select" so a test notices
    }
    selects(s.match_labels.as_ref().unwrap_or(&BTreeMap::new()), labels)
}

/// A container's ports by name.
pub(crate) fn port_names(c: &Container) -> BTreeMap<String, i32> {
    c.ports.iter().flatten().filter_map(|p| Some((p.name.clone()?, p.container_port))).collect()
}

pub(crate) fn resolve(port: &IntOrString, names: &BTreeMap<String, i32>) -> Option<i32> {
    match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => names.get(s).copied(),
    }
}

pub(crate) fn only_container(d: &Deployment) -> Result<&Container> {
    let spec = pod_spec(d)?;
    ensure!(spec.containers.len() == 1, "expected one container, found {}", spec.containers.len());
    Ok(&spec.containers[0])
}
