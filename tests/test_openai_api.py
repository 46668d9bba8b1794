"""The OpenAI-compatible API (/v1) against a real server process, through the official `openai` package.

Most tests use `tiny` (random weights: its unconstrained output is noise, fast) with few tokens;
raw httpx tests pin the wire details a client library would hide (SSE framing, error shape).
"""

from __future__ import annotations

import dataclasses

import asyncio
import base64
import json
import math
import struct
import time
import typing

import httpx
import jsonschema
import msgspec
import openai
import pydantic_core
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from server.api import openai as oai
from server.api import openai_responses as oresp
from server.api import openai_types as ot
from server.inference import Delta, Final
from server.messages import ToolCall

HI = [{"role": "user", "content": "hi"}]
EVENT_TYPES = {cls.model_fields["type"].annotation.__args__[0]: cls
               for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}


def validate_event(data: dict) -> None:
    """Check an event against the openai package's own model (the client itself does not validate)."""
    EVENT_TYPES[data["type"]].model_validate(data)


@pytest.fixture(scope="module")
def client(corral_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=corral_server.url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def v1(corral_server) -> str:
    return corral_server.url + "/v1"


def assert_openai_error(r: httpx.Response, status: int, kind: str, *needles: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == kind
    for needle in needles:
        assert needle in err["message"], err
    return err


# ---- chat completions --------------------------------------------------------------------


def test_chat_non_stream(client):
    before = int(time.time())
    r = client.chat.completions.create(model="gemma3:270m", messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.system_fingerprint == "fp_ollama" and r.model == "gemma3:270m"
    assert before - 5 <= r.created <= time.time() + 5
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.system_fingerprint == "fp_ollama" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-2])
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "length"
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert usage.choices == [] and usage.usage.completion_tokens == 5
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text  # random weights: noise, but something


def test_chat_stream_without_usage(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=2, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks)


def test_sse_framing(v1):
    body = {"model": "tiny", "messages": HI, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", v1 + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    for payload in payloads:
        ChatCompletionChunk.model_validate(payload)
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 3


def test_options_extension_sets_num_ctx(client, corral_server):
    client.chat.completions.create(model="tiny", messages=HI, max_tokens=1, extra_body={"options": {"num_ctx": 1024}})
    ps = httpx.get(corral_server.url + "/api/ps").json()["models"]
    assert [m["context_length"] for m in ps if m["model"] == "tiny:latest"] == [1024]
    # options win over the translated fields: num_predict beats max_tokens
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=9,
                                       extra_body={"options": {"num_predict": 2}})
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_max_tokens_and_stop(client):
    greedy = dict(model="tiny", messages=HI, temperature=0)
    full = client.chat.completions.create(max_tokens=8, **greedy)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 8
    assert client.chat.completions.create(max_completion_tokens=3, **greedy).usage.completion_tokens == 3
    text = full.choices[0].message.content
    cut = next(k for k in range(1, len(text) - 2) if text.find(text[k:k + 3]) == k)
    stopped = client.chat.completions.create(max_tokens=8, stop=["@@never@@", text[cut:cut + 3]], **greedy)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[:cut]
    single = client.chat.completions.create(max_tokens=8, stop=text[cut:cut + 3], **greedy)  # a string works too
    assert single.choices[0].message.content == text[:cut]


def test_seed_is_deterministic(client):
    def run(seed: int) -> str:
        r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=1, seed=seed)
        return r.choices[0].message.content

    assert run(11) == run(11)
    assert len({run(11), run(12), run(13)}) > 1


def test_response_format_json_object(client):
    common = dict(model="tiny", messages=HI, temperature=1, seed=3, max_tokens=10)
    noise = client.chat.completions.create(**common).choices[0].message.content
    r = client.chat.completions.create(response_format={"type": "json_object"}, **common)
    content = r.choices[0].message.content
    assert not noise.lstrip().startswith("{")
    assert content.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut short by max_tokens: still valid JSON so far
        assert isinstance(pydantic_core.from_json(content, allow_partial=True), dict)


SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


def test_response_format_json_schema(client):
    r = client.chat.completions.create(
        model="tiny", messages=HI, temperature=1, seed=3, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "paint", "schema": SCHEMA, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_response_format_errors(v1, client):
    bad = {"type": "json_schema", "json_schema": {"name": "listing", "schema": {"type": "array", "items": {}}}}
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": HI, "response_format": bad})
    err = assert_openai_error(r, 400, "invalid_request_error", "listing", "object")
    assert err["param"] == "response_format"
    not_object = {"type": "json_schema", "json_schema": {"name": "s", "schema": "{}"}}
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": HI, "response_format": not_object})
    assert_openai_error(r, 400, "invalid_request_error", "JSON object")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=HI, response_format={"type": "xml"})


def test_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=3, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    plain = client.chat.completions.create(model="tiny", messages=HI, max_tokens=1)
    assert plain.choices[0].logprobs is None


def test_message_shapes_are_translated(v1):
    """Content parts, developer role, tool calls with JSON-string arguments and tool results all render."""
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny, 21C"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say."}]},
    ]
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": messages, "_debug_render_only": True})
    assert r.status_code == 200, r.text
    rendered = r.json()["_debug_info"]["rendered_template"]
    assert "<|start_header_id|>assistant<|end_header_id|>\n\nI cannot say." in rendered
    assert "<|start_header_id|>system<|end_header_id|>\n\nBe terse." in rendered
    assert "first part\nsecond part" in rendered
    assert "<|start_header_id|>tool<|end_header_id|>\n\nsunny, 21C" in rendered
    bad_args = [messages[2] | {"tool_calls": [{"id": "c", "type": "function",
                                               "function": {"name": "f", "arguments": "{not json"}}]}]
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": bad_args})
    err = assert_openai_error(r, 400, "invalid_request_error", "invalid tool call arguments")
    assert err["param"] == "messages[0].tool_calls[0].function.arguments"
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": remote})
    assert_openai_error(r, 400, "invalid_request_error", "data URI")


def test_tools_need_the_capability(client):
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function",
              "function": {"name": "get_weather", "description": "Weather in a city", "parameters": parameters}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=HI, tools=tools, tool_choice="auto")
    assert "does not support tools" in info.value.message
    assert info.value.body["type"] == "invalid_request_error"


def test_reasoning_effort(client, v1):
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=1, reasoning_effort="none")
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        client.chat.completions.create(model="tiny", messages=HI, max_tokens=1, reasoning_effort="high")
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": HI, "reasoning_effort": "extreme"})
    assert_openai_error(r, 400, "invalid_request_error", "invalid reasoning value")


def test_request_errors(v1, client):
    r = httpx.post(v1 + "/chat/completions", content=b'{"model": "tiny", "messages": [',
                   headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "invalid_request_error", "invalid JSON")
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": []})
    assert_openai_error(r, 400, "invalid_request_error", "messages")
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": "hi"})
    assert_openai_error(r, 400, "invalid_request_error")
    r = httpx.post(v1 + "/chat/completions", json={"model": "no-such-model", "messages": HI})
    assert_openai_error(r, 404, "not_found_error", "no-such-model")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI, stream=True)
    r = httpx.post(v1 + "/completions", json={"model": "tiny", "prompt": [[1, 2, 3]]})
    assert_openai_error(r, 400, "invalid_request_error", "token arrays")
    # a wrong type names the field it was found in
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": HI, "temperature": "hot"})
    assert assert_openai_error(r, 400, "invalid_request_error", "temperature")["param"] == "temperature"
    # the HTTP method is checked before the /v1 router's handlers: still OpenAI's shape
    assert_openai_error(httpx.get(v1 + "/chat/completions"), 405, "api_error", "method not allowed")
    assert_openai_error(httpx.delete(v1 + "/models/tiny"), 405, "api_error")
    # OpenAI's rule, not Ollama's: a tool result answers an earlier call
    r = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": [
        {"role": "tool", "content": "42", "tool_call_id": "call_1"}]})
    assert assert_openai_error(r, 400, "invalid_request_error", "must follow")["param"] == "messages[0]"
    r = httpx.post(v1 + "/responses", json={"model": "tiny", "input": [
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_2", "output": "42"}]})
    assert assert_openai_error(r, 400, "invalid_request_error", "unknown tool_call_id")["param"] == "input"
    r = httpx.post(v1 + "/completions", json={"model": "tiny", "prompt": "hi", "logprobs": 21})
    assert assert_openai_error(r, 400, "invalid_request_error", "logprobs")["param"] == "logprobs"


@pytest.mark.parametrize("route, field", [("/chat/completions", "max_tokens"),
                                          ("/chat/completions", "max_completion_tokens"),
                                          ("/completions", "max_tokens"), ("/responses", "max_output_tokens")])
@pytest.mark.parametrize("limit", [0, -1])
def test_token_limit_below_one_is_refused(v1, route, field, limit):
    """OpenAI refuses a budget below 1; passed on as num_predict it would mean "no limit"."""
    body = {"model": "tiny", field: limit, "stream": True}
    body |= {"/chat/completions": {"messages": HI}, "/completions": {"prompt": "hi"},
             "/responses": {"input": "hi"}}[route]
    r = httpx.post(v1 + route, json=body, timeout=30)
    assert assert_openai_error(r, 400, "invalid_request_error", ">= 1")["param"] == field


def test_body_that_is_not_utf8(v1, corral_server):
    """Bytes that are not UTF-8 are replaced, as Ollama's Go decoder does, not a 500."""
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\xe9"}], "max_tokens": 2}'
    r = httpx.post(v1 + "/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2
    body = b'{"model": "tiny", "prompt": "caf\xe9", "stream": false, "options": {"num_predict": 2}}'
    r = httpx.post(corral_server.url + "/api/generate", content=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True


def test_raw_objects_match_openai_models(v1):
    """Every non-streamed object validates against the openai package's pydantic models."""
    chat = httpx.post(v1 + "/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 1}, timeout=60)
    ChatCompletion.model_validate(chat.json())
    completion = httpx.post(v1 + "/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1}, timeout=60)
    Completion.model_validate(completion.json())
    response = httpx.post(v1 + "/responses", json={"model": "tiny", "input": "hi", "max_output_tokens": 1}, timeout=60)
    Response.model_validate(response.json())
    embedding = httpx.post(v1 + "/embeddings", json={"model": "tiny", "input": "a"}, timeout=60)
    CreateEmbeddingResponse.model_validate(embedding.json())


# ---- completions -------------------------------------------------------------------------


def test_completions(client):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.system_fingerprint == "fp_ollama"
    assert r.choices[0].finish_reason == "length" and r.choices[0].text and r.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks[:-1]) == r.choices[0].text  # greedy: the same text
    lp = client.completions.create(model="tiny", prompt="Once", max_tokens=2, logprobs=2).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 2 and lp.text_offset[0] == 0


def test_completions_suffix_needs_insert(client):
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        client.completions.create(model="tiny", prompt="def f(", suffix="    return x", max_tokens=4)


# ---- embeddings --------------------------------------------------------------------------


def test_embeddings(client, corral_server):
    r = client.embeddings.create(model="tiny", input=["The sky is blue.", "Grass is green."])
    assert r.object == "list" and r.model == "tiny" and [d.index for d in r.data] == [0, 1]
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    for d in r.data:
        assert d.object == "embedding" and math.isclose(math.sqrt(sum(x * x for x in d.embedding)), 1, rel_tol=1e-4)
    native = httpx.post(corral_server.url + "/api/embed", json={"model": "tiny", "input": "The sky is blue."}).json()
    assert r.data[0].embedding == pytest.approx(native["embeddings"][0], abs=1e-6)
    raw = httpx.post(corral_server.url + "/v1/embeddings",
                     json={"model": "tiny", "input": "The sky is blue.", "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert list(decoded) == pytest.approx(r.data[0].embedding, abs=1e-6)
    # the openai client asks for base64 itself when encoding_format is unset, and decodes it
    short = client.embeddings.create(model="tiny", input="The sky is blue.", dimensions=8)
    assert len(short.data[0].embedding) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in short.data[0].embedding)), 1, rel_tol=1e-4)
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        client.embeddings.create(model="tiny", input=[[1, 2, 3]])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


# ---- models ------------------------------------------------------------------------------


def test_models(client, v1):
    models = {m.id: m for m in client.models.list()}
    assert {"gemma3:270m", "tiny:latest"} <= set(models)
    gemma = models["gemma3:270m"]
    assert gemma.object == "model" and gemma.owned_by == "library" and gemma.created > 1_600_000_000
    one = client.models.retrieve("gemma3:270m")
    assert one.id == "gemma3:270m" and one.owned_by == "library" and one.created == gemma.created
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert_openai_error(httpx.get(v1 + "/models/library/no-such-model:7b"), 404, "not_found_error", "not found")
    slashed = httpx.get(v1 + "/models/registry.ollama.ai/library/tiny:latest").json()
    assert slashed["id"] == "registry.ollama.ai/library/tiny:latest" and slashed["owned_by"] == "library"


# ---- responses ---------------------------------------------------------------------------


def test_responses_non_stream(client):
    r = client.responses.create(model="tiny", input="hi", instructions="Be brief.", max_output_tokens=4,
                                temperature=0.5)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "tiny"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.instructions == "Be brief." and r.temperature == 0.5 and r.max_output_tokens == 4
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert item.content[0].type == "output_text" and item.content[0].text == r.output_text != ""
    assert r.usage.output_tokens == 4 and r.usage.total_tokens == r.usage.input_tokens + 4


def test_responses_stream(client):
    events = list(client.responses.create(model="tiny", input=[{"role": "user", "content": "hi"}],
                                          max_output_tokens=3, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-4].text == text and events[-1].response.output[0].content[0].text == text
    assert events[2].item.id == events[-2].item.id == events[-1].response.output[0].id


def test_responses_completed_and_function_items(client, v1):
    """Function call history items are accepted; a stop sequence ends the answer as "completed"."""
    history = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    seeded = dict(model="tiny", input=history, max_output_tokens=6, temperature=1)
    first = client.responses.create(**seeded, extra_body={"options": {"seed": 5}})
    text = first.output_text
    cut = next(k for k in range(1, len(text) - 2) if text.find(text[k:k + 3]) == k)
    with client.responses.with_streaming_response.create(
            **seeded, stream=True, extra_body={"options": {"seed": 5, "stop": [text[cut:cut + 3]]}}) as raw:
        body = raw.read().decode()
    frames = [f for f in body.split("\n\n") if f]
    assert all(f.startswith("event: ") and "\ndata: " in f for f in frames)
    for frame in frames:
        validate_event(json.loads(frame.split("\ndata: ", 1)[1]))
    last = json.loads(frames[-1].split("\ndata: ", 1)[1])
    assert frames[-1].startswith("event: response.completed\n") and last["type"] == "response.completed"
    assert last["response"]["status"] == "completed" and last["response"]["incomplete_details"] is None
    assert last["response"]["output"][0]["content"][0]["text"] == text[:cut]
    bad = httpx.post(v1 + "/responses", json={"model": "tiny", "input": [{"type": "item_reference", "id": "x"}]})
    assert_openai_error(bad, 400, "invalid_request_error", "stateless")
    bad = httpx.post(v1 + "/responses", json={"model": "tiny", "input": "hi", "previous_response_id": "resp_1"})
    assert_openai_error(bad, 400, "invalid_request_error", "stateless")
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.responses.create(model="tiny", input="hi", tools=tools,
                                tool_choice={"type": "function", "name": "get_weather"})


# ---- usage details: reasoning and cached tokens ---------------------------------------------------

THINKING_TEMPLATE = "{{ range .Messages }}{{ .Content }}\n{{ end }}{{ if .Think }}<think>\n{{ end }}"


@pytest.fixture(scope="module")
def thinker(tmp_path_factory, model_files):
    """A server with `thinker`: the tiny model under a template that opens a think block (as Qwen 3's
    does), so everything it generates with thinking on is reasoning."""
    from server.store.register import register_gguf
    from server.store.store import Store
    from tests.conftest import start_server

    root = tmp_path_factory.mktemp("thinker")
    register_gguf(Store(root / "models"), "thinker", model_files["tiny"], template=THINKING_TEMPLATE)
    srv = start_server(root / "models", log_dir=root)
    yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    srv.stop()


def test_usage_counts_reasoning_and_cached_tokens(thinker):
    body = {"model": "thinker", "messages": [{"role": "user", "content": "why is the sky blue?"}],
            "max_tokens": 8, "temperature": 0, "extra_body": {"options": {"ignore_eos": True}}}
    first = thinker.chat.completions.create(**body)
    usage = first.usage
    assert usage.completion_tokens == 8
    if first.choices[0].message.content:  # the random model closed its think block early
        assert 0 < usage.completion_tokens_details.reasoning_tokens < 8
    else:
        assert usage.completion_tokens_details.reasoning_tokens == 8
    assert first.choices[0].message.model_extra["reasoning"]
    # the same prompt again: every prompt token comes from the prefix cache
    again = thinker.chat.completions.create(**body).usage
    assert again.prompt_tokens == usage.prompt_tokens
    assert again.prompt_tokens_details.cached_tokens == again.prompt_tokens
    # thinking off: none of the answer is reasoning
    plain = thinker.chat.completions.create(**body, reasoning_effort="none").usage
    assert plain.completion_tokens == 8 and plain.completion_tokens_details.reasoning_tokens == 0
    # the Responses API reports the same
    r = thinker.responses.create(model="thinker", input="why is the sky blue?", max_output_tokens=8,
                                 temperature=0, extra_body={"options": {"ignore_eos": True}})
    assert r.usage.output_tokens == 8 and r.usage.output_tokens_details.reasoning_tokens > 0
    r2 = thinker.responses.create(model="thinker", input="why is the sky blue?", max_output_tokens=8,
                                  temperature=0, extra_body={"options": {"ignore_eos": True}})
    assert r2.usage.input_tokens_details.cached_tokens == r2.usage.input_tokens


# ---- translation details the tiny model cannot produce (tool calls, thinking, failures) --------

async def _items(items):
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def _run_stream(gen) -> list[bytes]:
    async def collect():
        return [chunk async for chunk in gen]

    return asyncio.run(collect())


CALL = ToolCall("get_weather", {"city": "Tokyo"}, id="call_abcd1234", index=0)
FINAL = Final(done_reason="stop", prompt_tokens=7, prompt_eval_count=3, eval_count=5)


def test_chat_stream_tool_calls_and_reasoning_offline():
    items = [Delta(thinking="let me see"), Delta(content="Checking."), Delta(tool_calls=[CALL]),
             Delta(tool_calls=[dataclasses.replace(CALL, id=None, arguments={})]), FINAL]
    frames = _run_stream(oai._chat_stream(items[0], _items(items[1:]), "chatcmpl-1", 1, "m", True))
    assert frames[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(f.removeprefix(b"data: ")) for f in frames[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": "let me see"}
    assert deltas[1] == {"content": "Checking."}
    assert deltas[2]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                                        "id": "call_abcd1234", "type": "function", "index": 0}]
    second = deltas[3]["tool_calls"][0]
    assert second["index"] == 1 and second["id"].startswith("call_") and second["function"]["arguments"] == "{}"
    assert deltas[4] == {} and chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
                                   "prompt_tokens_details": {"cached_tokens": 4},
                                   "completion_tokens_details": {"reasoning_tokens": 0}}


def test_chat_stream_error_after_start_offline():
    items = [Delta(content="partial"), RuntimeError("engine failed")]
    frames = _run_stream(oai._chat_stream(items[0], _items(items[1:]), "chatcmpl-1", 1, "m", False))
    assert b"[DONE]" not in b"".join(frames)
    error = json.loads(frames[-1].removeprefix(b"data: "))["error"]
    assert error["message"] == "engine failed" and error["type"] == "api_error"


def _responses_events(items, **request) -> list[dict]:
    req = ot.ResponsesRequest(model="m", input="hi", **request)
    builder = oresp._ResponseBuilder(req, "resp_1", 1)
    events = builder.start()
    try:
        for item in items:
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Final):
                events += builder.finish(item)[1]
            else:
                events += builder.feed(item)
    except Exception as exc:
        events += builder.fail(exc)
    frames = [oresp._event(e) for e in events]
    out = []
    for f in frames:
        head, data = f.decode().removesuffix("\n\n").split("\n")
        out.append(json.loads(data.removeprefix("data: ")))
        assert head == "event: " + out[-1]["type"]
        validate_event(out[-1])
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def test_responses_events_reasoning_text_and_function_call_offline():
    events = _responses_events([Delta(thinking="hm"), Delta(content="Let me check."), Delta(tool_calls=[CALL]), FINAL])
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.reasoning_summary_part.added", 0),
        ("response.reasoning_summary_text.delta", 0), ("response.reasoning_summary_text.done", 0),
        ("response.reasoning_summary_part.done", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.content_part.added", 1), ("response.output_text.delta", 1),
        ("response.output_text.done", 1), ("response.content_part.done", 1), ("response.output_item.done", 1),
        ("response.output_item.added", 2), ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2), ("response.output_item.done", 2),
        ("response.completed", None),
    ]
    added, done = events[14]["item"], events[17]["item"]
    assert added["status"] == "in_progress" and added["arguments"] == ""
    assert done == {"type": "function_call", "id": added["id"], "call_id": "call_abcd1234", "name": "get_weather",
                    "arguments": '{"city":"Tokyo"}', "status": "completed"}
    response = events[-1]["response"]
    assert [o["type"] for o in response["output"]] == ["reasoning", "message", "function_call"]
    assert response["output"][0]["summary"] == [{"text": "hm", "type": "summary_text"}]
    assert response["usage"]["total_tokens"] == 12 and response["status"] == "completed"


def test_responses_events_empty_answer_and_failure_offline():
    events = _responses_events([FINAL])
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    failed = _responses_events([Delta(content="x"), RuntimeError("boom")])
    assert failed[-1]["type"] == "response.failed"
    assert failed[-1]["response"]["status"] == "failed" and failed[-1]["response"]["error"]["message"] == "boom"


def test_responses_input_translation_offline():
    messages = oresp._responses_messages([
        {"type": "message", "role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"x": 1}'},
        {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "42"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
    ])
    assert messages == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "", "thinking": "thought", "tool_calls": [
            {"id": "call_1", "function": {"name": "f", "arguments": {"x": 1}, "index": 0}},
            {"id": "call_2", "function": {"name": "g", "arguments": {}, "index": 1}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_2", "tool_name": "g"},
        {"role": "assistant", "content": "done"},
    ]
    # a function_call item without call_id or id gets a fresh call id
    unnamed = oresp._responses_messages([{"type": "function_call", "name": "f", "arguments": "{}"}])
    assert unnamed[0]["tool_calls"][0]["id"].startswith("call_")
    params = oresp._responses_params(ot.ResponsesRequest(
        model="m", input="hi", instructions="sys", tool_choice={"type": "function", "name": "f"},
        tools=[ot.ResponsesTool(name="f", description="d", parameters={"type": "object"})],
        text=ot.ResponsesText(format=ot.ResponsesTextFormat(type="json_schema", name="s", schema={"type": "object"})),
        reasoning=ot.Reasoning(effort="none"), max_output_tokens=5, options={"num_ctx": 64}))
    assert params.messages[0] == {"role": "system", "content": "sys"}
    assert params.tools == [{"type": "function", "function": {"name": "f", "description": "d",
                                                              "parameters": {"type": "object"}}}]
    assert params.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert params.format == {"type": "object"} and params.think is False
    assert params.options == {"temperature": 1.0, "top_p": 1.0, "num_predict": 5, "num_ctx": 64}


def test_chat_params_translation_offline():
    req = msgspec.json.decode(json.dumps({
        "model": "m", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": None, "reasoning_content": "hmm", "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "found"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "stop": "END", "seed": 4, "max_tokens": 9, "max_completion_tokens": 7,
        "frequency_penalty": 0.5, "reasoning_effort": "medium", "logprobs": True, "top_logprobs": 3,
        "response_format": {"type": "json_object"}, "options": {"temperature": 0.2, "num_ctx": 128},
    }), type=ot.ChatCompletionRequest)
    params = oai._chat_params(req)
    assert params.messages == [
        {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
        {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
            {"id": "call_9", "function": {"name": "lookup", "arguments": {"q": "x"}, "index": 0}}]},
        {"role": "tool", "content": "found", "tool_call_id": "call_9", "tool_name": "lookup"},
    ]
    assert params.tools == [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert params.tool_choice == "required" and params.format == "json" and params.think == "medium"
    assert params.logprobs is True and params.top_logprobs == 3
    assert params.options == {"temperature": 0.2, "top_p": 1.0, "num_predict": 7, "stop": ["END"], "seed": 4,
                              "frequency_penalty": 0.5, "num_ctx": 128}
