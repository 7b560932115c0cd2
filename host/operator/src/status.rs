//! Conditions and state of a Workspace from the objects observed for it.

use crate::nodes::{GPU_RESOURCE, node_ready_with_gpus};
use crate::verdict::Verdict;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

/// Condition types, as KAITO names them.
pub mod types {
    pub const NODE_CLAIM_READY: &str = "NodeClaimReady";
    pub const NODES_READY: &str = "NodesReady";
    pub const RESOURCE_READY: &str = "ResourceReady";
    pub const INFERENCE_READY: &str = "InferenceReady";
    pub const WORKSPACE_SUCCEEDED: &str = kaito_crd::SUCCEEDED_CONDITION;
    pub const WORKSPACE_DELETING: &str = "WorkspaceDeleting";
}

#[derive(Debug, Default)]
pub struct Observed<'a> {
    /// Nodes the Workspace needs.
    pub target_nodes: u32,
    /// The Workspace's NodeClaims (empty for BYO and NodePool provisioners).
    pub claims: &'a [Value],
    /// Nodes that carry the Workspace's selector labels.
    pub nodes: &'a [Node],
    pub statefulset: Option<&'a StatefulSet>,
    pub pods: &'a [Pod],
    /// A plan or plugin failure: reason and message (e.g. `PluginTimeout`).
    pub plan_error: Option<(&'a str, &'a str)>,
    /// Why the target node count differs from `resource.count`, told in the ResourceReady message.
    pub count_note: Option<&'a str>,
}

fn json_condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// NodeClaims: all Ready, else the first failing Launched/Registered/Initialized condition.
pub fn claims_verdict(claims: &[Value], target: u32) -> Verdict {
    if (claims.len() as u32) < target {
        return Verdict::not("NodeClaimsMissing", format!("{} of {target} NodeClaims exist", claims.len()));
    }
    for claim in claims {
        let name = claim["metadata"]["name"].as_str().unwrap_or("?");
        if json_condition(claim, "Ready").is_some_and(|c| c["status"] == "True") {
            continue;
        }
        for step in ["Launched", "Registered", "Initialized"] {
            match json_condition(claim, step) {
                Some(c) if c["status"] == "True" => continue,
                Some(c) => {
                    let why = c["message"].as_str().or_else(|| c["reason"].as_str()).unwrap_or("no message");
                    return Verdict::not(
                        &format!("NodeClaimNot{step}"),
                        format!("NodeClaim {name} is not {}: {why}", step.to_lowercase()),
                    );
                }
                None => {
                    return Verdict::not(
                        &format!("NodeClaimNot{step}"),
                        format!("NodeClaim {name} is not {} yet", step.to_lowercase()),
                    );
                }
            }
        }
        return Verdict::not("NodeClaimNotReady", format!("NodeClaim {name} is not Ready"));
    }
    Verdict::ok("NodeClaimsReady", format!("{} NodeClaim(s) Ready", claims.len()))
}

/// Nodes: enough Ready nodes that report GPU capacity.
pub fn nodes_verdict(nodes: &[Node], target: u32) -> Verdict {
    let ready = nodes.iter().filter(|n| node_ready_with_gpus(n)).count() as u32;
    if ready >= target {
        Verdict::ok("NodesReady", format!("{ready} node(s) Ready with {GPU_RESOURCE} capacity"))
    } else {
        let without_gpu = nodes.iter().filter(|n| !node_ready_with_gpus(n)).count();
        Verdict::not(
            "NodesNotReady",
            format!(
                "{ready} of {target} node(s) Ready with {GPU_RESOURCE} capacity ({without_gpu} selected node(s) not Ready or without GPUs yet)"
            ),
        )
    }
}

/// Why the pods are failing, if they are: the first container-level or scheduling failure found.
pub fn pod_failure(pods: &[Pod]) -> Option<Verdict> {
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let Some(status) = &pod.status else { continue };
        if status.reason.as_deref() == Some("Evicted") {
            return Some(Verdict::not(
                "PodEvicted",
                format!("pod {name} was evicted: {}", status.message.as_deref().unwrap_or("")),
            ));
        }
        for c in status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten()) {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            let terminated = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| c.state.as_ref().and_then(|s| s.terminated.as_ref()));
            let wait_reason = waiting.and_then(|w| w.reason.as_deref());
            if matches!(wait_reason, Some("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName")) {
                let msg = waiting.and_then(|w| w.message.as_deref()).unwrap_or("");
                return Some(Verdict::not("ImagePullError", format!("pod {name} cannot pull {}: {msg}", c.image)));
            }
            if terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
                return Some(Verdict::not(
                    "ContainerOOMKilled",
                    format!("container {} in pod {name} was killed for using too much memory", c.name),
                ));
            }
            if wait_reason == Some("CrashLoopBackOff") {
                let code = terminated.map(|t| t.exit_code).unwrap_or_default();
                return Some(Verdict::not(
                    "ContainerCrashLoopBackOff",
                    format!("container {} in pod {name} keeps crashing (last exit code {code})", c.name),
                ));
            }
        }
        for cond in status.conditions.iter().flatten() {
            if cond.type_ == "PodScheduled" && cond.status == "False" && cond.reason.as_deref() == Some("Unschedulable")
            {
                return Some(Verdict::not(
                    "Unschedulable",
                    format!("pod {name} cannot be scheduled: {}", cond.message.as_deref().unwrap_or("")),
                ));
            }
        }
    }
    None
}

/// Inference: the StatefulSet controller has seen the current spec, every replica runs its current revision and is
/// Ready; else why not. Ready replicas alone are not enough: right after a spec change they are the old pods.
pub fn inference_verdict(statefulset: Option<&StatefulSet>, pods: &[Pod]) -> Verdict {
    let Some(sts) = statefulset else {
        return Verdict::not("StatefulSetMissing", "the inference StatefulSet does not exist yet");
    };
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = sts.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let waiting = if status.observed_generation < sts.metadata.generation {
        Verdict::not(
            "RolloutInProgress",
            format!("the StatefulSet controller has not yet seen generation {}", sts.metadata.generation.unwrap_or(0)),
        )
    } else if updated < want || status.current_revision != status.update_revision {
        Verdict::not(
            "RolloutInProgress",
            format!(
                "rolling out revision {}: {updated}/{want} replica(s) updated, {ready} Ready",
                status.update_revision.as_deref().unwrap_or("?")
            ),
        )
    } else if ready >= want {
        return Verdict::ok("InferenceReady", format!("{ready}/{want} replica(s) Ready"));
    } else {
        Verdict::not("InferenceNotReady", format!("{ready}/{want} replica(s) Ready"))
    };
    pod_failure(pods).unwrap_or(waiting)
}

/// NodeClaims (when the provisioner makes them), nodes, and the resource verdict they add up to.
fn resource_verdicts(
    claims: &[Value],
    nodes: &[Node],
    target: u32,
    uses_claims: bool,
) -> (Option<Verdict>, Verdict, Verdict) {
    let claims = uses_claims.then(|| claims_verdict(claims, target));
    let nodes = nodes_verdict(nodes, target);
    let resource = match (&claims, nodes.ready) {
        (Some(c), _) if !c.ready => c.clone(),
        (_, false) => nodes.clone(),
        _ => Verdict::ok("ResourcesReady", "nodes are provisioned and Ready"),
    };
    (claims, nodes, resource)
}

/// Resources: the NodeClaims (if used) and enough GPU nodes Ready; the workload waits for this.
pub fn resource_verdict(claims: &[Value], nodes: &[Node], target: u32, uses_claims: bool) -> Verdict {
    resource_verdicts(claims, nodes, target, uses_claims).2
}

/// All conditions and the state for one observation. `now` stamps the
/// transition time; callers keep the old stamp when a condition's status did
/// not change.
pub fn evaluate(
    observed: &Observed<'_>,
    uses_claims: bool,
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, &'static str) {
    if let Some((reason, message)) = observed.plan_error {
        let v = Verdict::not(reason, message);
        let conds = [types::RESOURCE_READY, types::INFERENCE_READY, types::WORKSPACE_SUCCEEDED]
            .map(|t| v.condition(t, generation, now))
            .to_vec();
        return (conds, "Failed");
    }
    let mut out = Vec::new();
    let (claims, nodes, mut resource) =
        resource_verdicts(observed.claims, observed.nodes, observed.target_nodes, uses_claims);
    if let Some(note) = observed.count_note {
        resource.message = format!("{} ({note})", resource.message);
    }
    if let Some(c) = &claims {
        out.push(c.condition(types::NODE_CLAIM_READY, generation, now));
    }
    out.push(nodes.condition(types::NODES_READY, generation, now));
    out.push(resource.condition(types::RESOURCE_READY, generation, now));
    let inference = if resource.ready {
        inference_verdict(observed.statefulset, observed.pods)
    } else {
        Verdict::not("WaitingForResources", "inference starts once the nodes are Ready")
    };
    out.push(inference.condition(types::INFERENCE_READY, generation, now));
    // The headline names what blocks the Workspace: the resource step while nodes are missing.
    let succeeded = if inference.ready {
        Verdict::ok("WorkspaceSucceeded", "the inference endpoint is serving")
    } else if !resource.ready {
        resource.clone()
    } else {
        inference.clone()
    };
    out.push(succeeded.condition(types::WORKSPACE_SUCCEEDED, generation, now));
    let state = match (resource.ready, inference.ready) {
        (true, true) => "Ready",
        (true, false)
            if !["InferenceNotReady", "StatefulSetMissing", "RolloutInProgress"]
                .contains(&inference.reason.as_str()) =>
        {
            "NotReady"
        }
        (true, false) => "Running",
        _ => "Pending",
    };
    (out, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    fn node(ready: bool, gpus: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}], "capacity": {"nvidia.com/gpu": gpus}}
        }))
        .unwrap()
    }

    fn claim(conditions: Value) -> Value {
        json!({"metadata": {"name": "ws0123456789"}, "status": {"conditions": conditions}})
    }

    fn sts(replicas: i32, ready: i32) -> StatefulSet {
        serde_json::from_value(json!({"spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "x"}, "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "currentRevision": "r1", "updateRevision": "r1"}})).unwrap()
    }

    #[test]
    fn ready_only_after_the_rollout_completes() {
        let rolling = |generation: i64, status: Value| -> StatefulSet {
            serde_json::from_value(json!({"metadata": {"generation": generation}, "spec": {"replicas": 1, "selector": {}, "template": {}, "serviceName": "x"}, "status": status})).unwrap()
        };
        // The apply response right after a spec change: the old pod is still Ready.
        let unseen = rolling(
            2,
            json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "a"}),
        );
        assert_eq!(inference_verdict(Some(&unseen), &[]).reason, "RolloutInProgress");
        let rolling_out = rolling(
            2,
            json!({"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 0, "currentRevision": "a", "updateRevision": "b"}),
        );
        let v = inference_verdict(Some(&rolling_out), &[]);
        assert_eq!((v.ready, v.reason.as_str()), (false, "RolloutInProgress"));
        assert!(v.message.contains("0/1 replica(s) updated"), "{}", v.message);
        let done = rolling(
            2,
            json!({"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "b", "updateRevision": "b"}),
        );
        assert!(inference_verdict(Some(&done), &[]).ready);
    }

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "ws-0"}, "status": status})).unwrap()
    }

    #[test]
    fn claim_reason_is_the_first_failing_step() {
        let c = claim(
            json!([{"type": "Launched", "status": "True"}, {"type": "Registered", "status": "False", "message": "node did not join"}]),
        );
        let v = claims_verdict(&[c], 1);
        assert_eq!(v.reason, "NodeClaimNotRegistered");
        assert!(v.message.contains("node did not join"), "{}", v.message);
        assert_eq!(claims_verdict(&[], 2).reason, "NodeClaimsMissing");
    }

    #[test]
    fn nodes_need_ready_and_gpu_capacity_to_count() {
        assert!(nodes_verdict(&[node(true, "1")], 1).ready);
        assert!(!nodes_verdict(&[node(true, "0")], 1).ready);
        assert!(!nodes_verdict(&[node(false, "8")], 1).ready);
    }

    #[test]
    fn pod_failures_name_the_real_cause() {
        let image = pod(
            json!({"containerStatuses": [{"name": "ws", "image": "x/y:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}),
        );
        assert_eq!(pod_failure(&[image]).unwrap().reason, "ImagePullError");
        let oom = pod(
            json!({"containerStatuses": [{"name": "ws", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
        );
        assert_eq!(pod_failure(&[oom]).unwrap().reason, "ContainerOOMKilled");
        let crash = pod(
            json!({"containerStatuses": [{"name": "ws", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]}),
        );
        let v = pod_failure(&[crash]).unwrap();
        assert_eq!(v.reason, "ContainerCrashLoopBackOff");
        assert!(v.message.contains("exit code 1"));
        let pending = pod(
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have nvidia.com/gpu"}]}),
        );
        assert_eq!(pod_failure(&[pending]).unwrap().reason, "Unschedulable");
        assert!(pod_failure(&[pod(json!({"phase": "Running"}))]).is_none());
    }

    #[test]
    fn lifecycle_of_conditions_and_state() {
        let ready_claim = claim(json!([{"type": "Ready", "status": "True"}]));
        let nodes = [node(true, "1")];
        let waiting = Observed { target_nodes: 1, claims: &[], ..Default::default() };
        let (conds, state) = evaluate(&waiting, true, Some(1), &now());
        assert_eq!(state, "Pending");
        assert_eq!(conds.iter().find(|c| c.type_ == types::RESOURCE_READY).unwrap().reason, "NodeClaimsMissing");

        let claims = [ready_claim];
        let s = sts(1, 0);
        let crash = [pod(
            json!({"containerStatuses": [{"name": "ws", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
        )];
        let failing = Observed {
            target_nodes: 1,
            claims: &claims,
            nodes: &nodes,
            statefulset: Some(&s),
            pods: &crash,
            ..Default::default()
        };
        let (conds, state) = evaluate(&failing, true, Some(1), &now());
        assert_eq!(state, "NotReady");
        assert_eq!(
            conds.iter().find(|c| c.type_ == types::INFERENCE_READY).unwrap().reason,
            "ContainerCrashLoopBackOff"
        );

        let s = sts(1, 1);
        let note = "resource.count 4 is not used: the estimator sizes phi-4 to 1 node(s), as KAITO does";
        let serving = Observed {
            target_nodes: 1,
            claims: &claims,
            nodes: &nodes,
            statefulset: Some(&s),
            pods: &[],
            plan_error: None,
            count_note: Some(note),
        };
        let (conds, state) = evaluate(&serving, true, Some(1), &now());
        assert_eq!(state, "Ready");
        assert!(conds.iter().all(|c| c.status == "True"), "{conds:?}");
        assert_eq!(conds.len(), 5);
        let resource = conds.iter().find(|c| c.type_ == types::RESOURCE_READY).unwrap();
        assert!(
            resource.message.ends_with(&format!("({note})")),
            "the status says the count was changed: {}",
            resource.message
        );

        let (conds, _) = evaluate(
            &Observed { target_nodes: 1, nodes: &nodes, statefulset: Some(&s), ..Default::default() },
            false,
            None,
            &now(),
        );
        assert!(conds.iter().all(|c| c.type_ != types::NODE_CLAIM_READY), "BYO has no NodeClaimReady");

        let broken = Observed {
            plan_error: Some(("PluginTimeout", "plugin preset-phi ran past its 1s deadline")),
            ..Default::default()
        };
        let (conds, state) = evaluate(&broken, true, Some(2), &now());
        assert_eq!(state, "Failed");
        assert!(conds.iter().all(|c| c.reason == "PluginTimeout" && c.status == "False"));
    }
}
