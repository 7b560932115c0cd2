"""The official `openai` client asking a kaito-inference server for a LoRA adapter by name.

    python openai_lora.py BASE_URL BASE_MODEL ADAPTER

Checks that /v1/models lists the adapter after the base model with `parent` set to it, then asks the adapter and
the base model the same question greedily; prints JSON {"adapter": text, "base": text}.
"""

import json
import sys

from openai import OpenAI


def main():
    base_url, base, adapter = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    models = client.models.list().data
    assert [m.id for m in models] == [base, adapter], models
    assert models[1].model_extra["parent"] == base, models[1]
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    out = {}
    for name, model in (("adapter", adapter), ("base", base)):
        chat = client.chat.completions.create(model=model, messages=ask, max_tokens=16, temperature=0)
        assert chat.model == model, chat.model
        out[name] = chat.choices[0].message.content
    print(json.dumps(out))


if __name__ == "__main__":
    main()
