"""Tool calling, tool_choice, thinking and fill-in-the-middle on tiny random-weight models.

Random weights make unconstrained output noise: whatever is structured in an answer
(a tool call, a JSON object) was made so by the grammar, and everything else must still
come back as content.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket

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


def write_tools_model(path):
    """A tiny random model whose Hermes template renders tools (capability `tools`)."""
    return write_random_llama(path, chat_template=HERMES_TEMPLATE, seed=1,
                              extra_tokens=("<tool_call>", "</tool_call>", ("<|im_start|>", "control"),
                                            ("<|im_end|>", "control")))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("toolmodels")
    store = Store(d / "models")
    register_gguf(store, "tooly", write_tools_model(d / "tools.gguf"))
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
    assert r.status_code == 200, r.text
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
                    options={"temperature": 1.0, "seed": 3, "num_predict": 200})
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
               format={"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}})
    assert bad.status_code == 400 and "$ref" in bad.json()["error"], bad.text
    r = chat(server, model="plain", messages=[{"role": "user", "content": "x"}],
             format={"type": "string", "pattern": "^a{2,5}$"}, options={"seed": 1, "num_predict": 20})
    assert re.fullmatch("a{2,5}", json.loads(r.json()["message"]["content"])), r.text


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
    assert calls[0].name == "get_weather" and calls[0].arguments == {"city": "Oslo"}
    p = ReplyParser(think=False, tool_format="hermes", tool_names=["get_weather"])
    broken = '<tool_call>{"name": "get_weather", "arguments": {oops}</tool_call> tail'
    parts = [p.feed(broken), p.finish()]
    assert "".join(x.content for x in parts) == broken and not any(x.tool_calls for x in parts)


# ---- every tool-call format, forced through its own grammar style --------------------------------

LLAMA3_TOOLS = """{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>

{% if tools and loop.last %}Tools: {{ tools | tojson }}. Call one as <|python_tag|>{"name": ..., "parameters": ...}
{% endif %}{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""
MISTRAL_TOOLS = """{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}\
{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]{% elif m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | tojson }}</s>{% else %}{{ m.content }}</s>{% endif %}{% endfor %}"""


@pytest.fixture(scope="module")
def formats_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    store = Store(d / "models")
    register_gguf(store, "llama3-tools", write_random_llama(d / "l3.gguf", chat_template=LLAMA3_TOOLS, seed=4))
    register_gguf(store, "mistral-tools", write_random_llama(d / "mi.gguf", chat_template=MISTRAL_TOOLS, seed=5,
                                                             extra_tokens=("[TOOL_CALLS]", "[INST]", "[/INST]")))
    s = start_server(d / "models", log_dir=d)
    yield s
    s.stop()


@pytest.mark.parametrize("model", ["llama3-tools", "mistral-tools"])
def test_forced_calls_in_each_format(formats_server, model):
    rendered = chat(formats_server, model=model, messages=[{"role": "user", "content": "?"}], tools=[WEATHER],
                    _debug_render_only=True).json()["_debug_info"]["rendered_template"]
    assert "get_weather" in rendered
    r = chat(formats_server, model=model, messages=[{"role": "user", "content": "?"}], tools=[WEATHER, TIME],
             tool_choice={"type": "function", "function": {"name": "get_weather"}},
             options={"temperature": 1.0, "seed": 11, "num_predict": 200})
    calls = r.json()["message"].get("tool_calls")
    assert calls and r.json()["message"]["content"] == "", r.json()
    for call in calls:
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(call["function"]["arguments"], WEATHER["function"]["parameters"])


# ---- the clients agent frameworks and editors use ------------------------------------------------

def test_openai_package_tool_choice(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "What's the weather in Oslo?"}]
    forced = client.chat.completions.create(model="tooly", messages=messages, tools=[WEATHER, TIME],
                                            tool_choice="required", seed=2, max_tokens=200)
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        json.loads(call.function.arguments)
    named = client.chat.completions.create(model="tooly", messages=messages, tools=[WEATHER, TIME], seed=3,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           max_tokens=200)
    assert {c.function.name for c in named.choices[0].message.tool_calls} == {"get_time"}
    auto = client.chat.completions.create(model="tooly", messages=messages, tools=[WEATHER], seed=4, max_tokens=20)
    assert auto.choices[0].message.content or auto.choices[0].message.tool_calls  # nothing dropped
    stream = client.chat.completions.create(model="tooly", messages=messages, tools=[WEATHER], tool_choice="required",
                                            seed=2, max_tokens=200, stream=True)
    chunks = list(stream)
    streamed_calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert streamed_calls and all(json.loads(tc.function.arguments) is not None for tc in streamed_calls)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tooly", messages=messages, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_langchain_chat_ollama_tools_and_structured_output(server):
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int

    # ChatOllama sends tools but no tool_choice (Ollama has none): a random model answers freely,
    # and whatever it says comes back; the tools demonstrably reached the prompt
    llm = ChatOllama(model="tooly", base_url=server.url, temperature=1.0, seed=5, num_predict=8)
    plain = llm.invoke("What's the weather in Oslo?")
    message = llm.bind_tools([WEATHER]).invoke("What's the weather in Oslo?")
    assert message.content or message.tool_calls
    assert message.usage_metadata["input_tokens"] > plain.usage_metadata["input_tokens"] + 20
    structured = ChatOllama(model="plain", base_url=server.url, temperature=1.0, seed=6, num_predict=200)
    person = structured.with_structured_output(Person, method="json_schema").invoke("Describe someone.")
    assert isinstance(person, Person) and len(person.name) <= 12


def test_ollama_logprobs(server):
    r = httpx.post(server.url + "/api/generate", json={"model": "plain", "prompt": "x", "stream": False, "logprobs": True,
                                                      "top_logprobs": 3, "options": {"num_predict": 4}}, timeout=60)
    lps = r.json()["logprobs"]
    assert len(lps) == 4 and all(lp["logprob"] <= 0 and len(lp["top_logprobs"]) == 3 for lp in lps)
    assert all(lp["top_logprobs"][0]["logprob"] >= lp["logprob"] for lp in lps)
    bad = httpx.post(server.url + "/api/generate", json={"model": "plain", "prompt": "x", "logprobs": True,
                                                        "top_logprobs": 21}, timeout=60)
    assert bad.status_code == 400


def test_infill_as_llama_vscode_sends_it(server):
    """llama.vscode names no model (the one model that can fill in the middle is used) and warms the
    cache with n_predict 0: the prompt is computed, nothing is generated."""
    body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n", "input_extra": [], "n_predict": 0,
            "t_max_predict_ms": 1, "cache_prompt": True, "samplers": [], "stream": False}
    r = httpx.post(server.url + "/infill", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "" and r.json()["tokens_predicted"] == 0 and r.json()["model"] == "coder:latest"
    assert r.json()["tokens_evaluated"] > 0


def test_infill_client_leaving_stops_the_generation(server):
    """A non-streaming /infill whose client goes away frees its sequence."""
    from tests.test_serving import _metric, _wait_for

    body = json.dumps({"model": "coder", "input_prefix": "a", "input_suffix": "b", "n_predict": 20000}).encode()
    host, port = server.host.split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /infill HTTP/1.1\r\nHost: " + server.host.encode() + b"\r\nContent-Type: application/json"
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert _wait_for(lambda: _metric(server, "corral_requests_processing") == 1)
    assert _wait_for(lambda: _metric(server, "corral_requests_processing") == 0, timeout=10)


async def _deltas(*pieces):
    from server.inference import Delta, Final

    for text in pieces:
        await asyncio.sleep(0.01)
        yield Delta(content=text)
    yield Final(done_reason="length", eval_count=len(pieces))


def test_infill_time_limit_stops_at_a_newline():
    """t_max_predict_ms (llama-server's rule): past the time, the answer ends at a newline."""
    from server.api.llamacpp import InfillRequest, _pieces

    async def run(req):
        return [item async for item in _pieces(req, _deltas("a", "b\n", "c", "d"))]

    timed = asyncio.run(run(InfillRequest(t_max_predict_ms=1)))
    assert [getattr(i, "content", None) for i in timed] == ["a", "b\n", None]
    whole = asyncio.run(run(InfillRequest()))
    assert [i.content for i in whole[:-1]] == ["a", "b\n", "c", "d"] and whole[-1].done_reason == "length"
