//! What every reconcile shares: the client, the plugins, the configuration, metrics and the event recorder.

use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use kaito_crd::Workspace;
use kaito_plugin_host::{ProvisionerMode, Registry};
use kaito_workload::{BYO_PROVISIONER, DEFAULT_IMAGE_REGISTRY, DEFAULT_MAX_NODES, DEFAULT_PROVISIONER};
use kaito_workload::{RenderError, RenderOptions, Rendered, TuningRendered};
use kube::Client;
use kube::ResourceExt;
use kube::runtime::events::{Recorder, Reporter};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operator settings (flags and environment in the binary).
#[derive(Debug, Clone)]
pub struct Config {
    /// Provisioner plugin name: gpu-provisioner, karpenter, byo or any loaded provisioner.
    pub provisioner: String,
    pub image_registry: String,
    pub max_nodes: u32,
    /// Node classes Workspaces may name (KAITO's `--karpenter-node-classes`); `None`: any valid name.
    pub node_classes: Option<kaito_workload::NodeClasses>,
    /// Where configs of models no preset catalogs are read; `None`: offline.
    pub hub: Option<std::sync::Arc<kaito_hub::Hub>>,
    /// How soon to look again while a Workspace is on its way.
    pub poll: Duration,
    /// How often to look at a Ready Workspace without being told.
    pub resync: Duration,
    /// How soon to retry after a plugin failure or a missing BYO node.
    pub retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            provisioner: DEFAULT_PROVISIONER.into(),
            image_registry: DEFAULT_IMAGE_REGISTRY.into(),
            max_nodes: DEFAULT_MAX_NODES,
            node_classes: None,
            hub: None,
            poll: Duration::from_secs(10),
            resync: Duration::from_secs(300),
            retry: Duration::from_secs(60),
        }
    }
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    /// The plugin set; swapped whole by a reload, so a reconcile holds the one it started with.
    plugins: std::sync::RwLock<Arc<Registry>>,
    /// Counts plugin-set swaps; the controllers reconcile everything when it moves.
    pub plugin_generation: tokio::sync::watch::Sender<u64>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// How the configured provisioner makes nodes, fixed at start.
    pub mode: ProvisionerMode,
    /// Plugin calls are CPU-bound: more at once than cores only touches more
    /// pooled instance slots, and each keeps memory resident.
    pub plugin_slots: tokio::sync::Semaphore,
}

impl Context {
    /// A context for `client`; the provisioner's mode is read from its plugin once.
    pub fn new(client: Client, registry: Arc<Registry>, config: Config, metrics: Arc<Metrics>) -> Context {
        let mode = registry
            .provisioner(&config.provisioner)
            .ok()
            .and_then(|p| p.provisioner_info().map(|i| i.mode))
            // A broken plugin still needs its claims cleaned up; only `byo` is known to make none.
            .unwrap_or(if config.provisioner == BYO_PROVISIONER {
                ProvisionerMode::BringYourOwn
            } else {
                ProvisionerMode::NodeClaims
            });
        let reporter = Reporter { controller: "kaito-operator".into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Context {
            client,
            plugins: std::sync::RwLock::new(registry),
            plugin_generation: tokio::sync::watch::Sender::new(0),
            config,
            metrics,
            recorder,
            mode,
            plugin_slots: tokio::sync::Semaphore::new(cores),
        }
    }
}

impl Context {
    /// The current plugin set.
    pub fn registry(&self) -> Arc<Registry> {
        self.plugins.read().expect("the plugin set lock is never poisoned").clone()
    }

    /// Replaces the plugin set; calls in flight finish on the old one. The controllers then reconcile everything.
    pub fn swap_registry(&self, registry: Arc<Registry>) {
        *self.plugins.write().expect("the plugin set lock is never poisoned") = registry;
        self.plugin_generation.send_modify(|g| *g += 1);
    }

    /// The operator's render settings; `nodes` are the selected nodes, read by the bring-your-own provisioner.
    fn render_options(&self, nodes: &[Node]) -> RenderOptions {
        RenderOptions {
            provisioner: Some(self.config.provisioner.clone()),
            nodes: (self.mode == ProvisionerMode::BringYourOwn).then(|| nodes.to_vec()),
            image_registry: self.config.image_registry.clone(),
            max_nodes: self.config.max_nodes,
            node_classes: self.config.node_classes.clone(),
            hub: self.config.hub.clone(),
        }
    }

    /// Renders the tuning Job of `ws` as `kaito render` would, off the async workers like [`Context::render`].
    pub async fn render_tuning(
        &self,
        ws: &Workspace,
        nodes: &[Node],
    ) -> crate::Result<Result<TuningRendered, RenderError>> {
        let opts = self.render_options(nodes);
        let (registry, ws) = (self.registry(), ws.clone());
        let _slot = self.plugin_slots.acquire().await.expect("the semaphore is never closed");
        let started = Instant::now();
        let rendered =
            tokio::task::spawn_blocking(move || kaito_workload::render_tuning(&registry, &ws, &opts)).await?;
        let plugin = rendered
            .as_ref()
            .ok()
            .and_then(|r| r.job.annotations().get(kaito_names::annotations::PRESET_PLUGIN).cloned());
        self.metrics.plugin_call(plugin.as_deref().unwrap_or("none"), started.elapsed());
        Ok(rendered)
    }

    /// Renders `ws` as `kaito render` would with the operator's settings; `nodes` are the selected nodes, read by
    /// the bring-your-own provisioner. The outer error is the worker thread's; the inner one the Workspace's.
    pub async fn render(&self, ws: &Workspace, nodes: &[Node]) -> crate::Result<Result<Rendered, RenderError>> {
        let opts = self.render_options(nodes);
        let registry = self.registry();
        let (for_render, ws) = (registry.clone(), ws.clone());
        let _slot = self.plugin_slots.acquire().await.expect("the semaphore is never closed");
        let started = Instant::now();
        // Plugin calls are synchronous CPU work under an epoch deadline: keep them off the async workers.
        let mut rendered = tokio::task::spawn_blocking(move || kaito_workload::render(&for_render, &ws, &opts)).await?;
        let plugin = match &rendered {
            Ok(r) => r.objects.statefulset.annotations().get(kaito_names::annotations::PRESET_PLUGIN).cloned(),
            Err(_) => None,
        };
        // Which plugin build rendered it, on the StatefulSet (not the pod template: a new build that renders the same
        // pods rolls nothing). `kaito render` leaves it out, so ports of a preset still render the same bytes.
        if let (Ok(r), Some(name)) = (&mut rendered, &plugin)
            && let Some(p) = registry.plugins.iter().find(|p| p.name() == name.as_str())
        {
            r.objects
                .statefulset
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(kaito_names::annotations::PRESET_PLUGIN_DIGEST.into(), format!("sha256:{}", p.digest()));
        }
        self.metrics.plugin_call(plugin.as_deref().unwrap_or("none"), started.elapsed());
        Ok(rendered)
    }
}
