"""The official `openai` client against a running kaito-inference server.

    python openai_contract.py BASE_URL MODEL

Checks models list, chat completion, streamed chat (same text as non-streamed, usage in the last chunk), n choices
(whole and streamed, the same per index for a seed),
completion, typed errors for bad requests, and 8 concurrent streamed chats giving the same greedy text as
alone. Exits non-zero with the failing check.
"""

import asyncio
import sys

import openai
from openai import AsyncOpenAI, OpenAI


def main():
    base, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)

    models = client.models.list()
    assert [m.id for m in models.data] == [model], models

    ask = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model, messages=ask, max_tokens=24, temperature=0)
    text = chat.choices[0].message.content
    assert "Paris" in text, text
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(
        model=model, messages=ask, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, (streamed, text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == chat.choices[0].finish_reason

    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert completion.choices[0].text.strip(), completion
    assert completion.usage.completion_tokens == 8 or completion.choices[0].finish_reason == "stop"

    stop = client.chat.completions.create(model=model, messages=ask, max_tokens=24, temperature=0, stop=["Paris"])
    assert "Paris" not in stop.choices[0].message.content and stop.choices[0].finish_reason == "stop", stop

    def expect(error, **kwargs):
        try:
            client.chat.completions.create(**kwargs)
        except error as e:
            return e
        raise AssertionError(f"{kwargs} did not raise {error.__name__}")

    # n choices, generated together: greedy ones agree; sampled ones with a seed are reproducible.
    one = client.chat.completions.create(model=model, messages=ask, max_tokens=12, temperature=0)
    two = client.chat.completions.create(model=model, messages=ask, max_tokens=12, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1], two
    assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2, two
    assert two.usage.prompt_tokens == one.usage.prompt_tokens, two.usage
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens, two.usage
    sampled = [client.chat.completions.create(model=model, messages=ask, max_tokens=12, temperature=1.0, seed=5, n=3)
               for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices], sampled
    assert len({c.message.content for c in sampled[0].choices}) > 1, "different seeds per choice"
    texts = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0, n=2)
    assert len(texts.choices) == 2 and texts.choices[0].text == texts.choices[1].text, texts
    # Streamed, the same three choices arrive interleaved, each chunk naming its index, each ending once.
    chunks = list(client.chat.completions.create(model=model, messages=ask, max_tokens=12, temperature=1.0, seed=5,
                                                 n=3, stream=True, stream_options={"include_usage": True}))
    by_index, finishes = {}, []
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] = by_index.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes.append(ch.index)
    assert [by_index[i] for i in range(3)] == [c.message.content for c in sampled[0].choices], (by_index, sampled)
    assert sorted(finishes) == [0, 1, 2], finishes
    assert chunks[-1].usage.completion_tokens == sampled[0].usage.completion_tokens, chunks[-1].usage
    streamed = list(client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                                              temperature=0, n=2, stream=True))
    pieces = {}
    for c in streamed:
        for ch in c.choices:
            pieces[ch.index] = pieces.get(ch.index, "") + ch.text
    assert pieces == {0: texts.choices[0].text, 1: texts.choices[1].text}, pieces
    e = expect(openai.BadRequestError, model=model, messages=ask, n=65)
    assert e.body["param"] == "n", e.body
    e = expect(openai.NotFoundError, model="no-such-model", messages=ask)
    assert e.body["code"] == "model_not_found", e.body
    e = expect(openai.BadRequestError, model=model, messages=ask, temperature=5)
    assert e.body["param"] == "temperature", e.body
    e = expect(openai.BadRequestError, model=model, messages=ask, max_tokens=100000)
    assert e.body["code"] == "context_length_exceeded", e.body
    expect(openai.BadRequestError, model=model, messages=[])

    questions = ["What is the capital of France?", "Name three colours.", "Who wrote Hamlet?", "What is 2 + 2?",
                 "Say hello in Spanish.", "What do bees make?", "Name a planet.", "What colour is the sky?"]

    def solo(q):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], max_tokens=20,
                                           temperature=0)
        return r.choices[0].message.content

    alone = [solo(q) for q in questions]

    async def together():
        aclient = AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)

        async def one(q):
            stream = await aclient.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q}], max_tokens=20, temperature=0, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        return await asyncio.gather(*(one(q) for q in questions))

    batched = asyncio.run(together())
    for q, a, b in zip(questions, alone, batched):
        assert a == b, (q, a, b)
    print("openai contract: all checks passed")


if __name__ == "__main__":
    main()
