"""Hugging Face transformers `generate` on the same weights, for the inference benchmark.

    python bench_transformers.py MODEL_DIR '[prompt ids]' NEW_TOKENS THREADS DTYPE [ADAPTER_DIR]

Prints JSON: time to first token (prefill + first token) and decode tokens/s, greedy, on CPU in DTYPE (float32 or
bfloat16). With
ADAPTER_DIR, the model carries that PEFT LoRA adapter, unmerged (as served beside others).
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, ids, n, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dtype = getattr(torch, sys.argv[5])
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    if len(sys.argv) > 6:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, sys.argv[6])
    model.eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        model.generate(x, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        total = time.perf_counter() - start
    print(json.dumps({"ttft_s": ttft, "decode_tok_s": (n - 1) / max(total - ttft, 1e-9)}))


if __name__ == "__main__":
    main()
