//! `kwok-provisioner`: a stand-in for the cloud behind Karpenter and KAITO's gpu-provisioner on the local test
//! control plane, where no cloud can be reached. It is the only hand-written part of that cluster; the API server,
//! the controllers, the scheduler and the nodes' lifecycle (KWOK) are upstream's.
//!
//! - A NodePool with `spec.replicas` (static capacity) gets that many NodeClaims made from its template.
//! - A NodeClaim gets a KWOK Node (`kwok.x-k8s.io/node: fake`) with its labels, its single-valued `In`
//!   requirements as labels, its taints, and the instance type's GPUs as `nvidia.com/gpu` capacity and GPU Feature
//!   Discovery labels; the instance types are read from this project's provisioner plugins. Its status then moves
//!   through Launched, Registered, Initialized and Ready as Karpenter reports them, Ready once KWOK made the node Ready.
//!   An unknown instance type is reported as Karpenter does: `Launched=False`, reason `InsufficientCapacity`.
//! - As the external provisioner of the `kaito-local-nvme-disk` StorageClass (`cargo xtask cluster up` creates it
//!   with `volumeBindingMode: WaitForFirstConsumer`, as the node's local NVMe is), it makes a PersistentVolume on the
//!   node the scheduler selected for each claim, and deletes released ones.
//! - Deletion follows Karpenter's `karpenter.sh/termination` finalizer: the node goes first, then the finalizer.
//!
//! Usage: `kwok-provisioner --kubeconfig=FILE --plugins=DIR[:DIR...]` (started by `cargo xtask cluster up`).

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const TERMINATION_FINALIZER: &str = "karpenter.sh/termination";
const NODEPOOL_LABEL: &str = "karpenter.sh/nodepool";
const MANAGED_BY: &str = "kaito.test/kwok-provisioner";
/// The storage provisioner name the test StorageClass names.
const STORAGE_PROVISIONER: &str = "kaito.test/kwok-provisioner";

/// GPUs of one instance type, as the provisioner plugins describe it.
#[derive(Clone, Debug)]
struct Gpus {
    model: String,
    count: u32,
    memory_mib_each: u64,
}

fn karpenter(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("karpenter.sh", "v1", kind), plural)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

struct Provisioner {
    claims: Api<DynamicObject>,
    pools: Api<DynamicObject>,
    nodes: Api<Node>,
    claims_of_pods: Api<PersistentVolumeClaim>,
    volumes: Api<PersistentVolume>,
    instance_types: BTreeMap<String, Gpus>,
}

impl Provisioner {
    /// One pass over every NodePool and NodeClaim; errors are logged and the next pass retries.
    async fn pass(&self) -> kube::Result<()> {
        for pool in self.pools.list(&ListParams::default()).await?.items {
            self.pool(&pool).await?;
        }
        let claims = self.claims.list(&ListParams::default()).await?.items;
        for claim in &claims {
            self.claim(claim).await?;
        }
        self.volumes().await?;
        // Nodes whose claim is gone (deleted without its finalizer running) go too.
        let names: Vec<String> = claims.iter().map(|c| c.name_any()).collect();
        for node in self.nodes.list(&ListParams::default().labels(MANAGED_BY)).await?.items {
            if !names.contains(&node.name_any()) {
                self.delete_node(&node.name_any()).await?;
            }
        }
        Ok(())
    }

    /// Karpenter's termination finalizer, added or removed by a JSON patch whose `test` makes a concurrent change to
    /// the list fail instead of being overwritten.
    async fn set_finalizer(&self, api: &Api<DynamicObject>, object: &DynamicObject, wanted: bool) -> kube::Result<()> {
        let at = object.finalizers().iter().position(|f| f == TERMINATION_FINALIZER);
        let ops = match (at, wanted) {
            (None, true) => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": object.metadata.finalizers},
                {"op": "add", "path": "/metadata/finalizers", "value":
                    object.finalizers().iter().map(String::as_str).chain([TERMINATION_FINALIZER]).collect::<Vec<_>>()},
            ]),
            (Some(i), false) => json!([
                {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": TERMINATION_FINALIZER},
                {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
            ]),
            _ => return Ok(()),
        };
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("a valid JSON patch");
        api.patch(&object.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        Ok(())
    }

    async fn pool(&self, pool: &DynamicObject) -> kube::Result<()> {
        let name = pool.name_any();
        let mine = self.claims.list(&ListParams::default().labels(&format!("{NODEPOOL_LABEL}={name}"))).await?.items;
        if pool.metadata.deletion_timestamp.is_some() {
            for claim in mine.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
                self.claims.delete(&claim.name_any(), &DeleteParams::background()).await?;
            }
            if mine.is_empty() {
                self.set_finalizer(&self.pools, pool, false).await?;
            }
            return Ok(());
        }
        self.set_finalizer(&self.pools, pool, true).await?;
        let Some(replicas) = pool.data["spec"]["replicas"].as_u64() else {
            // Dynamic NodePools provision for pending pods; nothing here asks for that.
            return Ok(());
        };
        let live = mine.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).count() as u64;
        for _ in live..replicas {
            let template = &pool.data["spec"]["template"];
            let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            labels.insert(NODEPOOL_LABEL.into(), name.clone().into());
            let claim = json!({
                "apiVersion": "karpenter.sh/v1",
                "kind": "NodeClaim",
                "metadata": {
                    "name": format!("{name}-{:05x}", rand_suffix()),
                    "labels": labels,
                    "annotations": template["metadata"]["annotations"],
                    "ownerReferences": [{"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "name": name,
                        "uid": pool.metadata.uid, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"],
            });
            let claim: DynamicObject = serde_json::from_value(claim).expect("a NodeClaim object");
            self.claims.create(&PostParams::default(), &claim).await?;
        }
        Ok(())
    }

    fn instance_type(claim: &DynamicObject) -> Option<String> {
        claim.data["spec"]["requirements"].as_array()?.iter().find_map(|r| {
            (r["key"] == "node.kubernetes.io/instance-type" && r["operator"] == "In")
                .then(|| r["values"][0].as_str().map(str::to_string))
                .flatten()
        })
    }

    async fn claim(&self, claim: &DynamicObject) -> kube::Result<()> {
        let name = claim.name_any();
        if claim.metadata.deletion_timestamp.is_some() {
            if self.nodes.get_opt(&name).await?.is_some() {
                return self.delete_node(&name).await;
            }
            return self.set_finalizer(&self.claims, claim, false).await;
        }
        self.set_finalizer(&self.claims, claim, true).await?;
        let conditions = claim.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let is_true = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
        if is_true("Ready") {
            return Ok(());
        }
        let at = now();
        let Some(gpus) = Self::instance_type(claim).and_then(|t| self.instance_types.get(&t.to_lowercase()).cloned())
        else {
            let message = format!("no offering of instance type {:?} in this cloud", Self::instance_type(claim));
            let status = json!({"status": {"conditions": [condition("Launched", "False", "InsufficientCapacity", &message, &at)]}});
            self.claims.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            return Ok(());
        };
        let node = match self.nodes.get_opt(&name).await? {
            Some(node) => node,
            None => self.nodes.create(&PostParams::default(), &node_for(claim, &gpus)).await?,
        };
        let node_ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let capacity = capacity(&gpus);
        let mut conds = vec![
            condition("Launched", "True", "Launched", "", &at),
            condition("Registered", "True", "Registered", "", &at),
        ];
        let step = if node_ready { "True" } else { "False" };
        let why = if node_ready { "" } else { "the node is not Ready yet" };
        conds.push(condition("Initialized", step, if node_ready { "Initialized" } else { "NotInitialized" }, why, &at));
        conds.push(condition("Ready", step, if node_ready { "Ready" } else { "NotReady" }, why, &at));
        // Keep the first transition time of a condition whose status did not change.
        for c in &mut conds {
            if let Some(old) = conditions.iter().find(|o| o["type"] == c["type"] && o["status"] == c["status"]) {
                c["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
        }
        let status = json!({"status": {
            "providerID": format!("kwok://{name}"),
            "nodeName": name,
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conds,
        }});
        self.claims.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }

    /// PersistentVolumes for claims the scheduler placed on a node; released ones are deleted (reclaim `Delete`).
    async fn volumes(&self) -> kube::Result<()> {
        for pvc in self.claims_of_pods.list(&ListParams::default()).await?.items {
            let annotations = pvc.annotations();
            let ours = annotations.get("volume.kubernetes.io/storage-provisioner").map(String::as_str)
                == Some(STORAGE_PROVISIONER);
            let (Some(node), Some(spec)) = (annotations.get("volume.kubernetes.io/selected-node"), pvc.spec.as_ref())
            else {
                continue;
            };
            if !ours || spec.volume_name.is_some() || pvc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = pvc.metadata.uid.clone().unwrap_or_default();
            let size =
                spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": format!("pvc-{uid}"), "annotations": {"pv.kubernetes.io/provisioned-by": STORAGE_PROVISIONER}},
                "spec": {
                    "capacity": {"storage": size.map(|q| q.0).unwrap_or_else(|| "1Gi".into())},
                    "accessModes": spec.access_modes,
                    "storageClassName": spec.storage_class_name,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "claimRef": {"namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid},
                    "local": {"path": format!("/mnt/kwok/{uid}")},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
                },
            }))
            .expect("a PersistentVolume object");
            match self.volumes.create(&PostParams::default(), &pv).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        for pv in self.volumes.list(&ListParams::default()).await?.items {
            let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            let ours = pv.annotations().get("pv.kubernetes.io/provisioned-by").map(String::as_str)
                == Some(STORAGE_PROVISIONER);
            if released && ours {
                let _ = self.volumes.delete(&pv.name_any(), &DeleteParams::default()).await;
            }
        }
        Ok(())
    }

    async fn delete_node(&self, name: &str) -> kube::Result<()> {
        match self.nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A few random bits for generated NodeClaim names, as Karpenter's `<pool>-<5 chars>`.
fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    u32::from_le_bytes(bytes) as u64 & 0xfffff
}

/// What a node of the instance type offers (the GPUs are the instance type's; the rest is ample).
fn capacity(gpus: &Gpus) -> Value {
    json!({"cpu": "96", "memory": "880Gi", "pods": "110", "nvidia.com/gpu": gpus.count.to_string()})
}

/// The KWOK node for `claim`.
fn node_for(claim: &DynamicObject, gpus: &Gpus) -> Node {
    let name = claim.name_any();
    let mut labels: BTreeMap<String, Value> =
        claim.labels().iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    for r in claim.data["spec"]["requirements"].as_array().into_iter().flatten() {
        if r["operator"] == "In" && r["values"].as_array().is_some_and(|v| v.len() == 1) {
            labels.insert(r["key"].as_str().unwrap_or_default().into(), r["values"][0].clone());
        }
    }
    labels.insert("kubernetes.io/hostname".into(), name.clone().into());
    labels.insert("type".into(), "kwok".into());
    labels.insert(MANAGED_BY.into(), "true".into());
    labels.insert("nvidia.com/gpu.product".into(), gpus.model.clone().into());
    labels.insert("nvidia.com/gpu.count".into(), gpus.count.to_string().into());
    labels.insert("nvidia.com/gpu.memory".into(), gpus.memory_mib_each.to_string().into());
    let capacity = capacity(gpus);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"providerID": format!("kwok://{name}"), "taints": claim.data["spec"]["taints"]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }))
    .expect("a Node object")
}

fn arg(name: &str) -> Option<String> {
    std::env::args().find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kubeconfig = arg("kubeconfig").ok_or("--kubeconfig=FILE is required")?;
    let dirs: Vec<std::path::PathBuf> =
        std::env::split_paths(&arg("plugins").ok_or("--plugins=DIRS is required")?).collect();
    let host = kaito_plugin_host::PluginHost::new(kaito_plugin_host::HostConfig::default())?;
    let registry = host.load_dirs(&dirs);
    let mut instance_types = BTreeMap::new();
    for plugin in registry.of_kind(kaito_plugin_host::PluginKind::Provisioner) {
        for t in plugin.instance_types().iter().filter(|t| t.gpu_count > 0) {
            let each = t.node_gpu_memory_bytes / t.gpu_count as u64 / (1 << 20);
            instance_types.insert(
                t.name.to_lowercase(),
                Gpus { model: t.gpu_model.clone(), count: t.gpu_count, memory_mib_each: each },
            );
        }
    }
    if instance_types.is_empty() {
        return Err(format!("no provisioner plugin in {dirs:?} describes an instance type with GPUs").into());
    }
    let client = kaito_tests::e2e::admin(std::path::Path::new(&kubeconfig)).await;
    let p = Provisioner {
        claims: Api::all_with(client.clone(), &karpenter("NodeClaim", "nodeclaims")),
        pools: Api::all_with(client.clone(), &karpenter("NodePool", "nodepools")),
        nodes: Api::all(client.clone()),
        claims_of_pods: Api::all(client.clone()),
        volumes: Api::all(client),
        instance_types,
    };
    eprintln!("kwok-provisioner: {} GPU instance types", p.instance_types.len());
    loop {
        if let Err(e) = p.pass().await {
            eprintln!("kwok-provisioner: {e}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
