"""Wire types of the LangGraph API (the Agent Protocol subset `langgraph_sdk` and `RemoteGraph` use).

Request bodies are msgspec Structs, decoded strictly by `wire.decode` (400 on a wrong type); fields
the SDK sends that Corral ignores (LangSmith tracing, feedback keys) are declared so they decode, and
unknown fields pass (newer SDKs add some). Free-form protocol values (graph input, state values,
metadata, config) stay `Any`/dicts. Responses are plain dicts shaped as the SDK's TypedDicts in
`langgraph_sdk/schema.py` (Assistant, Thread, Run, ThreadState, GraphSchema).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

import msgspec

from agents.threads import jsonable
from server.errors import BadRequest

Limit = Annotated[int, msgspec.Meta(ge=0, le=10_000)]
Offset = Annotated[int, msgspec.Meta(ge=0)]
SortOrder = Literal["asc", "desc"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
RunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted"]


class RunCreate(msgspec.Struct, kw_only=True):
    """POST /threads/{id}/runs[/stream|/wait] and /runs[/stream|/wait]."""

    assistant_id: str
    input: Any = None
    command: dict[str, Any] | None = None
    stream_mode: str | list[str] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: str | None = None
    checkpoint_during: bool | None = None  # deprecated by the SDK: durability
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    feedback_keys: list[str] | None = None  # LangSmith's: ignored
    webhook: str | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] | None = None
    if_not_exists: Literal["create", "reject"] | None = None
    on_disconnect: Literal["cancel", "continue"] | None = None
    on_completion: Literal["delete", "keep"] | None = None
    after_seconds: float | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    strict_resume: bool | None = None  # Corral always refuses a resume with no pending interrupt
    langsmith_tracer: dict[str, Any] | None = None  # ignored
    thread_id: str | None = None  # /runs/batch items name their thread


class ThreadCreate(msgspec.Struct, kw_only=True):
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None
    supersteps: list[dict[str, Any]] | None = None
    ttl: Any = None


class ThreadPatch(msgspec.Struct, kw_only=True):
    metadata: dict[str, Any] | None = None
    ttl: Any = None


class ThreadSearch(msgspec.Struct, kw_only=True):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    ids: list[str] | None = None
    status: ThreadStatus | None = None
    limit: Limit = 10
    offset: Offset = 0
    sort_by: Literal["thread_id", "status", "created_at", "updated_at", "state_updated_at"] | None = None
    sort_order: SortOrder | None = None
    select: list[str] | None = None
    extract: dict[str, Any] | None = None


class StateUpdate(msgspec.Struct, kw_only=True):
    values: Any = None
    as_node: str | None = None
    checkpoint_id: str | None = None
    checkpoint: dict[str, Any] | None = None


class StateAtCheckpoint(msgspec.Struct, kw_only=True):
    checkpoint: dict[str, Any]
    subgraphs: bool = False
    select: list[str] | None = None


class HistoryRequest(msgspec.Struct, kw_only=True):
    limit: Limit = 10
    before: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    select: list[str] | None = None


class AssistantSearch(msgspec.Struct, kw_only=True):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: Limit = 10
    offset: Offset = 0
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: SortOrder | None = None
    select: list[str] | None = None


class RunsCancel(msgspec.Struct, kw_only=True):
    thread_id: str | None = None
    run_ids: list[str] | None = None
    status: Literal["pending", "running", "all"] | None = None


def flag(query: Any, name: str, default: bool = False) -> bool:
    """A boolean query parameter as the SDK sends them (`true`/`false`, `1`/`0`)."""
    raw = query.get(name)
    return default if raw is None else raw.strip().lower() in ("1", "true", "yes")


def integer(query: Any, name: str, default: int) -> int:
    """A non-negative integer query parameter; BadRequest naming it otherwise."""
    raw = query.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise BadRequest(f"query parameter '{name}' must be an integer, not '{raw}'") from None
    if value < 0:
        raise BadRequest(f"query parameter '{name}' must not be negative")
    return value


def select(record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """The record with only the `select`ed fields (all when none are named)."""
    return {k: v for k, v in record.items() if k in fields} if fields else record


def assistant(graph_id: str, assistant_id: str, created_at: str) -> dict[str, Any]:
    """The assistant LangGraph's server registers for a graph of its config (`created_by: system`)."""
    return {"assistant_id": assistant_id, "graph_id": graph_id, "config": {}, "context": {},
            "created_at": created_at, "updated_at": created_at, "metadata": {"created_by": "system"},
            "version": 1, "name": graph_id, "description": None}


def thread(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("thread_id", "created_at", "updated_at", "metadata", "status", "values",
                                       "interrupts")}


def empty_state(thread_id: str) -> dict[str, Any]:
    """The state of a thread no run has touched (no graph, no checkpoint)."""
    return {"values": {}, "next": [], "tasks": [], "metadata": {}, "created_at": None, "parent_checkpoint": None,
            "checkpoint": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": None, "checkpoint_map": None},
            "interrupts": []}


def schemas(graph_id: str, graph: Any) -> dict[str, Any]:
    """A graph's GraphSchema: JSON Schemas of its input, output, state, config and context (None where the
    graph cannot give one, as LangGraph's server leaves them)."""
    def attempt(make: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return jsonable(make())
        except Exception:  # "missing if unable to generate JSON schema from graph"
            return None

    def state() -> Any:
        from pydantic import TypeAdapter

        return TypeAdapter(graph.builder.state_schema).json_schema()

    return {"graph_id": graph_id, "input_schema": attempt(graph.get_input_jsonschema),
            "output_schema": attempt(graph.get_output_jsonschema),
            "state_schema": attempt(state) or attempt(graph.get_output_jsonschema),
            "config_schema": attempt(graph.get_config_jsonschema),
            "context_schema": attempt(graph.get_context_jsonschema)}


def frame(event: str, data: bytes) -> bytes:
    """One SSE event: its name and one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
