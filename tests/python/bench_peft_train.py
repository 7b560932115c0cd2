"""LoRA training throughput of transformers + peft, for the tuning benchmark: the same tokenized examples, the
same LoRA settings and optimiser (AdamW, gradient-norm clipping at 1.0), the same loss (cross-entropy on the
trained tokens), f32 on CPU.

    python bench_peft_train.py MODEL_DIR EXAMPLES_JSON THREADS STEPS

EXAMPLES_JSON: {"batches": [[{"ids": [...], "trained": [...]}, ...], ...], "r": 16, "alpha": 32, "lr": 0.003,
"targets": [...]}. Prints JSON: trained tokens per second over the steps after the first (warm-up), and losses.
"""

import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    model_dir, spec, threads, steps = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0, target_modules=spec["targets"],
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    batches = spec["batches"]
    losses, tokens, start = [], 0, None
    for step in range(steps):
        batch = batches[step % len(batches)]
        width = max(len(e["ids"]) for e in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["ids"])
            ids[i, :n] = torch.tensor(e["ids"])
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(e["ids"], e["trained"])])
        if step == 1:
            start, tokens = time.perf_counter(), 0
        out = model(input_ids=ids, attention_mask=attention, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        tokens += sum(len(e["ids"]) for e in batch)
    elapsed = time.perf_counter() - start
    print(json.dumps({"tokens_per_second": tokens / elapsed, "losses": losses}))


if __name__ == "__main__":
    main()
