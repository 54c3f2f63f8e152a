use serde_json::json;

use super::*;

fn cms() -> ResourceId {
    ResourceId::find("", "v1", "configmaps").unwrap()
}

fn put(store: &Store, name: &str, obj: Value) -> Result<Written, ApiError> {
    store.write(&Key::new(cms(), "ns", name), |_, _| Ok(Some(obj)))
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[test]
fn server_owned_metadata() {
    let store = Store::new();
    let a = put(&store, "a", json!({"data": {"k": "1"}, "metadata": {"uid": "mine", "labels": {"x": "y"}}})).unwrap();
    assert!(a.created);
    let obj = &*a.object;
    assert_eq!((obj["kind"].as_str(), obj["apiVersion"].as_str()), (Some("ConfigMap"), Some("v1")));
    assert_eq!((obj["metadata"]["name"].as_str(), obj["metadata"]["namespace"].as_str()), (Some("a"), Some("ns")));
    assert_ne!(obj["metadata"]["uid"], "mine");
    assert_eq!(obj["metadata"]["generation"], 1);
    assert_eq!(rv(obj), 1);

    // A change of data bumps rv and generation; uid and creation time stay.
    let b = put(&store, "a", json!({"data": {"k": "2"}, "metadata": {"uid": "other"}})).unwrap();
    assert!(!b.created);
    assert_eq!((rv(&b.object), b.object["metadata"]["generation"].as_u64()), (2, Some(2)));
    assert_eq!(b.object["metadata"]["uid"], obj["metadata"]["uid"]);
    assert_eq!(b.object["metadata"]["creationTimestamp"], obj["metadata"]["creationTimestamp"]);

    // The same content again is no change at all.
    let mut live = store.changes();
    let c = put(&store, "a", (*b.object).clone()).unwrap();
    assert_eq!(rv(&c.object), 2);
    assert!(live.try_recv().is_err(), "no event for a no-op write");

    // A status-only change bumps rv but not generation.
    let mut with_status = (*c.object).clone();
    with_status["status"] = json!({"x": 1});
    let d = put(&store, "a", with_status).unwrap();
    assert_eq!((rv(&d.object), d.object["metadata"]["generation"].as_u64()), (3, Some(2)));
}

#[test]
fn stale_resource_version_conflicts() {
    let store = Store::new();
    let a = put(&store, "a", json!({"data": {}})).unwrap();
    put(&store, "a", json!({"data": {"k": "v"}})).unwrap();
    let err = put(&store, "a", (*a.object).clone()).unwrap_err();
    assert_eq!((err.code().as_u16(), err.reason()), (409, "Conflict"));
    // An empty resourceVersion is unconditional.
    put(&store, "a", json!({"metadata": {"resourceVersion": ""}, "data": {"k": "w"}})).unwrap();
}

#[test]
fn deletes_publish_the_last_state_at_a_new_rv() {
    let store = Store::new();
    put(&store, "a", json!({"data": {"k": "v"}})).unwrap();
    let mut live = store.changes();
    let gone = store.write(&Key::new(cms(), "ns", "a"), |_, _| Ok(None)).unwrap();
    assert_eq!(rv(&gone.object), 2);
    let Ok(Change::Event(e)) = live.try_recv() else { panic!("no delete event") };
    assert_eq!((e.kind, e.rv, e.object["data"]["k"].as_str()), (EventKind::Deleted, 2, Some("v")));
    assert!(store.get(&Key::new(cms(), "ns", "a")).is_none());
    let err = store.write(&Key::new(cms(), "ns", "a"), |_, _| Ok(None)).unwrap_err();
    assert_eq!(err.reason(), "NotFound");
}

#[test]
fn watches_resume_from_history_until_it_is_compacted() {
    let store = Store::new();
    for i in 0..3 {
        put(&store, &format!("o{i}"), json!({})).unwrap();
    }
    let sub = store.subscribe(cms(), Some(1)).unwrap();
    assert_eq!(sub.backlog.iter().map(|e| e.rv).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(sub.rv, 3);
    let all = store.subscribe(cms(), None).unwrap();
    assert_eq!(all.backlog.len(), 3);
    assert!(all.backlog.iter().all(|e| e.kind == EventKind::Added));

    let mut live = sub.live;
    store.compact();
    assert!(matches!(live.try_recv(), Ok(Change::Compacted)));
    let err = store.subscribe(cms(), Some(3)).err().unwrap();
    assert_eq!((err.code().as_u16(), err.reason()), (410, "Expired"));
    // The list after compaction gives an rv one can watch from.
    let page = store.list(cms(), Some("ns"), &Selector::default(), 0, None).unwrap();
    assert_eq!(page.rv, 4);
    assert!(store.subscribe(cms(), Some(page.rv)).unwrap().backlog.is_empty());
}

#[test]
fn bounded_history_expires_old_resource_versions() {
    let store = Store::new();
    for i in 0..=HISTORY_PER_RESOURCE {
        put(&store, "churn", json!({"data": {"i": i.to_string()}})).unwrap();
    }
    assert_eq!(store.subscribe(cms(), Some(0)).err().unwrap().code().as_u16(), 410);
    assert_eq!(store.subscribe(cms(), Some(1)).unwrap().backlog.len(), HISTORY_PER_RESOURCE);
    // Other resources keep their own history.
    let leases = ResourceId::find("coordination.k8s.io", "v1", "leases").unwrap();
    assert!(store.subscribe(leases, Some(0)).is_ok());
}

#[test]
fn list_pages_and_selectors() {
    let store = Store::new();
    for (name, app) in [("a", "web"), ("b", "db"), ("c", "web"), ("d", "web")] {
        put(&store, name, json!({"metadata": {"labels": {"app": app}}})).unwrap();
    }
    store.write(&Key::new(cms(), "other", "e"), |_, _| Ok(Some(json!({"metadata": {"labels": {"app": "web"}}})))).unwrap();
    let web = Selector::parse(Some("app=web"), None).unwrap();
    let names = |p: &Page| p.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();

    let first = store.list(cms(), Some("ns"), &web, 2, None).unwrap();
    assert_eq!(names(&first), ["a", "c"]);
    put(&store, "b2", json!({"metadata": {"labels": {"app": "web"}}})).unwrap();
    let second = store.list(cms(), Some("ns"), &web, 2, first.next.as_deref()).unwrap();
    assert_eq!(names(&second), ["d"]);
    assert_eq!(second.rv, first.rv, "later pages keep the first page's rv");
    assert!(second.next.is_none());

    assert_eq!(names(&store.list(cms(), None, &web, 0, None).unwrap()), ["a", "b2", "c", "d", "e"]);
    assert_eq!(store.list(cms(), None, &web, 0, Some("garbage")).unwrap_err().code().as_u16(), 400);
    store.compact();
    assert_eq!(store.list(cms(), Some("ns"), &web, 2, first.next.as_deref()).unwrap_err().code().as_u16(), 410);
}
