//! The request log behind RBAC checks: who (the bearer token) did which verb
//! on which resource. Tests give each role's client its own token and then
//! assert, say, that the gateway's token never patched a Deployment.

use std::sync::{Mutex, PoisonError};

use http::HeaderMap;

use crate::request::ApiRequest;

/// The user of a request without an `Authorization: Bearer` header.
pub const ANONYMOUS: &str = "anonymous";

/// One API request, as an RBAC rule would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The bearer token, or [`ANONYMOUS`].
    pub user: String,
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: &'static str,
    /// The API group (`""` for core).
    pub api_group: &'static str,
    /// The resource's plural name.
    pub resource: &'static str,
    /// `status` or `scale`, if the request named one.
    pub subresource: Option<&'static str>,
    /// The namespace, if any.
    pub namespace: Option<String>,
    /// The object's name, if any.
    pub name: Option<String>,
}

impl RecordedRequest {
    /// Builds the record of `req`, made with `headers`.
    pub fn new(req: &ApiRequest, headers: &HeaderMap) -> RecordedRequest {
        let resource = req.resource.get();
        RecordedRequest {
            user: user(headers),
            verb: req.verb.as_str(),
            api_group: resource.group,
            resource: resource.plural,
            subresource: req.subresource.map(|s| s.as_str()),
            namespace: req.namespace.clone(),
            // Like kube-apiserver's RequestInfo: a list or watch narrowed to one
            // object by `metadata.name` is authorised as a request for that
            // name, so RBAC `resourceNames` apply to it.
            name: req.name.clone().or_else(|| {
                let selector = req.query.get("fieldSelector")?;
                selector.split(',').find_map(|term| term.strip_prefix("metadata.name=")).map(str::to_string)
            }),
        }
    }

    /// `resource` or `resource/subresource`, as an RBAC rule names it.
    pub fn rbac_resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_string(),
        }
    }
}

/// The user a request authenticates as.
fn user(headers: &HeaderMap) -> String {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(ANONYMOUS)
        .to_string()
}

/// Every request served, in order.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<RecordedRequest>>);

impl Recorder {
    /// Adds one request.
    pub fn push(&self, r: RecordedRequest) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(r);
    }

    /// A copy of the log.
    pub fn all(&self) -> Vec<RecordedRequest> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Empties the log.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};

    #[test]
    fn user_from_bearer_token() {
        let crate::request::Target::Api(req) =
            crate::request::parse(&Method::PATCH, "/apis/apps/v1/namespaces/a/deployments/web/scale", None).unwrap()
        else {
            panic!("not an API request")
        };
        let mut headers = HeaderMap::new();
        assert_eq!(RecordedRequest::new(&req, &headers).user, ANONYMOUS);
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer scaler"));
        let r = RecordedRequest::new(&req, &headers);
        assert_eq!((r.user.as_str(), r.verb, r.api_group, r.rbac_resource()), ("scaler", "patch", "apps", "deployments/scale".to_string()));
        assert_eq!((r.namespace.as_deref(), r.name.as_deref()), (Some("a"), Some("web")));
    }
}
