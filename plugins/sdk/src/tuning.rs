//! Fine-tuning plans: one Job pod running `kaito-tune` (shipped in the tch runtime's image) on one GPU, reading the
//! data and writing the adapter where the host mounted or named them.

use crate::catalog::{ModelSpec, resolve_at};
use crate::runtime::{TCH_ARCHITECTURES, WEIGHTS_DIR, hf_token_env, pod_volumes};
use crate::{
    ErrorKind, GpuShape, Parallelism, PluginError, Port, ResourcePlan, TuneInput, TuneOutput, TunePlan, TuneRequest,
    VolumeSource, WorkloadPlan,
};

/// Where the tuning ConfigMap is mounted, and the key KAITO's ConfigMaps keep the configuration under.
pub const CONFIG_FILE: &str = "/mnt/config/training_config.yaml";
/// Port of the trainer's Prometheus metrics (KAITO's tuning container port).
pub const METRICS_PORT: u16 = 5000;
/// Pod restarts before the Job fails: Kubernetes' default, which KAITO leaves in place; each restart resumes from the
/// last checkpoint.
pub const BACKOFF_LIMIT: u32 = 6;

/// GPU memory LoRA training needs: kaito-tune holds the weights in float32 (twice the 16-bit checkpoint), plus a
/// fifth of the checkpoint for the adapter, its optimiser state and the activations at KAITO's default batch of 1.
pub fn training_bytes(spec: &ModelSpec) -> u64 {
    let weights = spec.weights_bytes();
    2 * weights + weights / 5
}

/// Plan a LoRA fine-tuning Job for one model of a family table.
pub fn tune(
    specs: &[ModelSpec],
    gated: &[&str],
    request: TuneRequest,
    shape: GpuShape,
) -> Result<TunePlan, PluginError> {
    let spec = resolve_at(specs, &request.model, "tuning.preset.name")?;
    if !spec.supports_tuning {
        let tunable: Vec<&str> = specs.iter().filter(|s| s.supports_tuning).map(|s| s.name).collect();
        let hint = if tunable.is_empty() {
            "no model of this family tunes here".to_string()
        } else {
            format!("models of this family that tune: {}", tunable.join(", "))
        };
        return Err(PluginError::new(
            ErrorKind::Unsupported,
            "tuning.preset.name",
            format!("{} has no tuning preset", spec.name),
            Some(hint),
        ));
    }
    if !TCH_ARCHITECTURES.contains(&spec.architecture) {
        return Err(PluginError::new(
            ErrorKind::Unsupported,
            "tuning.preset.name",
            format!("kaito-tune trains {}; {} is a {}", TCH_ARCHITECTURES.join(", "), spec.name, spec.architecture),
            None,
        ));
    }
    match request.method.as_str() {
        "lora" => {}
        "qlora" => {
            return Err(PluginError::new(
                ErrorKind::Unsupported,
                "tuning.method",
                "QLoRA (4-bit NF4 base weights) is not implemented by kaito-tune",
                Some("set tuning.method to lora".into()),
            ));
        }
        other => return Err(PluginError::invalid("tuning.method", format!("{other:?} is not lora or qlora"))),
    }
    if gated.contains(&spec.hf_id) && request.model_access_secret.as_deref().is_none_or(str::is_empty) {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            "tuning.preset.presetOptions.modelAccessSecret",
            format!("{} is gated on Hugging Face: its weights download only with a token", spec.hf_id),
            Some(
                "create a Secret with the key HF_TOKEN and name it in tuning.preset.presetOptions.modelAccessSecret"
                    .into(),
            ),
        ));
    }
    let need = training_bytes(spec);
    if need > shape.gpu_memory_bytes {
        return Err(PluginError::new(
            ErrorKind::DoesNotFit,
            "resource.instanceType",
            format!(
                "LoRA training of {} needs about {} MiB on one GPU; a {} has {} MiB",
                spec.name,
                need >> 20,
                shape.gpu_model,
                shape.gpu_memory_bytes >> 20
            ),
            Some("choose an instance type with more memory per GPU".into()),
        ));
    }
    let mut notes = Vec::new();
    if shape.gpus_per_node > 1 {
        notes.push(format!(
            "kaito-tune trains on one GPU; {} of the node's {} GPUs stay free",
            shape.gpus_per_node - 1,
            shape.gpus_per_node
        ));
    }
    let mut args: Vec<String> = vec!["--model".into(), spec.hf_id.into(), "--download-dir".into(), WEIGHTS_DIR.into()];
    // A Job has no per-pod claims: the weights go to scratch space.
    let volumes = pod_volumes(VolumeSource::EmptyDir(None), request.config_map.as_ref());
    if request.config_map.is_some() {
        args.extend(["--config".into(), CONFIG_FILE.into()]);
    }
    match &request.input {
        TuneInput::Urls(urls) => {
            for url in urls {
                args.extend(["--data".into(), url.clone()]);
            }
        }
        TuneInput::Image(image) => args.extend(["--data".into(), format!("oci://{image}")]),
        TuneInput::Directory(dir) => args.extend(["--data".into(), dir.clone()]),
    }
    match &request.output {
        TuneOutput::Directory(dir) => args.extend(["--output".into(), dir.clone()]),
        TuneOutput::Image(image) => {
            args.extend(["--output".into(), request.scratch_dir.clone(), "--push".into(), format!("oci://{image}")]);
        }
    }
    for config in &request.registry_configs {
        args.extend(["--registry-config".into(), config.clone()]);
    }
    args.extend(["--metrics-port".into(), METRICS_PORT.to_string()]);
    let env = hf_token_env(request.model_access_secret.as_ref());
    let image = kaito_names::runtime_image(&request.image_registry);
    Ok(TunePlan {
        runtime: "tch".into(),
        notes,
        resources: ResourcePlan {
            node_count: 1,
            gpus_per_node: shape.gpus_per_node,
            gpu_memory_bytes: need,
            disk_bytes: spec.disk_bytes(),
            parallelism: Parallelism { tensor: 1, pipeline: 1, data: 1 },
        },
        workload: WorkloadPlan {
            image,
            command: vec!["kaito-tune".into()],
            args,
            env,
            ports: vec![Port { name: "metrics".into(), container_port: METRICS_PORT, service_port: None }],
            startup_probe: None,
            readiness_probe: None,
            liveness_probe: None,
            volumes,
            gpus_per_pod: 1,
            labels: Vec::new(),
            privileged: false,
            add_capabilities: Vec::new(),
            host_network: false,
            host_pid: false,
            host_ipc: false,
        },
        backoff_limit: BACKOFF_LIMIT,
    })
}
