//! Shared test helpers: where the prepared models and the Python reference live, and tiny random models.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::Path;
use tch::{Kind, Tensor};

#[path = "../../../../tests/support/models.rs"]
mod models;
#[allow(unused_imports)]
pub use models::{model, python, script};

/// Token ids of `question` as one user turn in the model's chat template.
pub fn chat_prompt(text: &kaito_inference::text::TextModel, question: &str) -> Vec<u32> {
    let m = [kaito_inference::text::Message::text("user", question)];
    text.encode(&text.render_chat(&m).expect("chat template renders"), false).expect("prompt encodes")
}

/// The shape of a tiny model of one family.
pub struct Tiny {
    pub arch: &'static str,
    pub config: Value,
    pub tensors: Vec<(String, Tensor)>,
}

fn randn(shape: &[i64], seed: &mut i64) -> Tensor {
    *seed += 1;
    tch::manual_seed(*seed);
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.08
}

/// A random-weight model of `arch` (Llama, Mistral, Qwen2 or Phi3 layout) small enough to run in milliseconds.
pub fn tiny(arch: &'static str) -> Tiny {
    let (hidden, inter, layers, heads, kv, vocab) = (64i64, 128i64, 2usize, 4i64, 2i64, 512i64);
    let head = hidden / heads;
    let mut seed = 0;
    let mut t: Vec<(String, Tensor)> = vec![("model.embed_tokens.weight".into(), randn(&[vocab, hidden], &mut seed))];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        let norm = |seed: &mut i64| randn(&[hidden], seed) * 0.5 + 1.0;
        t.push((format!("{p}.input_layernorm.weight"), norm(&mut seed)));
        t.push((format!("{p}.post_attention_layernorm.weight"), norm(&mut seed)));
        t.push((format!("{p}.self_attn.o_proj.weight"), randn(&[hidden, heads * head], &mut seed)));
        t.push((format!("{p}.mlp.down_proj.weight"), randn(&[hidden, inter], &mut seed)));
        if arch == "Phi3ForCausalLM" {
            t.push((format!("{p}.self_attn.qkv_proj.weight"), randn(&[(heads + 2 * kv) * head, hidden], &mut seed)));
            t.push((format!("{p}.mlp.gate_up_proj.weight"), randn(&[2 * inter, hidden], &mut seed)));
        } else {
            t.push((format!("{p}.self_attn.q_proj.weight"), randn(&[heads * head, hidden], &mut seed)));
            t.push((format!("{p}.self_attn.k_proj.weight"), randn(&[kv * head, hidden], &mut seed)));
            t.push((format!("{p}.self_attn.v_proj.weight"), randn(&[kv * head, hidden], &mut seed)));
            t.push((format!("{p}.mlp.gate_proj.weight"), randn(&[inter, hidden], &mut seed)));
            t.push((format!("{p}.mlp.up_proj.weight"), randn(&[inter, hidden], &mut seed)));
            if arch == "Qwen2ForCausalLM" {
                for (n, rows) in [("q_proj", heads * head), ("k_proj", kv * head), ("v_proj", kv * head)] {
                    t.push((format!("{p}.self_attn.{n}.bias"), randn(&[rows], &mut seed)));
                }
            }
        }
    }
    t.push(("model.norm.weight".into(), randn(&[hidden], &mut seed) * 0.5 + 1.0));
    let tied = arch == "LlamaForCausalLM" || arch == "Qwen2ForCausalLM";
    if !tied {
        t.push(("lm_head.weight".into(), randn(&[vocab, hidden], &mut seed)));
    }
    let mut config = json!({
        "architectures": [arch], "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256, "tie_word_embeddings": tied, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "rope_theta": 10000.0,
    });
    match arch {
        "LlamaForCausalLM" => {
            config["model_type"] = json!("llama");
            config["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        }
        "MistralForCausalLM" => {
            config["model_type"] = json!("mistral");
            config["sliding_window"] = Value::Null;
        }
        "Qwen2ForCausalLM" => {
            config["model_type"] = json!("qwen2");
            config["use_sliding_window"] = json!(false);
        }
        "Phi3ForCausalLM" => {
            config["model_type"] = json!("phi3");
            // LongRoPE with a short original context, so the test crosses from short to long factors.
            let short: Vec<f64> = (0..head / 2).map(|i| 1.0 + 0.1 * i as f64).collect();
            let long: Vec<f64> = (0..head / 2).map(|i| 1.0 + 0.9 * i as f64).collect();
            config["original_max_position_embeddings"] = json!(24);
            config["rope_scaling"] = json!({"type": "longrope", "short_factor": short, "long_factor": long});
            config["pad_token_id"] = json!(0);
        }
        _ => panic!("no tiny {arch}"),
    }
    Tiny { arch, config, tensors: t }
}

impl Tiny {
    /// Write the model (config, safetensors, SmolLM2's tokenizer files) into `dir`, made if missing.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&self.config).unwrap()).unwrap();
        write_safetensors(&self.tensors, &dir.join("model.safetensors"));
        let smol = model("smollm2-135m-instruct");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(smol.join(f), dir.join(f)).unwrap();
        }
    }
}

/// A LoRA adapter made and saved by Hugging Face peft (`tests/python/lora_reference.py`) for the model in
/// `model_dir` as `spec` says (peft's LoraConfig fields, plus `seed` and `b_scale`), written to `adapter_dir`; returns
/// peft's logits of the last position of `prompt` and its `n` greedy tokens with the adapter.
pub fn peft_adapter(
    model_dir: &Path,
    adapter_dir: &Path,
    spec: &Value,
    prompt: &[i64],
    n: usize,
) -> (Vec<f32>, Vec<i64>) {
    let out = std::process::Command::new(python())
        .arg(script("lora_reference.py"))
        .arg(model_dir)
        .arg(adapter_dir)
        .arg(spec.to_string())
        .arg(serde_json::to_string(prompt).unwrap())
        .arg(n.to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "lora_reference.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("the reference prints JSON");
    let logits = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let greedy = v["greedy"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    (logits, greedy)
}

/// A safetensors file with the `format: pt` metadata transformers insists on (tch writes none).
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let values: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(name.clone(), json!({"dtype": "F32", "shape": t.size(), "data_offsets": [start, data.len()]}));
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend(head);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}
