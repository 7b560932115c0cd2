"""Log probabilities from a running kaito-inference, through the official `openai` client, against transformers.

    python openai_logprobs.py BASE_URL MODEL MODEL_DIR

Greedy chat and completion with logprobs: each chosen token's log probability and the top alternatives equal
transformers' log-softmax over the same context (f32, CPU) within 1e-3; the streamed chat carries the same entries;
`echo` scores the prompt's tokens the same way; `best_of` answers the seeded samples with the highest total log
probability; out-of-range requests are refused with 400. Exits non-zero with the failing check.
"""

import sys

import openai
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

TOL = 1e-3


def reference(model, ids, steps, top):
    """Greedy continuation of `ids`: per step, (token id, its logprob, the top (id, logprob) pairs)."""
    out = []
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            values, order = torch.topk(lp, top)
            token = int(torch.argmax(logits))
            out.append((token, float(lp[token]), list(zip(order.tolist(), values.tolist()))))
            ids.append(token)
    return out


def main():
    base, name, model_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(
        model=name, messages=messages, max_tokens=10, temperature=0, logprobs=True, top_logprobs=5)
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert chat.usage.prompt_tokens == len(prompt), (chat.usage.prompt_tokens, len(prompt))
    entries = chat.choices[0].logprobs.content
    want = reference(model, prompt, len(entries), 5)
    assert "".join(e.token for e in entries).startswith(chat.choices[0].message.content.strip()[:5]), entries
    worst = 0.0
    for e, (token, lp, top) in zip(entries, want):
        assert e.token == tok.decode([token]), (e.token, tok.decode([token]))
        assert bytes(e.bytes) == e.token.encode(), e
        worst = max(worst, abs(e.logprob - lp))
        assert len(e.top_logprobs) == 5
        for got, (tid, tlp) in zip(e.top_logprobs, top):
            worst = max(worst, abs(got.logprob - tlp))
        assert e.top_logprobs[0].token == tok.decode([top[0][0]]) and e.top_logprobs[0].logprob >= e.logprob - TOL
    assert worst < TOL, worst
    print(f"chat: {len(entries)} tokens, max |logprob difference| vs transformers {worst:.2e}")

    chunks = list(client.chat.completions.create(
        model=name, messages=messages, max_tokens=10, temperature=0, logprobs=True, top_logprobs=5, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in entries]

    plain = client.chat.completions.create(model=name, messages=messages, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None

    text = "The capital of France is"
    completion = client.completions.create(model=name, prompt=text, max_tokens=6, temperature=0, logprobs=3)
    lps = completion.choices[0].logprobs
    ids = tok(text).input_ids
    assert completion.usage.prompt_tokens == len(ids)
    want = reference(model, ids, len(lps.tokens), 3)
    assert "".join(lps.tokens) == completion.choices[0].text, (lps.tokens, completion.choices[0].text)
    assert lps.text_offset[0] == 0 and all(b >= a for a, b in zip(lps.text_offset, lps.text_offset[1:]))
    for got, top, (token, lp, alternatives) in zip(lps.token_logprobs, lps.top_logprobs, want):
        assert abs(got - lp) < TOL, (got, lp)
        assert len(top) <= 3 and abs(max(top.values()) - alternatives[0][1]) < TOL, (top, alternatives)
    print(f"completion: {len(lps.tokens)} tokens match")

    # echo with logprobs: the prompt's tokens are scored too, each given the ones before it (the first has none),
    # then the generated ones; whole and streamed alike.
    echoed = client.completions.create(model=name, prompt=text, max_tokens=3, temperature=0, logprobs=2, echo=True)
    e = echoed.choices[0]
    assert e.text.startswith(text), e.text
    assert "".join(e.logprobs.tokens) == e.text, (e.logprobs.tokens, e.text)
    assert e.logprobs.token_logprobs[0] is None and e.logprobs.top_logprobs[0] is None, e.logprobs
    assert e.logprobs.text_offset[:len(ids)] == [len(tok.decode(ids[:k], skip_special_tokens=True)) for k in range(len(ids))], e.logprobs
    with torch.no_grad():
        scored = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    worst = 0.0
    for k in range(1, len(ids)):
        worst = max(worst, abs(e.logprobs.token_logprobs[k] - float(scored[k - 1, ids[k]])))
        best = float(scored[k - 1].max())
        worst = max(worst, abs(max(e.logprobs.top_logprobs[k].values()) - best))
    assert worst < TOL, worst
    assert e.logprobs.token_logprobs[len(ids):] == [lp for lp in lps.token_logprobs[:3]] or all(
        abs(a - b) < TOL for a, b in zip(e.logprobs.token_logprobs[len(ids):], lps.token_logprobs)), e.logprobs
    chunks = list(client.completions.create(model=name, prompt=text, max_tokens=3, temperature=0, logprobs=2,
                                            echo=True, stream=True))
    streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert len(streamed) == len(e.logprobs.token_logprobs) and streamed[0] is None, streamed
    assert all(abs(a - b) < TOL for a, b in zip(streamed[1:], e.logprobs.token_logprobs[1:])), streamed
    assert "".join(c.choices[0].text for c in chunks if c.choices) == e.text
    print(f"echo: {len(ids)} prompt tokens, max |logprob difference| vs transformers {worst:.2e}")

    # best_of: of the same three seeded samples (seeds 9, 10, 11), the one with the highest total log probability.
    three = client.completions.create(model=name, prompt=text, max_tokens=6, temperature=1.0, seed=9, n=3, logprobs=0)
    totals = [sum(c.logprobs.token_logprobs) for c in three.choices]
    best = client.completions.create(model=name, prompt=text, max_tokens=6, temperature=1.0, seed=9, best_of=3)
    assert len(best.choices) == 1 and best.choices[0].logprobs is None, best
    assert best.choices[0].text == three.choices[totals.index(max(totals))].text, (best, three)
    assert best.usage.completion_tokens == three.usage.completion_tokens, (best.usage, three.usage)
    two = client.completions.create(model=name, prompt=text, max_tokens=6, temperature=1.0, seed=9, n=2, best_of=3,
                                    logprobs=1)
    ranked = sorted(range(3), key=lambda i: -totals[i])[:2]
    assert [c.text for c in two.choices] == [three.choices[i].text for i in ranked], (two, totals)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].logprobs is not None
    print(f"best_of: totals {[round(t, 3) for t in totals]}, chose {totals.index(max(totals))}")
    for kwargs, error in [({"best_of": 2, "n": 3}, "best_of"), ({"best_of": 2, "stream": True}, "stream")]:
        try:
            client.completions.create(model=name, prompt=text, max_tokens=2, **kwargs)
            raise AssertionError(f"{kwargs} was accepted")
        except openai.BadRequestError as e:
            assert "best_of" in str(e) and error in str(e), e

    for kwargs, field in [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ]:
        try:
            client.chat.completions.create(model=name, messages=messages, max_tokens=2, **kwargs)
            raise AssertionError(f"{kwargs} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and field in str(e), e
    try:
        client.completions.create(model=name, prompt=text, max_tokens=2, logprobs=6)
        raise AssertionError("logprobs=6 was accepted")
    except openai.BadRequestError as e:
        assert "logprobs must be between 0 and 5" in str(e), e
    print("all checks passed")


if __name__ == "__main__":
    main()
