"""The LangGraph API (the open Agent Protocol subset of LangGraph Server) over Corral's graphs.

`langgraph_sdk` (sync and async) and LangGraph's `RemoteGraph` work against these routes unchanged:
assistants (one per served graph), threads and their state/history, and runs (background, streamed
over SSE, waited for, joined, cancelled). Graphs come from `services.agents` (the agent core); the
runs and thread records are `agents.runs.RunManager`'s, opened on first use and closed with the app.

Errors are LangGraph's shape, `{"detail": "..."}` (the SDK reads `detail`): 404 for unknown
assistants, threads and runs, 400 for bad input, 409 for a busy thread under `reject`, 501 for the
parts of the protocol Corral does not implement (crons, the store, assistant CRUD, thread copy/prune/
TTL, webhooks, `rollback`, the `messages`/`events` stream modes). SSE framing: `metadata`
(`{"run_id", "attempt"}`) first, then one event per chunk named by its stream mode (`messages-tuple`
chunks are `messages` events of `[message, metadata]`; with `stream_subgraphs` a subgraph's events are
`<mode>|<namespace>`), `error` (`{"error", "message"}`) if the graph fails, and `end`
(`{"run_id", "status"}`) last; `: heartbeat` comments keep quiet streams open.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from importlib import metadata as pkg_metadata
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, patch, post, route
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from agents.errors import AgentsUnavailable
from agents.runs import Conflict, Run, RunManager, Unsupported, assistant_id, check_thread_id
from agents.threads import ThreadStore, contains, dumps, jsonable, now

from ..errors import BadRequest, NotFound
from . import langgraph_types as t
from .errors import status_for
from .wire import APIError, decode

_STATE = "langgraph_runs"


class _NoGraphs:
    """The graph source while the agent core serves none."""

    def names(self) -> list[str]:
        return []

    async def graph(self, name: str) -> Any:
        raise NotFound(f"Assistant '{name}' not found")


async def runs(request: Request) -> RunManager:
    """The app's RunManager, opened on first use (the database is only touched by these routes)."""
    state = request.app.state
    if (manager := state.get(_STATE)) is None:
        lock = state.setdefault("langgraph_lock", asyncio.Lock())
        async with lock:
            if (manager := state.get(_STATE)) is None:
                services = state.services
                if not services.agents.available:  # without the agents extra: 501 naming it
                    raise AgentsUnavailable()
                store = await ThreadStore.open(services.settings.data_dir, services.settings.database_url)
                manager = RunManager(getattr(services, "agents", None) or _NoGraphs(), store)
                state["langgraph_started"] = now()
                state[_STATE] = manager
    return manager


async def _close(app: Litestar) -> None:
    if (manager := app.state.get(_STATE)) is not None:
        del app.state[_STATE]
        await manager.close()


class _ClosingHandler(HTTPRouteHandler):
    """A route handler that also gives its app the shutdown hook closing the RunManager (route modules
    have no other way to add one, and the hooks are read when the app starts)."""

    def on_registration(self, app: Litestar, *args: Any, **kwargs: Any) -> None:
        super().on_registration(app, *args, **kwargs)
        if _close not in app.on_shutdown:
            app.on_shutdown.append(_close)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=dumps(obj), status_code=status, media_type="application/json", headers=headers)


def _no_content(status: int = 204) -> Response:
    return Response(content=b"", status_code=status)


def _error(_: Request, exc: Exception) -> Response:
    """Every error of these routes as `{"detail": …}` with its status."""
    if isinstance(exc, Conflict):
        status, message = 409, str(exc)
    elif isinstance(exc, (Unsupported, AgentsUnavailable)):
        status, message = 501, str(exc)
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, exc.detail or "error"
    elif isinstance(exc, msgspec.ValidationError):
        status, message = 400, f"invalid request: {exc}"
    else:
        status, message = status_for(exc)
    return _json({"detail": message}, status)


# -- assistants -------------------------------------------------------------------------------------

async def _assistants(request: Request, body: t.AssistantSearch) -> list[dict]:
    """The assistants (one per served graph) that `body`'s filters match, sorted as it asks."""
    manager = await runs(request)  # first: it sets the time the assistants were registered
    started = request.app.state["langgraph_started"]
    found = [t.assistant(name, assistant_id(name), started) for name in manager.graphs.names()]
    found = [a for a in found if (not body.graph_id or a["graph_id"] == body.graph_id)
             and (not body.name or body.name.lower() in a["name"].lower())
             and contains(a["metadata"], body.metadata or {})]
    return sorted(found, key=lambda a: a[body.sort_by or "created_at"], reverse=(body.sort_order or "desc") == "desc")


@post("/assistants/search")
async def search_assistants(request: Request) -> Response:
    body = await decode(request, t.AssistantSearch, allow_empty=True)
    found = await _assistants(request, body)
    more = body.offset + body.limit < len(found)
    return _json([t.select(a, body.select) for a in found[body.offset:body.offset + body.limit]],
                 headers={"X-Pagination-Next": str(body.offset + body.limit)} if more else None)


@post("/assistants/count")
async def count_assistants(request: Request) -> Response:
    return _json(len(await _assistants(request, await decode(request, t.AssistantSearch, allow_empty=True))))


async def _assistant_graph(request: Request, aid: str) -> tuple[str, Any]:
    manager = await runs(request)
    name = manager.resolve(aid)
    return name, await manager.graphs.graph(name)


@get("/assistants/{aid:str}")
async def get_assistant(request: Request, aid: str) -> Response:
    manager = await runs(request)
    name = manager.resolve(aid)
    return _json(t.assistant(name, assistant_id(name), request.app.state["langgraph_started"]))


@get("/assistants/{aid:str}/graph")
async def get_assistant_graph(request: Request, aid: str) -> Response:
    _, graph = await _assistant_graph(request, aid)
    raw = (request.query_params.get("xray") or "false").lower()
    xray: bool | int = raw in ("true", "1") if not raw.isdigit() or raw in ("0", "1") else int(raw)
    return _json(jsonable(graph.get_graph(xray=xray).to_json()))


@get("/assistants/{aid:str}/schemas")
async def get_assistant_schemas(request: Request, aid: str) -> Response:
    name, graph = await _assistant_graph(request, aid)
    return _json(t.schemas(name, graph))


@get(["/assistants/{aid:str}/subgraphs", "/assistants/{aid:str}/subgraphs/{namespace:str}"])
async def get_assistant_subgraphs(request: Request, aid: str, namespace: str | None = None) -> Response:
    name, graph = await _assistant_graph(request, aid)
    found = graph.get_subgraphs(namespace=namespace, recurse=t.flag(request.query_params, "recurse"))
    return _json({ns: t.schemas(name, sub) for ns, sub in found})


# -- threads ----------------------------------------------------------------------------------------

@post("/threads")
async def create_thread(request: Request) -> Response:
    body = await decode(request, t.ThreadCreate, allow_empty=True)
    if body.ttl is not None:
        raise Unsupported("thread TTL is not supported")
    manager = await runs(request)
    thread_id = body.thread_id or str(uuid.uuid4())
    check_thread_id(thread_id)
    record = await manager.store.create_thread(thread_id, body.metadata or {})
    if record is None:
        if body.if_exists == "do_nothing":
            return _json(t.thread(await manager.thread(thread_id)))
        raise Conflict(f"Thread '{thread_id}' already exists")
    if body.supersteps:
        try:
            await manager.apply_supersteps(thread_id, body.supersteps)
        except BaseException:
            await manager.store.delete_thread(thread_id)
            raise
        record = await manager.thread(thread_id)
    return _json(t.thread(record))


@post("/threads/search")
async def search_threads(request: Request) -> Response:
    body = await decode(request, t.ThreadSearch, allow_empty=True)
    if body.extract:
        raise Unsupported("'extract' is not supported in thread search")
    manager = await runs(request)
    found = await manager.store.search_threads(metadata=body.metadata, values=body.values, ids=body.ids,
                                               status=body.status, sort_by=body.sort_by or "created_at",
                                               sort_order=body.sort_order or "desc", limit=body.limit,
                                               offset=body.offset)
    return _json([t.select(t.thread(r), body.select) for r in found])


@post("/threads/count")
async def count_threads(request: Request) -> Response:
    body = await decode(request, t.ThreadSearch, allow_empty=True)
    manager = await runs(request)
    return _json(len(await manager.store.search_threads(metadata=body.metadata, values=body.values,
                                                        status=body.status)))


@get("/threads/{thread_id:str}")
async def get_thread(request: Request, thread_id: str) -> Response:
    return _json(t.thread(await (await runs(request)).thread(thread_id)))


@patch("/threads/{thread_id:str}")
async def patch_thread(request: Request, thread_id: str) -> Response:
    body = await decode(request, t.ThreadPatch, allow_empty=True)
    if body.ttl is not None:
        raise Unsupported("thread TTL is not supported")
    manager = await runs(request)
    record = await manager.thread(thread_id)
    if body.metadata:
        await manager.store.update_thread(thread_id, metadata={**(record["metadata"] or {}), **body.metadata})
    return _json(t.thread(await manager.thread(thread_id)))


@delete("/threads/{thread_id:str}", status_code=200)
async def delete_thread(request: Request, thread_id: str) -> Response:
    await (await runs(request)).delete_thread(thread_id)
    return _no_content()


async def _state(request: Request, thread_id: str, checkpoint: dict[str, Any], subgraphs: bool) -> Response:
    state = await (await runs(request)).state(thread_id, checkpoint, subgraphs)
    return _json(t.empty_state(thread_id) if state is None else state)


@get("/threads/{thread_id:str}/state")
async def get_state(request: Request, thread_id: str) -> Response:
    return await _state(request, thread_id, {}, t.flag(request.query_params, "subgraphs"))


@get("/threads/{thread_id:str}/state/{checkpoint_id:str}")
async def get_state_at(request: Request, thread_id: str, checkpoint_id: str) -> Response:
    return await _state(request, thread_id, {"checkpoint_id": checkpoint_id}, t.flag(request.query_params, "subgraphs"))


@post("/threads/{thread_id:str}/state/checkpoint")
async def post_state_at(request: Request, thread_id: str) -> Response:
    body = await decode(request, t.StateAtCheckpoint)
    return await _state(request, thread_id, body.checkpoint, body.subgraphs)


@post("/threads/{thread_id:str}/state")
async def update_state(request: Request, thread_id: str) -> Response:
    body = await decode(request, t.StateUpdate, allow_empty=True)
    checkpoint = {**(body.checkpoint or {}), **({"checkpoint_id": body.checkpoint_id} if body.checkpoint_id else {})}
    return _json({"checkpoint": await (await runs(request)).update_state(thread_id, body.values, body.as_node,
                                                                         checkpoint)})


async def _history(request: Request, thread_id: str, body: t.HistoryRequest) -> Response:
    return _json(await (await runs(request)).history(thread_id, limit=body.limit, before=body.before,
                                                     metadata=body.metadata, checkpoint=body.checkpoint or {}))


@post("/threads/{thread_id:str}/history")
async def post_history(request: Request, thread_id: str) -> Response:
    return await _history(request, thread_id, await decode(request, t.HistoryRequest, allow_empty=True))


@get("/threads/{thread_id:str}/history")
async def get_history(request: Request, thread_id: str) -> Response:
    return await _history(request, thread_id, t.HistoryRequest(limit=t.integer(request.query_params, "limit", 10),
                                                               before=request.query_params.get("before")))


# -- runs -------------------------------------------------------------------------------------------

def _location(run: Run, stateless: bool) -> dict[str, str]:
    path = f"/runs/{run.run_id}" if stateless else f"/threads/{run.thread_id}/runs/{run.run_id}"
    return {"Content-Location": path}


async def _create(request: Request, thread_id: str | None) -> tuple[RunManager, Run, t.RunCreate]:
    body = await decode(request, t.RunCreate)
    manager = await runs(request)
    run = await manager.create(thread_id, {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None})
    return manager, run, body


async def _sse(manager: RunManager, run: Run, cancel_on_disconnect: bool,
               modes: list[str] | None = None) -> AsyncIterator[bytes]:
    ended = False
    try:
        yield t.frame("metadata", dumps({"run_id": run.run_id, "attempt": 1}))
        async for item in manager.follow(run, modes):
            yield b": heartbeat\n\n" if item is None else t.frame(*item)
        yield t.frame("end", dumps({"run_id": run.run_id, "status": run.status}))
        ended = True
    finally:
        if not ended and cancel_on_disconnect:  # the client went away
            manager.cancel_soon(run)


def _stream(manager: RunManager, run: Run, cancel: bool, headers: dict[str, str],
            modes: list[str] | None = None) -> Stream:
    return Stream(content=_sse(manager, run, cancel, modes), media_type="text/event-stream",
                  headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_done(request: Request, manager: RunManager, run: Run, cancel_on_disconnect: bool) -> None:
    """Wait for the run's end; a client that leaves first cancels it (unless told to continue)."""
    done = asyncio.ensure_future(run.done.wait())
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        finished, _ = await asyncio.wait({done, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if done not in finished:
            if cancel_on_disconnect:
                manager.cancel_soon(run)
            raise APIError(499, "client disconnected")
    finally:
        done.cancel()
        watcher.cancel()


async def _result(manager: RunManager, thread_id: str, result: Any) -> Any:
    """A run's result, or (none kept: values mode not streamed, or a restart since) the thread's values."""
    if result is not None:
        return result
    record = await manager.store.get_thread(thread_id)
    return record["values"] if record else None


async def _wait(request: Request, thread_id: str | None) -> Response:
    manager, run, body = await _create(request, thread_id)
    await _until_done(request, manager, run, body.on_disconnect != "continue")
    return _json(await _result(manager, run.thread_id, run.result()),
                 headers=_location(run, thread_id is None))


@post("/threads/{thread_id:str}/runs")
async def create_run(request: Request, thread_id: str) -> Response:
    _, run, _ = await _create(request, thread_id)
    return _json(run.record, headers=_location(run, False))


@post("/runs")
async def create_stateless_run(request: Request) -> Response:
    _, run, _ = await _create(request, None)
    return _json(run.record, headers=_location(run, True))


@post("/threads/{thread_id:str}/runs/stream")
async def stream_run(request: Request, thread_id: str) -> Stream:
    manager, run, body = await _create(request, thread_id)
    return _stream(manager, run, body.on_disconnect != "continue", _location(run, False))


@post("/runs/stream")
async def stream_stateless_run(request: Request) -> Stream:
    manager, run, body = await _create(request, None)
    return _stream(manager, run, body.on_disconnect != "continue", _location(run, True))


@post("/threads/{thread_id:str}/runs/wait")
async def wait_run(request: Request, thread_id: str) -> Response:
    return await _wait(request, thread_id)


@post("/runs/wait")
async def wait_stateless_run(request: Request) -> Response:
    return await _wait(request, None)


@post("/runs/batch")
async def batch_runs(request: Request) -> Response:
    bodies = await decode(request, list[t.RunCreate])
    manager = await runs(request)
    created = []
    for body in bodies:
        fields = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
        created.append((await manager.create(fields.pop("thread_id", None), fields)).record)
    return _json(created)


@get("/threads/{thread_id:str}/runs")
async def list_runs(request: Request, thread_id: str) -> Response:
    manager = await runs(request)
    await manager.thread(thread_id)
    found = await manager.store.list_runs(thread_id, limit=t.integer(request.query_params, "limit", 10),
                                          offset=t.integer(request.query_params, "offset", 0),
                                          status=request.query_params.get("status"))
    return _json([t.select(r, request.query_params.getall("select", [])) for r in found])


async def _run_record(manager: RunManager, thread_id: str, run_id: str) -> dict[str, Any]:
    record = await manager.store.get_run(run_id)
    if record is None or record["thread_id"] != thread_id:
        raise NotFound(f"Run '{run_id}' not found on thread '{thread_id}'")
    return record


@get("/threads/{thread_id:str}/runs/{run_id:str}")
async def get_run(request: Request, thread_id: str, run_id: str) -> Response:
    return _json(await _run_record(await runs(request), thread_id, run_id))


@delete("/threads/{thread_id:str}/runs/{run_id:str}", status_code=200)
async def delete_run(request: Request, thread_id: str, run_id: str) -> Response:
    manager = await runs(request)
    await _run_record(manager, thread_id, run_id)
    if manager.active(run_id) is not None:
        raise Conflict(f"Run '{run_id}' is still pending or running; cancel it first")
    await manager.store.delete_run(run_id)
    return _no_content()


@get("/threads/{thread_id:str}/runs/{run_id:str}/join")
async def join_run(request: Request, thread_id: str, run_id: str) -> Response:
    manager = await runs(request)
    run = manager.active(run_id)
    if run is not None and run.thread_id == thread_id:
        await _until_done(request, manager, run, False)
        return _json(await _result(manager, thread_id, run.result()))
    await _run_record(manager, thread_id, run_id)
    return _json(await _result(manager, thread_id, manager.finished_result(run_id)))


@get("/threads/{thread_id:str}/runs/{run_id:str}/stream")
async def join_run_stream(request: Request, thread_id: str, run_id: str) -> Stream:
    manager = await runs(request)
    run = manager.active(run_id)
    cancel = t.flag(request.query_params, "cancel_on_disconnect")
    modes = [m for m in request.query_params.getall("stream_mode", []) if m] or None
    if run is None or run.thread_id != thread_id:
        record = await _run_record(manager, thread_id, run_id)

        async def ended() -> AsyncIterator[bytes]:  # the run is over: nothing left to follow
            yield t.frame("metadata", dumps({"run_id": run_id, "attempt": 1}))
            yield t.frame("end", dumps({"run_id": run_id, "status": record["status"]}))

        return Stream(content=ended(), media_type="text/event-stream")
    return _stream(manager, run, cancel, {}, modes)


@post("/threads/{thread_id:str}/runs/{run_id:str}/cancel")
async def cancel_run(request: Request, thread_id: str, run_id: str) -> Response:
    wait = t.flag(request.query_params, "wait")
    await (await runs(request)).cancel(thread_id, run_id, wait=wait,
                                       action=request.query_params.get("action") or "interrupt")
    return _no_content(204 if wait else 202)


@post("/runs/cancel")
async def cancel_runs(request: Request) -> Response:
    body = await decode(request, t.RunsCancel, allow_empty=True)
    action = request.query_params.get("action") or "interrupt"
    manager = await runs(request)
    if body.run_ids:
        if not body.thread_id:
            raise BadRequest("run_ids need their thread_id")
        for run_id in body.run_ids:
            await manager.cancel(body.thread_id, run_id, action=action)
    elif body.status:
        for run in manager.active_runs():
            if (not body.thread_id or run.thread_id == body.thread_id) and body.status in ("all", run.status):
                await manager.cancel(run.thread_id, run.run_id, action=action)
    else:
        raise BadRequest("name run_ids (with their thread_id) or a status to cancel")
    return _no_content()


# -- the rest ---------------------------------------------------------------------------------------

@_ClosingHandler("/info", http_method="GET")
async def info(request: Request) -> Response:
    def version(package: str) -> str | None:
        try:
            return pkg_metadata.version(package)
        except pkg_metadata.PackageNotFoundError:
            return None

    return _json({"version": version("corral"), "langgraph_py_version": version("langgraph"),
                  "flags": {"assistants": True, "crons": False, "langsmith": False, "store": False},
                  "host": {"kind": "corral"}})


@get("/ok")
async def ok() -> Response:
    return _json({"ok": True})


def _unsupported(paths: list[str], what: str, methods: list[str]) -> HTTPRouteHandler:
    """501 on the paths (and methods) the SDK calls for parts of the protocol Corral leaves out."""
    async def handler() -> Response:
        raise Unsupported(f"{what} is not supported by Corral's LangGraph API")

    return route(paths, http_method=methods, status_code=200, name=f"unsupported {paths[0]}")(handler)


UNSUPPORTED = [
    _unsupported(["/assistants"], "creating assistants (each served graph is one)", ["POST"]),
    _unsupported(["/assistants/{aid:str}"], "changing assistants (each served graph is one)", ["PATCH", "DELETE"]),
    _unsupported(["/assistants/{aid:str}/versions", "/assistants/{aid:str}/latest"], "assistant versions", ["POST"]),
    _unsupported(["/threads/{thread_id:str}/copy"], "copying threads", ["POST"]),
    _unsupported(["/threads/prune"], "pruning threads", ["POST"]),
    _unsupported(["/threads/{thread_id:str}/stream"], "streaming a thread", ["GET"]),
    _unsupported(["/threads/{thread_id:str}/runs/crons"], "crons", ["POST"]),
    _unsupported(["/runs/crons", "/runs/crons/search", "/runs/crons/count"], "crons", ["POST"]),
    _unsupported(["/runs/crons/{cron_id:str}"], "crons", ["PATCH", "DELETE"]),
    _unsupported(["/store/items"], "the store", ["GET", "PUT", "DELETE"]),
    _unsupported(["/store/items/search", "/store/namespaces"], "the store", ["POST"]),
]

HANDLERS = [
    search_assistants, count_assistants, get_assistant, get_assistant_graph, get_assistant_schemas,
    get_assistant_subgraphs, create_thread, search_threads, count_threads, get_thread, patch_thread, delete_thread,
    get_state, get_state_at, post_state_at, update_state, post_history, get_history, create_run,
    create_stateless_run, stream_run, stream_stateless_run, wait_run, wait_stateless_run, batch_runs, list_runs,
    get_run, delete_run, join_run, join_run_stream, cancel_run, cancel_runs, info, ok, *UNSUPPORTED,
]

# every key the app maps too: the most specific class wins, whichever layer maps it
ROUTES = [Router(path="/", route_handlers=HANDLERS,
                 exception_handlers={APIError: _error, HTTPException: _error, Exception: _error})]
