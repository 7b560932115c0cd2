//! The RAGEngine resource (`kaito.sh/v1beta1`): a retrieval service with an
//! embedding model, optionally in front of an LLM, as KAITO defines it.

use crate::{FieldError, ResourceSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Path of the committed RAGEngine CRD, relative to the repository root.
pub const RAGENGINE_CRD_PATH: &str = "charts/kaito-ragengine/crds/kaito.sh_ragengines.yaml";
/// Label the operator puts on every object it creates for a RAGEngine.
pub const RAGENGINE_LABEL: &str = kaito_names::labels::RAGENGINE;
/// Where the data volume is mounted when the spec does not say.
pub const DEFAULT_MOUNT_PATH: &str = "/mnt/data";

/// What a RAGEngine runs: where, with which embedding model, and which LLM it fronts.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kaito.sh",
    version = "v1beta1",
    kind = "RAGEngine",
    plural = "ragengines",
    shortname = "rag",
    namespaced,
    status = "RAGEngineStatus",
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".spec.compute.instanceType"}"#,
    printcolumn = r#"{"name":"ResourceReady","type":"string","jsonPath":".status.conditions[?(@.type==\"ResourceReady\")].status"}"#,
    printcolumn = r#"{"name":"ServiceReady","type":"string","jsonPath":".status.conditions[?(@.type==\"ServiceReady\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RAGEngineSpec {
    /// Nodes for the service; without `instanceType` it runs on existing nodes matching `labelSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ResourceSpec>,
    /// Where the index lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// The embedding model: local or remote.
    pub embedding: EmbeddingSpec,
    /// The LLM answering RAG chat; without it the service is retrieve-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_service: Option<InferenceServiceSpec>,
    /// Output guardrails on every chat answer (KAITO's `rag-output-guardrails`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<GuardrailsSpec>,
}

/// Output guardrails: on or off, and the policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailsSpec {
    /// Scan every chat answer (RAG and pass-through) with the policy.
    #[serde(default)]
    pub enabled: bool,
    /// A ConfigMap in the RAGEngine's namespace whose `guardrails.yaml` key is the policy; without it, kaito-rag's
    /// built-in policy (the same scanners as KAITO's template policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapReference>,
}

/// A ConfigMap by name, in the RAGEngine's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigMapReference {
    /// Its name.
    pub name: String,
}

/// The key of the guardrails ConfigMap that holds the policy (KAITO's).
pub const GUARDRAILS_POLICY_KEY: &str = "guardrails.yaml";

/// Storage of the index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// A PersistentVolumeClaim the index lives on (otherwise an emptyDir: lost with the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentVolumeSpec>,
    /// An external vector database (KAITO: Qdrant). Not supported by kaito-rag; refused with a condition.
    #[serde(default, rename = "vectorDB", skip_serializing_if = "Option::is_none")]
    pub vector_db: Option<VectorDbSpec>,
}

/// The claim the index lives on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeSpec {
    /// Name of an existing PersistentVolumeClaim in the RAGEngine's namespace.
    pub persistent_volume_claim: String,
    /// Mount path (default /mnt/data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

/// An external vector database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorDbSpec {
    /// Engine name, e.g. qdrant.
    pub engine: String,
    /// Its URL.
    pub url: String,
    /// Secret holding its API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_secret: Option<String>,
}

/// Exactly one of `local` and `remote`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingSpec {
    /// An OpenAI-compatible embeddings endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteEmbeddingSpec>,
    /// A model run inside the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalEmbeddingSpec>,
}

/// A remote embeddings endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteEmbeddingSpec {
    /// Its URL (`.../v1/embeddings` or a base URL).
    pub url: String,
    /// Secret whose `token` key is sent as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_secret: Option<String>,
}

/// A local embedding model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEmbeddingSpec {
    /// An image that carries the model instead of the service's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pull secret for that image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// Hugging Face id of a sentence-transformers model, e.g. BAAI/bge-small-en-v1.5.
    #[serde(default, rename = "modelID", skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Secret with an HF token for gated models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_access_secret: Option<String>,
}

/// The LLM the service sends RAG chat to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// OpenAI-compatible chat completions URL (a Workspace's Service, say).
    pub url: String,
    /// Secret whose `token` key is sent as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_secret: Option<String>,
    /// The LLM's context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window_size: Option<i32>,
}

/// What the operator observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RAGEngineStatus {
    /// Nodes the service runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_nodes: Option<Vec<String>>,
    /// ResourceReady, ServiceReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl RAGEngineSpec {
    /// KAITO's webhook rules, and what kaito-rag cannot do, as field errors.
    pub fn validate(&self) -> Result<(), FieldError> {
        let e = &self.embedding;
        match (&e.local, &e.remote) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(FieldError::new("spec.embedding", "set exactly one of local and remote").hint(
                    "local: {modelID: ...} runs the model in the service; remote: {url: ...} calls an endpoint",
                ));
            }
            (None, Some(r)) if r.url.trim().is_empty() => {
                return Err(FieldError::new("spec.embedding.remote.url", "must not be empty"));
            }
            (Some(l), None) if l.model_id.is_none() && l.image.is_none() => {
                return Err(FieldError::new("spec.embedding.local", "set modelID or image"));
            }
            _ => {}
        }
        if let Some(i) = &self.inference_service {
            if i.url.trim().is_empty() {
                return Err(FieldError::new("spec.inferenceService.url", "must not be empty")
                    .hint("omit inferenceService for a retrieve-only engine"));
            }
            if i.context_window_size.is_some_and(|n| n <= 0) {
                return Err(FieldError::new("spec.inferenceService.contextWindowSize", "must be greater than 0"));
            }
        }
        if let Some(r) = self.guardrails.as_ref().and_then(|g| g.config_map_ref.as_ref())
            && r.name.trim().is_empty()
        {
            return Err(FieldError::new("spec.guardrails.configMapRef.name", "must name a ConfigMap")
                .hint("omit configMapRef for the built-in policy"));
        }
        if let Some(s) = &self.storage {
            if s.vector_db.is_some() {
                return Err(FieldError::new(
                    "spec.storage.vectorDB",
                    "external vector databases are not supported: kaito-rag keeps vectors in LMDB",
                )
                .hint("remove storage.vectorDB and give storage.persistentVolume for a durable index"));
            }
            if let Some(pv) = &s.persistent_volume {
                if pv.persistent_volume_claim.trim().is_empty() {
                    return Err(FieldError::new(
                        "spec.storage.persistentVolume.persistentVolumeClaim",
                        "must name a claim",
                    ));
                }
                if pv.mount_path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                    return Err(FieldError::new("spec.storage.persistentVolume.mountPath", "must be an absolute path"));
                }
            }
        }
        Ok(())
    }
}

/// The RAGEngine CRD, with KAITO's webhook rules that CEL can express: v1beta1 stored and served, v1alpha1 listed
/// but not served. The operator serves v1alpha1 once its conversion webhook answers (it sets `served` and the
/// webhook together), so a v1alpha1 write is never stored through the default conversion, which would drop
/// v1alpha1's storage fields.
pub fn ragengine_crd() -> CustomResourceDefinition {
    let mut crd = RAGEngine::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
        let mut v = serde_json::to_value(&*schema).expect("schema serialises");
        let spec = &mut v["properties"]["spec"];
        spec["properties"]["embedding"]["x-kubernetes-validations"] = json!([
            {"rule": "has(self.local) != has(self.remote)", "message": "set exactly one of embedding.local and embedding.remote"}
        ]);
        spec["properties"]["inferenceService"]["properties"]["contextWindowSize"]["minimum"] = json!(1);
        *schema = serde_json::from_value::<JSONSchemaProps>(v).expect("valid schema");
    }
    let mut alpha = crd.spec.versions[0].clone();
    alpha.name = "v1alpha1".into();
    (alpha.served, alpha.storage) = (false, false);
    let schema = alpha.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()).expect("v1beta1 has a schema");
    let beta = serde_json::to_value(&*schema).expect("schema serialises");
    *schema = serde_json::from_value(crate::ragengine_conversion::v1alpha1_schema(&beta)).expect("valid schema");
    crd.spec.versions.push(alpha);
    crd
}

/// The CRD as the YAML committed at [`RAGENGINE_CRD_PATH`].
pub fn ragengine_crd_yaml() -> String {
    format!(
        "# Generated by `kaito crd ragengine` from host/crd; do not edit. A test fails when this file drifts.\n{}",
        serde_yaml::to_string(&ragengine_crd()).expect("CRD serialises")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RAGEngineSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn kaito_examples_parse_and_validate() {
        let s = spec(
            "compute: {instanceType: Standard_NC6s_v3, labelSelector: {matchLabels: {apps: rag}}}\n\
             embedding: {local: {modelID: BAAI/bge-small-en-v1.5}}\n\
             inferenceService: {url: http://workspace-phi/v1/chat/completions, contextWindowSize: 4096}\n\
             storage: {persistentVolume: {persistentVolumeClaim: rag-data}}",
        );
        s.validate().unwrap();
        assert_eq!(s.embedding.local.unwrap().model_id.as_deref(), Some("BAAI/bge-small-en-v1.5"));
        spec("embedding: {remote: {url: http://tei/v1, accessSecret: tei-token}}").validate().unwrap();
    }

    #[test]
    fn bad_specs_name_the_field() {
        for (yaml, field) in [
            ("embedding: {}", "spec.embedding"),
            ("embedding: {local: {modelID: a}, remote: {url: b}}", "spec.embedding"),
            ("embedding: {remote: {url: ''}}", "spec.embedding.remote.url"),
            ("embedding: {local: {}}", "spec.embedding.local"),
            (
                "embedding: {local: {modelID: a}}\ninferenceService: {url: u, contextWindowSize: 0}",
                "spec.inferenceService.contextWindowSize",
            ),
            (
                "embedding: {local: {modelID: a}}\nstorage: {vectorDB: {engine: qdrant, url: http://q}}",
                "spec.storage.vectorDB",
            ),
            (
                "embedding: {local: {modelID: a}}\nguardrails: {enabled: true, configMapRef: {name: ''}}",
                "spec.guardrails.configMapRef.name",
            ),
            (
                "embedding: {local: {modelID: a}}\nstorage: {persistentVolume: {persistentVolumeClaim: c, mountPath: data}}",
                "spec.storage.persistentVolume.mountPath",
            ),
        ] {
            assert_eq!(spec(yaml).validate().unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let crd = ragengine_crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["rag".to_string()]));
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
        assert_eq!(versions, [("v1beta1", true, true), ("v1alpha1", false, false)]);
        crate::crd::assert_committed(RAGENGINE_CRD_PATH, &ragengine_crd_yaml(), "crd ragengine");
    }
}
