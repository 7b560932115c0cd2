//! `kaito plugins test`: a conformance suite any plugin must pass.

use crate::CallError;
use crate::host::PluginHost;
use crate::plugin::{Plugin, PluginKind};
use crate::wit::kv;
use crate::wit::latest::*;
use std::path::Path;
use std::sync::Arc;

/// Outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// All checks run on one plugin file.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub plugin: String,
    pub checks: Vec<CheckResult>,
}

impl Report {
    fn push(&mut self, name: impl Into<String>, passed: bool, detail: impl Into<String>) {
        self.checks.push(CheckResult { name: name.into(), passed, detail: detail.into() });
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// Names of the failing checks.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }
}

const GIB: u64 = 1 << 30;

/// GPU shapes every preset is asked about: small, medium and very large nodes.
pub fn reference_shapes() -> Vec<GpuShape> {
    let shape = |m: &str, n: u32, gib: u64, nodes: u32, nvme: bool| GpuShape {
        gpu_model: m.into(),
        gpus_per_node: n,
        gpu_memory_bytes: gib * GIB,
        max_nodes: nodes,
        nvme,
    };
    vec![
        shape("A10", 1, 24, 4, false),
        shape("A100", 1, 80, 4, true),
        shape("A100", 8, 40, 4, false),
        shape("H100", 8, 80, 4, true),
        shape("H200", 8, 141, 4, true),
    ]
}

/// A well-formed request for `model`.
pub fn reference_request(model: &str) -> PlanRequest {
    PlanRequest {
        workspace: "conformance".into(),
        namespace: "default".into(),
        model: model.into(),
        runtime: None,
        // Gated models refuse a request without one, as KAITO's webhook does.
        model_access_secret: Some("hf-token".into()),
        adapters: vec![],
        max_model_len: None,
        min_nodes: 1,
        image_registry: "registry.invalid/kaito".into(),
        config_map: None,
        annotations: vec![],
        model_facts: None,
    }
}

fn fault(e: &CallError) -> bool {
    matches!(e, CallError::Fault { .. } | CallError::Quarantined { .. })
}

/// Load `file` in `host` and run every check for its kind.
pub fn run(host: &PluginHost, file: &Path) -> Report {
    let mut report = Report { plugin: file.display().to_string(), ..Default::default() };
    let plugin = match host.load_file(file, None) {
        Ok(p) => p,
        Err(e) => {
            report.push("loads", false, e.to_string());
            return report;
        }
    };
    report.plugin = plugin.name().to_string();
    report.push(
        "loads",
        true,
        format!("contract kaito:plugin@{}, {} plugin", plugin.contract(), plugin.kind().as_str()),
    );
    match plugin.metadata() {
        Some(_) => report.push("metadata", true, "info and catalog are well-formed"),
        None => {
            report.push("metadata", false, plugin.quarantined().unwrap_or_else(|| "metadata unavailable".into()));
            return report;
        }
    }
    match plugin.kind() {
        PluginKind::Preset => preset_checks(&plugin, &mut report),
        PluginKind::Provisioner => provisioner_checks(&plugin, &mut report),
    }
    report
}

fn preset_checks(plugin: &Arc<Plugin>, report: &mut Report) {
    for model in plugin.models() {
        let mut ok_shapes = 0;
        let mut problems = Vec::new();
        for shape in reference_shapes() {
            let req = reference_request(&model.name);
            let first = plugin.plan(&req, &shape);
            match &first {
                Ok(_) => ok_shapes += 1,
                Err(CallError::Plugin { .. }) => {}
                Err(e) => problems.push(format!("{}x{}: {e}", shape.gpus_per_node, shape.gpu_model)),
            }
            if !fault_or_quarantine(&first) {
                let again = plugin.plan(&req, &shape);
                let same = match (&first, &again) {
                    (Ok(a), Ok(b)) => a == b,
                    (Err(CallError::Plugin { error: a, .. }), Err(CallError::Plugin { error: b, .. })) => a == b,
                    _ => false,
                };
                if !same {
                    problems.push(format!(
                        "{}x{}: two identical calls gave different answers",
                        shape.gpus_per_node, shape.gpu_model
                    ));
                }
            }
        }
        if ok_shapes == 0 && problems.is_empty() {
            problems.push("fits none of the reference shapes (up to 4 nodes of 8x H200)".into());
        }
        report.push(
            format!("plan {}", model.name),
            problems.is_empty(),
            if problems.is_empty() {
                format!("valid and deterministic on {ok_shapes} of {} shapes", reference_shapes().len())
            } else {
                problems.join("; ")
            },
        );
    }
    let first = plugin.models().first().map(|m| m.name.clone()).unwrap_or_default();
    let shape = reference_shapes().remove(1);
    let nonsense: Vec<(&str, PlanRequest, GpuShape)> = vec![
        ("unknown model", reference_request("no-such-model-conformance"), shape.clone()),
        ("zero GPUs", reference_request(&first), GpuShape { gpus_per_node: 0, gpu_memory_bytes: 0, ..shape.clone() }),
        ("zero nodes", PlanRequest { min_nodes: 0, ..reference_request(&first) }, shape.clone()),
        ("no nodes available", reference_request(&first), GpuShape { max_nodes: 0, ..shape.clone() }),
        ("empty workspace name", PlanRequest { workspace: String::new(), ..reference_request(&first) }, shape.clone()),
        (
            "unknown runtime",
            PlanRequest { runtime: Some("no-such-runtime".into()), ..reference_request(&first) },
            shape.clone(),
        ),
    ];
    for (what, req, shape) in nonsense {
        let r = plugin.plan(&req, &shape);
        let (ok, detail) = match &r {
            Err(CallError::Plugin { error, .. }) => (true, format!("typed error at {}", error.field)),
            Ok(_) => (false, "accepted it".to_string()),
            Err(e) => (false, e.to_string()),
        };
        report.push(format!("rejects {what}"), ok, detail);
    }
}

fn fault_or_quarantine<T>(r: &Result<T, CallError>) -> bool {
    matches!(r, Err(e) if fault(e))
}

fn provisioner_checks(plugin: &Arc<Plugin>, report: &mut Report) {
    let Some(info) = plugin.provisioner_info().cloned() else { return };
    let request = |instance_type: &str, count: u32| NodeRequest {
        owner: crate::wit::workspace_owner("conformance", "default"),
        instance_type: instance_type.into(),
        node_count: count,
        match_labels: vec![kv("apps", "conformance")],
        disk_bytes: 100 * GIB,
        annotations: vec![],
    };
    let types: Vec<String> = match info.mode {
        ProvisionerMode::BringYourOwn => vec![String::new()],
        _ => plugin.instance_types().iter().map(|t| t.name.clone()).collect(),
    };
    if types.is_empty() {
        report.push("instance types", false, "a provisioner that creates nodes must list instance types");
    }
    for t in &types {
        for count in [1, 3] {
            let a = plugin.plan_nodes(&request(t, count));
            let b = plugin.plan_nodes(&request(t, count));
            let (ok, detail) = match (&a, &b) {
                (Ok(x), Ok(y)) if x == y => (true, format!("{} object(s)", x.objects.len())),
                (Ok(_), Ok(_)) => (false, "two identical calls gave different plans".into()),
                (Err(e), _) | (_, Err(e)) => (false, e.to_string()),
            };
            report.push(format!("plan-nodes {} x{count}", if t.is_empty() { "byo" } else { t }), ok, detail);
        }
    }
    if info.mode != ProvisionerMode::BringYourOwn {
        let r = plugin.plan_nodes(&request("no-such-instance-type", 1));
        report.push(
            "rejects unknown instance type",
            matches!(r, Err(CallError::Plugin { .. })),
            match &r {
                Err(e) => e.to_string(),
                Ok(_) => "accepted it".into(),
            },
        );
        if let Some(t) = types.first() {
            let r = plugin.plan_nodes(&request(t, 0));
            report.push(
                "rejects zero nodes",
                matches!(r, Err(CallError::Plugin { .. })),
                match &r {
                    Err(e) => e.to_string(),
                    Ok(_) => "accepted it".into(),
                },
            );
        }
    }
    let labels = vec![
        kv("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-80GB"),
        kv("nvidia.com/gpu.count", "8"),
        kv("nvidia.com/gpu.memory", "81920"),
    ];
    let r = plugin.gpu_from_labels(&labels);
    report.push(
        "reads GPU feature discovery labels",
        matches!(&r, Ok(g) if g.gpu_count == 8 && g.gpu_memory_bytes == 80 * GIB),
        format!("{r:?}"),
    );
    let r = plugin.gpu_from_labels(&[]);
    report.push(
        "rejects a node without GPU labels",
        matches!(r, Err(CallError::Plugin { .. })),
        match &r {
            Err(e) => e.to_string(),
            Ok(g) => format!("accepted it: {g:?}"),
        },
    );
}
