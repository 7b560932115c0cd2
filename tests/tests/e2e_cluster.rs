//! End-to-end tests on the real local control plane (`cargo xtask cluster up`: kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler, KWOK nodes; `kwok-provisioner` stands in for the cloud). The charts are
//! installed with real `helm` by the README's commands, files applied with real `kubectl`, and the real
//! `kaito-operator` binary runs as the chart's ServiceAccount, so the chart's RBAC is what the API server enforces.
//! Without a cluster these tests fail, unless `KAITO_E2E=local-only` says the run is local-only.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kaito_crd::{RAGEngine, Workspace};
use kaito_tests::e2e::{self, Operator, SYSTEM_NAMESPACE, sh, sh_ok, wait_for};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::path::Path;

const WORKSPACE_DEPLOYMENT: &str = "kaito-workspace-kaito-operator";
const RAGENGINE_DEPLOYMENT: &str = "kaito-ragengine-kaito-ragengine";
const WORKSPACE_LEASE: &str = "kaito-workspace-kaito-operator-leader";

fn karpenter(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("karpenter.sh", "v1", kind), plural)
}

/// The value of `column` for `name` in `kubectl get <resource>` (the CRD's printer columns).
fn column(kubeconfig: &Path, resource: &str, namespace: &str, name: &str, column: &str) -> Option<String> {
    let out = sh(kubeconfig, &format!("kubectl get {resource} {name} -n {namespace}"));
    if !out.ok {
        return None;
    }
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let index = header.iter().position(|h| h.eq_ignore_ascii_case(column))?;
    // Empty cells collapse in a whitespace split: read the cell at the header's character offset instead.
    let header_line = out.stdout.lines().next()?;
    let start = header_line.find(header[index])?;
    let row = lines.next()?;
    let cell = row.get(start..)?.split_whitespace().next()?.to_string();
    Some(cell)
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

fn condition(ws: &Workspace, type_: &str) -> Option<(String, Option<i64>, String)> {
    let c = ws.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.observed_generation, c.reason.clone()))
}

async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE).get_opt(name).await.ok()??;
    lease.spec?.holder_identity
}

/// No request of the chart's ServiceAccounts was denied, and no operator logged a 403.
fn assert_no_forbidden(kubeconfig: &Path, operators: &[&Operator]) {
    let denied = e2e::forbidden_requests(kubeconfig, SYSTEM_NAMESPACE);
    assert!(denied.is_empty(), "the API server denied requests of the chart's ServiceAccounts:\n{}", denied.join("\n"));
    for op in operators {
        let log = op.log_text();
        // kube's error text: `code: 403` with reason `Forbidden` (a bare "403" also matches timestamps and uids).
        assert!(
            !log.contains("code: 403") && !log.contains("Forbidden"),
            "operator {} logged a 403:\n{log}",
            op.identity
        );
    }
}

/// Waits until `name`'s NodeClaims (or NodePools) and then the Workspace itself are gone, and checks that the
/// real garbage collector removed the StatefulSet and Services it owned.
async fn assert_deleted(client: &Client, ns: &str, name: &str) {
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("Workspace {name} to be gone"), 90, async || {
        workspaces.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    let selector = format!("kaito.sh/workspace={name},kaito.sh/workspacenamespace={ns}");
    for (kind, plural) in [("NodeClaim", "nodeclaims"), ("NodePool", "nodepools")] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter(kind, plural));
        let left = api.list(&ListParams::default().labels(&selector)).await.unwrap().items;
        assert!(
            left.is_empty(),
            "{kind}s of {name} left after the Workspace was deleted: {:?}",
            left.iter().map(|o| o.name_any()).collect::<Vec<_>>()
        );
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("the garbage collector to remove {name}'s StatefulSet and Services"), 60, async || {
        let sts = statefulsets.get_opt(name).await.ok()?;
        let svc = services.list(&ListParams::default().labels(&format!("kaito.sh/workspace={name}"))).await.ok()?;
        (sts.is_none() && svc.items.is_empty()).then_some(())
    })
    .await;
}

/// Waits for `kubectl get workspace` to show WorkspaceSucceeded True and returns the Workspace.
/// A request the chart's RBAC denies fails the test at once, naming the request, instead of a timeout.
async fn wait_succeeded(kubeconfig: &Path, client: &Client, ns: &str, name: &str, secs: u64) -> Workspace {
    let mut polls = 0u32;
    wait_for(&format!("`kubectl get workspace {name}` to show WorkspaceSucceeded True"), secs, async || {
        polls += 1;
        if polls.is_multiple_of(8) {
            let denied = e2e::forbidden_requests(kubeconfig, SYSTEM_NAMESPACE);
            assert!(denied.is_empty(), "the chart's RBAC denied:\n{}", denied.join("\n"));
        }
        (column(kubeconfig, "workspace", ns, name, "WorkspaceSucceeded")? == "True").then_some(())
    })
    .await;
    Api::<Workspace>::namespaced(client.clone(), ns).get(name).await.unwrap()
}

/// The README's Install with Helm commands, word for word, then the gpu-provisioner lifecycle of its Workspace:
/// NodeClaim → KWOK node → StatefulSet → Running pod → WorkspaceSucceeded; a spec change rolls the StatefulSet
/// and the Workspace is not Ready until the rollout is done; the leader is killed and the other replica takes
/// over; an operator killed mid-reconcile and restarted makes no duplicate NodeClaims; delete cleans up.
#[tokio::test]
async fn readme_install_and_gpu_provisioner_lifecycle() {
    let Some(env) = e2e::Env::start("readme_install_and_gpu_provisioner_lifecycle").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    sh_ok(kc, "kubectl wait --for=condition=Established crd/workspaces.kaito.sh crd/ragengines.kaito.sh --timeout=60s");

    let mut a = Operator::start(kc, WORKSPACE_DEPLOYMENT, "operator-a", &[]).await;
    let mut b = Operator::start(kc, WORKSPACE_DEPLOYMENT, "operator-b", &[]).await;
    let apply = e2e::readme_apply("workspace");
    sh_ok(kc, &apply);
    let name = "workspace-phi-3-5-mini";
    let ws = wait_succeeded(kc, client, "default", name, 120).await;
    assert_eq!(column(kc, "workspace", "default", name, "Instance").as_deref(), Some("Standard_NC24ads_A100_v4"));
    assert_eq!(column(kc, "workspace", "default", name, "State").as_deref(), Some("Ready"));

    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    let selector = format!("kaito.sh/workspace={name}");
    let mine = claims.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    let target = ws.status.as_ref().unwrap().target_node_count.unwrap() as usize;
    assert_eq!(mine.len(), target, "one NodeClaim per target node");
    let node_name = mine[0].data["status"]["nodeName"].as_str().unwrap().to_string();
    let node = Api::<Node>::all(client.clone()).get(&node_name).await.unwrap();
    assert_eq!(node.labels().get("apps").map(String::as_str), Some("phi-3-5"));
    assert_eq!(ws.status.as_ref().unwrap().worker_nodes.as_deref(), Some(&[node_name.clone()][..]));
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "default").get(name).await.unwrap();
    assert_eq!(sts.owner_references()[0].kind, "Workspace");
    let pods = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    assert!(!pods.is_empty());
    for pod in &pods {
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(node_name.as_str()),
            "scheduled on the Workspace's node"
        );
        assert_eq!(pod.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }
    let leader = lease_holder(client, WORKSPACE_LEASE).await.expect("a Lease holder");
    assert!(leader == "operator-a" || leader == "operator-b", "leader {leader}");

    // A spec change rolls the StatefulSet; every status written for the new generation says not Ready until the
    // StatefulSet controller reports the rollout complete. A watch sees every version of the Workspace.
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), "default");
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let old_revision = sts.status.as_ref().and_then(|s| s.current_revision.clone());
    let (tx, mut versions) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(workspaces.clone(), config).applied_objects().for_each(move |ws| {
            let _ = tx.send(ws);
            async {}
        })
    });
    versions.recv().await.expect("the watch lists the Workspace").expect("watch");
    let changed = workspaces
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"inference": {"config": "phi-config"}})))
        .await
        .unwrap();
    let generation = changed.metadata.generation;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let ws = tokio::time::timeout_at(deadline, versions.recv())
            .await
            .expect("the Workspace to be Ready at its new generation within 120 s")
            .expect("watch open")
            .expect("watch event");
        let Some((status, observed, reason)) = condition(&ws, "WorkspaceSucceeded") else { continue };
        if observed != generation || status != "True" {
            continue;
        }
        let sts = statefulsets.get(name).await.unwrap();
        let st = sts.status.clone().unwrap_or_default();
        let rolled = st.observed_generation >= sts.metadata.generation
            && st.update_revision.is_some()
            && st.current_revision == st.update_revision
            && st.updated_replicas == Some(st.replicas);
        assert!(
            rolled,
            "Workspace reported {reason} at generation {generation:?} while the StatefulSet was rolling out: {st:?}"
        );
        break;
    }
    watch.abort();
    let sts = statefulsets.get(name).await.unwrap();
    assert_ne!(sts.status.as_ref().and_then(|s| s.current_revision.clone()), old_revision, "the pods rolled");

    // The leader is killed (no Lease release): the other replica takes over after the Lease expires and serves a
    // new Workspace.
    let (killed, survivor) = if leader == "operator-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    killed.kill();
    let survivor_id = survivor.identity.clone();
    wait_for("the other replica to take the Lease", 60, async || {
        (lease_holder(client, WORKSPACE_LEASE).await? == survivor_id).then_some(())
    })
    .await;
    let second = "workspace-phi-second";
    let text =
        std::fs::read_to_string(kaito_tests::root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml"))
            .unwrap()
            .replace("workspace-phi-3-5-mini", second)
            .replace("apps: phi-3-5", "apps: phi-second");
    let ws2 = Workspace::from_yaml(&text).unwrap();
    workspaces.create(&PostParams::default(), &ws2).await.unwrap();
    // Killed mid-reconcile: as soon as its first NodeClaim exists, before the Workspace is Ready.
    let selector2 = format!("kaito.sh/workspace={second}");
    wait_for("the second Workspace's NodeClaim", 60, async || {
        (!claims.list(&ListParams::default().labels(&selector2)).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
    survivor.kill();
    let mut c = Operator::start(kc, WORKSPACE_DEPLOYMENT, "operator-c", &[]).await;
    let ws2 = wait_succeeded(kc, client, "default", second, 120).await;
    assert_eq!(lease_holder(client, WORKSPACE_LEASE).await.as_deref(), Some("operator-c"));
    let claims2 = claims.list(&ListParams::default().labels(&selector2)).await.unwrap().items;
    assert_eq!(
        claims2.len(),
        ws2.status.unwrap().target_node_count.unwrap() as usize,
        "no duplicate NodeClaims after the restart"
    );

    sh_ok(kc, &apply.replacen("kubectl apply", "kubectl delete", 1));
    workspaces.delete(second, &DeleteParams::default()).await.unwrap();
    assert_deleted(client, "default", name).await;
    assert_deleted(client, "default", second).await;
    assert!(
        Api::<Node>::all(client.clone()).get_opt(&node_name).await.unwrap().is_none(),
        "the node went with its NodeClaim"
    );
    assert!(c.running());
    c.terminate();
    assert_no_forbidden(kc, &[&a, &b, &c]);
}

/// Bring-your-own nodes: KWOK nodes labelled as GPU Feature Discovery would, the operator with `--provisioner=byo`.
#[tokio::test]
async fn byo_nodes_lifecycle() {
    let Some(env) = e2e::Env::start("byo_nodes_lifecycle").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let ns = "byo-e2e";
    namespace(client, ns).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": "byo-gpu-0",
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"apps": "phi-byo", "type": "kwok", "kubernetes.io/hostname": "byo-gpu-0",
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "81920"},
        },
        "status": {"capacity": {"cpu": "24", "memory": "220Gi", "pods": "110", "nvidia.com/gpu": "1"},
                   "allocatable": {"cpu": "24", "memory": "220Gi", "pods": "110", "nvidia.com/gpu": "1"}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let mut second = serde_json::to_value(&node).unwrap();
    second["metadata"]["name"] = "byo-gpu-1".into();
    second["metadata"]["labels"]["kubernetes.io/hostname"] = "byo-gpu-1".into();
    second["metadata"]["labels"]["apps"] = "phi-long".into();
    nodes.create(&PostParams::default(), &serde_json::from_value(second).unwrap()).await.unwrap();
    let op =
        Operator::start(kc, WORKSPACE_DEPLOYMENT, "operator-byo", &["--provisioner=byo", "--leader-elect=false"]).await;
    // The longest name the CRD accepts: every object made for it must still be valid, and its pods must run.
    let long = format!("workspace-{}", "l".repeat(53));
    assert_eq!(long.len(), 63);
    let text = std::fs::read_to_string(kaito_tests::root().join("examples/byo/workspace-phi-3.5-byo.yaml"))
        .unwrap()
        .replace("workspace-phi-3-5-byo", &long)
        .replace("apps: phi-byo", "apps: phi-long");
    Api::<Workspace>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &Workspace::from_yaml(&text).unwrap())
        .await
        .unwrap();
    sh_ok(kc, &format!("kubectl apply -n {ns} -f examples/byo/workspace-phi-3.5-byo.yaml"));
    let name = "workspace-phi-3-5-byo";
    let ws = wait_succeeded(kc, client, ns, name, 120).await;
    assert_eq!(ws.status.unwrap().worker_nodes, Some(vec!["byo-gpu-0".to_string()]));
    let long_ws = wait_succeeded(kc, client, ns, &long, 120).await;
    assert_eq!(long_ws.status.unwrap().worker_nodes, Some(vec!["byo-gpu-1".to_string()]));
    let running = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kaito.sh/workspace={long}")))
        .await
        .unwrap()
        .items;
    assert!(
        running.iter().any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")),
        "the StatefulSet controller made a pod for the 63-character name"
    );
    Api::<Workspace>::namespaced(client.clone(), ns).delete(&long, &DeleteParams::default()).await.unwrap();
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    assert!(
        claims
            .list(&ListParams::default().labels(&format!("kaito.sh/workspace={name}")))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    sh_ok(kc, &format!("kubectl delete -n {ns} -f examples/byo/workspace-phi-3.5-byo.yaml"));
    assert_deleted(client, ns, name).await;
    assert_deleted(client, ns, &long).await;
    assert!(nodes.get_opt("byo-gpu-0").await.unwrap().is_some(), "BYO nodes are the user's: never deleted");
    nodes.delete("byo-gpu-0", &DeleteParams::default()).await.unwrap();
    nodes.delete("byo-gpu-1", &DeleteParams::default()).await.unwrap();
    assert_no_forbidden(kc, &[&op]);
}

/// Karpenter: one NodePool per Workspace with static replicas; its NodeClaims and nodes come from the stand-in cloud.
#[tokio::test]
async fn karpenter_nodepool_lifecycle() {
    let Some(env) = e2e::Env::start("karpenter_nodepool_lifecycle").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    namespace(client, "models").await;
    let op = Operator::start(
        kc,
        WORKSPACE_DEPLOYMENT,
        "operator-karpenter",
        &["--provisioner=karpenter", "--leader-elect=false"],
    )
    .await;
    sh_ok(kc, "kubectl apply -f tests/fixtures/llama-3.3-70b-aws.yaml");
    let name = "workspace-llama-3-3-70b";
    let ws = wait_succeeded(kc, client, "models", name, 120).await;
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodePool", "nodepools"));
    let pool = pools.get(&format!("models-{name}")).await.unwrap();
    assert_eq!(pool.data["spec"]["replicas"].as_u64(), Some(ws.status.unwrap().target_node_count.unwrap() as u64));
    sh_ok(kc, "kubectl delete -f tests/fixtures/llama-3.3-70b-aws.yaml");
    assert_deleted(client, "models", name).await;
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    let left = claims
        .list(&ListParams::default().labels(&format!("karpenter.sh/nodepool=models-{name}")))
        .await
        .unwrap()
        .items;
    assert!(left.is_empty(), "the NodePool's NodeClaims went with it");
    assert_no_forbidden(kc, &[&op]);
}

/// The README's RAGEngine: NodeClaim, node, kaito-rag Deployment and Service, ServiceReady; delete (no 409).
#[tokio::test]
async fn readme_ragengine_lifecycle() {
    let Some(env) = e2e::Env::start("readme_ragengine_lifecycle").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let a = Operator::start(kc, RAGENGINE_DEPLOYMENT, "rag-operator-a", &[]).await;
    let b = Operator::start(kc, RAGENGINE_DEPLOYMENT, "rag-operator-b", &[]).await;
    let apply = e2e::readme_apply("ragengine");
    sh_ok(kc, &apply);
    let name = "ragengine-start";
    wait_for("`kubectl get ragengine` to show ServiceReady True", 120, async || {
        (column(kc, "ragengine", "default", name, "ServiceReady")? == "True").then_some(())
    })
    .await;
    let deploy = Api::<Deployment>::namespaced(client.clone(), "default").get(name).await.unwrap();
    assert_eq!(deploy.owner_references()[0].kind, "RAGEngine");
    sh_ok(kc, &apply.replacen("kubectl apply", "kubectl delete", 1));
    let rags: Api<RAGEngine> = Api::namespaced(client.clone(), "default");
    wait_for("the RAGEngine to be gone", 90, async || rags.get_opt(name).await.ok()?.is_none().then_some(())).await;
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    let left = claims.list(&ListParams::default().labels(&format!("kaito.sh/ragengine={name}"))).await.unwrap().items;
    assert!(left.is_empty());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    wait_for("the garbage collector to remove the Deployment", 60, async || {
        deployments.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    for op in [&a, &b] {
        assert!(!op.log_text().contains("code: 409"), "a conflict was not retried cleanly:\n{}", op.log_text());
    }
    assert_no_forbidden(kc, &[&a, &b]);
}

/// KAITO's first RAGEngine version through the operator's conversion webhook, under the chart's RBAC: the CRD is
/// registered and v1alpha1 served only once the webhook answers; a v1alpha1 RAGEngine with flat storage is stored
/// as v1beta1 (the controller mounts its claim), reads back as written in v1alpha1, and keeps its v1alpha1-only
/// field across the round trip.
#[tokio::test]
async fn ragengine_v1alpha1_through_the_conversion_webhook() {
    let Some(env) = e2e::Env::start("ragengine_v1alpha1_through_the_conversion_webhook").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let op = Operator::start(kc, RAGENGINE_DEPLOYMENT, "rag-operator-conversion", &[]).await;
    let url = format!("https://127.0.0.1:{}/convert", op.webhook_port);
    wait_for("the CRD to serve v1alpha1 through this operator's webhook", 60, async || {
        let crd = sh(kc, "kubectl get crd ragengines.kaito.sh -o json");
        let crd: serde_json::Value = serde_json::from_str(&crd.stdout).ok()?;
        let served = crd["spec"]["versions"].as_array()?.iter().any(|v| v["name"] == "v1alpha1" && v["served"] == true);
        (served && crd["spec"]["conversion"]["webhook"]["clientConfig"]["url"] == url.as_str()).then_some(())
    })
    .await;
    let name = "rag-v1alpha1";
    let manifest = format!(
        "apiVersion: kaito.sh/v1alpha1\nkind: RAGEngine\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         compute: {{instanceType: Standard_NV36ads_A10_v5, labelSelector: {{matchLabels: {{apps: {name}}}}}}}\n  \
         embedding: {{remote: {{url: 'http://embeddings.default.svc/v1'}}}}\n  \
         storage: {{persistentVolumeClaim: rag-data, mountPath: /var/rag}}\n  queryServiceName: rag-query\n"
    );
    let file = kc.parent().unwrap().join("ragengine-v1alpha1.yaml");
    std::fs::write(&file, &manifest).unwrap();
    sh_ok(kc, &format!("kubectl apply -f {}", file.display()));

    let stored: serde_json::Value =
        serde_json::from_str(&sh_ok(kc, &format!("kubectl get ragengines.v1beta1.kaito.sh {name} -o json"))).unwrap();
    assert_eq!(
        stored["spec"]["storage"],
        serde_json::json!({"persistentVolume": {"persistentVolumeClaim": "rag-data", "mountPath": "/var/rag"}})
    );
    assert!(stored["spec"].get("queryServiceName").is_none());
    let kept = stored["metadata"]["annotations"][kaito_crd::ragengine_conversion::CONVERSION_DATA].as_str().unwrap();
    assert_eq!(kept, r#"{"queryServiceName":"rag-query"}"#);
    let alpha: serde_json::Value =
        serde_json::from_str(&sh_ok(kc, &format!("kubectl get ragengines.v1alpha1.kaito.sh {name} -o json"))).unwrap();
    assert_eq!(
        alpha["spec"]["storage"],
        serde_json::json!({"persistentVolumeClaim": "rag-data", "mountPath": "/var/rag"})
    );
    assert_eq!(alpha["spec"]["queryServiceName"], "rag-query");
    let annotations = alpha["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    assert!(!annotations.contains_key(kaito_crd::ragengine_conversion::CONVERSION_DATA), "{annotations:?}");

    // The controller reads v1beta1: once a node is up, the Deployment mounts the claim where v1alpha1 said.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deploy = wait_for("the RAGEngine's Deployment", 120, async || deployments.get_opt(name).await.ok()?).await;
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let claim = pod.volumes.unwrap().iter().find_map(|v| v.persistent_volume_claim.clone()).expect("a claim volume");
    assert_eq!(claim.claim_name, "rag-data");
    let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| m.mount_path == "/var/rag"), "{mounts:?}");

    // An edit written as v1alpha1 is converted too; delete in the same version.
    sh_ok(
        kc,
        &format!(
            "kubectl patch ragengines.v1alpha1.kaito.sh {name} --type=merge -p {{\"spec\":{{\"storage\":{{\"mountPath\":\"/var/rag2\"}}}}}}"
        ),
    );
    let stored: serde_json::Value =
        serde_json::from_str(&sh_ok(kc, &format!("kubectl get ragengines.v1beta1.kaito.sh {name} -o json"))).unwrap();
    assert_eq!(stored["spec"]["storage"]["persistentVolume"]["mountPath"], "/var/rag2");
    sh_ok(kc, &format!("kubectl delete ragengines.v1alpha1.kaito.sh {name}"));
    let rags: Api<RAGEngine> = Api::namespaced(client.clone(), "default");
    wait_for("the RAGEngine to be gone", 90, async || rags.get_opt(name).await.ok()?.is_none().then_some(())).await;
    assert!(!op.log_text().contains("conversion refused"), "{}", op.log_text());
    assert_no_forbidden(kc, &[&op]);
}

/// A tuning Workspace from the examples, under the chart's RBAC: NodeClaim → KWOK node → the Job (named as the
/// Workspace, owned by it) → its pod runs and KWOK completes it → JobStarted and WorkspaceSucceeded True, state
/// Succeeded. A spec change (a new `tuning.config`) replaces the Job, whose template is immutable; deleting the
/// Workspace removes the Job and the NodeClaim.
#[tokio::test]
async fn tuning_workspace_runs_its_job_to_completion() {
    let Some(env) = e2e::Env::start("tuning_workspace_runs_its_job_to_completion").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let operator = Operator::start(kc, WORKSPACE_DEPLOYMENT, "tuner", &[]).await;
    let example = "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml";
    sh_ok(kc, &format!("kubectl apply -n default -f {example}"));
    let name = "workspace-tuning-phi-3";
    let ws = wait_succeeded(kc, client, "default", name, 120).await;
    let status = ws.status.clone().unwrap();
    assert_eq!(status.state.as_deref(), Some("Succeeded"));
    assert_eq!(condition(&ws, "JobStarted").map(|c| c.0).as_deref(), Some("True"));
    assert_eq!(column(kc, "workspace", "default", name, "Instance").as_deref(), Some("Standard_NC24ads_A100_v4"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = jobs.get(name).await.unwrap();
    assert_eq!(job.owner_references()[0].kind, "Workspace");
    assert_eq!(job.status.as_ref().and_then(|s| s.succeeded), Some(1), "the Job controller counted the pod");
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(6));
    let pod = spec.template.spec.as_ref().unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--push oci://registry.example.com/adapters/phi-3-dolly:0.0.1"), "{args}");
    assert!(args.contains("--registry-config /mnt/registry/registry-push-secret.json"), "{args}");
    let revision = job.annotations().get("workspace.kaito.io/revision").cloned();

    // A new tuning config is a new revision: the old Job goes (foreground, through the garbage collector) and a new
    // one runs to completion.
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), "default");
    workspaces
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"tuning": {"config": "phi-3-lora-params-v2"}})))
        .await
        .unwrap();
    wait_for("the Job of the new revision to complete", 120, async || {
        let job = jobs.get_opt(name).await.ok()??;
        let new = job.annotations().get("workspace.kaito.io/revision") != revision.as_ref();
        (new && job.status?.succeeded == Some(1)).then_some(())
    })
    .await;
    let job = jobs.get(name).await.unwrap();
    let volumes = job.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    assert!(volumes.iter().any(|v| v.config_map.as_ref().is_some_and(|c| c.name == "phi-3-lora-params-v2")));
    wait_succeeded(kc, client, "default", name, 60).await;

    sh_ok(kc, &format!("kubectl delete -n default -f {example}"));
    wait_for("the Workspace to be gone", 90, async || workspaces.get_opt(name).await.ok()?.is_none().then_some(()))
        .await;
    wait_for("the garbage collector to remove the Job", 60, async || {
        jobs.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    let left = claims.list(&ListParams::default().labels(&format!("kaito.sh/workspace={name}"))).await.unwrap().items;
    assert!(left.is_empty(), "{left:?}");
    assert_no_forbidden(kc, &[&operator]);
}

/// KAITO's adapter example: the StatefulSet's pod gets an init container per adapter (`kaito-pull` into the adapter's
/// directory) and the server mounts the directories read-only; KWOK runs the init container and the server, and the
/// Workspace is Ready.
#[tokio::test]
async fn adapter_workspace_pulls_its_adapters_before_the_server() {
    let Some(env) = e2e::Env::start("adapter_workspace_pulls_its_adapters_before_the_server").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let operator = Operator::start(kc, WORKSPACE_DEPLOYMENT, "adapters", &[]).await;
    let example = "examples/inference/kaito_workspace_phi_3_with_adapters.yaml";
    sh_ok(kc, &format!("kubectl apply -n default -f {example}"));
    let name = "workspace-phi-3-mini-adapter";
    wait_succeeded(kc, client, "default", name, 120).await;
    let pods = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("kaito.sh/workspace={name}")))
        .await
        .unwrap()
        .items;
    let pod = &pods[0];
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().expect("an init container")[0];
    assert_eq!(init.command.as_deref(), Some(&["kaito-pull".to_string()][..]));
    assert_eq!(init.args.as_ref().unwrap()[1], "/mnt/adapter/phi-3-adapter");
    let server = &spec.containers[0];
    let args = server.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a.contains(r#""path":"/mnt/adapter/phi-3-adapter""#)), "{args:?}");
    let statuses = pod.status.as_ref().unwrap().init_container_statuses.clone().unwrap_or_default();
    assert!(!statuses.is_empty(), "the kubelet stand-in reports the init container");
    sh_ok(kc, &format!("kubectl delete -n default -f {example}"));
    assert_deleted(client, "default", name).await;
    assert_no_forbidden(kc, &[&operator]);
}

/// Waits for `kubectl get isets` to show `want` ReadyReplicas for `set`.
async fn ready_replicas(kc: &Path, set: &str, want: &str) {
    wait_for(&format!("`kubectl get isets {set}` to show ReadyReplicas {want}"), 180, async || {
        (column(kc, "isets", "default", set, "ReadyReplicas")? == want).then_some(())
    })
    .await;
}

/// KAITO's phi-4-mini InferenceSet example: `kubectl scale` to 3 makes three Ready Workspaces; scale to 1 removes
/// the two highest; a template change rolls one Workspace at a time (never more than `maxUnavailable` unready);
/// `nodeCountLimit` holds; deleting the set removes its Workspaces and their NodeClaims.
#[tokio::test]
async fn inferenceset_scale_roll_limit_and_delete() {
    let Some(env) = e2e::Env::start("inferenceset_scale_roll_limit_and_delete").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    sh_ok(kc, "kubectl wait --for=condition=Established crd/inferencesets.kaito.sh --timeout=60s");
    let op = Operator::start(kc, WORKSPACE_DEPLOYMENT, "operator-sets", &["--leader-elect=false"]).await;
    let file = "examples/inference/kaito_inferenceset_phi_4_mini.yaml";
    sh_ok(kc, &format!("kubectl apply -f {file}"));
    let set = "phi-4-mini";
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), "default");
    let of_set = ListParams::default().labels(&format!("inferenceset.kaito.sh/created-by={set}"));
    let names = async || {
        let mut n: Vec<String> = workspaces.list(&of_set).await.unwrap().items.iter().map(|w| w.name_any()).collect();
        n.sort();
        n
    };
    ready_replicas(kc, set, "1").await;
    assert_eq!(names().await, ["phi-4-mini-0"]);

    // The scale subresource, as an HPA would drive it.
    sh_ok(kc, &format!("kubectl scale inferenceset {set} --replicas=3"));
    ready_replicas(kc, set, "3").await;
    assert_eq!(names().await, ["phi-4-mini-0", "phi-4-mini-1", "phi-4-mini-2"]);
    for ws in workspaces.list(&of_set).await.unwrap().items {
        assert_eq!(condition(&ws, "WorkspaceSucceeded").map(|c| c.0).as_deref(), Some("True"), "{}", ws.name_any());
        assert_eq!(ws.owner_references()[0].kind, "InferenceSet");
    }
    let scale =
        sh_ok(kc, &format!("kubectl get --raw /apis/kaito.sh/v1beta1/namespaces/default/inferencesets/{set}/scale"));
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!((scale["spec"]["replicas"].as_i64(), scale["status"]["replicas"].as_i64()), (Some(3), Some(3)));
    assert_eq!(scale["status"]["selector"], format!("inferenceset.kaito.sh/created-by={set}"));
    let pods = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(scale["status"]["selector"].as_str().unwrap()))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 3, "the scale selector finds the replicas' pods, as an HPA reads them");

    sh_ok(kc, &format!("kubectl scale inferenceset {set} --replicas=1"));
    wait_for("the two highest Workspaces to be gone", 120, async || (names().await == ["phi-4-mini-0"]).then_some(()))
        .await;
    ready_replicas(kc, set, "1").await;

    // A template change with two replicas: watch every version of the set's Workspaces; at no moment may more than
    // one (maxUnavailable) be unready, and both end on the new template.
    sh_ok(kc, &format!("kubectl scale inferenceset {set} --replicas=2"));
    ready_replicas(kc, set, "2").await;
    let (tx, mut versions) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let config = watcher::Config::default().labels(&format!("inferenceset.kaito.sh/created-by={set}"));
        watcher(workspaces.clone(), config).for_each(move |e| {
            let _ = tx.send(e);
            async {}
        })
    });
    let sets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kaito.sh", "v1beta1", "InferenceSet"),
            "inferencesets",
        ),
    );
    sets.patch(
        set,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"inference": {"config": "phi-config"}}}})),
    )
    .await
    .unwrap();
    let mut latest: std::collections::BTreeMap<String, Workspace> = Default::default();
    let mut worst = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let event = tokio::time::timeout_at(deadline, versions.recv())
            .await
            .expect("the rollout to finish within 180 s")
            .expect("watch open")
            .expect("watch event");
        match event {
            watcher::Event::Apply(ws) | watcher::Event::InitApply(ws) => {
                latest.insert(ws.name_any(), ws);
            }
            watcher::Event::Delete(ws) => {
                latest.remove(&ws.name_any());
            }
            _ => continue,
        }
        let unready = 2 - latest.values().filter(|w| w.succeeded() && w.metadata.deletion_timestamp.is_none()).count();
        worst = worst.max(unready);
        let done = latest.len() == 2
            && latest
                .values()
                .all(|w| w.succeeded() && w.inference.as_ref().unwrap().config.as_deref() == Some("phi-config"));
        if done {
            break;
        }
    }
    watch.abort();
    assert!(worst <= 1, "{worst} replicas were unready at once during the rollout (maxUnavailable 1)");
    ready_replicas(kc, set, "2").await;

    // nodeCountLimit 2 with 3 replicas of one node each: two Workspaces, and the set says why.
    sets.patch(set, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3, "nodeCountLimit": 2}})))
        .await
        .unwrap();
    wait_for("InferenceSetReady to name the node limit", 60, async || {
        let s = sets.get(set).await.ok()?;
        let c = s.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "InferenceSetReady")?.clone();
        (c["reason"] == "NodeCountLimitReached").then_some(())
    })
    .await;
    assert_eq!(names().await, ["phi-4-mini-0", "phi-4-mini-1"]);

    sh_ok(kc, &format!("kubectl delete -f {file}"));
    wait_for("the set to be gone", 120, async || sets.get_opt(set).await.ok()?.is_none().then_some(())).await;
    assert!(names().await.is_empty(), "the set's Workspaces went first");
    for i in 0..2 {
        assert_deleted(client, "default", &format!("{set}-{i}")).await;
    }
    assert_no_forbidden(kc, &[&op]);
}

/// Plugin hot reload on the real control plane, through the chart's plugin-reference ConfigMap and the real
/// registry: the Phi preset's entry points at a pushed build of it; 50 Workspaces (25 Phi, 25 Qwen) reconcile while
/// `kubectl patch` replaces the entry with another build (the Python port); none fails, the Phi StatefulSets end up
/// carrying the new build's digest, the Qwen ones keep theirs and their revision; then a replacement that traps is
/// refused (metric and Event) and the serving build stays.
#[tokio::test]
async fn plugins_reload_while_workspaces_reconcile() {
    let Some(env) = e2e::Env::start("plugins_reload_while_workspaces_reconcile").await else { return };
    let (registry, _) = e2e::registry("plugins_reload_while_workspaces_reconcile").expect("the registry runs");
    let (kc, client) = (&env.kubeconfig, &env.client);
    namespace(client, "reload").await;
    let oci = kaito_oci::Oci::new(kaito_oci::Options { plain_http: true, ..kaito_oci::Options::new() });
    let push = async |file: std::path::PathBuf, repo: &str| {
        let reference = kaito_oci::parse(&format!("{registry}/e2e-reload/{repo}:1")).unwrap();
        format!("oci://{}", oci.push_wasm(&std::fs::read(&file).unwrap(), &reference, repo).await.unwrap())
    };
    let py = kaito_tests::plugin_dir("plugins/polyglot/phi-py/dist").join("preset-phi-py.wasm");
    let (phi_ref, py_ref, trap_ref) = (
        push(kaito_tests::plugin_dir("presets-wasm/dist").join("preset-phi.wasm"), "preset-phi").await,
        push(py.clone(), "preset-phi-py").await,
        push(kaito_tests::plugin_dir("plugins/fixtures/dist").join("hostile-trap.wasm"), "trap").await,
    );
    let refs = format!("{WORKSPACE_DEPLOYMENT}-plugin-refs");
    let set_entry = |value: &str| {
        // No spaces: `sh` splits the line on whitespace.
        let patch = json!({"data": {"phi": value}}).to_string();
        sh_ok(kc, &format!("kubectl patch configmap {refs} -n {SYSTEM_NAMESPACE} --type merge -p {patch}"));
    };
    set_entry(&phi_ref);
    let op = Operator::start(
        kc,
        WORKSPACE_DEPLOYMENT,
        "operator-reload",
        &["--plugin-reload-seconds=1", "--leader-elect=false", "--plain-http"],
    )
    .await;
    let example =
        |file: &str| std::fs::read_to_string(kaito_tests::root().join("examples/inference").join(file)).unwrap();
    let (phi, qwen) =
        (example("kaito_workspace_phi_3.5-instruct.yaml"), example("kaito_workspace_qwen2.5-coder-7b-instruct.yaml"));
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), "reload");
    let mut names = Vec::new();
    for i in 0..25 {
        for (text, old_name, old_label, family) in [
            (&phi, "workspace-phi-3-5-mini", "apps: phi-3-5", "phi"),
            (&qwen, "workspace-qwen2-5-coder-7b-instruct", "apps: qwen2-5-coder-7b-instruct", "qwen"),
        ] {
            let name = format!("{family}-{i}");
            let ws = Workspace::from_yaml(
                &text.replace(old_name, &name).replace(old_label, &format!("apps: reload-{name}")),
            )
            .unwrap();
            workspaces.create(&PostParams::default(), &ws).await.unwrap();
            names.push(name);
        }
    }
    // Mid-reconcile, the Phi entry is pointed at another build of the preset.
    set_entry(&py_ref);
    let digest_of = |file: &Path| {
        let out = std::process::Command::new("sha256sum").arg(file).output().expect("sha256sum runs");
        format!("sha256:{}", String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap())
    };
    let (new_phi, qwen_digest) =
        (digest_of(&py), digest_of(&kaito_tests::plugin_dir("presets-wasm/dist").join("preset-qwen.wasm")));
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), "reload");
    let digest_on = |sts: &StatefulSet| sts.annotations().get("kaito.sh/preset-plugin-digest").cloned();
    wait_for("all 50 Workspaces Ready, the Phi ones rendered by the new build", 240, async || {
        for name in &names {
            let ws = workspaces.get(name).await.ok()?;
            if condition(&ws, "WorkspaceSucceeded")?.0 != "True" {
                return None;
            }
            let want = if name.starts_with("phi") { &new_phi } else { &qwen_digest };
            if digest_on(&statefulsets.get(name).await.ok()?).as_ref() != Some(want) {
                return None;
            }
        }
        Some(())
    })
    .await;
    for name in names.iter().filter(|n| n.starts_with("qwen")) {
        let ws = workspaces.get(name).await.unwrap();
        let sts = statefulsets.get(name).await.unwrap();
        let template = sts.spec.unwrap().template.metadata.unwrap().annotations.unwrap_or_default();
        assert_eq!(template.get("workspace.kaito.io/revision"), Some(&ws.revision_name()), "{name} kept its revision");
    }
    let log = op.log_text();
    assert!(!log.contains("reconcile failed"), "no reconcile failed during the swap:\n{log}");
    assert!(log.contains("plugin set swapped"), "{log}");

    // A replacement that traps: refused, and the serving build stays.
    set_entry(&trap_ref);
    let metrics = format!("http://127.0.0.1:{}/metrics", op.metrics_port);
    wait_for("the trapping replacement to be refused", 30, async || {
        let m = metrics.clone();
        let body = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-s", &m])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })
        .await
        .ok()??;
        body.contains("kaito_plugin_reloads_total{outcome=\"refused\"}").then_some(())
    })
    .await;
    wait_for("a PluginRefused event on the operator's pod", 30, async || {
        let out = sh(kc, "kubectl get events -n kaito-system --field-selector reason=PluginRefused -o name");
        (out.ok && !out.stdout.trim().is_empty()).then_some(())
    })
    .await;
    workspaces
        .patch("phi-0", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let ws = workspaces.get("phi-0").await.unwrap();
    assert_eq!(
        condition(&ws, "WorkspaceSucceeded").map(|c| c.0).as_deref(),
        Some("True"),
        "the old build still serves"
    );
    assert_eq!(digest_on(&statefulsets.get("phi-0").await.unwrap()).as_ref(), Some(&new_phi));

    for name in &names {
        workspaces.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in &names {
        assert_deleted(client, "reload", name).await;
    }
    // The chart's ConfigMap back as installed, for the tests after this one.
    sh_ok(
        kc,
        &format!(
            "kubectl patch configmap {refs} -n {SYSTEM_NAMESPACE} --type json -p [{{\"op\":\"remove\",\"path\":\"/data/phi\"}}]"
        ),
    );
    assert_no_forbidden(kc, &[&op]);
}

/// Every file under examples/ is accepted by the real API server (CRD schema and CEL, by server-side dry run).
#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let Some(env) = e2e::Env::start("every_example_is_accepted_by_the_api_server").await else { return };
    let kc = &env.kubeconfig;
    let mut files = Vec::new();
    for dir in
        ["examples/inference", "examples/byo", "examples/custom-template", "examples/RAG", "examples/fine-tuning"]
    {
        for e in std::fs::read_dir(kaito_tests::root().join(dir)).unwrap() {
            files.push(format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    assert!(files.len() > 28);
    for f in files {
        sh_ok(kc, &format!("kubectl apply --dry-run=server -n default -f {f}"));
    }
}

/// The invalid fixtures (`tests/fixtures/invalid/`, each naming the message it expects) are refused by the real API
/// server: on create, or, for those marked `# update-of: FILE`, as an update of FILE's Workspace.
#[tokio::test]
async fn invalid_workspaces_are_refused_at_apply_time() {
    let Some(env) = e2e::Env::start("invalid_workspaces_are_refused_at_apply_time").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let ns = "invalid-e2e";
    namespace(client, ns).await;
    let dir = kaito_tests::root().join("tests/fixtures/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string));
        let expected =
            header("rejected").unwrap_or_else(|| panic!("{} names no `# rejected:` message", path.display()));
        let rel = format!("tests/fixtures/invalid/{}", path.file_name().unwrap().to_string_lossy());
        if let Some(base) = header("update-of") {
            sh_ok(kc, &format!("kubectl apply -n {ns} -f {base}"));
            let out = sh(kc, &format!("kubectl apply --dry-run=server -n {ns} -f {rel}"));
            assert!(!out.ok && out.stderr.contains(&expected), "{rel}: expected {expected:?}, got {out:?}");
            sh_ok(kc, &format!("kubectl delete -n {ns} -f {base}"));
        } else {
            let out = sh(kc, &format!("kubectl apply --dry-run=server -n {ns} -f {rel}"));
            assert!(!out.ok && out.stderr.contains(&expected), "{rel}: expected {expected:?}, got {out:?}");
        }
        checked += 1;
    }
    assert!(checked >= 9, "{checked} invalid fixtures");
}

/// The KAITO webhook rules that are not CEL here (`tests/fixtures/invalid-at-reconcile/`) are refused by the
/// operator, running as the chart's ServiceAccount with a node-class allow-list, within one reconcile: the
/// Workspace's conditions say InvalidWorkspace with the fixture's message, and no NodeClaim is made for it.
#[tokio::test]
async fn invalid_workspaces_get_a_condition_within_one_reconcile() {
    let Some(env) = e2e::Env::start("invalid_workspaces_get_a_condition_within_one_reconcile").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let ns = "invalid-reconcile-e2e";
    namespace(client, ns).await;
    let operator =
        Operator::start(kc, WORKSPACE_DEPLOYMENT, "validator", &["--karpenter-node-classes=default,gpu"]).await;
    let dir = kaito_tests::root().join("tests/fixtures/invalid-at-reconcile");
    let mut fixtures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text.lines().find_map(|l| l.strip_prefix("# condition: ")).expect("a `# condition:` line");
        let rel = format!("tests/fixtures/invalid-at-reconcile/{}", path.file_name().unwrap().to_string_lossy());
        sh_ok(kc, &format!("kubectl apply -n {ns} -f {rel}"));
        fixtures.push((path.file_stem().unwrap().to_string_lossy().to_string(), expected.to_string()));
    }
    assert!(fixtures.len() >= 9, "{} fixtures", fixtures.len());
    let api = Api::<Workspace>::namespaced(client.clone(), ns);
    for (name, expected) in &fixtures {
        let what = format!("{name} to be refused with {expected:?}");
        wait_for(&what, 60, async || {
            let ws = api.get(name).await.ok()?;
            let c = ws.status?.conditions?.into_iter().find(|c| c.type_ == "WorkspaceSucceeded")?;
            (c.status == "False" && c.reason == "InvalidWorkspace" && c.message.contains(expected.as_str()))
                .then_some(())
        })
        .await;
    }
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    let made = claims.list(&ListParams::default().labels(&format!("kaito.sh/workspacenamespace={ns}"))).await.unwrap();
    assert!(made.items.is_empty(), "no NodeClaim for a refused Workspace: {:?}", made.items);
    for (name, _) in &fixtures {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for (name, _) in &fixtures {
        wait_for(&format!("{name} to be deleted"), 60, async || api.get_opt(name).await.ok()?.is_none().then_some(()))
            .await;
    }
    assert_no_forbidden(kc, &[&operator]);
}

/// Two operators without leader election (a split brain, or a rollout that briefly runs two) reconcile the same
/// Workspace at once: their concurrent creates of the same NodeClaims meet the API server's 409, which is taken as
/// "already there"; the Workspace gets exactly one set of NodeClaims and reaches Ready.
#[tokio::test]
async fn racing_operators_make_one_set_of_nodeclaims() {
    let Some(env) = e2e::Env::start("racing_operators_make_one_set_of_nodeclaims").await else { return };
    let (kc, client) = (&env.kubeconfig, &env.client);
    let ns = "race-e2e";
    namespace(client, ns).await;
    let one = Operator::start(kc, WORKSPACE_DEPLOYMENT, "racer-1", &["--leader-elect=false"]).await;
    let two = Operator::start(kc, WORKSPACE_DEPLOYMENT, "racer-2", &["--leader-elect=false"]).await;
    let text =
        std::fs::read_to_string(kaito_tests::root().join("examples/inference/kaito_workspace_phi-4.yaml")).unwrap();
    let ws = Workspace::from_yaml(&text).unwrap();
    let name = ws.name().to_string();
    Api::<Workspace>::namespaced(client.clone(), ns).create(&PostParams::default(), &ws).await.unwrap();
    let ready = wait_succeeded(kc, client, ns, &name, 120).await;
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims"));
    let mine = claims
        .list(&ListParams::default().labels(&format!("kaito.sh/workspace={name},kaito.sh/workspacenamespace={ns}")))
        .await
        .unwrap()
        .items;
    assert_eq!(mine.len(), ready.status.unwrap().target_node_count.unwrap() as usize, "one set of NodeClaims");
    Api::<Workspace>::namespaced(client.clone(), ns).delete(&name, &DeleteParams::default()).await.unwrap();
    assert_deleted(client, ns, &name).await;
    assert_no_forbidden(kc, &[&one, &two]);
}
