//! The objects of one RAGEngine: its NodeClaims (through the provisioner
//! plugin, relabelled for the RAGEngine), a Deployment running `kaito-rag`,
//! and a Service on port 80. Shared by `kaito render` and the operator.

use crate::{RenderError, node_documents};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    KeyToPath, LocalObjectReference, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kaito_crd::ragengine::{DEFAULT_MOUNT_PATH, GUARDRAILS_POLICY_KEY, RAGENGINE_LABEL};
use kaito_crd::{FieldError, RAGEngine};
use kaito_plugin_host::{NodeRequest, ProvisionerMode, Registry};
use kube::ResourceExt;
use serde_json::Value;
use std::collections::BTreeMap;

/// Label with the RAGEngine's namespace, on cluster-scoped objects.
pub const RAGENGINE_NAMESPACE_LABEL: &str = kaito_names::labels::RAGENGINE_NAMESPACE;
/// Port the service listens on in the pod.
pub const RAG_PORT: i32 = 5000;
/// The embedding model the kaito-rag image carries, and where.
pub const BUILTIN_EMBEDDING_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Directory of [`BUILTIN_EMBEDDING_MODEL`] in the image.
pub const BUILTIN_EMBEDDING_DIR: &str = "/models/all-minilm-l6-v2";
/// Where a custom `embedding.local.image` must put its sentence-transformers directory.
pub const CUSTOM_EMBEDDING_DIR: &str = "/models/embedding";
/// OS disk of a provisioned RAGEngine node.
pub const RAG_DISK_BYTES: u64 = 128 << 30;
/// Key read from every access secret the spec names.
pub const SECRET_KEY: &str = "token";

/// Everything rendered for one RAGEngine, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct RagObjects {
    /// NodeClaims or NodePools (cluster-scoped), empty without `compute.instanceType`.
    pub nodes: Vec<Value>,
    /// The service's Deployment.
    pub deployment: Deployment,
    /// Its Service, port 80.
    pub service: Service,
}

impl RagObjects {
    /// Every object as JSON, in apply order.
    pub fn documents(&self) -> Vec<Value> {
        let mut docs = self.nodes.clone();
        docs.push(serde_json::to_value(&self.service).expect("Service serialises"));
        docs.push(serde_json::to_value(&self.deployment).expect("Deployment serialises"));
        docs
    }
}

/// Renders a RAGEngine; `provisioner` plans nodes when `compute.instanceType` is set.
pub fn render_ragengine(
    registry: &Registry,
    rag: &RAGEngine,
    provisioner: &str,
    image_registry: &str,
) -> Result<RagObjects, RenderError> {
    rag.spec.validate()?;
    let env = env(rag)?;
    let instance_type = rag.spec.compute.as_ref().and_then(|c| c.instance_type.clone()).filter(|s| !s.is_empty());
    let match_labels: BTreeMap<String, String> = rag
        .spec
        .compute
        .as_ref()
        .and_then(|c| c.label_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    let mut nodes = Vec::new();
    if let Some(instance_type) = &instance_type {
        let plugin = registry.provisioner(provisioner)?;
        if plugin.provisioner_info().map(|i| i.mode) != Some(ProvisionerMode::BringYourOwn) {
            crate::known_instance_type(&plugin, "spec.compute.instanceType", instance_type)?;
            let (name, namespace) = (rag.name_any(), rag.namespace().unwrap_or_default());
            let request = NodeRequest {
                owner: kaito_plugin_host::Owner {
                    kind: "RAGEngine".into(),
                    labels: vec![
                        kaito_plugin_host::wit::kv(RAGENGINE_LABEL, &name),
                        kaito_plugin_host::wit::kv(RAGENGINE_NAMESPACE_LABEL, &namespace),
                    ],
                    name,
                    namespace,
                },
                instance_type: instance_type.clone(),
                node_count: 1,
                match_labels: match_labels.iter().map(|(k, v)| kaito_plugin_host::wit::kv(k, v)).collect(),
                // The index and the embedding model, not LLM weights: the provisioners' 1 TiB default is for those.
                disk_bytes: RAG_DISK_BYTES,
                annotations: Vec::new(),
            };
            let plan = plugin.plan_nodes(&request)?;
            nodes = node_documents(&plan);
        }
    }
    Ok(RagObjects {
        nodes,
        deployment: deployment(rag, image_registry, env, &match_labels, instance_type.is_some()),
        service: service(rag),
    })
}

fn labels(rag: &RAGEngine) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RAGENGINE_LABEL.to_string(), rag.name_any()),
        ("app.kubernetes.io/name".to_string(), "kaito-rag".to_string()),
    ])
}

fn meta(rag: &RAGEngine) -> ObjectMeta {
    ObjectMeta {
        name: Some(rag.name_any()),
        namespace: rag.namespace(),
        labels: Some(labels(rag)),
        owner_references: Some(vec![OwnerReference {
            api_version: "kaito.sh/v1beta1".into(),
            kind: "RAGEngine".into(),
            name: rag.name_any(),
            uid: rag.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: SECRET_KEY.into(), optional: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The service's environment, from the spec; unsupported choices fail here.
fn env(rag: &RAGEngine) -> Result<Vec<EnvVar>, FieldError> {
    let mut env = Vec::new();
    let e = &rag.spec.embedding;
    if let Some(remote) = &e.remote {
        env.push(plain("EMBEDDING_URL", remote.url.clone()));
        if let Some(s) = &remote.access_secret {
            env.push(secret_env("EMBEDDING_ACCESS_SECRET", s));
        }
    } else if let Some(local) = &e.local {
        let dir = if local.image.is_some() {
            CUSTOM_EMBEDDING_DIR
        } else if local.model_id.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(BUILTIN_EMBEDDING_MODEL)) {
            BUILTIN_EMBEDDING_DIR
        } else {
            return Err(FieldError::new(
                "spec.embedding.local.modelID",
                format!("{:?} is not in the kaito-rag image, which carries {BUILTIN_EMBEDDING_MODEL} only", local.model_id.as_deref().unwrap_or_default()),
            )
            .hint(format!(
                "use modelID {BUILTIN_EMBEDDING_MODEL}, or embedding.local.image with the model at {CUSTOM_EMBEDDING_DIR}, or embedding.remote"
            )));
        };
        env.push(plain("EMBEDDING_MODEL_DIR", dir));
    }
    if let Some(llm) = &rag.spec.inference_service {
        env.push(plain("LLM_INFERENCE_URL", llm.url.clone()));
        if let Some(n) = llm.context_window_size {
            env.push(plain("LLM_CONTEXT_WINDOW", n.to_string()));
        }
        if let Some(s) = &llm.access_secret {
            env.push(secret_env("LLM_ACCESS_SECRET", s));
        }
    }
    // KAITO's variables: on/off whenever guardrails are given, the policy's path when a ConfigMap holds it.
    if let Some(g) = &rag.spec.guardrails {
        env.push(plain("OUTPUT_GUARDRAILS_ENABLED", g.enabled.to_string()));
        if g.enabled && g.config_map_ref.is_some() {
            env.push(plain("OUTPUT_GUARDRAILS_POLICY_PATH", format!("{GUARDRAILS_DIR}/{GUARDRAILS_POLICY_KEY}")));
        }
    }
    Ok(env)
}

/// Where a guardrails ConfigMap is mounted (KAITO's path).
const GUARDRAILS_DIR: &str = "/etc/ragengine/guardrails";

/// The guardrails policy's volume, when a ConfigMap holds it.
fn guardrails_volume(rag: &RAGEngine) -> Option<Volume> {
    let g = rag.spec.guardrails.as_ref().filter(|g| g.enabled)?;
    let name = g.config_map_ref.as_ref()?.name.clone();
    Some(Volume {
        name: "guardrails-policy".into(),
        config_map: Some(ConfigMapVolumeSource {
            name,
            items: Some(vec![KeyToPath {
                key: GUARDRAILS_POLICY_KEY.into(),
                path: GUARDRAILS_POLICY_KEY.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn deployment(
    rag: &RAGEngine,
    image_registry: &str,
    env: Vec<EnvVar>,
    match_labels: &BTreeMap<String, String>,
    provisioned: bool,
) -> Deployment {
    let local = rag.spec.embedding.local.as_ref();
    let image = local
        .and_then(|l| l.image.clone())
        .unwrap_or_else(|| format!("{}/kaito-rag:{}", image_registry.trim_end_matches('/'), env!("CARGO_PKG_VERSION")));
    let pv = rag.spec.storage.as_ref().and_then(|s| s.persistent_volume.as_ref());
    let mount_path = pv.and_then(|p| p.mount_path.clone()).unwrap_or_else(|| DEFAULT_MOUNT_PATH.into());
    let volume = match pv {
        Some(p) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: p.persistent_volume_claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        None => Volume { name: "data".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    };
    let probe = |path: &str, delay: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(RAG_PORT),
            ..Default::default()
        }),
        initial_delay_seconds: Some(delay),
        period_seconds: Some(10),
        ..Default::default()
    };
    let container = Container {
        name: "kaito-rag".into(),
        image: Some(image),
        args: Some(vec!["--port".into(), RAG_PORT.to_string(), "--data-dir".into(), mount_path.clone()]),
        env: Some(env),
        ports: Some(vec![ContainerPort { container_port: RAG_PORT, name: Some("http".into()), ..Default::default() }]),
        readiness_probe: Some(probe("/health", 5)),
        liveness_probe: Some(probe("/health", 60)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("1".into())),
                ("memory".to_string(), Quantity("2Gi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        volume_mounts: Some(
            [
                VolumeMount { name: "data".into(), mount_path, ..Default::default() },
                // libtorch and the tokenizer write scratch files.
                VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
            ]
            .into_iter()
            .chain(guardrails_volume(rag).map(|v| VolumeMount {
                name: v.name,
                mount_path: GUARDRAILS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }))
            .collect(),
        ),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        node_selector: Some(match_labels.clone()).filter(|m| !m.is_empty()),
        // Provisioned GPU nodes carry the sku=gpu taint.
        tolerations: provisioned.then(|| {
            vec![Toleration {
                key: Some("sku".into()),
                operator: Some("Equal".into()),
                value: Some("gpu".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]
        }),
        image_pull_secrets: local
            .and_then(|l| l.image_pull_secret.clone())
            .map(|s| vec![LocalObjectReference { name: s }]),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            ..Default::default()
        }),
        volumes: Some(
            [
                volume,
                Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
            ]
            .into_iter()
            .chain(guardrails_volume(rag))
            .collect(),
        ),
        ..Default::default()
    };
    Deployment {
        metadata: meta(rag),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(labels(rag)), ..Default::default() },
            // One LMDB writer per volume: the old pod stops before the new one opens it.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(rag)), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn service(rag: &RAGEngine) -> Service {
    Service {
        metadata: meta(rag),
        spec: Some(ServiceSpec {
            selector: Some(labels(rag)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(RAG_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}
