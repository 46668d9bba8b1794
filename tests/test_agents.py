"""Agents (agents/): specs, the built-in LangGraph graph, CorralChatModel, checkpointers, users' graphs.

All in-process, with services built in the test (no HTTP). Tests of the graph's logic drive it with a
scripted fake chat model (a random model cannot choose tools); tests of the engine use the tiny random
tools-capable model, its first choice forced by a grammar (`tool_choice` in the spec's options), and the
embedded gemma3:270m, whose template has no tools, through the JSON protocol.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langgraph.types import Command

import agents.service
from agents import AgentSpec, AgentsUnavailable, Approval, Content, Done, Thinking
from agents.chat_model import CorralChatModel
from agents.fallback import AnswerStream, reply_schema
from agents.graph import read_decision
from server.config import Settings
from server.errors import BadRequest, NotFound
from server.messages import Message
from server.services import build_services
from server.store.default_model import ensure_default_model
from server.store.register import register_gguf
from server.store.store import Store
from tests.test_tools import _idle
from tests.test_tools_fim import write_tools_model
from tools import ToolError, ToolResult, tool

# ---- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("agents")
    register_gguf(Store(d / "models"), "tooly", write_tools_model(d / "tools.gguf"))
    return d


def _services(store_dir, data: Path, **settings):
    return build_services(Settings(models_dir=store_dir / "models", data_dir=data, embed_default_model=False,
                                   num_parallel=2, context_length=1024, **settings))


class Scripted(FakeMessagesListChatModel):
    """Answers from a script, one message per model call; records what each call was given."""

    seen: list = []

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(list(messages))
        result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        result.generations[0].message = result.generations[0].message.model_copy(deep=True)
        return result


def script(*steps) -> Scripted:
    """Each step: a string (the answer) or a list of (tool, arguments) calls."""
    out = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            out.append(AIMessage(step))
        else:
            out.append(AIMessage("", tool_calls=[{"name": n, "args": a, "id": f"call_{i}_{k}", "type": "tool_call"}
                                                 for k, (n, a) in enumerate(step)]))
    return Scripted(responses=out, seen=[])


async def collect(events) -> list:
    return [e async for e in events]


def of(events, kind) -> list:
    return [e for e in events if isinstance(e, kind)]


def text(events) -> str:
    return "".join(e.text for e in of(events, Content))


log: list = []  # what the test tools saw


@tool(input={"type": "object", "properties": {"tag": {"type": "string"}}})
async def nap(args, ctx):
    """Sleeps half a second."""
    start = time.monotonic()
    await asyncio.sleep(0.5)
    log.append(("nap", args.get("tag"), start, time.monotonic()))
    return f"slept {args.get('tag')}"


@tool(input={"type": "object", "properties": {}})
async def boom(args, ctx):
    """Always fails."""
    raise RuntimeError("kaboom")


@tool(input={"type": "object", "properties": {}}, timeout=0.3)
async def hang(args, ctx):
    """Never ends (its timeout is 0.3 s)."""
    await asyncio.sleep(30)


@tool(input={"type": "object", "properties": {}})
async def refuse(args, ctx):
    """Refuses."""
    raise ToolError("refused: not today")


@tool(input={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
      side_effects=True)
async def write_note(args, ctx):
    """Writes a note (a side effect: needs approval)."""
    log.append(("write_note", args["text"]))
    return f"wrote {args['text']}"


@tool(input={"type": "object", "properties": {}})
async def stuck(args, ctx):
    """Waits until cancelled, and says so."""
    log.append(("stuck", "started"))
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        log.append(("stuck", "cancelled"))
        raise


@tool(input={"type": "object", "properties": {}})
async def steps3(args, ctx):
    """Reports progress."""
    for i in range(1, 4):
        ctx.progress(i, 3, f"step {i}")
        await asyncio.sleep(0)
    return "counted"


@tool(input={"type": "object", "properties": {}})
async def picture(args, ctx):
    """Makes a file."""
    return ToolResult(text="made a file", artifacts=[ctx.artifacts.put(b"hello", "text/plain", name="hello.txt")])


@tool(input={"type": "object", "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 8}},
            "required": ["text"]})
async def shout(args, ctx):
    """Gives back its text in capitals (short arguments: a random model fills what a grammar allows)."""
    return args["text"].upper()


TEST_TOOLS = [nap, boom, hang, refuse, write_note, stuck, steps3, picture, shout]


@pytest.fixture
def services(store_dir, tmp_path):
    log.clear()
    s = _services(store_dir, tmp_path / "data")
    s.tools.add_all(TEST_TOOLS)
    return s


class Scripts(dict):
    """model_factory: each agent's scripted model, by the agent's name."""

    def __call__(self, spec):
        return self[spec.name]


def scripted_agent(services, name, model, **spec):
    """A spec saved through the service, its graph driven by `model`."""
    if not isinstance(services.agents.model_factory, Scripts):
        services.agents.model_factory = Scripts()
    services.agents.model_factory[name] = model
    return services.agents.create(AgentSpec(name=name, model="tooly", **spec))


# ---- specs ------------------------------------------------------------------------------------


async def test_spec_validation_names_what_is_wrong(services):
    async with services:
        agents = services.agents
        with pytest.raises(BadRequest, match="agent 'a': unknown model 'nope'"):
            agents.create(AgentSpec(name="a", model="nope"))
        with pytest.raises(BadRequest, match="agent 'a': unknown tool 'calculatr'"):
            agents.create(AgentSpec(name="a", model="tooly", tools=["calculatr"]))
        with pytest.raises(BadRequest, match="agent 'a': no tool matches 'zz\\*'"):
            agents.create(AgentSpec(name="a", model="tooly", tools=["calc*", "zz*"]))
        with pytest.raises(BadRequest, match="approve entry 'boom'"):
            agents.create(AgentSpec(name="a", model="tooly", tools=["calculator"], approve=["boom"]))
        with pytest.raises(BadRequest, match="invalid agent name"):
            agents.create(AgentSpec(name="../x", model="tooly"))
        with pytest.raises(BadRequest, match="max_steps"):
            agents.create({"name": "a", "model": "tooly", "max_steps": 0})
        with pytest.raises(BadRequest, match="unknown field 'tool'"):
            agents.create({"name": "a", "model": "tooly", "tool": ["calculator"]})
        with pytest.raises(BadRequest, match="invalid output_schema"):
            agents.create({"name": "a", "model": "tooly", "output_schema": {"type": 7}})
        with pytest.raises(BadRequest, match="tool_choice"):
            agents.create({"name": "a", "model": "tooly", "tools": ["calculator"], "options": {"tool_choice": "boom"}})

        spec = agents.create({"name": "calc", "model": "tooly", "tools": ["calc*", "current_time"],
                              "description": "does sums", "options": {"num_predict": 16}})
        assert spec.tool_names(services.tools) == ["calculator", "current_time"]
        assert agents.names() == ["calc"] and agents.spec("calc") == spec
        path = services.settings.data_dir / "agents" / "calc.json"
        assert json.loads(path.read_text())["description"] == "does sums"
        assert [p.name for p in path.parent.iterdir()] == ["calc.json"]  # no temporary file left
        assert agents.spec("write_note") is None
        assert services.tools.get("write_note").side_effects  # approve None: such tools need approval
        assert AgentSpec("x", "tooly").needs_approval(services.tools.get("write_note"))
        assert not AgentSpec("x", "tooly", approve=[]).needs_approval(services.tools.get("write_note"))
        with pytest.raises(NotFound):
            await agents.graph("nope")
    async with _services(services.settings.models_dir.parent, services.settings.data_dir) as again:
        assert again.agents.spec("calc") == spec  # read back from its file
        again.agents.delete("calc")
        assert again.agents.names() == []
        with pytest.raises(NotFound):
            again.agents.delete("calc")


async def test_without_the_extra_every_method_says_so(services, monkeypatch):
    monkeypatch.setattr(agents.service, "extra_installed", lambda: False)
    async with services:  # the server still starts
        for call in (lambda: services.agents.names(), lambda: services.agents.spec("x"),
                     lambda: services.agents.create(AgentSpec("x", "tooly"))):
            with pytest.raises(AgentsUnavailable, match=r"pip install 'corral\[agents\]'"):
                call()
        with pytest.raises(AgentsUnavailable):
            await services.agents.graph("x")
        with pytest.raises(AgentsUnavailable):
            await collect(services.agents.run("x", [Message("user", "hi")]))
    assert issubclass(AgentsUnavailable, BadRequest)


# ---- the graph's logic, with a scripted model -------------------------------------------------


async def test_three_steps_with_concurrent_tools(services):
    async with services:
        model = script([("nap", {"tag": "a"}), ("nap", {"tag": "b"})], [("calculator", {"expression": "6*7"})],
                       "It is 42.")
        scripted_agent(services, "helper", model, tools=["nap", "calculator"], system="Be brief.")
        events = await collect(services.agents.run("helper", [Message("user", "What is 6*7?")]))
        naps = [e for e in log if e[0] == "nap"]
        assert len(naps) == 2 and max(e[3] for e in naps) - min(e[2] for e in naps) < 0.9  # both at once
        thinking = [e.text for e in of(events, Thinking)]
        assert thinking[0] == '→ nap({"tag": "a"})\n← slept a\n→ nap({"tag": "b"})\n← slept b'
        assert thinking[1].startswith('→ calculator({"expression": "6*7"})\n← {"expression": "6*7", "result": 42')
        assert text(events) == "It is 42."
        done = events[-1]
        assert isinstance(done, Done) and done.done_reason == "stop" and done.steps == 3
        first = model.seen[0]
        assert first[0].type == "system" and first[0].content == "Be brief." and first[1].content == "What is 6*7?"


async def test_failing_tools_come_back_to_the_model(services):
    async with services:
        model = script([("boom", {}), ("hang", {}), ("refuse", {}), ("nope", {}), ("calculator", {"expression": 7})],
                       "Nothing worked.")
        scripted_agent(services, "unlucky", model, tools=["boom", "hang", "refuse", "calculator"])
        start = time.monotonic()
        events = await collect(services.agents.run("unlucky", [Message("user", "try")]))
        assert time.monotonic() - start < 5
        assert text(events) == "Nothing worked." and events[-1].done_reason == "stop"
        results = [m for m in model.seen[1] if isinstance(m, ToolMessage)]
        assert [m.status for m in results] == ["error"] * 5
        contents = [m.content for m in results]
        assert "tool 'boom' failed: RuntimeError: kaboom" in contents[0]
        assert "timed out after 0.3 s" in contents[1]
        assert contents[2] == "error: refused: not today"
        assert "'nope' is not available to this agent" in contents[3]
        assert "invalid arguments for tool 'calculator'" in contents[4]


async def test_step_limit_ends_with_length(services):
    async with services:
        model = script(*[[("calculator", {"expression": f"{i}+1"})] for i in range(5)])
        scripted_agent(services, "loop", model, tools=["calculator"], max_steps=2)
        events = await collect(services.agents.run("loop", [Message("user", "count")]))
        assert len(of(events, Thinking)) == 1  # the second step's call is not run
        assert "step limit (max_steps=2) was reached" in text(events)
        assert events[-1].done_reason == "length" and events[-1].steps == 2
        # past LangGraph's default recursion limit of 25 supersteps
        scripted_agent(services, "long", script(*[[("calculator", {"expression": "1"})]] * 20), tools=["calculator"],
                       max_steps=15)
        events = await collect(services.agents.run("long", [Message("user", "count")]))
        assert len(of(events, Thinking)) == 14 and events[-1].done_reason == "length" and events[-1].steps == 15


async def test_approval_approve_reject_and_edit(services):
    async with services:
        agents = services.agents
        for name in ("a1", "a2", "a3"):
            scripted_agent(services, name, script([("write_note", {"text": "hi"})], "Finished."),
                           tools=["write_note", "calculator"])
        # approve, through resume
        events = await collect(agents.run("a1", [Message("user", "note it")], thread_id="t1"))
        assert events[-2:] == [Approval("write_note", {"text": "hi"}, events[-2].question),
                               Done("approval", 1, 0, 0)]
        assert "write_note" in events[-2].question and log == []
        events = await collect(agents.run("a1", [], thread_id="t1", resume="approve"))
        assert log == [("write_note", "hi")] and text(events) == "Finished." and events[-1].done_reason == "stop"
        assert of(events, Thinking)[0].text == '→ write_note({"text": "hi"})\n← wrote hi'

        # reject, through a plain next user message
        await collect(agents.run("a2", [Message("user", "note it")], thread_id="t2"))
        events = await collect(agents.run("a2", [Message("user", "no")], thread_id="t2"))
        assert log == [("write_note", "hi")] and text(events) == "Finished."
        declined = [m for m in agents.model_factory["a2"].seen[1] if isinstance(m, ToolMessage)][0]
        assert declined.content == "The person declined this call; it was not run."

        # edited arguments, through LangGraph's own Command on the compiled graph
        graph = await agents.graph("a3")
        config = {"configurable": {"thread_id": "t3"}}
        out = await graph.ainvoke({"messages": [HumanMessage("note it")]}, config)
        assert out["__interrupt__"][0].value["arguments"] == {"text": "hi"}
        out = await graph.ainvoke(Command(resume={"arguments": {"text": "edited"}}), config)
        assert log[-1] == ("write_note", "edited") and out["messages"][-1].content == "Finished."

        # stateless: the run pauses and says so, with nothing kept to resume
        events = await collect(agents.run("a1", [Message("user", "note it")]))
        assert [type(e) for e in events] == [Approval, Done] and events[-1].done_reason == "approval"

        with pytest.raises(BadRequest, match="no call waiting"):
            await collect(agents.run("a1", [], thread_id="t1", resume="yes"))
        with pytest.raises(BadRequest, match="resume needs a thread"):
            await collect(agents.run("a1", [], resume="yes"))


def test_reading_a_persons_decision():
    args = {"text": "hi"}
    for yes in ("approve", "yes", "Yes.", True, {"approve": True}):
        assert read_decision(yes, args) == ("run", args)
    assert read_decision({"arguments": {"text": "ok"}}, args) == ("run", {"text": "ok"})
    for no in ("reject", "no", False, {"reason": "no"}):
        assert read_decision(no, args) == ("declined", "The person declined this call; it was not run.")
    assert read_decision("use the other file", args)[1].endswith("They said: use the other file")


async def test_graph_streams_in_every_mode(services):
    async with services:
        scripted_agent(services, "streamer", script([("steps3", {})], "ok"), tools=["steps3"])
        graph = await services.agents.graph("streamer")
        modes = ["values", "updates", "messages", "custom", "debug"]
        seen: dict[str, list] = {m: [] for m in modes}
        async for mode, chunk in graph.astream({"messages": [HumanMessage("go")]},
                                               {"configurable": {"thread_id": "s"}}, stream_mode=modes):
            seen[mode].append(chunk)
        assert all(seen[m] for m in modes)
        progress = [c for c in seen["custom"] if c["event"] == "tool_progress"]
        assert [(p["completed"], p["total"], p["status"]) for p in progress] == [(i, 3, f"step {i}") for i in (1, 2, 3)]
        assert seen["values"][-1]["messages"][-1].content == "ok" and seen["values"][-1]["steps"] == 2


async def test_artifacts_are_linked_in_the_answer(services):
    async with services:
        scripted_agent(services, "artist", script([("picture", {})], "Here it is."), tools=["picture"])
        events = await collect(services.agents.run("artist", [Message("user", "draw")]))
        assert text(events).startswith("Here it is.\n\nArtifacts:\n- hello.txt: /api/artifacts/sha256:")


async def test_cancelling_a_run_cancels_its_tool(services):
    async with services:
        scripted_agent(services, "stuck", script([("stuck", {})], "never"), tools=["stuck"])

        async def consume():
            async for _ in services.agents.run("stuck", [Message("user", "go")], thread_id="c"):
                pass

        task = asyncio.ensure_future(consume())
        deadline = time.monotonic() + 10
        while ("stuck", "started") not in log:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == [("stuck", "started"), ("stuck", "cancelled")]


async def test_cancelling_a_run_gives_the_models_sequence_back(services):
    async with services:
        services.agents.create(AgentSpec(name="talker", model="tooly",
                                         options={"num_predict": 4000, "ignore_eos": True}))
        started = asyncio.Event()

        async def consume():
            async for event in services.agents.run("talker", [Message("user", "Talk for a long time.")]):
                if isinstance(event, Content):
                    started.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(started.wait(), 60)  # the answer is streaming
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while not _idle(services):
            assert time.monotonic() < deadline, "the cancelled run still holds its sequence"
            await asyncio.sleep(0.05)


# ---- threads that outlive the server ----------------------------------------------------------


async def _thread_outlives_its_services(store_dir, data: Path, **settings):
    """Run 1 is cut off (cancelled) while a step's tool is running, after a completed step; a fresh
    AgentService on the same database continues the thread from there."""
    first = _services(store_dir, data, **settings)
    first.tools.add_all(TEST_TOOLS)
    async with first:
        scripted_agent(first, "keeper", script(*KEEPER_SCRIPT), tools=["calculator", "stuck"])
        task = asyncio.ensure_future(collect(first.agents.run("keeper", [Message("user", "go")], thread_id="k")))
        while ("stuck", "started") not in log:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _continue_after_restart(store_dir, data, **settings)


KEEPER_SCRIPT = ([("calculator", {"expression": "1+1"})], [("stuck", {})], "unused")


async def _continue_after_restart(store_dir, data: Path, **settings):
    second = _services(store_dir, data, **settings)
    second.tools.add_all(TEST_TOOLS)
    second.tools.remove("stuck")
    second.tools.add(tool("stuck", input={"type": "object", "properties": {}})(_quick))
    async with second:
        second.agents.model_factory = lambda spec: script("Done: 2.")
        graph = await second.agents.graph("keeper")
        state = await graph.aget_state({"configurable": {"thread_id": "k"}})
        assert state.next == ("tools",)  # the cut-off step is still to run
        assert [m.content for m in state.values["messages"] if isinstance(m, ToolMessage)] == \
            ['{"expression": "1+1", "result": 2}']  # the completed step was kept
        events = await collect(second.agents.run("keeper", [], thread_id="k"))  # continue where it stopped
        assert text(events) == "Done: 2." and events[-1].done_reason == "stop"
        events = await collect(second.agents.run("keeper", [Message("user", "again")], thread_id="k"))
        state = await graph.aget_state({"configurable": {"thread_id": "k"}})
        assert [m.type for m in state.values["messages"]] == ["human", "ai", "tool", "ai", "tool", "ai", "human", "ai"]


KILLED_CHILD = """
import asyncio, sys
from pathlib import Path
from server.messages import Message
from tests.test_agents import KEEPER_SCRIPT, TEST_TOOLS, _services, script, scripted_agent
from tools import tool

@tool("stuck", input={"type": "object", "properties": {}})
async def stuck(args, ctx):
    print("STUCK", flush=True)
    await asyncio.sleep(60)

async def main():
    services = _services(Path(sys.argv[1]), Path(sys.argv[2]))
    services.tools.add_all([t for t in TEST_TOOLS if t.name != "stuck"] + [stuck])
    async with services:
        scripted_agent(services, "keeper", script(*KEEPER_SCRIPT), tools=["calculator", "stuck"])
        async for _ in services.agents.run("keeper", [Message("user", "go")], thread_id="k"):
            pass

asyncio.run(main())
"""


async def test_sqlite_thread_survives_a_killed_server(store_dir, tmp_path):
    """SIGKILL mid-step: the steps completed before it are in the database (a commit per checkpoint)."""
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(store_dir), str(tmp_path / "data")], cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with child:
        try:
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 120)
            assert line.strip() == "STUCK"
        finally:
            child.kill()  # SIGKILL: nothing of the child's own runs after this
    log.clear()
    await _continue_after_restart(store_dir, tmp_path / "data")


async def _quick(args, ctx):
    return "quick"


async def test_sqlite_thread_survives_a_restart(store_dir, tmp_path):
    log.clear()
    await _thread_outlives_its_services(store_dir, tmp_path / "data")
    assert (tmp_path / "data" / "agents.db").is_file()


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server (pgserver). Its data lives outside pytest's temporary root: pytest makes that
    0700 again at every session start, and as root pgserver runs postgres as another user."""
    pgserver = pytest.importorskip("pgserver")
    data = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    srv = pgserver.get_server(data, cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()
    shutil.rmtree(data, ignore_errors=True)


async def test_postgres_thread_survives_a_restart(store_dir, tmp_path, postgres):
    log.clear()
    await _thread_outlives_its_services(store_dir, tmp_path / "data", database_url=postgres)
    assert not (tmp_path / "data" / "agents.db").exists()


# ---- the engine --------------------------------------------------------------------------------


async def test_chat_model_streams_tool_calls_from_the_engine(services):
    async with services:
        chat = CorralChatModel(services=services, model="tooly", options={"num_predict": 64, "seed": 3})
        bound = chat.bind_tools([services.tools.get("shout").spec()], tool_choice="shout")
        chunks = [c async for c in bound.astream([HumanMessage("Shout.")])]
        assert all(isinstance(c, AIMessageChunk) for c in chunks)
        assert any(c.tool_call_chunks for c in chunks)
        whole = chunks[0]
        for c in chunks[1:]:
            whole += c
        assert whole.tool_calls[0]["name"] == "shout" and whole.tool_calls[0]["id"].startswith("call_")
        assert len(whole.tool_calls[0]["args"]["text"]) <= 8
        assert whole.usage_metadata["input_tokens"] > 0 and whole.usage_metadata["output_tokens"] > 0
        answer = await bound.ainvoke([HumanMessage("Shout.")])
        assert answer.tool_calls and answer.response_metadata["done_reason"] == "stop"
        plain = await chat.ainvoke([HumanMessage("hi")], options={"num_predict": 4})
        assert plain.response_metadata["done_reason"] == "length" and plain.usage_metadata["output_tokens"] == 4
        with pytest.raises(NotImplementedError, match="ainvoke"):
            chat.invoke([HumanMessage("hi")])  # on the loop's own thread
        reply = await asyncio.to_thread(chat.invoke, [HumanMessage("hi")], options={"num_predict": 2})
        assert reply.usage_metadata["output_tokens"] == 2  # from another thread: handed to the loop


async def test_agent_on_the_engine_with_a_forced_first_choice(services):
    async with services:
        services.agents.create(AgentSpec(name="loud", model="tooly", tools=["shout", "calculator"], max_steps=2,
                                         options={"tool_choice": "shout", "num_predict": 64, "seed": 1}))
        events = await collect(services.agents.run("loud", [Message("user", "Shout something.")]))
        first = of(events, Thinking)[0].text
        said = json.loads(first.split("\n")[0].removeprefix("→ shout(").removesuffix(")"))["text"]
        assert first == f'→ shout({json.dumps({"text": said}, ensure_ascii=False)})\n← {said.upper().strip()}'
        assert 1 <= len(said) <= 8
        done = events[-1]
        assert done.done_reason in ("stop", "length") and done.steps >= 1
        assert done.prompt_tokens > 0 and done.eval_tokens > 0


async def test_output_schema_on_the_engine(services):
    async with services:
        schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
                  "required": ["n"], "additionalProperties": False}
        services.agents.create(AgentSpec(name="num", model="tooly", output_schema=schema,
                                         options={"num_predict": 24, "seed": 2}))
        events = await collect(services.agents.run("num", [Message("user", "Pick a number.")]))
        answer = json.loads(text(events))
        assert set(answer) == {"n"} and 0 <= answer["n"] <= 99
        assert events[-1].steps == 1


async def test_gemma_without_a_tools_template_uses_the_json_protocol(store_dir, tmp_path):
    models = tmp_path / "store"
    shutil.copytree(store_dir / "models", models)
    ensure_default_model(Store(models))
    services = build_services(Settings(models_dir=models, data_dir=tmp_path / "data", embed_default_model=False,
                                       num_parallel=1, context_length=2048))
    async with services:
        spec = services.agents.create(AgentSpec(
            name="gem", model="gemma3:270m", tools=["calculator"], max_steps=2,
            options={"tool_choice": "calculator", "num_predict": 64, "temperature": 0}))
        graph = await services.agents.graph("gem")
        assert spec and "tools" not in services.inference.capabilities(services.inference.model("gemma3:270m"))
        events = await collect(services.agents.run("gem", [Message("user", "What is 6 times 7?")]))
        assert of(events, Thinking)[0].text.startswith("→ calculator({\"expression\": ")
        assert isinstance(events[-1], Done) and events[-1].steps >= 1 and graph is not None


def test_json_protocol_pieces():
    calc = {"type": "function", "function": {"name": "calc", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/$defs/N"}}, "$defs": {"N": {"type": "integer"}}}}}
    schema = reply_schema([calc], "auto")
    assert [b["properties"]["action"]["const"] for b in schema["anyOf"]] == ["answer", "call"]
    assert schema["anyOf"][1]["properties"]["arguments"]["properties"]["x"] == {"type": "integer"}
    assert reply_schema([calc], "calc")["properties"]["tool"] == {"const": "calc"}
    stream = AnswerStream()
    pieces = ['{"action": "ans', 'wer", "answer": "a\\', 'nb \\u00', 'e9\\ud83d', '\\ude00 c", "x"']
    assert "".join(stream.feed(p) for p in pieces) == "a\nb é😀 c"


async def test_create_react_agent_runs_on_the_engine(services):
    from langgraph.prebuilt import create_react_agent

    from agents.lc_tools import corral_tools

    async with services:
        tools = corral_tools(services, ["shout"])
        chat = CorralChatModel(services=services, model="tooly", options={"num_predict": 64, "seed": 5})

        def pick(state, runtime):  # the random model cannot choose: force one call, then an answer
            called = any(isinstance(m, ToolMessage) for m in state["messages"])
            return chat.bind_tools(tools, tool_choice="none" if called else "shout")

        graph = create_react_agent(pick, tools)
        out = await graph.ainvoke({"messages": [HumanMessage("Shout something.")]})
        kinds = [m.type for m in out["messages"]]
        assert kinds == ["human", "ai", "tool", "ai"]
        call = out["messages"][1].tool_calls[0]
        assert call["name"] == "shout" and out["messages"][2].tool_call_id == call["id"]
        assert out["messages"][2].content == call["args"]["text"].upper()


# ---- users' graphs ----------------------------------------------------------------------------

USER_GRAPH = '''
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph

def hello(state):
    return {"messages": [AIMessage("hello from " + state["messages"][-1].content)]}

builder = StateGraph(MessagesState)
builder.add_node("hello", hello)
builder.add_edge(START, "hello")
builder.add_edge("hello", END)
graph = builder.compile()

def make_graph():
    return builder
'''


async def test_users_graphs_from_the_config_file(store_dir, tmp_path):
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "mine.py").write_text(USER_GRAPH)
    (tmp_path / "graphs" / "broken.py").write_text("raise RuntimeError('nope')\n")
    config = tmp_path / "graphs" / "langgraph.json"
    config.write_text(json.dumps({"graphs": {"mine": "./mine.py:graph", "factory": "mine.py:make_graph",
                                             "broken": "./broken.py:graph", "missing": "./mine.py:nothing"}}))
    async with _services(store_dir, tmp_path / "data", graphs_config=config) as services:
        agents = services.agents
        assert agents.names() == ["factory", "mine"] and agents.is_user_graph("mine") and agents.spec("mine") is None
        graph = await agents.graph("mine")
        assert graph.checkpointer is agents.checkpointer
        events = await collect(agents.run("factory", [Message("user", "you")], thread_id="u"))
        assert text(events) == "hello from you" and events[-1].done_reason == "stop"
        state = await (await agents.graph("factory")).aget_state({"configurable": {"thread_id": "u"}})
        assert len(state.values["messages"]) == 2
        with pytest.raises(BadRequest, match="taken by a graph"):
            agents.create(AgentSpec(name="mine", model="tooly"))
