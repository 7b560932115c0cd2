//! Runtime choice and workload plans for the two runtimes a preset can
//! target: our own tch server (`kaito-inference`) and KAITO's vLLM image.

use crate::catalog::ModelSpec;
use crate::sizing::{GIB, Sizing};
use crate::{
    EnvSource, EnvVar, ErrorKind, GpuShape, HttpGetAction, PersistentClaim, PlanRequest, PluginError, Port, Probe,
    ProbeAction, SecretKeyRef, Volume, VolumeSource, WorkloadPlan,
};

/// Tag of the `kaito-inference` image this SDK plans for.
pub const TCH_IMAGE_TAG: &str = "0.1.0";
/// KAITO's vLLM base image, used unchanged for `kaito.sh/runtime: vllm`.
pub const VLLM_IMAGE: &str = "mcr.microsoft.com/aks/kaito/kaito-base:0.5.0";
/// Port every runtime serves its OpenAI-compatible API on.
pub const HTTP_PORT: u16 = 5000;
/// Where weights are downloaded inside the pod.
pub const WEIGHTS_DIR: &str = "/workspace/weights";
/// StorageClass of the local-NVMe weights cache.
pub const NVME_STORAGE_CLASS: &str = "kaito-local-nvme-disk";
/// Architectures the tch server implements (see host/inference).
pub const TCH_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM"];
/// Annotation that selects the runtime.
pub const RUNTIME_ANNOTATION: &str = "kaito.sh/runtime";

/// A runtime a preset can plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Our libtorch server, `kaito-inference`.
    Tch,
    /// vLLM in KAITO's base image.
    Vllm,
}

impl Runtime {
    /// Name used in annotations and model metadata.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tch => "tch",
            Runtime::Vllm => "vllm",
        }
    }

    /// Parse an annotation value.
    pub fn parse(s: &str) -> Option<Runtime> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tch" => Some(Runtime::Tch),
            "vllm" => Some(Runtime::Vllm),
            _ => None,
        }
    }
}

fn field() -> String {
    format!("metadata.annotations[{RUNTIME_ANNOTATION}]")
}

fn fits_one_gpu(sizing: &Sizing) -> bool {
    sizing.node_count == 1 && sizing.min_gpus == 1
}

/// Pick the runtime: the annotation when set, else tch when it can serve the
/// model from one GPU, else vLLM, saying why in a note.
pub fn choose(
    spec: &ModelSpec,
    request: &PlanRequest,
    shape: &GpuShape,
    sizing: &Sizing,
) -> Result<(Runtime, Vec<String>), PluginError> {
    let supported: Vec<&str> = spec.runtimes.iter().map(|r| r.name()).collect();
    let mut notes = Vec::new();
    let runtime = match request.runtime.as_deref() {
        Some(asked) => {
            let runtime = Runtime::parse(asked).filter(|r| spec.runtimes.contains(r)).ok_or_else(|| {
                PluginError::new(
                    ErrorKind::Unsupported,
                    &field(),
                    format!("runtime {asked:?} is not available for {}", spec.name),
                    Some(format!("use one of: {}", supported.join(", "))),
                )
            })?;
            if runtime == Runtime::Tch && !fits_one_gpu(sizing) {
                return Err(PluginError::new(
                    ErrorKind::Unsupported,
                    &field(),
                    format!(
                        "the tch runtime serves a model from one GPU, but {} needs {} GPU(s) on {} node(s) of {}",
                        spec.name, sizing.min_gpus, sizing.node_count, shape.gpu_model
                    ),
                    Some(format!("set {RUNTIME_ANNOTATION}: vllm, or pick an instance type with a larger GPU")),
                ));
            }
            runtime
        }
        None if spec.runtimes.contains(&Runtime::Tch) && fits_one_gpu(sizing) => Runtime::Tch,
        None if spec.runtimes.contains(&Runtime::Vllm) => {
            if spec.runtimes.contains(&Runtime::Tch) {
                notes.push(format!(
                    "runtime vllm chosen: {} needs {} GPU(s) on {} node(s) and the tch runtime serves from one GPU",
                    spec.name, sizing.min_gpus, sizing.node_count
                ));
            } else {
                notes.push(format!(
                    "runtime vllm chosen: the tch runtime does not implement {} (it has {})",
                    spec.architecture,
                    TCH_ARCHITECTURES.join(", ")
                ));
            }
            Runtime::Vllm
        }
        None => {
            return Err(PluginError::new(
                ErrorKind::Unsupported,
                "resource.instanceType",
                format!("{} can only run on {} but needs {} GPUs", spec.name, supported.join(", "), sizing.min_gpus),
                Some("pick an instance type with a larger GPU".into()),
            ));
        }
    };
    if runtime == Runtime::Tch && shape.gpus_per_node > 1 {
        notes.push(format!(
            "the tch runtime uses one of the {} GPUs per node; set {RUNTIME_ANNOTATION}: vllm for data parallelism",
            shape.gpus_per_node
        ));
    }
    Ok((runtime, notes))
}

/// Startup-probe budget in seconds: 15 min + 18 s per GiB of weights, clamped to 30..=180 min.
pub fn startup_seconds(weights_bytes: u64) -> u32 {
    let gib = weights_bytes.div_ceil(GIB);
    (900 + 18 * gib).clamp(1800, 10800) as u32
}

fn http_probe(initial_delay: u32, failure_threshold: u32) -> Probe {
    Probe {
        action: ProbeAction::HttpGet(HttpGetAction { path: "/health".into(), port: HTTP_PORT }),
        initial_delay_seconds: initial_delay,
        period_seconds: 10,
        timeout_seconds: 5,
        failure_threshold,
    }
}

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: EnvSource::Literal(value.into()) }
}

fn leader_host(request: &PlanRequest) -> String {
    kaito_names::leader_address(&request.workspace, &request.namespace)
}

/// The workload plan for `runtime`.
pub fn workload(
    runtime: Runtime,
    spec: &ModelSpec,
    request: &PlanRequest,
    shape: &GpuShape,
    sizing: &Sizing,
) -> WorkloadPlan {
    let multi_node = sizing.node_count > 1;
    let mut env = Vec::new();
    if let Some(secret) = &request.model_access_secret {
        env.push(EnvVar {
            name: "HF_TOKEN".into(),
            value: EnvSource::SecretKey(SecretKeyRef { name: secret.clone(), key: "HF_TOKEN".into(), optional: false }),
        });
    }
    let mut ports = vec![Port { name: "http".into(), container_port: HTTP_PORT, service_port: Some(80) }];
    let mut volumes = vec![
        Volume {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            read_only: false,
            source: VolumeSource::Memory(None),
        },
        Volume {
            name: "weights".into(),
            mount_path: WEIGHTS_DIR.into(),
            read_only: false,
            source: if shape.nvme {
                VolumeSource::Persistent(PersistentClaim {
                    storage_class: Some(NVME_STORAGE_CLASS.into()),
                    size_bytes: spec.disk_bytes(),
                })
            } else {
                VolumeSource::EmptyDir(None)
            },
        },
    ];
    if let Some(cm) = &request.config_map {
        volumes.push(Volume {
            name: "config".into(),
            mount_path: "/mnt/config".into(),
            read_only: true,
            source: VolumeSource::ConfigMap(cm.clone()),
        });
    }
    let startup_threshold = startup_seconds(spec.weights_bytes()) / 10;
    let (image, command, args, startup, readiness, liveness) = match runtime {
        Runtime::Tch => {
            let mut args: Vec<String> = vec![
                "--model".into(),
                spec.hf_id.into(),
                "--served-model-name".into(),
                spec.name.into(),
                "--host".into(),
                "0.0.0.0".into(),
                "--port".into(),
                HTTP_PORT.to_string(),
                "--download-dir".into(),
                WEIGHTS_DIR.into(),
                "--dtype".into(),
                "auto".into(),
                "--device".into(),
                "auto".into(),
            ];
            if let Some(len) = request.max_model_len {
                args.extend(["--max-model-len".into(), len.to_string()]);
            }
            let image = format!("{}/kaito-inference:{TCH_IMAGE_TAG}", request.image_registry.trim_end_matches('/'));
            (
                image,
                vec!["kaito-inference".to_string()],
                args,
                http_probe(0, startup_threshold),
                http_probe(30, 3),
                http_probe(0, 3),
            )
        }
        Runtime::Vllm => {
            env.push(literal("VLLM_USE_FLASHINFER_SAMPLER", "0"));
            let mut vllm: Vec<String> = vec![
                format!("--model={}", spec.hf_id),
                format!("--download-dir={WEIGHTS_DIR}"),
                format!("--served-model-name={}", spec.name),
                format!("--port={HTTP_PORT}"),
                match request.max_model_len {
                    Some(len) => format!("--max-model-len={len}"),
                    None => "--max-model-len=auto".into(),
                },
                format!("--gpu-memory-utilization={}", sizing.gpu_memory_utilization),
                format!("--tensor-parallel-size={}", sizing.parallelism.tensor),
                "--dtype=bfloat16".into(),
                "--trust-remote-code".into(),
            ];
            vllm.extend(spec.vllm_args.iter().map(|a| a.to_string()));
            if sizing.parallelism.data > 1 {
                vllm.push(format!("--data-parallel-size={}", sizing.parallelism.data));
            }
            if sizing.parallelism.pipeline > 1 {
                vllm.push(format!("--pipeline-parallel-size={}", sizing.parallelism.pipeline));
                vllm.push("--distributed-executor-backend=ray".into());
            }
            if request.config_map.is_some() {
                vllm.push("--kaito-config-file=/mnt/config/inference_config.yaml".into());
            }
            if spec.supports_lora {
                vllm.push("--enable-lora".into());
            }
            if let Some(p) = spec.tool_call_parser {
                vllm.push(format!("--tool-call-parser={p}"));
                vllm.push("--enable-auto-tool-choice".into());
            }
            if let Some(p) = spec.reasoning_parser {
                vllm.push(format!("--reasoning-parser={p}"));
            }
            if let Some(t) = spec.chat_template {
                vllm.push(format!("--chat-template=/workspace/chat_templates/{t}"));
            }
            if multi_node {
                env.push(EnvVar {
                    name: "POD_INDEX".into(),
                    value: EnvSource::FieldPath("metadata.labels['apps.kubernetes.io/pod-index']".into()),
                });
                ports.push(Port { name: "ray".into(), container_port: 6379, service_port: Some(6379) });
                ports.push(Port { name: "dashboard".into(), container_port: 8265, service_port: Some(8265) });
                let leader = leader_host(request);
                let script = format!(
                    "if [ \"$POD_INDEX\" = \"0\" ]; then ray start --head --port=6379 && exec python3 /workspace/vllm/inference_api.py {}; else exec ray start --address={leader}:6379 --block; fi",
                    vllm.join(" ")
                );
                let check = format!(
                    "if [ \"$POD_INDEX\" = \"0\" ]; then python3 -c 'import urllib.request; urllib.request.urlopen(\"http://localhost:{HTTP_PORT}/health\", timeout=5)'; else ray health-check --address {leader}:6379; fi"
                );
                // Workers never serve /health: every probe runs the same
                // leader-or-ray check.
                let exec = |initial_delay, failure_threshold| Probe {
                    action: ProbeAction::Exec(vec!["/bin/sh".into(), "-c".into(), check.clone()]),
                    initial_delay_seconds: initial_delay,
                    period_seconds: 10,
                    timeout_seconds: 10,
                    failure_threshold,
                };
                (
                    VLLM_IMAGE.to_string(),
                    vec!["/bin/sh".into(), "-c".into()],
                    vec![script],
                    exec(0, startup_threshold),
                    exec(30, 3),
                    exec(0, 3),
                )
            } else {
                let mut command = vec!["python3".to_string(), "/workspace/vllm/inference_api.py".to_string()];
                command.append(&mut vllm);
                (
                    VLLM_IMAGE.to_string(),
                    command,
                    Vec::new(),
                    http_probe(0, startup_threshold),
                    http_probe(30, 3),
                    http_probe(0, 3),
                )
            }
        }
    };
    WorkloadPlan {
        image,
        command,
        args,
        env,
        ports,
        startup_probe: Some(startup),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        volumes,
        gpus_per_pod: shape.gpus_per_node,
        labels: Vec::new(),
        privileged: false,
        add_capabilities: Vec::new(),
        host_network: false,
        host_pid: false,
        host_ipc: false,
    }
}
