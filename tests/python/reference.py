"""Hugging Face transformers reference for the parity tests.

    python reference.py MODEL_DIR '[token ids]' N [DTYPE]

Prints JSON: the last prompt position's logits, and N greedy tokens (no EOS stop), on CPU in DTYPE (float32 unless
bfloat16 is given).
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def last_logits_and_greedy(model, ids, n):
    """The last prompt position's logits and n greedy tokens (no EOS stop), the cache carried across steps."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        logits = out.logits[0, -1]
        past = out.past_key_values
        token = int(logits.argmax())
        greedy = [token]
        position = len(ids)
        for _ in range(n - 1):
            step = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True,
                         position_ids=torch.tensor([[position]]))
            past = step.past_key_values
            token = int(step.logits[0, -1].argmax())
            greedy.append(token)
            position += 1
    return logits, greedy


def main():
    model_dir, ids, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    dtype = getattr(torch, sys.argv[4]) if len(sys.argv) > 4 else torch.float32
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="eager")
    model.eval()
    logits, greedy = last_logits_and_greedy(model, ids, n)
    print(json.dumps({"logits": logits.float().tolist(), "greedy": greedy}))


if __name__ == "__main__":
    main()
