//! An in-memory Kubernetes API server for driving the operator without a cluster.
//!
//! It is a `tower::Service` behind a real `kube::Client`, so the operator's
//! own requests (GET, LIST with label selectors, POST, PUT with
//! resourceVersion checks, server-side apply, merge and JSON patches, DELETE
//! with finalizers and owner-reference garbage collection) hit a stateful
//! store. It has no watch: tests call `reconcile` themselves. Stand-ins for
//! Karpenter and the kubelet ([`Cluster::provision`], [`Cluster::run_pods`])
//! move the cluster on between reconciles. Server-side apply is modelled for
//! one manager: the applied fields are merged into the live object.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

/// Collection paths of the kinds the tests touch.
pub mod paths {
    pub const WORKSPACES: &str = "apis/kaito.sh/v1beta1/workspaces";
    pub const RAGENGINES: &str = "apis/kaito.sh/v1beta1/ragengines";
    pub const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
    pub const NODECLAIMS: &str = "apis/karpenter.sh/v1/nodeclaims";
    pub const NODEPOOLS: &str = "apis/karpenter.sh/v1/nodepools";
    pub const NODES: &str = "api/v1/nodes";
    pub const PODS: &str = "api/v1/pods";
    pub const SERVICES: &str = "api/v1/services";
    pub const STATEFULSETS: &str = "apis/apps/v1/statefulsets";
    pub const EVENTS: &str = "apis/events.k8s.io/v1/events";
    pub const LEASES: &str = "apis/coordination.k8s.io/v1/leases";
}

type Key = (String, String);

/// An object as the store keeps it: serialised, as etcd would, with the
/// fields that queries look at kept aside.
struct Stored {
    labels: Value,
    owners: Vec<Value>,
    bytes: Vec<u8>,
}

impl Stored {
    fn new(obj: &Value) -> Self {
        let owners =
            obj["metadata"]["ownerReferences"].as_array().map(|r| r.iter().map(|o| o["uid"].clone()).collect());
        Stored {
            labels: obj["metadata"]["labels"].clone(),
            owners: owners.unwrap_or_default(),
            bytes: serde_json::to_vec(obj).expect("JSON serialises"),
        }
    }

    fn value(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("stored JSON parses")
    }
}

#[derive(Default)]
struct State {
    /// collection path → (namespace, name) → object.
    objects: BTreeMap<String, BTreeMap<Key, Stored>>,
    version: u64,
    /// `METHOD path?query` of every request, in order.
    log: Vec<String>,
}

/// A shared in-memory cluster; clones see the same store.
#[derive(Clone, Default)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
}

struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match *segs.first()? {
        "api" => (format!("api/{}", segs.get(1)?), &segs[2..]),
        "apis" => (format!("apis/{}/{}", segs.get(1)?, segs.get(2)?), &segs[3..]),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..] => (Some(ns.to_string()), [&[*resource][..], tail].concat()),
        _ => (None, rest.to_vec()),
    };
    Some(Target {
        collection: format!("{prefix}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into())
}

/// Equality-based selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`), comma-joined.
pub fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k].as_str() == Some(v)
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

/// Merge `patch` into `base`: objects field by field, everything else replaced.
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                deep_merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn status_error(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn spec_part(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl State {
    fn bump(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn store(&mut self, collection: &str, obj: Value) {
        let key = (
            obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        );
        self.objects.entry(collection.to_string()).or_default().insert(key, Stored::new(&obj));
    }

    fn create(&mut self, collection: &str, ns: Option<&str>, mut obj: Value) -> Result<Value, (StatusCode, Value)> {
        let meta = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| status_error(StatusCode::BAD_REQUEST, "BadRequest", "object has no metadata".into()))?;
        if meta.get("name").and_then(Value::as_str).is_none() {
            let prefix = meta.get("generateName").and_then(Value::as_str).unwrap_or("object-").to_string();
            meta.insert("name".into(), json!(format!("{prefix}{:05}", self.version + 1)));
        }
        if let Some(ns) = ns {
            meta.insert("namespace".into(), json!(ns));
        }
        let key = (ns.unwrap_or_default().to_string(), meta["name"].as_str().unwrap_or_default().to_string());
        if self.objects.get(collection).is_some_and(|c| c.contains_key(&key)) {
            return Err(status_error(StatusCode::CONFLICT, "AlreadyExists", format!("{} already exists", key.1)));
        }
        let version = self.bump();
        let meta = obj["metadata"].as_object_mut().expect("checked above");
        meta.insert("uid".into(), json!(format!("uid-{version}")));
        meta.insert("resourceVersion".into(), json!(version));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        self.store(collection, obj.clone());
        Ok(obj)
    }

    /// Store `new` over `old`, with the API server's bookkeeping, and finish a deletion whose finalizers are gone.
    fn update(&mut self, collection: &str, old: &Value, mut new: Value) -> Value {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let changed = spec_part(old) != spec_part(&new);
        for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
            if let Some(v) = old["metadata"].get(field) {
                new["metadata"][field] = v.clone();
            }
        }
        new["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
        new["metadata"]["resourceVersion"] = json!(self.bump());
        let finalizers_gone = new["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if new["metadata"].get("deletionTimestamp").is_some() && finalizers_gone {
            self.remove(collection, &new);
        } else {
            self.store(collection, new.clone());
        }
        new
    }

    /// Remove an object and, as the garbage collector would, what it owns or (for NodeClaims) the node it made.
    fn remove(&mut self, collection: &str, obj: &Value) {
        let key = (
            obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        );
        if let Some(c) = self.objects.get_mut(collection) {
            c.remove(&key);
        }
        let uid = obj["metadata"]["uid"].clone();
        let mut dependents = Vec::new();
        for (coll, objects) in &self.objects {
            for o in objects.values().filter(|o| o.owners.contains(&uid)) {
                dependents.push((coll.clone(), o.value()));
            }
        }
        if collection == paths::NODECLAIMS
            && let Some(node) = obj["status"]["nodeName"].as_str()
            && let Some(n) = self.objects.get(paths::NODES).and_then(|c| c.get(&(String::new(), node.to_string())))
        {
            dependents.push((paths::NODES.into(), n.value()));
        }
        for (coll, o) in dependents {
            self.remove(&coll, &o);
        }
    }

    fn handle(&mut self, method: &Method, uri: &http::Uri, content_type: &str, body: &[u8]) -> (StatusCode, Value) {
        let Some(t) = parse_path(uri.path()) else {
            return status_error(StatusCode::NOT_FOUND, "NotFound", format!("no route for {}", uri.path()));
        };
        let ns = t.namespace.clone().unwrap_or_default();
        let body: Value =
            if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap_or(Value::Null) };
        let Some(name) = t.name.clone() else {
            return match *method {
                Method::GET => {
                    let selector = query(uri, "labelSelector").unwrap_or_default();
                    let items: Vec<Value> = self
                        .objects
                        .get(&t.collection)
                        .into_iter()
                        .flat_map(|c| c.iter())
                        .filter(|((n, _), _)| t.namespace.is_none() || *n == ns)
                        .filter(|(_, o)| selector_matches(&selector, &o.labels))
                        .map(|(_, o)| o.value())
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
                    )
                }
                Method::POST => match self.create(&t.collection, t.namespace.as_deref(), body) {
                    Ok(o) => (StatusCode::CREATED, o),
                    Err(e) => e,
                },
                _ => status_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{method} on a collection"),
                ),
            };
        };
        let key = (ns.clone(), name.clone());
        let existing = self.objects.get(&t.collection).and_then(|c| c.get(&key)).map(Stored::value);
        let not_found =
            || status_error(StatusCode::NOT_FOUND, "NotFound", format!("{} {name:?} not found", t.collection));
        let status_only = t.subresource.as_deref() == Some("status");
        match (method.clone(), existing) {
            (Method::GET, Some(o)) => (StatusCode::OK, o),
            (Method::PUT, Some(old)) => {
                let given = body["metadata"]["resourceVersion"].as_str();
                if given.is_some_and(|v| Some(v) != old["metadata"]["resourceVersion"].as_str()) {
                    return status_error(StatusCode::CONFLICT, "Conflict", "the object has been modified".into());
                }
                (StatusCode::OK, self.update(&t.collection, &old, body))
            }
            (Method::PATCH, existing) => {
                let apply = content_type.starts_with("application/apply-patch");
                let Some(old) = existing else {
                    if apply && !status_only {
                        return match self.create(&t.collection, t.namespace.as_deref(), body) {
                            Ok(o) => (StatusCode::CREATED, o),
                            Err(e) => e,
                        };
                    }
                    return not_found();
                };
                let mut new = old.clone();
                if content_type.starts_with("application/json-patch") {
                    let mut patch: json_patch::Patch = match serde_json::from_value(body) {
                        Ok(p) => p,
                        Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                    };
                    // As the API server's JSON patch library does: testing a missing path for null passes.
                    patch.0.retain(|op| match op {
                        json_patch::PatchOperation::Test(t) => {
                            !(t.value.is_null() && new.pointer(t.path.as_str()).is_none())
                        }
                        _ => true,
                    });
                    if let Err(e) = json_patch::patch(&mut new, &patch) {
                        return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
                    }
                } else if status_only {
                    let mut status = old["status"].clone();
                    if apply {
                        // Apply owns the whole status here: one manager writes it.
                        status = body["status"].clone();
                    } else {
                        json_patch::merge(&mut status, &body["status"]);
                    }
                    new["status"] = status;
                } else if apply {
                    let mut body = body;
                    if let Some(m) = body.as_object_mut() {
                        m.remove("status");
                    }
                    deep_merge(&mut new, &body);
                } else {
                    json_patch::merge(&mut new, &body);
                }
                if !status_only {
                    new["status"] = old["status"].clone();
                }
                (StatusCode::OK, self.update(&t.collection, &old, new))
            }
            (Method::DELETE, Some(mut o)) => {
                if o["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                    if o["metadata"].get("deletionTimestamp").is_none() {
                        o["metadata"]["deletionTimestamp"] = json!(now());
                        o["metadata"]["resourceVersion"] = json!(self.bump());
                        self.store(&t.collection, o.clone());
                    }
                    (StatusCode::OK, o)
                } else {
                    self.remove(&t.collection, &o);
                    (
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name}}),
                    )
                }
            }
            _ => not_found(),
        }
    }
}

/// GPU capacity every simulated node gets unless told otherwise.
pub const GPUS_PER_NODE: u32 = 1;

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Cluster::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kube client whose requests this cluster serves.
    pub fn client(&self) -> kube::Client {
        let state = self.state.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let state = state.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let (status, value) = {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.log.push(format!("{} {}", parts.method, parts.uri));
                    s.handle(&parts.method, &parts.uri, &content_type, &bytes)
                };
                let body = kube::client::Body::from(serde_json::to_vec(&value).expect("JSON serialises"));
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .expect("valid response"),
                )
            }
        });
        kube::Client::new(service, "default")
    }

    /// Create an object as a user would (`kubectl create`); `collection` is one of [`paths`].
    pub fn create(&self, collection: &str, obj: Value) -> Value {
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let ns = ns.or_else(|| {
            (!collection.ends_with("nodes") && !collection.contains("karpenter")).then(|| "default".into())
        });
        self.lock().create(collection, ns.as_deref(), obj).expect("object is new")
    }

    /// One object, if present.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(collection)?.get(&(namespace.to_string(), name.to_string())).map(Stored::value)
    }

    /// Every object of a collection.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.lock().objects.get(collection).map(|c| c.values().map(Stored::value).collect()).unwrap_or_default()
    }

    /// Replace an object's fields as a user's `kubectl apply` would (merge patch).
    pub fn edit(&self, collection: &str, namespace: &str, name: &str, patch: Value) {
        let mut s = self.lock();
        let old = s
            .objects
            .get(collection)
            .and_then(|c| c.get(&(namespace.into(), name.into())))
            .map(Stored::value)
            .expect("exists");
        let mut new = old.clone();
        json_patch::merge(&mut new, &patch);
        s.update(collection, &old, new);
    }

    /// `kubectl delete`: sets deletionTimestamp while finalizers remain.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let path = match namespace {
            "" => format!("/{collection}/{name}"),
            ns => {
                let (prefix, resource) = collection.rsplit_once('/').expect("collection path");
                format!("/{prefix}/namespaces/{ns}/{resource}/{name}")
            }
        };
        self.lock().handle(&Method::DELETE, &path.parse().expect("valid URI"), "", b"");
    }

    /// Requests seen so far, `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        self.lock().log.clear();
    }

    /// A Ready node with GPU capacity, as a bring-your-own node or one Karpenter made.
    pub fn add_node(&self, name: &str, labels: Value, gpus: u32) -> Value {
        self.create(
            paths::NODES,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "capacity": {"nvidia.com/gpu": gpus.to_string(), "cpu": "24", "memory": "220Gi"},
                    "allocatable": {"nvidia.com/gpu": gpus.to_string()}
                }
            }),
        )
    }

    /// Play Karpenter: every NodeClaim without a node gets a Ready node with its labels and becomes Ready;
    /// every NodePool gets its `replicas` nodes. Returns how many nodes were made.
    pub fn provision(&self, gpus: u32) -> usize {
        let mut made = 0;
        for claim in self.list(paths::NODECLAIMS) {
            if claim["status"]["nodeName"].is_string() || claim["metadata"].get("deletionTimestamp").is_some() {
                continue;
            }
            let name = claim["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let mut labels = claim["metadata"]["labels"].clone();
            for r in claim["spec"]["requirements"].as_array().into_iter().flatten() {
                if r["operator"] == "In"
                    && let Some(v) = r["values"][0].as_str()
                {
                    labels[r["key"].as_str().unwrap_or_default()] = json!(v);
                }
            }
            self.add_node(&name, labels, gpus);
            let ready =
                ["Launched", "Registered", "Initialized", "Ready"].map(|t| json!({"type": t, "status": "True"}));
            self.edit(paths::NODECLAIMS, "", &name, json!({"status": {"nodeName": name, "conditions": ready}}));
            made += 1;
        }
        for pool in self.list(paths::NODEPOOLS) {
            let name = pool["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let labels = pool["spec"]["template"]["metadata"]["labels"].clone();
            for i in 0..pool["spec"]["replicas"].as_u64().unwrap_or(0) {
                let node = format!("{name}-{i}");
                if self.get(paths::NODES, "", &node).is_none() {
                    self.add_node(&node, labels.clone(), gpus);
                    made += 1;
                }
            }
        }
        made
    }

    /// Play the StatefulSet controller and kubelet: every replica gets a Running, Ready pod and the rollout of the
    /// current generation completes.
    pub fn run_pods(&self) {
        for sts in self.list(paths::STATEFULSETS) {
            let (ns, name) = (
                sts["metadata"]["namespace"].as_str().unwrap_or_default(),
                sts["metadata"]["name"].as_str().unwrap_or_default(),
            );
            let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1);
            let revision = format!("{name}-{}", sts["metadata"]["generation"].as_i64().unwrap_or(1));
            for i in 0..replicas {
                let pod = format!("{name}-{i}");
                if self.get(paths::PODS, ns, &pod).is_none() {
                    self.create(
                        paths::PODS,
                        json!({
                            "apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod, "namespace": ns, "labels": sts["spec"]["template"]["metadata"]["labels"],
                                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": sts["metadata"]["uid"], "controller": true}]},
                            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                        }),
                    );
                }
            }
            self.edit(
                paths::STATEFULSETS,
                ns,
                name,
                // As the real controller reports a finished rollout: it has seen this generation and every replica
                // runs the update revision.
                json!({"status": {"observedGeneration": sts["metadata"]["generation"], "replicas": replicas,
                                  "readyReplicas": replicas, "updatedReplicas": replicas,
                                  "currentRevision": revision, "updateRevision": revision}}),
            );
        }
    }

    /// Make every pod of a StatefulSet crash with `reason` (e.g. OOMKilled) and mark it not ready.
    pub fn crash_pods(&self, namespace: &str, statefulset: &str, reason: &str) {
        for pod in self.list(paths::PODS) {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if pod["metadata"]["namespace"] != namespace || !name.starts_with(statefulset) {
                continue;
            }
            self.edit(
                paths::PODS,
                namespace,
                &name,
                json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [{
                    "name": statefulset, "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": reason, "exitCode": 137}}}]}}),
            );
        }
        self.edit(paths::STATEFULSETS, namespace, statefulset, json!({"status": {"readyReplicas": 0}}));
    }
}
