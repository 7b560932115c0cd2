//! The Workspace controller over the in-memory cluster (`tests/cluster.rs`):
//! whole lifecycles driven by calling `reconcile` as the Controller would,
//! with Karpenter and the kubelet played by the harness in between.

use kaito_crd::Workspace;
use kaito_operator::Context;
use kaito_tests::cluster::{Cluster, GPUS_PER_NODE, paths};
use kaito_tests::{operator_context, root, shipped_registry, yaml};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::Arc;

async fn reconcile(cluster: &Cluster, ctx: &Arc<Context>, ns: &str, name: &str) -> Action {
    kaito_tests::reconcile_as_controller::<Workspace>(cluster, ctx, paths::WORKSPACES, ns, name).await
}

fn workspace(cluster: &Cluster, name: &str) -> Value {
    cluster.get(paths::WORKSPACES, "default", name).expect("workspace exists")
}

/// `(status, reason)` of one condition.
fn condition(ws: &Value, kind: &str) -> (String, String) {
    let c = ws["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {:#}", ws["status"]));
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

fn state(ws: &Value) -> &str {
    ws["status"]["state"].as_str().unwrap_or("")
}

fn seed() -> Value {
    yaml(&std::fs::read_to_string(root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml")).unwrap())
}

fn writes(cluster: &Cluster) -> Vec<String> {
    cluster.requests().into_iter().filter(|r| !r.starts_with("GET ")).collect()
}

#[tokio::test]
async fn gpu_provisioner_lifecycle_from_creation_to_deletion() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    let name = "workspace-phi-3-5-mini";
    cluster.create(paths::WORKSPACES, seed());

    // Created: finalizer, one NodeClaim, waiting for Karpenter.
    let action = reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(action, Action::requeue(ctx.config.poll));
    let ws = workspace(&cluster, name);
    assert_eq!(ws["metadata"]["finalizers"], json!(["workspace.finalizer.kaito.sh"]));
    let claims = cluster.list(paths::NODECLAIMS);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["labels"]["kaito.sh/workspace"], name);
    assert_eq!(state(&ws), "Pending");
    assert_eq!(condition(&ws, "NodeClaimReady"), ("False".into(), "NodeClaimNotLaunched".into()));
    assert_eq!(ws["status"]["targetNodeCount"], 1);
    assert!(cluster.list(paths::STATEFULSETS).is_empty(), "no workload before the nodes are Ready");

    // A second look creates nothing new.
    cluster.clear_requests();
    reconcile(&cluster, &ctx, "default", name).await;
    assert!(writes(&cluster).is_empty(), "an unchanged Workspace writes nothing: {:?}", writes(&cluster));
    assert_eq!(cluster.list(paths::NODECLAIMS).len(), 1);

    // Nodes appear Ready: the workload is applied, inference not yet Ready (as on a real server, the StatefulSet
    // controller has not yet reported on the new StatefulSet).
    assert_eq!(cluster.provision(GPUS_PER_NODE), 1);
    reconcile(&cluster, &ctx, "default", name).await;
    let ws = workspace(&cluster, name);
    assert_eq!(condition(&ws, "ResourceReady").0, "True");
    assert_eq!(condition(&ws, "InferenceReady"), ("False".into(), "RolloutInProgress".into()));
    assert_eq!(state(&ws), "Running");
    assert_eq!(ws["status"]["workerNodes"], json!([claims[0]["metadata"]["name"]]));
    let sts = cluster.get(paths::STATEFULSETS, "default", name).expect("StatefulSet applied");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], ws["metadata"]["uid"]);
    assert!(cluster.get(paths::SERVICES, "default", name).is_some());
    assert!(cluster.get(paths::SERVICES, "default", &format!("{name}-headless")).is_some());

    // Pods Ready: succeeded; the Ready requeue is the slow resync.
    cluster.run_pods();
    let action = reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(action, Action::requeue(ctx.config.resync));
    let ws = workspace(&cluster, name);
    assert_eq!(state(&ws), "Ready");
    for kind in ["NodeClaimReady", "NodesReady", "ResourceReady", "InferenceReady", "WorkspaceSucceeded"] {
        assert_eq!(condition(&ws, kind).0, "True", "{kind}");
    }
    assert_eq!(ctx.metrics.count_in_state("Ready"), 1);
    let events: Vec<String> =
        cluster.list(paths::EVENTS).iter().map(|e| e["reason"].as_str().unwrap_or("").to_string()).collect();
    assert!(events.contains(&"NodeClaimCreated".into()) && events.contains(&"WorkspaceSucceeded".into()), "{events:?}");

    // A crash shows its real cause, then recovers.
    cluster.crash_pods("default", name, "OOMKilled");
    reconcile(&cluster, &ctx, "default", name).await;
    let ws = workspace(&cluster, name);
    assert_eq!(condition(&ws, "WorkspaceSucceeded"), ("False".into(), "ContainerOOMKilled".into()));
    assert_eq!(state(&ws), "NotReady");
    assert!(cluster.list(paths::EVENTS).iter().any(|e| e["reason"] == "ContainerOOMKilled" && e["type"] == "Warning"));
    cluster.run_pods();
    for pod in cluster.list(paths::PODS) {
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
        cluster.edit(paths::PODS, "default", &pod_name, json!({"status": {"containerStatuses": null}}));
    }
    reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(state(&workspace(&cluster, name)), "Ready");

    // Spec change: a new revision rolls the pod template; the NodeClaim stays.
    let before = cluster.get(paths::STATEFULSETS, "default", name).unwrap();
    let revision =
        |sts: &Value| sts["spec"]["template"]["metadata"]["annotations"]["workspace.kaito.io/revision"].clone();
    cluster.edit(paths::WORKSPACES, "default", name, json!({"inference": {"config": "my-inference-params"}}));
    cluster.clear_requests();
    reconcile(&cluster, &ctx, "default", name).await;
    let after = cluster.get(paths::STATEFULSETS, "default", name).unwrap();
    assert_ne!(revision(&before), revision(&after));
    assert!(revision(&after).as_str().unwrap().starts_with(name));
    assert!(!writes(&cluster).iter().any(|r| r.contains("nodeclaims")), "{:?}", writes(&cluster));
    assert_eq!(cluster.list(paths::NODECLAIMS).len(), 1);

    // Delete: NodeClaims go first, then the finalizer; owned objects follow the Workspace.
    cluster.delete(paths::WORKSPACES, "default", name);
    assert!(workspace(&cluster, name)["metadata"]["deletionTimestamp"].is_string());
    let action = reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(action, Action::requeue(ctx.config.poll), "waits for the NodeClaim to go");
    assert_eq!(condition(&workspace(&cluster, name), "WorkspaceDeleting").0, "True");
    assert!(cluster.list(paths::NODECLAIMS).is_empty());
    assert!(cluster.list(paths::NODES).is_empty(), "Karpenter removed the node with its claim");
    let action = reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(action, Action::await_change());
    assert!(cluster.get(paths::WORKSPACES, "default", name).is_none(), "finalizer removed, Workspace gone");
    assert!(cluster.list(paths::STATEFULSETS).is_empty() && cluster.list(paths::SERVICES).is_empty());
    assert_eq!(ctx.metrics.count_in_state("Ready"), 0);
}

#[tokio::test]
async fn bring_your_own_nodes_lifecycle() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "byo");
    let name = "workspace-phi-3-5-mini";
    // Bring-your-own nodes take no instance type (KAITO's webhook refuses one with auto-provisioning off).
    let mut ws = seed();
    ws["resource"].as_object_mut().unwrap().remove("instanceType");
    cluster.create(paths::WORKSPACES, ws);

    // No labelled node yet: a condition says so, and the operator retries.
    let action = reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(action, Action::requeue(ctx.config.retry));
    let ws = workspace(&cluster, name);
    assert_eq!(state(&ws), "Failed");
    let (status, reason) = condition(&ws, "WorkspaceSucceeded");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidWorkspace"));
    assert!(cluster.list(paths::NODECLAIMS).is_empty());

    cluster.add_node(
        "gpu-node-1",
        json!({"apps": "phi-3-5", "nvidia.com/gpu.product": "NVIDIA-A100-PCIE-80GB", "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "81920"}),
        1,
    );
    reconcile(&cluster, &ctx, "default", name).await;
    let ws = workspace(&cluster, name);
    assert!(ws["status"]["conditions"].as_array().unwrap().iter().all(|c| c["type"] != "NodeClaimReady"));
    assert_eq!(condition(&ws, "ResourceReady").0, "True", "{:#}", ws["status"]);
    assert_eq!(ws["status"]["workerNodes"], json!(["gpu-node-1"]));
    cluster.run_pods();
    reconcile(&cluster, &ctx, "default", name).await;
    assert_eq!(state(&workspace(&cluster, name)), "Ready");

    cluster.delete(paths::WORKSPACES, "default", name);
    cluster.clear_requests();
    assert_eq!(reconcile(&cluster, &ctx, "default", name).await, Action::await_change());
    assert!(cluster.get(paths::WORKSPACES, "default", name).is_none());
    assert!(!cluster.requests().iter().any(|r| r.contains("karpenter")), "BYO never touches Karpenter objects");
    assert_eq!(cluster.list(paths::NODES).len(), 1, "a BYO node is the user's and stays");
}

#[tokio::test]
async fn karpenter_plans_one_nodepool() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "karpenter");
    let name = "workspace-llama-3-3-70b";
    cluster.create(
        paths::WORKSPACES,
        yaml(&std::fs::read_to_string(root().join("tests/fixtures/llama-3.3-70b-aws.yaml")).unwrap()),
    );
    let ns = "models";
    reconcile(&cluster, &ctx, ns, name).await;
    let pools = cluster.list(paths::NODEPOOLS);
    assert_eq!(pools.len(), 1, "one NodePool per Workspace");
    assert!(cluster.list(paths::NODECLAIMS).is_empty());
    cluster.provision(8);
    reconcile(&cluster, &ctx, ns, name).await;
    cluster.run_pods();
    reconcile(&cluster, &ctx, ns, name).await;
    let ws = cluster.get(paths::WORKSPACES, ns, name).unwrap();
    assert_eq!(state(&ws), "Ready", "{:#}", ws["status"]);
    cluster.delete(paths::WORKSPACES, ns, name);
    reconcile(&cluster, &ctx, ns, name).await;
    assert!(cluster.list(paths::NODEPOOLS).is_empty());
    reconcile(&cluster, &ctx, ns, name).await;
    assert!(cluster.get(paths::WORKSPACES, ns, name).is_none());
}

#[tokio::test]
async fn bad_workspaces_get_conditions_not_crashes() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    let mut unknown = seed();
    unknown["metadata"]["name"] = json!("unknown-preset");
    unknown["inference"]["preset"]["name"] = json!("phi-3.5-mini-instruc");
    cluster.create(paths::WORKSPACES, unknown);
    let action = reconcile(&cluster, &ctx, "default", "unknown-preset").await;
    assert_eq!(action, Action::requeue(ctx.config.retry));
    let ws = workspace(&cluster, "unknown-preset");
    let c = ws["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "WorkspaceSucceeded").unwrap();
    assert_eq!(c["status"], "False");
    assert!(c["message"].as_str().unwrap().contains("phi-3.5-mini-instruct"), "names the close preset: {c}");
    assert!(
        cluster
            .list(paths::EVENTS)
            .iter()
            .any(|e| e["type"] == "Warning" && e["regarding"]["name"] == "unknown-preset")
    );
    assert!(cluster.list(paths::NODECLAIMS).is_empty(), "nothing provisioned for a Workspace that cannot run");

    let mut both = seed();
    both["metadata"]["name"] = json!("no-selector");
    both["resource"]["labelSelector"] = Value::Null;
    cluster.create(paths::WORKSPACES, both);
    assert_eq!(reconcile(&cluster, &ctx, "default", "no-selector").await, Action::await_change());
    let ws = workspace(&cluster, "no-selector");
    assert_eq!(condition(&ws, "WorkspaceSucceeded").1, "InvalidWorkspace");
    let message = ws["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("resource.labelSelector"), "{message}");
}

#[tokio::test]
async fn a_trapping_plugin_is_quarantined_and_the_rest_keep_serving() {
    let host = kaito_plugin_host::PluginHost::new(kaito_plugin_host::HostConfig {
        cache_dir: Some(kaito_tests::shared_cache().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let mut registry = kaito_plugin_host::Registry::default();
    for file in [
        "presets-wasm/dist/preset-phi.wasm",
        "plugins/dist/provisioner-azure.wasm",
        "plugins/fixtures/dist/hostile-trap.wasm",
    ] {
        registry.add(host.load_file(&root().join(file), None).expect("loads"));
    }
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, Arc::new(registry), "gpu-provisioner");
    let mut hostile = seed();
    hostile["metadata"]["name"] = json!("hostile");
    hostile["inference"]["preset"]["name"] = json!("hostile-trap");
    cluster.create(paths::WORKSPACES, hostile);
    cluster.create(paths::WORKSPACES, seed());

    assert_eq!(reconcile(&cluster, &ctx, "default", "hostile").await, Action::requeue(ctx.config.retry));
    assert_eq!(condition(&workspace(&cluster, "hostile"), "WorkspaceSucceeded").1, "PluginTrap");
    reconcile(&cluster, &ctx, "default", "hostile").await;
    let ws = workspace(&cluster, "hostile");
    assert_eq!(condition(&ws, "WorkspaceSucceeded").1, "PluginQuarantined", "later calls fail fast");
    assert_eq!(state(&ws), "Failed");
    assert!(cluster.list(paths::EVENTS).iter().any(|e| e["reason"] == "PluginTrap" && e["type"] == "Warning"));

    reconcile(&cluster, &ctx, "default", "workspace-phi-3-5-mini").await;
    cluster.provision(GPUS_PER_NODE);
    reconcile(&cluster, &ctx, "default", "workspace-phi-3-5-mini").await;
    cluster.run_pods();
    reconcile(&cluster, &ctx, "default", "workspace-phi-3-5-mini").await;
    assert_eq!(state(&workspace(&cluster, "workspace-phi-3-5-mini")), "Ready");
    assert_eq!(cluster.list(paths::NODECLAIMS).len(), 1, "nothing was provisioned for the hostile Workspace");
}

/// Every field of `want` is in `live` with the same value (the API server adds its own fields).
fn contained(want: &Value, live: &Value, path: &str) {
    match (want, live) {
        (Value::Object(w), Value::Object(l)) => {
            for (k, v) in w {
                contained(v, l.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(want, live, "{path} differs between `kaito render` and the operator"),
    }
}

#[tokio::test]
async fn kaito_render_and_the_operator_make_the_same_objects() {
    let file = root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml");
    let run = kaito_tests::kaito(&["render", "-f", file.to_str().unwrap()], kaito_tests::shared_cache());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rendered: Vec<Value> = run.stdout.split("---\n").filter(|d| !d.trim().is_empty()).map(yaml).collect();
    assert_eq!(rendered.len(), 4, "NodeClaim, Service, headless Service, StatefulSet");

    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    let name = "workspace-phi-3-5-mini";
    cluster.create(paths::WORKSPACES, seed());
    reconcile(&cluster, &ctx, "default", name).await;
    cluster.provision(GPUS_PER_NODE);
    reconcile(&cluster, &ctx, "default", name).await;
    for doc in &rendered {
        let n = doc["metadata"]["name"].as_str().unwrap();
        let live = match doc["kind"].as_str().unwrap() {
            "NodeClaim" => cluster.get(paths::NODECLAIMS, "", n),
            "Service" => cluster.get(paths::SERVICES, "default", n),
            "StatefulSet" => cluster.get(paths::STATEFULSETS, "default", n),
            other => panic!("unexpected kind {other}"),
        };
        contained(doc, &live.unwrap_or_else(|| panic!("{n} was not created")), n);
    }
}
