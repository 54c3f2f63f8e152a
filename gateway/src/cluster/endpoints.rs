//! What a Service's EndpointSlices say, as pure functions: the ready
//! addresses to forward to (each with the port the solution serves on), and
//! whether a pod has started but is not ready yet (the waiting page's
//! "probing"). The slices are kept as the watcher delivers them, relists
//! included ([`Slices`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// The EndpointSlices of one Service, by name, as last listed and watched.
pub type Slices = Known<EndpointSlice>;

/// Objects of one watch, by name, as last listed and watched. A relist is
/// buffered until it is complete, so the gateway keeps serving the old set
/// while the API is away and swaps to the new one at once.
#[derive(Debug)]
pub struct Known<K> {
    current: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
}

impl<K> Default for Known<K> {
    fn default() -> Self {
        Self { current: BTreeMap::new(), relist: None }
    }
}

impl<K: kube::Resource + Clone + PartialEq> Known<K> {
    /// Takes one watcher event; returns whether the current set changed.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(s) => {
                self.relist.get_or_insert_default().insert(s.name_any(), s);
                false
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = fresh != self.current;
                self.current = fresh;
                changed
            }
            Event::Apply(s) => self.current.insert(s.name_any(), s.clone()).is_none_or(|old| old != s),
            Event::Delete(s) => self.current.remove(&s.name_any()).is_some(),
        }
    }

    /// Forgets everything (the Service changed).
    pub fn clear(&mut self) {
        self.current.clear();
        self.relist = None;
    }

    /// The objects known now.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.current.values()
    }
}

/// Every ready endpoint's `ip:port`, sorted and without duplicates. `port`
/// is the Service port to use (a name, or a number), `None` for the first.
/// An endpoint whose `ready` is unset counts as ready, as the API documents.
pub fn ready<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port: Option<&str>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(port) = resolve_port(slice.ports.as_deref().unwrap_or_default(), port) else { continue };
        for ep in slice.endpoints.iter().flatten().filter(|e| is_ready(e)) {
            out.extend(ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, port)));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether some pod has an endpoint that is neither ready nor terminating:
/// it runs, and its readiness probe has not passed yet.
pub fn starting<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> bool {
    slices.into_iter().flat_map(|s| s.endpoints.iter().flatten()).any(|e| {
        let c = e.conditions.as_ref();
        !is_ready(e) && c.and_then(|c| c.terminating) != Some(true)
    })
}

fn is_ready(e: &Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// The port number among a slice's `ports` for the wanted Service port:
/// the one with that name, else the one with that number, else the first.
pub fn resolve_port(ports: &[EndpointPort], want: Option<&str>) -> Option<u16> {
    let number = |p: &EndpointPort| p.port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0);
    let chosen = want.and_then(|w| {
        ports.iter().find(|p| p.name.as_deref() == Some(w)).or_else(|| {
            let n = w.parse::<u16>().ok()?;
            ports.iter().find(|p| number(p) == Some(n))
        })
    });
    chosen.or_else(|| ports.first()).and_then(number)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(name: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap_or_else(|e| panic!("slice: {e}"))
    }

    fn ep(ip: &str, ready: Option<bool>, terminating: bool) -> serde_json::Value {
        let mut c = json!({"terminating": terminating});
        if let Some(r) = ready {
            c["ready"] = json!(r);
        }
        json!({"addresses": [ip], "conditions": c})
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}"))).collect()
    }

    #[test]
    fn only_ready_endpoints_with_the_chosen_port() {
        let ports = json!([{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}]);
        let s =
            slice("a", ports, json!([ep("10.0.0.2", Some(true), false), ep("10.0.0.1", None, false), ep("10.0.0.3", Some(false), false)]));
        assert_eq!(ready([&s], Some("http")), addrs(&["10.0.0.1:8080", "10.0.0.2:8080"]));
        assert_eq!(ready([&s], Some("8080")), addrs(&["10.0.0.1:8080", "10.0.0.2:8080"]));
        assert_eq!(ready([&s], None), addrs(&["10.0.0.1:9100", "10.0.0.2:9100"]), "the first port by default");
        assert_eq!(ready([&s], Some("nope")), addrs(&["10.0.0.1:9100", "10.0.0.2:9100"]), "unknown names fall back to the first");
    }

    #[test]
    fn slices_without_ports_or_of_other_types_give_nothing() {
        let no_ports = slice("a", json!([]), json!([ep("10.0.0.1", Some(true), false)]));
        let mut fqdn = slice("b", json!([{"port": 80}]), json!([{"addresses": ["web.example"]}]));
        assert!(ready([&no_ports], None).is_empty());
        fqdn.address_type = "FQDN".into();
        assert!(ready([&fqdn], None).is_empty());
    }

    #[test]
    fn starting_means_running_but_not_ready_and_not_terminating() {
        let p = json!([{"port": 80}]);
        assert!(starting([&slice("a", p.clone(), json!([ep("10.0.0.1", Some(false), false)]))]));
        assert!(!starting([&slice("a", p.clone(), json!([ep("10.0.0.1", Some(false), true)]))]), "a pod going away");
        assert!(!starting([&slice("a", p, json!([ep("10.0.0.1", Some(true), false)]))]));
    }

    #[test]
    fn a_relist_replaces_the_set_only_when_complete() {
        let p = json!([{"port": 80}]);
        let mut s = Slices::default();
        assert!(s.apply(Event::Apply(slice("a", p.clone(), json!([ep("10.0.0.1", Some(true), false)])))));
        assert!(!s.apply(Event::Apply(slice("a", p.clone(), json!([ep("10.0.0.1", Some(true), false)])))), "same object");
        assert!(!s.apply(Event::Init));
        assert!(!s.apply(Event::InitApply(slice("b", p.clone(), json!([ep("10.0.0.2", Some(true), false)])))));
        assert_eq!(ready(s.iter(), None), addrs(&["10.0.0.1:80"]), "the old set serves during the relist");
        assert!(s.apply(Event::InitDone));
        assert_eq!(ready(s.iter(), None), addrs(&["10.0.0.2:80"]));
        assert!(s.apply(Event::Delete(slice("b", p, json!([])))));
        assert!(ready(s.iter(), None).is_empty());
    }
}
