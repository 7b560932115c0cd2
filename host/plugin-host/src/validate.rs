//! Validation of everything a plugin returns, before it becomes part of a
//! Kubernetes object. Each function returns a message that names the
//! offending field of the plugin's answer.

use crate::limits::{Limits, Policy};
use crate::wit::latest::*;
use std::collections::HashSet;

type Check = Result<(), String>;

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Check {
    if ok { Ok(()) } else { Err(msg()) }
}

fn bounded(field: &str, s: &str, limits: &Limits) -> Check {
    ensure(s.len() <= limits.max_string_bytes, || {
        format!("{field} is {} bytes, over the {} byte limit", s.len(), limits.max_string_bytes)
    })
}

fn list<T>(field: &str, items: &[T], limits: &Limits) -> Check {
    ensure(items.len() <= limits.max_list_len, || {
        format!("{field} has {} entries, over the {} entry limit", items.len(), limits.max_list_len)
    })
}

fn nonempty(field: &str, s: &str, limits: &Limits) -> Check {
    ensure(!s.trim().is_empty(), || format!("{field} is empty"))?;
    bounded(field, s, limits)
}

pub use kaito_names::{dns_label, dns_subdomain, label_key, label_value};

fn labels(field: &str, pairs: &[KeyValue], limits: &Limits) -> Check {
    list(field, pairs, limits)?;
    let mut seen = HashSet::new();
    for kv in pairs {
        ensure(label_key(&kv.key), || format!("{field}: {:?} is not a valid label key", kv.key))?;
        ensure(label_value(&kv.value), || format!("{field}: {:?} is not a valid value for {}", kv.value, kv.key))?;
        ensure(seen.insert(&kv.key), || format!("{field}: key {} appears twice", kv.key))?;
    }
    Ok(())
}

fn annotations(field: &str, pairs: &[KeyValue], limits: &Limits) -> Check {
    list(field, pairs, limits)?;
    for kv in pairs {
        ensure(label_key(&kv.key), || format!("{field}: {:?} is not a valid annotation key", kv.key))?;
        bounded(&format!("{field}[{}]", kv.key), &kv.value, limits)?;
    }
    Ok(())
}

/// Image reference: registry/path[:tag][@digest], no spaces or control characters.
pub fn image_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
        && !s.starts_with(['/', ':', '@', '-', '.'])
}

fn abs_path(s: &str) -> bool {
    s.starts_with('/') && s.len() <= 1024 && !s.split('/').any(|seg| seg == "..") && !s.contains('\0')
}

fn env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// IANA service name, as Kubernetes wants for port names.
fn port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Downward-API field paths a workload may read.
fn field_path(s: &str) -> bool {
    matches!(
        s,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.hostIP"
            | "status.podIP"
    ) || ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .any(|p| s.strip_prefix(p).and_then(|r| r.strip_suffix("']")).is_some_and(label_key))
}

/// `plugin-info` from any plugin.
pub fn plugin_info(info: &PluginInfo, limits: &Limits) -> Check {
    ensure(dns_label(&info.name), || format!("info.name {:?} must be a lowercase DNS label", info.name))?;
    ensure(!info.version.is_empty() && info.version.len() <= 64, || "info.version must be 1..=64 bytes".into())?;
    bounded("info.description", &info.description, limits)
}

/// Lowercase preset name; models offered only by Hugging Face id use that id (`org/model`).
fn model_name(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
    };
    s.len() <= 253
        && match s.split_once('/') {
            Some((org, name)) => part(org) && part(name),
            None => part(s),
        }
}

fn hf_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty() && p.len() <= 96 && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    matches!(s.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

/// Known runtimes a model may list.
pub const RUNTIMES: &[&str] = &["tch", "vllm", "transformers"];

/// A preset's model list.
pub fn models(models: &[ModelInfo], limits: &Limits) -> Check {
    ensure(!models.is_empty(), || "models() returned no models".into())?;
    ensure(models.len() <= limits.max_models, || {
        format!("models() returned {} models, over the {} limit", models.len(), limits.max_models)
    })?;
    let mut seen = HashSet::new();
    for (i, m) in models.iter().enumerate() {
        let f = |x: &str| format!("models[{i}].{x}");
        ensure(model_name(&m.name), || {
            format!(
                "{} {:?} must be lowercase letters, digits, '-', '.', '_' (or a lowercase org/model)",
                f("name"),
                m.name
            )
        })?;
        list(&f("aliases"), &m.aliases, limits)?;
        for a in &m.aliases {
            ensure(model_name(a), || format!("{} {a:?} must be lowercase", f("aliases")))?;
        }
        ensure(hf_id(&m.hf_id), || format!("{} {:?} must look like org/model", f("hf-id"), m.hf_id))?;
        // A model offered by HF id alone has that id as its name too.
        let hf = (!m.hf_id.eq_ignore_ascii_case(&m.name)).then_some(&m.hf_id);
        for n in std::iter::once(&m.name).chain(&m.aliases).chain(hf) {
            ensure(seen.insert(n.to_lowercase()), || format!("{}: name {n:?} is declared twice", f("name")))?;
        }
        nonempty(&f("family"), &m.family, limits)?;
        ensure(
            !m.architecture.is_empty() && m.architecture.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            || format!("{} {:?} must be letters, digits and '_'", f("architecture"), m.architecture),
        )?;
        ensure(m.weights_bytes > 0, || format!("{} must be positive", f("weights-bytes")))?;
        ensure(m.disk_bytes >= m.weights_bytes, || format!("{} is smaller than the weights", f("disk-bytes")))?;
        ensure(m.context_length > 0, || format!("{} must be positive", f("context-length")))?;
        ensure(m.bytes_per_token > 0, || format!("{} must be positive", f("bytes-per-token")))?;
        nonempty(&f("license"), &m.license, limits)?;
        ensure(!m.runtimes.is_empty(), || format!("{} is empty", f("runtimes")))?;
        for r in &m.runtimes {
            ensure(RUNTIMES.contains(&r.as_str()), || {
                format!("{} has unknown runtime {r:?} (known: {})", f("runtimes"), RUNTIMES.join(", "))
            })?;
        }
        for (name, v) in [
            ("chat-template", &m.chat_template),
            ("tool-call-parser", &m.tool_call_parser),
            ("reasoning-parser", &m.reasoning_parser),
        ] {
            if let Some(v) = v {
                nonempty(&f(name), v, limits)?;
            }
        }
    }
    Ok(())
}

/// A provisioner's instance-type table.
pub fn instance_types(types: &[InstanceType], limits: &Limits) -> Check {
    ensure(types.len() <= limits.max_models, || {
        format!("instance-types() returned {} entries, over the limit", types.len())
    })?;
    let mut seen = HashSet::new();
    for (i, t) in types.iter().enumerate() {
        ensure(!t.name.is_empty() && t.name.len() <= 253 && label_value(&t.name), || {
            format!("instance-types[{i}].name {:?} is not a valid label value", t.name)
        })?;
        ensure(seen.insert(t.name.to_lowercase()), || {
            format!("instance-types[{i}].name {} is declared twice", t.name)
        })?;
        nonempty(&format!("instance-types[{i}].gpu-model"), &t.gpu_model, limits)?;
        ensure(t.gpu_count > 0 && t.gpu_count <= 64, || {
            format!("instance-types[{i}].gpu-count {} is outside 1..=64", t.gpu_count)
        })?;
        ensure(t.node_gpu_memory_bytes > 0, || format!("instance-types[{i}].node-gpu-memory-bytes must be positive"))?;
    }
    Ok(())
}

/// A typed error a plugin returned.
pub fn plugin_error(e: &PluginError, limits: &Limits) -> Check {
    ensure(e.field.len() <= 256, || "plugin-error.field is over 256 bytes".into())?;
    bounded("plugin-error.message", &e.message, limits)?;
    if let Some(h) = &e.hint {
        bounded("plugin-error.hint", h, limits)?;
    }
    Ok(())
}

/// GPU facts read from node labels.
pub fn node_gpu(g: &NodeGpu, limits: &Limits) -> Check {
    nonempty("node-gpu.gpu-model", &g.gpu_model, limits)?;
    ensure(g.gpu_count > 0 && g.gpu_count <= 64, || format!("node-gpu.gpu-count {} is outside 1..=64", g.gpu_count))?;
    ensure(g.gpu_memory_bytes > 0 && g.gpu_memory_bytes <= 1 << 40, || {
        format!("node-gpu.gpu-memory-bytes {} is outside 1 byte..=1 TiB", g.gpu_memory_bytes)
    })
}

fn probe(field: &str, p: &Probe, limits: &Limits) -> Check {
    match &p.action {
        ProbeAction::HttpGet(h) => {
            ensure(h.path.starts_with('/'), || format!("{field}.http-get.path {:?} must start with '/'", h.path))?;
            bounded(&format!("{field}.http-get.path"), &h.path, limits)?;
            ensure(h.port > 0, || format!("{field}.http-get.port must be positive"))?;
        }
        ProbeAction::Exec(cmd) => {
            ensure(!cmd.is_empty(), || format!("{field}.exec is empty"))?;
            list(&format!("{field}.exec"), cmd, limits)?;
            for c in cmd {
                bounded(&format!("{field}.exec[]"), c, limits)?;
            }
        }
        ProbeAction::TcpSocket(port) => ensure(*port > 0, || format!("{field}.tcp-socket must be a positive port"))?,
    }
    ensure(p.period_seconds >= 1 && p.timeout_seconds >= 1 && p.failure_threshold >= 1, || {
        format!("{field}: period, timeout and failure threshold must be at least 1")
    })?;
    ensure(p.initial_delay_seconds <= 86_400 && p.period_seconds <= 3600 && p.failure_threshold <= 100_000, || {
        format!("{field}: timings are out of range")
    })
}

/// A preset's plan, checked against the shape it was asked about and the host policy.
pub fn preset_plan(plan: &PresetPlan, shape: &GpuShape, limits: &Limits, policy: &Policy) -> Check {
    ensure(RUNTIMES.contains(&plan.runtime.as_str()), || {
        format!("runtime {:?} is not one of {}", plan.runtime, RUNTIMES.join(", "))
    })?;
    list("notes", &plan.notes, limits)?;
    for n in &plan.notes {
        bounded("notes[]", n, limits)?;
    }
    let r = &plan.resources;
    ensure(r.node_count >= 1 && r.node_count <= shape.max_nodes, || {
        format!("resources.node-count {} is outside 1..={}", r.node_count, shape.max_nodes)
    })?;
    ensure(r.gpus_per_node <= shape.gpus_per_node, || {
        format!("resources.gpus-per-node {} exceeds the {} GPUs per node", r.gpus_per_node, shape.gpus_per_node)
    })?;
    let p = &r.parallelism;
    ensure(
        p.tensor >= 1 && p.pipeline >= 1 && p.data >= 1 && p.tensor <= 64 && p.pipeline <= 64 && p.data <= 64,
        || "resources.parallelism sizes must be within 1..=64".into(),
    )?;
    ensure(r.disk_bytes <= 64 << 40, || format!("resources.disk-bytes {} is over 64 TiB", r.disk_bytes))?;

    let w = &plan.workload;
    // The sandbox policy: none of these may reach a Kubernetes object.
    ensure(!w.privileged, || "workload.privileged: privileged containers are never allowed".into())?;
    ensure(w.add_capabilities.is_empty(), || {
        format!(
            "workload.add-capabilities: adding Linux capabilities ({}) is never allowed",
            w.add_capabilities.join(", ")
        )
    })?;
    ensure(!w.host_network, || "workload.host-network: host networking is never allowed".into())?;
    ensure(!w.host_pid, || "workload.host-pid: sharing the host PID namespace is never allowed".into())?;
    ensure(!w.host_ipc, || "workload.host-ipc: sharing the host IPC namespace is never allowed".into())?;

    ensure(image_ref(&w.image), || format!("workload.image {:?} is not a valid image reference", w.image))?;
    list("workload.command", &w.command, limits)?;
    list("workload.args", &w.args, limits)?;
    for (i, c) in w.command.iter().chain(&w.args).enumerate() {
        bounded(&format!("workload.command/args[{i}]"), c, limits)?;
        ensure(!c.contains('\0'), || format!("workload.command/args[{i}] contains NUL"))?;
    }
    list("workload.env", &w.env, limits)?;
    let mut seen = HashSet::new();
    for e in &w.env {
        ensure(env_name(&e.name), || format!("workload.env: {:?} is not a valid variable name", e.name))?;
        ensure(seen.insert(&e.name), || format!("workload.env: {} is set twice", e.name))?;
        match &e.value {
            EnvSource::Literal(v) => bounded(&format!("workload.env[{}]", e.name), v, limits)?,
            EnvSource::SecretKey(s) => {
                ensure(dns_subdomain(&s.name), || {
                    format!("workload.env[{}]: secret name {:?} is invalid", e.name, s.name)
                })?;
                ensure(env_name(&s.key), || format!("workload.env[{}]: secret key {:?} is invalid", e.name, s.key))?;
            }
            EnvSource::FieldPath(p) => ensure(field_path(p), || {
                format!("workload.env[{}]: field path {p:?} is not one a workload may read", e.name)
            })?,
        }
    }
    list("workload.ports", &w.ports, limits)?;
    let (mut names, mut cports, mut sports) = (HashSet::new(), HashSet::new(), HashSet::new());
    for p in &w.ports {
        ensure(port_name(&p.name), || {
            format!("workload.ports: {:?} is not a valid port name (<= 15 lowercase chars)", p.name)
        })?;
        ensure(names.insert(&p.name), || format!("workload.ports: name {} is used twice", p.name))?;
        ensure(p.container_port > 0 && cports.insert(p.container_port), || {
            format!("workload.ports[{}]: container port {} is zero or used twice", p.name, p.container_port)
        })?;
        if let Some(sp) = p.service_port {
            ensure(sp > 0 && sports.insert(sp), || {
                format!("workload.ports[{}]: service port {sp} is zero or used twice", p.name)
            })?;
        }
    }
    for (name, pr) in [
        ("startup-probe", &w.startup_probe),
        ("readiness-probe", &w.readiness_probe),
        ("liveness-probe", &w.liveness_probe),
    ] {
        if let Some(pr) = pr {
            probe(&format!("workload.{name}"), pr, limits)?;
        }
    }
    list("workload.volumes", &w.volumes, limits)?;
    let (mut vnames, mut mounts) = (HashSet::new(), HashSet::new());
    for v in &w.volumes {
        let f = format!("workload.volumes[{}]", v.name);
        ensure(dns_label(&v.name), || format!("workload.volumes: {:?} is not a valid volume name", v.name))?;
        ensure(vnames.insert(&v.name), || format!("{f}: name used twice"))?;
        ensure(abs_path(&v.mount_path) && v.mount_path != "/", || {
            format!("{f}.mount-path {:?} must be an absolute path other than / without ..", v.mount_path)
        })?;
        ensure(mounts.insert(&v.mount_path), || format!("{f}.mount-path {} is used twice", v.mount_path))?;
        match &v.source {
            VolumeSource::HostPath(p) => ensure(policy.allows_host_path(p), || {
                format!(
                    "{f}: hostPath {p:?} is not allowed by the host policy (allowed: {})",
                    if policy.allowed_host_paths.is_empty() {
                        "none".into()
                    } else {
                        policy.allowed_host_paths.join(", ")
                    }
                )
            })?,
            VolumeSource::ConfigMap(n) | VolumeSource::Secret(n) => {
                ensure(dns_subdomain(n), || format!("{f}: {n:?} is not a valid object name"))?
            }
            VolumeSource::Persistent(c) => {
                ensure(c.size_bytes > 0 && c.size_bytes <= 64 << 40, || {
                    format!("{f}: claim size {} is outside 1 byte..=64 TiB", c.size_bytes)
                })?;
                if let Some(sc) = &c.storage_class {
                    ensure(dns_subdomain(sc), || format!("{f}: storage class {sc:?} is invalid"))?;
                }
            }
            VolumeSource::EmptyDir(_) | VolumeSource::Memory(_) => {}
        }
    }
    ensure(w.gpus_per_pod <= shape.gpus_per_node, || {
        format!("workload.gpus-per-pod {} exceeds the {} GPUs per node", w.gpus_per_pod, shape.gpus_per_node)
    })?;
    labels("workload.labels", &w.labels, limits)?;
    for kv in &w.labels {
        ensure(!kv.key.starts_with("kaito.sh/") && !kv.key.starts_with("statefulset.kubernetes.io/"), || {
            format!("workload.labels: {} is reserved for the host", kv.key)
        })?;
    }
    Ok(())
}

/// Largest `backoff-limit` a tuning plan may ask for: each retry holds the GPUs again.
pub const MAX_TUNE_RETRIES: u32 = 20;

/// A tuning plan: one node, a bounded number of retries, and a container held to the same rules as a serving one.
pub fn tune_plan(plan: &TunePlan, shape: &GpuShape, limits: &Limits, policy: &Policy) -> Check {
    ensure(plan.resources.node_count == 1, || {
        format!("resources.node-count {}: a tuning Job runs on one node", plan.resources.node_count)
    })?;
    ensure(plan.backoff_limit <= MAX_TUNE_RETRIES, || {
        format!("backoff-limit {} is over {MAX_TUNE_RETRIES}", plan.backoff_limit)
    })?;
    let as_served = PresetPlan {
        runtime: plan.runtime.clone(),
        notes: plan.notes.clone(),
        resources: plan.resources,
        workload: plan.workload.clone(),
    };
    preset_plan(&as_served, shape, limits, policy)
}

/// A node request, before a provisioner sees it: every string a plugin may copy into an object is valid there.
pub fn node_request(request: &NodeRequest, limits: &Limits) -> Check {
    let owner = &request.owner;
    ensure(!owner.kind.is_empty() && owner.kind.chars().all(|c| c.is_ascii_alphanumeric()), || {
        format!("owner kind {:?} is not a Kubernetes kind", owner.kind)
    })?;
    ensure(dns_label(&owner.name), || format!("owner name {:?} is not a DNS label", owner.name))?;
    ensure(dns_label(&owner.namespace), || format!("owner namespace {:?} is not a DNS label", owner.namespace))?;
    labels("owner.labels", &owner.labels, limits)?;
    ensure(label_value(&request.instance_type), || {
        format!("instance-type {:?} is not a valid label value", request.instance_type)
    })?;
    labels("match-labels", &request.match_labels, limits)?;
    let class = request.annotations.iter().find(|kv| kv.key == kaito_names::annotations::NODE_CLASS_NAME);
    if let Some(kv) = class.filter(|kv| !kv.value.trim().is_empty()) {
        ensure(dns_subdomain(kv.value.trim()), || {
            format!("annotations[{}] {:?} is not a DNS subdomain", kv.key, kv.value)
        })?;
    }
    Ok(())
}

/// A provisioner's node plan, checked against the request and the provisioner's mode.
pub fn node_plan(plan: &NodePlan, request: &NodeRequest, mode: ProvisionerMode, limits: &Limits) -> Check {
    let (want_kind, want_count) = match mode {
        ProvisionerMode::NodeClaims => (Some(NodeObjectKind::NodeClaim), request.node_count as usize),
        ProvisionerMode::NodePool => (Some(NodeObjectKind::NodePool), 1),
        ProvisionerMode::BringYourOwn => (None, 0),
    };
    ensure(plan.objects.len() == want_count, || {
        format!(
            "objects: {} planned for {} node(s), expected {want_count} for a {mode:?} provisioner",
            plan.objects.len(),
            request.node_count
        )
    })?;
    labels("pod-node-labels", &plan.pod_node_labels, limits)?;
    list("pod-tolerations", &plan.pod_tolerations, limits)?;
    for t in &plan.pod_tolerations {
        let exists = t.operator == TolerationOperator::Exists;
        ensure((t.key.is_empty() && exists) || label_key(&t.key), || {
            format!("pod-tolerations: key {:?} is not a label key", t.key)
        })?;
        ensure(if exists { t.value.is_empty() } else { label_value(&t.value) }, || {
            format!("pod-tolerations[{}]: value {:?} does not suit operator {:?}", t.key, t.value, t.operator)
        })?;
    }
    let mut seen = HashSet::new();
    for (i, o) in plan.objects.iter().enumerate() {
        let f = format!("objects[{i}]");
        ensure(Some(o.kind) == want_kind, || format!("{f}.kind {:?} does not match a {mode:?} provisioner", o.kind))?;
        ensure(dns_label(&o.name), || format!("{f}.name {:?} must be a DNS label", o.name))?;
        ensure(seen.insert(&o.name), || format!("{f}.name {} is used twice", o.name))?;
        labels(&format!("{f}.labels"), &o.labels, limits)?;
        // The host finds an owner's node objects by these labels: one without them would be leaked.
        for want in &request.owner.labels {
            ensure(o.labels.contains(want), || format!("{f}.labels lack the owner label {}={}", want.key, want.value))?;
        }
        annotations(&format!("{f}.annotations"), &o.annotations, limits)?;
        list(&format!("{f}.taints"), &o.taints, limits)?;
        for t in &o.taints {
            ensure(label_key(&t.key) && label_value(&t.value), || {
                format!("{f}.taints: {}={} is not a valid taint", t.key, t.value)
            })?;
        }
        list(&format!("{f}.requirements"), &o.requirements, limits)?;
        for r in &o.requirements {
            ensure(label_key(&r.key), || format!("{f}.requirements: {:?} is not a valid key", r.key))?;
            list(&format!("{f}.requirements[{}].values", r.key), &r.values, limits)?;
            let n = r.values.len();
            let ok = match r.operator {
                RequirementOperator::IsIn | RequirementOperator::NotIn => {
                    n >= 1 && r.values.iter().all(|v| label_value(v))
                }
                RequirementOperator::Exists | RequirementOperator::DoesNotExist => n == 0,
                RequirementOperator::Gt | RequirementOperator::Lt => n == 1 && r.values[0].parse::<i64>().is_ok(),
            };
            ensure(ok, || {
                format!("{f}.requirements[{}]: values {:?} do not suit operator {:?}", r.key, r.values, r.operator)
            })?;
        }
        if let Some(c) = &o.node_class_ref {
            ensure(
                dns_subdomain(&c.group)
                    && !c.kind.is_empty()
                    && c.kind.chars().all(|ch| ch.is_ascii_alphanumeric())
                    && dns_subdomain(&c.name),
                || format!("{f}.node-class-ref {}/{}/{} is invalid", c.group, c.kind, c.name),
            )?;
        }
        if let Some(s) = o.storage_bytes {
            ensure(s > 0 && s <= 64 << 40, || format!("{f}.storage-bytes {s} is outside 1 byte..=64 TiB"))?;
        }
        if let Some(n) = o.node_limit {
            ensure((1..=1000).contains(&n), || format!("{f}.node-limit {n} is outside 1..=1000"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(dns_label("ws-0"));
        assert!(!dns_label("Ws"));
        assert!(!dns_label("-a"));
        assert!(label_key("kaito.sh/workspace"));
        assert!(!label_key("kaito.sh/"));
        assert!(label_value(""));
        assert!(!label_value("a b"));
        assert!(image_ref("ghcr.io/x/kaito-inference:0.1.0"));
        assert!(!image_ref("x y"));
        assert!(port_name("http"));
        assert!(!port_name("1234"));
        assert!(field_path("metadata.labels['apps.kubernetes.io/pod-index']"));
        assert!(!field_path("spec.containers"));
    }
}
