//! The Workspace as an [`Owner`]: render through the same [`kaito_workload::render`] as `kaito render`, create the
//! missing node objects, apply the workload once nodes are Ready, and report status from what was observed
//! ([`crate::status`]).

use crate::context::Context;
use crate::controller::{self, Owner};
use crate::error::{Error, Result};
use crate::nodes::{self, create_node_objects, delete_node_objects, owned_selector, selected_nodes};
use crate::status::{self, Observed, types};
use crate::verdict;
use crate::writes::{self, apply, publish_event};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kaito_crd::{WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL, Workspace, WorkspaceStatus};
use kaito_plugin_host::ProvisionerMode;
use kaito_workload::{RenderError, Rendered};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;

/// Finalizer the operator puts on every Workspace, as KAITO names it.
pub const FINALIZER: &str = "workspace.finalizer.kaito.sh";

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
    "TuningJobPending",
    "TuningJobRunning",
];

impl Owner for Workspace {
    const FINALIZER: &'static str = FINALIZER;
    const CRD_SOURCE: &'static str = "charts/kaito-workspace/crds/";
    const DELETING: &'static str = types::WORKSPACE_DELETING;

    fn conditions(&self) -> Vec<Condition> {
        self.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
    }

    fn deleting_status(&self, conditions: Vec<Condition>) -> impl serde::Serialize + Send {
        WorkspaceStatus {
            conditions: Some(conditions),
            state: Some("Deleting".into()),
            ..self.status.clone().unwrap_or_default()
        }
    }

    async fn apply(&self, ctx: &Context) -> Result<Action> {
        if let Err(e) = self.validate() {
            self.report_refusal(ctx, "InvalidWorkspace", &e.to_string()).await?;
            return Ok(Action::await_change());
        }
        if self.tuning.is_some() {
            return self.apply_tuning(ctx).await;
        }
        let nodes = selected_nodes(ctx, &self.match_labels()).await?;
        let rendered = match ctx.render(self, &nodes).await? {
            Ok(r) => r,
            Err(e) => return self.render_failed(ctx, e).await,
        };
        let target = self.target_node_count(&rendered);
        let claims = self.provision(ctx, &rendered.objects.nodes).await?;
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
            count_note: rendered.count_note.as_deref(),
            ..Default::default()
        };
        let state = self.report(ctx, observed, Some(target)).await?;
        Ok(controller::next_look(ctx, state == "Ready"))
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        if controller::mark_deleting(ctx, self, "removing the Workspace's node objects before the Workspace").await? {
            publish_event(ctx, self, EventType::Normal, "WorkspaceDeleting", "deleting node objects".into()).await;
        }
        if delete_node_objects(ctx, &self.owned_node_selector()).await? {
            return Err(Error::Waiting("the Workspace's node objects are being removed".into()));
        }
        ctx.metrics.set_state(&self.key(), None);
        Ok(Action::await_change())
    }

    fn watches(controller: Controller<Self>, ctx: &Context) -> Controller<Self> {
        let client = ctx.client.clone();
        let owned = || watcher::Config::default().labels(WORKSPACE_LABEL);
        let controller = controller
            .owns(Api::<StatefulSet>::all(client.clone()), owned())
            .owns(Api::<Job>::all(client.clone()), owned())
            .owns(Api::<Service>::all(client), owned());
        nodes::watch_node_objects(controller, ctx, WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL)
    }
}

/// Steps of a reconcile, private to this module.
trait Steps {
    fn key(&self) -> String;
    fn owned_node_selector(&self) -> String;
    fn target_node_count(&self, rendered: &Rendered) -> u32;
    async fn provision(&self, ctx: &Context, nodes: &[serde_json::Value]) -> Result<Vec<serde_json::Value>>;
    async fn apply_tuning(&self, ctx: &Context) -> Result<Action>;
    async fn render_failed(&self, ctx: &Context, e: RenderError) -> Result<Action>;
    async fn report_refusal(&self, ctx: &Context, reason: &str, message: &str) -> Result<()>;
    async fn pods(&self, ctx: &Context) -> Result<Vec<Pod>>;
    async fn apply_job(&self, ctx: &Context, job: &Job, resource_ready: bool) -> Result<Option<Job>>;
    async fn apply_workload(&self, ctx: &Context, rendered: &Rendered) -> Result<(Option<StatefulSet>, Vec<Pod>)>;
    async fn report(&self, ctx: &Context, observed: Observed<'_>, target: Option<u32>) -> Result<&'static str>;
}

impl Steps for Workspace {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    fn owned_node_selector(&self) -> String {
        owned_selector(WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL, self.name(), self.namespace())
    }

    fn target_node_count(&self, rendered: &Rendered) -> u32 {
        // Written once: a later plugin upgrade does not move a running Workspace's target.
        let stored = self.status.as_ref().and_then(|s| s.target_node_count).filter(|n| *n > 0);
        let planned =
            rendered.plan.as_ref().map(|p| p.resources.node_count).unwrap_or(self.resource.count.unwrap_or(1) as u32);
        stored.map(|n| n as u32).unwrap_or(planned.max(1))
    }

    async fn provision(&self, ctx: &Context, nodes: &[serde_json::Value]) -> Result<Vec<serde_json::Value>> {
        let (claims, created) = create_node_objects(ctx, nodes, &self.owned_node_selector()).await?;
        for name in created {
            publish_event(ctx, self, EventType::Normal, "NodeClaimCreated", format!("created NodeClaim {name}")).await;
        }
        Ok(claims)
    }

    /// A render that failed, as the status's reason; a fixed spec brings a new generation, while a missing BYO node or
    /// a plugin may recover on its own.
    async fn render_failed(&self, ctx: &Context, e: RenderError) -> Result<Action> {
        self.report_refusal(ctx, e.reason(), &e.to_string()).await?;
        Ok(match e {
            RenderError::Invalid(_) if ctx.mode != ProvisionerMode::BringYourOwn => Action::await_change(),
            _ => Action::requeue(ctx.config.retry),
        })
    }

    /// Every condition says why the Workspace cannot be made (the workload's condition as its kind names it).
    async fn report_refusal(&self, ctx: &Context, reason: &str, message: &str) -> Result<()> {
        let observed =
            Observed { plan_error: Some((reason, message)), tuning: self.tuning.is_some(), ..Default::default() };
        self.report(ctx, observed, None).await.map(drop)
    }

    /// The Workspace's pods (the StatefulSet's, or the tuning Job's), by the label both carry.
    async fn pods(&self, ctx: &Context) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), self.namespace());
        let selector = format!("{WORKSPACE_LABEL}={}", self.name());
        Ok(pods.list(&ListParams::default().labels(&selector)).await?.items)
    }

    /// A tuning Workspace: its node as for inference, then its Job, and status from the Job (KAITO's applyTuning).
    async fn apply_tuning(&self, ctx: &Context) -> Result<Action> {
        let nodes = selected_nodes(ctx, &self.match_labels()).await?;
        let rendered = match ctx.render_tuning(self, &nodes).await? {
            Ok(r) => r,
            Err(e) => return self.render_failed(ctx, e).await,
        };
        let claims = self.provision(ctx, &rendered.nodes).await?;
        let uses_claims = ctx.mode == ProvisionerMode::NodeClaims;
        let resource_ready = status::resource_verdict(&claims, &nodes, 1, uses_claims).ready;
        let job = self.apply_job(ctx, &rendered.job, resource_ready).await?;
        let pods = self.pods(ctx).await?;
        let observed = Observed {
            target_nodes: 1,
            claims: &claims,
            nodes: &nodes,
            job: job.as_ref(),
            tuning: true,
            pods: &pods,
            ..Default::default()
        };
        let state = self.report(ctx, observed, Some(1)).await?;
        // A finished Job changes no more; the Job's own events wake a running one.
        Ok(controller::next_look(ctx, matches!(state, "Succeeded" | "Failed")))
    }

    /// The Workspace's Job at this revision: made once the node is Ready; one of an older revision is deleted (its
    /// pod template is immutable) and the next reconcile makes the new one.
    async fn apply_job(&self, ctx: &Context, job: &Job, resource_ready: bool) -> Result<Option<Job>> {
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), self.namespace());
        let want = job.annotations().get(kaito_crd::REVISION_ANNOTATION);
        match jobs.get_opt(&job.name_any()).await? {
            Some(existing) if existing.annotations().get(kaito_crd::REVISION_ANNOTATION) == want => Ok(Some(existing)),
            Some(existing) => {
                if existing.metadata.deletion_timestamp.is_none() {
                    publish_event(
                        ctx,
                        self,
                        EventType::Normal,
                        "TuningJobReplaced",
                        format!(
                            "the spec changed: deleting Job {} of revision {}",
                            existing.name_any(),
                            existing.annotations().get(kaito_crd::REVISION_ANNOTATION).map_or("?", |v| v)
                        ),
                    )
                    .await;
                    jobs.delete(&existing.name_any(), &DeleteParams::foreground()).await?;
                }
                Err(Error::Waiting(format!("Job {} of an older revision is being deleted", existing.name_any())))
            }
            None if resource_ready => {
                let made = apply(ctx, self.namespace(), job).await?;
                publish_event(
                    ctx,
                    self,
                    EventType::Normal,
                    "TuningJobCreated",
                    format!("created Job {}", made.name_any()),
                )
                .await;
                Ok(Some(made))
            }
            None => Ok(None),
        }
    }

    async fn apply_workload(&self, ctx: &Context, rendered: &Rendered) -> Result<(Option<StatefulSet>, Vec<Pod>)> {
        let ns = self.namespace();
        for svc in [&rendered.objects.service, &rendered.objects.headless] {
            apply(ctx, ns, svc).await?;
        }
        let applied = apply(ctx, ns, &rendered.objects.statefulset).await?;
        Ok((Some(applied), self.pods(ctx).await?))
    }

    async fn report(&self, ctx: &Context, observed: Observed<'_>, target: Option<u32>) -> Result<&'static str> {
        let old = self.status.clone().unwrap_or_default();
        let old_conditions = old.conditions.clone().unwrap_or_default();
        let (mut conditions, state) = status::evaluate(
            &observed,
            ctx.mode == ProvisionerMode::NodeClaims,
            self.metadata.generation,
            &verdict::now(),
        );
        verdict::carry_transition_times(&mut conditions, &old_conditions);
        let mut worker_nodes: Vec<String> =
            observed.nodes.iter().filter(|n| nodes::node_ready_with_gpus(n)).map(|n| n.name_any()).collect();
        worker_nodes.sort();
        let status = WorkspaceStatus {
            worker_nodes: Some(worker_nodes).filter(|w| !w.is_empty()).or(old.worker_nodes.clone()),
            state: Some(state.into()),
            conditions: Some(conditions),
            target_node_count: target.map(|t| t as i32).or(old.target_node_count),
            observed_generation: self.metadata.generation,
        };
        ctx.metrics.set_state(&self.key(), Some(state));
        if status == old {
            return Ok(state);
        }
        writes::patch_status(ctx, self, &status).await?;
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
            publish_event(ctx, self, type_, &c.reason, c.message.clone()).await;
        }
        Ok(state)
    }
}
