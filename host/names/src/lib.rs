//! Names of the objects made for a Workspace, defined once for the host (renderer, operator) and the guest plugin
//! SDK (which addresses the leader pod through the headless Service).
//!
//! Every name fits the limit the API server enforces for its kind, whatever the Workspace's name: a StatefulSet's
//! pods carry the label `controller-revision-hash: <statefulset>-<hash of up to 10 characters>`, and a label value
//! has at most 63 characters, so a StatefulSet name has at most 52; Service names are DNS labels (63). A name that
//! would be longer keeps its start and ends in a hash of the whole name, so distinct Workspaces keep distinct names.

/// Longest DNS label (Service names, label values).
pub const DNS_LABEL_MAX: usize = 63;
/// Longest StatefulSet name whose pods the StatefulSet controller can label.
pub const STATEFULSET_NAME_MAX: usize = 52;

/// FNV-1a: a stable hash with no dependency (this crate is compiled into every guest plugin too).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `base` + `suffix`, shortened to `max` characters by cutting `base` and marking it with a hash of `base`.
fn bounded(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let tag = format!("{:06x}", fnv1a(base) & 0xff_ffff);
    let keep = max.saturating_sub(suffix.len() + tag.len() + 1);
    // Names are ASCII (DNS); a cut must still not end in '-' or '.'.
    let head = base[..keep.min(base.len())].trim_end_matches(['-', '.']);
    format!("{head}-{tag}{suffix}")
}

/// The inference StatefulSet (and the Workspace's pods' prefix).
pub fn statefulset(workspace: &str) -> String {
    bounded(workspace, "", STATEFULSET_NAME_MAX)
}

/// The client-facing Service.
pub fn service(workspace: &str) -> String {
    bounded(workspace, "", DNS_LABEL_MAX)
}

/// The headless Service that gives the StatefulSet's pods DNS names.
pub fn headless_service(workspace: &str) -> String {
    bounded(&statefulset(workspace), "-headless", DNS_LABEL_MAX)
}

/// The first pod of the StatefulSet: the leader of a multi-node deployment.
pub fn leader_pod(workspace: &str) -> String {
    format!("{}-0", statefulset(workspace))
}

/// DNS name of the leader pod inside the cluster.
pub fn leader_address(workspace: &str, namespace: &str) -> String {
    format!("{}.{}.{namespace}.svc.cluster.local", leader_pod(workspace), headless_service(workspace))
}

fn alnum_edges(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// RFC 1123 label: lowercase alphanumerics and '-', at most 63.
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS_LABEL_MAX
        && alnum_edges(s)
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

fn label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS_LABEL_MAX
        && alnum_edges(s)
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Kubernetes label key: optional DNS-subdomain prefix and a name of at most 63.
pub fn label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && label_name(name),
        None => label_name(s),
    }
}

/// Kubernetes label value: empty, or a name of at most 63.
pub fn label_value(s: &str) -> bool {
    s.is_empty() || label_name(s)
}

/// The name node objects of an owner derive from: a Workspace's own name (so its NodeClaims keep their names), any
/// other kind's name with the kind appended, so owners of different kinds never share node objects.
pub fn owner_object_name(kind: &str, name: &str) -> String {
    if kind == "Workspace" { name.to_string() } else { format!("{name}-{}", kind.to_ascii_lowercase()) }
}

/// Tag of our runtime image (`kaito-inference`, with `kaito-tune` and `kaito-pull`), planned by the SDK's presets and
/// used by the host's adapter pullers.
pub const RUNTIME_IMAGE_TAG: &str = "0.1.0";

/// Our runtime image under the registry prefix `image_registry` (e.g. `ghcr.io/kaito-rs`).
pub fn runtime_image(image_registry: &str) -> String {
    format!("{}/kaito-inference:{RUNTIME_IMAGE_TAG}", image_registry.trim_end_matches('/'))
}

/// Where a serving pod keeps its LoRA adapters: one directory per adapter, pulled by an init container the host adds
/// before the server starts, mounted read-only into the server; presets name the directories in the server's flags.
pub mod adapters {
    /// Mount path of the adapters volume.
    pub const DIR: &str = "/mnt/adapter";
    /// Name of the adapters volume in the pod.
    pub const VOLUME: &str = "adapters";

    /// The directory of adapter `name`.
    pub fn path(name: &str) -> String {
        format!("{DIR}/{name}")
    }
}

/// Tool-call parsers by vLLM's `--tool-call-parser` names: presets name one per model, vLLM reads it, and our tch
/// server (`kaito-inference`) implements those listed in [`tool_parsers::TCH`].
pub mod tool_parsers {
    /// `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Hermes, Qwen 2.5 and later).
    pub const HERMES: &str = "hermes";
    /// A bare JSON object `{"name": ..., "parameters": ...}`, optionally after `<|python_tag|>` (Llama 3.1 and later).
    pub const LLAMA3_JSON: &str = "llama3_json";
    /// `[TOOL_CALLS]` then a JSON list of calls, or `name[ARGS]{...}` (Mistral).
    pub const MISTRAL: &str = "mistral";
    /// The parsers the tch server implements.
    pub const TCH: &[&str] = &[HERMES, LLAMA3_JSON, MISTRAL];
}

/// Labels the operator stamps on what it makes for an owner, as KAITO names them.
pub mod labels {
    /// The Workspace an object belongs to.
    pub const WORKSPACE: &str = "kaito.sh/workspace";
    /// That Workspace's namespace (on cluster-scoped objects).
    pub const WORKSPACE_NAMESPACE: &str = "kaito.sh/workspacenamespace";
    /// The RAGEngine an object belongs to.
    pub const RAGENGINE: &str = "kaito.sh/ragengine";
    /// That RAGEngine's namespace.
    pub const RAGENGINE_NAMESPACE: &str = "kaito.sh/ragenginenamespace";
    /// The InferenceSet a Workspace (and its pods) was made for; `status.selector` of the set, as KAITO names it.
    pub const INFERENCESET: &str = "inferenceset.kaito.sh/created-by";
    /// The index of a Workspace within its InferenceSet (`<set>-<index>`), so scale-down removes the highest.
    pub const INFERENCESET_INDEX: &str = "inferenceset.kaito.sh/index";
}

/// Annotations with a meaning to the operator and its plugins, as KAITO names them.
pub mod annotations {
    /// The runtime a Workspace asks for: `vllm`, `tch` (ours), or KAITO's `transformers` (served by tch).
    pub const RUNTIME: &str = "kaito.sh/runtime";
    /// vLLM's performance mode: one of [`PERFORMANCE_MODES`]; `balanced` passes no flag.
    pub const PERFORMANCE_MODE: &str = "kaito.sh/performance-mode";
    /// The values KAITO's webhook accepts for [`PERFORMANCE_MODE`].
    pub const PERFORMANCE_MODES: &[&str] = &["balanced", "interactivity", "throughput"];
    /// KAITO's boolean annotation for weights baked into the image: exactly `true` or `false`.
    pub const USE_LOCAL_WEIGHTS: &str = "kaito.sh/use-local-weights";
    /// Node class (Karpenter `EC2NodeClass`, KAITO `KaitoNodeClass`) the provisioner names; unset or empty: `default`.
    pub const NODE_CLASS_NAME: &str = "kaito.sh/node-class-name";
    /// Node class used when the Workspace names none.
    pub const DEFAULT_NODE_CLASS: &str = "default";
    /// KAITO's opt-out of its v1alpha1 GPU-memory check: present (any value) means skip it.
    pub const BYPASS_RESOURCE_CHECKS: &str = "kaito.sh/bypass-resource-checks";
    /// The preset plugin that rendered a StatefulSet (set by the renderer, read by the operator's metrics).
    pub const PRESET_PLUGIN: &str = "kaito.sh/preset-plugin";
    /// Digest of that plugin's component (set by the operator only), so a plugin reload shows what it re-rendered.
    pub const PRESET_PLUGIN_DIGEST: &str = "kaito.sh/preset-plugin-digest";
    /// Hash of the InferenceSet template a Workspace was made from: a Workspace whose hash differs is rolled.
    pub const INFERENCESET_TEMPLATE_HASH: &str = "inferenceset.kaito.sh/template-hash";
}

/// The node class a Workspace's annotation asks for: KAITO falls back to the default when it is unset or empty.
pub fn node_class(annotation: Option<&str>) -> &str {
    annotation.map(str::trim).filter(|v| !v.is_empty()).unwrap_or(annotations::DEFAULT_NODE_CLASS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_and_node_class() {
        assert!(dns_label("ws-0") && !dns_label("Ws") && !dns_label("-a"));
        assert!(label_key("kaito.sh/workspace") && !label_key("kaito.sh/"));
        assert!(label_value("") && !label_value("a b"));
        assert_eq!(node_class(Some("")), "default");
        assert_eq!(node_class(None), "default");
        assert_eq!(node_class(Some("gpu")), "gpu");
    }

    #[test]
    fn short_names_are_unchanged() {
        assert_eq!(statefulset("workspace-phi-3-5-mini"), "workspace-phi-3-5-mini");
        assert_eq!(headless_service("workspace-phi-3-5-mini"), "workspace-phi-3-5-mini-headless");
        assert_eq!(leader_address("ws", "default"), "ws-0.ws-headless.default.svc.cluster.local");
    }

    #[test]
    fn long_names_fit_their_kinds_and_stay_distinct() {
        let a = format!("{}a", "w".repeat(62));
        let b = format!("{}b", "w".repeat(62));
        for name in [&a, &b] {
            assert!(statefulset(name).len() <= STATEFULSET_NAME_MAX);
            // The StatefulSet controller's revision label: <statefulset>-<10 characters>.
            assert!(statefulset(name).len() + 11 <= DNS_LABEL_MAX);
            assert!(headless_service(name).len() <= DNS_LABEL_MAX);
            assert!(service(name).len() <= DNS_LABEL_MAX);
            assert!(!statefulset(name).contains("--"));
        }
        assert_ne!(statefulset(&a), statefulset(&b));
        assert_ne!(headless_service(&a), headless_service(&b));
        assert_eq!(service(&a), a, "63 characters is a valid Service name");
        let cut = format!("{}-{}", "x".repeat(50), "y".repeat(12));
        assert!(!statefulset(&cut).contains("--"), "{}", statefulset(&cut));
    }
}
