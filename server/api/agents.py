"""Agents over HTTP: `/api/agents` (create, list, show, delete), and agents served as models.

Served as models: `/api/tags` and `/v1/models` list agents (family `agent`), `/api/show` describes
them, and `/api/chat` and `/v1/chat/completions` run them over the request's messages. A run's steps
(its tool calls and a short account of their results) go out as thinking, the answer as content, so
`ollama run <agent>` shows the steps dimmed and the answer plain; the agent's tools run here and are
never handed to the client as `tool_calls`. Stateless unless the client names a thread
(`X-Corral-Thread` header or `options.thread_id`); on a thread, an approval question is answered by
the next message ("yes"/"no").
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, delete, get, post

from agents.events import AgentEvent, Approval, Content, Done, Thinking

from ..messages import Message
from ..services import Services
from . import types as t
from .flow import service_errors
from .wire import APIError, decode, json_response, rfc3339

THREAD_HEADER = "x-corral-thread"
_SERVED_SINCE = time.time()


def services(request: Request) -> Services:
    return request.app.state.services


def agent_name(svc: Services, model: str) -> str | None:
    """The agent a request's `model` names, or None when it names no agent (then it is a model)."""
    name = (model or "").removesuffix(":latest")
    try:
        return name if name in svc.agents.names() else None
    except Exception:  # the agents extra is missing: no agent is served, models still are
        return None


def thread_of(request: Request, options: dict | None) -> str | None:
    thread = request.headers.get(THREAD_HEADER) or (options or {}).get("thread_id")
    if thread is not None and (not isinstance(thread, str) or not thread.strip() or len(thread) > 200):
        raise APIError(400, "invalid thread id: a non-empty string of at most 200 characters")
    return thread or None


def run(svc: Services, name: str, messages: list[Message], request: Request, options: dict | None
        ) -> AsyncIterator[AgentEvent]:
    """The agent's run; options other than `thread_id` go to the agent's model."""
    thread = thread_of(request, options)
    model_options = {k: v for k, v in (options or {}).items() if k != "thread_id"} or None
    return svc.agents.run(name, messages, thread_id=thread, options=model_options)


def approval_text(event: Approval) -> str:
    return event.question or (f"Approve calling {event.tool} with {json.dumps(event.arguments)}? "
                              "Answer yes or no.")


# ---- /api/agents ---------------------------------------------------------------------------------


def _info(svc: Services, name: str) -> t.AgentInfo:
    spec = svc.agents.spec(name)
    if spec is None:  # a user's own graph (langgraph.json)
        return t.AgentInfo(name=name, kind="graph")
    d = spec.to_dict()
    return t.AgentInfo(name=name, kind="agent", model=spec.model, system=spec.system, tools=spec.tools,
                       max_steps=spec.max_steps, options=spec.options, approve=spec.approve,
                       output_schema=spec.output_schema, description=spec.description,
                       digest=hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest())


@get("/api/agents")
async def list_agents(request: Request) -> Response:
    svc = services(request)
    with service_errors():  # without the agents extra: 501 naming it
        names = svc.agents.names()
    return json_response(t.AgentList(agents=[_info(svc, n) for n in names]))


@post("/api/agents", status_code=200)
async def create_agent(request: Request) -> Response:
    req = await decode(request, t.AgentDefinition)
    svc = services(request)
    definition = {k: v for k, v in _struct_dict(req).items() if v is not None}
    if _is_model(svc, req.name):
        raise APIError(400, f"agent '{req.name}': a model of that name is in the store")
    with service_errors():
        spec = svc.agents.create(definition)
    return json_response(_info(svc, spec.name))


@get("/api/agents/{name:str}")
async def show_agent(request: Request, name: str) -> Response:
    svc = services(request)
    if agent_name(svc, name) is None:
        with service_errors():
            svc.agents.require()  # the missing extra says so (501)
        raise APIError(404, f"agent '{name}' not found")
    return json_response(_info(svc, agent_name(svc, name)))


@delete("/api/agents/{name:str}", status_code=200)
async def delete_agent(request: Request, name: str) -> Response:
    svc = services(request)
    with service_errors():
        svc.agents.delete(name)
    return Response(content=b"", status_code=200)


def _is_model(svc: Services, name: str) -> bool:
    try:
        svc.inference.model(name)
        return True
    except Exception:
        return False


def _modified(svc: Services, name: str) -> float:
    """When the agent's file last changed (a user graph: when the server started)."""
    try:
        return (svc.settings.data_dir / "agents" / f"{name}.json").stat().st_mtime
    except OSError:
        return _SERVED_SINCE


def _struct_dict(s: Any) -> dict:
    import msgspec

    return msgspec.structs.asdict(s)


# ---- agents among the models ---------------------------------------------------------------------


def tag_entries(svc: Services) -> list[t.ListModel]:
    """Agents as /api/tags lists models (family `agent`)."""
    out = []
    try:
        names = svc.agents.names()
    except Exception:
        return out
    for name in names:
        info = _info(svc, name)
        out.append(t.ListModel(name=name, model=name, modified_at=rfc3339(_modified(svc, name)), size=0,
                               digest=info.digest or hashlib.sha256(name.encode()).hexdigest(),
                               details=t.ModelDetails(parent_model=info.model or "", format="agent", family="agent",
                                                      families=["agent"])))
    return out


def show(svc: Services, name: str) -> t.ShowResponse:
    """/api/show for an agent: its base model, tools and system prompt."""
    info = _info(svc, name)
    lines = [f"FROM {info.model}"] if info.model else []
    if info.system:
        lines.append(f'SYSTEM """{info.system}"""')
    return t.ShowResponse(
        modelfile="# an agent: " + (info.description or name) + "\n" + "\n".join(lines) + "\n",
        parameters="", template="",
        details=t.ModelDetails(parent_model=info.model or "", format="agent", family="agent", families=["agent"]),
        model_info={"agent.kind": info.kind, "agent.model": info.model, "agent.tools": info.tools or [],
                    "agent.max_steps": info.max_steps, "agent.approve": info.approve},
        capabilities=["completion"], modified_at=rfc3339(_modified(svc, name)), system=info.system or None,
    )


def chat_line(model: str, event: AgentEvent, now: str) -> t.ChatResponse:
    """One /api/chat NDJSON line for an agent event."""
    if isinstance(event, Done):
        return t.ChatResponse(model=model, created_at=now, done=True,
                              done_reason="length" if event.done_reason == "length" else "stop",
                              message=t.ResponseMessage(role="assistant", content=""),
                              prompt_eval_count=event.prompt_tokens, eval_count=event.eval_tokens)
    thinking = event.text + "\n" if isinstance(event, Thinking) else None
    content = approval_text(event) if isinstance(event, Approval) else event.text if isinstance(event, Content) else ""
    return t.ChatResponse(model=model, created_at=now, done=False,
                          message=t.ResponseMessage(role="assistant", content=content, thinking=thinking))


async def gather_chat(it: AsyncIterator[t.ChatResponse], first: t.ChatResponse) -> t.ChatResponse:
    """A streamed agent chat put together: thinking and content joined, the last line's stats."""
    content, thinking, line = [], [], first
    while True:
        content.append(line.message.content)
        thinking.append(line.message.thinking or "")
        if line.done:
            break
        line = await it.__anext__()
    line.message = t.ResponseMessage(role="assistant", content="".join(content), thinking="".join(thinking) or None)
    return line


async def chat_lines(svc: Services, name: str, model: str, messages: list[Message], request: Request,
                     options: dict | None) -> AsyncIterator[t.ChatResponse]:
    from .wire import now

    events = run(svc, name, messages, request, options)
    answered = False  # an approval question after answer text starts a paragraph of its own
    try:
        async for event in events:
            line = chat_line(model, event, now())
            if isinstance(event, Approval) and answered:
                line.message.content = "\n\n" + line.message.content
            answered = answered or bool(line.message.content)
            yield line
    finally:
        await events.aclose()  # cancels the run, its model requests and its tools


ROUTES = [list_agents, create_agent, show_agent, delete_agent]
