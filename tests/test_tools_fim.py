"""Tool calling, tool_choice, thinking and fill-in-the-middle on tiny random-weight models.

Random weights make unconstrained output noise: whatever is structured in an answer
(a tool call, a JSON object) was made so by the grammar, and everything else must still
come back as content.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

from server.reply import ReplyParser
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import start_server
from tests.gguf_factory import write_random_llama

HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
You may call functions. Tools:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}},
                       "required": ["tz"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("toolmodels")
    store = Store(d / "models")
    tools = write_random_llama(d / "tools.gguf", chat_template=HERMES_TEMPLATE, seed=1,
                               extra_tokens=("<tool_call>", "</tool_call>", ("<|im_start|>", "control"),
                                             ("<|im_end|>", "control")))
    register_gguf(store, "tooly", tools)
    fim = write_random_llama(d / "fim.gguf", seed=2, extra_tokens=(
        ("<|fim_prefix|>", "control"), ("<|fim_suffix|>", "control"), ("<|fim_middle|>", "control"),
        ("<|fim_pad|>", "control"), ("<|repo_name|>", "control"), ("<|file_sep|>", "control")))
    register_gguf(store, "coder", fim)
    plain = write_random_llama(d / "plain.gguf", seed=3, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    register_gguf(store, "plain", plain)
    s = start_server(d / "models", log_dir=d)
    yield s
    s.stop()


def chat(server, **body):
    return httpx.post(server.url + "/api/chat", json={"stream": False, **body}, timeout=120)


def test_capabilities(server):
    client = ollama.Client(host=server.url)
    assert "tools" in client.show("tooly").capabilities
    assert "insert" in client.show("coder").capabilities
    assert "tools" not in client.show("plain").capabilities and "insert" not in client.show("plain").capabilities
    # editors decide FIM support by .Suffix in the template
    assert ".Suffix" in client.show("coder").template


def test_tools_rendered_into_prompt(server):
    r = chat(server, model="tooly", messages=[{"role": "user", "content": "weather in Paris?"}], tools=[WEATHER],
             _debug_render_only=True)
    prompt = r.json()["_debug_info"]["rendered_template"]
    assert '"name": "get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_call_validates(server, choice):
    r = chat(server, model="tooly", messages=[{"role": "user", "content": "?"}], tools=[WEATHER, TIME],
             tool_choice=choice, options={"temperature": 1.0, "seed": 7, "num_predict": 200})
    assert r.status_code == 200, r.text
    calls = r.json()["message"]["tool_calls"]
    assert calls, r.json()
    tools = {t["function"]["name"]: t for t in (WEATHER, TIME)}
    for call in calls:
        name = call["function"]["name"]
        if isinstance(choice, dict):
            assert name == "get_time"
        jsonschema.validate(call["function"]["arguments"], tools[name]["function"]["parameters"])
        assert call["id"].startswith("call_") and len(call["id"]) == 13


def test_forced_call_through_ollama_package(server):
    client = ollama.Client(host=server.url)
    r = client.chat("tooly", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER],
                    options={"temperature": 1.0, "seed": 3, "num_predict": 200},
                    **{"tool_choice": "required"} if False else {})
    # auto with a random model: whatever comes out is returned (content or calls), never dropped
    assert r.message.content or r.message.tool_calls
    streamed = list(client.chat("tooly", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER],
                                stream=True, options={"temperature": 1.0, "seed": 3, "num_predict": 200}))
    text = "".join(p.message.content or "" for p in streamed)
    calls = [c for p in streamed for c in (p.message.tool_calls or [])]
    assert text == (r.message.content or "") and len(calls) == len(r.message.tool_calls or [])


def test_tool_choice_none_hides_tools(server):
    r = chat(server, model="tooly", messages=[{"role": "user", "content": "x"}], tools=[WEATHER], tool_choice="none",
             _debug_render_only=True)
    assert "get_weather" not in r.json()["_debug_info"]["rendered_template"]


def test_tool_results_round_trip(server):
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                          "arguments": {"city": "Oslo", "unit": "C"}}}]},
        {"role": "tool", "content": "-3 C", "tool_name": "get_weather"},
    ]
    r = chat(server, model="tooly", messages=messages, tools=[WEATHER], _debug_render_only=True)
    prompt = r.json()["_debug_info"]["rendered_template"]
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}</tool_call>' in prompt
    assert "-3 C" in prompt


@pytest.mark.parametrize("body,fragment", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                             "properties": []}}}]}, "invalid tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "invalid tool_choice"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "must follow an assistant message with tool_calls"),
])
def test_tool_bad_input(server, body, fragment):
    full = {"model": "tooly", "messages": [{"role": "user", "content": "x"}], **body}
    r = chat(server, **full)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_tools_on_model_without_capability(server):
    r = chat(server, model="plain", messages=[{"role": "user", "content": "x"}], tools=[WEATHER])
    assert r.status_code == 400 and r.json()["error"] == "registry.ollama.ai/library/plain:latest does not support tools"


def test_format_schema_always_validates(server):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}},
              "required": ["name", "age", "tags"]}
    for seed in (1, 2, 3):
        r = chat(server, model="plain", messages=[{"role": "user", "content": "x"}], format=schema,
                 options={"temperature": 1.0, "seed": seed, "num_predict": 300})
        jsonschema.validate(json.loads(r.json()["message"]["content"]), schema)
    r = httpx.post(server.url + "/api/generate", json={"model": "plain", "prompt": "x", "format": schema,
                                                      "stream": False, "options": {"seed": 5, "num_predict": 300}},
                   timeout=120)
    jsonschema.validate(json.loads(r.json()["response"]), schema)
    bad = chat(server, model="plain", messages=[{"role": "user", "content": "x"}],
               format={"type": "string", "pattern": "^a+$"})
    assert bad.status_code == 400 and "pattern" in bad.json()["error"]


def test_thinking_needs_capability(server):
    r = chat(server, model="plain", messages=[{"role": "user", "content": "x"}], think=True)
    assert r.status_code == 400 and r.json()["error"] == '"plain" does not support thinking'


def test_fim_prompt_and_generation(server):
    body = {"model": "coder", "prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n"}
    r = httpx.post(server.url + "/api/generate", json={**body, "_debug_render_only": True}, timeout=60)
    assert r.json()["_debug_info"]["rendered_template"] == (
        "<|begin_of_text|><|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>")
    r = httpx.post(server.url + "/api/generate", json={**body, "stream": False, "options": {"num_predict": 8}},
                   timeout=60)
    assert r.status_code == 200 and r.json()["done"]
    raw = httpx.post(server.url + "/api/generate", json={"model": "plain", "prompt": "<x>", "raw": True,
                                                         "_debug_render_only": True}, timeout=60)
    assert raw.json()["_debug_info"]["rendered_template"] == "<x>"
    no = httpx.post(server.url + "/api/generate", json={"model": "plain", "prompt": "a", "suffix": "b"}, timeout=60)
    assert no.status_code == 400 and no.json()["error"] == "registry.ollama.ai/library/plain:latest does not support insert"


def test_infill_like_llama_server(server):
    body = {"model": "coder", "input_prefix": "def f(x):\n    ", "input_suffix": "\n", "prompt": "re",
            "input_extra": [{"filename": "util.py", "text": "def g(): pass\n"}], "n_predict": 6}
    r = httpx.post(server.url + "/infill", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["stop"] is True and isinstance(r.json()["content"], str)
    assert r.json()["tokens_predicted"] <= 6
    with httpx.stream("POST", server.url + "/infill", json={**body, "stream": True}, timeout=60) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1]["stop"] is True
    bad = httpx.post(server.url + "/infill", json={**body, "model": "plain"}, timeout=60)
    assert bad.status_code == 400


def test_reply_parser_thinking_streams_separately():
    text = "<think>\nweigh options</think>\n\nThe answer is 4."
    for pieces in ([text], list(text)):
        p = ReplyParser(think=True)
        parts = [p.feed(x) for x in pieces] + [p.finish()]
        assert "".join(x.thinking for x in parts) == "weigh options"
        assert "".join(x.content for x in parts) == "The answer is 4."
    # the prompt already opened the block (Qwen 3 style)
    p = ReplyParser(think=True, in_thinking=True)
    parts = [p.feed("hmm</think>ok"), p.finish()]
    assert "".join(x.thinking for x in parts) == "hmm" and "".join(x.content for x in parts) == "ok"
    # thinking off: tags are plain content
    p = ReplyParser(think=False)
    assert p.feed("<think>x</think>y").content == "<think>x</think>y"


def test_reply_parser_tool_calls_and_false_starts():
    p = ReplyParser(think=False, tool_format="hermes", tool_names=["get_weather"])
    text = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    parts = [p.feed(ch) for ch in text] + [p.finish()]
    assert "".join(x.content for x in parts).strip() == "Let me check."
    calls = [c for x in parts for c in x.tool_calls]
    assert calls[0]["name"] == "get_weather" and calls[0]["arguments"] == {"city": "Oslo"}
    p = ReplyParser(think=False, tool_format="hermes", tool_names=["get_weather"])
    broken = '<tool_call>{"name": "get_weather", "arguments": {oops}</tool_call> tail'
    parts = [p.feed(broken), p.finish()]
    assert "".join(x.content for x in parts) == broken and not any(x.tool_calls for x in parts)
