//! Host bindings, one module per contract version, and the conversions that
//! let the host speak only `latest` while it keeps loading older plugins (as
//! Zed does).

macro_rules! bindings {
    ($module:ident, $dir:literal, $version:literal) => {
        #[doc = concat!("Bindings for `wit/v", $version, "`.")]
        pub mod $module {
            /// The `preset` world.
            pub mod preset {
                wasmtime::component::bindgen!({
                    path: $dir,
                    world: "preset",
                    additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
                });
            }
            /// The `provisioner` world; shared interfaces come from `preset`.
            pub mod provisioner {
                wasmtime::component::bindgen!({
                    path: $dir,
                    world: "provisioner",
                    additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
                    with: {
                        "kaito:plugin/types": super::preset::kaito::plugin::types,
                        "kaito:plugin/log": super::preset::kaito::plugin::log,
                    },
                });
            }

            /// Contract version string.
            pub const VERSION: &str = $version;
            /// Export name a preset component must have.
            pub const PRESET_EXPORT: &str = concat!("kaito:plugin/preset-api@", $version);
            /// Export name a provisioner component must have.
            pub const PROVISIONER_EXPORT: &str = concat!("kaito:plugin/provisioner-api@", $version);
            /// Import name of the log interface.
            pub const LOG_IMPORT: &str = concat!("kaito:plugin/log@", $version);
            /// Import name of the shared types.
            pub const TYPES_IMPORT: &str = concat!("kaito:plugin/types@", $version);
        }
    };
}

bindings!(v0_1_0, "../../wit/v0.1.0", "0.1.0");
bindings!(v0_2_0, "../../wit/v0.2.0", "0.2.0");

/// The contract version the host speaks internally.
pub mod latest {
    pub use super::v0_2_0::preset::exports::kaito::plugin::preset_api::{
        Adapter, EnvSource, EnvVar, HttpGetAction, ModelFacts, ModelInfo, Parallelism, PersistentClaim, PlanRequest,
        Port, PresetPlan, Probe, ProbeAction, ResourcePlan, SecretKeyRef, TuneInput, TuneOutput, TunePlan, TuneRequest,
        Volume, VolumeSource, WorkloadPlan,
    };
    pub use super::v0_2_0::preset::kaito::plugin::log::Level;
    pub use super::v0_2_0::preset::kaito::plugin::types::{
        ErrorKind, GpuShape, KeyValue, Owner, PluginError, PluginInfo,
    };
    pub use super::v0_2_0::provisioner::exports::kaito::plugin::provisioner_api::{
        InstanceType, NodeClassRef, NodeGpu, NodeObject, NodeObjectKind, NodePlan, NodeRequest, ProvisionerInfo,
        ProvisionerMode, Requirement, RequirementOperator, Taint, TaintEffect, Toleration, TolerationOperator,
    };
}

/// Contract versions this host loads, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[v0_2_0::VERSION, v0_1_0::VERSION];

/// Conversions between `latest` and 0.1.0. The bindings of both derive serde with the same field and variant names,
/// so a type whose shape did not change converts through JSON unchanged, and the few that changed are edited on the
/// way: one place says what 0.2.0 changed.
pub mod compat_v0_1_0 {
    use super::latest;
    use super::v0_1_0::preset::exports::kaito::plugin::preset_api as old_preset;
    use super::v0_1_0::preset::kaito::plugin::types as old_types;
    use super::v0_1_0::provisioner::exports::kaito::plugin::provisioner_api as old_provisioner;
    use serde::{Serialize, de::DeserializeOwned};
    use serde_json::{Value, json};

    fn value(v: &impl Serialize) -> Value {
        serde_json::to_value(v).expect("binding types serialise")
    }

    /// Only fails if the two versions' shapes differ in a way [`value`]'s edits do not cover: a bug here, which the
    /// round-trip tests below would show, so it is reported as the plugin's invalid output rather than a panic.
    fn from<T: DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("0.1.0 conversion: {e}"))
    }

    /// A plan request, without the model facts 0.1.0 cannot receive.
    pub fn plan_request(r: &latest::PlanRequest) -> Result<old_preset::PlanRequest, String> {
        let mut v = value(r);
        v.as_object_mut().expect("record").remove("model_facts");
        from(v)
    }

    pub fn gpu_shape(s: &latest::GpuShape) -> Result<old_types::GpuShape, String> {
        from(value(s))
    }

    pub fn key_values(kvs: &[latest::KeyValue]) -> Result<Vec<old_types::KeyValue>, String> {
        from(value(&kvs))
    }

    /// A node request: the owner becomes 0.1.0's workspace and namespace.
    pub fn node_request(r: &latest::NodeRequest) -> Result<old_provisioner::NodeRequest, String> {
        let mut v = value(r);
        let o = v.as_object_mut().expect("record");
        o.remove("owner");
        o.insert("workspace".into(), json!(kaito_names::owner_object_name(&r.owner.kind, &r.owner.name)));
        o.insert("namespace".into(), json!(r.owner.namespace));
        from(v)
    }

    /// A 0.1.0 node plan: its objects stamped Workspace labels from the legacy name; they get the owner's labels
    /// instead, and no extra tolerations.
    pub fn node_plan(p: &old_provisioner::NodePlan, owner: &latest::Owner) -> Result<latest::NodePlan, String> {
        let stamped = [kaito_names::labels::WORKSPACE, kaito_names::labels::WORKSPACE_NAMESPACE];
        let relabel = |labels: &mut Value| {
            let mut kept: Vec<Value> = labels
                .as_array()
                .into_iter()
                .flatten()
                .filter(|kv| !stamped.contains(&kv["key"].as_str().unwrap_or_default()))
                .cloned()
                .collect();
            kept.extend(owner.labels.iter().map(value));
            *labels = Value::Array(kept);
        };
        let mut v = value(p);
        for o in v["objects"].as_array_mut().into_iter().flatten() {
            relabel(&mut o["labels"]);
        }
        relabel(&mut v["pod_node_labels"]);
        v["pod_tolerations"] = json!([]);
        from(v)
    }

    /// A result whose shape did not change (model info, plans, errors, instance types, ...).
    pub fn same<T: Serialize, U: DeserializeOwned>(old: &T) -> Result<U, String> {
        from(value(old))
    }
}

/// `field: message (fix: hint)`, the way errors are shown to users.
pub fn describe(e: &latest::PluginError) -> String {
    match &e.hint {
        Some(hint) => format!("{}: {} (fix: {hint})", e.field, e.message),
        None => format!("{}: {}", e.field, e.message),
    }
}

/// A Workspace as node requests name it: its kind, name, namespace and the labels its node objects carry.
pub fn workspace_owner(name: &str, namespace: &str) -> latest::Owner {
    latest::Owner {
        kind: "Workspace".into(),
        name: name.into(),
        namespace: namespace.into(),
        labels: vec![kv(kaito_names::labels::WORKSPACE, name), kv(kaito_names::labels::WORKSPACE_NAMESPACE, namespace)],
    }
}

/// Shorthand for building key/value lists on the host side.
pub fn kv(key: impl Into<String>, value: impl Into<String>) -> latest::KeyValue {
    latest::KeyValue { key: key.into(), value: value.into() }
}

#[cfg(test)]
mod tests {
    use super::compat_v0_1_0 as compat;
    use super::latest::*;
    use super::{kv, workspace_owner};

    fn node_request(owner: Owner) -> NodeRequest {
        NodeRequest {
            owner,
            instance_type: "Standard_NC24ads_A100_v4".into(),
            node_count: 2,
            match_labels: vec![kv("apps", "phi")],
            disk_bytes: 1 << 30,
            annotations: vec![kv("kaito.sh/node-class-name", "gpu")],
        }
    }

    #[test]
    fn node_requests_name_the_owner_as_0_1_0_expects() {
        let old = compat::node_request(&node_request(workspace_owner("ws", "default"))).unwrap();
        assert_eq!((old.workspace.as_str(), old.namespace.as_str(), old.node_count), ("ws", "default", 2));
        assert_eq!(old.annotations[0].value, "gpu");
        let rag = Owner { kind: "RAGEngine".into(), name: "rag".into(), namespace: "ns".into(), labels: vec![] };
        assert_eq!(compat::node_request(&node_request(rag)).unwrap().workspace, "rag-ragengine");
    }

    #[test]
    fn plan_requests_lose_only_the_model_facts() {
        let request = PlanRequest {
            workspace: "ws".into(),
            namespace: "default".into(),
            model: "org/model".into(),
            runtime: Some("vllm".into()),
            model_access_secret: None,
            adapters: vec![Adapter { name: "a".into(), image: Some("example.com/a:1".into()), strength: None }],
            max_model_len: Some(4096),
            min_nodes: 1,
            image_registry: "registry.example".into(),
            config_map: None,
            annotations: vec![kv("a", "b")],
            model_facts: Some(ModelFacts {
                hf_id: "org/model".into(),
                architecture: "LlamaForCausalLM".into(),
                weights_bytes: 1,
                context_length: 2,
                bytes_per_token: 3,
                quantization: None,
            }),
        };
        let old = compat::plan_request(&request).unwrap();
        assert_eq!((old.model.as_str(), old.max_model_len, old.adapters.len()), ("org/model", Some(4096), 1));
        let back: PlanRequest = {
            let mut v = serde_json::to_value(&old).unwrap();
            v["model_facts"] = serde_json::Value::Null;
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(back, PlanRequest { model_facts: None, ..request });
    }

    #[test]
    fn old_node_plans_carry_the_owner_labels_and_no_tolerations() {
        let owner = Owner {
            kind: "RAGEngine".into(),
            name: "rag".into(),
            namespace: "ns".into(),
            labels: vec![kv("kaito.sh/ragengine", "rag"), kv("kaito.sh/ragenginenamespace", "ns")],
        };
        let old = compat::node_request(&node_request(owner.clone())).unwrap();
        let stamped = vec![
            kv("kaito.sh/workspace", &old.workspace),
            kv("kaito.sh/workspacenamespace", &old.namespace),
            kv("apps", "phi"),
        ];
        let plan = NodePlan {
            objects: vec![NodeObject {
                kind: NodeObjectKind::NodeClaim,
                name: "ws123".into(),
                labels: stamped.clone(),
                annotations: vec![],
                taints: vec![Taint { key: "sku".into(), value: "gpu".into(), effect: TaintEffect::NoSchedule }],
                requirements: vec![],
                node_class_ref: None,
                storage_bytes: Some(1),
                node_limit: None,
            }],
            pod_node_labels: stamped[..2].to_vec(),
            pod_tolerations: vec![],
        };
        let old_plan = compat::same(&plan).map(|mut v: serde_json::Value| {
            v.as_object_mut().unwrap().remove("pod_tolerations");
            v
        });
        let old_plan = serde_json::from_value(old_plan.unwrap()).unwrap();
        let new = compat::node_plan(&old_plan, &owner).unwrap();
        assert_eq!(new.objects[0].labels, vec![kv("apps", "phi"), owner.labels[0].clone(), owner.labels[1].clone()]);
        assert_eq!(new.pod_node_labels, owner.labels);
        assert!(new.pod_tolerations.is_empty());
        assert_eq!(new.objects[0].taints, plan.objects[0].taints);
    }
}
