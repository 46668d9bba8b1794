"""Runs of LangGraph graphs on threads: what the LangGraph API's runs endpoints drive.

A `RunManager` takes graphs from a `GraphSource` (the agent core, or a test's own) and records from a
`ThreadStore`, so it depends on neither's timing. A run is an asyncio task calling
`graph.astream(...)` with the thread's id; its events go to a per-run buffer that any number of
readers follow (the stream that created it, `join_stream`, `wait`), and its final status and the
thread's values snapshot go to the store. Runs on one thread never overlap: each waits for the runs
created before it (`enqueue`), `reject` refuses a run while another is pending or running (409), and
`interrupt` cancels those first. `rollback` needs the checkpointer to delete a run's checkpoints,
which neither Corral checkpointer can, so it is refused as unsupported.

The buffer is in memory: events are not kept after a run ends or across restarts (`stream_resumable`
is accepted but a finished run's stream cannot be replayed). The thread records and checkpoints are
in the database and survive restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

from server.errors import BadRequest, NotFound

from .threads import ThreadStore, checkpoint_of, dumps, interrupt_of, jsonable, now, state_of

log = logging.getLogger("corral.agents")

# LangGraph's namespace for the assistant id of a graph registered from config (uuid5 of the graph id)
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
STREAM_MODES = {"values", "updates", "messages-tuple", "custom", "debug", "tasks", "checkpoints"}
STRATEGIES = {"reject", "interrupt", "rollback", "enqueue"}
HEARTBEAT = 15.0  # seconds without an event before a reader is told to send a keep-alive


class Conflict(Exception):
    """The thread is busy and the request may not wait (409)."""


class Unsupported(Exception):
    """Part of the LangGraph API Corral does not implement (501)."""


class GraphSource(Protocol):
    """Where graphs come from: the agent core (`services.agents`) or a test's own."""

    def names(self) -> list[str]: ...

    async def graph(self, name: str) -> Any: ...


def assistant_id(graph_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph_id))


def check_thread_id(thread_id: str) -> None:
    """Thread ids are the client's to choose (LangGraph's server wants UUIDs; RemoteGraph users often
    pick names): any non-blank string up to 256 characters."""
    if not thread_id.strip() or len(thread_id) > 256:
        raise BadRequest("thread_id must be a non-blank string of at most 256 characters")


def _debug_payload(payload: Any) -> Any:
    """Debug/checkpoints payloads with the API's `checkpoint`/`parent_checkpoint` beside the configs."""
    if not isinstance(payload, dict) or "config" not in payload:
        return payload
    out = dict(payload)
    for key in ("config", "parent_config"):
        if isinstance(out.get(key), dict) and "configurable" in out[key]:
            out[key] = {**out[key], "configurable": {k: v for k, v in out[key]["configurable"].items()
                                                     if not k.startswith("__")}}
    out["checkpoint"] = checkpoint_of(out.get("config"))
    out["parent_checkpoint"] = checkpoint_of(out.get("parent_config"))
    return out


def to_command(command: dict) -> Any:
    from langgraph.types import Command, Send

    def goto(g: Any) -> Any:
        if isinstance(g, dict) and "node" in g:
            return Send(g["node"], g.get("input"))
        return [goto(x) for x in g] if isinstance(g, list) else g

    kwargs = {k: command[k] for k in ("update", "resume") if command.get(k) is not None}
    if command.get("goto") is not None:
        kwargs["goto"] = goto(command["goto"])
    return Command(**kwargs)


# -- runs -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A run while it is pending or running: its record and the events it has published."""

    record: dict[str, Any]
    graph_id: str
    modes: list[str]  # requested stream modes
    temporary: bool  # a stateless run's thread, deleted when it ends
    earlier: list["Run"]  # the runs on this thread it waits for
    events: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)  # (mode, event name, JSON)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    last_values: Any = None
    error: dict | None = None
    started: bool = False
    finishing: bool = False

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def thread_id(self) -> str:
        return self.record["thread_id"]

    @property
    def status(self) -> str:
        return self.record["status"]

    def publish(self, mode: str, event: str, data: bytes) -> None:
        self.events.append((mode, event, data))
        self.wake.set()
        self.wake = asyncio.Event()

    def result(self) -> Any:
        """What `wait` and `join` answer: the last values, or `{"__error__": …}`."""
        if self.error is not None:
            return {"__error__": self.error}
        return jsonable(self.last_values) if self.last_values is not None else None


class RunManager:
    """Creates, executes, cancels and follows runs; see the module docstring."""

    def __init__(self, graphs: GraphSource, store: ThreadStore):
        self.graphs = graphs
        self.store = store
        self._active: dict[str, Run] = {}
        self._by_thread: dict[str, list[Run]] = {}
        self._finished: OrderedDict[str, Any] = OrderedDict()  # run_id → result, for join after the end

    # -- assistants ---------------------------------------------------------------------------------

    def resolve(self, assistant: str) -> str:
        """An assistant id (LangGraph's uuid5) or a graph name → the graph name."""
        for name in self.graphs.names():
            if assistant in (name, assistant_id(name)):
                return name
        raise NotFound(f"Assistant '{assistant}' not found")

    # -- threads ------------------------------------------------------------------------------------

    async def thread(self, thread_id: str) -> dict[str, Any]:
        record = await self.store.get_thread(thread_id)
        if record is None:
            raise NotFound(f"Thread '{thread_id}' not found")
        return record

    async def thread_graph(self, thread: dict) -> Any:
        graph_id = (thread.get("metadata") or {}).get("graph_id")
        if not graph_id or graph_id not in self.graphs.names():
            return None
        return await self.graphs.graph(graph_id)

    def busy(self, thread_id: str) -> bool:
        return bool(self._by_thread.get(thread_id))

    async def delete_thread(self, thread_id: str) -> None:
        thread = await self.thread(thread_id)
        for run in list(self._by_thread.get(thread_id, [])):
            self._cancel(run)
            await run.done.wait()
        graph = await self.thread_graph(thread)
        await self.store.delete_thread(thread_id)
        if graph is not None and getattr(graph, "checkpointer", None) is not None:
            await graph.checkpointer.adelete_thread(thread_id)

    async def refresh_thread(self, thread_id: str, graph: Any) -> dict[str, Any]:
        """The thread's values snapshot and status from its latest checkpoint (after a state update)."""
        snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        fields = self._thread_fields(snapshot, "success")
        if self.busy(thread_id):
            fields["status"] = "busy"
        await self.store.update_thread(thread_id, **fields)
        return fields

    async def state(self, thread_id: str, checkpoint: dict[str, Any], subgraphs: bool = False) -> dict[str, Any] | None:
        """The thread's ThreadState (at a checkpoint if one is named); None while it has no graph."""
        graph = await self.thread_graph(await self.thread(thread_id))
        if graph is None:
            return None
        return state_of(await graph.aget_state(_config(thread_id, checkpoint), subgraphs=subgraphs))

    async def update_state(self, thread_id: str, values: Any, as_node: str | None,
                           checkpoint: dict[str, Any]) -> dict[str, Any]:
        """`graph.aupdate_state`, then the thread's snapshot; the new checkpoint."""
        from langgraph.errors import InvalidUpdateError

        graph = await self.thread_graph(await self.thread(thread_id))
        if graph is None:
            raise BadRequest(f"Thread '{thread_id}' has no graph yet: run it first, or create it with a graph_id")
        if self.busy(thread_id):
            raise Conflict(f"Thread '{thread_id}' is busy with a run; update its state when the run has ended")
        try:
            config = await graph.aupdate_state(_config(thread_id, checkpoint), values, as_node=as_node)
        except (InvalidUpdateError, ValueError, KeyError, TypeError) as exc:
            raise BadRequest(f"invalid state update: {exc}") from exc
        await self.refresh_thread(thread_id, graph)
        return checkpoint_of(config)

    async def apply_supersteps(self, thread_id: str, supersteps: list[dict]) -> None:
        """A new thread's history from `supersteps` (`threads.create(supersteps=…)`)."""
        from langgraph.types import StateUpdate

        graph = await self.thread_graph(await self.thread(thread_id))
        if graph is None:
            raise BadRequest("supersteps need a graph: give the thread a graph_id in its metadata")
        steps = [[StateUpdate(to_command(u["command"]) if u.get("command") else u.get("values"), u.get("as_node"))
                  for u in step.get("updates", [])] for step in supersteps]
        await graph.abulk_update_state(_config(thread_id, {}), steps)
        await self.refresh_thread(thread_id, graph)

    async def history(self, thread_id: str, *, limit: int, before: str | dict | None, metadata: dict | None,
                      checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
        """ThreadStates, newest first (`before` a checkpoint id or Checkpoint; `metadata` filters)."""
        graph = await self.thread_graph(await self.thread(thread_id))
        if graph is None:
            return []
        if before is not None:
            before = _config(thread_id, {"checkpoint_id": before} if isinstance(before, str) else before)
        return [state_of(s) async for s in graph.aget_state_history(_config(thread_id, checkpoint), limit=limit,
                                                                    before=before, filter=metadata)]

    @staticmethod
    def _thread_fields(snapshot: Any, run_status: str) -> dict[str, Any]:
        interrupts = {t.id: [interrupt_of(i) for i in t.interrupts] for t in snapshot.tasks if t.interrupts}
        if run_status == "error":
            status = "error"
        elif run_status == "success" and (interrupts or snapshot.next):
            status = "interrupted"
        else:
            status = "idle"
        return {"status": status, "values": jsonable(snapshot.values), "interrupts": interrupts}

    # -- creating runs ------------------------------------------------------------------------------

    async def create(self, thread_id: str | None, body: dict[str, Any]) -> Run:
        """Validate and start a run (`body`: the RunCreate fields sent). `thread_id` None: stateless."""
        graph_id = self.resolve(body["assistant_id"])
        modes = body.get("stream_mode") or ["values"]
        modes = [modes] if isinstance(modes, str) else list(modes)
        for mode in modes:
            if mode not in STREAM_MODES:
                raise Unsupported(f"stream mode '{mode}' is not supported; use one of: "
                                  f"{', '.join(sorted(STREAM_MODES))}")
        strategy = body.get("multitask_strategy") or "enqueue"
        if strategy not in STRATEGIES:
            raise BadRequest(f"invalid multitask_strategy '{strategy}'")
        if strategy == "rollback":
            raise Unsupported("multitask_strategy 'rollback' is not supported (the checkpointer cannot delete a "
                              "run's checkpoints); use 'interrupt', 'enqueue' or 'reject'")
        for field in ("webhook", "after_seconds"):
            if body.get(field):
                raise Unsupported(f"'{field}' is not supported")
        command = body.get("command")
        if command is not None and body.get("input") is not None:
            raise BadRequest("send either input or command, not both")
        resume = isinstance(command, dict) and "resume" in command
        temporary = False
        if thread_id is None:
            if resume:
                raise BadRequest("a stateless run has no interrupt to resume")
            thread_id = str(uuid.uuid4())
            temporary = body.get("on_completion", "delete") != "keep"
            await self.store.create_thread(thread_id, {})
            thread = await self.thread(thread_id)
        else:
            thread = await self.store.get_thread(thread_id)
            if thread is None:
                if body.get("if_not_exists") != "create":
                    raise NotFound(f"Thread '{thread_id}' not found")
                check_thread_id(thread_id)
                await self.store.create_thread(thread_id, {})
                thread = await self.thread(thread_id)
        if strategy == "reject" and self.busy(thread_id):
            raise Conflict(f"Thread '{thread_id}' is busy with another run; wait for it to finish or choose a "
                           "different multitask_strategy")
        if resume and not self.busy(thread_id):
            graph = await self.graphs.graph(graph_id)
            snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
            if not any(t.interrupts for t in snapshot.tasks):
                raise BadRequest(f"Thread '{thread_id}' has no pending interrupt to resume")
        # from here to the task's start nothing awaits: the busy check above and the registration are one step
        if strategy == "reject" and self.busy(thread_id):
            raise Conflict(f"Thread '{thread_id}' is busy with another run")
        stamp = now()
        aid = assistant_id(graph_id)
        metadata = body.get("metadata") or {}
        kwargs = {k: body[k] for k in ("input", "command", "config", "context", "stream_mode", "interrupt_before",
                                       "interrupt_after", "checkpoint", "checkpoint_id", "durability")
                  if body.get(k) is not None}
        kwargs["stream_mode"] = modes
        kwargs["subgraphs"] = bool(body.get("stream_subgraphs"))
        record = {"run_id": str(uuid_v6()), "thread_id": thread_id, "assistant_id": aid, "status": "pending",
                  "created_at": stamp, "updated_at": stamp, "metadata": metadata, "kwargs": kwargs,
                  "multitask_strategy": strategy}
        earlier = list(self._by_thread.get(thread_id, []))
        run = Run(record=record, graph_id=graph_id, modes=modes, temporary=temporary, earlier=earlier)
        self._by_thread.setdefault(thread_id, []).append(run)
        self._active[run.run_id] = run
        if strategy == "interrupt":
            for other in earlier:
                self._cancel(other)
        thread_metadata = {**(thread.get("metadata") or {}), "graph_id": graph_id, "assistant_id": aid}
        try:
            await self.store.put_run(record, "busy", thread_metadata)
        except BaseException:
            self._forget(run)
            raise
        run.task = asyncio.create_task(self._execute(run))
        return run

    # -- executing ----------------------------------------------------------------------------------

    async def _execute(self, run: Run) -> None:
        status, graph, kwargs = "error", None, run.record["kwargs"]
        try:
            for other in run.earlier:
                await other.done.wait()
            run.started = True
            run.record["status"] = "running"
            await self.store.set_run_status(run.run_id, "running")
            graph = await self.graphs.graph(run.graph_id)
            config = self._config(run)
            if run.earlier and "resume" in (kwargs.get("command") or {}):  # queued: the interrupt may be gone
                if not any(t.interrupts for t in (await graph.aget_state(config)).tasks):
                    raise BadRequest(f"Thread '{run.thread_id}' has no pending interrupt to resume")
            graph_input = to_command(kwargs["command"]) if kwargs.get("command") else kwargs.get("input")
            lib_modes = sorted({"messages" if m == "messages-tuple" else m for m in run.modes} | {"values"})
            extra = {k: kwargs[k] for k in ("interrupt_before", "interrupt_after", "context", "durability")
                     if k in kwargs}
            subgraphs = kwargs["subgraphs"]
            async for chunk in graph.astream(graph_input, config, stream_mode=lib_modes, subgraphs=subgraphs, **extra):
                ns, mode, data = chunk if subgraphs else ((), *chunk)
                if mode == "values" and not ns:
                    run.last_values = data
                wanted = "messages-tuple" if mode == "messages" else mode
                if wanted not in run.modes:
                    continue
                if mode in ("debug", "checkpoints"):
                    data = {**data, "payload": _debug_payload(data.get("payload"))} if mode == "debug" else \
                        _debug_payload(data)
                run.publish(wanted, mode + "".join("|" + n for n in ns), dumps(data))
            status = "success"
        except asyncio.CancelledError:
            status = "interrupted"
        except Exception as exc:  # the graph failed: an `error` event, the run and thread in error
            log.warning("run %s failed: %s: %s", run.run_id, type(exc).__name__, exc)
            run.error = {"error": type(exc).__name__, "message": str(exc)}
            run.publish("error", "error", dumps(run.error))
        finally:
            run.finishing = True
            await asyncio.shield(self._finish(run, status, graph))

    def _config(self, run: Run) -> dict[str, Any]:
        kwargs, record = run.record["kwargs"], run.record
        config = {k: v for k, v in (kwargs.get("config") or {}).items() if k in ("tags", "recursion_limit")}
        ids = {"thread_id": record["thread_id"], "run_id": record["run_id"], "graph_id": run.graph_id,
               "assistant_id": record["assistant_id"]}
        configurable = {**((kwargs.get("config") or {}).get("configurable") or {})}
        if kwargs.get("checkpoint"):
            configurable.update({k: v for k, v in kwargs["checkpoint"].items() if v is not None})
        if kwargs.get("checkpoint_id"):
            configurable["checkpoint_id"] = kwargs["checkpoint_id"]
        configurable.update(ids)
        config["configurable"] = configurable
        config["metadata"] = {**((kwargs.get("config") or {}).get("metadata") or {}), **record["metadata"], **ids}
        config["run_id"] = uuid.UUID(record["run_id"])
        return config

    async def _finish(self, run: Run, status: str, graph: Any) -> None:
        run.record["status"] = status
        try:
            fields: dict[str, Any] = {}
            if graph is None:
                try:
                    graph = await self.graphs.graph(run.graph_id)
                except Exception as exc:
                    log.warning("graph %s for the end of run %s: %s", run.graph_id, run.run_id, exc)
            if run.temporary:
                await self.store.delete_thread(run.thread_id)
                if graph is not None and getattr(graph, "checkpointer", None) is not None:
                    await graph.checkpointer.adelete_thread(run.thread_id)
            elif graph is not None:
                try:  # a run cancelled before it started leaves the thread as its checkpoint says
                    snapshot = await graph.aget_state({"configurable": {"thread_id": run.thread_id}})
                    fields = self._thread_fields(snapshot, status if run.started else "success")
                except Exception as exc:
                    log.warning("state of thread %s after run %s: %s", run.thread_id, run.run_id, exc)
            queued = [r for r in self._by_thread.get(run.thread_id, []) if r is not run]
            if not run.temporary:
                fields["status"] = "busy" if queued else fields.get("status", "error" if status == "error" else "idle")
            await self.store.finish_run(run.run_id, status, run.thread_id, fields)
        except Exception as exc:
            log.exception("recording the end of run %s", run.run_id, exc_info=exc)
        finally:
            self._forget(run)
            self._finished[run.run_id] = run.result()
            while len(self._finished) > 256:
                self._finished.popitem(last=False)
            run.done.set()
            run.wake.set()

    def _forget(self, run: Run) -> None:
        self._active.pop(run.run_id, None)
        runs = self._by_thread.get(run.thread_id, [])
        if run in runs:
            runs.remove(run)
        if not runs:
            self._by_thread.pop(run.thread_id, None)

    # -- following, cancelling ----------------------------------------------------------------------

    def active(self, run_id: str) -> Run | None:
        return self._active.get(run_id)

    def active_runs(self) -> list[Run]:
        return list(self._active.values())

    def finished_result(self, run_id: str) -> Any:
        return self._finished.get(run_id)

    async def follow(self, run: Run, modes: list[str] | None = None) -> AsyncIterator[tuple[str, bytes] | None]:
        """The run's events from its first, as (event name, JSON), until it ends; None after HEARTBEAT
        seconds without one (the reader sends a keep-alive). `error` events always pass."""
        modes = modes or run.modes
        i = 0
        while True:
            while i < len(run.events):
                mode, event, data = run.events[i]
                i += 1
                if mode in modes or mode == "error":
                    yield event, data
            if run.done.is_set():
                return
            try:
                await asyncio.wait_for(run.wake.wait(), HEARTBEAT)
            except asyncio.TimeoutError:
                yield None

    def _cancel(self, run: Run) -> None:
        if run.task is not None and not run.finishing and not run.task.done():
            run.task.cancel()

    async def cancel(self, thread_id: str, run_id: str, *, wait: bool = False, action: str = "interrupt") -> None:
        if action not in ("interrupt", "rollback"):
            raise BadRequest(f"invalid cancel action '{action}'")
        if action == "rollback":
            raise Unsupported("cancel action 'rollback' is not supported (the checkpointer cannot delete a run's "
                              "checkpoints); use 'interrupt'")
        run = self._active.get(run_id)
        if run is None or run.thread_id != thread_id:
            record = await self.store.get_run(run_id)
            if record is None or record["thread_id"] != thread_id:
                raise NotFound(f"Run '{run_id}' not found on thread '{thread_id}'")
            return  # already ended: nothing to cancel
        self._cancel(run)
        if wait:
            await run.done.wait()

    def cancel_soon(self, run: Run) -> None:
        """Cancel without waiting (a streaming client went away)."""
        self._cancel(run)

    async def close(self) -> None:
        """Cancel every run (each records itself `interrupted`), then close the store."""
        runs = list(self._active.values())
        for run in runs:
            self._cancel(run)
        for run in runs:
            if run.task is not None:
                await asyncio.wait({run.task}, timeout=10)
        await self.store.close()


def _config(thread_id: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The config naming a thread (and a checkpoint of it, from an API Checkpoint's fields)."""
    return {"configurable": {"checkpoint_ns": "", **{k: v for k, v in checkpoint.items() if v is not None},
                             "thread_id": thread_id}}


def uuid_v6() -> uuid.UUID:
    """Time-ordered run ids, as LangGraph's server makes them."""
    from langgraph.checkpoint.base.id import uuid6

    return uuid6()
