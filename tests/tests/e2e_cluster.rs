//! The real kube-runtime Controller against whatever cluster `KUBECONFIG`
//! points at (kind, k3d, AKS). Skipped, with the reason printed, when no
//! cluster answers. It installs the Workspace CRD, turns one node into a
//! fake GPU node (labels plus an advertised `nvidia.com/gpu` extended
//! resource, removed again at the end), runs the controller with the `byo`
//! provisioner and follows a Workspace from creation to deletion.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kaito_crd::Workspace;
use kaito_operator::metrics::Metrics;
use kaito_operator::{Config, Context, controller};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn reachable() -> Result<kube::Client, String> {
    let home_config = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"));
    if std::env::var_os("KUBECONFIG").is_none() && !home_config.is_some_and(|p| p.exists()) {
        return Err("KUBECONFIG is not set and ~/.kube/config does not exist".into());
    }
    let client = kube::Client::try_default().await.map_err(|e| format!("no client: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("API server did not answer: {e}")),
        Err(_) => Err("API server did not answer within 5 s".into()),
    }
}

async fn wait_for<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn controller_runs_a_workspace_on_a_real_cluster() {
    let client = match reachable().await {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("SKIPPED controller_runs_a_workspace_on_a_real_cluster: {reason}");
            return;
        }
    };
    let apply = PatchParams::apply("kaito-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("workspaces.kaito.sh", &apply, &Patch::Apply(kaito_crd::workspace_crd())).await.expect("CRD applies");
    wait_for("the Workspace CRD to be Established", 30, async || {
        let crd = crds.get("workspaces.kaito.sh").await.ok()?;
        let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;

    let ns = format!("kaito-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .expect("namespace");

    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.list(&Default::default()).await.expect("nodes").items.remove(0);
    let node_name = node.metadata.name.clone().unwrap();
    let gpu_labels = json!({"kaito-e2e": ns, "nvidia.com/gpu.product": "NVIDIA-A100-PCIE-80GB", "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "81920"});
    nodes
        .patch(&node_name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": gpu_labels}})))
        .await
        .unwrap();
    // Extended resources are advertised by patching node status, as a device plugin would.
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"capacity": {"nvidia.com/gpu": "1"}}})),
        )
        .await
        .unwrap();

    let config = Config { provisioner: "byo".into(), poll: Duration::from_secs(2), ..Config::default() };
    let ctx =
        Arc::new(Context::new(client.clone(), kaito_tests::shipped_registry(), config, Arc::new(Metrics::default())));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller::run(ctx, async move {
        let _ = stopped.await;
    }));

    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    let ws = Workspace::from_yaml(&format!(
        "apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata: {{name: phi-e2e, namespace: {ns}}}\nresource: {{labelSelector: {{matchLabels: {{kaito-e2e: {ns}}}}}}}\ninference: {{preset: {{name: phi-3.5-mini-instruct}}}}\n"
    ))
    .unwrap();
    workspaces.create(&PostParams::default(), &ws).await.expect("Workspace created");

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = wait_for("the StatefulSet", 90, async || statefulsets.get_opt("phi-e2e").await.ok().flatten()).await;
    let owner = &sts.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Workspace", "phi-e2e"));
    let live = wait_for("ResourceReady=True", 60, async || {
        let w = workspaces.get("phi-e2e").await.ok()?;
        let ready =
            w.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "ResourceReady" && c.status == "True");
        ready.then_some(w)
    })
    .await;
    assert!(live.metadata.finalizers.unwrap_or_default().contains(&"workspace.finalizer.kaito.sh".to_string()));
    assert_eq!(live.status.unwrap().worker_nodes, Some(vec![node_name.clone()]));

    workspaces.delete("phi-e2e", &DeleteParams::default()).await.expect("delete");
    wait_for("the Workspace to be gone", 60, async || {
        workspaces.get_opt("phi-e2e").await.ok()?.is_none().then_some(())
    })
    .await;

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    let unlabel = json!({"metadata": {"labels": {"kaito-e2e": null, "nvidia.com/gpu.product": null, "nvidia.com/gpu.count": null, "nvidia.com/gpu.memory": null}}});
    let _ = nodes.patch(&node_name, &PatchParams::default(), &Patch::Merge(unlabel)).await;
    let _ = nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"capacity": {"nvidia.com/gpu": null}}})),
        )
        .await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
