"""Agents served as models: /api/agents, /api/tags, /api/show and /api/chat with the official `ollama`
client (and /v1 with `openai`), against a real server with the test package's tools.

gemma3:270m has no tools template, so these agents run through the JSON fallback; `tool_choice` in the
agent's options forces the first step's tool, so that the wire shows a step whatever the model would
pick.
"""

from __future__ import annotations

import time

import httpx
import ollama
import pytest


def create(server, **definition):
    return httpx.post(server.url + "/api/agents", json=definition, timeout=30)


@pytest.fixture(scope="module")
def agent_server(tool_server):
    r = create(tool_server, name="calc-agent", model="gemma3:270m", system="You compute things.",
               tools=["calculator"], max_steps=2, description="does arithmetic",
               options={"tool_choice": "calculator", "num_predict": 48, "temperature": 0})
    assert r.status_code == 200, r.text
    r = create(tool_server, name="echo-agent", model="gemma3:270m", tools=["echo"], max_steps=2,
               options={"tool_choice": "echo", "num_predict": 160, "temperature": 0})
    assert r.status_code == 200, r.text
    r = create(tool_server, name="waiting-agent", model="gemma3:270m", tools=["wait_forever"], approve=[],
               options={"tool_choice": "wait_forever", "num_predict": 48, "temperature": 0})
    assert r.status_code == 200, r.text
    return tool_server


def test_definitions_and_their_errors(agent_server):
    url = agent_server.url
    listed = {a["name"]: a for a in httpx.get(url + "/api/agents").json()["agents"]}
    assert listed["calc-agent"]["kind"] == "agent" and listed["calc-agent"]["tools"] == ["calculator"]
    got = httpx.get(url + "/api/agents/calc-agent").json()
    assert got["model"] == "gemma3:270m" and got["max_steps"] == 2 and got["description"] == "does arithmetic"
    cases = [
        (dict(name="a1", model="no-such-model"), "no-such-model"),
        (dict(name="a2", model="gemma3:270m", tools=["no_such_tool"]), "no_such_tool"),
        (dict(name="a3", model="gemma3:270m", tools=["nothing_*"]), "nothing_*"),
        (dict(name="bad name!", model="gemma3:270m"), "name"),
        (dict(name="a4", model="gemma3:270m", colour="red"), "colour"),
        (dict(name="a5", model="gemma3:270m", max_steps="many"), "max_steps"),
        (dict(name="gemma3:270m", model="gemma3:270m"), "gemma3:270m"),
        (dict(model="gemma3:270m"), "name"),
    ]
    for definition, named in cases:
        r = create(agent_server, **definition)
        assert r.status_code == 400 and named in r.json()["error"], (definition, r.text)
    assert httpx.get(url + "/api/agents/none-such").status_code == 404
    assert httpx.delete(url + "/api/agents/none-such").status_code == 404
    assert create(agent_server, name="short-lived", model="gemma3:270m").status_code == 200
    assert httpx.delete(url + "/api/agents/short-lived").status_code == 200
    assert httpx.get(url + "/api/agents/short-lived").status_code == 404


def test_agents_among_the_models(agent_server):
    client = ollama.Client(host=agent_server.url)
    models = {m.model: m for m in client.list().models}
    assert models["calc-agent"].details.family == "agent" and models["calc-agent"].details.parent_model == "gemma3:270m"
    assert "gemma3:270m" in models  # models are still there
    shown = client.show("calc-agent")
    assert shown.capabilities == ["completion"] and "You compute things." in shown.modelfile
    assert shown.modelinfo["agent.tools"] == ["calculator"] and shown.modelinfo["agent.model"] == "gemma3:270m"
    assert client.show("calc-agent:latest").modelinfo["agent.max_steps"] == 2


def test_chat_shows_steps_as_thinking(agent_server):
    client = ollama.Client(host=agent_server.url, timeout=300)
    chunks = list(client.chat("calc-agent", messages=[{"role": "user", "content": "What is 6 times 7?"}],
                              stream=True))
    assert chunks[-1].done and chunks[-1].done_reason in ("stop", "length")
    thinking = "".join(c.message.thinking or "" for c in chunks)
    content = "".join(c.message.content or "" for c in chunks)
    assert "calculator(" in thinking and "←" in thinking  # the step: the call and its result
    assert content.strip() or chunks[-1].done_reason == "length"
    assert not any(c.message.tool_calls for c in chunks)  # tools ran on the server


def test_approval_on_a_thread(agent_server):
    client = ollama.Client(host=agent_server.url, timeout=300, headers={"X-Corral-Thread": f"t-{time.time_ns()}"})
    first = client.chat("echo-agent", messages=[{"role": "user", "content": "Echo hello."}], stream=False)
    assert "echo(" in first.message.content and "answer yes" in first.message.content.lower()
    second = client.chat("echo-agent", messages=[{"role": "user", "content": "yes"}], stream=False)
    assert "echo(" in (second.message.thinking or "") and second.done and not second.message.tool_calls
    # stateless (no thread): the question is asked, and the run ends there
    stateless = ollama.Client(host=agent_server.url, timeout=300).chat(
        "echo-agent", messages=[{"role": "user", "content": "Echo hello."}], stream=False)
    assert "answer yes" in stateless.message.content.lower()


def test_bad_chat_requests(agent_server):
    r = httpx.post(agent_server.url + "/api/chat", timeout=60, json={
        "model": "calc-agent", "messages": [{"role": "user", "content": "x"}], "stream": False,
        "options": {"thread_id": 5}})
    assert r.status_code == 400 and "thread" in r.json()["error"]
    r = httpx.post(agent_server.url + "/api/chat", timeout=60,
                   json={"model": "calc-agent", "messages": [], "stream": False})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    assert httpx.get(agent_server.url + "/").status_code == 200


def test_client_that_leaves_cancels_the_agent_and_its_tool(agent_server):
    before = set(agent_server.markers.iterdir())

    def new(prefix: str) -> set:
        return {p for p in set(agent_server.markers.iterdir()) - before if p.name.startswith(prefix)}

    with httpx.stream("POST", agent_server.url + "/api/chat", timeout=httpx.Timeout(300), json={
            "model": "waiting-agent", "stream": True, "messages": [{"role": "user", "content": "Wait."}]}) as r:
        assert r.status_code == 200
        deadline = time.monotonic() + 240  # the model writes the forced call first (slow on a busy CPU)
        while time.monotonic() < deadline and not new("started-"):
            time.sleep(0.1)
        assert new("started-"), "the agent's tool never started"
    # the client has left while the tool runs; the forced call's label is whatever the model wrote,
    # so a new cancellation marker is the proof
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not new("cancelled-"):
        time.sleep(0.1)
    assert new("cancelled-"), "the agent's tool was not cancelled"
    assert httpx.get(agent_server.url + "/").status_code == 200


def test_openai_client_with_an_agent(agent_server):
    import openai

    client = openai.OpenAI(base_url=agent_server.url + "/v1", api_key="unused", timeout=300)
    assert "calc-agent" in {m.id for m in client.models.list().data}
    assert client.models.retrieve("calc-agent").owned_by == "agent"
    chunks = list(client.chat.completions.create(
        model="calc-agent", messages=[{"role": "user", "content": "What is 6 times 7?"}], stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert "calculator(" in reasoning and not any(d.tool_calls for d in deltas)
    assert chunks[-2].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens > 0
    whole = client.chat.completions.create(model="echo-agent", messages=[{"role": "user", "content": "Echo hi."}])
    message = whole.choices[0].message
    assert "echo(" in message.content and not message.tool_calls  # the approval question, as the answer
    assert whole.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="calc-agent", messages=[])


def test_corral_agent_command(agent_server, tmp_path):
    import json
    import os
    import subprocess
    import sys

    definition = tmp_path / "agent.json"
    definition.write_text(json.dumps({"model": "gemma3:270m", "tools": ["calculator"], "description": "from the CLI"}))
    env = dict(os.environ, OLLAMA_HOST=agent_server.host)

    def corral(*args):
        return subprocess.run([sys.executable, "-m", "server", "agent", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    made = corral("create", "cli-agent", "-f", str(definition))
    assert made.returncode == 0 and made.stdout.strip() == "success", made.stderr
    assert httpx.get(agent_server.url + "/api/agents/cli-agent").json()["description"] == "from the CLI"
    assert "cli-agent" in corral("list").stdout
    definition.write_text(json.dumps({"model": "gemma3:270m", "tools": ["no_such_tool"]}))
    refused = corral("create", "cli-agent2", "-f", str(definition))
    assert refused.returncode == 1 and "no_such_tool" in refused.stderr
    assert corral("rm", "cli-agent").returncode == 0
    assert httpx.get(agent_server.url + "/api/agents/cli-agent").status_code == 404
