"""Hugging Face peft reference for the LoRA parity tests.

    python lora_reference.py MODEL_DIR ADAPTER_DIR '{"r": 8, "lora_alpha": 16, "target_modules": [...], "seed": 0, "b_scale": 0.05}' '[token ids]' N

Makes a LoRA adapter with peft (seeded, both halves random, so it changes the output), saves it to ADAPTER_DIR in
PEFT's format, and prints JSON: the last prompt position's logits and N greedy tokens of the base model with the
adapter, f32 on CPU.
"""

import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

# The same greedy loop as the transformers reference beside this file.
from reference import last_logits_and_greedy


def main():
    model_dir, adapter_dir, spec, ids, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(1)
    torch.manual_seed(spec.pop("seed", 0))
    b_scale = spec.pop("b_scale", 0.05)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    # init_lora_weights=False: B is not zero, so the adapter is not the identity.
    config = LoraConfig(init_lora_weights=False, lora_dropout=0.0, bias="none", **spec)
    model = get_peft_model(base, config)
    with torch.no_grad():
        # Small deltas by default, as trained adapters have: the logits move, the model still speaks.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    model.eval()
    logits, greedy = last_logits_and_greedy(model, ids, n)
    print(json.dumps({"logits": logits.tolist(), "greedy": greedy}))


if __name__ == "__main__":
    main()
