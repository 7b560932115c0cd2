//! The InferenceSet resource (`kaito.sh/v1beta1` stored, `v1alpha1` served, as KAITO v0.12 does): a Workspace
//! template plus `replicas`, with the scale subresource so `kubectl scale`, an HPA or KEDA can drive it. The operator
//! keeps `<set>-0` … `<set>-(replicas-1)` Workspaces made from the template.

use crate::{FieldError, InferenceSpec, PartitionSpec, V1BETA1, Workspace, WorkspaceStatus};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Path of the committed InferenceSet CRD, relative to the repository root.
pub const INFERENCESET_CRD_PATH: &str = "charts/kaito-workspace/crds/kaito.sh_inferencesets.yaml";
/// Label on every Workspace a set made, naming the set: `status.selector` selects on it.
pub const INFERENCESET_LABEL: &str = kaito_names::labels::INFERENCESET;
/// Label with a Workspace's index in its set.
pub const INFERENCESET_INDEX_LABEL: &str = kaito_names::labels::INFERENCESET_INDEX;
/// Annotation with the hash of the template a Workspace was made from.
pub const TEMPLATE_HASH_ANNOTATION: &str = kaito_names::annotations::INFERENCESET_TEMPLATE_HASH;
/// Longest set name: `<name>-<index>` must stay a 63-character DNS label up to index 9999.
pub const MAX_NAME_LENGTH: usize = 58;

/// A Workspace template and how many Workspaces to keep from it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kaito.sh",
    version = "v1beta1",
    kind = "InferenceSet",
    plural = "inferencesets",
    shortname = "is",
    shortname = "isets",
    category = "inferenceset",
    namespaced,
    status = "InferenceSetStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"ReadyReplicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceSetSpec {
    /// What each Workspace is made from.
    pub template: InferenceSetTemplate,
    /// How many Workspaces to keep (default 1; 0 scales to zero).
    #[serde(default = "one", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Most GPU nodes all the set's Workspaces together may use; 0 or unset: no limit. A replica that would exceed
    /// it is not created and the set says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub node_count_limit: Option<i32>,
    /// The `resource.labelSelector` of every Workspace the set makes.
    pub label_selector: LabelSelector,
    /// How a template change reaches existing Workspaces (default RollingUpdate, maxUnavailable 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
    /// KAITO's base-image auto-upgrade: refused when enabled (see the CRD rule); a new operator version rolls each
    /// Workspace's StatefulSet in place by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_upgrade: Option<AutoUpgradePolicy>,
}

fn one() -> Option<i32> {
    Some(1)
}

/// The Workspace template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceSetTemplate {
    /// Labels and annotations every Workspace gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    #[serde(default)]
    pub resource: InferenceSetResource,
    pub inference: InferenceSpec,
}

/// Metadata copied onto each Workspace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Nodes of each Workspace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceSetResource {
    /// GPU instance type; required with a node provisioner, empty with bring-your-own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// GPU partitioning of each replica (bring-your-own nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionSpec>,
}

/// A StatefulSet-style update strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStrategy {
    /// `RollingUpdate` (default): out-of-date Workspaces are replaced, at most `maxUnavailable` unready at once;
    /// `OnDelete`: a Workspace takes the new template only when it is deleted.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(RollingUpdate|OnDelete)$"))]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// Bounds of a rolling update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// Most Workspaces not Ready during the update: a number, or a percentage of `replicas` (rounded down, at
    /// least 1). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Workspaces with an index below this keep the old template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub partition: Option<i32>,
}

/// KAITO's auto-upgrade policy; only `enabled: false` is accepted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoUpgradePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub maintenance_window: Option<Value>,
}

/// What the operator observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceSetStatus {
    /// Workspaces that exist and are not being deleted (the scale subresource's current count).
    #[serde(default)]
    pub replicas: i32,
    /// Workspaces whose latest spec is serving.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Workspaces made from the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Label selector of the set's Workspaces and their pods, for an HPA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// InferenceSetReady (and InferenceSetDeleting while it goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The rolling update a spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Replace out-of-date Workspaces from the highest index down to `partition`, at most `max_unavailable` unready.
    Rolling { max_unavailable: u32, partition: u32 },
    /// Leave them until they are deleted.
    OnDelete,
}

impl InferenceSet {
    /// Desired Workspaces.
    pub fn replicas(&self) -> u32 {
        self.spec.replicas.unwrap_or(1).max(0) as u32
    }

    /// The node limit, if one is set.
    pub fn node_count_limit(&self) -> Option<u32> {
        self.spec.node_count_limit.filter(|n| *n > 0).map(|n| n as u32)
    }

    /// `status.selector`: the label every Workspace of the set (and its pods) carries.
    pub fn selector(&self) -> String {
        format!("{INFERENCESET_LABEL}={}", self.name_any())
    }

    /// Name of the Workspace at `index`.
    pub fn workspace_name(&self, index: u32) -> String {
        format!("{}-{index}", self.name_any())
    }

    /// The index of a Workspace of this set from its name, if it has the set's shape.
    pub fn index_of(&self, workspace: &str) -> Option<u32> {
        let rest = workspace.strip_prefix(&self.name_any())?.strip_prefix('-')?;
        if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
            return None;
        }
        rest.parse().ok()
    }

    /// Hash of everything a Workspace is made from: a Workspace carrying another hash is out of date.
    pub fn template_hash(&self) -> String {
        use sha2::Digest;
        let made_from =
            crate::sorted_keys(json!({"template": self.spec.template, "labelSelector": self.spec.label_selector}));
        let digest = sha2::Sha256::digest(serde_json::to_vec(&made_from).expect("template serialises"));
        hex::encode(&digest[..5])
    }

    /// The update strategy, with KAITO's defaults.
    pub fn rollout(&self) -> Rollout {
        let strategy = self.spec.update_strategy.clone().unwrap_or_default();
        if strategy.type_.as_deref() == Some("OnDelete") {
            return Rollout::OnDelete;
        }
        let rolling = strategy.rolling_update.unwrap_or_default();
        let replicas = self.replicas();
        let max_unavailable = match rolling.max_unavailable {
            None => 1,
            Some(IntOrString::Int(n)) => n.max(0) as u32,
            Some(IntOrString::String(s)) => {
                let percent: u32 = s.trim_end_matches('%').parse().unwrap_or(0);
                replicas * percent / 100
            }
        };
        // Zero would stall every update; StatefulSets treat it the same way.
        Rollout::Rolling {
            max_unavailable: max_unavailable.max(1),
            partition: rolling.partition.unwrap_or(0).max(0) as u32,
        }
    }

    /// The Workspace at `index`, as the set makes it: named `<set>-<index>`, labelled with the set and the index,
    /// owned by the set, its spec from the template. `instance_type` is false with bring-your-own nodes.
    pub fn workspace(&self, index: u32) -> Workspace {
        let template = &self.spec.template;
        let meta = template.metadata.clone().unwrap_or_default();
        let mut labels = meta.labels;
        labels.insert(INFERENCESET_LABEL.into(), self.name_any());
        labels.insert(INFERENCESET_INDEX_LABEL.into(), index.to_string());
        let mut annotations = meta.annotations;
        annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), self.template_hash());
        // Only a set the API server stored has a uid to own by (`kaito render` shows a file's Workspaces without).
        let owner = self.metadata.uid.clone().map(|uid| OwnerReference {
            api_version: V1BETA1.into(),
            kind: "InferenceSet".into(),
            name: self.name_any(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
        Workspace {
            api_version: V1BETA1.into(),
            kind: "Workspace".into(),
            metadata: ObjectMeta {
                name: Some(self.workspace_name(index)),
                namespace: self.namespace(),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            resource: crate::ResourceSpec {
                instance_type: template.resource.instance_type.clone().filter(|t| !t.is_empty()),
                label_selector: Some(self.spec.label_selector.clone()),
                partition: template.resource.partition.clone(),
                ..Default::default()
            },
            inference: Some(template.inference.clone()),
            tuning: None,
            status: None,
        }
    }

    /// KAITO's rules that depend on the provisioner (`byo`: no instance type; any other: one is required), and the
    /// Workspace rules each replica must pass, named by the set's field.
    pub fn validate(&self, bring_your_own: bool) -> Result<(), FieldError> {
        let name = self.name_any();
        if !kaito_names::dns_label(&name) || name.len() > MAX_NAME_LENGTH {
            return Err(FieldError::new(
                "metadata.name",
                format!("{name:?} is not a DNS-1123 label of at most {MAX_NAME_LENGTH} characters"),
            ));
        }
        let instance_type = self.spec.template.resource.instance_type.as_deref().unwrap_or_default();
        if bring_your_own && !instance_type.is_empty() {
            return Err(FieldError::new(
                "spec.template.resource.instanceType",
                "must be empty with bring-your-own nodes (the byo provisioner)",
            )
            .hint("remove it and label your GPU nodes with spec.labelSelector"));
        }
        if !bring_your_own && instance_type.is_empty() {
            return Err(FieldError::new("spec.template.resource.instanceType", "is required to provision nodes")
                .hint("name the GPU instance type, e.g. Standard_NC24ads_A100_v4"));
        }
        self.workspace(0).validate().map_err(|e| {
            let field = match e.field.as_str() {
                "resource.labelSelector" => "spec.labelSelector".to_string(),
                f if f.starts_with("resource.labelSelector.") => format!("spec.{}", &f["resource.".len()..]),
                f if f.starts_with("resource.") || f.starts_with("inference") => format!("spec.template.{f}"),
                f if f.starts_with("metadata.annotations") => format!("spec.template.{f}"),
                f => f.to_string(),
            };
            FieldError { field, ..e }
        })
    }
}

impl Workspace {
    /// Whether the Workspace serves its latest spec: `WorkspaceSucceeded` is True for the current generation.
    pub fn succeeded(&self) -> bool {
        let Some(WorkspaceStatus { conditions: Some(conditions), observed_generation, .. }) = &self.status else {
            return false;
        };
        *observed_generation == self.metadata.generation
            && conditions.iter().any(|c| {
                c.type_ == crate::SUCCEEDED_CONDITION
                    && c.status == "True"
                    && (c.observed_generation.is_none() || c.observed_generation == self.metadata.generation)
            })
    }
}

/// Removes the update-only rules (`oldSelf`) from a schema subtree: a template may change; the Workspaces it makes
/// are replaced when their own rules refuse the change.
fn without_transition_rules(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                rules.retain(|r| !r["rule"].as_str().unwrap_or_default().contains("oldSelf"));
                if rules.is_empty() {
                    map.remove("x-kubernetes-validations");
                }
            }
            map.values_mut().for_each(without_transition_rules);
        }
        Value::Array(items) => items.iter_mut().for_each(without_transition_rules),
        _ => {}
    }
}

fn push_rule(node: &mut Value, rule: &str, message: &str) {
    let rules =
        node.as_object_mut().expect("object schema").entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    rules.as_array_mut().expect("array").push(json!({"rule": rule, "message": message}));
}

/// The openAPIV3Schema of an InferenceSet: the template's `inference` and the `labelSelector` are the Workspace's
/// own schema (so its rules run at apply time), without the Workspace's immutability rules.
pub fn inferenceset_schema() -> Value {
    let mut crd = serde_json::to_value(InferenceSet::crd()).expect("CRD serialises");
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].take();
    let mut workspace = crate::crd::workspace_schema();
    without_transition_rules(&mut workspace);
    schema["description"] =
        json!("A Workspace template and how many Workspaces to keep from it, scalable like a StatefulSet.");
    let spec = &mut schema["properties"]["spec"];
    spec["properties"]["template"]["properties"]["inference"] = workspace["properties"]["inference"].take();
    let mut selector = workspace["properties"]["resource"]["properties"]["labelSelector"].take();
    selector.as_object_mut().expect("object").remove("nullable");
    spec["properties"]["labelSelector"] = selector;
    spec["properties"]["replicas"]["default"] = json!(1);
    spec["properties"]["autoUpgrade"]["properties"]["maintenanceWindow"] = json!({"type": "object", "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true, "description": "KAITO's maintenance window (not read: autoUpgrade is refused)."});

    push_rule(
        spec,
        "!has(self.autoUpgrade) || !has(self.autoUpgrade.enabled) || !self.autoUpgrade.enabled",
        "spec.autoUpgrade.enabled is not supported: a new operator version rolls each Workspace's StatefulSet in place by itself; remove autoUpgrade",
    );
    push_rule(
        &mut spec["properties"]["updateStrategy"],
        "!has(self.rollingUpdate) || !has(self.type) || self.type == 'RollingUpdate'",
        "spec.updateStrategy.rollingUpdate is only read with type RollingUpdate",
    );
    push_rule(
        &mut schema,
        &format!(
            "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= {MAX_NAME_LENGTH}"
        ),
        &format!(
            "metadata.name must be a DNS-1123 label of at most {MAX_NAME_LENGTH} characters, so `<name>-<index>` Workspace names stay valid"
        ),
    );
    schema
}

/// The InferenceSet CRD: v1beta1 stored, v1alpha1 served with the same schema, as KAITO v0.12 does.
pub fn inferenceset_crd() -> CustomResourceDefinition {
    let mut crd = InferenceSet::crd();
    let schema: JSONSchemaProps = serde_json::from_value(inferenceset_schema()).expect("valid JSONSchemaProps");
    let beta = &mut crd.spec.versions[0];
    beta.schema.as_mut().expect("schema").open_api_v3_schema = Some(schema);
    beta.storage = true;
    let mut alpha = beta.clone();
    alpha.name = "v1alpha1".into();
    alpha.storage = false;
    crd.spec.versions.push(alpha);
    crd
}

/// The CRD as the YAML committed at [`INFERENCESET_CRD_PATH`].
pub fn inferenceset_crd_yaml() -> String {
    format!(
        "# Generated by `kaito crd inferenceset` from host/crd; do not edit. A test fails when this file drifts.\n{}",
        serde_yaml::to_string(&inferenceset_crd()).expect("CRD serialises")
    )
}

impl InferenceSet {
    /// Parse one InferenceSet from YAML (or JSON), naming the field of any error.
    pub fn from_yaml(text: &str) -> Result<InferenceSet, FieldError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| FieldError::new("(document)", format!("not valid YAML: {e}")))?;
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
        if !["kaito.sh/v1alpha1", "kaito.sh/v1beta1"].contains(&api_version) {
            return Err(FieldError::new("apiVersion", format!("{api_version:?} is not kaito.sh/v1alpha1 or v1beta1")));
        }
        let mut set: InferenceSet = serde_path_to_error::deserialize(value)
            .map_err(|e| FieldError::new(e.path().to_string(), e.inner().to_string()))?;
        if set.metadata.namespace.is_none() {
            set.metadata.namespace = Some("default".into());
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> InferenceSet {
        InferenceSet::from_yaml(yaml).unwrap()
    }

    const PHI: &str = "apiVersion: kaito.sh/v1alpha1\nkind: InferenceSet\nmetadata: {name: phi-4-mini, uid: u1}\n\
        spec:\n  replicas: 2\n  nodeCountLimit: 5\n  labelSelector: {matchLabels: {apps: phi-4-mini}}\n  template:\n    \
        inference: {preset: {name: phi-4-mini-instruct, accessMode: public}}\n    resource: {instanceType: Standard_NC24ads_A100_v4}\n";

    #[test]
    fn workspaces_are_named_labelled_and_owned_from_the_template() {
        let s = set(PHI);
        assert_eq!((s.replicas(), s.node_count_limit()), (2, Some(5)));
        let ws = s.workspace(1);
        assert_eq!(ws.name(), "phi-4-mini-1");
        let labels = ws.metadata.labels.clone().unwrap();
        assert_eq!(labels[INFERENCESET_LABEL], "phi-4-mini");
        assert_eq!(labels[INFERENCESET_INDEX_LABEL], "1");
        assert_eq!(ws.annotation(TEMPLATE_HASH_ANNOTATION), Some(s.template_hash().as_str()));
        let owner = &ws.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("InferenceSet", "u1", Some(true)));
        assert_eq!(ws.match_labels()["apps"], "phi-4-mini");
        assert_eq!(ws.resource.instance_type.as_deref(), Some("Standard_NC24ads_A100_v4"));
        ws.validate().unwrap();
        assert_eq!(s.index_of("phi-4-mini-12"), Some(12));
        for other in ["phi-4-mini", "phi-4-mini-", "phi-4-mini-01", "phi-4-mini-x", "phi-4-1"] {
            assert_eq!(s.index_of(other), None, "{other}");
        }
    }

    #[test]
    fn the_hash_moves_with_the_template_only() {
        let a = set(PHI);
        let mut b = a.clone();
        b.spec.replicas = Some(7);
        b.spec.node_count_limit = Some(1);
        assert_eq!(a.template_hash(), b.template_hash(), "scaling is not a template change");
        b.spec.template.inference.config = Some("my-config".into());
        assert_ne!(a.template_hash(), b.template_hash());
    }

    #[test]
    fn rollout_defaults_and_percentages() {
        let mut s = set(PHI);
        assert_eq!(s.rollout(), Rollout::Rolling { max_unavailable: 1, partition: 0 });
        s.spec.replicas = Some(10);
        s.spec.update_strategy = Some(UpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdate {
                max_unavailable: Some(IntOrString::String("25%".into())),
                partition: Some(3),
            }),
        });
        assert_eq!(s.rollout(), Rollout::Rolling { max_unavailable: 2, partition: 3 });
        s.spec.update_strategy = Some(UpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None });
        assert_eq!(s.rollout(), Rollout::OnDelete);
    }

    #[test]
    fn provisioner_dependent_rules_name_the_field() {
        let s = set(PHI);
        s.validate(false).unwrap();
        assert_eq!(s.validate(true).unwrap_err().field, "spec.template.resource.instanceType");
        let mut no_type = s.clone();
        no_type.spec.template.resource.instance_type = None;
        assert_eq!(no_type.validate(false).unwrap_err().field, "spec.template.resource.instanceType");
        no_type.validate(true).unwrap();
        let mut reserved = s.clone();
        reserved.spec.label_selector.match_labels = Some([("kaito.sh/workspace".to_string(), "x".to_string())].into());
        assert!(reserved.validate(false).unwrap_err().field.starts_with("spec.labelSelector"));
    }

    #[test]
    fn a_workspace_is_ready_for_its_current_generation_only() {
        let mut ws = set(PHI).workspace(0);
        ws.metadata.generation = Some(2);
        let cond = |generation: i64| Condition {
            type_: "WorkspaceSucceeded".into(),
            status: "True".into(),
            reason: "WorkspaceSucceeded".into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        ws.status = Some(WorkspaceStatus {
            conditions: Some(vec![cond(1)]),
            observed_generation: Some(1),
            ..Default::default()
        });
        assert!(!ws.succeeded(), "a status about generation 1 says nothing about generation 2");
        ws.status = Some(WorkspaceStatus {
            conditions: Some(vec![cond(2)]),
            observed_generation: Some(2),
            ..Default::default()
        });
        assert!(ws.succeeded());
    }

    #[test]
    fn crd_has_kaito_names_versions_and_the_scale_subresource() {
        let crd = inferenceset_crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["is".to_string(), "isets".to_string()]));
        let versions: Vec<(&str, bool)> = crd.spec.versions.iter().map(|v| (v.name.as_str(), v.storage)).collect();
        assert_eq!(versions, [("v1beta1", true), ("v1alpha1", false)]);
        let scale = crd.spec.versions[0].subresources.as_ref().unwrap().scale.as_ref().unwrap();
        assert_eq!(
            (
                scale.spec_replicas_path.as_str(),
                scale.status_replicas_path.as_str(),
                scale.label_selector_path.as_deref()
            ),
            (".spec.replicas", ".status.replicas", Some(".status.selector"))
        );
        let schema = inferenceset_schema();
        let inference = &schema["properties"]["spec"]["properties"]["template"]["properties"]["inference"];
        assert!(inference.to_string().contains("has(self.preset) != has(self.template)"));
        assert!(!schema.to_string().contains("oldSelf"), "a template may change");
        crate::crd::assert_committed(INFERENCESET_CRD_PATH, &inferenceset_crd_yaml(), "crd inferenceset");
    }
}
