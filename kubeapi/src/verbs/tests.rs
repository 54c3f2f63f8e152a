use http::{HeaderValue, Method};
use http_body_util::BodyExt;

use super::*;
use crate::request::{self, Target};

/// One request through the verbs: status code and JSON body (or the raw
/// lines of a finished watch, as a JSON array).
async fn call(store: &Store, method: Method, target: &str, content_type: Option<&'static str>, body: Value) -> (u16, Value) {
    let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
    let req = match request::parse(&method, path, query) {
        Ok(Target::Api(req)) => req,
        Ok(Target::Version) => panic!("not an API request"),
        Err(e) => return (e.code().as_u16(), e.to_status()),
    };
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
    let resp = handle(store, &req, &headers, &body);
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        Value::Array(bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect())
    });
    (status, value)
}

const CM: &str = "/api/v1/namespaces/ns/configmaps";
const DEPLOY: &str = "/apis/apps/v1/namespaces/ns/deployments";
const MERGE: Option<&str> = Some("application/merge-patch+json");

#[tokio::test]
async fn create_names_and_identity() {
    let store = Store::new();
    let (code, body) = call(&store, Method::POST, CM, None, json!({"metadata": {}})).await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, body) = call(&store, Method::POST, CM, None, json!({"metadata": {"generateName": "gen-"}})).await;
    assert_eq!(code, 201);
    assert!(body["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    let (code, _) = call(&store, Method::POST, CM, None, json!({"metadata": {"name": "a", "namespace": "elsewhere"}})).await;
    assert_eq!(code, 400);
    let (code, _) = call(&store, Method::POST, CM, None, json!({"kind": "Secret", "metadata": {"name": "a"}})).await;
    assert_eq!(code, 400);
    let (code, _) = call(&store, Method::POST, CM, None, json!({"metadata": {"name": "Not_Valid"}})).await;
    assert_eq!(code, 422);
    let (code, _) = call(&store, Method::POST, CM, None, json!("just a string")).await;
    assert_eq!(code, 400);
    let (code, body) = call(&store, Method::GET, &format!("{CM}/missing"), None, Value::Null).await;
    assert_eq!((code, body["reason"].as_str(), body["code"].as_u64()), (404, Some("NotFound"), Some(404)));
    let (code, _) = call(&store, Method::PUT, &format!("{CM}/missing"), None, json!({"metadata": {"name": "missing"}})).await;
    assert_eq!(code, 404);
    let (code, _) = call(&store, Method::PUT, &format!("{CM}/a"), None, json!({"metadata": {"name": "b"}})).await;
    assert_eq!(code, 400, "name in body and URL differ");
}

#[tokio::test]
async fn patch_types() {
    let store = Store::new();
    call(&store, Method::POST, CM, None, json!({"metadata": {"name": "a"}, "data": {"x": "1", "y": "2"}})).await;
    let url = format!("{CM}/a");
    let (code, body) = call(&store, Method::PATCH, &url, MERGE, json!({"data": {"x": null, "z": "3"}})).await;
    assert_eq!((code, &body["data"]), (200, &json!({"y": "2", "z": "3"})));
    let ops = json!([{"op": "test", "path": "/data/y", "value": "2"}, {"op": "replace", "path": "/data/y", "value": "4"}]);
    let (code, body) = call(&store, Method::PATCH, &url, Some("application/json-patch+json"), ops).await;
    assert_eq!((code, body["data"]["y"].as_str()), (200, Some("4")));
    let (code, body) =
        call(&store, Method::PATCH, &url, Some("application/json-patch+json"), json!([{"op": "test", "path": "/data/y", "value": "0"}]))
            .await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = call(&store, Method::PATCH, &url, Some("application/json"), json!({})).await;
    assert_eq!(code, 415);
    let (code, _) = call(&store, Method::PATCH, &url, Some("application/apply-patch+yaml"), json!({"data": {"q": "1"}})).await;
    assert_eq!(code, 422, "apply needs a field manager");
    let (code, _) = call(&store, Method::PATCH, &format!("{CM}/missing"), MERGE, json!({})).await;
    assert_eq!(code, 404);
    // A stale resourceVersion inside a merge patch is a precondition.
    let (code, body) = call(&store, Method::PATCH, &url, MERGE, json!({"metadata": {"resourceVersion": "1"}, "data": {"x": "9"}})).await;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));
    // Apply creates a missing object.
    let (code, body) = call(
        &store,
        Method::PATCH,
        &format!("{CM}/applied?fieldManager=m"),
        Some("application/apply-patch+yaml"),
        json!({"data": {"k": "v"}}),
    )
    .await;
    assert_eq!((code, body["data"]["k"].as_str()), (201, Some("v")));
}

#[tokio::test]
async fn status_subresource_splits_writes() {
    let store = Store::new();
    let dep = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}, "status": {"readyReplicas": 7}});
    let (_, created) = call(&store, Method::POST, DEPLOY, None, dep).await;
    assert!(created.get("status").is_none(), "status is not set by a create");
    let (code, body) = call(
        &store,
        Method::PATCH,
        &format!("{DEPLOY}/web/status"),
        MERGE,
        json!({"status": {"readyReplicas": 1}, "spec": {"replicas": 5}}),
    )
    .await;
    assert_eq!((code, body["status"]["readyReplicas"].as_u64(), body["spec"]["replicas"].as_u64()), (200, Some(1), Some(1)));
    let (_, body) =
        call(&store, Method::PATCH, &format!("{DEPLOY}/web"), MERGE, json!({"status": {"readyReplicas": 3}, "spec": {"replicas": 2}}))
            .await;
    assert_eq!((body["status"]["readyReplicas"].as_u64(), body["spec"]["replicas"].as_u64()), (Some(1), Some(2)));
    assert_eq!(body["metadata"]["generation"], 2);
}

#[tokio::test]
async fn scale_subresource() {
    let store = Store::new();
    let dep = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web", "tier": "x"}}}});
    call(&store, Method::POST, DEPLOY, None, dep).await;
    let scale = format!("{DEPLOY}/web/scale");
    let (code, body) = call(&store, Method::GET, &scale, None, Value::Null).await;
    assert_eq!((code, body["kind"].as_str(), body["apiVersion"].as_str()), (200, Some("Scale"), Some("autoscaling/v1")));
    assert_eq!((body["spec"]["replicas"].as_u64(), body["status"]["selector"].as_str()), (Some(1), Some("app=web,tier=x")));
    let stale = body["metadata"]["resourceVersion"].clone();

    let (code, body) = call(&store, Method::PATCH, &scale, MERGE, json!({"spec": {"replicas": 3}})).await;
    assert_eq!((code, body["spec"]["replicas"].as_u64()), (200, Some(3)));
    let (_, dep) = call(&store, Method::GET, &format!("{DEPLOY}/web"), None, Value::Null).await;
    assert_eq!(dep["spec"]["replicas"], 3);

    let put = json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web", "resourceVersion": stale}, "spec": {"replicas": 0}});
    let (code, body) = call(&store, Method::PUT, &scale, None, put).await;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));
    let (code, _) = call(&store, Method::PATCH, &scale, MERGE, json!({"spec": {"replicas": -1}})).await;
    assert_eq!(code, 422);
    let (code, _) = call(&store, Method::PATCH, &scale, MERGE, json!({"kind": "Deployment", "spec": {"replicas": 1}})).await;
    assert_eq!(code, 400);
    let (code, _) = call(&store, Method::GET, &format!("{DEPLOY}/nope/scale"), None, Value::Null).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn deletes() {
    let store = Store::new();
    for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
        call(&store, Method::POST, CM, None, json!({"metadata": {"name": name, "labels": {"app": app}}})).await;
    }
    let (code, _) = call(&store, Method::DELETE, &format!("{CM}/a"), None, json!({"preconditions": {"resourceVersion": "999"}})).await;
    assert_eq!(code, 409);
    let (code, body) = call(&store, Method::DELETE, &format!("{CM}/a"), None, Value::Null).await;
    assert_eq!((code, body["metadata"]["name"].as_str()), (200, Some("a")));
    let (code, _) = call(&store, Method::DELETE, &format!("{CM}/a"), None, Value::Null).await;
    assert_eq!(code, 404);
    let (code, body) = call(&store, Method::DELETE, &format!("{CM}?labelSelector=app%3Dweb"), None, Value::Null).await;
    assert_eq!((code, body["items"].as_array().map(Vec::len)), (200, Some(1)));
    let (_, list) = call(&store, Method::GET, CM, None, Value::Null).await;
    assert_eq!(list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(list["kind"], "ConfigMapList");
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_one_error_event() {
    let store = Store::new();
    call(&store, Method::POST, CM, None, json!({"metadata": {"name": "a"}})).await;
    store.compact();
    let (code, lines) = call(&store, Method::GET, &format!("{CM}?&watch=true&resourceVersion=1"), None, Value::Null).await;
    assert_eq!(code, 200, "an HTTP 410 would make kube's watcher retry forever instead of relisting");
    assert_eq!(lines["type"], "ERROR");
    assert_eq!((lines["object"]["code"].as_u64(), lines["object"]["reason"].as_str()), (Some(410), Some("Expired")));
    let (code, _) = call(&store, Method::GET, &format!("{CM}?watch=true&resourceVersion=abc"), None, Value::Null).await;
    assert_eq!(code, 400);
    let (code, _) = call(&store, Method::GET, &format!("{CM}?labelSelector=a%20in%20(b"), None, Value::Null).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn watch_streams_until_its_timeout_with_bookmarks() {
    let store = std::sync::Arc::new(Store::new());
    call(&store, Method::POST, CM, None, json!({"metadata": {"name": "old"}})).await;
    let writer = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        call(&writer, Method::POST, CM, None, json!({"metadata": {"name": "new"}})).await;
        call(&writer, Method::POST, "/api/v1/namespaces/elsewhere/configmaps", None, json!({"metadata": {"name": "x"}})).await;
    });
    let started = std::time::Instant::now();
    let (code, lines) =
        call(&store, Method::GET, &format!("{CM}?&watch=true&timeoutSeconds=3&allowWatchBookmarks=true"), None, Value::Null).await;
    assert_eq!(code, 200);
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "the stream lasts timeoutSeconds");
    let events: Vec<(&str, &str)> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["type"].as_str().unwrap(), l["object"]["metadata"]["name"].as_str().unwrap_or_default()))
        .collect();
    // No rv: the current objects first, then live changes in this namespace,
    // then a bookmark at the rv of the change it did not send.
    assert_eq!(events, [("ADDED", "old"), ("ADDED", "new"), ("BOOKMARK", "")]);
    let bookmark = &lines[2]["object"];
    assert_eq!((bookmark["kind"].as_str(), bookmark["metadata"]["resourceVersion"].as_str()), (Some("ConfigMap"), Some("3")));
}
