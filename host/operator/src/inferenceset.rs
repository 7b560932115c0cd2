//! The InferenceSet as an [`Owner`]: keeps `<set>-0` … `<set>-(replicas-1)` Workspaces made from the template
//! (owner reference, labels, template hash), scales down from the highest index, holds `nodeCountLimit` (a replica
//! that would pass it is not made, and the set says so), rolls a template change per `updateStrategy`, and reports
//! `replicas`, `readyReplicas`, `selector` and `InferenceSetReady`. Deleting the set deletes its Workspaces (each
//! removes its own nodes) before the finalizer goes.

use crate::context::Context;
use crate::controller::{self, Owner};
use crate::error::{Error, Result};
use crate::nodes::selected_nodes;
use crate::verdict::{self, Verdict};
use crate::writes::{self, FIELD_MANAGER, apply, publish_event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kaito_crd::inferenceset::{INFERENCESET_LABEL, Rollout, TEMPLATE_HASH_ANNOTATION};
use kaito_crd::{InferenceSet, InferenceSetStatus, Workspace};
use kaito_plugin_host::ProvisionerMode;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;

/// Finalizer on every InferenceSet, as KAITO names it.
pub const FINALIZER: &str = "inferenceset.finalizer.kaito.sh";
/// The set's headline condition, as KAITO names it.
pub const READY: &str = "InferenceSetReady";
/// Set while the set's Workspaces are removed.
pub const DELETING: &str = "InferenceSetDeleting";

/// What one reconcile saw and did, for the status.
#[derive(Debug, Default)]
struct Tally {
    /// Workspaces that exist and are not being deleted, after this reconcile's creates and deletes.
    replicas: u32,
    ready: u32,
    updated: u32,
    /// The first replica that failed, and why.
    failing: Option<(String, String)>,
}

impl Owner for InferenceSet {
    const FINALIZER: &'static str = FINALIZER;
    const CRD_SOURCE: &'static str = "charts/kaito-workspace/crds/";
    const DELETING: &'static str = DELETING;

    fn conditions(&self) -> Vec<Condition> {
        self.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
    }

    fn deleting_status(&self, conditions: Vec<Condition>) -> impl serde::Serialize + Send {
        InferenceSetStatus { conditions: Some(conditions), ..self.status.clone().unwrap_or_default() }
    }

    async fn apply(&self, ctx: &Context) -> Result<Action> {
        let workspaces = self.workspaces(ctx).await?;
        if let Err(e) = self.validate(ctx.mode == ProvisionerMode::BringYourOwn) {
            let tally = self.tally(&workspaces, &[], &[]);
            self.report(ctx, &tally, Some(Verdict::not("InvalidInferenceSet", e.to_string()))).await?;
            return Ok(Action::await_change());
        }
        let (allowed, limit) = match self.allowed_replicas(ctx).await? {
            Ok(sized) => sized,
            Err(v) => {
                self.report(ctx, &self.tally(&workspaces, &[], &[]), Some(v)).await?;
                return Ok(Action::requeue(ctx.config.retry));
            }
        };
        let deleted = self.scale_down(ctx, &workspaces, allowed).await?;
        let created = self.scale_up(ctx, &workspaces, allowed).await?;
        let rolled = self.roll(ctx, &workspaces, allowed).await?;
        let tally = self.tally(&workspaces, &deleted, &created);
        let ready = self.report(ctx, &tally, limit).await?;
        Ok(controller::next_look(ctx, ready && rolled.is_empty()))
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        controller::mark_deleting(ctx, self, "deleting the set's Workspaces (each removes its nodes)").await?;
        let workspaces = self.workspaces(ctx).await?;
        for ws in workspaces.iter().filter(|w| w.metadata.deletion_timestamp.is_none()) {
            self.delete_workspace(ctx, ws.name()).await?;
        }
        if !workspaces.is_empty() {
            return Err(Error::Waiting(format!("{} Workspace(s) of the set are being deleted", workspaces.len())));
        }
        Ok(Action::await_change())
    }

    fn watches(controller: Controller<Self>, ctx: &Context) -> Controller<Self> {
        controller
            .owns(Api::<Workspace>::all(ctx.client.clone()), watcher::Config::default().labels(INFERENCESET_LABEL))
    }
}

/// Steps of a reconcile, private to this module.
trait Steps {
    fn api(&self, ctx: &Context) -> Api<Workspace>;
    async fn workspaces(&self, ctx: &Context) -> Result<Vec<Workspace>>;
    async fn allowed_replicas(&self, ctx: &Context) -> Result<Result<(u32, Option<Verdict>), Verdict>>;
    async fn scale_down(&self, ctx: &Context, workspaces: &[Workspace], allowed: u32) -> Result<Vec<String>>;
    async fn scale_up(&self, ctx: &Context, workspaces: &[Workspace], allowed: u32) -> Result<Vec<String>>;
    async fn roll(&self, ctx: &Context, workspaces: &[Workspace], allowed: u32) -> Result<Vec<String>>;
    async fn delete_workspace(&self, ctx: &Context, name: &str) -> Result<()>;
    fn tally(&self, workspaces: &[Workspace], deleted: &[String], created: &[String]) -> Tally;
    async fn report(&self, ctx: &Context, tally: &Tally, problem: Option<Verdict>) -> Result<bool>;
}

impl Steps for InferenceSet {
    fn api(&self, ctx: &Context) -> Api<Workspace> {
        Api::namespaced(ctx.client.clone(), &self.namespace().unwrap_or_default())
    }

    async fn workspaces(&self, ctx: &Context) -> Result<Vec<Workspace>> {
        Ok(self.api(ctx).list(&ListParams::default().labels(&self.selector())).await?.items)
    }

    /// How many replicas `nodeCountLimit` lets exist (all, without a limit), and the verdict when it binds. Each
    /// replica's node count is what the estimator plans for the template, as its Workspace will be sized.
    async fn allowed_replicas(&self, ctx: &Context) -> Result<Result<(u32, Option<Verdict>), Verdict>> {
        let want = self.replicas();
        let Some(limit) = self.node_count_limit() else { return Ok(Ok((want, None))) };
        let sample = self.workspace(0);
        let nodes = selected_nodes(ctx, &sample.match_labels()).await?;
        let per_replica = match ctx.render(&sample, &nodes).await? {
            Ok(r) => r.plan.map_or(sample.resource.count.unwrap_or(1).max(1) as u32, |p| p.resources.node_count).max(1),
            Err(e) => {
                return Ok(Err(Verdict::not(
                    e.reason(),
                    format!("cannot size a replica against spec.nodeCountLimit: {e}"),
                )));
            }
        };
        let fits = limit / per_replica;
        if fits >= want {
            return Ok(Ok((want, None)));
        }
        let message = format!(
            "{fits} of {want} replica(s) made: each needs {per_replica} node(s) and spec.nodeCountLimit is {limit}; \
             raise the limit or lower spec.replicas"
        );
        Ok(Ok((fits, Some(Verdict::not("NodeCountLimitReached", message)))))
    }

    /// Deletes the Workspaces past `allowed` (and any that do not carry an index of this set), highest index first.
    async fn scale_down(&self, ctx: &Context, workspaces: &[Workspace], allowed: u32) -> Result<Vec<String>> {
        let mut extra: Vec<(Option<u32>, &str)> = workspaces
            .iter()
            .filter(|w| w.metadata.deletion_timestamp.is_none())
            .map(|w| (self.index_of(w.name()), w.name()))
            .filter(|(i, _)| i.is_none_or(|i| i >= allowed))
            .collect();
        // None (not one of ours by name) sorts first, then the highest index.
        extra.sort_by_key(|(i, _)| std::cmp::Reverse(i.map_or(u64::MAX, |i| i as u64)));
        let mut deleted = Vec::new();
        for (_, name) in extra {
            self.delete_workspace(ctx, name).await?;
            publish_event(
                ctx,
                self,
                EventType::Normal,
                "WorkspaceDeleted",
                format!("scaled down: deleted Workspace {name}"),
            )
            .await;
            deleted.push(name.to_string());
        }
        Ok(deleted)
    }

    /// Creates the missing Workspaces below `allowed`; a name still held by a Workspace being deleted waits for it.
    async fn scale_up(&self, ctx: &Context, workspaces: &[Workspace], allowed: u32) -> Result<Vec<String>> {
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let mut created = Vec::new();
        for index in 0..allowed {
            let name = self.workspace_name(index);
            if workspaces.iter().any(|w| w.name() == name) {
                continue;
            }
            match self.api(ctx).create(&post, &self.workspace(index)).await {
                Ok(_) => {}
                // Created by an earlier reconcile whose list we did not see yet.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
            publish_event(ctx, self, EventType::Normal, "WorkspaceCreated", format!("created Workspace {name}")).await;
            created.push(name);
        }
        Ok(created)
    }

    /// Brings out-of-date Workspaces to the current template, highest index first down to the partition: one that
    /// is not Ready anyway at once, a Ready one only while fewer than `maxUnavailable` replicas are unready. A
    /// change the Workspace's own rules refuse in place (its preset, instance type or selector) replaces it.
    async fn roll(&self, ctx: &Context, workspaces: &[Workspace], allowed: u32) -> Result<Vec<String>> {
        let Rollout::Rolling { max_unavailable, partition } = self.rollout() else { return Ok(vec![]) };
        let hash = self.template_hash();
        let live: Vec<(u32, &Workspace)> = workspaces
            .iter()
            .filter(|w| w.metadata.deletion_timestamp.is_none())
            .filter_map(|w| Some((self.index_of(w.name())?, w)))
            .filter(|(i, _)| *i < allowed)
            .collect();
        let ready = live.iter().filter(|(_, w)| w.succeeded()).count() as u32;
        let mut unavailable = allowed.saturating_sub(ready);
        let mut stale: Vec<&(u32, &Workspace)> = live
            .iter()
            .filter(|(i, w)| *i >= partition && w.annotation(TEMPLATE_HASH_ANNOTATION) != Some(&hash))
            .collect();
        stale.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        let mut rolled = Vec::new();
        for (index, ws) in stale {
            if ws.succeeded() {
                if unavailable >= max_unavailable {
                    break;
                }
                unavailable += 1;
            }
            let ns = self.namespace().unwrap_or_default();
            match apply(ctx, &ns, &self.workspace(*index)).await {
                Ok(_) => {
                    let note = format!("updated Workspace {} to template {hash}", ws.name());
                    publish_event(ctx, self, EventType::Normal, "WorkspaceUpdated", note).await;
                }
                // 422: the Workspace's rules refuse this change in place (e.g. inference.preset is immutable).
                Err(Error::Kube(kube::Error::Api(s))) if s.code == 422 => {
                    self.delete_workspace(ctx, ws.name()).await?;
                    let note = format!("replacing Workspace {}: {}", ws.name(), s.message);
                    publish_event(ctx, self, EventType::Normal, "WorkspaceReplaced", note).await;
                }
                Err(e) => return Err(e),
            }
            rolled.push(ws.name().to_string());
        }
        Ok(rolled)
    }

    async fn delete_workspace(&self, ctx: &Context, name: &str) -> Result<()> {
        match self.api(ctx).delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn tally(&self, workspaces: &[Workspace], deleted: &[String], created: &[String]) -> Tally {
        let hash = self.template_hash();
        let live: Vec<&Workspace> = workspaces
            .iter()
            .filter(|w| w.metadata.deletion_timestamp.is_none() && !deleted.iter().any(|d| d == w.name()))
            .collect();
        let failing = live.iter().find_map(|w| {
            let c =
                w.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kaito_crd::SUCCEEDED_CONDITION)?;
            let stuck =
                c.status == "False" && matches!(w.status.as_ref()?.state.as_deref(), Some("Failed" | "NotReady"));
            stuck.then(|| (w.name().to_string(), format!("{}: {}", c.reason, c.message)))
        });
        Tally {
            replicas: (live.len() + created.len()) as u32,
            ready: live.iter().filter(|w| w.succeeded()).count() as u32,
            updated: (live.iter().filter(|w| w.annotation(TEMPLATE_HASH_ANNOTATION) == Some(&hash)).count()
                + created.len()) as u32,
            failing,
        }
    }

    /// Writes the status; true when the set is Ready.
    async fn report(&self, ctx: &Context, tally: &Tally, problem: Option<Verdict>) -> Result<bool> {
        let want = self.replicas();
        let headline = match problem {
            Some(v) => v,
            None if tally.ready >= want && tally.updated >= want && tally.replicas == want => {
                Verdict::ok("InferenceSetReady", format!("{}/{want} replica(s) are ready", tally.ready))
            }
            None if tally.updated < tally.replicas => Verdict::not(
                "RolloutInProgress",
                format!(
                    "{}/{} replica(s) on the current template, {} ready",
                    tally.updated, tally.replicas, tally.ready
                ),
            ),
            None => {
                let why = tally.failing.as_ref().map(|(ws, why)| format!("; {ws}: {why}")).unwrap_or_default();
                Verdict::not("InferenceSetNotReady", format!("{}/{want} replica(s) are ready{why}", tally.ready))
            }
        };
        let old = self.status.clone().unwrap_or_default();
        let old_conditions = old.conditions.clone().unwrap_or_default();
        let mut conditions = vec![headline.condition(READY, self.metadata.generation, &verdict::now())];
        verdict::carry_transition_times(&mut conditions, &old_conditions);
        let status = InferenceSetStatus {
            replicas: tally.replicas as i32,
            ready_replicas: tally.ready as i32,
            updated_replicas: tally.updated as i32,
            selector: self.selector(),
            conditions: Some(conditions),
            observed_generation: self.metadata.generation,
        };
        if status != old {
            writes::patch_status(ctx, self, &status).await?;
            let was = old_conditions.iter().find(|c| c.type_ == READY).map(|c| (c.status.clone(), c.reason.clone()));
            let status_word = if headline.ready { "True" } else { "False" };
            if was != Some((status_word.into(), headline.reason.clone())) {
                let type_ = match headline.reason.as_str() {
                    "InvalidInferenceSet" | "NodeCountLimitReached" => EventType::Warning,
                    r if !headline.ready && !["RolloutInProgress", "InferenceSetNotReady"].contains(&r) => {
                        EventType::Warning
                    }
                    _ => EventType::Normal,
                };
                publish_event(ctx, self, type_, &headline.reason, headline.message.clone()).await;
            }
        }
        Ok(headline.ready)
    }
}
