//! Failures as kube-apiserver reports them: a `Status` object whose `code` and
//! `reason` the kube client reads from the body (`is_not_found()`,
//! `is_conflict()` and `get_opt` match on `reason`). No variant maps to 429, 503
//! or 504: the kube client retries those silently.

use http::StatusCode;
use serde_json::{Value, json};

use crate::resource::Resource;

/// A request the server refuses, with the Status it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404 `NotFound`: no such object (or no such path).
    #[error("{qualified} \"{name}\" not found")]
    NotFound {
        /// `plural.group` of the resource.
        qualified: String,
        /// The object's name.
        name: String,
    },
    /// 404 `NotFound`: a path that names no served resource.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// 409 `AlreadyExists`: create of a name that is taken.
    #[error("{qualified} \"{name}\" already exists")]
    AlreadyExists {
        /// `plural.group` of the resource.
        qualified: String,
        /// The object's name.
        name: String,
    },
    /// 409 `Conflict`: a stale `resourceVersion`, or a server-side apply that
    /// would take fields another manager owns.
    #[error("Operation cannot be fulfilled on {qualified} \"{name}\": {detail}")]
    Conflict {
        /// `plural.group` of the resource.
        qualified: String,
        /// The object's name.
        name: String,
        /// What conflicted.
        detail: String,
    },
    /// 410 `Expired`: a `continue` token or resourceVersion that is compacted away.
    #[error("{0}")]
    Expired(String),
    /// 400 `BadRequest`: a malformed body, query or selector.
    #[error("{0}")]
    BadRequest(String),
    /// 422 `Invalid`: a well-formed object that breaks a rule (name mismatch, missing name).
    #[error("{0}")]
    Invalid(String),
    /// 405 `MethodNotAllowed`: a verb this path does not serve.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 415 `UnsupportedMediaType`: a patch content type this server does not know.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 500 `InternalError`: the server itself failed.
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

impl ApiError {
    /// 404 for `name` of `resource`.
    pub fn not_found(resource: &Resource, name: &str) -> ApiError {
        ApiError::NotFound { qualified: resource.qualified(), name: name.to_string() }
    }

    /// 409 `Conflict` on `name` of `resource`.
    pub fn conflict(resource: &Resource, name: &str, detail: impl Into<String>) -> ApiError {
        ApiError::Conflict { qualified: resource.qualified(), name: name.to_string(), detail: detail.into() }
    }

    /// 409 `Conflict` for a stale `resourceVersion`, worded as kube-apiserver does.
    pub fn stale(resource: &Resource, name: &str) -> ApiError {
        ApiError::conflict(resource, name, "the object has been modified; please apply your changes to the latest version and try again")
    }

    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired(_) => "Expired",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Invalid(_) => "Invalid",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The Status object, as the body of an error response or of a watch ERROR event.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { qualified, name }
            | ApiError::AlreadyExists { qualified, name }
            | ApiError::Conflict { qualified, name, .. } => {
                let (kind, group) = qualified.split_once('.').unwrap_or((qualified, ""));
                Some(json!({"name": name, "group": group, "kind": kind}))
            }
            _ => None,
        };
        if let (Some(details), Some(obj)) = (details, status.as_object_mut()) {
            obj.insert("details".into(), details);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceId;

    #[test]
    fn conflict_matches_kube_apiserver() {
        let lease = ResourceId::find("coordination.k8s.io", "v1", "leases").unwrap().get();
        let s = ApiError::stale(lease, "lock").to_status();
        assert_eq!(s["code"], 409);
        assert_eq!(s["reason"], "Conflict");
        assert_eq!(
            s["message"],
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"lock\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(s["details"], json!({"name": "lock", "group": "coordination.k8s.io", "kind": "leases"}));
    }

    #[test]
    fn not_found_of_core_resource() {
        let cm = ResourceId::find("", "v1", "configmaps").unwrap().get();
        let s = ApiError::not_found(cm, "x").to_status();
        assert_eq!((s["code"].as_u64(), s["reason"].as_str()), (Some(404), Some("NotFound")));
        assert_eq!(s["message"], "configmaps \"x\" not found");
        assert_eq!(s["details"]["group"], "");
    }
}
