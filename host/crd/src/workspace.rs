//! The Workspace resource.

use crate::{FieldError, GROUP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Storage version.
pub const V1BETA1: &str = "kaito.sh/v1beta1";
/// Older served version.
pub const V1ALPHA1: &str = "kaito.sh/v1alpha1";
/// Instance type v1alpha1 Workspaces default to.
pub const V1ALPHA1_DEFAULT_INSTANCE_TYPE: &str = "Standard_NC24ads_A100_v4";
/// Label the operator puts on every object it creates for a Workspace.
pub const WORKSPACE_LABEL: &str = kaito_names::labels::WORKSPACE;
/// Label with the Workspace's namespace, on cluster-scoped objects.
pub const WORKSPACE_NAMESPACE_LABEL: &str = kaito_names::labels::WORKSPACE_NAMESPACE;
/// Annotation choosing the runtime (`tch` or `vllm`).
pub const RUNTIME_ANNOTATION: &str = kaito_names::annotations::RUNTIME;
/// Pod-template annotation carrying the spec revision, so a spec change rolls the pods and nothing else does.
pub const REVISION_ANNOTATION: &str = "workspace.kaito.io/revision";
/// The Workspace's headline condition, as KAITO names it: True once the latest spec serves.
pub const SUCCEEDED_CONDITION: &str = "WorkspaceSucceeded";
/// Most adapters one Workspace may load.
pub const MAX_ADAPTERS: usize = 10;

/// Label keys the operator owns; users may not select on them.
pub const RESERVED_LABELS: &[&str] = &[
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
    kaito_names::labels::RAGENGINE,
    kaito_names::labels::RAGENGINE_NAMESPACE,
];
/// Label prefix the operator owns.
pub const RESERVED_LABEL_PREFIX: &str = "karpenter.kaito.sh/";

/// Whether users may not select on `key`: the operator owns it.
pub fn is_reserved_label(key: &str) -> bool {
    RESERVED_LABELS.contains(&key) || key.starts_with(RESERVED_LABEL_PREFIX)
}

/// A KAITO Workspace: GPU resources plus an inference or tuning workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    // The API server owns apiVersion, kind and metadata: a CRD schema leaves them out.
    #[serde(default = "default_api_version")]
    #[schemars(skip)]
    pub api_version: String,
    #[serde(default = "default_kind")]
    #[schemars(skip)]
    pub kind: String,
    #[serde(default)]
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub resource: ResourceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkspaceStatus>,
}

fn default_api_version() -> String {
    V1BETA1.into()
}

fn default_kind() -> String {
    "Workspace".into()
}

/// GPU nodes for the workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSpec {
    /// Deprecated, as in KAITO: presets are sized by the estimator (status.targetNodeCount); templates use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    /// Cloud instance type of the GPU nodes (node auto-provisioning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Nodes the workload may run on; also labels put on provisioned nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Deprecated and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_nodes: Option<Vec<String>>,
    /// GPU partitioning of bring-your-own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionSpec>,
}

/// MIG or accelerator partitioning.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionSpec {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
}

/// An inference workload: a preset or a pod template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetSpec>,
    /// A pod template run instead of a preset (schemaless, as in KAITO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub template: Option<serde_json::Value>,
    /// ConfigMap with `inference_config.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<Vec<AdapterSpec>>,
}

/// The model to serve.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresetSpec {
    /// Alias (`phi-4`) or Hugging Face id (`microsoft/phi-4`), any case.
    pub name: String,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset_options: Option<PresetOptions>,
}

/// Options of a preset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresetOptions {
    /// Deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<String>>,
    /// Secret with key `HF_TOKEN` for gated models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_access_secret: Option<String>,
}

/// A LoRA adapter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdapterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<String>,
}

/// Where data (adapters, tuning input) comes from: exactly one source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub volume_source: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<String>>,
}

/// Where tuning results go: exactly one destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub volume_source: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_push_secret: Option<String>,
}

/// A fine-tuning job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TuningSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<DataDestination>,
}

/// Observed state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_nodes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_count: Option<i32>,
    /// The generation this status describes: until it is `metadata.generation`, the conditions are about an older
    /// spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl kube::Resource for Workspace {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Workspace".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1beta1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "workspaces".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Workspace {
    /// Every Workspace string a plugin copies into an object is checked here, so that a plugin's output can only be
    /// invalid through the plugin's own fault (which quarantines it), never through one Workspace's input (which
    /// fails that Workspace alone).
    fn validate_plugin_inputs(&self) -> Result<(), FieldError> {
        if let Some(t) = &self.resource.instance_type
            && !(t.is_empty() || kaito_names::label_value(t))
        {
            return Err(FieldError::new("resource.instanceType", format!("{t:?} is not a valid instance type name"))
                .hint("use the cloud's instance type name, e.g. Standard_NC24ads_A100_v4"));
        }
        for (k, v) in self.match_labels() {
            if !kaito_names::label_key(&k) {
                return Err(FieldError::new(
                    "resource.labelSelector.matchLabels",
                    format!("{k:?} is not a valid label key"),
                ));
            }
            if !kaito_names::label_value(&v) {
                return Err(FieldError::new(
                    format!("resource.labelSelector.matchLabels[{k}]"),
                    format!("{v:?} is not a valid label value"),
                )
                .hint("at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"));
            }
        }
        let class = self.annotation(kaito_names::annotations::NODE_CLASS_NAME).map(str::trim).unwrap_or_default();
        if !class.is_empty() && !kaito_names::dns_subdomain(class) {
            return Err(FieldError::new(
                format!("metadata.annotations[{}]", kaito_names::annotations::NODE_CLASS_NAME),
                format!("{class:?} is not a valid node class name"),
            )
            .hint("name an existing node class (a DNS subdomain), or remove the annotation to use `default`"));
        }
        // Annotations KAITO's webhook checks.
        let mode = self.annotation(kaito_names::annotations::PERFORMANCE_MODE).map(str::trim).unwrap_or_default();
        if !mode.is_empty() && !kaito_names::annotations::PERFORMANCE_MODES.contains(&mode) {
            return Err(FieldError::new(
                format!("metadata.annotations[{}]", kaito_names::annotations::PERFORMANCE_MODE),
                format!("{mode:?} is not a performance mode"),
            )
            .hint(format!("use one of: {}", kaito_names::annotations::PERFORMANCE_MODES.join(", "))));
        }
        let local = self.annotation(kaito_names::annotations::USE_LOCAL_WEIGHTS);
        if let Some(v) = local.filter(|v| !matches!(*v, "true" | "false")) {
            return Err(FieldError::new(
                format!("metadata.annotations[{}]", kaito_names::annotations::USE_LOCAL_WEIGHTS),
                format!("{v:?} is not a boolean"),
            )
            .hint("use \"true\" or \"false\""));
        }
        let secret =
            self.preset().and_then(|p| p.preset_options.as_ref()).and_then(|o| o.model_access_secret.as_deref());
        if let Some(s) = secret.filter(|s| !kaito_names::dns_subdomain(s)) {
            return Err(FieldError::new(
                "inference.preset.presetOptions.modelAccessSecret",
                format!("{s:?} is not a valid Secret name"),
            ));
        }
        let config = self.inference.as_ref().and_then(|i| i.config.as_deref());
        if let Some(c) = config.filter(|c| !kaito_names::dns_subdomain(c)) {
            return Err(FieldError::new("inference.config", format!("{c:?} is not a valid ConfigMap name")));
        }
        Ok(())
    }

    /// Whether the user wrote this Workspace as `kaito.sh/v1alpha1`: a file says so in `apiVersion`; in the cluster the
    /// API server stores it as v1beta1 but records, in `managedFields`, the version each writer used.
    pub fn written_as_v1alpha1(&self) -> bool {
        self.api_version == V1ALPHA1
            || self.metadata.managed_fields.iter().flatten().any(|m| {
                m.api_version.as_deref() == Some(V1ALPHA1)
                    && m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:resource").is_some())
            })
    }

    /// Parse one Workspace from YAML (or JSON), naming the field of any error.
    pub fn from_yaml(text: &str) -> Result<Workspace, FieldError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| FieldError::new("(document)", format!("not valid YAML: {e}")))?;
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
        if kind != "Workspace" {
            return Err(FieldError::new("kind", format!("expected Workspace, found {kind:?}")));
        }
        if api_version != V1BETA1 && api_version != V1ALPHA1 {
            return Err(FieldError::new("apiVersion", format!("{api_version:?} is not a served Workspace version"))
                .hint(format!("use {V1BETA1} (or {V1ALPHA1})")));
        }
        if value.get("spec").is_some() {
            return Err(FieldError::new(
                "spec",
                "Workspaces have no spec: resource, inference and tuning sit at the top level",
            )
            .hint("move the fields under spec one level up"));
        }
        let mut ws: Workspace = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            FieldError::new(if path == "." { "(document)".into() } else { path }, e.into_inner().to_string())
        })?;
        if api_version == V1ALPHA1 && ws.resource.instance_type.is_none() {
            ws.resource.instance_type = Some(V1ALPHA1_DEFAULT_INSTANCE_TYPE.into());
        }
        Ok(ws)
    }

    /// sha256 over what the user asked for (resource, inference, tuning), as KAITO hashes it;
    /// metadata and status changes do not make a new revision.
    pub fn spec_hash(&self) -> String {
        use sha2::Digest;
        let spec = crate::sorted_keys(
            serde_json::json!({"resource": self.resource, "inference": self.inference, "tuning": self.tuning}),
        );
        hex::encode(sha2::Sha256::digest(serde_json::to_vec(&spec).expect("Workspace spec serialises")))
    }

    /// Revision name: `<workspace>-<first 5 hex digits of the spec hash>`, as KAITO names ControllerRevisions.
    pub fn revision_name(&self) -> String {
        format!("{}-{}", self.name(), &self.spec_hash()[..5])
    }

    /// Name, or empty.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Namespace, defaulting to `default`.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// `matchLabels` without the keys the operator reserves.
    pub fn match_labels(&self) -> BTreeMap<String, String> {
        let labels = self.resource.label_selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
        labels.into_iter().filter(|(k, _)| !is_reserved_label(k)).collect()
    }

    /// The preset, for an inference Workspace that uses one.
    pub fn preset(&self) -> Option<&PresetSpec> {
        self.inference.as_ref()?.preset.as_ref()
    }

    /// Check the rules KAITO's validating webhook applies to a single object.
    pub fn validate(&self) -> Result<(), FieldError> {
        let name = self.name();
        if !kaito_names::dns_label(name) {
            return Err(FieldError::new("metadata.name", format!("{name:?} is not a DNS-1123 label"))
                .hint("use at most 63 lowercase letters, digits and '-'"));
        }
        match (&self.inference, &self.tuning) {
            (Some(_), Some(_)) => return Err(FieldError::new("inference", "set inference or tuning, not both")),
            (None, None) => {
                return Err(FieldError::new("inference", "a Workspace needs inference or tuning")
                    .hint("add inference.preset.name"));
            }
            _ => {}
        }
        let selector = self.resource.label_selector.as_ref().ok_or_else(|| {
            FieldError::new("resource.labelSelector", "is required")
                .hint("add resource.labelSelector.matchLabels, e.g. apps: my-model")
        })?;
        let given = selector.match_labels.as_ref().map_or(0, |m| m.len());
        if given > 0 && self.match_labels().is_empty() {
            return Err(FieldError::new(
                "resource.labelSelector.matchLabels",
                "every label is reserved for the operator (kaito.sh/*, karpenter.kaito.sh/*)",
            )
            .hint("add a label of your own"));
        }
        self.validate_plugin_inputs()?;
        if let Some(count) = self.resource.count.filter(|c| *c < 1) {
            return Err(FieldError::new("resource.count", format!("{count} is not a positive node count")));
        }
        if self.resource.partition.is_some() {
            return Err(FieldError::new(
                "resource.partition",
                "GPU partitioning (MIG/accelerator) is not supported yet",
            )
            .hint("remove resource.partition"));
        }
        if let Some(inf) = &self.inference {
            match (&inf.preset, &inf.template) {
                (Some(_), Some(_)) => {
                    return Err(FieldError::new(
                        "inference.template",
                        "set inference.preset or inference.template, not both",
                    ));
                }
                (None, None) => {
                    return Err(FieldError::new("inference.preset", "inference needs a preset or a template")
                        .hint("add inference.preset.name"));
                }
                (Some(p), None) if p.name.trim().is_empty() => {
                    return Err(FieldError::new("inference.preset.name", "is empty"));
                }
                _ => {}
            }
            let adapters = inf.adapters.as_deref().unwrap_or_default();
            if adapters.len() > MAX_ADAPTERS {
                return Err(FieldError::new(
                    "inference.adapters",
                    format!("{} adapters, at most {MAX_ADAPTERS} allowed", adapters.len()),
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, a) in adapters.iter().enumerate() {
                let n = a.source.as_ref().and_then(|s| s.name.as_deref()).unwrap_or_default();
                // The name is the adapter's model name and its directory in the pod.
                if !kaito_names::dns_label(n) {
                    return Err(FieldError::new(
                        format!("inference.adapters[{i}].source.name"),
                        format!("{n:?} is not a DNS-1123 label"),
                    )
                    .hint(
                        "use at most 63 lowercase letters, digits and '-': it names the adapter's model and directory",
                    ));
                }
                if !seen.insert(n) {
                    return Err(FieldError::new(
                        format!("inference.adapters[{i}].source.name"),
                        format!("{n:?} is used by another adapter"),
                    ));
                }
            }
        }
        if let Some(t) = &self.tuning {
            // KAITO's TuningSpec checks, for objects that did not pass the CRD's CEL rules (`kaito render`).
            if t.preset.as_ref().is_none_or(|p| p.name.trim().is_empty()) {
                return Err(FieldError::new("tuning.preset.name", "is required").hint("name a preset that tunes"));
            }
            if let Some(m) = t.method.as_deref()
                && !matches!(m.trim().to_ascii_lowercase().as_str(), "lora" | "qlora")
            {
                return Err(FieldError::new("tuning.method", format!("{m:?} is not lora or qlora")));
            }
            if self.resource.count.is_some_and(|c| c > 1) {
                return Err(
                    FieldError::new("resource.count", "tuning runs on one node").hint("set resource.count to 1")
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: workspace-phi-3-5-mini
resource:
  instanceType: \"Standard_NC24ads_A100_v4\"
  labelSelector:
    matchLabels:
      apps: phi-3-5
inference:
  preset:
    name: phi-3.5-mini-instruct
";

    #[test]
    fn revision_follows_the_spec_only() {
        let a = Workspace::from_yaml(SEED).unwrap();
        let mut annotated = a.clone();
        annotated.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        annotated.status = Some(WorkspaceStatus { state: Some("Ready".into()), ..Default::default() });
        assert_eq!(a.spec_hash(), annotated.spec_hash());
        let mut bigger = a.clone();
        bigger.resource.instance_type = Some("Standard_NC48ads_A100_v4".into());
        assert_ne!(a.spec_hash(), bigger.spec_hash());
        assert_eq!(a.spec_hash().len(), 64);
        assert_eq!(a.revision_name(), format!("workspace-phi-3-5-mini-{}", &a.spec_hash()[..5]));
    }

    #[test]
    fn parses_and_validates_the_seed() {
        let ws = Workspace::from_yaml(SEED).unwrap();
        ws.validate().unwrap();
        assert_eq!(ws.preset().unwrap().name, "phi-3.5-mini-instruct");
        assert_eq!(ws.namespace(), "default");
    }

    /// KAITO's webhook checks these annotations; a bad value names the annotation and the accepted values.
    #[test]
    fn kaito_annotations_are_checked() {
        let with = |key: &str, value: &str| {
            Workspace::from_yaml(&SEED.replace(
                "  name: workspace-phi-3-5-mini\n",
                &format!("  name: workspace-phi-3-5-mini\n  annotations:\n    {key}: {value:?}\n"),
            ))
            .unwrap()
            .validate()
        };
        for ok in ["balanced", "interactivity", "throughput"] {
            with("kaito.sh/performance-mode", ok).unwrap();
        }
        let e = with("kaito.sh/performance-mode", "fast").unwrap_err();
        assert_eq!(e.field, "metadata.annotations[kaito.sh/performance-mode]");
        assert!(e.hint.unwrap().contains("interactivity"));
        with("kaito.sh/use-local-weights", "false").unwrap();
        assert_eq!(
            with("kaito.sh/use-local-weights", "yes").unwrap_err().field,
            "metadata.annotations[kaito.sh/use-local-weights]"
        );
        assert_eq!(
            with("kaito.sh/node-class-name", "Not A Class").unwrap_err().field,
            "metadata.annotations[kaito.sh/node-class-name]"
        );
        with("kaito.sh/node-class-name", "").unwrap();
        assert_eq!(with("kaito.sh/runtime", "transformers").map(|_| ()), Ok(()));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Workspace::from_yaml(&SEED.replace("    name: phi", "    nme: phi")).unwrap_err();
        assert_eq!(e.field, "inference.preset.nme");
        assert!(e.message.contains("unknown field `nme`"), "{}", e.message);
    }

    #[test]
    fn spec_wrapper_is_rejected_with_a_fix() {
        let e = Workspace::from_yaml("apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata: {name: a}\nspec: {}\n")
            .unwrap_err();
        assert_eq!(e.field, "spec");
    }

    #[test]
    fn reserved_labels_are_stripped_and_all_reserved_rejected() {
        let ws = Workspace::from_yaml(&SEED.replace("apps: phi-3-5", "kaito.sh/workspace: x")).unwrap();
        assert!(ws.match_labels().is_empty());
        assert_eq!(ws.validate().unwrap_err().field, "resource.labelSelector.matchLabels");
    }

    #[test]
    fn v1alpha1_defaults_instance_type() {
        let ws = Workspace::from_yaml(
            &SEED.replace("v1beta1", "v1alpha1").replace("  instanceType: \"Standard_NC24ads_A100_v4\"\n", ""),
        )
        .unwrap();
        assert_eq!(ws.resource.instance_type.as_deref(), Some(V1ALPHA1_DEFAULT_INSTANCE_TYPE));
    }

    #[test]
    fn bad_name_is_rejected() {
        let ws = Workspace::from_yaml(&SEED.replace("workspace-phi-3-5-mini", "Workspace_Phi")).unwrap();
        assert_eq!(ws.validate().unwrap_err().field, "metadata.name");
    }
}
