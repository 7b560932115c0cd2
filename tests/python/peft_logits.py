"""Hugging Face peft loading an adapter directory unchanged (as a user would), for the tuning parity test.

    python peft_logits.py MODEL_DIR ADAPTER_DIR '[token ids]'

Prints JSON: the last prompt position's logits of the base model with the adapter, f32 on CPU.
"""

import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    model_dir, adapter_dir, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main()
