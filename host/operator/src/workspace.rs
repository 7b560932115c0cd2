//! Reconciling one Workspace: the logic lives in [`WorkspaceExt`], methods on
//! the CRD type; `reconcile` and `error_policy` in [`crate::controller`] stay thin.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::status::{self, Observed, types};
use crate::{finalizer, revision};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kaito_crd::{V1BETA1, WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL, Workspace, WorkspaceStatus};
use kaito_plugin_host::ProvisionerMode;
use kaito_workload::{RenderError, RenderOptions, Rendered, render};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::time::Instant;

/// Finalizer the operator puts on every Workspace, as KAITO names it.
pub const FINALIZER: &str = "workspace.finalizer.kaito.sh";
/// Field manager of every write.
pub const FIELD_MANAGER: &str = "kaito-operator";

/// Condition reasons that mean "still on its way", reported as Normal events, not Warnings.
const WAITING_REASONS: &[&str] = &[
    "NodeClaimsMissing",
    "NodeClaimNotLaunched",
    "NodeClaimNotRegistered",
    "NodeClaimNotInitialized",
    "NodeClaimNotReady",
    "NodesNotReady",
    "WaitingForResources",
    "StatefulSetMissing",
    "InferenceNotReady",
    "RolloutInProgress",
];

/// The Karpenter kinds provisioner plugins plan.
pub fn node_resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "NodePool" => "nodepools",
        _ => "nodeclaims",
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("karpenter.sh", "v1", kind), plural)
}

/// The kind of node object a provisioner mode creates, if any.
pub fn node_kind(mode: ProvisionerMode) -> Option<&'static str> {
    match mode {
        ProvisionerMode::NodeClaims => Some("NodeClaim"),
        ProvisionerMode::NodePool => Some("NodePool"),
        ProvisionerMode::BringYourOwn => None,
    }
}

/// Deletes the node objects (NodeClaims or NodePools) matching `selector`;
/// true while some still exist (Karpenter removes them after draining).
pub(crate) async fn delete_node_objects(ctx: &Context, selector: &str) -> Result<bool> {
    let Some(kind) = node_kind(ctx.mode) else { return Ok(false) };
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &node_resource(kind));
    let left = match api.list(&ListParams::default().labels(selector)).await {
        Ok(list) => list.items,
        // No such CRD in this cluster: there can be no node objects to wait for.
        Err(kube::Error::Api(s)) if s.code == 404 => vec![],
        Err(e) => return Err(e.into()),
    };
    for o in left.iter().filter(|o| o.metadata.deletion_timestamp.is_none()) {
        match api.delete(&o.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(!left.is_empty())
}

/// Server-side applies the planned NodePools, or creates the planned
/// NodeClaims missing among those labelled `selector` (claims are created,
/// never re-applied: an existing one is left to Karpenter). Returns the
/// claims that exist afterwards and the names of those just created.
pub(crate) async fn create_node_objects(
    ctx: &Context,
    planned: &[serde_json::Value],
    selector: &str,
) -> Result<(Vec<serde_json::Value>, Vec<String>)> {
    let Some(kind) = node_kind(ctx.mode) else { return Ok((vec![], vec![])) };
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &node_resource(kind));
    if ctx.mode == ProvisionerMode::NodePool {
        for pool in planned {
            let name = pool["metadata"]["name"].as_str().ok_or(Error::MissingField("NodePool name"))?;
            api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(pool)).await?;
        }
        return Ok((vec![], vec![]));
    }
    let existing = api.list(&ListParams::default().labels(selector)).await?.items;
    let names: Vec<String> = existing.iter().map(|o| o.name_any()).collect();
    let mut claims = existing.iter().map(|o| serialize("NodeClaim", o)).collect::<Result<Vec<_>>>()?;
    let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let mut created = Vec::new();
    for planned in revision::missing(planned, &names) {
        let object: DynamicObject =
            serde_json::from_value(planned.clone()).map_err(|source| Error::Serialize { what: "NodeClaim", source })?;
        let claim = match api.create(&post, &object).await {
            Ok(c) => c,
            // Created by an earlier reconcile whose list we did not see yet.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        };
        created.push(claim.name_any());
        claims.push(serialize("NodeClaim", &claim)?);
    }
    Ok((claims, created))
}

fn selector_string<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    labels.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub(crate) fn serialize<T: serde::Serialize>(what: &'static str, value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|source| Error::Serialize { what, source })
}

/// Keep a condition's transition time when its status did not change.
fn carry_transition_times(new: &mut [Condition], old: &[Condition]) {
    for c in new {
        if let Some(prev) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
}

/// Reconcile logic on the Workspace type.
pub trait WorkspaceExt {
    /// Bring the cluster to what the Workspace asks for and report how far it got.
    fn reconcile(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;
    /// Remove what the Workspace made outside its namespace (NodeClaims, NodePools), then the finalizer.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;
}

impl WorkspaceExt for Workspace {
    async fn reconcile(&self, ctx: &Context) -> Result<Action> {
        if self.metadata.deletion_timestamp.is_some() {
            return self.cleanup(ctx).await;
        }
        let api = self.api(ctx);
        if !self.finalizers().iter().any(|f| f == FINALIZER) {
            let patch = finalizer::add(self.metadata.finalizers.as_deref(), FINALIZER);
            api.patch(self.name(), &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        }
        if let Err(e) = self.validate() {
            let message = e.to_string();
            self.report(ctx, Observed { plan_error: Some(("InvalidWorkspace", &message)), ..Default::default() }, None)
                .await?;
            return Ok(Action::await_change());
        }
        let nodes = self.selected_nodes(ctx).await?;
        let rendered = match self.render(ctx, &nodes).await? {
            Ok(r) => r,
            Err(e) => {
                let message = e.to_string();
                self.report(ctx, Observed { plan_error: Some((e.reason(), &message)), ..Default::default() }, None)
                    .await?;
                // A fixed spec brings a new generation; a missing BYO node or a plugin may recover on its own.
                return Ok(match e {
                    RenderError::Invalid(_) if ctx.mode != ProvisionerMode::BringYourOwn => Action::await_change(),
                    _ => Action::requeue(ctx.config.retry),
                });
            }
        };
        let target = self.target_node_count(&rendered);
        let claims = self.provision(ctx, &rendered).await?;
        let uses_claims = ctx.mode == ProvisionerMode::NodeClaims;
        let resource_ready = status::resource_verdict(&claims, &nodes, target, uses_claims).ready;
        let (statefulset, pods) =
            if resource_ready { self.apply_workload(ctx, &rendered).await? } else { (None, vec![]) };
        let observed = Observed {
            target_nodes: target,
            claims: &claims,
            nodes: &nodes,
            statefulset: statefulset.as_ref(),
            pods: &pods,
            plan_error: None,
            count_note: rendered.count_note.as_deref(),
        };
        let state = self.report(ctx, observed, Some(target)).await?;
        Ok(match state {
            "Ready" => Action::requeue(ctx.config.resync),
            _ => Action::requeue(ctx.config.poll),
        })
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        let Some(index) = self.finalizers().iter().position(|f| f == FINALIZER) else {
            return Ok(Action::await_change());
        };
        let deleting = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == types::WORKSPACE_DELETING));
        if !deleting {
            let mut conditions = self.status.clone().unwrap_or_default().conditions.unwrap_or_default();
            conditions.push(Condition {
                type_: types::WORKSPACE_DELETING.into(),
                status: "True".into(),
                reason: "Deleting".into(),
                message: "removing the Workspace's node objects before the Workspace".into(),
                observed_generation: self.metadata.generation,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            let status = WorkspaceStatus {
                conditions: Some(conditions),
                state: Some("Deleting".into()),
                ..self.status.clone().unwrap_or_default()
            };
            self.patch_status(ctx, &status).await?;
            self.event(ctx, EventType::Normal, "WorkspaceDeleting", "deleting node objects".into()).await;
        }
        if delete_node_objects(ctx, &self.owned_node_selector()).await? {
            return Ok(Action::requeue(ctx.config.poll));
        }
        let patch = finalizer::remove(index, FINALIZER);
        self.api(ctx).patch(self.name(), &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        ctx.metrics.set_state(&self.key(), None);
        Ok(Action::await_change())
    }
}

/// Steps of a reconcile, private to this module.
trait Steps {
    fn api(&self, ctx: &Context) -> Api<Workspace>;
    fn key(&self) -> String;
    fn owned_node_selector(&self) -> String;
    fn target_node_count(&self, rendered: &Rendered) -> u32;
    async fn selected_nodes(&self, ctx: &Context) -> Result<Vec<Node>>;
    async fn render(&self, ctx: &Context, nodes: &[Node]) -> Result<Result<Rendered, RenderError>>;
    async fn provision(&self, ctx: &Context, rendered: &Rendered) -> Result<Vec<serde_json::Value>>;
    async fn apply_workload(&self, ctx: &Context, rendered: &Rendered) -> Result<(Option<StatefulSet>, Vec<Pod>)>;
    async fn report(&self, ctx: &Context, observed: Observed<'_>, target: Option<u32>) -> Result<&'static str>;
    async fn patch_status(&self, ctx: &Context, status: &WorkspaceStatus) -> Result<()>;
    async fn event(&self, ctx: &Context, type_: EventType, reason: &str, note: String);
}

impl Steps for Workspace {
    fn api(&self, ctx: &Context) -> Api<Workspace> {
        Api::namespaced(ctx.client.clone(), self.namespace())
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    fn owned_node_selector(&self) -> String {
        format!("{WORKSPACE_LABEL}={},{WORKSPACE_NAMESPACE_LABEL}={}", self.name(), self.namespace())
    }

    fn target_node_count(&self, rendered: &Rendered) -> u32 {
        // Written once: a later plugin upgrade does not move a running Workspace's target.
        let stored = self.status.as_ref().and_then(|s| s.target_node_count).filter(|n| *n > 0);
        let planned =
            rendered.plan.as_ref().map(|p| p.resources.node_count).unwrap_or(self.resource.count.unwrap_or(1) as u32);
        stored.map(|n| n as u32).unwrap_or(planned.max(1))
    }

    async fn selected_nodes(&self, ctx: &Context) -> Result<Vec<Node>> {
        let labels = self.match_labels();
        if labels.is_empty() {
            return Ok(vec![]);
        }
        let api: Api<Node> = Api::all(ctx.client.clone());
        Ok(api.list(&ListParams::default().labels(&selector_string(&labels))).await?.items)
    }

    async fn render(&self, ctx: &Context, nodes: &[Node]) -> Result<Result<Rendered, RenderError>> {
        let opts = RenderOptions {
            provisioner: Some(ctx.config.provisioner.clone()),
            nodes: (ctx.mode == ProvisionerMode::BringYourOwn).then(|| nodes.to_vec()),
            image_registry: ctx.config.image_registry.clone(),
            max_nodes: ctx.config.max_nodes,
            node_classes: ctx.config.node_classes.clone(),
            hub: ctx.config.hub.clone(),
        };
        let (registry, ws) = (ctx.registry.clone(), self.clone());
        let _slot = ctx.plugin_slots.acquire().await.expect("the semaphore is never closed");
        let started = Instant::now();
        // Plugin calls are synchronous CPU work under an epoch deadline: keep them off the async workers.
        let rendered = tokio::task::spawn_blocking(move || render(&registry, &ws, &opts)).await?;
        let plugin = match &rendered {
            Ok(r) => r.objects.statefulset.annotations().get("kaito.sh/preset-plugin").cloned(),
            Err(_) => None,
        };
        ctx.metrics.plugin_call(plugin.as_deref().unwrap_or("none"), started.elapsed());
        Ok(rendered)
    }

    async fn provision(&self, ctx: &Context, rendered: &Rendered) -> Result<Vec<serde_json::Value>> {
        let (claims, created) = create_node_objects(ctx, &rendered.objects.nodes, &self.owned_node_selector()).await?;
        for name in created {
            self.event(ctx, EventType::Normal, "NodeClaimCreated", format!("created NodeClaim {name}")).await;
        }
        Ok(claims)
    }

    async fn apply_workload(&self, ctx: &Context, rendered: &Rendered) -> Result<(Option<StatefulSet>, Vec<Pod>)> {
        let ns = self.namespace();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
        for svc in [&rendered.objects.service, &rendered.objects.headless] {
            services.patch(&svc.name_any(), &params, &Patch::Apply(svc)).await?;
        }
        let sts = &rendered.objects.statefulset;
        let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
        let applied = statefulsets.patch(&sts.name_any(), &params, &Patch::Apply(sts)).await?;
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let selector = format!("{WORKSPACE_LABEL}={}", self.name());
        let pods = pods.list(&ListParams::default().labels(&selector)).await?.items;
        Ok((Some(applied), pods))
    }

    async fn report(&self, ctx: &Context, observed: Observed<'_>, target: Option<u32>) -> Result<&'static str> {
        let old = self.status.clone().unwrap_or_default();
        let old_conditions = old.conditions.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let (mut conditions, state) =
            status::evaluate(&observed, ctx.mode == ProvisionerMode::NodeClaims, self.metadata.generation, &now);
        carry_transition_times(&mut conditions, &old_conditions);
        let mut worker_nodes: Vec<String> =
            observed.nodes.iter().filter(|n| status::node_ready_with_gpus(n)).map(|n| n.name_any()).collect();
        worker_nodes.sort();
        let status = WorkspaceStatus {
            worker_nodes: Some(worker_nodes).filter(|w| !w.is_empty()).or(old.worker_nodes.clone()),
            state: Some(state.into()),
            conditions: Some(conditions),
            target_node_count: target.map(|t| t as i32).or(old.target_node_count),
        };
        ctx.metrics.set_state(&self.key(), Some(state));
        if status == old {
            return Ok(state);
        }
        self.patch_status(ctx, &status).await?;
        let headline = |cs: &[Condition]| {
            cs.iter().find(|c| c.type_ == types::WORKSPACE_SUCCEEDED).map(|c| (c.status.clone(), c.reason.clone()))
        };
        let now_headline = headline(status.conditions.as_deref().unwrap_or_default());
        if now_headline != headline(&old_conditions)
            && let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == types::WORKSPACE_SUCCEEDED)
        {
            let type_ = if c.status == "True" || WAITING_REASONS.contains(&c.reason.as_str()) {
                EventType::Normal
            } else {
                EventType::Warning
            };
            self.event(ctx, type_, &c.reason, c.message.clone()).await;
        }
        Ok(state)
    }

    async fn patch_status(&self, ctx: &Context, status: &WorkspaceStatus) -> Result<()> {
        let body = json!({"apiVersion": V1BETA1, "kind": "Workspace", "status": serialize("status", status)?});
        self.api(ctx)
            .patch_status(self.name(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await?;
        Ok(())
    }

    async fn event(&self, ctx: &Context, type_: EventType, reason: &str, note: String) {
        publish_event(ctx, self.object_ref(&()), type_, reason, note).await;
    }
}

/// Publishes a Reconcile event about `object`. An event that cannot be
/// written must not fail the reconcile that produced it: it is logged.
pub(crate) async fn publish_event(
    ctx: &Context,
    object: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &object).await {
        tracing::warn!(kind = ?object.kind, name = ?object.name, reason, error = %e, "could not publish event");
    }
}
