//! The RAGEngine controller over the in-memory cluster (`tests/cluster.rs`):
//! whole lifecycles driven by calling its reconcile as the Controller would,
//! with Karpenter, the Deployment controller and the kubelet played by the
//! harness in between.

use kaito_crd::RAGEngine;
use kaito_operator::Context;
use kaito_tests::cluster::{Cluster, GPUS_PER_NODE, paths};
use kaito_tests::{operator_context, root, shipped_registry, yaml};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::Arc;

async fn reconcile(cluster: &Cluster, ctx: &Arc<Context>, name: &str) -> Action {
    kaito_tests::reconcile_as_controller::<RAGEngine>(cluster, ctx, paths::RAGENGINES, "default", name).await
}

fn rag(cluster: &Cluster, name: &str) -> Value {
    cluster.get(paths::RAGENGINES, "default", name).expect("ragengine exists")
}

fn condition(rag: &Value, kind: &str) -> (String, String) {
    let c = rag["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {:#}", rag["status"]));
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

fn example(file: &str) -> Value {
    yaml(&std::fs::read_to_string(root().join("examples/RAG").join(file)).unwrap())
}

fn writes(cluster: &Cluster) -> Vec<String> {
    cluster.requests().into_iter().filter(|r| !r.starts_with("GET ")).collect()
}

fn events(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .list(paths::EVENTS)
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("").into(), e["reason"].as_str().unwrap_or("").into()))
        .collect()
}

#[tokio::test]
async fn provisioned_ragengine_from_creation_to_deletion() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    let name = "ragengine-start";
    cluster.create(paths::RAGENGINES, example("kaito_ragengine_phi_3.yaml"));

    // Created: finalizer, one NodeClaim labelled for the RAGEngine, nothing to run on yet.
    assert_eq!(reconcile(&cluster, &ctx, name).await, Action::requeue(ctx.config.poll));
    let r = rag(&cluster, name);
    assert_eq!(r["metadata"]["finalizers"], json!(["ragengine.finalizer.kaito.sh"]));
    let claims = cluster.list(paths::NODECLAIMS);
    assert_eq!(claims.len(), 1);
    let labels = &claims[0]["metadata"]["labels"];
    assert_eq!(
        (labels["kaito.sh/ragengine"].as_str(), labels["kaito.sh/ragenginenamespace"].as_str()),
        (Some(name), Some("default"))
    );
    assert!(labels.get("kaito.sh/workspace").is_none(), "{labels}");
    assert_eq!(condition(&r, "ResourceReady"), ("False".into(), "NodesNotReady".into()));
    assert_eq!(condition(&r, "ServiceReady"), ("False".into(), "ResourceNotReady".into()));
    assert!(cluster.list(paths::DEPLOYMENTS).is_empty(), "no Deployment before a node is Ready");

    // Looking again writes nothing.
    cluster.clear_requests();
    reconcile(&cluster, &ctx, name).await;
    assert!(writes(&cluster).is_empty(), "{:?}", writes(&cluster));

    // The node comes up: Service and Deployment are applied, owned by the RAGEngine.
    assert_eq!(cluster.provision(GPUS_PER_NODE), 1);
    reconcile(&cluster, &ctx, name).await;
    let r = rag(&cluster, name);
    assert_eq!(condition(&r, "ResourceReady").0, "True");
    assert_eq!(condition(&r, "ServiceReady"), ("False".into(), "ServiceNotReady".into()));
    assert_eq!(r["status"]["workerNodes"], json!([claims[0]["metadata"]["name"]]));
    let deploy = cluster.get(paths::DEPLOYMENTS, "default", name).expect("Deployment applied");
    assert_eq!(deploy["metadata"]["ownerReferences"][0]["uid"], r["metadata"]["uid"]);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["--port", "5000", "--data-dir", "/mnt/data"]));
    let env: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(env, ["EMBEDDING_MODEL_DIR", "LLM_INFERENCE_URL", "LLM_CONTEXT_WINDOW"]);
    assert_eq!(deploy["spec"]["template"]["spec"]["nodeSelector"], json!({"apps": "ragengine-example"}));
    let svc = cluster.get(paths::SERVICES, "default", name).expect("Service applied");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 5000);

    // `kaito render` and the controller produce the same Deployment.
    let live: RAGEngine = serde_json::from_value(r.clone()).unwrap();
    let rendered =
        kaito_workload::render_ragengine(&shipped_registry(), &live, "gpu-provisioner", &ctx.config.image_registry)
            .unwrap();
    assert_eq!(deploy["spec"], serde_json::to_value(&rendered.deployment).unwrap()["spec"]);

    // The Deployment becomes available: ServiceReady, with a Normal event.
    cluster.edit(
        paths::DEPLOYMENTS,
        "default",
        name,
        json!({"status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}),
    );
    assert_eq!(reconcile(&cluster, &ctx, name).await, Action::requeue(ctx.config.resync));
    let r = rag(&cluster, name);
    assert_eq!(condition(&r, "ServiceReady"), ("True".into(), "ServiceReady".into()));
    assert!(events(&cluster).contains(&("Normal".into(), "ServiceReady".into())), "{:?}", events(&cluster));

    // Delete: the NodeClaim goes first, then the finalizer; owned objects are collected.
    cluster.delete(paths::RAGENGINES, "default", name);
    assert_eq!(reconcile(&cluster, &ctx, name).await, Action::requeue(ctx.config.poll));
    assert_eq!(condition(&rag(&cluster, name), "RAGEngineDeleting").0, "True");
    assert!(
        cluster.list(paths::NODECLAIMS).iter().all(|c| c["metadata"].get("deletionTimestamp").is_some() || c.is_null())
    );
    // Karpenter finishes removing the claim.
    for c in cluster.list(paths::NODECLAIMS) {
        cluster.edit(
            paths::NODECLAIMS,
            "",
            c["metadata"]["name"].as_str().unwrap(),
            json!({"metadata": {"finalizers": null}}),
        );
    }
    assert_eq!(reconcile(&cluster, &ctx, name).await, Action::await_change());
    assert!(cluster.get(paths::RAGENGINES, "default", name).is_none(), "finalizer removed, object gone");
    assert!(cluster.get(paths::DEPLOYMENTS, "default", name).is_none(), "Deployment garbage-collected");
    assert!(cluster.list(paths::NODECLAIMS).is_empty());
}

#[tokio::test]
async fn existing_nodes_and_remote_embeddings() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    let name = "ragengine-remote";
    let mut spec = example("kaito_ragengine_remote_embedding.yaml");
    spec["spec"]["compute"]["labelSelector"]["matchLabels"] = json!({"rag": "yes"});
    cluster.create(paths::RAGENGINES, spec);

    reconcile(&cluster, &ctx, name).await;
    let r = rag(&cluster, name);
    assert_eq!(condition(&r, "ResourceReady"), ("False".into(), "NodesNotReady".into()));
    assert!(cluster.list(paths::NODECLAIMS).is_empty(), "no instanceType: nothing provisioned");

    cluster.add_node("cpu-1", json!({"rag": "yes"}), 0);
    reconcile(&cluster, &ctx, name).await;
    let r = rag(&cluster, name);
    assert_eq!(condition(&r, "ResourceReady"), ("True".into(), "NodesReady".into()));
    let deploy = cluster.get(paths::DEPLOYMENTS, "default", name).expect("Deployment applied");
    let env = &deploy["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[0], json!({"name": "EMBEDDING_URL", "value": "http://text-embeddings.default.svc/v1/embeddings"}));
    assert_eq!(env[1]["valueFrom"]["secretKeyRef"], json!({"name": "embeddings-token", "key": "token"}));
    assert!(deploy["spec"]["template"]["spec"].get("tolerations").is_none());
}

/// Guardrails as KAITO passes them: the on/off variable, and with a ConfigMap its policy file mounted read-only
/// where the path variable says; without one, no path (kaito-rag's built-in policy).
#[tokio::test]
async fn guardrails_reach_the_service_as_kaito_passes_them() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    let name = "ragengine-guarded";
    cluster.create(paths::RAGENGINES, example("kaito_ragengine_guardrails.yaml"));
    reconcile(&cluster, &ctx, name).await;
    assert_eq!(cluster.provision(GPUS_PER_NODE), 1);
    reconcile(&cluster, &ctx, name).await;
    let pod = |cluster: &Cluster| {
        cluster.get(paths::DEPLOYMENTS, "default", name).expect("Deployment applied")["spec"]["template"]["spec"]
            .clone()
    };
    let spec = pod(&cluster);
    let env = spec["containers"][0]["env"].as_array().unwrap();
    let var = |env: &[Value], n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["value"].clone());
    assert_eq!(var(env, "OUTPUT_GUARDRAILS_ENABLED"), Some(json!("true")));
    assert_eq!(var(env, "OUTPUT_GUARDRAILS_POLICY_PATH"), Some(json!("/etc/ragengine/guardrails/guardrails.yaml")));
    let volume = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "guardrails-policy").unwrap();
    assert_eq!(
        volume["configMap"],
        json!({"name": "rag-guardrails", "items": [{"key": "guardrails.yaml", "path": "guardrails.yaml"}]})
    );
    let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.contains(
            &json!({"name": "guardrails-policy", "mountPath": "/etc/ragengine/guardrails", "readOnly": true})
        )
    );

    // Turned off: the variable says so, and nothing is mounted.
    cluster.edit(paths::RAGENGINES, "default", name, json!({"spec": {"guardrails": {"enabled": false}}}));
    reconcile(&cluster, &ctx, name).await;
    let spec = pod(&cluster);
    let env = spec["containers"][0]["env"].as_array().unwrap();
    assert_eq!(var(env, "OUTPUT_GUARDRAILS_ENABLED"), Some(json!("false")));
    assert_eq!(var(env, "OUTPUT_GUARDRAILS_POLICY_PATH"), None);
    assert!(!spec["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "guardrails-policy"));
}

#[tokio::test]
async fn unsupported_specs_become_conditions_not_crashes() {
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, shipped_registry(), "gpu-provisioner");
    for (name, patch, field) in [
        ("bge", json!({"embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}}}), "spec.embedding.local.modelID"),
        ("qdrant", json!({"storage": {"vectorDB": {"engine": "qdrant", "url": "http://q"}}}), "spec.storage.vectorDB"),
        ("sku", json!({"compute": {"instanceType": "Standard_Nope"}}), "spec.compute.instanceType"),
    ] {
        let mut obj = example("kaito_ragengine_phi_3.yaml");
        obj["metadata"]["name"] = json!(name);
        json_patch::merge(&mut obj["spec"], &patch);
        cluster.create(paths::RAGENGINES, obj);
        assert_eq!(reconcile(&cluster, &ctx, name).await, Action::await_change(), "{name}");
        let r = rag(&cluster, name);
        let c = r["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ResourceReady")
            .unwrap()
            .clone();
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("InvalidRAGEngine")), "{name}");
        assert!(c["message"].as_str().unwrap().starts_with(field), "{name}: {c}");
        assert!(cluster.list(paths::DEPLOYMENTS).is_empty());
    }
    assert!(
        events(&cluster).iter().filter(|e| e == &&("Warning".to_string(), "InvalidRAGEngine".to_string())).count() == 3
    );
    assert!(cluster.list(paths::NODECLAIMS).is_empty());
}
