"""The LangGraph API (server/api/langgraph.py, agents/runs.py, agents/threads.py) with LangGraph's own clients.

A real `corral serve` process serves the scripted graphs of tests/data/graphs (no model: fixed answers,
an approval interrupt, a slow ticking node, a failing node, a subgraph) named in a `langgraph.json`
through CORRAL_GRAPHS_CONFIG, and `langgraph_sdk` (async and sync) and `RemoteGraph` talk to it as
they would to LangGraph Server. Restarts run on the same data directory (SQLite) and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import BadRequestError, ConflictError, InternalServerError, NotFoundError

from tests.conftest import ROOT, Server, start_server

GRAPHS = ROOT / "tests" / "data" / "graphs" / "langgraph.json"
HI = {"messages": [{"role": "user", "content": "hi"}]}


def serve(tmp: Path, data: Path, **env: str) -> Server:
    (tmp / "models").mkdir(exist_ok=True)
    return start_server(tmp / "models", {"CORRAL_DATA_DIR": str(data), "CORRAL_GRAPHS_CONFIG": str(GRAPHS), **env},
                        log_dir=tmp)


@pytest.fixture(scope="module")
def lg(tmp_path_factory):
    d = tmp_path_factory.mktemp("langgraph")
    server = serve(d, d / "data")
    yield server
    server.stop()


@pytest.fixture
def client(lg):
    return get_client(url=lg.url, api_key=None)


async def collect(parts) -> list:
    return [p async for p in parts]


async def until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
    return result


# ---- assistants -----------------------------------------------------------------------------------


async def test_assistants_are_the_served_graphs(client):
    found = await client.assistants.search(limit=100)
    assert sorted(a["graph_id"] for a in found) == ["approval", "echo", "failing", "nested", "slow"]
    echo = next(a for a in found if a["graph_id"] == "echo")
    assert echo["assistant_id"] == str(uuid.uuid5(uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), "echo"))
    assert echo["name"] == "echo" and echo["metadata"] == {"created_by": "system"} and echo["version"] == 1
    assert await client.assistants.get("echo") == await client.assistants.get(echo["assistant_id"]) == echo
    assert [a["graph_id"] for a in await client.assistants.search(graph_id="slow")] == ["slow"]
    page = await client.assistants.search(limit=2, offset=0, response_format="object")
    assert len(page["assistants"]) == 2 and page["next"] == "2"
    assert await client.assistants.count() == 5

    graph = await client.assistants.get_graph("nested", xray=True)
    assert {n["id"] for n in graph["nodes"]} >= {"__start__", "wrap_up", "__end__"}
    assert ("wrap_up", "__end__") in [(e["source"], e["target"]) for e in graph["edges"]]
    schemas = await client.assistants.get_schemas("approval")
    assert schemas["graph_id"] == "approval"
    assert "messages" in schemas["input_schema"]["properties"] and "approved" in schemas["state_schema"]["properties"]
    assert list(await client.assistants.get_subgraphs("nested")) == ["inner"]

    with pytest.raises(NotFoundError, match="Assistant 'nope' not found"):
        await client.assistants.get("nope")


# ---- threads --------------------------------------------------------------------------------------


async def test_thread_create_get_search_update_delete(client):
    tag = uuid.uuid4().hex
    thread = await client.threads.create(metadata={"tag": tag, "n": 1})
    tid = thread["thread_id"]
    assert thread["status"] == "idle" and thread["values"] is None and thread["metadata"] == {"tag": tag, "n": 1}
    assert await client.threads.get(tid) == thread
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=tid)
    assert (await client.threads.create(thread_id=tid, if_exists="do_nothing"))["thread_id"] == tid
    other = await client.threads.create(thread_id=f"my-thread-{tag}", metadata={"tag": tag, "n": 2})
    assert other["thread_id"] == f"my-thread-{tag}"  # ids need not be UUIDs

    assert {t["thread_id"] for t in await client.threads.search(metadata={"tag": tag})} == {tid, other["thread_id"]}
    assert [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag, "n": 2})] == [other["thread_id"]]
    assert [t["thread_id"] for t in await client.threads.search(ids=[tid])] == [tid]
    assert [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag}, sort_by="created_at",
                                                                sort_order="asc", limit=1)] == [tid]
    assert await client.threads.search(metadata={"tag": tag}, select=["thread_id"], limit=1, offset=1) == [
        {"thread_id": tid}]  # newest first
    assert await client.threads.count(metadata={"tag": tag}) == 2

    updated = await client.threads.update(tid, metadata={"n": 3})
    assert updated["metadata"] == {"tag": tag, "n": 3}
    await client.threads.delete(tid)
    with pytest.raises(NotFoundError, match=f"Thread '{tid}' not found"):
        await client.threads.get(tid)
    with pytest.raises(NotFoundError):
        await client.threads.delete(tid)
    state = await client.threads.get_state(other["thread_id"])  # no run yet: an empty state
    assert state["values"] == {} and state["next"] == [] and state["checkpoint"]["checkpoint_id"] is None

    copied = await client.threads.create(graph_id="echo", supersteps=[  # a history given step by step
        {"updates": [{"values": HI, "as_node": "respond"}]},
        {"updates": [{"values": {"messages": [{"type": "ai", "content": "copied"}]}, "as_node": "respond"}]}])
    assert copied["metadata"] == {"graph_id": "echo"}
    assert [m["content"] for m in copied["values"]["messages"]] == ["hi", "copied"]
    assert len(await client.threads.get_history(copied["thread_id"])) >= 2


# ---- streaming ------------------------------------------------------------------------------------


async def test_stream_in_every_mode(client):
    tid = (await client.threads.create())["thread_id"]
    parts = await collect(client.runs.stream(tid, "echo", input=HI,
                                             stream_mode=["values", "updates", "messages-tuple", "custom", "debug"]))
    assert parts[0].event == "metadata" and set(parts[0].data) == {"run_id", "attempt"}
    run_id = parts[0].data["run_id"]
    assert parts[-1].event == "end" and parts[-1].data == {"run_id": run_id, "status": "success"}
    by = {}
    for p in parts[1:-1]:
        by.setdefault(p.event, []).append(p.data)
    assert set(by) == {"values", "updates", "messages", "custom", "debug"}
    assert [m["content"] for m in by["values"][-1]["messages"]] == ["hi", "echo: hi"]
    assert by["updates"] == [{"respond": {"messages": [by["values"][-1]["messages"][1]]}}]
    message, meta = by["messages"][0]  # messages-tuple: `messages` events of [message, metadata]
    assert message["type"] == "ai" and message["content"] == "echo: hi" and meta["langgraph_node"] == "respond"
    assert by["custom"] == [{"echoing": "hi"}]
    checkpoints = [d for d in by["debug"] if d["type"] == "checkpoint"]
    assert checkpoints and checkpoints[-1]["payload"]["checkpoint"]["thread_id"] == tid
    assert {"task", "task_result"} <= {d["type"] for d in by["debug"]}

    for mode in ("values", "updates", "custom"):  # one mode alone: only its events
        events = [p.event for p in await collect(client.runs.stream(tid, "echo", input=HI, stream_mode=mode))]
        assert events[0] == "metadata" and events[-1] == "end" and set(events[1:-1]) == {mode}
    parts = await collect(client.runs.stream(tid, "echo", input=HI, stream_mode=["tasks", "checkpoints"]))
    assert {p.event for p in parts[1:-1]} == {"tasks", "checkpoints"}
    assert all(p.data["checkpoint"]["thread_id"] == tid for p in parts if p.event == "checkpoints")
    runs = await client.runs.list(tid)
    assert len(runs) == 5 and runs[-1]["run_id"] == run_id and {r["status"] for r in runs} == {"success"}
    assert (await client.runs.get(tid, run_id))["kwargs"]["stream_mode"][0] == "values"


async def test_sse_framing_on_the_wire(lg):
    async with httpx.AsyncClient(base_url=lg.url) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        async with http.stream("POST", f"/threads/{tid}/runs/stream",
                               json={"assistant_id": "failing", "input": HI, "stream_mode": ["updates"]}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["content-location"].startswith(f"/threads/{tid}/runs/")
            text = (await r.aread()).decode()
        assert (await http.get(f"/threads/{tid}")).json()["status"] == "error"
    blocks = [b.split("\n") for b in text.strip().split("\n\n")]
    assert [b[0] for b in blocks] == ["event: metadata", "event: error", "event: end"]
    assert blocks[1][1] == 'data: {"error":"ValueError","message":"scripted failure"}'
    assert '"status":"error"' in blocks[2][1]


async def test_subgraph_events_carry_their_namespace(client):
    tid = (await client.threads.create())["thread_id"]
    parts = await collect(client.runs.stream(tid, "nested", input=HI, stream_mode="updates", stream_subgraphs=True))
    events = [p.event for p in parts]
    assert any(e.startswith("updates|inner:") for e in events) and "updates" in events
    flat = await collect(client.runs.stream(tid, "nested", input=HI, stream_mode="updates"))
    assert not any("|" in p.event for p in flat)


# ---- interrupts, state, history -------------------------------------------------------------------


async def test_approval_interrupt_resume_state_and_history(client):
    tid = (await client.threads.create())["thread_id"]
    parts = await collect(client.runs.stream(tid, "approval", input=HI, stream_mode=["updates", "values"]))
    interrupt = next(p.data["__interrupt__"][0] for p in parts if p.event == "updates" and "__interrupt__" in p.data)
    assert interrupt["value"] == {"question": "approve the draft?", "draft": "draft for: hi"} and interrupt["id"]
    assert any(p.event == "values" and "__interrupt__" in p.data for p in parts)
    assert parts[-1].data["status"] == "success"

    thread = await client.threads.get(tid)
    assert thread["status"] == "interrupted"
    assert [i["id"] for i in next(iter(thread["interrupts"].values()))] == [interrupt["id"]]
    state = await client.threads.get_state(tid)
    assert state["next"] == ["approve"] and state["tasks"][0]["name"] == "approve"
    assert state["tasks"][0]["interrupts"][0]["value"] == interrupt["value"]
    assert state["interrupts"][0]["id"] == interrupt["id"]
    assert state["metadata"]["graph_id"] == "approval" and state["parent_checkpoint"]["thread_id"] == tid

    first = await client.runs.create(tid, "approval", command={"resume": "yes"})
    second = await client.runs.create(tid, "approval", command={"resume": "twice"})  # queued: checked when it runs
    result = await client.runs.join(tid, first["run_id"])
    assert result["approved"] == "yes" and result["messages"][-1]["content"] == "approved: yes"
    assert (await client.runs.join(tid, second["run_id"]))["__error__"] == {
        "error": "BadRequest", "message": f"Thread '{tid}' has no pending interrupt to resume"}
    await client.threads.update_state(tid, {"approved": "yes"}, as_node="approve")  # the thread's status again
    assert (await client.threads.get(tid))["status"] == "idle"
    with pytest.raises(httpx.HTTPStatusError, match="400") as exc:  # wait and join raise httpx's own error
        await client.runs.wait(tid, "approval", command={"resume": "again"})
    assert exc.value.response.json() == {"detail": f"Thread '{tid}' has no pending interrupt to resume"}
    with pytest.raises(BadRequestError, match="stateless"):
        await client.runs.create(None, "approval", command={"resume": "x"})

    history = await client.threads.get_history(tid, limit=3)
    assert len(history) == 3 and history[0]["values"]["approved"] == "yes"
    assert history[1]["checkpoint"]["checkpoint_id"] == history[0]["parent_checkpoint"]["checkpoint_id"]
    older = await client.threads.get_history(tid, before=history[0]["checkpoint"]["checkpoint_id"], limit=1)
    assert older[0]["checkpoint"] == history[1]["checkpoint"]
    past = await client.threads.get_state(tid, checkpoint_id=history[2]["checkpoint"]["checkpoint_id"])
    assert past["values"] == history[2]["values"]
    assert await client.threads.get_state(tid, checkpoint=history[2]["checkpoint"]) == past

    update = await client.threads.update_state(tid, {"approved": "edited"}, as_node="approve")
    assert update["checkpoint"]["thread_id"] == tid and update["checkpoint"]["checkpoint_id"]
    assert (await client.threads.get_state(tid))["values"]["approved"] == "edited"
    assert (await client.threads.get(tid))["values"]["approved"] == "edited"
    with pytest.raises(BadRequestError, match="invalid state update"):
        await client.threads.update_state(tid, {"approved": 1}, as_node="no_such_node")


# ---- background runs, join, cancel, multitask -----------------------------------------------------


async def test_background_run_join_and_wait(client):
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "slow", input={"ticks": 3, "delay": 0.05})
    assert run["status"] == "pending" and run["thread_id"] == tid and run["multitask_strategy"] == "enqueue"
    assert (await client.runs.join(tid, run["run_id"]))["done"] == [0, 1, 2]
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    assert (await client.runs.join(tid, run["run_id"]))["done"] == [0, 1, 2]  # after the end too

    run = await client.runs.create(tid, "slow", input={"ticks": 4, "delay": 0.2}, stream_mode=["values", "custom"])
    parts = await collect(client.runs.join_stream(tid, run["run_id"], stream_mode="custom"))
    assert [p.data["tick"] for p in parts if p.event == "custom"] == [0, 1, 2, 3] and parts[-1].event == "end"

    batch = await client.runs.create_batch([{"assistant_id": "echo", "input": HI},
                                            {"assistant_id": "slow", "input": {"ticks": 1}, "thread_id": tid}])
    assert [r["assistant_id"] for r in batch] == [await _aid(client, "echo"), await _aid(client, "slow")]
    assert batch[1]["thread_id"] == tid and (await client.runs.join(tid, batch[1]["run_id"]))["done"][-1] == 0
    slow = [await client.runs.create(tid, "slow", input={"ticks": 200, "delay": 0.05}) for _ in range(2)]
    await client.runs.cancel_many(thread_id=tid, status="all")
    for run in slow:
        await until(lambda: _status_is(client, tid, run["run_id"], "interrupted"))

    failed = await client.runs.wait(tid, "failing", input=HI, raise_error=False)
    assert failed == {"__error__": {"error": "ValueError", "message": "scripted failure"}}
    with pytest.raises(Exception, match="ValueError: scripted failure"):
        await client.runs.wait(tid, "failing", input=HI)
    assert (await client.threads.get(tid))["status"] == "error"
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, str(uuid.uuid4()))
    with pytest.raises(httpx.HTTPStatusError, match="404"):
        await client.runs.join(tid, str(uuid.uuid4()))


async def test_cancel_mid_stream_and_on_disconnect(client):
    tid = (await client.threads.create())["thread_id"]
    parts, run_id = [], None
    async for part in client.runs.stream(tid, "slow", input={"ticks": 200, "delay": 0.05}, stream_mode="custom"):
        parts.append(part)
        run_id = run_id or part.data["run_id"]
        if part.event == "custom" and part.data["tick"] == 2:
            await client.runs.cancel(tid, run_id)
    assert parts[-1].event == "end" and parts[-1].data["status"] == "interrupted"
    assert max(p.data["tick"] for p in parts if p.event == "custom") < 50
    assert (await client.runs.get(tid, run_id))["status"] == "interrupted"
    assert (await client.threads.get(tid))["status"] == "idle"

    async def leave(**kwargs) -> str:  # read up to the first tick, then close the connection
        stream = client.runs.stream(tid, "slow", input={"ticks": 20, "delay": 0.05}, stream_mode="custom", **kwargs)
        async for part in stream:
            if part.event == "metadata":
                rid = part.data["run_id"]
            if part.event == "custom":
                break
        await stream.aclose()
        return rid

    rid = await leave()  # on_disconnect defaults to cancel
    await until(lambda: _status_is(client, tid, rid, "interrupted"))
    rid = await leave(on_disconnect="continue")
    assert (await client.runs.join(tid, rid))["done"][-20:] == list(range(20))
    assert (await client.runs.get(tid, rid))["status"] == "success"

    run = await client.runs.create(tid, "slow", input={"ticks": 200, "delay": 0.05})
    await until(lambda: _status_is(client, tid, run["run_id"], "running"))
    await client.runs.cancel(tid, run["run_id"], wait=True)
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    await client.runs.cancel(tid, run["run_id"])  # already over: nothing to do
    with pytest.raises(NotFoundError):
        await client.runs.cancel(tid, str(uuid.uuid4()))


async def _aid(client, graph_id: str) -> str:
    return (await client.assistants.get(graph_id))["assistant_id"]


async def _status_is(client, tid: str, rid: str, status: str) -> bool:
    return (await client.runs.get(tid, rid))["status"] == status


async def test_multitask_reject_enqueue_interrupt(client):
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "slow", input={"ticks": 10, "delay": 0.05})
    with pytest.raises(ConflictError, match="busy"):
        await client.runs.create(tid, "slow", input={"ticks": 1}, multitask_strategy="reject")
    with pytest.raises(ConflictError):
        await collect(client.runs.stream(tid, "echo", input=HI, multitask_strategy="reject"))
    assert (await client.threads.get(tid))["status"] == "busy"
    second = await client.runs.create(tid, "slow", input={"ticks": 2, "delay": 0.01}, multitask_strategy="enqueue")
    assert second["status"] == "pending"
    assert (await client.runs.join(tid, second["run_id"]))["done"] == list(range(10)) + [0, 1]  # after the first
    assert (await client.runs.get(tid, first["run_id"]))["status"] == "success"

    first = await client.runs.create(tid, "slow", input={"ticks": 200, "delay": 0.05})
    await until(lambda: _status_is(client, tid, first["run_id"], "running"))
    third = await client.runs.create(tid, "echo", input=HI, multitask_strategy="interrupt")
    await client.runs.join(tid, third["run_id"])
    assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    assert (await client.runs.get(tid, third["run_id"]))["status"] == "success"
    with pytest.raises(InternalServerError) as exc:
        await client.runs.create(tid, "echo", input=HI, multitask_strategy="rollback")
    assert exc.value.status_code == 501

    busy = await client.runs.create(tid, "slow", input={"ticks": 200, "delay": 0.05})
    with pytest.raises(ConflictError):
        await client.runs.delete(tid, busy["run_id"])
    await client.threads.delete(tid)  # cancels the thread's run
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, busy["run_id"])


# ---- stateless runs -------------------------------------------------------------------------------


async def test_stateless_runs(client):
    before = await client.threads.count()
    result = await client.runs.wait(None, "echo", input=HI)
    assert [m["content"] for m in result["messages"]] == ["hi", "echo: hi"]
    parts = await collect(client.runs.stream(None, "echo", input=HI, stream_mode="updates"))
    assert [p.event for p in parts] == ["metadata", "updates", "end"]
    run = await client.runs.create(None, "slow", input={"ticks": 1, "delay": 0.01})
    await until(lambda: _thread_gone(client, run["thread_id"]))
    assert await client.threads.count() == before  # their threads were temporary
    kept = await client.runs.wait(None, "echo", input=HI, on_completion="keep", on_run_created=lambda m: None)
    assert kept["messages"][-1]["content"] == "echo: hi"
    assert await client.threads.count() == before + 1


async def _thread_gone(client, tid: str) -> bool:
    try:
        await client.threads.get(tid)
    except NotFoundError:
        return True
    return False


# ---- refusals -------------------------------------------------------------------------------------


async def test_bad_input_and_unsupported_paths(client, lg):
    with pytest.raises(NotFoundError, match="Thread 'nope' not found"):
        await client.runs.create("nope", "echo", input=HI)
    with pytest.raises(NotFoundError, match="Assistant 'nope' not found"):
        await client.runs.create(None, "nope", input=HI)
    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(InternalServerError, match="stream mode 'events' is not supported"):
        await collect(client.runs.stream(tid, "echo", input=HI, stream_mode="events"))
    assert (await client.runs.wait(tid, "echo", input=HI, if_not_exists="create"))["messages"]
    assert (await client.runs.wait(f"new-{tid}", "echo", input=HI, if_not_exists="create"))["messages"]

    async with httpx.AsyncClient(base_url=lg.url) as http:
        checks = [
            ("POST", "/threads", b"{not json", 400),
            ("POST", f"/threads/{tid}/runs", b'{"input": {}}', 400),  # no assistant_id
            ("POST", f"/threads/{tid}/runs", b'{"assistant_id": "echo", "stream_mode": 3}', 400),
            ("POST", "/threads/search", b'{"limit": -1}', 400),
            ("POST", "/threads", b'{"thread_id": "' + b"x" * 300 + b'"}', 400),
            ("GET", f"/threads/{tid}/runs?limit=x", None, 400),
            ("POST", f"/threads/{tid}/runs/{uuid.uuid4()}/cancel", None, 404),
            ("POST", f"/threads/{tid}/runs/{uuid.uuid4()}/cancel?action=rollback", None, 501),
            ("POST", "/assistants", b"{}", 501),
            ("PATCH", "/assistants/echo", b"{}", 501),
            ("POST", f"/threads/{tid}/copy", None, 501),
            ("POST", "/threads/prune", b"{}", 501),
            ("POST", "/runs/crons", b"{}", 501),
            ("PUT", "/store/items", b"{}", 501),
            ("POST", "/threads", b'{"ttl": {"ttl": 5}}', 501),
            ("POST", f"/threads/{tid}/runs", b'{"assistant_id": "echo", "webhook": "http://x"}', 501),
        ]
        for method, path, body, status in checks:
            r = await http.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (method, path, r.text)
            assert isinstance(r.json()["detail"], str) and r.json()["detail"], (method, path)
        assert (await http.get("/info")).json()["flags"]["assistants"] is True
    with pytest.raises(InternalServerError) as exc:
        await client.crons.create("echo", schedule="* * * * *")
    assert exc.value.status_code == 501
    with pytest.raises(InternalServerError) as exc:
        await client.store.put_item(["a"], "k", {"v": 1})
    assert exc.value.status_code == 501


# ---- the sync client and RemoteGraph ----------------------------------------------------------------


def test_sync_client(lg):
    client = get_sync_client(url=lg.url, api_key=None)
    tid = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(tid, "approval", input=HI, stream_mode="updates"))
    assert [p.event for p in parts][0] == "metadata" and parts[-1].event == "end"
    assert client.threads.get(tid)["status"] == "interrupted"
    run = client.runs.create(tid, "approval", command={"resume": "sync"})
    assert client.runs.join(tid, run["run_id"])["approved"] == "sync"
    assert client.threads.get_state(tid)["values"]["approved"] == "sync"
    assert len(client.threads.get_history(tid, limit=2)) == 2
    assert [r["run_id"] for r in client.runs.list(tid)][0] == run["run_id"]
    assert client.assistants.get("echo")["graph_id"] == "echo"


def test_remote_graph_sync(lg):
    from langgraph.pregel.remote import RemoteGraph
    from langgraph.types import Command

    remote = RemoteGraph("approval", url=lg.url, api_key=None)
    config = {"configurable": {"thread_id": f"remote-{uuid.uuid4().hex[:8]}"}}
    out = remote.invoke(HI, config)
    assert out["__interrupt__"][0]["value"]["question"] == "approve the draft?"
    state = remote.get_state(config)
    assert state.next == ("approve",) and state.interrupts[0].value["draft"] == "draft for: hi"
    assert remote.invoke(Command(resume="remote yes"), config)["approved"] == "remote yes"
    assert len(list(remote.get_state_history(config))) >= 3
    echo = RemoteGraph("echo", url=lg.url, api_key=None)
    updates = list(echo.stream(HI, {"configurable": {"thread_id": str(uuid.uuid4())}}, stream_mode="updates"))
    assert updates == [{"respond": {"messages": [updates[0]["respond"]["messages"][0]]}}]
    assert "respond" in echo.get_graph().nodes


async def test_remote_graph_async(lg):
    from langgraph.pregel.remote import RemoteGraph

    remote = RemoteGraph("echo", url=lg.url, api_key=None)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    out = await remote.ainvoke(HI, config)
    assert out["messages"][-1]["content"] == "echo: hi"
    chunks = [c async for c in remote.astream({"messages": [{"role": "user", "content": "again"}]}, config,
                                              stream_mode=["values", "custom"])]
    assert ("custom", {"echoing": "again"}) in [(c.event, c.data) for c in chunks]
    assert len((await remote.aget_state(config)).values["messages"]) == 4
    stateless = await RemoteGraph("echo", url=lg.url, api_key=None).ainvoke(HI)
    assert stateless["messages"][-1]["content"] == "echo: hi"


# ---- the runs layer without HTTP ----------------------------------------------------------------------


async def test_run_manager_in_process(tmp_path, monkeypatch):
    from agents import runs as runs_module
    from agents.runs import RunManager
    from agents.threads import ThreadStore

    monkeypatch.setattr(runs_module, "HEARTBEAT", 0.05)
    spec = importlib.util.spec_from_file_location("scripted_graphs", GRAPHS.parent / "scripted.py")
    scripted = sys.modules["scripted_graphs"] = importlib.util.module_from_spec(spec)  # its type hints resolve
    spec.loader.exec_module(scripted)
    manager = RunManager(scripted.InMemoryGraphs(), await ThreadStore.open(tmp_path))
    try:
        await manager.store.create_thread("t1", {"k": "v"})
        run = await manager.create("t1", {"assistant_id": "slow", "input": {"ticks": 2, "delay": 0.3},
                                          "stream_mode": ["custom"]})
        items = [item async for item in manager.follow(run)]
        assert [i[0] for i in items if i is not None] == ["custom", "custom"]
        assert None in items  # quiet stretches: keep-alives
        assert run.status == "success" and run.result()["done"] == [0, 1]
        thread = await manager.thread("t1")
        assert thread["status"] == "idle" and thread["values"]["done"] == [0, 1] and thread["metadata"]["k"] == "v"
        assert (await manager.store.get_run(run.run_id))["status"] == "success"
    finally:
        await manager.close()


# ---- persistence ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    srv = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_threads_survive_a_restart(tmp_path, backend, request):
    env = {"CORRAL_DATABASE_URL": request.getfixturevalue("postgres")} if backend == "postgres" else {}
    server = serve(tmp_path, tmp_path / "data", **env)
    try:
        client = get_client(url=server.url, api_key=None)
        thread = await client.threads.create(metadata={"who": backend})
        tid = thread["thread_id"]
        await client.runs.wait(tid, "approval", input=HI)
        state = await client.threads.get_state(tid)
        other = (await client.threads.create())["thread_id"]
        stuck = await client.runs.create(other, "slow", input={"ticks": 1000, "delay": 0.05})
        await until(lambda: _status_is(client, other, stuck["run_id"], "running"))
    finally:
        if backend == "sqlite":
            server.stop()  # a clean shutdown cancels the run: `interrupted`
        else:
            server.proc.kill()  # none: the run is left `running` in the database, and marked `error` at start
            server.proc.wait()
    server = serve(tmp_path, tmp_path / "data", **env)
    try:
        client = get_client(url=server.url, api_key=None)
        again = await client.threads.get(tid)
        assert again["metadata"]["who"] == backend and again["status"] == "interrupted"
        assert again["values"] == state["values"]
        assert (await client.threads.get_state(tid)) == state
        assert len(await client.runs.list(tid)) == 1
        assert (await client.runs.get(other, stuck["run_id"]))["status"] == (
            "interrupted" if backend == "sqlite" else "error")
        assert (await client.threads.get(other))["status"] == "idle"
        result = await client.runs.wait(tid, "approval", command={"resume": "after restart"})
        assert result["approved"] == "after restart"
    finally:
        server.stop()
    if backend == "postgres":
        assert not (tmp_path / "data" / "agents.db").exists()
