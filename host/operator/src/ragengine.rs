//! The RAGEngine as an [`Owner`]: NodeClaims (or a NodePool) from the provisioner plugin when
//! `compute.instanceType` is set; once a node is Ready, a Service and a Deployment running `kaito-rag`, both by
//! server-side apply with owner references. Status: `ResourceReady` and `ServiceReady`.

use crate::context::Context;
use crate::controller::{self, Owner};
use crate::error::{Error, Result};
use crate::nodes::{self, create_node_objects, delete_node_objects, owned_selector, selected_nodes};
use crate::status;
use crate::verdict::{self, Verdict};
use crate::writes::{self, apply, publish_event};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kaito_crd::ragengine::RAGENGINE_LABEL;
use kaito_crd::{RAGEngine, RAGEngineStatus};
use kaito_plugin_host::ProvisionerMode;
use kaito_workload::ragengine::RAGENGINE_NAMESPACE_LABEL;
use kaito_workload::{RagObjects, RenderError, render_ragengine};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;

/// Finalizer on every RAGEngine, as KAITO names it.
pub const FINALIZER: &str = "ragengine.finalizer.kaito.sh";
/// Condition types.
pub const RESOURCE_READY: &str = "ResourceReady";
/// The service answers.
pub const SERVICE_READY: &str = "ServiceReady";
/// Set while the RAGEngine's node objects are removed.
pub const DELETING: &str = "RAGEngineDeleting";

impl Owner for RAGEngine {
    const FINALIZER: &'static str = FINALIZER;
    const CRD_SOURCE: &'static str = "charts/kaito-ragengine/crds/";
    const DELETING: &'static str = DELETING;

    fn conditions(&self) -> Vec<Condition> {
        self.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
    }

    fn deleting_status(&self, conditions: Vec<Condition>) -> impl serde::Serialize + Send {
        RAGEngineStatus { conditions: Some(conditions), ..self.status.clone().unwrap_or_default() }
    }

    async fn apply(&self, ctx: &Context) -> Result<Action> {
        let rendered = match self.render(ctx).await? {
            Ok(r) => r,
            Err(e) => {
                let reason = match &e {
                    RenderError::Invalid(_) => "InvalidRAGEngine",
                    other => other.reason(),
                };
                let waiting = Verdict::not("ResourceNotReady", "waiting for resources");
                self.report(ctx, &Verdict::not(reason, e.to_string()), &waiting, &[]).await?;
                return Ok(match e {
                    RenderError::Invalid(_) => Action::await_change(),
                    _ => Action::requeue(ctx.config.retry),
                });
            }
        };
        let (resource, nodes) = self.provision(ctx, &rendered).await?;
        let service = if resource.ready {
            self.apply_workload(ctx, &rendered).await?
        } else {
            Verdict::not("ResourceNotReady", "waiting for a Ready node")
        };
        self.report(ctx, &resource, &service, &nodes).await?;
        Ok(controller::next_look(ctx, resource.ready && service.ready))
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        controller::mark_deleting(ctx, self, "removing the RAGEngine's node objects").await?;
        if delete_node_objects(ctx, &self.owned_selector()).await? {
            return Err(Error::Waiting("the RAGEngine's node objects are being removed".into()));
        }
        Ok(Action::await_change())
    }

    fn watches(controller: Controller<Self>, ctx: &Context) -> Controller<Self> {
        let client = ctx.client.clone();
        let owned = || watcher::Config::default().labels(RAGENGINE_LABEL);
        let controller =
            controller.owns(Api::<Deployment>::all(client.clone()), owned()).owns(Api::<Service>::all(client), owned());
        nodes::watch_node_objects(controller, ctx, RAGENGINE_LABEL, RAGENGINE_NAMESPACE_LABEL)
    }
}

/// The service: the Deployment controller has seen the current spec and every replica runs it and is available;
/// else why not. Available replicas alone are not enough: right after a spec change they are the old pods.
pub fn deployment_verdict(deployment: &Deployment, pods: &[Pod]) -> Verdict {
    let want = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let (updated, available) = (status.updated_replicas.unwrap_or(0), status.available_replicas.unwrap_or(0));
    let running = status.replicas.unwrap_or(0);
    let unseen = status.observed_generation < deployment.metadata.generation;
    let rolling = unseen || updated < want || running > updated;
    if !rolling && available >= want {
        return Verdict::ok("ServiceReady", "the RAG service answers its health check");
    }
    // A rollout is in progress while pods of an older spec still run; with none running, the service is starting.
    let waiting = if rolling && running > 0 && unseen {
        Verdict::not(
            "RolloutInProgress",
            format!(
                "the Deployment controller has not yet seen generation {}",
                deployment.metadata.generation.unwrap_or(0)
            ),
        )
    } else if rolling && running > 0 {
        Verdict::not("RolloutInProgress", format!("{updated}/{want} replica(s) updated, {available} available"))
    } else {
        Verdict::not("ServiceNotReady", "the kaito-rag pod is not Ready yet")
    };
    status::pod_failure(pods).unwrap_or(waiting)
}

/// Steps of a reconcile, private to this module.
trait Steps {
    fn owned_selector(&self) -> String;
    async fn render(&self, ctx: &Context) -> Result<Result<RagObjects, RenderError>>;
    async fn provision(&self, ctx: &Context, rendered: &RagObjects) -> Result<(Verdict, Vec<String>)>;
    async fn apply_workload(&self, ctx: &Context, rendered: &RagObjects) -> Result<Verdict>;
    async fn report(&self, ctx: &Context, resource: &Verdict, service: &Verdict, nodes: &[String]) -> Result<()>;
}

impl Steps for RAGEngine {
    fn owned_selector(&self) -> String {
        owned_selector(
            RAGENGINE_LABEL,
            RAGENGINE_NAMESPACE_LABEL,
            &self.name_any(),
            &self.namespace().unwrap_or_default(),
        )
    }

    async fn render(&self, ctx: &Context) -> Result<Result<RagObjects, RenderError>> {
        let (registry, rag) = (ctx.registry(), self.clone());
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
                publish_event(ctx, self, EventType::Normal, "NodeClaimCreated", format!("created NodeClaim {name}"))
                    .await;
            }
        }
        let labels =
            compute.and_then(|c| c.label_selector.as_ref()).and_then(|s| s.match_labels.clone()).unwrap_or_default();
        if labels.is_empty() {
            return Ok((Verdict::ok("NoNodeRequirements", "runs on any node"), vec![]));
        }
        let mut ready: Vec<String> =
            selected_nodes(ctx, &labels).await?.iter().filter(|n| nodes::node_ready(n)).map(|n| n.name_any()).collect();
        ready.sort();
        let selector = nodes::selector_string(&labels);
        Ok(if ready.is_empty() {
            let message = if provisioned {
                format!("waiting for the provisioned node (no Ready node matches {selector} yet)")
            } else {
                format!("no Ready node matches {selector}; label a node or set compute.instanceType")
            };
            (Verdict::not("NodesNotReady", message), ready)
        } else {
            (Verdict::ok("NodesReady", format!("{} Ready node(s) match", ready.len())), ready)
        })
    }

    async fn apply_workload(&self, ctx: &Context, rendered: &RagObjects) -> Result<Verdict> {
        let ns = self.namespace().unwrap_or_default();
        apply(ctx, &ns, &rendered.service).await?;
        let applied = apply(ctx, &ns, &rendered.deployment).await?;
        let verdict = deployment_verdict(&applied, &[]);
        if verdict.ready {
            return Ok(verdict);
        }
        // Only a service that is not up needs its pods read, for why.
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pods =
            pods.list(&ListParams::default().labels(&format!("{RAGENGINE_LABEL}={}", self.name_any()))).await?.items;
        Ok(deployment_verdict(&applied, &pods))
    }

    async fn report(&self, ctx: &Context, resource: &Verdict, service: &Verdict, nodes: &[String]) -> Result<()> {
        let old = self.status.clone().unwrap_or_default();
        let old_conditions = old.conditions.clone().unwrap_or_default();
        let now = verdict::now();
        let mut conditions: Vec<Condition> = [(RESOURCE_READY, resource), (SERVICE_READY, service)]
            .into_iter()
            .map(|(kind, v)| v.condition(kind, self.metadata.generation, &now))
            .collect();
        verdict::carry_transition_times(&mut conditions, &old_conditions);
        let status = RAGEngineStatus {
            worker_nodes: Some(nodes.to_vec()).filter(|n| !n.is_empty()).or(old.worker_nodes.clone()),
            conditions: Some(conditions),
            observed_generation: self.metadata.generation,
        };
        if status == old {
            return Ok(());
        }
        writes::patch_status(ctx, self, &status).await?;
        let headline = |cs: &[Condition]| {
            cs.iter().find(|c| c.type_ == SERVICE_READY).map(|c| (c.status.clone(), c.reason.clone()))
        };
        if headline(status.conditions.as_deref().unwrap_or_default()) != headline(&old_conditions) {
            let (v, type_) = if !resource.ready && resource.reason != "NodesNotReady" {
                (resource, EventType::Warning)
            } else if service.ready
                || ["ResourceNotReady", "ServiceNotReady", "RolloutInProgress"].contains(&service.reason.as_str())
            {
                (service, EventType::Normal)
            } else {
                (service, EventType::Warning)
            };
            publish_event(ctx, self, type_, &v.reason, v.message.clone()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "rag", "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}}, "status": status}))
        .unwrap()
    }

    #[test]
    fn the_service_is_ready_only_after_the_rollout_completes() {
        // The apply response right after a spec change: the old pod is still available.
        let unseen = deployment(
            2,
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert_eq!(deployment_verdict(&unseen, &[]).reason, "RolloutInProgress");
        let surging = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert_eq!(deployment_verdict(&surging, &[]).reason, "RolloutInProgress");
        let starting = deployment(2, json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1}));
        assert_eq!(deployment_verdict(&starting, &[]).reason, "ServiceNotReady");
        let created = deployment(1, json!({}));
        assert_eq!(deployment_verdict(&created, &[]).reason, "ServiceNotReady", "nothing older is serving");
        let done = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert!(deployment_verdict(&done, &[]).ready);
    }
}
