use std::time::Duration;

use proto::cluster::LABEL_EXPOSE;
use proto::solution::ClusterRef;
use proto::{Backend, Settings, SolutionSpec};
use serde_json::{Value, json};

use super::*;

fn service(name: &str, labelled: bool, annotations: Value) -> Arc<Service> {
    let labels = if labelled { json!({LABEL_EXPOSE: "true"}) } else { json!({}) };
    let svc = json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"selector": {"app": name}, "ports": [{"name": "web", "port": 80}, {"port": 9000}]},
    });
    Arc::new(serde_json::from_value(svc).unwrap_or_else(|e| panic!("service: {e}")))
}

fn ingress(name: &str, class: &str, rules: Value) -> Arc<Ingress> {
    let ing = json!({"metadata": {"name": name}, "spec": {"ingressClassName": class, "rules": rules}});
    Arc::new(serde_json::from_value(ing).unwrap_or_else(|e| panic!("ingress: {e}")))
}

fn rule(host: &str, service: &str, port: Value) -> Value {
    json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": service, "port": port}}}]}})
}

fn settings() -> Settings {
    Settings { base_domain: "aim.example.com".into(), ..Settings::default() }
}

fn target(spec: &SolutionSpec) -> &ClusterRef {
    match &spec.backend {
        Backend::Cluster(c) => c,
        other => panic!("not a cluster backend: {other:?}"),
    }
}

#[test]
fn labelled_services_are_solutions_with_their_annotations() {
    let objects = Objects {
        services: vec![
            service(
                "nlp",
                true,
                json!({
                    "wakegate.io/subdomain": "words",
                    "wakegate.io/deployment": "nlp-v2",
                    "wakegate.io/description": "Reads text",
                    "wakegate.io/idle-timeout": "2h",
                }),
            ),
            service("plain", true, json!({"wakegate.io/port": "web"})),
            service("internal", false, json!({})),
        ],
        ingresses: vec![],
    };
    let (specs, problems) = build("solutions", &settings(), &objects);
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["plain", "words"]);
    let words = &specs[1];
    assert_eq!(
        target(words),
        &ClusterRef {
            namespace: "solutions".into(),
            service: "nlp".into(),
            deployment: "nlp-v2".into(),
            port: None,
            pods: Some("app=nlp".into())
        }
    );
    assert_eq!(words.description.as_deref(), Some("Reads text"));
    assert_eq!(words.settings.idle_timeout, Duration::from_secs(7200));
    assert_eq!(words.overrides, [("idle-timeout".to_string(), "2h".to_string())]);
    assert_eq!((target(&specs[0]).deployment.as_str(), target(&specs[0]).port.as_deref()), ("plain", Some("web")));
}

#[test]
fn a_bad_value_keeps_the_default_and_names_the_key() {
    let objects = Objects {
        services: vec![service(
            "web",
            true,
            json!({
                "wakegate.io/idle-timeout": "soon",
                "wakegate.io/max-held-requests": "5",
                "wakegate.io/base-domain": "x.com",
                "wakegate.io/idel-timeout": "1m",
            }),
        )],
        ingresses: vec![],
    };
    let (specs, problems) = build("solutions", &settings(), &objects);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].settings.idle_timeout, settings().solution.idle_timeout);
    assert_eq!(specs[0].settings.max_held_requests.get(), 5, "the good key still applies");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(text.iter().any(|t| t.starts_with("service/solutions/web: wakegate.io/idle-timeout: ")), "{text:?}");
    assert!(text.iter().any(|t| t.starts_with("service/solutions/web: wakegate.io/base-domain: ")), "a global key: {text:?}");
    assert!(text.iter().any(|t| t.contains("wakegate.io/idel-timeout") && t.contains("did you mean")), "{text:?}");
}

#[test]
fn an_invalid_subdomain_leaves_the_solution_out() {
    let objects = Objects { services: vec![service("web", true, json!({"wakegate.io/subdomain": "Not_A_Label"}))], ingresses: vec![] };
    let (specs, problems) = build("solutions", &settings(), &objects);
    assert!(specs.is_empty());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "service/solutions/web: wakegate.io/subdomain");
}

#[test]
fn ingress_hosts_route_to_their_backend_service() {
    let objects = Objects {
        services: vec![service("backend", false, json!({"wakegate.io/description": "via ingress"}))],
        ingresses: vec![
            ingress(
                "ours",
                "wakegate",
                json!([
                    rule("parts.aim.example.com", "backend", json!({"number": 80})),
                    rule("raw.aim.example.com", "backend", json!({"number": 9000})),
                    rule("named.aim.example.com", "backend", json!({"name": "web"})),
                    rule("elsewhere.example.org", "backend", json!({"number": 80})),
                    rule("ghost.aim.example.com", "missing", json!({"number": 80})),
                ]),
            ),
            ingress("theirs", "nginx", json!([rule("other.aim.example.com", "backend", json!({"number": 80}))])),
        ],
    };
    let (specs, problems) = build("solutions", &settings(), &objects);
    let got: Vec<(&str, &str, Option<&str>)> =
        specs.iter().map(|s| (s.name.as_str(), target(s).service.as_str(), target(s).port.as_deref())).collect();
    assert_eq!(got, [("named", "backend", Some("web")), ("parts", "backend", Some("web")), ("raw", "backend", None)]);
    assert_eq!(specs[0].description.as_deref(), Some("via ingress"), "the Service's annotations apply");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["ingress/solutions/ours: spec.rules.host", "ingress/solutions/ours: spec.rules.http.paths.backend"], "{problems:?}");
    assert!(problems.iter().any(|p| p.reason.contains("elsewhere.example.org")));
    assert!(problems.iter().any(|p| p.reason.contains("Service missing does not exist")));
}

#[test]
fn a_name_served_twice_goes_to_the_service() {
    let objects = Objects {
        services: vec![service("web", true, json!({})), service("other", false, json!({}))],
        ingresses: vec![ingress("dup", "wakegate", json!([rule("web.aim.example.com", "other", json!({"number": 80}))]))],
    };
    let (specs, problems) = build("solutions", &settings(), &objects);
    assert_eq!(specs.len(), 1);
    assert_eq!(target(&specs[0]).service, "web");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].reason.contains("already served for service/solutions/web"), "{problems:?}");
}
