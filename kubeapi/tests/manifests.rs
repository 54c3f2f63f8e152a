//! The manifests under `deploy/` as Kubernetes would read them. Each kustomize
//! tree (base and every overlay) is rendered with `kubectl kustomize`; every
//! object is parsed into its k8s-openapi type by kind and serialised back, so
//! a field the type does not know (a typo such as `readinesProbe`) fails the
//! test instead of being dropped silently. The objects are then checked
//! against docs/cluster-contract.md (names, ports, flags, RBAC verbs) and
//! against the settings schema in `proto`.

#[path = "manifests/render.rs"]
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use render::{TREES, Tree, deploy_dir, label_selects, only_container, parse, pod_labels, pod_spec, port_names, resolve, selects, tree};
use serde_json::Value;

/// `--token-file`'s default (docs/cluster-contract.md).
const TOKEN_FILE: &str = "/var/run/wakegate/token";
/// Keys the pod spec owns in cluster mode (the Deployments' flags and CPU
/// limit): deploy/gen-configmap writes them commented out, not as data.
const POD_OWNED: [&str; 4] = ["listen", "admin-listen", "tls-listen", "workers"];

// === every object ===

#[test]
fn every_tree_renders_and_every_object_parses_into_its_type() -> Result<()> {
    for name in TREES {
        let t = tree(name)?;
        let mut seen = BTreeSet::new();
        for o in &t.objects {
            ensure!(seen.insert((&o.kind, &o.namespace, &o.name)), "{name}: {} {}/{} appears twice", o.kind, o.namespace, o.name);
            let cluster_scoped = matches!(o.kind.as_str(), "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "IngressClass");
            ensure!(cluster_scoped == o.namespace.is_empty(), "{name}: {} {} namespace {:?}", o.kind, o.name, o.namespace);
        }
    }
    Ok(())
}

#[test]
fn an_unknown_kind_or_field_is_refused() {
    let unknown_kind = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}});
    assert!(parse(unknown_kind).is_err());
    let typo = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "x"},
        "spec": {"ports": [{"port": 80}], "selecter": {"a": "b"}}});
    let err = parse(typo).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(".spec.selecter"), "{err}");
}

// === RBAC ===

/// One permission: (service account, namespace, API group, resource, object name or "" for any, verb).
type Grant = (String, String, String, String, String, String);

/// The table of docs/cluster-contract.md ("Objects"), per role:
/// (service account, namespace, API group, resource, name or "", verbs).
const CONTRACT: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("wakegate-gateway", "wakegate", "", "configmaps", "wakegate-config", "list watch"),
    ("wakegate-gateway", "wakegate", "", "secrets", "wakegate-tls", "get list watch update"),
    ("wakegate-gateway", "wakegate", "", "secrets", "wakegate-acme-account", "get update"),
    ("wakegate-gateway", "wakegate", "", "secrets", "", "create"),
    ("wakegate-gateway", "wakegate", "coordination.k8s.io", "leases", proto::cluster::ACME_LEASE, "get update"),
    ("wakegate-gateway", "wakegate", "coordination.k8s.io", "leases", "", "create"),
    ("wakegate-gateway", "wakegate", "events.k8s.io", "events", "", "create patch"),
    ("wakegate-gateway", "solutions", "", "services", "", "list watch"),
    ("wakegate-gateway", "solutions", "networking.k8s.io", "ingresses", "", "list watch"),
    ("wakegate-gateway", "solutions", "discovery.k8s.io", "endpointslices", "", "list watch"),
    ("wakegate-gateway", "solutions", "", "pods", "", "list watch"),
    ("wakegate-scaler", "wakegate", "", "configmaps", "wakegate-config", "get"),
    ("wakegate-scaler", "wakegate", "coordination.k8s.io", "leases", proto::cluster::SCALER_LEASE, "get update"),
    ("wakegate-scaler", "wakegate", "coordination.k8s.io", "leases", "", "create"),
    ("wakegate-scaler", "wakegate", "discovery.k8s.io", "endpointslices", "", "list"),
    ("wakegate-scaler", "solutions", "", "services", "", "list"),
    ("wakegate-scaler", "solutions", "networking.k8s.io", "ingresses", "", "list"),
    ("wakegate-scaler", "solutions", "apps", "deployments", "", "get"),
    ("wakegate-scaler", "solutions", "apps", "deployments/scale", "", "get patch"),
    ("wakegate-scaler", "solutions", "events.k8s.io", "events", "", "create patch"),
];

#[test]
fn rbac_rules_use_no_wildcards_and_name_their_secrets_and_leases() -> Result<()> {
    for name in TREES {
        let t = tree(name)?;
        for (o, rule) in t.rules() {
            let at = format!("{name}: {} {}/{}", o.kind, o.namespace, o.name);
            let fields = [&rule.api_groups, &rule.resources, &rule.resource_names];
            let all = fields.iter().flat_map(|f| f.iter().flatten()).chain(&rule.verbs);
            ensure!(all.clone().all(|s| !s.contains('*')), "{at}: a rule uses '*': {rule:?}");
            let sensitive = rule.resources.iter().flatten().any(|r| r == "secrets" || r == "leases");
            if !sensitive {
                continue;
            }
            let named = rule.resource_names.as_ref().is_some_and(|n| !n.is_empty());
            if rule.verbs.iter().any(|v| v == "create") {
                // create cannot be restricted by name: it must stand alone,
                // so no other verb loses its resourceNames by sharing the rule.
                ensure!(
                    rule.verbs == ["create"] && !named,
                    "{at}: create on secrets/leases must be a rule of its own, without resourceNames: {rule:?}"
                );
            } else {
                ensure!(named, "{at}: a rule on secrets/leases without resourceNames: {rule:?}");
            }
        }
    }
    Ok(())
}

#[test]
fn rbac_grants_each_role_exactly_the_contracts_verbs() -> Result<()> {
    let t = tree("base")?;
    let expected: BTreeSet<Grant> = CONTRACT
        .iter()
        .flat_map(|&(sa, ns, group, resource, name, verbs)| {
            verbs.split(' ').map(move |v| (sa.into(), ns.into(), group.into(), resource.into(), name.into(), v.into()))
        })
        .collect();
    let accounts: BTreeSet<(&str, &str)> = t.service_accounts().map(|(o, _)| (o.namespace.as_str(), o.name.as_str())).collect();
    let mut granted = BTreeSet::new();
    for (o, binding) in t.role_bindings() {
        let r = &binding.role_ref;
        ensure!(r.kind == "Role" && r.api_group.as_deref() == Some("rbac.authorization.k8s.io"), "RoleBinding {} refers to {r:?}", o.name);
        let (_, role) = t
            .roles()
            .find(|(ro, _)| ro.namespace == o.namespace && ro.name == r.name)
            .ok_or_else(|| anyhow!("RoleBinding {}/{} refers to a missing Role {}", o.namespace, o.name, r.name))?;
        for s in binding.subjects.iter().flatten() {
            let ns = s.namespace.as_deref().unwrap_or_default();
            ensure!(
                s.kind == "ServiceAccount" && accounts.contains(&(ns, s.name.as_str())),
                "RoleBinding {}: subject {s:?} is not one of ours",
                o.name
            );
            for rule in role.rules.iter().flatten() {
                let names = rule.resource_names.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| vec![String::new()]);
                for g in rule.api_groups.iter().flatten() {
                    for res in rule.resources.iter().flatten() {
                        for n in &names {
                            for v in &rule.verbs {
                                granted.insert((s.name.clone(), o.namespace.clone(), g.clone(), res.clone(), n.clone(), v.clone()));
                            }
                        }
                    }
                }
            }
        }
    }
    let extra: Vec<_> = granted.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&granted).collect();
    ensure!(
        extra.is_empty() && missing.is_empty(),
        "RBAC differs from docs/cluster-contract.md:\n  granted beyond it: {extra:?}\n  missing: {missing:?}"
    );
    let cluster_roles = t.rules().filter(|(o, _)| o.kind == "ClusterRole").count();
    ensure!(cluster_roles == 0 && t.cluster_role_bindings().count() == 0, "wakegate needs no cluster-wide RBAC");
    Ok(())
}

// === settings ===

#[test]
fn the_configmap_holds_every_known_key_with_a_valid_value() -> Result<()> {
    let known: BTreeSet<&str> = proto::settings::KEYS.iter().chain(proto::settings::TLS_KEYS).map(|k| k.name).collect();
    for name in ["base", "overlays/aws"] {
        let data = tree(name)?.config()?;
        let unknown: Vec<_> = data.keys().filter(|k| !known.contains(k.as_str())).collect();
        ensure!(unknown.is_empty(), "{name}: keys proto does not know: {unknown:?}");
        let missing: Vec<_> = known.iter().filter(|k| !data.contains_key(**k) && !POD_OWNED.contains(k)).collect();
        ensure!(missing.is_empty(), "{name}: keys missing from wakegate-config (run deploy/gen-configmap): {missing:?}");
        let owned: Vec<_> = POD_OWNED.iter().filter(|k| data.contains_key(**k)).collect();
        ensure!(owned.is_empty(), "{name}: {owned:?} are set by the pod spec; the gateway ignores them in the ConfigMap");
        if let Err(errors) = proto::Settings::from_pairs(data.iter().map(|(k, v)| (k.as_str(), v.as_str())), "wakegate-config: ") {
            bail!("{name}: invalid settings: {errors:?}");
        }
    }
    ensure!(
        tree("overlays/aws")?.config()?.get("proxy-protocol").map(String::as_str) == Some("true"),
        "aws: proxy-protocol must be \"true\""
    );
    ensure!(tree("base")?.config()?.get("proxy-protocol").map(String::as_str) == Some("false"), "base: proxy-protocol must stay \"false\"");
    Ok(())
}

#[test]
fn the_committed_configmap_is_what_gen_configmap_writes() -> Result<()> {
    let script = deploy_dir().join("gen-configmap");
    let out = match Command::new("python3").arg(&script).arg("--check").output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("python3 is not installed: it runs deploy/gen-configmap"),
        Err(e) => return Err(e.into()),
    };
    ensure!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn the_wake_token_secret_is_an_empty_placeholder() -> Result<()> {
    let t = tree("base")?;
    let (_, s) = t.secrets().find(|(o, _)| o.name == "wakegate-wake-token").ok_or_else(|| anyhow!("no Secret wakegate-wake-token"))?;
    // With data, every `kubectl apply -k` would reset the operator's token.
    ensure!(s.data.is_none() && s.string_data.is_none(), "the committed wake token Secret must hold no data");
    ensure!(t.secrets().count() == 1, "the base ships no other Secret");
    Ok(())
}

// === workloads ===

#[test]
fn every_pod_is_hardened_and_sized() -> Result<()> {
    for name in TREES {
        for (o, d) in tree(name)?.deployments() {
            let at = format!("{name}: Deployment {}", o.name);
            let spec = pod_spec(d)?;
            let pod_sc = spec.security_context.as_ref();
            ensure!(pod_sc.and_then(|s| s.run_as_non_root) == Some(true), "{at}: runAsNonRoot");
            let seccomp = pod_sc.and_then(|s| s.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
            ensure!(seccomp == Some("RuntimeDefault"), "{at}: seccompProfile RuntimeDefault");
            for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                let at = format!("{at}, container {}", c.name);
                let sc = c.security_context.as_ref().ok_or_else(|| anyhow!("{at}: no securityContext"))?;
                ensure!(sc.read_only_root_filesystem == Some(true), "{at}: readOnlyRootFilesystem");
                ensure!(sc.allow_privilege_escalation == Some(false), "{at}: allowPrivilegeEscalation false");
                ensure!(sc.privileged != Some(true), "{at}: privileged");
                let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
                ensure!(drop == ["ALL"], "{at}: capabilities.drop [ALL]");
                ensure!(sc.capabilities.as_ref().and_then(|c| c.add.as_ref()).is_none_or(|a| a.is_empty()), "{at}: adds capabilities");
                let res = c.resources.as_ref().ok_or_else(|| anyhow!("{at}: no resources"))?;
                for (what, m) in [("requests", &res.requests), ("limits", &res.limits)] {
                    let m = m.as_ref().ok_or_else(|| anyhow!("{at}: no resources.{what}"))?;
                    ensure!(m.contains_key("cpu") && m.contains_key("memory"), "{at}: resources.{what} needs cpu and memory");
                }
            }
        }
    }
    Ok(())
}

/// Checks what both wakegate Deployments share; returns the container.
fn check_role_deployment<'a>(
    t: &'a Tree,
    name: &str,
    role: &str,
    ports: &[(&str, i32)],
    listeners: &[(&str, &str)],
) -> Result<&'a Container> {
    let d = t.deployment(name)?;
    ensure!(d.spec.replicas == Some(2), "{name}: 2 replicas");
    let spec = pod_spec(d)?;
    ensure!(spec.service_account_name.as_deref() == Some(name), "{name}: serviceAccountName {name}");
    let c = only_container(d)?;
    let args = c.args.clone().unwrap_or_default();
    ensure!(args.first().map(String::as_str) == Some(role), "{name}: first argument must be the role {role:?}: {args:?}");
    ensure!(args.iter().any(|a| a == "--namespace=$(POD_NAMESPACE)"), "{name}: --namespace=$(POD_NAMESPACE)");
    let names = port_names(c);
    let want: BTreeMap<String, i32> = ports.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    ensure!(names == want, "{name}: container ports {names:?}, contract says {want:?}");
    // A listener flag must bind the port the container declares under that name.
    for (flag, port_name) in listeners {
        let addr = args.iter().find_map(|a| a.strip_prefix(&format!("{flag}="))).ok_or_else(|| anyhow!("{name}: no {flag}"))?;
        let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse::<i32>().ok());
        ensure!(port.is_some() && port == names.get(*port_name).copied(), "{name}: {flag}={addr} is not the {port_name} port");
    }
    for (var, path) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let field = c.env.iter().flatten().find(|e| e.name == var).and_then(|e| e.value_from.as_ref()?.field_ref.as_ref());
        ensure!(field.map(|f| f.field_path.as_str()) == Some(path), "{name}: env {var} from the downward API ({path})");
    }
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).ok_or_else(|| anyhow!("{name}: {path} probe"))?;
        ensure!(get.path.as_deref() == Some(path), "{name}: probe path {:?}, want {path}", get.path);
        ensure!(resolve(&get.port, &names) == names.get("admin").copied(), "{name}: {path} must be probed on the admin port");
    }
    // The wake token is the file the contract names, from the contract's Secret.
    let mut token = None;
    for m in c.volume_mounts.iter().flatten() {
        let Some(v) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else { continue };
        let Some(secret) = v.secret.as_ref().filter(|s| s.secret_name.as_deref() == Some("wakegate-wake-token")) else { continue };
        ensure!(m.sub_path.is_none(), "{name}: a subPath mount never sees a rotated token");
        let item = secret.items.iter().flatten().find(|i| i.key == "token").map_or("token", |i| i.path.as_str());
        token = Some(format!("{}/{item}", m.mount_path.trim_end_matches('/')));
    }
    ensure!(token.as_deref() == Some(TOKEN_FILE), "{name}: the wake token must be mounted at {TOKEN_FILE}, found {token:?}");
    let anti = spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref());
    let hostname = anti.is_some_and(|a| {
        let required = a.required_during_scheduling_ignored_during_execution.iter().flatten();
        let preferred = a.preferred_during_scheduling_ignored_during_execution.iter().flatten().map(|w| &w.pod_affinity_term);
        required
            .chain(preferred)
            .any(|term| term.topology_key == "kubernetes.io/hostname" && label_selects(term.label_selector.as_ref(), &pod_labels(d)))
    });
    ensure!(hostname, "{name}: pod anti-affinity on kubernetes.io/hostname selecting its own pods");
    ensure!(spec.topology_spread_constraints.as_ref().is_some_and(|c| !c.is_empty()), "{name}: topology spread constraints");
    let pdb = t.pdbs().find(|(_, p)| label_selects(p.spec.as_ref().and_then(|s| s.selector.as_ref()), &pod_labels(d)));
    let min = pdb.and_then(|(_, p)| p.spec.as_ref()?.min_available.clone());
    ensure!(min == Some(IntOrString::Int(1)), "{name}: a PodDisruptionBudget with minAvailable 1");
    Ok(c)
}

#[test]
fn the_gateway_and_the_scaler_follow_the_cluster_contract() -> Result<()> {
    let t = tree("base")?;
    let gateway = check_role_deployment(
        t,
        "wakegate-gateway",
        "gateway",
        &[("http", 8080), ("https", 8443), ("admin", 9090)],
        &[("--listen", "http"), ("--tls-listen", "https"), ("--admin-listen", "admin")],
    )?;
    check_role_deployment(
        t,
        "wakegate-scaler",
        "scaler",
        &[("wake", 9091), ("admin", 9092)],
        &[("--listen", "wake"), ("--admin-listen", "admin")],
    )?;

    // SIGTERM drain: the pod must outlive preStop + shutdown-grace.
    let spec = pod_spec(t.deployment("wakegate-gateway")?)?;
    let pre_stop = gateway.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()?.sleep.as_ref()).map(|s| s.seconds);
    let pre_stop = pre_stop.ok_or_else(|| anyhow!("gateway: preStop sleep"))?;
    ensure!((3..=15).contains(&pre_stop), "gateway: preStop sleep of {pre_stop}s");
    let grace =
        proto::units::parse_duration(t.config()?.get("shutdown-grace").map(String::as_str).unwrap_or_default()).map_err(|e| anyhow!(e))?;
    let period = spec.termination_grace_period_seconds.unwrap_or(30);
    ensure!(
        u64::try_from(period)? > grace.as_secs() + u64::try_from(pre_stop)?,
        "gateway: terminationGracePeriodSeconds {period} must exceed preStop {pre_stop}s + shutdown-grace {grace:?}"
    );

    // Services: names and ports from the contract, each resolving to a container port.
    let public = t.service("wakegate-gateway")?.spec.as_ref().ok_or_else(|| anyhow!("wakegate-gateway: no spec"))?;
    ensure!(public.type_.as_deref() == Some("LoadBalancer"), "wakegate-gateway: type LoadBalancer");
    ensure!(public.external_traffic_policy.as_deref() == Some("Local"), "wakegate-gateway: externalTrafficPolicy Local");
    for (service, want) in [
        ("wakegate-gateway", vec![("http", 80, 8080), ("https", 443, 8443)]),
        ("wakegate-gateway-admin", vec![("admin", 9090, 9090)]),
        ("wakegate-scaler", vec![("wake", 9091, 9091), ("admin", 9092, 9092)]),
    ] {
        let s = t.service(service)?.spec.as_ref().ok_or_else(|| anyhow!("{service}: no spec"))?;
        ensure!(matches!(s.type_.as_deref(), Some("ClusterIP" | "LoadBalancer") | None), "{service}: type {:?}", s.type_);
        let selector = s.selector.clone().unwrap_or_default();
        let (_, backend) =
            t.deployments().find(|(_, d)| selects(&selector, &pod_labels(d))).ok_or_else(|| anyhow!("{service} selects no pods"))?;
        let names = port_names(only_container(backend)?);
        let got: Vec<(&str, i32, Option<i32>)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().unwrap_or_default(), p.port, p.target_port.as_ref().and_then(|tp| resolve(tp, &names))))
            .collect();
        let want: Vec<(&str, i32, Option<i32>)> = want.into_iter().map(|(n, p, tp)| (n, p, Some(tp))).collect();
        ensure!(got == want, "{service}: ports {got:?}, contract says {want:?}");
    }
    ensure!(
        t.service("wakegate-gateway-admin")?.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true),
        "wakegate-gateway-admin: publishNotReadyAddresses, so the scaler still sees draining replicas"
    );
    ensure!(
        t.ingress_classes().any(|(o, _)| o.name == proto::cluster::INGRESS_CLASS),
        "an IngressClass named {}",
        proto::cluster::INGRESS_CLASS
    );
    ensure!(t.namespaces().any(|(o, _)| o.name == "wakegate"), "Namespace wakegate");
    Ok(())
}

#[test]
fn every_service_selects_pods_and_resolves_its_ports() -> Result<()> {
    for name in TREES {
        let t = tree(name)?;
        for (o, s) in t.services() {
            let spec = s.spec.as_ref().ok_or_else(|| anyhow!("{name}: Service {} has no spec", o.name))?;
            let selector = spec.selector.clone().unwrap_or_default();
            let backend = t.deployments().find(|(d, dep)| d.namespace == o.namespace && selects(&selector, &pod_labels(dep)));
            let (_, backend) = backend.ok_or_else(|| anyhow!("{name}: Service {} selects no Deployment's pods", o.name))?;
            let names: BTreeMap<String, i32> = pod_spec(backend)?.containers.iter().flat_map(port_names).collect();
            for p in spec.ports.iter().flatten() {
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                ensure!(resolve(&target, &names).is_some(), "{name}: Service {} port {:?} targets no container port", o.name, p.name);
            }
        }
    }
    Ok(())
}

// === network policies ===

/// A policy peer, described: `ns:<name>`, `pod:<component>`, `ip:<cidr>`.
fn peer(p: &NetworkPolicyPeer) -> String {
    let label = |s: &Option<LabelSelector>, key: &str| s.as_ref().and_then(|s| s.match_labels.as_ref()?.get(key).cloned());
    match (&p.namespace_selector, &p.pod_selector, &p.ip_block) {
        (Some(_), None, None) => format!("ns:{}", label(&p.namespace_selector, "kubernetes.io/metadata.name").unwrap_or_default()),
        (None, Some(_), None) => format!("pod:{}", label(&p.pod_selector, "app.kubernetes.io/component").unwrap_or_default()),
        (None, None, Some(b)) => format!("ip:{}", b.cidr),
        _ => format!("other:{p:?}"),
    }
}

/// The port numbers a rule opens (`None`: every port).
fn opened(ports: &Option<Vec<NetworkPolicyPort>>, names: &BTreeMap<String, i32>) -> Option<BTreeSet<i32>> {
    let ports = ports.as_ref().filter(|p| !p.is_empty())?;
    Some(ports.iter().filter_map(|p| resolve(p.port.as_ref()?, names)).collect())
}

/// Who may reach each port of the Deployment `deployment`: port → peers ("*" = anyone).
fn ingress_by_port(t: &Tree, deployment: &str) -> Result<BTreeMap<i32, BTreeSet<String>>> {
    let d = t.deployment(deployment)?;
    let names = port_names(only_container(d)?);
    let mut by_port: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    let mut selected = false;
    for (o, np) in t.network_policies() {
        let Some(spec) = np.spec.as_ref().filter(|s| label_selects(s.pod_selector.as_ref(), &pod_labels(d))) else { continue };
        selected = true;
        ensure!(spec.policy_types.iter().flatten().any(|p| p == "Ingress"), "NetworkPolicy {}: policyTypes must include Ingress", o.name);
        for rule in spec.ingress.iter().flatten() {
            let ports = opened(&rule.ports, &names).ok_or_else(|| anyhow!("NetworkPolicy {}: an ingress rule opens every port", o.name))?;
            let peers: BTreeSet<String> = match &rule.from {
                Some(from) if !from.is_empty() => from.iter().map(peer).collect(),
                _ => ["*".to_string()].into(),
            };
            for p in ports {
                by_port.entry(p).or_default().extend(peers.iter().cloned());
            }
        }
    }
    ensure!(selected, "no NetworkPolicy selects the pods of {deployment}");
    Ok(by_port)
}

#[test]
fn network_policies_fence_the_wake_and_admin_ports() -> Result<()> {
    let t = tree("base")?;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let gateway = ingress_by_port(t, "wakegate-gateway")?;
    let want = BTreeMap::from([(8080, set(&["*"])), (8443, set(&["*"])), (9090, set(&["ns:monitoring", "pod:scaler"]))]);
    ensure!(gateway == want, "gateway ingress {gateway:?}, want {want:?}");
    let scaler = ingress_by_port(t, "wakegate-scaler")?;
    let want = BTreeMap::from([(9091, set(&["pod:gateway"])), (9092, set(&["ns:monitoring"]))]);
    ensure!(scaler == want, "scaler ingress {scaler:?}, want {want:?}");

    // The gateway may leave for the solutions, the scaler's wake API, DNS and the API server.
    let (_, np) =
        t.network_policies().find(|(o, _)| o.name == "wakegate-gateway").ok_or_else(|| anyhow!("NetworkPolicy wakegate-gateway"))?;
    let spec = np.spec.as_ref().ok_or_else(|| anyhow!("NetworkPolicy wakegate-gateway: no spec"))?;
    ensure!(spec.policy_types.iter().flatten().any(|p| p == "Egress"), "gateway: policyTypes must include Egress");
    let egress = spec.egress.as_deref().unwrap_or_default();
    let to = |rule: &NetworkPolicyEgressRule| rule.to.iter().flatten().map(peer).collect::<BTreeSet<_>>();
    let port_is = |rule: &NetworkPolicyEgressRule, n: i32| rule.ports.iter().flatten().any(|p| p.port == Some(IntOrString::Int(n)));
    ensure!(egress.iter().any(|r| to(r).contains("ns:solutions")), "gateway egress to namespace solutions");
    ensure!(egress.iter().any(|r| to(r).contains("pod:scaler") && port_is(r, 9091)), "gateway egress to the scaler's wake port");
    ensure!(egress.iter().any(|r| port_is(r, 53)), "gateway egress to DNS");
    ensure!(egress.iter().any(|r| port_is(r, 443) || port_is(r, 6443)), "gateway egress to the API server");
    Ok(())
}

// === monitoring ===

#[test]
fn the_service_monitor_scrapes_both_admin_ports() -> Result<()> {
    let t = tree("base")?;
    let monitors: Vec<_> = t.service_monitors().collect();
    ensure!(monitors.len() == 1, "one ServiceMonitor, found {}", monitors.len());
    let (o, sm) = monitors[0];
    let selector: LabelSelector = serde_json::from_value(sm.pointer("/spec/selector").cloned().unwrap_or_default())?;
    let namespaces = sm.pointer("/spec/namespaceSelector/matchNames").and_then(Value::as_array);
    ensure!(namespaces.is_none_or(|n| n.iter().any(|v| v == "wakegate")), "ServiceMonitor must look in namespace wakegate");
    let endpoints = sm.pointer("/spec/endpoints").and_then(Value::as_array).ok_or_else(|| anyhow!("{}: no endpoints", o.name))?;
    let mut scraped = BTreeSet::new();
    for e in endpoints {
        let port = e.get("port").and_then(Value::as_str).ok_or_else(|| anyhow!("{}: endpoint without a port name", o.name))?;
        for (so, s) in t.services() {
            let labels = so_labels(s);
            let has_port = s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()).any(|p| p.name.as_deref() == Some(port));
            if label_selects(Some(&selector), &labels) && has_port {
                scraped.insert(so.name.clone());
            }
        }
    }
    let want = BTreeSet::from(["wakegate-gateway-admin".to_string(), "wakegate-scaler".to_string()]);
    ensure!(scraped == want, "ServiceMonitor scrapes {scraped:?}, want {want:?}");
    Ok(())
}

fn so_labels(s: &Service) -> BTreeMap<String, String> {
    s.metadata.labels.clone().unwrap_or_default()
}

/// Every metric family the dashboard may query, as exposed (with the suffixes
/// prometheus-client adds): proto's names, the gateway's own, and the scaler's
/// from docs/cluster-contract.md.
fn known_series() -> BTreeSet<String> {
    use proto::metrics as m;
    let counters = [
        m::REQUESTS,
        m::WAKEUPS,
        m::SCALE_DOWNS,
        m::CONFIG_RELOADS,
        m::REJECTED,
        "acme_orders",
        "tls_handshake_errors",
        "reaper_scrape_failures",
        "reaper_scale_down_conflicts",
    ];
    let histograms = [m::REQUEST_DURATION, m::WAKEUP_DURATION];
    let gauges = [
        m::LAST_REQUEST_TIMESTAMP,
        m::IN_FLIGHT,
        m::HELD,
        m::OPEN_STREAMS,
        m::READY_REPLICAS,
        "rate_limiter_clients",
        "certificate_expiry_timestamp_seconds",
        "acme_last_success_timestamp_seconds",
    ];
    let p = m::PREFIX;
    let mut all = BTreeSet::new();
    all.extend(counters.iter().map(|c| format!("{p}_{c}_total")));
    all.extend(gauges.iter().map(|g| format!("{p}_{g}")));
    for h in histograms {
        all.extend(["bucket", "sum", "count"].iter().map(|s| format!("{p}_{h}_{s}")));
    }
    all
}

#[test]
fn the_dashboard_shows_every_required_panel_with_known_metrics() -> Result<()> {
    let t = tree("base")?;
    let (_, cm) = t
        .config_maps()
        .find(|(_, c)| c.metadata.labels.as_ref().and_then(|l| l.get("grafana_dashboard")).map(String::as_str) == Some("1"))
        .ok_or_else(|| anyhow!("no ConfigMap labelled grafana_dashboard: \"1\""))?;
    let data = cm.data.as_ref().ok_or_else(|| anyhow!("dashboard ConfigMap has no data"))?;
    ensure!(data.len() == 1, "one dashboard per ConfigMap");
    let (file, json) = data.iter().next().ok_or_else(|| anyhow!("empty"))?;
    let dash: Value = serde_json::from_str(json).with_context(|| format!("{file} is not JSON"))?;
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    ensure!(!exprs.is_empty(), "{file}: no queries");
    let known = known_series();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            ensure!(!word.starts_with("wakegate_") || known.contains(word), "{file}: unknown metric {word} in {e}");
        }
    }
    let all = exprs.join("\n");
    for needle in [
        "wakegate_requests_total",
        "by (code)",
        "wakegate_rejected_requests_total",
        "by (reason)",
        "wakegate_wakeups_total",
        "histogram_quantile(0.5, sum by (le) (rate(wakegate_wakeup_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(wakegate_wakeup_duration_seconds_bucket",
        "wakegate_held_requests",
        "wakegate_in_flight_requests",
        "wakegate_scale_downs_total",
        "wakegate_certificate_expiry_timestamp_seconds) - time()",
        "wakegate_config_reloads_total{outcome=\"failure\"}",
        "wakegate_rate_limiter_clients",
    ] {
        ensure!(all.contains(needle), "{file}: no panel queries {needle}");
    }
    Ok(())
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| collect_exprs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

// === overlays ===

#[test]
fn the_aws_overlay_adds_the_nlb_and_changes_nothing_else_of_the_base() -> Result<()> {
    let (base, aws) = (tree("base")?, tree("overlays/aws")?);
    let ids = |t: &Tree| t.objects.iter().map(|o| format!("{} {}/{}", o.kind, o.namespace, o.name)).collect::<BTreeSet<_>>();
    ensure!(ids(base) == ids(aws), "the aws overlay must patch the base, not add or drop objects");
    let annotations = aws.service("wakegate-gateway")?.metadata.annotations.clone().unwrap_or_default();
    for (k, v) in [
        ("service.beta.kubernetes.io/aws-load-balancer-type", "external"),
        ("service.beta.kubernetes.io/aws-load-balancer-nlb-target-type", "ip"),
        ("service.beta.kubernetes.io/aws-load-balancer-proxy-protocol", "*"),
    ] {
        ensure!(annotations.get(k).map(String::as_str) == Some(v), "aws: wakegate-gateway needs {k}: {v:?}");
    }
    Ok(())
}

#[test]
fn the_example_solutions_are_valid_solutions() -> Result<()> {
    use proto::cluster::{ANNOTATION_DEPLOYMENT, ANNOTATION_DESCRIPTION, ANNOTATION_PREFIX, ANNOTATION_SUBDOMAIN, LABEL_EXPOSE};
    let t = tree("overlays/examples")?;
    let (_, ns) = t.namespaces().find(|(o, _)| o.name == "solutions").ok_or_else(|| anyhow!("Namespace solutions"))?;
    let inject = ns.metadata.annotations.as_ref().and_then(|a| a.get("linkerd.io/inject")).map(String::as_str);
    ensure!(inject == Some("enabled"), "namespace solutions: linkerd.io/inject: enabled");
    ensure!(t.objects.iter().all(|o| o.kind == "Namespace" || o.namespace == "solutions"), "every example lives in namespace solutions");

    let mut exposed = BTreeMap::new();
    for (o, s) in t.services() {
        let labels = so_labels(s);
        if labels.get(LABEL_EXPOSE).map(String::as_str) != Some("true") {
            ensure!(!labels.contains_key(LABEL_EXPOSE), "Service {}: {LABEL_EXPOSE} must be \"true\" or absent", o.name);
            continue;
        }
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let mut settings = proto::SolutionSettings::default();
        for (k, v) in ann.iter().filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?, v))) {
            let full = format!("{ANNOTATION_PREFIX}{k}");
            if [ANNOTATION_SUBDOMAIN, ANNOTATION_DEPLOYMENT, ANNOTATION_DESCRIPTION].contains(&full.as_str()) {
                continue;
            }
            match settings.set(k, v) {
                Ok(true) => {}
                Ok(false) => bail!("Service {}: {full} is not a per-solution setting", o.name),
                Err(reason) => bail!("Service {}: {full}: {reason}", o.name),
            }
        }
        let subdomain = ann.get(ANNOTATION_SUBDOMAIN).unwrap_or(&o.name);
        proto::settings::check_label(subdomain).map_err(|e| anyhow!("Service {}: subdomain: {e}", o.name))?;
        ensure!(ann.contains_key(ANNOTATION_DESCRIPTION), "Service {}: a description for the catalog", o.name);
        let deployment = ann.get(ANNOTATION_DEPLOYMENT).unwrap_or(&o.name);
        let d = t.deployment(deployment)?;
        ensure!(d.spec.replicas == Some(0), "Deployment {deployment}: a solution starts asleep (replicas 0)");
        let selector = s.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        ensure!(selects(&selector, &pod_labels(d)), "Service {} does not select Deployment {deployment}'s pods", o.name);
        let c = only_container(d)?;
        ensure!(port_names(c).get("http") == Some(&8080), "Deployment {deployment}: serves http on 8080");
        ensure!(c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).is_some(), "Deployment {deployment}: an HTTP readiness probe");
        exposed.insert(subdomain.clone(), o.name.clone());
    }
    let want = BTreeMap::from([("nlp", "nlp"), ("parts", "parts-ui"), ("parts-api", "parts-api")]);
    let want: BTreeMap<String, String> = want.into_iter().map(|(a, b)| (a.into(), b.into())).collect();
    ensure!(exposed == want, "exposed subdomains {exposed:?}, want {want:?}");
    t.service("parts-backend")?;
    t.deployment("parts-backend")?;

    for (o, d) in t.deployments() {
        let spec = pod_spec(d)?;
        let node_group = spec.node_selector.as_ref().and_then(|n| n.get("node-group")).map(String::as_str);
        ensure!(node_group == Some("solutions"), "Deployment {}: nodeSelector node-group: solutions", o.name);
        let tolerates = spec.tolerations.iter().flatten().any(|t| {
            t.key.as_deref() == Some("dedicated") && t.value.as_deref() == Some("solutions") && t.effect.as_deref() == Some("NoSchedule")
        });
        ensure!(tolerates, "Deployment {}: tolerates dedicated=solutions:NoSchedule", o.name);
    }
    let (_, nlp) = t.deployments().find(|(o, _)| o.name == "nlp").ok_or_else(|| anyhow!("Deployment nlp"))?;
    ensure!(only_container(nlp)?.image.as_deref() == Some("ghcr.io/example/nlp:latest"), "nlp: placeholder image");
    Ok(())
}
