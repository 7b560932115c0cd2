//! The kube-runtime controller: thin `reconcile` and `error_policy`, and the watches.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::ragengine::RAGEngineExt;
use crate::workspace::{WorkspaceExt, node_kind, node_resource};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kaito_crd::ragengine::RAGENGINE_LABEL;
use kaito_crd::{RAGEngine, WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL, Workspace};
use kaito_workload::ragengine::RAGENGINE_NAMESPACE_LABEL;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Reconcile one Workspace; the work is in [`WorkspaceExt`].
pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("reconcile", workspace = %format!("{}/{}", ws.namespace(), ws.name()));
    let started = Instant::now();
    let result = ws.reconcile(&ctx).instrument(span).await;
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Count the failure and retry soon; conflicts and API hiccups clear on their own.
pub fn error_policy(ws: Arc<Workspace>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(workspace = %format!("{}/{}", ws.namespace(), ws.name()), %error, "reconcile failed");
    ctx.metrics.failed(error.metric_label());
    Action::requeue(Duration::from_secs(5))
}

/// Fail early, with the fix, when the Workspace CRD is not installed.
pub async fn check_crd(ctx: &Context) -> anyhow::Result<()> {
    let api: Api<Workspace> = Api::all(ctx.client.clone());
    api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list workspaces.kaito.sh ({e}); install the CRD with `kubectl apply -f charts/kaito-workspace/crds/`"
        )
    })?;
    Ok(())
}

/// Watches the provisioner's node objects (if it makes any), mapped back to
/// the owner named by their `name_label` and `ns_label` labels.
fn watch_nodes<K>(
    controller: Controller<K>,
    ctx: &Context,
    name_label: &'static str,
    ns_label: &'static str,
) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let Some(kind) = node_kind(ctx.mode) else { return controller };
    let ar = node_resource(kind);
    let api = Api::<DynamicObject>::all_with(ctx.client.clone(), &ar);
    controller.watches_with(api, ar, watcher::Config::default().labels(name_label), move |o: DynamicObject| {
        let labels = o.metadata.labels.unwrap_or_default();
        Some(ObjectRef::<K>::new(labels.get(name_label)?).within(labels.get(ns_label)?))
    })
}

/// Run the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let owned = || watcher::Config::default().labels(WORKSPACE_LABEL);
    let controller = Controller::new(Api::<Workspace>::all(client.clone()), watcher::Config::default())
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned());
    // Node objects are cluster-scoped and cannot carry a namespaced owner: map them back by label.
    let controller = watch_nodes(controller, &ctx, WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL);
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(workspace = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}

/// Reconcile one RAGEngine; the work is in [`RAGEngineExt`].
pub async fn reconcile_ragengine(rag: Arc<RAGEngine>, ctx: Arc<Context>) -> Result<Action> {
    let key = format!(
        "{}/{}",
        rag.metadata.namespace.as_deref().unwrap_or_default(),
        rag.metadata.name.as_deref().unwrap_or_default()
    );
    let started = Instant::now();
    let result = rag.reconcile(&ctx).instrument(tracing::info_span!("reconcile", ragengine = %key)).await;
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Count the failure and retry soon.
pub fn error_policy_ragengine(rag: Arc<RAGEngine>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(ragengine = ?rag.metadata.name, %error, "reconcile failed");
    ctx.metrics.failed(error.metric_label());
    Action::requeue(Duration::from_secs(5))
}

/// Fail early, with the fix, when the RAGEngine CRD is not installed.
pub async fn check_ragengine_crd(ctx: &Context) -> anyhow::Result<()> {
    let api: Api<RAGEngine> = Api::all(ctx.client.clone());
    api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list ragengines.kaito.sh ({e}); install the CRD with `kubectl apply -f charts/kaito-ragengine/crds/`"
        )
    })?;
    Ok(())
}

/// Run the RAGEngine controller until `shutdown` resolves.
pub async fn run_ragengine(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let owned = || watcher::Config::default().labels(RAGENGINE_LABEL);
    let controller = Controller::new(Api::<RAGEngine>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned());
    let controller = watch_nodes(controller, &ctx, RAGENGINE_LABEL, RAGENGINE_NAMESPACE_LABEL);
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile_ragengine, error_policy_ragengine, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(ragengine = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}
