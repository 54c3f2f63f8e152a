//! The resource types this server knows: their group, version, plural path
//! segment and kind, and which subresources they have. The table is the whole
//! of the server's "discovery": a path naming anything else is a 404.

/// One served resource type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    /// API group; `""` for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural name, as in the path (`deployments`).
    pub plural: &'static str,
    /// Kind, as in an object's `kind` (`Deployment`).
    pub kind: &'static str,
    /// Has a `status` subresource: writes to the main resource keep the stored
    /// status, and writes to `/status` change nothing but the status.
    pub status: bool,
    /// Has a `scale` subresource (autoscaling/v1 Scale).
    pub scale: bool,
}

/// Every resource type served. All are namespaced.
pub const RESOURCES: &[Resource] = &[
    core("configmaps", "ConfigMap", false),
    core("secrets", "Secret", false),
    core("services", "Service", true),
    core("pods", "Pod", true),
    core("endpoints", "Endpoints", false),
    core("events", "Event", false),
    core("serviceaccounts", "ServiceAccount", false),
    grouped("events.k8s.io", "events", "Event", false),
    Resource { group: "apps", version: "v1", plural: "deployments", kind: "Deployment", status: true, scale: true },
    grouped("discovery.k8s.io", "endpointslices", "EndpointSlice", false),
    grouped("coordination.k8s.io", "leases", "Lease", false),
    grouped("networking.k8s.io", "ingresses", "Ingress", true),
];

const fn core(plural: &'static str, kind: &'static str, status: bool) -> Resource {
    Resource { group: "", version: "v1", plural, kind, status, scale: false }
}

const fn grouped(group: &'static str, plural: &'static str, kind: &'static str, status: bool) -> Resource {
    Resource { group, version: "v1", plural, kind, status, scale: false }
}

/// A resource type, as an index into [`RESOURCES`]: cheap to copy, compare and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(usize);

impl ResourceId {
    /// Looks a resource up by group, version and plural.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<ResourceId> {
        RESOURCES.iter().position(|r| r.group == group && r.version == version && r.plural == plural).map(ResourceId)
    }

    /// Looks a resource up by `apiVersion` (`apps/v1`, `v1`) and plural.
    pub fn by_api_version(api_version: &str, plural: &str) -> Option<ResourceId> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        ResourceId::find(group, version, plural)
    }

    /// Looks a resource up by `apiVersion` and `kind`, as an object names its type.
    pub fn by_kind(api_version: &str, kind: &str) -> Option<ResourceId> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        RESOURCES.iter().position(|r| r.group == group && r.version == version && r.kind == kind).map(ResourceId)
    }

    /// The resource's description.
    pub fn get(self) -> &'static Resource {
        &RESOURCES[self.0]
    }

    /// Every resource type.
    pub fn all() -> impl Iterator<Item = ResourceId> {
        (0..RESOURCES.len()).map(ResourceId)
    }
}

impl Resource {
    /// `apiVersion` of its objects (`apps/v1`, or `v1` for the core group).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group` (or just `plural` for core), as kube-apiserver names it in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// Where an object lives: its type, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The resource type.
    pub resource: ResourceId,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl Key {
    /// A key from its parts.
    pub fn new(resource: ResourceId, namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key { resource, namespace: namespace.into(), name: name.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let d = ResourceId::by_api_version("apps/v1", "deployments").unwrap();
        assert_eq!(d.get().kind, "Deployment");
        assert_eq!(ResourceId::by_api_version("v1", "configmaps").unwrap().get().api_version(), "v1");
        assert_eq!(ResourceId::find("coordination.k8s.io", "v1", "leases").unwrap().get().qualified(), "leases.coordination.k8s.io");
        assert!(ResourceId::find("", "v1", "nodes").is_none());
        assert_eq!(ResourceId::by_kind("discovery.k8s.io/v1", "EndpointSlice").unwrap().get().plural, "endpointslices");
        assert!(ResourceId::by_kind("v1", "Deployment").is_none());
        assert_ne!(ResourceId::find("", "v1", "events"), ResourceId::find("events.k8s.io", "v1", "events"));
    }
}
