//! The pipeline every owned kind shares, as in kube-rs's controller-rs: a kind is its CRD type plus an [`Owner`]
//! impl (what it makes, how it cleans up, what it watches); `reconcile`, `error_policy`, the CRD check and `run`
//! exist once, generic over the kind. Finalizers go through `kube::runtime::finalizer`.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::verdict::{self, Verdict};
use crate::writes;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// A kind the operator reconciles: its finalizer, what it makes, how it cleans up and what it watches.
pub trait Owner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Finalizer put on every object of the kind, as KAITO names it.
    const FINALIZER: &'static str;
    /// Where the CRD is installed from, told when it is missing.
    const CRD_SOURCE: &'static str;
    /// The condition type set (True) while the object's cleanup runs, as KAITO names it.
    const DELETING: &'static str;
    /// The object's status conditions.
    fn conditions(&self) -> Vec<Condition>;
    /// Its status while it is being deleted, with `conditions`.
    fn deleting_status(&self, conditions: Vec<Condition>) -> impl Serialize + Send;
    /// Bring the cluster to what the object asks for and report how far it got.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;
    /// Remove what owner references do not (cluster-scoped node objects, children kept by finalizers); an
    /// [`Error::Waiting`] keeps the finalizer until the next look.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;
    /// The watches beyond the kind itself: what it owns, and node objects mapped back to it.
    fn watches(controller: Controller<Self>, ctx: &Context) -> Controller<Self>;
}

/// Sets the kind's Deleting condition, once, as a cleanup starts; true when it was set now.
pub async fn mark_deleting<K: Owner>(ctx: &Context, object: &K, message: &str) -> Result<bool> {
    let conditions = object.conditions();
    if conditions.iter().any(|c| c.type_ == K::DELETING) {
        return Ok(false);
    }
    let deleting = Verdict::ok("Deleting", message);
    let conditions = verdict::with_condition(conditions, K::DELETING, &deleting, object.meta().generation);
    writes::patch_status(ctx, object, &object.deleting_status(conditions)).await?;
    Ok(true)
}

/// When to look again: at the resync interval once the object is Ready, soon while it is on its way.
pub fn next_look(ctx: &Context, ready: bool) -> Action {
    Action::requeue(if ready { ctx.config.resync } else { ctx.config.poll })
}

fn key<K: Owner>(object: &K) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

/// Reconcile one object: the finalizer first, then [`Owner::apply`], or [`Owner::cleanup`] once it is deleted.
pub async fn reconcile<K: Owner>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("reconcile", kind = %K::kind(&()), object = %key(&*object));
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let result = finalizer(&api, K::FINALIZER, object, |event| async {
        match event {
            Event::Apply(o) => o.apply(&ctx).await,
            Event::Cleanup(o) => o.cleanup(&ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Look again soon: while a cleanup waits at the poll interval, after a failure (counted) in 5 s, as conflicts and
/// API hiccups clear on their own.
pub fn error_policy<K: Owner>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        tracing::debug!(kind = %K::kind(&()), object = %key(&*object), %error, "cleanup waits");
        return Action::requeue(ctx.config.poll);
    }
    tracing::warn!(kind = %K::kind(&()), object = %key(&*object), %error, "reconcile failed");
    ctx.metrics.failed(error.metric_label());
    Action::requeue(Duration::from_secs(5))
}

/// Fail early, with the fix, when the kind's CRD is not installed.
pub async fn check_crd<K: Owner>(ctx: &Context) -> anyhow::Result<()> {
    let api: Api<K> = Api::all(ctx.client.clone());
    api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list {}.{} ({e}); install the CRD with `kubectl apply -f {}`",
            K::plural(&()),
            K::group(&()),
            K::CRD_SOURCE
        )
    })?;
    Ok(())
}

/// Run the kind's controller until `shutdown` resolves.
pub async fn run<K: Owner>(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let controller = Controller::new(Api::<K>::all(ctx.client.clone()), watcher::Config::default());
    // A new plugin set re-renders everything: objects whose plugins did not change render the same and are left.
    let swaps = futures::stream::unfold(ctx.plugin_generation.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    K::watches(controller, &ctx)
        .reconcile_all_on(swaps)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}
