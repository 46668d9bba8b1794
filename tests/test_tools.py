"""The tool registry and the one in-process service: built in the test (no HTTP) and served over HTTP.

In-process: the composition root built here, a chat whose tool call comes back typed, goes to the
registry, and returns as a tool message; one-shot calls leave no sequence held. Over HTTP, against a
real `corral serve` with the test package's entry-point tools (tests/data/corral_test_tools): list,
invoke, streamed progress, artifacts, and every error (unknown tool, bad arguments, a tool that
refuses, one that fails, one past its timeout, a client that leaves).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time

import httpx
import pytest
from pydantic import BaseModel, Field

from server.config import Settings
from server.errors import BadRequest, NotFound
from server.inference import ChatParams
from server.messages import Message, ToolCall, ToolSpec
from server.services import build_services
from server.store.register import register_gguf
from server.store.store import Store
from tests.test_tools_fim import write_tools_model
from tools import ArtifactStore, InvalidArguments, ToolError, ToolTimeout, tool


class EchoArgs(BaseModel):
    text: str = Field(max_length=12)


@tool(input=EchoArgs)
async def echo_text(args: EchoArgs, ctx) -> str:
    """Gives back its text."""
    return f"echo: {args.text}"


@pytest.fixture(scope="module")
def tool_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("typed")
    store = Store(d / "models")
    register_gguf(store, "tooly", write_tools_model(d / "tools.gguf"))
    return d


def _services(d, tmp_path):
    return build_services(Settings(models_dir=d / "models", data_dir=tmp_path / "data", embed_default_model=False,
                                   num_parallel=2, context_length=1024))


def _idle(services) -> bool:
    return all(x.runner.active == 0 and not any(s.job for s in x.runner.seqs) for x in services.scheduler.running())


# ---- the typed in-process API ------------------------------------------------------------------


def test_messages_read_the_same_going_in_and_out():
    call = ToolCall("f", {"a": 1}, id="call_1", index=0)
    assert ToolCall.from_dict(call.to_dict()) == call
    assert ToolCall.from_dict({"id": "call_1", "name": "f", "arguments": {"a": 1}, "index": 0}) == call  # flat
    message = Message("assistant", "x", tool_calls=[call])
    assert Message.from_dict(message.to_dict()) == message
    result = Message.tool_result(call, "42")
    assert (result.role, result.tool_name, result.tool_call_id) == ("tool", "f", "call_1")
    spec = ToolSpec.from_dict(echo_text.spec())
    assert spec.to_dict() == echo_text.spec() and spec.parameters["required"] == ["text"]


async def test_chat_with_a_tool_call_in_process(tool_store, tmp_path):
    async with _services(tool_store, tmp_path) as services:
        services.tools.add(echo_text)
        spec = ToolSpec.from_dict(services.tools.get("echo_text").spec())
        question = Message("user", "Echo something.")
        answer = await services.inference.chat_once(ChatParams(
            model="tooly", messages=[question], tools=[spec], tool_choice="required",
            options={"num_predict": 96, "seed": 3}))
        assert answer.final.done_reason == "stop" and answer.final.tool_call_count == len(answer.tool_calls) >= 1
        call = answer.tool_calls[0]
        assert isinstance(call, ToolCall) and call.name == "echo_text" and call.id.startswith("call_")
        assert isinstance(call.arguments["text"], str) and len(call.arguments["text"]) <= 12  # the grammar's doing
        result = await services.call_tool(call.name, call.arguments)
        assert result.text == f"echo: {call.arguments['text']}"

        # the answer goes back as it came out, the result as a tool message
        conversation = [question, answer.message, Message.tool_result(call, result.as_text())]
        rendered = await services.inference.render_chat_only(ChatParams(model="tooly", messages=conversation,
                                                                        tools=[spec]))
        turns = rendered.split("<|im_start|>user")[1]  # after the system prompt's tool list
        assert '<tool_call>{"name": "echo_text", "arguments": {"text": ' in turns  # the call, rendered
        assert result.text in rendered
        final = await services.inference.chat_once(ChatParams(model="tooly", messages=conversation, tools=[spec],
                                                              options={"num_predict": 8, "seed": 3}))
        assert final.final.eval_count >= 1 and final.final.prompt_tokens > answer.final.prompt_tokens
        assert _idle(services)


async def test_one_shot_call_cancelled_gives_its_sequence_back(tool_store, tmp_path):
    async with _services(tool_store, tmp_path) as services:
        task = asyncio.ensure_future(services.inference.chat_once(ChatParams(
            model="tooly", messages=[Message("user", "Talk for a long time.")],
            options={"num_predict": 4000, "ignore_eos": True})))
        deadline = time.monotonic() + 60
        while not any(s.generating for x in services.scheduler.running() for s in x.runner.seqs):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while not _idle(services):
            assert time.monotonic() < deadline, "the cancelled call still holds its sequence"
            await asyncio.sleep(0.05)


async def test_embeddings_normalised_in_the_service(tool_store, tmp_path):
    async with _services(tool_store, tmp_path) as services:
        out = await services.inference.embed("tooly", ["a cat", "a dog"], dimensions=16)
        assert len(out.vectors) == 2 and all(len(v) == 16 for v in out.vectors)
        assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in out.vectors) and out.prompt_tokens > 0
        raw = await services.inference.embed("tooly", ["a cat"], normalized=False)
        assert not math.isclose(math.hypot(*raw.vectors[0]), 1.0, rel_tol=1e-3)
        with pytest.raises(BadRequest):
            await services.inference.embed("tooly", ["x"], dimensions=0)
        with pytest.raises(NotFound):
            await services.inference.embed("nope", ["x"])


async def test_registry_errors_in_process(tmp_path):
    services = build_services(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                                       embed_default_model=False, tool_timeout=0.2))

    @tool(input={"type": "object", "properties": {}})
    async def sleeper(args, ctx):
        await asyncio.sleep(5)

    services.tools.add(sleeper)
    async with services:
        assert (await services.call_tool("calculator", {"expression": "2 ** 10 - sqrt(16)"})).json["result"] == 1020.0
        for expression in ("__import__('os').system('true')", "open('/etc/passwd')", "9 ** 9 ** 9", "1 / 0",
                           "factorial(10 ** 6)", "[1] * 10"):
            with pytest.raises(ToolError):
                await services.call_tool("calculator", {"expression": expression})
        with pytest.raises(InvalidArguments, match=r"at 'expression'.*rule: string_type"):
            await services.call_tool("calculator", {"expression": 7})
        with pytest.raises(ToolError, match="unknown time zone"):
            await services.call_tool("current_time", {"timezone": "../../etc/passwd"})
        with pytest.raises(ToolTimeout, match="timed out after 0.2 s"):
            await services.call_tool("sleeper", {})
        with pytest.raises(ValueError, match="invalid tool name"):
            tool("bad name!")(sleeper.handler)
        with pytest.raises(ValueError, match="registered already"):
            services.tools.add(sleeper)


def test_artifacts_are_content_addressed_and_atomic(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    a = store.put(b"hello", "text/plain", name="a.txt")
    b = store.put(b"hello", "text/plain")
    assert a.digest == b.digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    path, media = store.open(a.digest)
    assert path.read_bytes() == b"hello" and media == "text/plain"
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [path.name, path.name + ".json"]
    for bad in ("../../etc/passwd", "sha256:xyz", "sha256:" + "0" * 63):
        with pytest.raises(BadRequest):
            store.open(bad)
    with pytest.raises(NotFound):
        store.open("sha256:" + "0" * 64)


# ---- over HTTP -------------------------------------------------------------------------------


def post(server, name, body=None, **kw):
    kw.setdefault("timeout", 60)
    return httpx.post(f"{server.url}/api/tools/{name}", json=body if body is not None else {}, **kw)


def test_list_tools(tool_server):
    r = httpx.get(tool_server.url + "/api/tools")
    assert r.status_code == 200
    tools = {x["function"]["name"]: x for x in r.json()["tools"]}
    assert {"calculator", "current_time", "slow_steps", "hang", "boom", "refuse", "echo", "make_image"} <= set(tools)
    calc = tools["calculator"]
    assert calc["type"] == "function" and calc["source"] == "builtin" and calc["side_effects"] is False
    assert calc["function"]["parameters"]["required"] == ["expression"] and calc["function"]["description"]
    assert tools["echo"]["side_effects"] is True and tools["hang"]["timeout"] == 1.0
    assert tools["echo"]["source"] == "entry point test_tools (corral_test_tools:TOOLS)"


def test_invoke_tools(tool_server):
    r = post(tool_server, "calculator", {"arguments": {"expression": "6 * 7"}})
    assert r.status_code == 200
    assert r.json() == {"status": "success", "tool": "calculator", "content": "",
                        "json": {"expression": "6 * 7", "result": 42}}
    r = post(tool_server, "echo", {"arguments": {"text": "hi"}})
    assert r.json()["content"] == "hi" and r.json()["json"] == {"length": 2}
    r = post(tool_server, "current_time", None)  # no body: default arguments
    assert r.status_code == 200 and r.json()["json"]["timezone"] == "UTC"


def test_streamed_progress(tool_server):
    with httpx.stream("POST", tool_server.url + "/api/tools/slow_steps", timeout=60,
                      json={"arguments": {"steps": 3}, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[:3] == [{"status": f"step {i}", "completed": i, "total": 3} for i in (1, 2, 3)]
    assert lines[3] == {"status": "success", "tool": "slow_steps", "content": "counted to 3"} and len(lines) == 4


def test_artifacts_served(tool_server):
    r = post(tool_server, "make_image", {"arguments": {"red": 200}})
    assert r.status_code == 200
    artifact = r.json()["artifacts"][0]
    assert artifact["media_type"] == "image/png" and artifact["name"] == "square.png"
    got = httpx.get(tool_server.url + artifact["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content.startswith(b"\x89PNG") and len(got.content) == artifact["size"]
    assert "sha256:" + hashlib.sha256(got.content).hexdigest() == artifact["digest"]
    assert httpx.head(tool_server.url + artifact["url"]).status_code == 200
    assert (tool_server.data / "artifacts" / artifact["digest"].replace(":", "-")).is_file()
    bad = httpx.get(tool_server.url + "/api/artifacts/sha256:nothex")
    assert bad.status_code == 400 and "invalid digest" in bad.json()["error"]
    missing = httpx.get(tool_server.url + "/api/artifacts/sha256:" + "0" * 64)
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    assert httpx.get(tool_server.url + "/api/artifacts/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)


def test_errors_in_the_api_shape(tool_server):
    r = post(tool_server, "nope", {"arguments": {}})
    assert r.status_code == 404 and r.json() == {"error": "tool 'nope' not found"}
    r = post(tool_server, "slow_steps", {"arguments": {"steps": 100}})
    assert r.status_code == 400 and "at 'steps'" in r.json()["error"] and "less_than_equal" in r.json()["error"]
    r = post(tool_server, "refuse", {"arguments": {}})  # a JSON Schema tool: the rule is the schema keyword
    assert r.status_code == 400 and "'why' is a required property" in r.json()["error"] and "required" in r.json()["error"]
    r = post(tool_server, "calculator", {"arguments": [1, 2]})
    assert r.status_code == 400 and "arguments" in r.json()["error"]
    r = httpx.post(tool_server.url + "/api/tools/calculator", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "error" in r.json()
    r = post(tool_server, "refuse", {"arguments": {"why": "no reason"}})
    assert r.status_code == 422 and r.json() == {"error": "refused: no reason"}
    r = post(tool_server, "boom", {"arguments": {}})
    assert r.status_code == 500 and r.json() == {"error": "tool 'boom' failed: RuntimeError: the test tool exploded"}
    r = post(tool_server, "calculator", {"arguments": {"expression": "1/0"}})
    assert r.status_code == 422 and r.json() == {"error": "division by zero"}
    with httpx.stream("POST", tool_server.url + "/api/tools/refuse", timeout=30,
                      json={"arguments": {"why": "late"}, "stream": True}) as s:
        assert s.status_code == 200 and [json.loads(x) for x in s.iter_lines() if x] == [{"error": "refused: late"}]
    assert httpx.get(tool_server.url + "/").status_code == 200  # still serving


def _wait_for(path, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_timeout_cancels_the_tool(tool_server):
    start = time.monotonic()
    r = post(tool_server, "hang", {"arguments": {"label": "timeout"}})
    assert r.status_code == 504 and r.json() == {"error": "tool 'hang' timed out after 1 s and was cancelled"}
    assert time.monotonic() - start < 10
    assert _wait_for(tool_server.markers / "cancelled-timeout")


def test_client_that_leaves_cancels_the_tool(tool_server):
    with pytest.raises(httpx.ReadTimeout):
        post(tool_server, "wait_forever", {"arguments": {"label": "left"}}, timeout=httpx.Timeout(10, read=0.5))
    assert _wait_for(tool_server.markers / "cancelled-left")
    with httpx.stream("POST", tool_server.url + "/api/tools/wait_forever", timeout=30,
                      json={"arguments": {"label": "left-stream"}, "stream": True}) as r:
        assert r.status_code == 200
        time.sleep(0.5)
    assert _wait_for(tool_server.markers / "cancelled-left-stream")


def test_host_and_origin_checks_apply(tool_server):
    assert httpx.get(tool_server.url + "/api/tools", headers={"Host": "evil.example"}).status_code == 403
    r = post(tool_server, "calculator", {"arguments": {"expression": "1"}}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = post(tool_server, "calculator", {"arguments": {"expression": "1"}}, headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
