//! Conditions and state of a Workspace from the objects observed for it.

use crate::nodes::{GPU_RESOURCE, node_ready_with_gpus};
use crate::verdict::Verdict;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

/// Condition types, as KAITO names them.
pub mod types {
    pub const NODE_CLAIM_READY: &str = "NodeClaimReady";
    pub const NODES_READY: &str = "NodesReady";
    pub const RESOURCE_READY: &str = "ResourceReady";
    pub const INFERENCE_READY: &str = "InferenceReady";
    /// A tuning Workspace's Job has started (KAITO's `WorkspaceConditionTypeTuningJobStatus`).
    pub const JOB_STARTED: &str = "JobStarted";
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
    /// A tuning Workspace's Job; `tuning` says the Workspace is one (the Job may not exist yet).
    pub job: Option<&'a Job>,
    pub tuning: bool,
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

/// Where a tuning Job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// Why the Job's last pod failed: its container's termination (the trainer's last log lines, with
/// `FallbackToLogsOnError`), else its status message.
fn failed_pod_detail(pods: &[Pod]) -> Option<String> {
    let failed = pods.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
    let pod = failed.max_by_key(|p| p.metadata.creation_timestamp.clone())?;
    let status = pod.status.as_ref()?;
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    for c in status.container_statuses.iter().flatten() {
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()).filter(|t| t.exit_code != 0) {
            let why = t.message.as_deref().or(t.reason.as_deref()).unwrap_or("").trim();
            let last: String =
                why.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
            return Some(format!("pod {name}: container {} exited with code {}: {last}", c.name, t.exit_code));
        }
    }
    status.message.as_ref().map(|m| format!("pod {name}: {m}"))
}

/// The tuning Job: not made yet, running, done, or failed (with the Job's reason and the failed pod's words).
pub fn tuning_verdict(job: Option<&Job>, pods: &[Pod]) -> (JobPhase, Verdict) {
    let Some(job) = job else {
        return (JobPhase::Pending, Verdict::not("TuningJobPending", "the tuning Job does not exist yet"));
    };
    let status = job.status.clone().unwrap_or_default();
    let condition = |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t && c.status == "True").cloned();
    if let Some(failed) = condition("Failed") {
        let reason = failed.reason.unwrap_or_else(|| "TuningJobFailed".into());
        let mut message = format!("the tuning Job failed: {}", failed.message.unwrap_or_default());
        if let Some(detail) = failed_pod_detail(pods) {
            message = format!("{message} ({detail})");
        }
        return (JobPhase::Failed, Verdict::not(&reason, message));
    }
    if condition("Complete").is_some() || status.succeeded.unwrap_or(0) > 0 {
        return (JobPhase::Succeeded, Verdict::ok("TuningJobSucceeded", "the tuning Job completed"));
    }
    let running = status.active.unwrap_or(0) + status.ready.unwrap_or(0);
    if let Some(problem) = pod_failure(pods) {
        let phase = if running > 0 { JobPhase::Running } else { JobPhase::Pending };
        return (phase, problem);
    }
    if running > 0 {
        let retries = status.failed.unwrap_or(0);
        let again = if retries > 0 {
            format!(" (attempt {}, resuming from its last checkpoint)", retries + 1)
        } else {
            String::new()
        };
        return (JobPhase::Running, Verdict::ok("TuningJobRunning", format!("the tuning Job is running{again}")));
    }
    (JobPhase::Pending, Verdict::not("TuningJobPending", "the tuning Job has not started"))
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
        let workload = if observed.tuning { types::JOB_STARTED } else { types::INFERENCE_READY };
        let conds = [types::RESOURCE_READY, workload, types::WORKSPACE_SUCCEEDED]
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
    if observed.tuning {
        // A Job that exists is reported even when its node has gone: a finished Job stays finished.
        let (phase, job) = if resource.ready || observed.job.is_some() {
            tuning_verdict(observed.job, observed.pods)
        } else {
            (JobPhase::Pending, Verdict::not("WaitingForResources", "the tuning Job starts once the node is Ready"))
        };
        let started = matches!(phase, JobPhase::Running | JobPhase::Succeeded);
        let started_verdict = if started {
            Verdict::ok("TuningJobStarted", "the tuning Job has started")
        } else {
            Verdict { ready: false, ..job.clone() }
        };
        out.push(started_verdict.condition(types::JOB_STARTED, generation, now));
        let succeeded = match phase {
            JobPhase::Succeeded => job.clone(),
            JobPhase::Running if job.ready => Verdict::not("TuningJobRunning", job.message.clone()),
            _ if !resource.ready && observed.job.is_none() => resource.clone(),
            _ => Verdict { ready: false, ..job.clone() },
        };
        out.push(succeeded.condition(types::WORKSPACE_SUCCEEDED, generation, now));
        let state = match phase {
            JobPhase::Pending => "Pending",
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        };
        return (out, state);
    }
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
            count_note: Some(note),
            ..Default::default()
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

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "ws"}, "status": status})).unwrap()
    }

    fn tuning(job: Option<&Job>, pods: &[Pod], ready_node: bool) -> (Vec<Condition>, &'static str) {
        let nodes = [node(ready_node, "1")];
        let observed = Observed { target_nodes: 1, nodes: &nodes, job, tuning: true, pods, ..Default::default() };
        evaluate(&observed, false, Some(1), &now())
    }

    fn get<'a>(conds: &'a [Condition], t: &str) -> &'a Condition {
        conds.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} in {conds:?}"))
    }

    /// KAITO's tuning status flow: Pending until the Job runs, JobStarted while it runs, Succeeded when complete.
    #[test]
    fn tuning_states_follow_the_job() {
        let (conds, state) = tuning(None, &[], false);
        assert_eq!(state, "Pending");
        assert_eq!(get(&conds, types::JOB_STARTED).reason, "WaitingForResources");
        assert_eq!(get(&conds, types::WORKSPACE_SUCCEEDED).reason, "NodesNotReady");
        assert!(conds.iter().all(|c| c.type_ != types::INFERENCE_READY));

        let (conds, state) = tuning(None, &[], true);
        assert_eq!((state, get(&conds, types::JOB_STARTED).reason.as_str()), ("Pending", "TuningJobPending"));

        let running = job(json!({"active": 1, "ready": 1}));
        let (conds, state) = tuning(Some(&running), &[], true);
        assert_eq!(state, "Running");
        assert_eq!(get(&conds, types::JOB_STARTED).status, "True");
        let headline = get(&conds, types::WORKSPACE_SUCCEEDED);
        assert_eq!((headline.status.as_str(), headline.reason.as_str()), ("False", "TuningJobRunning"));

        let retried = job(json!({"active": 1, "failed": 2}));
        let (conds, _) = tuning(Some(&retried), &[], true);
        assert!(get(&conds, types::WORKSPACE_SUCCEEDED).message.contains("attempt 3"), "{conds:?}");

        let done = job(json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}));
        // A finished Job stays finished when its node has gone.
        let (conds, state) = tuning(Some(&done), &[], false);
        assert_eq!(state, "Succeeded");
        assert_eq!(get(&conds, types::WORKSPACE_SUCCEEDED).status, "True");
        assert_eq!(get(&conds, types::JOB_STARTED).status, "True");
    }

    /// A failed Job says why: the Job's reason and the trainer's last words from the failed pod.
    #[test]
    fn a_failed_tuning_job_names_its_reason_and_the_trainers_error() {
        let failed = job(
            json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ws-abc", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "ws", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "loading\nError: /mnt/data/train.jsonl line 3: expected value"}}}]}
        }))
        .unwrap();
        let (conds, state) = tuning(Some(&failed), &[pod], true);
        assert_eq!(state, "Failed");
        for t in [types::JOB_STARTED, types::WORKSPACE_SUCCEEDED] {
            let c = get(&conds, t);
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "BackoffLimitExceeded"), "{t}");
            assert!(c.message.contains("backoff limit") && c.message.contains("exited with code 1"), "{}", c.message);
            assert!(c.message.contains("train.jsonl line 3: expected value"), "{}", c.message);
        }
    }
}
