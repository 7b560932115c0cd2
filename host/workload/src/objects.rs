//! Kubernetes objects built from plugin plans.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar as K8sEnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, HostPathVolumeSource, KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec,
    Probe as K8sProbe, ProjectedVolumeSource, ResourceRequirements, SecretKeySelector, SecretProjection,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Toleration,
    Volume as K8sVolume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kaito_crd::{FieldError, REVISION_ANNOTATION, RUNTIME_ANNOTATION, V1BETA1, WORKSPACE_LABEL, Workspace};
use kaito_plugin_host::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Bytes as a Kubernetes quantity, rounded up to whole GiB (MiB below 1 GiB).
pub fn quantity(bytes: u64) -> Quantity {
    if bytes >= GIB {
        Quantity(format!("{}Gi", bytes.div_ceil(GIB)))
    } else {
        Quantity(format!("{}Mi", bytes.div_ceil(MIB).max(1)))
    }
}

/// The objects of one Workspace, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    /// NodeClaims or NodePools (cluster-scoped, Karpenter API).
    pub nodes: Vec<Value>,
    pub service: Service,
    pub headless: Service,
    pub statefulset: StatefulSet,
}

impl Objects {
    /// Every object as JSON, in apply order.
    pub fn documents(&self) -> Vec<Value> {
        let mut docs = self.nodes.clone();
        docs.push(serde_json::to_value(&self.service).expect("Service serialises"));
        docs.push(serde_json::to_value(&self.headless).expect("Service serialises"));
        docs.push(serde_json::to_value(&self.statefulset).expect("StatefulSet serialises"));
        docs
    }

    pub(crate) fn for_preset(
        ws: &Workspace,
        model: &ModelInfo,
        plugin: &Plugin,
        plan: &PresetPlan,
        node_plan: &NodePlan,
        image_registry: &str,
    ) -> Objects {
        let w = &plan.workload;
        let mut annotations = BTreeMap::from([
            (RUNTIME_ANNOTATION.to_string(), plan.runtime.clone()),
            ("kaito.sh/preset".to_string(), model.name.clone()),
            (kaito_names::annotations::PRESET_PLUGIN.to_string(), plugin.name().to_string()),
        ]);
        annotations.insert(
            "kaito.sh/parallelism".into(),
            format!(
                "tp={},pp={},dp={}",
                plan.resources.parallelism.tensor, plan.resources.parallelism.pipeline, plan.resources.parallelism.data
            ),
        );
        let mut container = plan_container(ws, w);
        let mut volumes: Vec<K8sVolume> = w.volumes.iter().filter_map(volume).collect();
        let init_containers = adapter_pullers(ws, image_registry, &mut container, &mut volumes);
        let claims: Vec<PersistentVolumeClaim> = w.volumes.iter().filter_map(claim_template).collect();
        let pod_labels: BTreeMap<String, String> =
            w.labels.iter().map(|kv| (kv.key.clone(), kv.value.clone())).chain(owner_pod_labels(ws)).collect();
        let pod = PodSpec {
            init_containers: Some(init_containers).filter(|c| !c.is_empty()),
            containers: vec![container],
            affinity: affinity(ws, node_plan),
            tolerations: Some(tolerations(node_plan)),
            volumes: Some(volumes).filter(|v| !v.is_empty()),
            ..Default::default()
        };
        let statefulset = statefulset(
            ws,
            plan.resources.node_count,
            annotations,
            PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(pod),
            },
            claims,
        );
        let service_ports: Vec<ServicePort> = w
            .ports
            .iter()
            .filter_map(|p| {
                p.service_port.map(|sp| ServicePort {
                    name: Some(p.name.clone()),
                    port: sp.into(),
                    target_port: Some(IntOrString::Int(p.container_port.into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
            })
            .collect();
        let headless_ports = w
            .ports
            .iter()
            .map(|p| ServicePort {
                name: Some(p.name.clone()),
                port: p.container_port.into(),
                target_port: Some(IntOrString::Int(p.container_port.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect();
        Objects {
            nodes: node_objects(node_plan),
            service: service(ws, service_ports),
            headless: headless(ws, headless_ports),
            statefulset,
        }
    }

    pub(crate) fn for_template(
        ws: &Workspace,
        template: Value,
        replicas: u32,
        node_plan: &NodePlan,
    ) -> Result<Objects, FieldError> {
        let mut template: PodTemplateSpec = serde_json::from_value(template)
            .map_err(|e| FieldError::new("inference.template", format!("not a valid pod template: {e}")))?;
        let spec = template.spec.as_mut().ok_or_else(|| FieldError::new("inference.template.spec", "is required"))?;
        if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
            return Err(FieldError::new("inference.template.spec", "hostNetwork, hostPID and hostIPC are not allowed"));
        }
        spec.affinity = spec.affinity.take().or_else(|| affinity(ws, node_plan));
        spec.tolerations.get_or_insert_with(Vec::new).extend(tolerations(node_plan));
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels.get_or_insert_with(BTreeMap::new).extend(owner_pod_labels(ws));
        let ports: Vec<ServicePort> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.container_port,
                target_port: Some(IntOrString::Int(p.container_port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect();
        let service_ports =
            ports.iter().take(1).map(|p| ServicePort { port: 80, name: Some("http".into()), ..p.clone() }).collect();
        let statefulset = statefulset(ws, replicas, BTreeMap::new(), template, Vec::new());
        Ok(Objects {
            nodes: node_objects(node_plan),
            service: service(ws, service_ports),
            headless: headless(ws, ports),
            statefulset,
        })
    }
}

/// The one container of a plan, named as the Workspace.
fn plan_container(ws: &Workspace, w: &WorkloadPlan) -> Container {
    let gpus = BTreeMap::from([(GPU_RESOURCE.to_string(), Quantity(w.gpus_per_pod.to_string()))]);
    Container {
        name: ws.name().into(),
        image: Some(w.image.clone()),
        command: Some(w.command.clone()).filter(|c| !c.is_empty()),
        args: Some(w.args.clone()).filter(|a| !a.is_empty()),
        env: Some(w.env.iter().map(env_var).collect()).filter(|e: &Vec<_>| !e.is_empty()),
        ports: Some(
            w.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: p.container_port.into(),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        startup_probe: w.startup_probe.as_ref().map(probe),
        readiness_probe: w.readiness_probe.as_ref().map(probe),
        liveness_probe: w.liveness_probe.as_ref().map(probe),
        resources: (w.gpus_per_pod > 0).then(|| ResourceRequirements {
            requests: Some(gpus.clone()),
            limits: Some(gpus),
            ..Default::default()
        }),
        volume_mounts: Some(
            w.volumes
                .iter()
                .map(|v| VolumeMount {
                    name: v.name.clone(),
                    mount_path: v.mount_path.clone(),
                    read_only: v.read_only.then_some(true),
                    ..Default::default()
                })
                .collect(),
        )
        .filter(|m: &Vec<_>| !m.is_empty()),
        security_context: Some(SecurityContext { allow_privilege_escalation: Some(false), ..Default::default() }),
        ..Default::default()
    }
}

/// Where the Docker config of registry secret `name` is mounted ([`registry_credentials`]).
pub(crate) fn registry_config_path(name: &str) -> String {
    format!("{REGISTRY_DIR}/{name}.json")
}

/// Where registry credentials (pull and push secrets' `.dockerconfigjson`) are mounted, one file per secret.
pub const REGISTRY_DIR: &str = "/mnt/registry";

/// One projected volume holding every secret's Docker config side by side, each under its own name; `None` without
/// secrets.
pub(crate) fn registry_credentials(secrets: &[String]) -> Option<HostMount> {
    if secrets.is_empty() {
        return None;
    }
    let sources = secrets
        .iter()
        .map(|s| VolumeProjection {
            secret: Some(SecretProjection {
                name: s.clone(),
                items: Some(vec![KeyToPath { key: ".dockerconfigjson".into(), path: format!("{s}.json"), mode: None }]),
                optional: None,
            }),
            ..Default::default()
        })
        .collect();
    let volume = K8sVolume {
        name: "registry-credentials".into(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), default_mode: None }),
        ..Default::default()
    };
    Some(HostMount { volume, mount_path: REGISTRY_DIR.into(), read_only: true })
}

/// The Workspace's adapters as init containers that pull each artifact into its directory (`kaito-pull`, from our
/// runtime image) before the server starts; the server mounts the directories read-only. Adds the volumes and the
/// server's mount; returns the init containers (none without adapters).
fn adapter_pullers(
    ws: &Workspace,
    image_registry: &str,
    server: &mut Container,
    volumes: &mut Vec<K8sVolume>,
) -> Vec<Container> {
    let adapters = ws.inference.as_ref().and_then(|i| i.adapters.clone()).unwrap_or_default();
    let sources: Vec<_> = adapters.into_iter().filter_map(|a| a.source).filter(|s| s.image.is_some()).collect();
    if sources.is_empty() {
        return Vec::new();
    }
    use kaito_names::adapters::{DIR, VOLUME};
    volumes.push(K8sVolume {
        name: VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    server.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
        name: VOLUME.into(),
        mount_path: DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    let mut secrets: Vec<String> =
        sources.iter().flat_map(|s| s.image_pull_secrets.iter().flatten().cloned()).collect();
    secrets.sort();
    secrets.dedup();
    let credentials = registry_credentials(&secrets);
    let mut mounts = vec![VolumeMount { name: VOLUME.into(), mount_path: DIR.into(), ..Default::default() }];
    if let Some(c) = &credentials {
        mounts.push(VolumeMount {
            name: c.volume.name.clone(),
            mount_path: c.mount_path.clone(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let pullers = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.name.clone().unwrap_or_default();
            let mut args =
                vec![format!("oci://{}", s.image.clone().unwrap_or_default()), kaito_names::adapters::path(&name)];
            for secret in s.image_pull_secrets.iter().flatten() {
                args.extend(["--registry-config".to_string(), registry_config_path(secret)]);
            }
            Container {
                name: format!("pull-adapter-{i}"),
                image: Some(kaito_names::runtime_image(image_registry)),
                command: Some(vec!["kaito-pull".into()]),
                args: Some(args),
                volume_mounts: Some(mounts.clone()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    if let Some(c) = credentials {
        volumes.push(c.volume);
    }
    pullers
}

/// A volume the host adds to a plan's pod (the user's data and output volumes, registry credentials), mounted in its
/// one container.
pub(crate) struct HostMount {
    pub volume: K8sVolume,
    pub mount_path: String,
    pub read_only: bool,
}

/// The fine-tuning Job of a Workspace: named as the Workspace, one pod that runs to completion on the Workspace's
/// nodes, the plan's container plus the host's mounts.
pub(crate) fn tuning_job(
    ws: &Workspace,
    model: &ModelInfo,
    plugin: &Plugin,
    plan: &TunePlan,
    node_plan: &NodePlan,
    mounts: Vec<HostMount>,
) -> Job {
    let w = &plan.workload;
    let mut container = plan_container(ws, w);
    // A Job is not served: the plan's probes, if any, would only restart a trainer mid-step.
    (container.startup_probe, container.readiness_probe, container.liveness_probe) = (None, None, None);
    // The trainer's last log lines become the pod's termination message, which the Workspace's status quotes.
    container.termination_message_policy = Some("FallbackToLogsOnError".into());
    let mut volumes: Vec<K8sVolume> = w.volumes.iter().filter_map(volume).collect();
    for m in mounts {
        container.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
            name: m.volume.name.clone(),
            mount_path: m.mount_path,
            read_only: m.read_only.then_some(true),
            ..Default::default()
        });
        volumes.push(m.volume);
    }
    let annotations = BTreeMap::from([
        (RUNTIME_ANNOTATION.to_string(), plan.runtime.clone()),
        ("kaito.sh/preset".to_string(), model.name.clone()),
        (kaito_names::annotations::PRESET_PLUGIN.to_string(), plugin.name().to_string()),
        (REVISION_ANNOTATION.to_string(), ws.revision_name()),
    ]);
    let pod_labels: BTreeMap<String, String> =
        w.labels.iter().map(|kv| (kv.key.clone(), kv.value.clone())).chain(owner_pod_labels(ws)).collect();
    Job {
        metadata: meta(ws, ws.name().to_string(), annotations),
        spec: Some(JobSpec {
            backoff_limit: Some(plan.backoff_limit as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    affinity: affinity(ws, node_plan),
                    tolerations: Some(tolerations(node_plan)),
                    volumes: Some(volumes).filter(|v| !v.is_empty()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn owner_refs(ws: &Workspace) -> Option<Vec<OwnerReference>> {
    ws.metadata.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: V1BETA1.into(),
            kind: "Workspace".into(),
            name: ws.name().into(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    })
}

fn meta(ws: &Workspace, name: String, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ws.namespace().into()),
        labels: Some(BTreeMap::from([(WORKSPACE_LABEL.to_string(), ws.name().to_string())])),
        annotations: Some(annotations).filter(|a| !a.is_empty()),
        owner_references: owner_refs(ws),
        ..Default::default()
    }
}

/// Labels every pod of the Workspace carries: the Workspace, and the InferenceSet that made it (its
/// `status.selector`, so an HPA scaling the set finds the pods).
fn owner_pod_labels(ws: &Workspace) -> Vec<(String, String)> {
    let set = ws.metadata.labels.as_ref().and_then(|l| l.get(kaito_names::labels::INFERENCESET));
    [(WORKSPACE_LABEL.to_string(), ws.name().to_string())]
        .into_iter()
        .chain(set.map(|s| (kaito_names::labels::INFERENCESET.to_string(), s.clone())))
        .collect()
}

fn selector(ws: &Workspace) -> BTreeMap<String, String> {
    BTreeMap::from([(WORKSPACE_LABEL.to_string(), ws.name().to_string())])
}

fn statefulset(
    ws: &Workspace,
    replicas: u32,
    annotations: BTreeMap<String, String>,
    template: PodTemplateSpec,
    claims: Vec<PersistentVolumeClaim>,
) -> StatefulSet {
    let mut template = template;
    let pod_meta = template.metadata.get_or_insert_with(Default::default);
    pod_meta.annotations.get_or_insert_with(BTreeMap::new).insert(REVISION_ANNOTATION.into(), ws.revision_name());
    StatefulSet {
        metadata: meta(ws, kaito_names::statefulset(ws.name()), annotations),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas as i32),
            pod_management_policy: Some("Parallel".into()),
            service_name: Some(kaito_names::headless_service(ws.name())),
            selector: LabelSelector { match_labels: Some(selector(ws)), ..Default::default() },
            template,
            volume_claim_templates: Some(claims).filter(|c| !c.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(ws: &Workspace, ports: Vec<ServicePort>) -> Service {
    let lb = ws.annotation("kaito.sh/enablelb").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut sel = selector(ws);
    // Multi-node workloads serve from the leader only.
    sel.insert("statefulset.kubernetes.io/pod-name".into(), kaito_names::leader_pod(ws.name()));
    Service {
        metadata: meta(ws, kaito_names::service(ws.name()), BTreeMap::new()),
        spec: Some(ServiceSpec {
            type_: Some(if lb { "LoadBalancer" } else { "ClusterIP" }.into()),
            selector: Some(sel),
            ports: Some(ports),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn headless(ws: &Workspace, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(ws, kaito_names::headless_service(ws.name()), BTreeMap::new()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(ws)),
            ports: Some(ports),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn affinity(ws: &Workspace, node_plan: &NodePlan) -> Option<Affinity> {
    let mut labels = ws.match_labels();
    labels.extend(node_plan.pod_node_labels.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
    if labels.is_empty() {
        return None;
    }
    let match_expressions = labels
        .into_iter()
        .map(|(key, v)| NodeSelectorRequirement { key, operator: "In".into(), values: Some(vec![v]) })
        .collect();
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(match_expressions),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn effect(e: TaintEffect) -> &'static str {
    match e {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

fn tolerations(node_plan: &NodePlan) -> Vec<Toleration> {
    let mut out = vec![Toleration {
        key: Some(GPU_RESOURCE.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    // The node objects' taints, then what the provisioner says pods need besides; each once.
    let of_taints = node_plan.objects.iter().flat_map(|o| &o.taints).map(|t| Toleration {
        key: Some(t.key.clone()),
        operator: Some("Equal".into()),
        value: Some(t.value.clone()),
        effect: Some(effect(t.effect).into()),
        ..Default::default()
    });
    let asked = node_plan.pod_tolerations.iter().map(|t| {
        let exists = t.operator == TolerationOperator::Exists;
        Toleration {
            key: Some(t.key.clone()).filter(|k| !k.is_empty()),
            operator: Some(if exists { "Exists" } else { "Equal" }.into()),
            value: (!exists).then(|| t.value.clone()),
            effect: t.effect.map(|e| effect(e).into()),
            ..Default::default()
        }
    });
    for tol in of_taints.chain(asked) {
        if !out.contains(&tol) {
            out.push(tol);
        }
    }
    out
}

fn env_var(e: &EnvVar) -> K8sEnvVar {
    let (value, value_from) = match &e.value {
        EnvSource::Literal(v) => (Some(v.clone()), None),
        EnvSource::SecretKey(s) => (
            None,
            Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: s.name.clone(),
                    key: s.key.clone(),
                    optional: s.optional.then_some(true),
                }),
                ..Default::default()
            }),
        ),
        EnvSource::FieldPath(p) => (
            None,
            Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: p.clone(), ..Default::default() }),
                ..Default::default()
            }),
        ),
    };
    K8sEnvVar { name: e.name.clone(), value, value_from }
}

fn probe(p: &Probe) -> K8sProbe {
    let mut out = K8sProbe {
        initial_delay_seconds: Some(p.initial_delay_seconds as i32).filter(|d| *d > 0),
        period_seconds: Some(p.period_seconds as i32),
        timeout_seconds: Some(p.timeout_seconds as i32),
        failure_threshold: Some(p.failure_threshold as i32),
        ..Default::default()
    };
    match &p.action {
        ProbeAction::HttpGet(h) => {
            out.http_get = Some(HTTPGetAction {
                path: Some(h.path.clone()),
                port: IntOrString::Int(h.port.into()),
                ..Default::default()
            })
        }
        ProbeAction::Exec(cmd) => out.exec = Some(ExecAction { command: Some(cmd.clone()) }),
        ProbeAction::TcpSocket(port) => {
            out.tcp_socket = Some(TCPSocketAction { port: IntOrString::Int((*port).into()), ..Default::default() })
        }
    }
    out
}

fn volume(v: &Volume) -> Option<K8sVolume> {
    let mut out = K8sVolume { name: v.name.clone(), ..Default::default() };
    match &v.source {
        VolumeSource::EmptyDir(limit) => {
            out.empty_dir = Some(EmptyDirVolumeSource { size_limit: limit.map(quantity), ..Default::default() })
        }
        VolumeSource::Memory(limit) => {
            out.empty_dir =
                Some(EmptyDirVolumeSource { medium: Some("Memory".into()), size_limit: limit.map(quantity) })
        }
        VolumeSource::ConfigMap(name) => {
            out.config_map = Some(ConfigMapVolumeSource { name: name.clone(), ..Default::default() })
        }
        VolumeSource::Secret(name) => {
            out.secret = Some(SecretVolumeSource { secret_name: Some(name.clone()), ..Default::default() })
        }
        VolumeSource::HostPath(path) => {
            out.host_path = Some(HostPathVolumeSource { path: path.clone(), type_: Some("Directory".into()) })
        }
        VolumeSource::Persistent(_) => return None,
    }
    Some(out)
}

fn claim_template(v: &Volume) -> Option<PersistentVolumeClaim> {
    let VolumeSource::Persistent(c) = &v.source else { return None };
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(v.name.clone()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: c.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), quantity(c.size_bytes))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn operator(o: RequirementOperator) -> &'static str {
    match o {
        RequirementOperator::IsIn => "In",
        RequirementOperator::NotIn => "NotIn",
        RequirementOperator::Exists => "Exists",
        RequirementOperator::DoesNotExist => "DoesNotExist",
        RequirementOperator::Gt => "Gt",
        RequirementOperator::Lt => "Lt",
    }
}

fn map(pairs: &[KeyValue]) -> Value {
    Value::Object(pairs.iter().map(|kv| (kv.key.clone(), Value::String(kv.value.clone()))).collect())
}

/// NodeClaims (karpenter.sh/v1) or a NodePool from a provisioner's plan.
pub(crate) fn node_objects(plan: &NodePlan) -> Vec<Value> {
    plan.objects
        .iter()
        .map(|o| {
            let requirements: Vec<Value> = o
                .requirements
                .iter()
                .map(|r| {
                    let mut req = json!({"key": r.key, "operator": operator(r.operator)});
                    if !r.values.is_empty() {
                        req["values"] = json!(r.values);
                    }
                    req
                })
                .collect();
            let taints: Vec<Value> = o.taints.iter().map(|t| json!({"key": t.key, "value": t.value, "effect": effect(t.effect)})).collect();
            let class = o.node_class_ref.as_ref().map(|c| json!({"group": c.group, "kind": c.kind, "name": c.name}));
            let metadata = json!({"name": o.name, "labels": map(&o.labels), "annotations": map(&o.annotations)});
            match o.kind {
                NodeObjectKind::NodeClaim => {
                    let mut spec = json!({"requirements": requirements, "taints": taints});
                    if let Some(c) = class {
                        spec["nodeClassRef"] = c;
                    }
                    if let Some(s) = o.storage_bytes {
                        spec["resources"] = json!({"requests": {"storage": quantity(s).0}});
                    }
                    json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": metadata, "spec": spec})
                }
                NodeObjectKind::NodePool => {
                    let mut template_spec = json!({"requirements": requirements, "taints": taints, "expireAfter": "Never"});
                    if let Some(c) = class {
                        template_spec["nodeClassRef"] = c;
                    }
                    let mut spec = json!({
                        "template": {"metadata": {"labels": map(&o.labels)}, "spec": template_spec},
                        "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "0s", "budgets": [{"nodes": "1", "reasons": ["Drifted"]}]},
                    });
                    if let Some(n) = o.node_limit {
                        spec["replicas"] = json!(n);
                    }
                    json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": metadata, "spec": spec})
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_round_up() {
        assert_eq!(quantity(GIB).0, "1Gi");
        assert_eq!(quantity(GIB + 1).0, "2Gi");
        assert_eq!(quantity(3 * MIB).0, "3Mi");
        assert_eq!(quantity(1).0, "1Mi");
    }
}
