//! Every API call the operator makes, in one table: the Helm chart's
//! ClusterRole and leader Role are checked against it (`tests/tests/chart.rs`),
//! and the end-to-end tests run the operator under that ClusterRole on a real
//! API server, failing on any 403. A new API call in the operator needs its
//! verb added here. Server-side apply is a `patch` that the API server also
//! authorizes as `create` when the object does not exist yet.

/// One resource the operator touches and the verbs it uses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Plural resource name, with `/subresource` where one is used.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

const fn p(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Permission {
    Permission { group, resource, verbs }
}

/// What the Workspace and InferenceSet controllers (the Workspace chart), the event recorder and leader election
/// need. The InferenceSet controller creates, applies and deletes Workspaces.
pub const PERMISSIONS: &[Permission] = &[
    p("kaito.sh", "workspaces", &["get", "list", "watch", "create", "patch", "delete"]),
    p("kaito.sh", "workspaces/status", &["patch"]),
    p("kaito.sh", "workspaces/finalizers", &["update"]),
    p("kaito.sh", "inferencesets", &["get", "list", "watch", "patch"]),
    p("kaito.sh", "inferencesets/status", &["patch"]),
    p("kaito.sh", "inferencesets/finalizers", &["update"]),
    p("karpenter.sh", "nodeclaims", &["get", "list", "watch", "create", "delete"]),
    p("karpenter.sh", "nodepools", &["get", "list", "watch", "create", "patch", "delete"]),
    p("", "nodes", &["get", "list", "watch"]),
    p("", "pods", &["get", "list", "watch"]),
    p("", "services", &["get", "list", "watch", "create", "patch"]),
    p("apps", "statefulsets", &["get", "list", "watch", "create", "patch"]),
    // Tuning Workspaces: the Job is made once per revision and deleted when the spec changes (a Job's template is
    // immutable).
    p("batch", "jobs", &["get", "list", "watch", "create", "patch", "delete"]),
    p("events.k8s.io", "events", &["create", "patch"]),
    p("coordination.k8s.io", "leases", &["get", "create", "update"]),
    // Only the plugin-reference ConfigMap, by name (`--plugin-configmap`).
    p("", "configmaps", &["get", "list", "watch"]),
];

/// What the RAGEngine controller (`--controllers ragengine`), its events and leader election need.
pub const RAGENGINE_PERMISSIONS: &[Permission] = &[
    p("kaito.sh", "ragengines", &["get", "list", "watch", "patch"]),
    p("kaito.sh", "ragengines/status", &["patch"]),
    p("kaito.sh", "ragengines/finalizers", &["update"]),
    p("karpenter.sh", "nodeclaims", &["get", "list", "watch", "create", "delete"]),
    p("karpenter.sh", "nodepools", &["get", "list", "watch", "create", "patch", "delete"]),
    p("", "nodes", &["get", "list", "watch"]),
    p("", "pods", &["get", "list", "watch"]),
    p("", "services", &["get", "list", "watch", "create", "patch"]),
    p("apps", "deployments", &["get", "list", "watch", "create", "patch"]),
    p("events.k8s.io", "events", &["create", "patch"]),
    p("coordination.k8s.io", "leases", &["get", "create", "update"]),
    // The conversion webhook: its certificate Secret in the release namespace, and the RAGEngine CRD (by name) it
    // registers in.
    p("", "secrets", &["get", "create", "update"]),
    p("apiextensions.k8s.io", "customresourcedefinitions", &["get", "patch"]),
];

/// Whether the Workspace table grants `verb` on `group`/`resource`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS.iter().any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates_and_no_wildcards() {
        for table in [PERMISSIONS, RAGENGINE_PERMISSIONS] {
            for (i, a) in table.iter().enumerate() {
                assert!(table[i + 1..].iter().all(|b| (a.group, a.resource) != (b.group, b.resource)));
                assert!(!a.verbs.contains(&"*") && a.resource != "*");
            }
        }
        assert!(allows("karpenter.sh", "nodeclaims", "create"));
        assert!(!allows("", "secrets", "get"));
        // Server-side apply of an object that does not exist yet is authorized as create.
        for (group, resource) in [("", "services"), ("apps", "statefulsets"), ("karpenter.sh", "nodepools")] {
            assert!(allows(group, resource, "patch") && allows(group, resource, "create"), "{resource}");
        }
    }
}
