//! Runtime choice and workload plans for the two runtimes a preset can
//! target: our own tch server (`kaito-inference`) and KAITO's vLLM image.

use crate::catalog::ModelSpec;
use crate::sizing::{GIB, Sizing};
use crate::{
    EnvSource, EnvVar, ErrorKind, GpuShape, HttpGetAction, PersistentClaim, PlanRequest, PluginError, Port, Probe,
    ProbeAction, SecretKeyRef, Volume, VolumeSource, WorkloadPlan,
};

/// Tag of the `kaito-inference` image this SDK plans for.
pub const TCH_IMAGE_TAG: &str = kaito_names::RUNTIME_IMAGE_TAG;
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
pub const RUNTIME_ANNOTATION: &str = kaito_names::annotations::RUNTIME;
/// Annotation choosing vLLM's performance mode, as KAITO reads it (`balanced` passes no flag).
pub const PERFORMANCE_MODE_ANNOTATION: &str = kaito_names::annotations::PERFORMANCE_MODE;
/// Port of vLLM's KV-cache events (KAITO exposes it on the pod and the ClusterIP Service).
pub const KV_EVENTS_PORT: u16 = 5557;

/// What KAITO v0.12 passes to vLLM on its image, model by model: tool-calling chat templates it ships in
/// `/workspace/chat_templates`, tokenizer modes and FP8 KV caches keyed by served-name prefix, and the
/// architectures that need DeepGEMM or vLLM's hybrid KV-cache manager (no CPU KV offload). Facts read from KAITO's
/// source, written here as data.
mod kaito_vllm {
    pub const CHAT_TEMPLATES: &[(&str, &str)] = &[
        ("deepseek-r1", "tool-chat-deepseekr1.jinja"),
        ("deepseek-v3", "tool-chat-deepseekv3.jinja"),
        ("gemma-4", "tool-chat-gemma4.jinja"),
        ("llama-3", "tool-chat-llama3.1-json.jinja"),
        ("phi-4-mini", "tool-chat-phi4-mini.jinja"),
        ("qwen2.5", "tool-chat-hermes.jinja"),
    ];
    pub const TOKENIZER_MODES: &[(&str, &str)] =
        &[("deepseek-r1", "deepseek_v32"), ("deepseek-v3", "deepseek_v32"), ("deepseek-v4", "deepseek_v4")];
    pub const FP8_KV_CACHE: &[&str] = &["deepseek-v4", "glm-5.2-fp8"];
    pub const DEEP_GEMM_ARCHITECTURES: &[&str] =
        &["DeepseekV4ForCausalLM", "DeepseekV32ForCausalLM", "GlmMoeDsaForCausalLM"];
    /// Architecture prefixes served with the hybrid KV-cache manager, and those without LMCache.
    pub const NO_CPU_KV_OFFLOAD: &[&str] =
        &["NemotronH", "Gemma4", "Qwen3_5", "DeepseekV4", "DeepseekV32", "GptOssForCausalLM"];
    /// Name markers of pre-quantised checkpoints, which vLLM loads with `--dtype=auto`.
    pub const QUANTIZED_MARKERS: &[&str] = &["awq", "gptq", "fp8", "fp4", "int4", "int8", "w4a16", "w8a8"];

    pub fn by_prefix(table: &'static [(&'static str, &'static str)], name: &str) -> Option<&'static str> {
        table.iter().find(|(prefix, _)| name.starts_with(prefix)).map(|(_, v)| *v)
    }
}

/// One word of a `/bin/sh -c` script: quoted unless it is made only of characters the shell leaves alone.
fn sh_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// KAITO's value of [`RUNTIME_ANNOTATION`] for its non-vLLM runtime.
pub const KAITO_TRANSFORMERS: &str = "transformers";

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
    let asked = request.runtime.as_deref().map(str::trim);
    let runtime = match asked {
        // KAITO's name for its non-vLLM runtime: ours is tch, which serves from one GPU; a KAITO file asking for it
        // is never refused, it gets the runtime that can serve the model.
        Some(t) if t.eq_ignore_ascii_case(KAITO_TRANSFORMERS) => {
            if spec.runtimes.contains(&Runtime::Tch) && fits_one_gpu(sizing) {
                notes.push(format!(
                    "{RUNTIME_ANNOTATION}: {KAITO_TRANSFORMERS} is KAITO's Hugging Face transformers runtime; it is served here by the tch runtime (kaito-inference)"
                ));
                Runtime::Tch
            } else if spec.runtimes.contains(&Runtime::Vllm) {
                notes.push(format!(
                    "{RUNTIME_ANNOTATION}: {KAITO_TRANSFORMERS} asked, served by vllm: the tch runtime cannot serve {} here ({} GPU(s) on {} node(s), architecture {})",
                    spec.name, sizing.min_gpus, sizing.node_count, spec.architecture
                ));
                Runtime::Vllm
            } else {
                return Err(PluginError::new(
                    ErrorKind::Unsupported,
                    &field(),
                    format!("neither the tch runtime nor vllm can serve {} on this instance type", spec.name),
                    Some("pick an instance type with a larger GPU".into()),
                ));
            }
        }
        Some(asked) => {
            let runtime = Runtime::parse(asked).filter(|r| spec.runtimes.contains(r)).ok_or_else(|| {
                PluginError::new(
                    ErrorKind::Unsupported,
                    &field(),
                    format!("runtime {asked:?} is not available for {}", spec.name),
                    Some(format!(
                        "use one of: {}, or {KAITO_TRANSFORMERS} (KAITO's name, served by tch)",
                        supported.join(", ")
                    )),
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
    if runtime == Runtime::Vllm
        && let Some(i) =
            request.adapters.iter().position(|a| a.strength.as_deref().is_some_and(|s| !s.trim().is_empty()))
    {
        // As KAITO's webhook: vLLM applies every adapter at full strength.
        return Err(PluginError::new(
            ErrorKind::Unsupported,
            &format!("inference.adapters[{i}].strength"),
            format!("{} is served by vllm, which applies adapters at full strength", spec.name),
            Some(format!(
                "remove the strength, or set {RUNTIME_ANNOTATION}: tch (which scales adapters) on an instance type where the model fits one GPU"
            )),
        ));
    }
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

/// `HF_TOKEN` from the model-access Secret, when one is named. Optional, as KAITO makes it: a Secret without the key
/// starts the pod, which then fails only for gated downloads.
pub fn hf_token_env(secret: Option<&String>) -> Vec<EnvVar> {
    secret
        .map(|name| EnvVar {
            name: "HF_TOKEN".into(),
            value: EnvSource::SecretKey(SecretKeyRef { name: name.clone(), key: "HF_TOKEN".into(), optional: true }),
        })
        .into_iter()
        .collect()
}

/// The volumes every model pod has: shared memory, the weights cache on `weights`, and the ConfigMap (inference or
/// tuning settings) at `/mnt/config` when one is named.
pub fn pod_volumes(weights: VolumeSource, config_map: Option<&String>) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            read_only: false,
            source: VolumeSource::Memory(None),
        },
        Volume { name: "weights".into(), mount_path: WEIGHTS_DIR.into(), read_only: false, source: weights },
    ];
    if let Some(cm) = config_map {
        volumes.push(Volume {
            name: "config".into(),
            mount_path: "/mnt/config".into(),
            read_only: true,
            source: VolumeSource::ConfigMap(cm.clone()),
        });
    }
    volumes
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
    let mut env = hf_token_env(request.model_access_secret.as_ref());
    let mut ports = vec![Port { name: "http".into(), container_port: HTTP_PORT, service_port: Some(80) }];
    let weights = if shape.nvme {
        VolumeSource::Persistent(PersistentClaim {
            storage_class: Some(NVME_STORAGE_CLASS.into()),
            size_bytes: spec.disk_bytes(),
        })
    } else {
        VolumeSource::EmptyDir(None)
    };
    let volumes = pod_volumes(weights, request.config_map.as_ref());
    let startup_threshold = startup_seconds(spec.weights_bytes()) / 10;
    let (image, command, args, startup, readiness, liveness) = match runtime {
        Runtime::Tch => {
            let mut args: Vec<String> = vec!["--model".into(), spec.hf_id.into(), "--served-model-name".into()];
            // KAITO's name first (what /v1/models lists), the preset name as a second accepted name.
            args.extend(spec.served_names());
            args.extend([
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
            ]);
            if let Some(len) = request.max_model_len {
                args.extend(["--max-model-len".into(), len.to_string()]);
            }
            // Adapters are pulled by the host's init containers into their directories before the server starts;
            // a strength scales the adapter, through the JSON form of --lora-modules.
            if !request.adapters.is_empty() {
                args.extend(["--enable-lora".into(), "--lora-modules".into()]);
                for a in &request.adapters {
                    let path = kaito_names::adapters::path(&a.name);
                    args.push(match a.strength.as_deref().map(str::trim) {
                        Some(strength) => format!(r#"{{"name":"{}","path":"{path}","strength":{strength}}}"#, a.name),
                        None => format!("{}={path}", a.name),
                    });
                }
            }
            // The model's tool-call format, by vLLM's parser name, when our server reads it (else tools are refused
            // with a 400 naming the field, as on a model without a parser).
            if let Some(p) = spec.tool_call_parser.filter(|p| kaito_names::tool_parsers::TCH.contains(p)) {
                args.extend(["--tool-call-parser".into(), p.to_string()]);
            }
            let image = kaito_names::runtime_image(&request.image_registry);
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
            let served = spec.served_name();
            env.push(literal("VLLM_USE_FLASHINFER_SAMPLER", "0"));
            // KAITO notes vLLM crashes on its image without these two.
            let deep_gemm = kaito_vllm::DEEP_GEMM_ARCHITECTURES.contains(&spec.architecture);
            env.push(literal("VLLM_USE_DEEP_GEMM", if deep_gemm { "1" } else { "0" }));
            // Catalog models by their name, as KAITO's catalog field; models from the hub by their config.
            let quantized = kaito_vllm::QUANTIZED_MARKERS.iter().any(|m| served.contains(m))
                || request.model_facts.as_ref().is_some_and(|f| f.quantization.is_some());
            let mut vllm: Vec<String> = vec![
                format!("--model={}", spec.hf_id),
                format!("--download-dir={WEIGHTS_DIR}"),
                format!("--port={HTTP_PORT}"),
                match request.max_model_len {
                    Some(len) => format!("--max-model-len={len}"),
                    None => "--max-model-len=auto".into(),
                },
                format!("--gpu-memory-utilization={}", sizing.gpu_memory_utilization),
                format!("--tensor-parallel-size={}", sizing.parallelism.tensor),
                if quantized { "--dtype=auto".into() } else { "--dtype=bfloat16".into() },
                "--trust-remote-code".into(),
                "--compilation-config.pass_config.fuse_allreduce_rms=False".into(),
                r#"--kv-events-config={"enable_kv_cache_events":true}"#.into(),
            ];
            ports.push(Port {
                name: "kv-events".into(),
                container_port: KV_EVENTS_PORT,
                service_port: Some(KV_EVENTS_PORT),
            });
            if let Some(mode) = kaito_vllm::by_prefix(kaito_vllm::TOKENIZER_MODES, &served) {
                vllm.push(format!("--tokenizer-mode={mode}"));
            }
            if kaito_vllm::FP8_KV_CACHE.iter().any(|p| served.starts_with(p)) {
                vllm.push("--kv-cache-dtype=fp8".into());
            }
            let no_offload = kaito_vllm::NO_CPU_KV_OFFLOAD.iter().any(|p| spec.architecture.starts_with(p));
            if no_offload || sizing.parallelism.data > 1 || sizing.parallelism.pipeline > 1 {
                vllm.push("--kaito-kv-cache-cpu-memory-utilization=0".into());
            }
            let mode = request.annotations.iter().find(|kv| kv.key == PERFORMANCE_MODE_ANNOTATION);
            if let Some(kv) = mode.filter(|kv| !kv.value.trim().is_empty() && kv.value.trim() != "balanced") {
                vllm.push(format!("--performance-mode={}", kv.value.trim()));
            }
            // vLLM takes several names after one flag (separate arguments); the first is the one it reports.
            vllm.push("--served-model-name".into());
            vllm.extend(spec.served_names());
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
            // Adapters from the directories the host's init containers fill, at full strength (choose() refuses one).
            if !request.adapters.is_empty() {
                vllm.push("--enable-lora".into());
                vllm.push("--lora-modules".into());
                vllm.extend(
                    request.adapters.iter().map(|a| format!("{}={}", a.name, kaito_names::adapters::path(&a.name))),
                );
            }
            if let Some(p) = spec.tool_call_parser {
                vllm.push(format!("--tool-call-parser={p}"));
                vllm.push("--enable-auto-tool-choice".into());
            }
            if let Some(p) = spec.reasoning_parser {
                vllm.push(format!("--reasoning-parser={p}"));
            }
            if let Some(t) = spec.chat_template.or_else(|| kaito_vllm::by_prefix(kaito_vllm::CHAT_TEMPLATES, &served)) {
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
                    vllm.iter().map(|w| sh_word(w)).collect::<Vec<_>>().join(" ")
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
