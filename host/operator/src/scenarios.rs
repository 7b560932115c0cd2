//! Scenario tests in the controller-rs style: a scripted API server
//! (tower-test) answers each request in turn, and every request's method,
//! path, query (field manager, force) and body are asserted exactly.

use crate::context::{Config, Context};
use crate::metrics::Metrics;
use http::{Request, Response};
use http_body_util::BodyExt;
use kaito_crd::Workspace;
use kaito_plugin_host::{HostConfig, PluginHost, Registry};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const WS: &str = "/apis/kaito.sh/v1beta1/namespaces/default/workspaces/workspace-phi-3-5-mini";
const CLAIM: &str = "ws7987db8af";

fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let files =
                [root.join("presets-wasm/dist/preset-phi.wasm"), root.join("plugins/dist/provisioner-azure.wasm")];
            for f in &files {
                assert!(f.exists(), "{} is missing: run `cargo xtask plugins` first", f.display());
            }
            let host = PluginHost::new(HostConfig::default()).expect("plugin host");
            let mut registry = Registry::default();
            for f in &files {
                registry.add(host.load_file(f, None).expect("plugin loads"));
            }
            Arc::new(registry)
        })
        .clone()
}

/// One expected request: method and URI, a check of its body, and the reply.
struct Expect {
    method: &'static str,
    uri: String,
    check: Box<dyn FnOnce(&Value) + Send>,
    reply: Value,
    code: u16,
}

fn expect(
    method: &'static str,
    uri: impl Into<String>,
    check: impl FnOnce(&Value) + Send + 'static,
    reply: Value,
) -> Expect {
    Expect { method, uri: uri.into(), check: Box::new(check), reply, code: 200 }
}

/// Serve `script` in order, then make sure nothing else was asked.
async fn serve(mut handle: Handle, script: Vec<Expect>) {
    for (i, e) in script.into_iter().enumerate() {
        let (request, send) =
            handle.next_request().await.unwrap_or_else(|| panic!("request {i} ({} {}) never came", e.method, e.uri));
        let uri = request.uri().to_string();
        // A URI ending in `*` is a prefix: the recorder names an event series by a generated name.
        let uri = match e.uri.strip_suffix('*') {
            Some(prefix) if uri.starts_with(prefix) => e.uri.clone(),
            _ => uri,
        };
        assert_eq!((request.method().as_str(), uri), (e.method, e.uri.clone()), "request {i}");
        let bytes = request.into_body().collect().await.expect("body").to_bytes();
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        (e.check)(&body);
        let response =
            Response::builder().status(e.code).body(Body::from(serde_json::to_vec(&e.reply).unwrap())).unwrap();
        send.send_response(response);
    }
}

/// Reconciles `object` once against `script`, and returns what the controller does next: the reconcile's action,
/// or `error_policy`'s for a cleanup that waits. Any other error fails the test.
async fn run_as<K: crate::Owner>(object: Value, script: Vec<Expect>) -> Action {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, registry(), Config::default(), Arc::new(Metrics::default())));
    let server = tokio::spawn(serve(handle, script));
    let object: Arc<K> = Arc::new(serde_json::from_value(object).expect("object deserialises"));
    let result = tokio::time::timeout(Duration::from_secs(30), crate::reconcile(object.clone(), ctx.clone()))
        .await
        .expect("reconcile finished");
    let action = match result {
        Ok(action) => action,
        Err(e) if e.is_waiting() => crate::error_policy(object, &e, ctx.clone()),
        Err(e) => panic!("reconcile failed: {e}"),
    };
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("script done").expect("script passed");
    drop(ctx);
    action
}

async fn run(ws: Value, script: Vec<Expect>) -> Action {
    run_as::<Workspace>(ws, script).await
}

fn workspace(finalizers: Value, status: Value) -> Value {
    json!({
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
        "metadata": {"name": "workspace-phi-3-5-mini", "namespace": "default", "uid": "ws-uid", "generation": 1, "resourceVersion": "1", "finalizers": finalizers},
        "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": "phi-3-5"}}},
        "inference": {"preset": {"name": "phi-3.5-mini-instruct"}},
        "status": status
    })
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "2"}, "items": items})
}

fn ready_node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": CLAIM, "labels": {"apps": "phi-3-5"}},
           "status": {"conditions": [{"type": "Ready", "status": "True"}], "capacity": {"nvidia.com/gpu": "1"}}})
}

fn ready_claim() -> Value {
    json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
           "metadata": {"name": CLAIM, "labels": {"kaito.sh/workspace": "workspace-phi-3-5-mini", "kaito.sh/workspacenamespace": "default"}},
           "spec": {}, "status": {"nodeName": CLAIM, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn event(reason: &'static str, kind: &'static str) -> Expect {
    expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events?",
        move |b| {
            assert_eq!((b["reason"].as_str(), b["type"].as_str()), (Some(reason), Some(kind)), "{b}");
            assert_eq!(b["regarding"]["name"], "workspace-phi-3-5-mini");
            assert_eq!(b["reportingController"], "kaito-operator");
        },
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null}),
    )
}

const NODES: &str = "/api/v1/nodes?&labelSelector=apps%3Dphi-3-5";
const CLAIMS: &str = "/apis/karpenter.sh/v1/nodeclaims?&labelSelector=kaito.sh%2Fworkspace%3Dworkspace-phi-3-5-mini%2Ckaito.sh%2Fworkspacenamespace%3Ddefault";
const APPLY: &str = "?&force=true&fieldManager=kaito-operator";

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind)).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn the_finalizer_comes_first_then_the_nodeclaim() {
    // kube-runtime's finalizer helper: the patch alone, and the watch event it causes brings the next reconcile.
    let script = vec![expect(
        "PATCH",
        format!("{WS}?"),
        |b| {
            assert_eq!(
                b,
                &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                        {"op": "add", "path": "/metadata/finalizers", "value": ["workspace.finalizer.kaito.sh"]}])
            )
        },
        workspace(json!(["workspace.finalizer.kaito.sh"]), Value::Null),
    )];
    assert_eq!(run(workspace(Value::Null, Value::Null), script).await, Action::await_change());
    // Another writer's finalizer is kept: the test operation pins the whole list.
    let script = vec![expect(
        "PATCH",
        format!("{WS}?"),
        |b| {
            assert_eq!(
                b,
                &json!([{"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
                        {"op": "add", "path": "/metadata/finalizers/-", "value": "workspace.finalizer.kaito.sh"}])
            )
        },
        workspace(json!(["example.com/keep", "workspace.finalizer.kaito.sh"]), Value::Null),
    )];
    assert_eq!(run(workspace(json!(["example.com/keep"]), Value::Null), script).await, Action::await_change());

    let script = vec![
        expect("GET", NODES, |_| {}, list(vec![])),
        expect("GET", CLAIMS, |_| {}, list(vec![])),
        expect(
            "POST",
            "/apis/karpenter.sh/v1/nodeclaims?&fieldManager=kaito-operator",
            |b| {
                assert_eq!(b["kind"], "NodeClaim");
                assert_eq!(b["metadata"]["name"], CLAIM);
                assert_eq!(b["metadata"]["labels"]["kaito.sh/workspace"], "workspace-phi-3-5-mini");
                assert_eq!(b["spec"]["requirements"][1]["values"][0], "Standard_NC24ads_A100_v4");
            },
            json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": CLAIM}, "spec": {}}),
        ),
        event("NodeClaimCreated", "Normal"),
        expect(
            "PATCH",
            format!("{WS}/status{APPLY}"),
            |b| {
                assert_eq!(
                    (b["apiVersion"].as_str(), b["kind"].as_str()),
                    (Some("kaito.sh/v1beta1"), Some("Workspace"))
                );
                let s = &b["status"];
                assert_eq!(s["state"], "Pending");
                assert_eq!(s["targetNodeCount"], 1);
                assert_eq!(s["observedGeneration"], 1);
                assert_eq!(condition(s, "NodeClaimReady")["reason"], "NodeClaimNotLaunched");
                assert_eq!(condition(s, "WorkspaceSucceeded")["status"], "False");
                assert_eq!(condition(s, "WorkspaceSucceeded")["observedGeneration"], 1);
            },
            workspace(json!(["workspace.finalizer.kaito.sh"]), Value::Null),
        ),
        event("NodeClaimNotLaunched", "Normal"),
    ];
    let action = run(workspace(json!(["workspace.finalizer.kaito.sh"]), Value::Null), script).await;
    assert_eq!(action, Action::requeue(Config::default().poll));
}

#[tokio::test]
async fn ready_nodes_get_the_workload_by_server_side_apply() {
    // What a real API server answers once the StatefulSet controller has rolled out this generation.
    let sts_reply = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "workspace-phi-3-5-mini", "namespace": "default", "generation": 1},
        "spec": {"replicas": 1, "selector": {}, "serviceName": "workspace-phi-3-5-mini-headless", "template": {}},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "workspace-phi-3-5-mini-7bb4c57689", "updateRevision": "workspace-phi-3-5-mini-7bb4c57689"}});
    let svc = |name: &'static str| {
        expect(
            "PATCH",
            format!("/api/v1/namespaces/default/services/{name}{APPLY}"),
            move |b| {
                assert_eq!(b["metadata"]["name"], name);
                assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "ws-uid");
            },
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}}),
        )
    };
    let script = vec![
        expect("GET", NODES, |_| {}, list(vec![ready_node()])),
        expect("GET", CLAIMS, |_| {}, list(vec![ready_claim()])),
        svc("workspace-phi-3-5-mini"),
        svc("workspace-phi-3-5-mini-headless"),
        expect(
            "PATCH",
            format!("/apis/apps/v1/namespaces/default/statefulsets/workspace-phi-3-5-mini{APPLY}"),
            |b| {
                assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "Workspace");
                let template = &b["spec"]["template"];
                assert!(
                    template["metadata"]["annotations"]["workspace.kaito.io/revision"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("workspace-phi-3-5-mini-"))
                );
                assert_eq!(template["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "1");
            },
            sts_reply,
        ),
        expect(
            "GET",
            "/api/v1/namespaces/default/pods?&labelSelector=kaito.sh%2Fworkspace%3Dworkspace-phi-3-5-mini",
            |_| {},
            list(vec![]),
        ),
        expect(
            "PATCH",
            format!("{WS}/status{APPLY}"),
            |b| {
                let s = &b["status"];
                assert_eq!(s["state"], "Ready");
                assert_eq!(s["workerNodes"], json!([CLAIM]));
                assert!(s["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{s}");
            },
            workspace(json!(["workspace.finalizer.kaito.sh"]), Value::Null),
        ),
        event("WorkspaceSucceeded", "Normal"),
    ];
    let action = run(workspace(json!(["workspace.finalizer.kaito.sh"]), Value::Null), script).await;
    assert_eq!(action, Action::requeue(Config::default().resync));
}

#[tokio::test]
async fn deletion_removes_nodeclaims_then_the_finalizer() {
    let mut deleting = workspace(json!(["workspace.finalizer.kaito.sh"]), json!({"state": "Ready"}));
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-29T12:00:00Z");
    let script = vec![
        expect(
            "PATCH",
            format!("{WS}/status{APPLY}"),
            |b| {
                assert_eq!(b["status"]["state"], "Deleting");
                assert_eq!(condition(&b["status"], "WorkspaceDeleting")["status"], "True");
            },
            deleting.clone(),
        ),
        event("WorkspaceDeleting", "Normal"),
        expect("GET", CLAIMS, |_| {}, list(vec![ready_claim()])),
        expect(
            "DELETE",
            format!("/apis/karpenter.sh/v1/nodeclaims/{CLAIM}?"),
            |b| assert_eq!(b["propagationPolicy"], "Background"),
            ready_claim(),
        ),
    ];
    assert_eq!(run(deleting.clone(), script).await, Action::requeue(Config::default().poll));

    deleting["status"] = json!({"state": "Deleting", "conditions": [{"type": "WorkspaceDeleting", "status": "True", "reason": "Deleting", "message": "", "lastTransitionTime": "2026-11-29T12:00:00Z"}]});
    let script = vec![
        expect("GET", CLAIMS, |_| {}, list(vec![])),
        expect(
            "PATCH",
            format!("{WS}?"),
            |b| {
                assert_eq!(
                    b,
                    &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "workspace.finalizer.kaito.sh"},
                            {"op": "remove", "path": "/metadata/finalizers/0"}])
                )
            },
            deleting.clone(),
        ),
    ];
    assert_eq!(run(deleting, script).await, Action::await_change());
}

#[tokio::test]
async fn a_plugin_failure_is_a_condition_and_a_warning() {
    let mut ws = workspace(json!(["workspace.finalizer.kaito.sh"]), Value::Null);
    ws["inference"]["preset"]["name"] = json!("phi-5-mini-instruct");
    let script = vec![
        expect("GET", NODES, |_| {}, list(vec![])),
        expect(
            "PATCH",
            format!("{WS}/status{APPLY}"),
            |b| {
                let s = &b["status"];
                assert_eq!(s["state"], "Failed");
                let c = condition(s, "WorkspaceSucceeded");
                assert_eq!(c["status"], "False");
                assert_eq!(c["reason"], "InvalidWorkspace");
                assert!(c["message"].as_str().unwrap().contains("phi-4-mini-instruct"), "names close presets: {c}");
            },
            ws.clone(),
        ),
        expect(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/default/events?",
            |b| assert_eq!(b["type"], "Warning"),
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null}),
        ),
    ];
    assert_eq!(run(ws, script).await, Action::requeue(Config::default().retry));
}

#[tokio::test]
async fn deletion_finishes_when_the_nodeclaim_crd_is_absent() {
    let mut deleting = workspace(
        json!(["workspace.finalizer.kaito.sh"]),
        json!({"state": "Deleting", "conditions": [
        {"type": "WorkspaceDeleting", "status": "True", "reason": "Deleting", "message": "", "lastTransitionTime": "2026-11-29T12:00:00Z"}]}),
    );
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-29T12:00:00Z");
    let mut missing = expect(
        "GET",
        CLAIMS,
        |_| {},
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404}),
    );
    missing.code = 404;
    let script =
        vec![missing, expect("PATCH", format!("{WS}?"), |b| assert_eq!(b[1]["op"], "remove"), deleting.clone())];
    assert_eq!(run(deleting, script).await, Action::await_change());
}

const RAG: &str = "/apis/kaito.sh/v1beta1/namespaces/default/ragengines/rag";

fn ragengine(finalizers: Value) -> Value {
    json!({
        "apiVersion": "kaito.sh/v1beta1", "kind": "RAGEngine",
        "metadata": {"name": "rag", "namespace": "default", "uid": "rag-uid", "generation": 2, "resourceVersion": "7", "finalizers": finalizers},
        "spec": {
            "compute": {"labelSelector": {"matchLabels": {"rag": "yes"}}},
            "embedding": {"remote": {"url": "http://tei/v1", "accessSecret": "tei"}},
            "inferenceService": {"url": "http://phi/v1/chat/completions", "contextWindowSize": 4096}
        }
    })
}

#[tokio::test]
async fn ragengine_applies_service_and_deployment_on_a_ready_node() {
    let script = vec![expect(
        "PATCH",
        format!("{RAG}?"),
        |b| {
            assert_eq!(
                b,
                &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                        {"op": "add", "path": "/metadata/finalizers", "value": ["ragengine.finalizer.kaito.sh"]}])
            )
        },
        ragengine(json!(["ragengine.finalizer.kaito.sh"])),
    )];
    assert_eq!(run_as::<kaito_crd::RAGEngine>(ragengine(Value::Null), script).await, Action::await_change());
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "cpu-1", "labels": {"rag": "yes"}},
                      "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    // What a real API server answers once the Deployment controller has rolled out this generation.
    let deploy_reply = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rag", "namespace": "default", "generation": 1},
        "spec": {"replicas": 1, "selector": {}, "template": {}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}});
    let script = vec![
        expect("GET", "/api/v1/nodes?&labelSelector=rag%3Dyes", |_| {}, list(vec![node])),
        expect(
            "PATCH",
            format!("/api/v1/namespaces/default/services/rag{APPLY}"),
            |b| {
                assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "rag-uid");
                assert_eq!(b["spec"]["ports"][0]["port"], 80);
            },
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rag", "namespace": "default"}}),
        ),
        expect(
            "PATCH",
            format!("/apis/apps/v1/namespaces/default/deployments/rag{APPLY}"),
            |b| {
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(
                    pod["containers"][0]["image"],
                    format!("ghcr.io/kaito-rs/kaito-rag:{}", env!("CARGO_PKG_VERSION"))
                );
                assert_eq!(pod["containers"][0]["env"][0], json!({"name": "EMBEDDING_URL", "value": "http://tei/v1"}));
                assert_eq!(pod["nodeSelector"], json!({"rag": "yes"}));
                assert_eq!(b["spec"]["strategy"]["type"], "Recreate");
            },
            deploy_reply,
        ),
        expect(
            "PATCH",
            format!("{RAG}/status{APPLY}"),
            |b| {
                assert_eq!(
                    (b["apiVersion"].as_str(), b["kind"].as_str()),
                    (Some("kaito.sh/v1beta1"), Some("RAGEngine"))
                );
                let s = &b["status"];
                assert_eq!(condition(s, "ResourceReady")["reason"], "NodesReady");
                assert_eq!(condition(s, "ServiceReady")["status"], "True");
                assert_eq!(condition(s, "ServiceReady")["observedGeneration"], 2);
                assert_eq!(s["workerNodes"], json!(["cpu-1"]));
            },
            ragengine(json!(["ragengine.finalizer.kaito.sh"])),
        ),
        expect(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/default/events?",
            |b| {
                assert_eq!((b["reason"].as_str(), b["type"].as_str()), (Some("ServiceReady"), Some("Normal")), "{b}");
                assert_eq!(b["regarding"]["kind"], "RAGEngine");
            },
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null}),
        ),
    ];
    let action = run_as::<kaito_crd::RAGEngine>(ragengine(json!(["ragengine.finalizer.kaito.sh"])), script).await;
    assert_eq!(action, Action::requeue(Config::default().resync));
}

const SETS: &str = "/apis/kaito.sh/v1beta1/namespaces/default/inferencesets/phi";
const SET_WORKSPACES: &str = "/apis/kaito.sh/v1beta1/namespaces/default/workspaces";
const SET_LIST: &str =
    "/apis/kaito.sh/v1beta1/namespaces/default/workspaces?&labelSelector=inferenceset.kaito.sh%2Fcreated-by%3Dphi";

fn inferenceset(replicas: i64, limit: Option<i64>) -> Value {
    let mut set = json!({
        "apiVersion": "kaito.sh/v1beta1", "kind": "InferenceSet",
        "metadata": {"name": "phi", "namespace": "default", "uid": "set-uid", "generation": 3, "resourceVersion": "9",
                     "finalizers": ["inferenceset.finalizer.kaito.sh"]},
        "spec": {
            "replicas": replicas,
            "labelSelector": {"matchLabels": {"apps": "phi"}},
            "template": {"resource": {"instanceType": "Standard_NC24ads_A100_v4"},
                         "inference": {"preset": {"name": "phi-4-mini-instruct"}}}
        }
    });
    if let Some(limit) = limit {
        set["spec"]["nodeCountLimit"] = json!(limit);
    }
    set
}

/// A Workspace of the set `phi` at `index`, made from `set`'s template, Ready for its generation.
fn set_workspace(set: &Value, index: u32, ready: bool) -> Value {
    let parsed: kaito_crd::InferenceSet = serde_json::from_value(set.clone()).unwrap();
    let mut ws = serde_json::to_value(parsed.workspace(index)).unwrap();
    ws["metadata"]["generation"] = json!(1);
    ws["status"] = json!({"observedGeneration": 1, "state": if ready {"Ready"} else {"Pending"}, "conditions": [
        {"type": "WorkspaceSucceeded", "status": if ready {"True"} else {"False"}, "reason": "x", "message": "",
         "observedGeneration": 1, "lastTransitionTime": "2026-12-01T00:00:00Z"}]});
    ws
}

fn set_event(reason: &'static str, kind: &'static str) -> Expect {
    expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events?",
        move |b| {
            assert_eq!((b["reason"].as_str(), b["type"].as_str()), (Some(reason), Some(kind)), "{b}");
            assert_eq!(
                (b["regarding"]["kind"].as_str(), b["regarding"]["name"].as_str()),
                (Some("InferenceSet"), Some("phi"))
            );
        },
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null}),
    )
}

#[tokio::test]
async fn inferenceset_creates_its_workspaces_from_the_template() {
    let set = inferenceset(2, None);
    let created = |index: u32| {
        let set = set.clone();
        expect(
            "POST",
            format!("{SET_WORKSPACES}?&fieldManager=kaito-operator"),
            move |b| {
                assert_eq!(b["metadata"]["name"], format!("phi-{index}"));
                assert_eq!(
                    b["metadata"]["labels"],
                    json!({"inferenceset.kaito.sh/created-by": "phi", "inferenceset.kaito.sh/index": index.to_string()})
                );
                assert_eq!(
                    b["metadata"]["ownerReferences"],
                    json!([{"apiVersion": "kaito.sh/v1beta1", "kind": "InferenceSet", "name": "phi", "uid": "set-uid", "controller": true, "blockOwnerDeletion": true}])
                );
                assert_eq!(
                    b["resource"],
                    json!({"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": "phi"}}})
                );
                assert_eq!(b["inference"], set["spec"]["template"]["inference"]);
            },
            json!({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": format!("phi-{index}"), "namespace": "default"}}),
        )
    };
    let script = vec![
        expect("GET", SET_LIST, |_| {}, list(vec![])),
        created(0),
        set_event("WorkspaceCreated", "Normal"),
        created(1),
        set_event_again(),
        expect(
            "PATCH",
            format!("{SETS}/status{APPLY}"),
            |b| {
                assert_eq!(
                    (b["apiVersion"].as_str(), b["kind"].as_str()),
                    (Some("kaito.sh/v1beta1"), Some("InferenceSet"))
                );
                let s = &b["status"];
                assert_eq!(
                    (s["replicas"].as_i64(), s["readyReplicas"].as_i64(), s["updatedReplicas"].as_i64()),
                    (Some(2), Some(0), Some(2))
                );
                assert_eq!(s["selector"], "inferenceset.kaito.sh/created-by=phi");
                assert_eq!(s["observedGeneration"], 3);
                let c = condition(s, "InferenceSetReady");
                assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("InferenceSetNotReady")));
                assert_eq!(c["message"], "0/2 replica(s) are ready");
            },
            set.clone(),
        ),
        set_event("InferenceSetNotReady", "Normal"),
    ];
    assert_eq!(run_as::<kaito_crd::InferenceSet>(set.clone(), script).await, Action::requeue(Config::default().poll));
}

#[tokio::test]
async fn inferenceset_scales_down_from_the_highest_index() {
    let set = inferenceset(1, None);
    let ws: Vec<Value> = (0..3).map(|i| set_workspace(&set, i, true)).collect();
    let deleted = |name: &'static str| {
        expect(
            "DELETE",
            format!("{SET_WORKSPACES}/{name}?"),
            |b| assert_eq!(b["propagationPolicy"], "Background"),
            json!({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name}}),
        )
    };
    let script = vec![
        expect("GET", SET_LIST, |_| {}, list(ws)),
        deleted("phi-2"),
        set_event("WorkspaceDeleted", "Normal"),
        deleted("phi-1"),
        set_event_again(),
        expect(
            "PATCH",
            format!("{SETS}/status{APPLY}"),
            |b| {
                let s = &b["status"];
                assert_eq!((s["replicas"].as_i64(), s["readyReplicas"].as_i64()), (Some(1), Some(1)));
                assert_eq!(condition(s, "InferenceSetReady")["status"], "True");
            },
            set.clone(),
        ),
        set_event("InferenceSetReady", "Normal"),
    ];
    assert_eq!(run_as::<kaito_crd::InferenceSet>(set, script).await, Action::requeue(Config::default().resync));
}

#[tokio::test]
async fn inferenceset_rolls_one_workspace_and_replaces_what_cannot_change_in_place() {
    let old = inferenceset(2, None);
    let ws: Vec<Value> = (0..2).map(|i| set_workspace(&old, i, true)).collect();
    let mut set = old.clone();
    set["spec"]["template"]["inference"]["preset"]["name"] = json!("phi-4");
    let refused = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Invalid", "code": 422,
        "message": "Workspace.kaito.sh \"phi-1\" is invalid: inference.preset: Invalid value: \"object\": inference.preset is immutable"});
    let mut apply = expect(
        "PATCH",
        format!("{SET_WORKSPACES}/phi-1{APPLY}"),
        |b| {
            assert_eq!(b["inference"]["preset"]["name"], "phi-4");
            assert_eq!(b["metadata"]["labels"]["inferenceset.kaito.sh/index"], "1");
        },
        refused,
    );
    apply.code = 422;
    // maxUnavailable 1: phi-1 goes (highest index first); phi-0 keeps serving until phi-1 is back.
    let script = vec![
        expect("GET", SET_LIST, |_| {}, list(ws)),
        apply,
        expect(
            "DELETE",
            format!("{SET_WORKSPACES}/phi-1?"),
            |_| {},
            json!({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "phi-1"}}),
        ),
        set_event("WorkspaceReplaced", "Normal"),
        expect(
            "PATCH",
            format!("{SETS}/status{APPLY}"),
            |b| {
                let s = &b["status"];
                assert_eq!(
                    (s["replicas"].as_i64(), s["readyReplicas"].as_i64(), s["updatedReplicas"].as_i64()),
                    (Some(2), Some(2), Some(0))
                );
                assert_eq!(condition(s, "InferenceSetReady")["reason"], "RolloutInProgress");
            },
            set.clone(),
        ),
        set_event("RolloutInProgress", "Normal"),
    ];
    assert_eq!(run_as::<kaito_crd::InferenceSet>(set, script).await, Action::requeue(Config::default().poll));
}

#[tokio::test]
async fn inferenceset_holds_its_node_count_limit() {
    let set = inferenceset(3, Some(2));
    let script = vec![
        expect("GET", SET_LIST, |_| {}, list(vec![set_workspace(&set, 0, true)])),
        // Sizing a replica: the estimator plans the template's Workspace (one A100 node for phi-4-mini).
        expect("GET", "/api/v1/nodes?&labelSelector=apps%3Dphi", |_| {}, list(vec![])),
        expect(
            "POST",
            format!("{SET_WORKSPACES}?&fieldManager=kaito-operator"),
            |b| assert_eq!(b["metadata"]["name"], "phi-1"),
            json!({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "phi-1", "namespace": "default"}}),
        ),
        set_event("WorkspaceCreated", "Normal"),
        expect(
            "PATCH",
            format!("{SETS}/status{APPLY}"),
            |b| {
                let s = &b["status"];
                assert_eq!(s["replicas"], 2);
                let c = condition(s, "InferenceSetReady");
                assert_eq!(c["reason"], "NodeCountLimitReached");
                assert_eq!(
                    c["message"],
                    "2 of 3 replica(s) made: each needs 1 node(s) and spec.nodeCountLimit is 2; raise the limit or lower spec.replicas"
                );
            },
            set.clone(),
        ),
        set_event("NodeCountLimitReached", "Warning"),
    ];
    assert_eq!(run_as::<kaito_crd::InferenceSet>(set, script).await, Action::requeue(Config::default().poll));
}

#[tokio::test]
async fn inferenceset_deletion_waits_for_its_workspaces() {
    let mut set = inferenceset(1, None);
    set["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    let script = vec![
        expect(
            "PATCH",
            format!("{SETS}/status{APPLY}"),
            |b| assert_eq!(condition(&b["status"], "InferenceSetDeleting")["status"], "True"),
            set.clone(),
        ),
        expect("GET", SET_LIST, |_| {}, list(vec![set_workspace(&set, 0, true)])),
        expect(
            "DELETE",
            format!("{SET_WORKSPACES}/phi-0?"),
            |_| {},
            json!({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "phi-0"}}),
        ),
    ];
    assert_eq!(run_as::<kaito_crd::InferenceSet>(set.clone(), script).await, Action::requeue(Config::default().poll));
    set["status"] = json!({"conditions": [{"type": "InferenceSetDeleting", "status": "True", "reason": "Deleting", "message": "", "lastTransitionTime": "2026-12-01T00:00:00Z"}]});
    let script = vec![
        expect("GET", SET_LIST, |_| {}, list(vec![])),
        expect(
            "PATCH",
            format!("{SETS}?"),
            |b| {
                assert_eq!(
                    b,
                    &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "inferenceset.finalizer.kaito.sh"}, {"op": "remove", "path": "/metadata/finalizers/0"}])
                )
            },
            set.clone(),
        ),
    ];
    assert_eq!(run_as::<kaito_crd::InferenceSet>(set, script).await, Action::await_change());
}

/// The same reason again for the same object: kube's recorder counts it in the series it started (a PATCH).
fn set_event_again() -> Expect {
    expect(
        "PATCH",
        "/apis/events.k8s.io/v1/namespaces/default/events/phi.*",
        |b| assert!(b["series"]["count"].as_i64().is_some_and(|n| n >= 2), "{b}"),
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null}),
    )
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason,
           "reason": reason, "code": code})
}

fn failing(method: &'static str, uri: &str, code: u16, reason: &str) -> Expect {
    Expect { code, ..expect(method, uri, |_| {}, status(code, reason)) }
}

/// Runs `f` with a client whose API server is `script`.
async fn with_script<T>(script: Vec<Expect>, f: impl AsyncFnOnce(kube::Client) -> T) -> T {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, script));
    let out =
        tokio::time::timeout(Duration::from_secs(30), f(kube::Client::new(service, "default"))).await.expect("done");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("script done").expect("script passed");
    out
}

fn webhook_config() -> crate::conversion::WebhookConfig {
    crate::conversion::WebhookConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        endpoint: crate::conversion::Endpoint::Service { name: "rag-webhook".into(), port: 443 },
        namespace: "kaito-system".into(),
        secret: "rag-webhook-cert".into(),
    }
}

const CERT_SECRET: &str = "/api/v1/namespaces/kaito-system/secrets/rag-webhook-cert";

/// Two replicas start together: this one finds no Secret, loses the create race (409), and serves the winner's.
#[tokio::test]
async fn webhook_certificates_lost_create_race_serves_the_winners() {
    let winner = {
        let (certs, until) = crate::conversion::generate(&webhook_config().subject_alt_names()).expect("certificates");
        let data = json!({"ca.crt": b64(&certs.ca), "tls.crt": b64(&certs.cert), "tls.key": b64(&certs.key)});
        (
            certs,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "data": data,
            "metadata": {"name": "rag-webhook-cert", "namespace": "kaito-system", "resourceVersion": "7", "annotations": {
                "kaito.sh/webhook-cert-sans": "rag-webhook.kaito-system.svc,rag-webhook.kaito-system.svc.cluster.local",
                "kaito.sh/webhook-cert-expires-year": until.to_string()}}}),
        )
    };
    let script = vec![
        failing("GET", CERT_SECRET, 404, "NotFound"),
        Expect {
            code: 409,
            ..expect(
                "POST",
                "/api/v1/namespaces/kaito-system/secrets?",
                |b| {
                    assert_eq!(
                        (b["type"].as_str(), b["metadata"]["name"].as_str()),
                        (Some("kubernetes.io/tls"), Some("rag-webhook-cert"))
                    );
                    let keys: Vec<_> = b["data"].as_object().unwrap().keys().cloned().collect();
                    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
                    assert_eq!(
                        b["metadata"]["annotations"]["kaito.sh/webhook-cert-sans"],
                        "rag-webhook.kaito-system.svc,rag-webhook.kaito-system.svc.cluster.local"
                    );
                },
                status(409, "AlreadyExists"),
            )
        },
        expect("GET", CERT_SECRET, |_| {}, winner.1),
    ];
    let got = with_script(script, async |c| crate::conversion::certificates(&c, &webhook_config()).await).await;
    assert_eq!(got.expect("certificates"), winner.0);

    // A server error is not retried as a race: it fails the start, naming the call.
    let script = vec![failing("GET", CERT_SECRET, 500, "InternalError")];
    let got = with_script(script, async |c| crate::conversion::certificates(&c, &webhook_config()).await).await;
    assert!(got.unwrap_err().to_string().contains("InternalError"));
}

fn b64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap().as_str().unwrap().to_string()
}

/// Registration: one JSON patch that checks v1alpha1's position, serves it and sets the conversion; nothing when
/// both are already so; a CRD without v1alpha1 is an error naming the fix.
#[tokio::test]
async fn webhook_registration_patches_the_crd_once() {
    const CRD: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ragengines.kaito.sh";
    let crd = |served: bool, conversion: Value| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ragengines.kaito.sh", "resourceVersion": "3"},
            "spec": {"group": "kaito.sh", "scope": "Namespaced", "conversion": conversion,
                "names": {"kind": "RAGEngine", "plural": "ragengines"},
                "versions": [{"name": "v1beta1", "served": true, "storage": true}, {"name": "v1alpha1", "served": served, "storage": false}]}})
    };
    let wanted = serde_json::to_value(webhook_config().conversion("CA PEM")).unwrap();
    let script = vec![
        expect("GET", CRD, |_| {}, crd(false, json!({"strategy": "None"}))),
        expect(
            "PATCH",
            format!("{CRD}?"),
            {
                let wanted = wanted.clone();
                move |b| {
                    assert_eq!(
                        *b,
                        json!([
                            {"op": "test", "path": "/spec/versions/1/name", "value": "v1alpha1"},
                            {"op": "replace", "path": "/spec/versions/1/served", "value": true},
                            {"op": "add", "path": "/spec/conversion", "value": wanted},
                        ])
                    )
                }
            },
            crd(true, wanted.clone()),
        ),
    ];
    with_script(script, async |c| crate::conversion::register(&c, &webhook_config(), "CA PEM").await.unwrap()).await;
    let script = vec![expect("GET", CRD, |_| {}, crd(true, wanted.clone()))];
    with_script(script, async |c| crate::conversion::register(&c, &webhook_config(), "CA PEM").await.unwrap()).await;
    let mut old = crd(true, wanted);
    old["spec"]["versions"].as_array_mut().unwrap().pop();
    let script = vec![expect("GET", CRD, |_| {}, old)];
    let err = with_script(script, async |c| crate::conversion::register(&c, &webhook_config(), "CA PEM").await).await;
    assert!(err.unwrap_err().to_string().contains("apply the chart's CRD"));
}
