//! Phi-3, Phi-3.5 and Phi-4 presets (facts from the KAITO model catalog and
//! each model's Hugging Face `config.json`).

use kaito_plugin_sdk::catalog::{KvCache, ModelSpec};
use kaito_plugin_sdk::runtime::Runtime;

const RUNTIMES: &[Runtime] = &[Runtime::Tch, Runtime::Vllm];

/// Phi-3-mini geometry: 32 layers, 32 KV heads of 96 dims.
const fn phi3_mini(name: &'static str, hf_id: &'static str, context_length: u32) -> ModelSpec {
    ModelSpec {
        name,
        aliases: &[],
        hf_id,
        family: "phi",
        architecture: "Phi3ForCausalLM",
        weights_centi_gib: 712,
        context_length,
        kv: KvCache::Gqa { layers: 32, kv_heads: 32, head_dim: 96 },
        license: "mit",
        runtimes: RUNTIMES,
        chat_template: None,
        tool_call_parser: None,
        reasoning_parser: None,
        supports_tuning: true,
        supports_multi_node: true,
        supports_lora: true,
        vllm_args: &[],
    }
}

/// Phi-3-medium / Phi-4 geometry: 40 layers, 10 KV heads of 128 dims.
const fn phi_medium(name: &'static str, hf_id: &'static str, weights_centi_gib: u64, context_length: u32) -> ModelSpec {
    ModelSpec {
        weights_centi_gib,
        kv: KvCache::Gqa { layers: 40, kv_heads: 10, head_dim: 128 },
        ..phi3_mini(name, hf_id, context_length)
    }
}

/// Every model of the family.
pub const MODELS: &[ModelSpec] = &[
    phi_medium("phi-4", "microsoft/phi-4", 2731, 16_384),
    ModelSpec {
        weights_centi_gib: 715,
        kv: KvCache::Gqa { layers: 32, kv_heads: 8, head_dim: 128 },
        ..phi3_mini("phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct", 131_072)
    },
    phi3_mini("phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", 4_096),
    phi3_mini("phi-3-mini-128k-instruct", "microsoft/Phi-3-mini-128k-instruct", 131_072),
    phi_medium("phi-3-medium-4k-instruct", "microsoft/Phi-3-medium-4k-instruct", 2600, 4_096),
    phi_medium("phi-3-medium-128k-instruct", "microsoft/Phi-3-medium-128k-instruct", 2600, 131_072),
    phi3_mini("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", 131_072),
];

kaito_plugin_sdk::catalog_preset!(Phi, "preset-phi", "Microsoft Phi-3, Phi-3.5 and Phi-4 models", MODELS);

#[cfg(test)]
mod tests {
    use super::*;
    use kaito_plugin_sdk::sizing::GIB;
    use kaito_plugin_sdk::{ErrorKind, GpuShape, PlanRequest, Preset};

    fn request(model: &str) -> PlanRequest {
        PlanRequest {
            workspace: "ws".into(),
            namespace: "default".into(),
            model: model.into(),
            runtime: None,
            model_access_secret: None,
            adapters: vec![],
            max_model_len: None,
            min_nodes: 1,
            image_registry: "registry.example/kaito".into(),
            config_map: None,
            annotations: vec![],
            model_facts: None,
        }
    }

    fn a100() -> GpuShape {
        GpuShape { gpu_model: "A100".into(), gpus_per_node: 1, gpu_memory_bytes: 80 * GIB, max_nodes: 1, nvme: true }
    }

    #[test]
    fn kv_bytes_follow_geometry() {
        let by = |n: &str| MODELS.iter().find(|m| m.name == n).unwrap().bytes_per_token();
        assert_eq!(by("phi-3.5-mini-instruct"), 2 * 32 * 32 * 96 * 2);
        assert_eq!(by("phi-4"), 2 * 40 * 10 * 128 * 2);
        assert_eq!(by("phi-4-mini-instruct"), 2 * 32 * 8 * 128 * 2);
    }

    #[test]
    fn names_match_case_insensitively_including_hf_id() {
        for q in ["PHI-3.5-MINI-INSTRUCT", "microsoft/phi-3.5-mini-instruct", "Microsoft/Phi-3.5-mini-instruct"] {
            let plan = Phi::plan(request(q), a100()).unwrap();
            assert!(plan.workload.args.contains(&"phi-3.5-mini-instruct".to_string()), "{q}");
        }
    }

    #[test]
    fn unknown_name_lists_close_names() {
        let e = Phi::plan(request("phi-3.5-mini"), a100()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownModel);
        assert_eq!(e.field, "inference.preset.name");
        assert!(e.hint.unwrap().contains("phi-3.5-mini-instruct"));
    }

    #[test]
    fn default_runtime_is_tch_when_one_gpu_suffices() {
        let plan = Phi::plan(request("phi-3.5-mini-instruct"), a100()).unwrap();
        assert_eq!(plan.runtime, "tch");
        assert_eq!(plan.workload.command, vec!["kaito-inference"]);
        assert!(plan.workload.image.starts_with("registry.example/kaito/kaito-inference:"));
    }

    #[test]
    fn vllm_on_request_with_kaito_args() {
        let mut r = request("phi-4");
        r.runtime = Some("vllm".into());
        let plan = Phi::plan(r, a100()).unwrap();
        assert_eq!(plan.runtime, "vllm");
        let cmd = plan.workload.command.join(" ");
        assert!(cmd.contains("--tensor-parallel-size=1"), "{cmd}");
        let words = &plan.workload.command;
        let at = words.iter().position(|w| w == "--served-model-name").expect("a served name");
        let names: Vec<&str> =
            words[at + 1..].iter().take_while(|w| !w.starts_with("--")).map(|w| w.as_str()).collect();
        assert_eq!(names, ["phi-4"], "KAITO's name, the same as the preset's: {cmd}");
        assert!(!cmd.contains("--enable-lora"), "KAITO enables LoRA only when the Workspace has adapters: {cmd}");
    }

    #[test]
    fn kaitos_transformers_runtime_is_served_by_tch() {
        let mut r = request("phi-3.5-mini-instruct");
        r.runtime = Some("transformers".into());
        let plan = Phi::plan(r, a100()).unwrap();
        assert_eq!(plan.runtime, "tch");
        assert!(plan.notes.iter().any(|n| n.contains("transformers")), "{:?}", plan.notes);
        assert_eq!(
            plan.workload.args[3], "phi-3.5-mini-instruct",
            "served as KAITO names it: {:?}",
            plan.workload.args
        );
    }

    #[test]
    fn phi4_on_a10_falls_back_or_fails_with_numbers() {
        let a10 = GpuShape {
            gpu_model: "A10".into(),
            gpus_per_node: 1,
            gpu_memory_bytes: 24 * GIB,
            max_nodes: 1,
            nvme: false,
        };
        let e = Phi::plan(request("phi-4"), a10.clone()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::DoesNotFit);
        let plan = Phi::plan(request("phi-4"), GpuShape { max_nodes: 4, ..a10 }).unwrap();
        assert_eq!(plan.runtime, "vllm");
        assert!(plan.resources.node_count > 1);
        assert!(!plan.notes.is_empty());
    }
}
