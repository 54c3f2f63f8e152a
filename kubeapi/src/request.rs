//! What an HTTP request asks of the API: the resource, namespace, name and
//! subresource from the path, the Kubernetes verb from the method and query,
//! and the decoded query parameters (kube starts every query with an empty
//! pair, `?&labelSelector=...`, and form-encodes values).

use http::Method;

use crate::resource::ResourceId;
use crate::status::ApiError;

/// The Kubernetes verb of a request, as RBAC names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `GET` of one object.
    Get,
    /// `GET` of a collection.
    List,
    /// `GET` with `watch=true`.
    Watch,
    /// `POST`.
    Create,
    /// `PUT`.
    Update,
    /// `PATCH`.
    Patch,
    /// `DELETE` of one object.
    Delete,
    /// `DELETE` of a collection.
    DeleteCollection,
}

impl Verb {
    /// The verb as RBAC spells it (`get`, `deletecollection`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A subresource in the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`.
    Status,
    /// `/scale`.
    Scale,
}

impl Subresource {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
        }
    }
}

/// A resource request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The resource type.
    pub resource: ResourceId,
    /// The namespace; `None` for a collection across all namespaces.
    pub namespace: Option<String>,
    /// The object's name, if the path names one.
    pub name: Option<String>,
    /// The subresource, if any.
    pub subresource: Option<Subresource>,
    /// The Kubernetes verb.
    pub verb: Verb,
    /// The query parameters.
    pub query: Query,
}

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `GET /version`.
    Version,
    /// A resource request.
    Api(ApiRequest),
}

/// Decoded query parameters, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string; empty pairs are skipped.
    pub fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Query(pairs))
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Is `name` set to `true` (or `1`)?
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    /// `name` as a number, if present; a non-number is a 400.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().map_err(|_| ApiError::BadRequest(format!("{name}: {v:?} is not a non-negative integer"))))
            .transpose()
    }
}

/// Percent-decodes a form-encoded value (`+` is a space).
fn decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid percent-encoding in query {s:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Parses a request's method, path and query.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] if method == Method::GET => return Ok(Target::Version),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::NoRoute),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_string()), None),
        [plural, name, sub] => (*plural, Some((*name).to_string()), Some(*sub)),
        _ => return Err(ApiError::NoRoute),
    };
    let resource = ResourceId::find(group, version, plural).ok_or(ApiError::NoRoute)?;
    let subresource = match sub {
        None => None,
        Some("status") if resource.get().status => Some(Subresource::Status),
        Some("scale") if resource.get().scale => Some(Subresource::Scale),
        Some(_) => return Err(ApiError::NoRoute),
    };
    if name.is_some() && namespace.is_none() {
        return Err(ApiError::NoRoute);
    }
    let query = Query::parse(query.unwrap_or_default())?;
    let verb = match (method.as_str(), &name) {
        ("GET", _) if query.flag("watch") => Verb::Watch,
        ("GET", Some(_)) => Verb::Get,
        ("GET", None) => Verb::List,
        ("POST", None) if namespace.is_some() => Verb::Create,
        ("PUT", Some(_)) => Verb::Update,
        ("PATCH", Some(_)) => Verb::Patch,
        ("DELETE", Some(_)) => Verb::Delete,
        ("DELETE", None) if namespace.is_some() => Verb::DeleteCollection,
        _ => return Err(ApiError::MethodNotAllowed),
    };
    if subresource.is_some() && !matches!(verb, Verb::Get | Verb::Update | Verb::Patch) {
        return Err(ApiError::MethodNotAllowed);
    }
    Ok(Target::Api(ApiRequest { resource, namespace, name, subresource, verb, query }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(method: Method, target: &str) -> ApiRequest {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        match parse(&method, path, query).unwrap() {
            Target::Api(r) => r,
            Target::Version => panic!("not an API request"),
        }
    }

    #[test]
    fn kube_watcher_paths() {
        let r = api(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?&watch=true&timeoutSeconds=290&labelSelector=kubernetes.io%2Fservice-name%3Dfoo&allowWatchBookmarks=true&resourceVersion=10",
        );
        assert_eq!(r.verb, Verb::Watch);
        assert_eq!(r.namespace.as_deref(), Some("ns"));
        assert_eq!(r.resource.get().kind, "EndpointSlice");
        assert_eq!(r.query.get("labelSelector"), Some("kubernetes.io/service-name=foo"));
        assert_eq!(r.query.number("timeoutSeconds").unwrap(), Some(290));
        assert!(r.query.flag("allowWatchBookmarks"));

        let r = api(Method::GET, "/api/v1/namespaces/cm/configmaps?&fieldSelector=metadata.name%3Dx&limit=500");
        assert_eq!((r.verb, r.query.get("fieldSelector")), (Verb::List, Some("metadata.name=x")));
        let r = api(Method::GET, "/apis/discovery.k8s.io/v1/endpointslices");
        assert_eq!((r.verb, r.namespace), (Verb::List, None));
    }

    #[test]
    fn verbs_and_subresources() {
        let scale = api(Method::PATCH, "/apis/apps/v1/namespaces/apps/deployments/web/scale?");
        assert_eq!((scale.verb, scale.subresource, scale.name.as_deref()), (Verb::Patch, Some(Subresource::Scale), Some("web")));
        assert_eq!(api(Method::GET, "/apis/apps/v1/namespaces/apps/deployments/web/scale").verb, Verb::Get);
        assert_eq!(api(Method::POST, "/apis/coordination.k8s.io/v1/namespaces/l/leases?").verb, Verb::Create);
        assert_eq!(api(Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/l/leases/lock?").verb, Verb::Update);
        assert_eq!(api(Method::DELETE, "/api/v1/namespaces/a/pods/p").verb, Verb::Delete);
        assert_eq!(api(Method::DELETE, "/api/v1/namespaces/a/pods?labelSelector=x").verb, Verb::DeleteCollection);
        assert_eq!(parse(&Method::GET, "/version", None).unwrap(), Target::Version);
    }

    #[test]
    fn refusals() {
        let err = |m: Method, p: &str| parse(&m, p, None).unwrap_err().code().as_u16();
        assert_eq!(err(Method::GET, "/api/v1/namespaces/a/nodes"), 404);
        assert_eq!(err(Method::GET, "/apis/coordination.k8s.io/v1/namespaces/a/leases/l/scale"), 404);
        assert_eq!(err(Method::GET, "/healthz"), 404);
        assert_eq!(err(Method::POST, "/api/v1/namespaces/a/configmaps/x"), 405);
        assert_eq!(err(Method::POST, "/apis/apps/v1/namespaces/a/deployments/x/scale"), 405);
        assert_eq!(parse(&Method::GET, "/api/v1/namespaces/a/pods", Some("labelSelector=%zz")).unwrap_err().code(), 400);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("&a=b%3Dc&&d=x+y&e").unwrap();
        assert_eq!((q.get("a"), q.get("d"), q.get("e")), (Some("b=c"), Some("x y"), Some("")));
        assert!(Query::parse("a=%e2%28").is_err());
    }
}
