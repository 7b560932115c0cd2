"""Tool calling and structured output through the official `openai` client against a running kaito-inference
server (served with `--tool-call-parser hermes`).

    python openai_tools.py BASE_URL MODEL

Checks: a forced call (named function) and its round trip (call -> tool message -> final answer), whole and
streamed, the streamed deltas adding up to the whole answer's call; `tool_choice: required` giving calls to declared
functions with arguments valid under their schemas; `auto` answering either text or a well-formed call; and
`response_format` json_schema output valid under the schema (jsonschema) for 20 choices sampled at temperature 1,
json_object output parsing as an object. Exits non-zero with the failing check.
"""

import json
import sys

import jsonschema
from openai import OpenAI

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                   "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


def streamed_calls(chunks):
    """Tool calls put together from streamed deltas, as OpenAI's own stream helpers do: by index, the id and name
    from the first delta, arguments concatenated."""
    calls, finish = {}, None
    for c in chunks:
        for choice in c.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    call["id"] = d.id
                if d.function and d.function.name:
                    call["name"] = d.function.name
                if d.function and d.function.arguments:
                    call["arguments"] += d.function.arguments
    return [calls[i] for i in sorted(calls)], finish


def main():
    base, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]

    # A named function: the answer is a call to it, its arguments valid under its schema.
    forced = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=model, messages=ask, tools=TOOLS, tool_choice=forced, temperature=0,
                                       max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_"), call
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER)
    print("forced call:", call.function.name, call.function.arguments)

    # The same, streamed: deltas add up to the same call.
    chunks = list(client.chat.completions.create(model=model, messages=ask, tools=TOOLS, tool_choice=forced,
                                                 temperature=0, max_tokens=64, stream=True))
    calls, finish = streamed_calls(chunks)
    assert finish == "tool_calls", finish
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", call.function.arguments)], calls
    assert calls[0]["id"].startswith("call_")

    # Round trip: the call and its result go back; the model answers in text.
    history = ask + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                           temperature=0, max_tokens=48)
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.message.content, answer
    assert answer.finish_reason in ("stop", "length"), answer
    streamed = list(client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                                   temperature=0, max_tokens=48, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == answer.message.content, (text, answer.message.content)
    print("final answer:", answer.message.content)

    # required: calls to declared functions (one unless parallel), arguments valid, sampled at temperature 1.
    for seed in range(3):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 plus 3?"}],
                                           tools=TOOLS, tool_choice="required", temperature=1, seed=seed,
                                           max_tokens=96, parallel_tool_calls=False)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    add = [{"role": "user", "content": "Add 2 and 3."}]
    chunks = list(client.chat.completions.create(model=model, messages=add, tools=TOOLS, tool_choice="required",
                                                 temperature=0, max_tokens=96, stream=True, parallel_tool_calls=False))
    calls, finish = streamed_calls(chunks)
    assert finish == "tool_calls" and len(calls) == 1, (finish, calls)
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])
    # Parallel calls allowed, greedy SmolLM2 keeps adding calls until max_tokens: the cut list is no call, so it
    # comes back as content with finish_reason length (never a 500, never a half call).
    r = client.chat.completions.create(model=model, messages=add, tools=TOOLS, tool_choice="required", temperature=0,
                                       max_tokens=40)
    choice = r.choices[0]
    if choice.message.tool_calls is None:
        assert choice.finish_reason == "length" and choice.message.content.startswith("[{"), choice
    else:
        assert choice.finish_reason == "tool_calls", choice

    # auto: the model chooses; either way the answer is well-formed.
    r = client.chat.completions.create(model=model, messages=ask, tools=TOOLS, temperature=0, max_tokens=64)
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for c in choice.message.tool_calls:
            assert c.function.name in SCHEMAS
            json.loads(c.function.arguments)
    else:
        assert choice.message.content is not None and choice.finish_reason in ("stop", "length"), choice
    print("auto:", choice.finish_reason, choice.message.content, choice.message.tool_calls)

    # response_format json_schema: 20 sampled answers, each valid under the schema.
    person = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "city", "tags"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe a person as JSON."}], temperature=1, seed=11,
        n=20, max_tokens=160,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}})
    assert len(r.choices) == 20
    docs = []
    for c in r.choices:
        assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
        doc = json.loads(c.message.content)
        jsonschema.validate(doc, person)
        docs.append(json.dumps(doc, sort_keys=True))
    assert len(set(docs)) > 1, "sampled answers differ"
    print("json_schema sample:", r.choices[0].message.content)

    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Give me a JSON object."}],
                                       temperature=0, max_tokens=96, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content
    print("all checks passed")


if __name__ == "__main__":
    main()
