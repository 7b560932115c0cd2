//! Reconciling one RAGEngine: the logic lives in [`RAGEngineExt`], methods
//! on the CRD type; the controller's `reconcile` stays thin.
//!
//! A RAGEngine gets, in order: the finalizer; NodeClaims (or a NodePool) from
//! the provisioner plugin when `compute.instanceType` is set; once a node is
//! Ready, a Service and a Deployment running `kaito-rag`, both by server-side
//! apply with owner references. Status: `ResourceReady` and `ServiceReady`.

use crate::context::Context;
use crate::error::Result;
use crate::finalizer;
use crate::status::{self, Verdict};
use crate::workspace::{FIELD_MANAGER, create_node_objects, delete_node_objects, publish_event, serialize};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kaito_crd::ragengine::RAGENGINE_LABEL;
use kaito_crd::{RAGEngine, RAGEngineStatus};
use kaito_plugin_host::ProvisionerMode;
use kaito_workload::ragengine::RAGENGINE_NAMESPACE_LABEL;
use kaito_workload::{RagObjects, RenderError, render_ragengine};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

/// Finalizer on every RAGEngine, as KAITO names it.
pub const FINALIZER: &str = "ragengine.finalizer.kaito.sh";
/// Condition types.
pub const RESOURCE_READY: &str = "ResourceReady";
/// The service answers.
pub const SERVICE_READY: &str = "ServiceReady";
/// Set while the RAGEngine's node objects are removed.
pub const DELETING: &str = "RAGEngineDeleting";

/// Reconcile logic on the RAGEngine type.
pub trait RAGEngineExt {
    /// Bring the cluster to what the RAGEngine asks for and report how far it got.
    fn reconcile(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;
    /// Remove its node objects, then the finalizer.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl RAGEngineExt for RAGEngine {
    async fn reconcile(&self, ctx: &Context) -> Result<Action> {
        if self.metadata.deletion_timestamp.is_some() {
            return self.cleanup(ctx).await;
        }
        let api = self.api(ctx);
        if !self.finalizers().iter().any(|f| f == FINALIZER) {
            let patch = finalizer::add(self.metadata.finalizers.as_deref(), FINALIZER);
            api.patch(&self.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        }
        let rendered = match self.render(ctx).await? {
            Ok(r) => r,
            Err(e) => {
                let reason = match &e {
                    RenderError::Invalid(_) => "InvalidRAGEngine",
                    other => other.reason(),
                };
                let v = Verdict { ready: false, reason: reason.into(), message: e.to_string() };
                let waiting = Verdict {
                    ready: false,
                    reason: "ResourceNotReady".into(),
                    message: "waiting for resources".into(),
                };
                self.report(ctx, &v, &waiting, &[]).await?;
                return Ok(match e {
                    RenderError::Invalid(_) => Action::await_change(),
                    _ => Action::requeue(ctx.config.retry),
                });
            }
        };
        let (resource, nodes) = self.provision(ctx, &rendered).await?;
        let service = if resource.ready {
            self.apply(ctx, &rendered).await?
        } else {
            Verdict { ready: false, reason: "ResourceNotReady".into(), message: "waiting for a Ready node".into() }
        };
        self.report(ctx, &resource, &service, &nodes).await?;
        Ok(if resource.ready && service.ready {
            Action::requeue(ctx.config.resync)
        } else {
            Action::requeue(ctx.config.poll)
        })
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        let Some(index) = self.finalizers().iter().position(|f| f == FINALIZER) else {
            return Ok(Action::await_change());
        };
        let deleting = self.conditions().iter().any(|c| c.type_ == DELETING);
        if !deleting {
            let mut conditions = self.conditions();
            conditions.push(Condition {
                type_: DELETING.into(),
                status: "True".into(),
                reason: "Deleting".into(),
                message: "removing the RAGEngine's node objects".into(),
                observed_generation: self.metadata.generation,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            self.patch_status(
                ctx,
                &RAGEngineStatus { conditions: Some(conditions), ..self.status.clone().unwrap_or_default() },
            )
            .await?;
        }
        if delete_node_objects(ctx, &self.owned_selector()).await? {
            return Ok(Action::requeue(ctx.config.poll));
        }
        // Not pinned to the resourceVersion: the status patch above has just changed it (a real server answers 409).
        let patch = finalizer::remove(index, FINALIZER);
        self.api(ctx).patch(&self.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        Ok(Action::await_change())
    }
}

/// Steps of a reconcile, private to this module.
trait Steps {
    fn api(&self, ctx: &Context) -> Api<RAGEngine>;
    fn owned_selector(&self) -> String;
    fn conditions(&self) -> Vec<Condition>;
    async fn render(&self, ctx: &Context) -> Result<Result<RagObjects, RenderError>>;
    async fn provision(&self, ctx: &Context, rendered: &RagObjects) -> Result<(Verdict, Vec<String>)>;
    async fn apply(&self, ctx: &Context, rendered: &RagObjects) -> Result<Verdict>;
    async fn report(&self, ctx: &Context, resource: &Verdict, service: &Verdict, nodes: &[String]) -> Result<()>;
    async fn patch_status(&self, ctx: &Context, status: &RAGEngineStatus) -> Result<()>;
    async fn event(&self, ctx: &Context, type_: EventType, reason: &str, note: String);
}

impl Steps for RAGEngine {
    fn api(&self, ctx: &Context) -> Api<RAGEngine> {
        Api::namespaced(ctx.client.clone(), &self.namespace().unwrap_or_default())
    }

    fn owned_selector(&self) -> String {
        format!(
            "{RAGENGINE_LABEL}={},{RAGENGINE_NAMESPACE_LABEL}={}",
            self.name_any(),
            self.namespace().unwrap_or_default()
        )
    }

    fn conditions(&self) -> Vec<Condition> {
        self.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
    }

    async fn render(&self, ctx: &Context) -> Result<Result<RagObjects, RenderError>> {
        let (registry, rag) = (ctx.registry.clone(), self.clone());
        let (provisioner, image_registry) = (ctx.config.provisioner.clone(), ctx.config.image_registry.clone());
        let _slot = ctx.plugin_slots.acquire().await.expect("the semaphore is never closed");
        // Plugin calls are synchronous CPU work under an epoch deadline: keep them off the async workers.
        Ok(tokio::task::spawn_blocking(move || render_ragengine(&registry, &rag, &provisioner, &image_registry))
            .await?)
    }

    async fn provision(&self, ctx: &Context, rendered: &RagObjects) -> Result<(Verdict, Vec<String>)> {
        let compute = self.spec.compute.as_ref();
        let provisioned = compute.and_then(|c| c.instance_type.as_deref()).is_some_and(|t| !t.is_empty())
            && ctx.mode != ProvisionerMode::BringYourOwn;
        if provisioned {
            let (_, created) = create_node_objects(ctx, &rendered.nodes, &self.owned_selector()).await?;
            for name in created {
                self.event(ctx, EventType::Normal, "NodeClaimCreated", format!("created NodeClaim {name}")).await;
            }
        }
        let labels =
            compute.and_then(|c| c.label_selector.as_ref()).and_then(|s| s.match_labels.clone()).unwrap_or_default();
        if labels.is_empty() {
            return Ok((
                Verdict { ready: true, reason: "NoNodeRequirements".into(), message: "runs on any node".into() },
                vec![],
            ));
        }
        let selector = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let mut ready: Vec<String> = nodes
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .iter()
            .filter(|n| node_ready(n))
            .map(|n| n.name_any())
            .collect();
        ready.sort();
        Ok(if ready.is_empty() {
            let message = if provisioned {
                format!("waiting for the provisioned node (no Ready node matches {selector} yet)")
            } else {
                format!("no Ready node matches {selector}; label a node or set compute.instanceType")
            };
            (Verdict { ready: false, reason: "NodesNotReady".into(), message }, ready)
        } else {
            (
                Verdict {
                    ready: true,
                    reason: "NodesReady".into(),
                    message: format!("{} Ready node(s) match", ready.len()),
                },
                ready,
            )
        })
    }

    async fn apply(&self, ctx: &Context, rendered: &RagObjects) -> Result<Verdict> {
        let ns = self.namespace().unwrap_or_default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        services.patch(&rendered.service.name_any(), &params, &Patch::Apply(&rendered.service)).await?;
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let applied =
            deployments.patch(&rendered.deployment.name_any(), &params, &Patch::Apply(&rendered.deployment)).await?;
        let available = applied.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        if available >= 1 {
            return Ok(Verdict {
                ready: true,
                reason: "ServiceReady".into(),
                message: "the RAG service answers its health check".into(),
            });
        }
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pods =
            pods.list(&ListParams::default().labels(&format!("{RAGENGINE_LABEL}={}", self.name_any()))).await?.items;
        Ok(status::pod_failure(&pods).unwrap_or(Verdict {
            ready: false,
            reason: "ServiceNotReady".into(),
            message: "the kaito-rag pod is not Ready yet".into(),
        }))
    }

    async fn report(&self, ctx: &Context, resource: &Verdict, service: &Verdict, nodes: &[String]) -> Result<()> {
        let old = self.status.clone().unwrap_or_default();
        let old_conditions = old.conditions.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let conditions: Vec<Condition> = [(RESOURCE_READY, resource), (SERVICE_READY, service)]
            .into_iter()
            .map(|(kind, v)| {
                let status = if v.ready { "True" } else { "False" };
                let same = old_conditions.iter().find(|c| c.type_ == kind && c.status == status);
                Condition {
                    type_: kind.into(),
                    status: status.into(),
                    reason: v.reason.clone(),
                    message: v.message.clone(),
                    observed_generation: self.metadata.generation,
                    last_transition_time: same.map(|c| c.last_transition_time.clone()).unwrap_or_else(|| now.clone()),
                }
            })
            .collect();
        let status = RAGEngineStatus {
            worker_nodes: Some(nodes.to_vec()).filter(|n| !n.is_empty()).or(old.worker_nodes.clone()),
            conditions: Some(conditions),
        };
        if status == old {
            return Ok(());
        }
        self.patch_status(ctx, &status).await?;
        let headline = |cs: &[Condition]| {
            cs.iter().find(|c| c.type_ == SERVICE_READY).map(|c| (c.status.clone(), c.reason.clone()))
        };
        if headline(status.conditions.as_deref().unwrap_or_default()) != headline(&old_conditions) {
            let (v, type_) = if !resource.ready && resource.reason != "NodesNotReady" {
                (resource, EventType::Warning)
            } else if service.ready || ["ResourceNotReady", "ServiceNotReady"].contains(&service.reason.as_str()) {
                (service, EventType::Normal)
            } else {
                (service, EventType::Warning)
            };
            self.event(ctx, type_, &v.reason, v.message.clone()).await;
        }
        Ok(())
    }

    async fn patch_status(&self, ctx: &Context, status: &RAGEngineStatus) -> Result<()> {
        let body =
            json!({"apiVersion": "kaito.sh/v1beta1", "kind": "RAGEngine", "status": serialize("status", status)?});
        self.api(ctx)
            .patch_status(&self.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await?;
        Ok(())
    }

    async fn event(&self, ctx: &Context, type_: EventType, reason: &str, note: String) {
        publish_event(ctx, self.object_ref(&()), type_, reason, note).await;
    }
}
