//! Node objects every owner shares: the Karpenter kinds provisioner plugins plan (NodeClaims created only when
//! missing, NodePools applied, both deleted on cleanup and watched back to their owner), and the nodes an owner's
//! selector picks.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::writes::{FIELD_MANAGER, serialize};
use k8s_openapi::api::core::v1::Node;
use kaito_plugin_host::ProvisionerMode;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use std::collections::BTreeMap;

/// Extended resource NVIDIA's device plugin reports.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

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

/// `k=v,k=v`, the label selector string of `labels`.
pub fn selector_string<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    labels.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The selector of the cluster-scoped objects made for the owner `name` in `namespace`.
pub fn owned_selector(name_label: &str, ns_label: &str, name: &str, namespace: &str) -> String {
    format!("{name_label}={name},{ns_label}={namespace}")
}

/// Whether the node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A node counts for GPU work when it is Ready and reports GPU capacity.
pub fn node_ready_with_gpus(node: &Node) -> bool {
    let gpus = node
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get(GPU_RESOURCE))
        .is_some_and(|q| q.0 != "0");
    node_ready(node) && gpus
}

/// The nodes carrying every label of `labels` (none when `labels` is empty: an empty selector picks nothing here).
pub async fn selected_nodes(ctx: &Context, labels: &BTreeMap<String, String>) -> Result<Vec<Node>> {
    if labels.is_empty() {
        return Ok(vec![]);
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    Ok(api.list(&ListParams::default().labels(&selector_string(labels))).await?.items)
}

/// The planned node objects (NodeClaims) whose names do not exist yet, so a reconcile creates only what is missing.
pub fn missing<'a>(planned: &'a [Value], existing: &[String]) -> Vec<&'a Value> {
    planned.iter().filter(|o| o["metadata"]["name"].as_str().is_none_or(|n| !existing.iter().any(|e| e == n))).collect()
}

/// Server-side applies the planned NodePools, or creates the planned NodeClaims missing among those labelled
/// `selector` (claims are created, never re-applied: an existing one is left to Karpenter). Returns the claims that
/// exist afterwards and the names of those just created.
pub async fn create_node_objects(
    ctx: &Context,
    planned: &[Value],
    selector: &str,
) -> Result<(Vec<Value>, Vec<String>)> {
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
    for planned in missing(planned, &names) {
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

/// Deletes the node objects (NodeClaims or NodePools) matching `selector`; true while some still exist (Karpenter
/// removes them after draining).
pub async fn delete_node_objects(ctx: &Context, selector: &str) -> Result<bool> {
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

/// Adds a watch of the provisioner's node objects (if it makes any) to `controller`, mapped back to the owner named
/// by their `name_label` and `ns_label` labels: they are cluster-scoped and cannot carry a namespaced owner.
pub fn watch_node_objects<K>(
    controller: Controller<K>,
    ctx: &Context,
    name_label: &'static str,
    ns_label: &'static str,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let Some(kind) = node_kind(ctx.mode) else { return controller };
    let ar = node_resource(kind);
    let api = Api::<DynamicObject>::all_with(ctx.client.clone(), &ar);
    controller.watches_with(api, ar, watcher::Config::default().labels(name_label), move |o: DynamicObject| {
        let labels = o.metadata.labels.unwrap_or_default();
        Some(ObjectRef::<K>::new(labels.get(name_label)?).within(labels.get(ns_label)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_missing_claims_are_created() {
        let planned = vec![json!({"metadata": {"name": "ws1"}}), json!({"metadata": {"name": "ws2"}})];
        let todo = missing(&planned, &["ws1".to_string()]);
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0]["metadata"]["name"], "ws2");
        assert!(missing(&planned, &["ws1".into(), "ws2".into()]).is_empty());
    }

    #[test]
    fn gpu_work_needs_ready_and_gpu_capacity() {
        let node = |ready: &str, gpus: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {
                "conditions": [{"type": "Ready", "status": ready}], "capacity": {"nvidia.com/gpu": gpus}}}))
            .unwrap()
        };
        assert!(node_ready_with_gpus(&node("True", "1")));
        assert!(!node_ready_with_gpus(&node("True", "0")));
        assert!(!node_ready_with_gpus(&node("False", "8")));
        assert!(node_ready(&node("True", "0")));
    }
}
