//! From a Workspace to Kubernetes objects, through the plugins.
//!
//! [`render`] is the one code path shared by `kaito render` and the
//! operator: resolve the preset, find the GPU shape (instance-type table or
//! existing nodes), ask the preset plugin for a plan and the provisioner
//! plugin for nodes, and build the NodeClaims/NodePool, Services and
//! StatefulSet from those plans. [`render_ragengine`] does the same for a
//! RAGEngine (NodeClaims, Deployment, Service).

mod checks;
mod nodes;
mod objects;
pub mod plugin_args;
pub mod ragengine;
pub mod tuning;

pub use checks::NodeClasses;
pub use nodes::{node_is_ready, parse_nodes};
pub use objects::{Objects, quantity};
pub use ragengine::{RagObjects, render_ragengine};
pub use tuning::{TuningRendered, render_tuning};

use k8s_openapi::api::core::v1::Node;
use kaito_crd::{FieldError, RUNTIME_ANNOTATION, Workspace};
use kaito_plugin_host::{
    Adapter, CallError, GpuShape, KeyValue, ModelFacts, ModelInfo, NodePlan, NodeRequest, PlanRequest, Plugin,
    PresetPlan, ProvisionerMode, Registry, ResolveError,
};
use std::sync::Arc;

/// Provisioner used when nodes are auto-provisioned and none is named.
pub const DEFAULT_PROVISIONER: &str = "gpu-provisioner";
/// Provisioner used for bring-your-own nodes.
pub const BYO_PROVISIONER: &str = "byo";
/// Registry prefix for our runtime images unless configured.
pub const DEFAULT_IMAGE_REGISTRY: &str = "ghcr.io/kaito-rs";
/// Most nodes one Workspace may be given unless configured.
pub const DEFAULT_MAX_NODES: u32 = 16;

/// Knobs of a render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Provisioner plugin name; `None` picks `byo` when nodes are given, else gpu-provisioner.
    pub provisioner: Option<String>,
    /// Existing nodes (bring-your-own).
    pub nodes: Option<Vec<Node>>,
    pub image_registry: String,
    pub max_nodes: u32,
    /// Node classes `kaito.sh/node-class-name` may name; `None` passes any valid name to the provisioner.
    pub node_classes: Option<NodeClasses>,
    /// Where configs of models no preset catalogs are read; `None`: offline, such models are refused.
    pub hub: Option<Arc<kaito_hub::Hub>>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            provisioner: None,
            nodes: None,
            image_registry: DEFAULT_IMAGE_REGISTRY.into(),
            max_nodes: DEFAULT_MAX_NODES,
            node_classes: None,
            hub: None,
        }
    }
}

/// Why a Workspace could not be rendered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Plugin(#[from] CallError),
}

impl RenderError {
    /// Short reason, usable as a condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            // What the user can fix in the Workspace is one reason, as KAITO's webhook refusals are one outcome; the
            // message names the field. Faults of the plugin itself keep their own reasons.
            RenderError::Invalid(_)
            | RenderError::Resolve(ResolveError::UnknownModel { .. })
            | RenderError::Plugin(CallError::Plugin { .. } | CallError::InvalidInput { .. }) => "InvalidWorkspace",
            RenderError::Resolve(e) => e.reason(),
            RenderError::Plugin(e) => e.reason(),
        }
    }
}

/// Everything a render decided.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub objects: Objects,
    /// Decisions the user should hear about (runtime fallbacks, unused GPUs).
    pub notes: Vec<String>,
    /// Set when the Workspace's `resource.count` differs from the estimated node count (also in `notes`).
    pub count_note: Option<String>,
    /// The preset's plan (absent for template Workspaces).
    pub plan: Option<PresetPlan>,
    pub node_plan: NodePlan,
    pub shape: Option<GpuShape>,
}

fn kvs<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<KeyValue> {
    pairs.into_iter().map(|(k, v)| kaito_plugin_host::wit::kv(k, v)).collect()
}

fn provisioner_for(registry: &Registry, opts: &RenderOptions) -> Result<Arc<Plugin>, RenderError> {
    let name = opts
        .provisioner
        .clone()
        .unwrap_or_else(|| if opts.nodes.is_some() { BYO_PROVISIONER.into() } else { DEFAULT_PROVISIONER.into() });
    Ok(registry.provisioner(&name)?)
}

/// The provisioner's entry for `wanted`, or an error at `field` naming the closest ones it knows.
pub(crate) fn known_instance_type<'p>(
    provisioner: &'p Plugin,
    field: &str,
    wanted: &str,
) -> Result<&'p kaito_plugin_host::InstanceType, FieldError> {
    provisioner.instance_type(wanted).ok_or_else(|| {
        let close = kaito_plugin_host::nearest(wanted, provisioner.instance_types().iter().map(|t| t.name.clone()), 3);
        FieldError::new(field, format!("{wanted:?} is not an instance type the {} plugin knows", provisioner.name()))
            .hint(format!("closest: {}", close.join(", ")))
    })
}

/// GPU shape for the Workspace: from the provisioner's instance-type table,
/// or from the labels of the existing nodes it selects.
fn gpu_shape(
    provisioner: &Plugin,
    mode: ProvisionerMode,
    ws: &Workspace,
    opts: &RenderOptions,
) -> Result<GpuShape, RenderError> {
    if mode == ProvisionerMode::BringYourOwn {
        return nodes::byo_shape(provisioner, ws, opts.nodes.as_deref().unwrap_or_default());
    }
    let wanted = ws.resource.instance_type.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
        FieldError::new("resource.instanceType", "is required when the operator provisions nodes").hint(format!(
            "set resource.instanceType to one of {}'s instance types, or use bring-your-own nodes",
            provisioner.name()
        ))
    })?;
    let t = known_instance_type(provisioner, "resource.instanceType", wanted)?;
    Ok(GpuShape {
        gpu_model: t.gpu_model.clone(),
        gpus_per_node: t.gpu_count,
        gpu_memory_bytes: t.node_gpu_memory_bytes / t.gpu_count as u64,
        max_nodes: opts.max_nodes.max(ws.resource.count.unwrap_or(1).max(1) as u32),
        nvme: t.nvme,
    })
}

/// The preset plugin's request for this Workspace.
pub fn plan_request(ws: &Workspace, model: &str, image_registry: &str) -> PlanRequest {
    let inference = ws.inference.clone().unwrap_or_default();
    let adapters = inference
        .adapters
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            let source = a.source.unwrap_or_default();
            Adapter { name: source.name.unwrap_or_default(), image: source.image, strength: a.strength }
        })
        .collect();
    PlanRequest {
        workspace: ws.name().into(),
        namespace: ws.namespace().into(),
        model: model.into(),
        runtime: ws.annotation(RUNTIME_ANNOTATION).map(str::to_string),
        model_access_secret: ws
            .preset()
            .and_then(|p| p.preset_options.as_ref())
            .and_then(|o| o.model_access_secret.clone()),
        adapters,
        max_model_len: None,
        min_nodes: ws.resource.count.unwrap_or(1).max(1) as u32,
        image_registry: image_registry.into(),
        config_map: inference.config,
        annotations: kvs(ws.metadata.annotations.iter().flatten()),
        model_facts: None,
    }
}

/// What a preset name resolved to.
struct Resolved {
    /// Preset plugins to ask, in order.
    plugins: Vec<Arc<Plugin>>,
    model: ModelInfo,
    /// Set for a model no catalog lists, read from the hub.
    facts: Option<ModelFacts>,
}

/// The plugins to ask, in order, and the model for a preset name: a catalog entry's plugin, or, for a Hugging Face id
/// no catalog lists, the facts read from the hub and the plugins by preference for that architecture.
fn resolve_model(registry: &Registry, name: &str, hub: Option<&kaito_hub::Hub>) -> Result<Resolved, RenderError> {
    let unknown = match registry.find_model(name) {
        Ok((plugin, model)) => return Ok(Resolved { plugins: vec![plugin], model, facts: None }),
        Err(e @ ResolveError::UnknownModel { .. }) if name.contains('/') => e,
        Err(e) => return Err(e.into()),
    };
    let field = "inference.preset.name";
    let Some(hub) = hub else {
        return Err(FieldError::new(field, format!("{unknown}; as a Hugging Face id it could be sized from its config, but the hub is not read here (offline)"))
            .hint("use a catalog model, or give the operator hub access (unset HF_HUB_OFFLINE)")
            .into());
    };
    let facts = hub.model_facts(name.trim()).map_err(|e| {
        FieldError::new(field, format!("{name:?} is in no preset catalog, and its config could not be read: {e}"))
    })?;
    let plugins = registry.presets_for_architecture(&facts.architecture);
    if plugins.is_empty() {
        return Err(unknown.into());
    }
    let model = ModelInfo {
        name: facts.hf_id.to_ascii_lowercase(),
        aliases: Vec::new(),
        hf_id: facts.hf_id.clone(),
        family: "hub".into(),
        architecture: facts.architecture.clone(),
        weights_bytes: facts.weights_bytes,
        disk_bytes: facts.weights_bytes + (80 << 30),
        context_length: facts.context_length,
        bytes_per_token: facts.bytes_per_token,
        license: String::new(),
        runtimes: vec!["vllm".into()],
        chat_template: None,
        tool_call_parser: None,
        reasoning_parser: None,
        supports_tuning: false,
        supports_multi_node: true,
        supports_lora: false,
    };
    let facts = ModelFacts {
        hf_id: facts.hf_id,
        architecture: facts.architecture,
        weights_bytes: facts.weights_bytes,
        context_length: facts.context_length,
        bytes_per_token: facts.bytes_per_token,
        quantization: facts.quantization,
    };
    Ok(Resolved { plugins, model, facts: Some(facts) })
}

/// Render every object the operator would create for `ws`.
pub fn render(registry: &Registry, ws: &Workspace, opts: &RenderOptions) -> Result<Rendered, RenderError> {
    ws.validate()?;
    let provisioner = provisioner_for(registry, opts)?;
    let mode = provisioner.provisioner_info().map(|i| i.mode).unwrap_or(ProvisionerMode::BringYourOwn);
    if mode == ProvisionerMode::BringYourOwn && ws.resource.instance_type.as_deref().is_some_and(|t| !t.is_empty()) {
        // As KAITO's webhook with node auto-provisioning off: the nodes exist, their labels say what they are.
        return Err(FieldError::new(
            "resource.instanceType",
            "must be empty with bring-your-own nodes (provisioner byo)",
        )
        .hint("remove resource.instanceType; the GPU shape is read from the selected nodes' nvidia.com/gpu.* labels")
        .into());
    }
    let match_labels = ws.match_labels();
    let annotations = checks::node_annotations(ws, opts.node_classes.as_ref())?;
    let node_request = |node_count: u32, disk_bytes: u64| NodeRequest {
        owner: kaito_plugin_host::wit::workspace_owner(ws.name(), ws.namespace()),
        instance_type: ws.resource.instance_type.clone().unwrap_or_default(),
        node_count,
        match_labels: kvs(&match_labels),
        disk_bytes,
        annotations: annotations.clone(),
    };
    if let Some(preset) = ws.preset() {
        let Resolved { plugins, model, facts } = resolve_model(registry, &preset.name, opts.hub.as_deref())?;
        let shape = gpu_shape(&provisioner, mode, ws, opts)?;
        if mode != ProvisionerMode::BringYourOwn
            && let Some(t) = ws.resource.instance_type.as_deref().and_then(|t| provisioner.instance_type(t))
        {
            checks::v1alpha1_gpu_memory(ws, &model, t)?;
        }
        let mut request = plan_request(ws, &model.name, &opts.image_registry);
        if let Some(facts) = facts {
            request.model = facts.hf_id.clone();
            request.model_facts = Some(facts);
        }
        // A plugin that plans no model from facts (one not built on the SDK) says unknown-model: ask the next.
        let mut asked = plugins.iter().peekable();
        let (plugin, plan) = loop {
            let plugin = asked.next().expect("resolve_model returns at least one plugin");
            match plugin.plan(&request, &shape) {
                Err(CallError::Plugin { error, .. })
                    if error.kind == kaito_plugin_host::ErrorKind::UnknownModel && asked.peek().is_some() => {}
                result => break (plugin, result?),
            }
        };
        let node_plan = provisioner.plan_nodes(&node_request(plan.resources.node_count, plan.resources.disk_bytes))?;
        let objects = Objects::for_preset(ws, &model, plugin, &plan, &node_plan, &opts.image_registry);
        let nodes = plan.resources.node_count;
        // KAITO's estimator decides the node count; the deprecated count is neither a floor nor a cap.
        let count_note = ws.resource.count.filter(|c| *c > 1 && *c as u32 != nodes).map(|count| {
            format!(
                "resource.count {count} is not used: the estimator sizes {} to {nodes} node(s), as KAITO does",
                model.name
            )
        });
        let notes = plan.notes.iter().cloned().chain(count_note.clone()).collect();
        Ok(Rendered { objects, notes, count_note, plan: Some(plan), node_plan, shape: Some(shape) })
    } else {
        let template = ws.inference.as_ref().and_then(|i| i.template.clone()).unwrap_or_default();
        let count = ws.resource.count.unwrap_or(1).max(1) as u32;
        let node_plan = provisioner.plan_nodes(&node_request(count, 0))?;
        let objects = Objects::for_template(ws, template, count, &node_plan)?;
        Ok(Rendered { objects, notes: Vec::new(), count_note: None, plan: None, node_plan, shape: None })
    }
}

/// NodeClaims or NodePools of a provisioner's plan, as Kubernetes objects.
pub fn node_documents(plan: &NodePlan) -> Vec<serde_json::Value> {
    objects::node_objects(plan)
}

/// Multi-document YAML of `docs`, each introduced by `---`.
pub fn to_yaml(docs: &[serde_json::Value]) -> String {
    docs.iter()
        .map(|d| {
            let d = kaito_crd::sorted_keys(d.clone());
            format!("---\n{}", serde_yaml::to_string(&d).expect("JSON values always serialise"))
        })
        .collect()
}
