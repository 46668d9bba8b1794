"""One run of a graph as AgentEvents: what `AgentService.run` yields to the "agent served as a model" layer.

The graph is streamed with LangGraph's `messages` mode (answer text as it is generated; LangGraph
itself keeps a message streamed token by token from coming again whole) and `updates` mode (each
node's output: the steps' tool calls and results, usage, the final answer's done_reason, interrupts).

Without a thread the run is stateless: `messages` is the whole history and the graph runs on an
in-memory checkpointer that goes with the run (nothing written to the database, nothing to clean up).
With a thread the state persists and `messages` are the new ones; a thread paused for an approval
takes `resume`, or a single plain user message as the answer ("yes"/"no"; other text declines the
call and is passed on to the model as the person's reply).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from server.errors import BadRequest
from server.messages import Message

from .convert import call_line, text_of, to_langchain
from .events import AgentEvent, Approval, Content, Done, Thinking
from .spec import AgentSpec

RESULT_PREVIEW = 300  # characters of a tool result shown in Thinking


async def run_turn(graph: Any, spec: AgentSpec | None, messages: list[Message | dict], *, thread_id: str | None,
                   resume: Any, options: dict | None) -> AsyncIterator[AgentEvent]:
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id or f"stateless-{uuid.uuid4().hex}",
                                               "options": dict(options or {})}}
    new = to_langchain(messages)
    if thread_id is None:
        if resume is not None:
            raise BadRequest("resume needs a thread: a stateless run keeps nothing to resume")
        graph = graph.copy(update={"checkpointer": InMemorySaver()})
        pending, unfinished = [], False
    else:
        state = await graph.aget_state(config)
        pending, unfinished = list(state.interrupts), bool(state.next)
    if pending and resume is None and new:
        if len(new) != 1 or not isinstance(new[0], HumanMessage):
            raise BadRequest(f"thread '{thread_id}' waits for approval of a call to "
                             f"'{_tool_of(pending[0])}': answer yes or no")
        resume, new = text_of(new[0].content), []  # the person's plain reply answers the question
    if resume is not None:
        if not pending:
            raise BadRequest(f"thread '{thread_id}' has no call waiting for approval")
        if new:
            raise BadRequest("send either resume or messages, not both")
        graph_input: Any = Command(resume=resume)
    elif new:
        graph_input = {"messages": new}
    elif unfinished:
        graph_input = None  # continue a run that stopped part way (a server killed mid-run)
    else:
        raise BadRequest("messages are required")

    stream_nodes = _answer_nodes(spec, graph)
    acc = _Accumulator()
    stream = graph.astream(graph_input, config, stream_mode=["messages", "updates"], durability="sync")
    async with contextlib.aclosing(stream):  # a cancelled consumer cancels the graph, its model calls and tools
        async for mode, chunk in stream:
            if mode == "messages":
                message, meta = chunk
                if stream_nodes is None or meta.get("langgraph_node") in stream_nodes:
                    for event in acc.streamed(message):
                        yield event
            else:
                for event in acc.update(chunk):
                    yield event
    if acc.interrupts:
        for value in acc.interrupts:
            yield Approval(tool=str(value.get("tool", "")), arguments=dict(value.get("arguments") or {}),
                           question=str(value.get("question", "")))
        yield Done("approval", acc.steps, acc.prompt_tokens, acc.eval_tokens)
        return
    missing = [a for a in acc.artifacts if a.get("url") and a["url"] not in acc.answer]
    if missing:
        lines = [f"- {a.get('name') or a.get('media_type') or 'artifact'}: {a['url']}" for a in missing]
        yield Content(("\n\n" if acc.answer else "") + "Artifacts:\n" + "\n".join(lines))
    yield Done(acc.done_reason, acc.steps, acc.prompt_tokens, acc.eval_tokens)


def _answer_nodes(spec: AgentSpec | None, graph: Any) -> set[str] | None:
    """The nodes whose model text is the answer: where the graph rewrites answers to an output schema,
    only the rewritten one."""
    if spec is None:
        return None  # a user's graph: every node
    return {"structure", "limit"} if "structure" in graph.nodes else {"model", "limit"}


def _tool_of(interrupt: Any) -> str:
    value = getattr(interrupt, "value", None)
    return str(value.get("tool", "?")) if isinstance(value, dict) else "?"


class _Accumulator:
    """What the run has said so far: streamed answer text, steps, usage, calls, artifacts."""

    def __init__(self) -> None:
        self.steps = self.prompt_tokens = self.eval_tokens = 0
        self.done_reason = "stop"
        self.answer = ""  # all Content text so far
        self.interrupts: list[dict] = []
        self.artifacts: list[dict] = []
        self._calls: dict[str, tuple[str, Any]] = {}
        self._last_id: str | None = None  # the message the last Content came from

    def streamed(self, message: Any) -> list[AgentEvent]:
        if not isinstance(message, (AIMessage, AIMessageChunk)):
            return []
        events: list[AgentEvent] = []
        reasoning = message.additional_kwargs.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            events.append(Thinking(reasoning))
        text = text_of(message.content)
        if text:
            if self.answer and message.id != self._last_id:
                text = "\n\n" + text  # a later step's text: keep the steps apart
            self._last_id = message.id
            self.answer += text
            events.append(Content(text))
        return events

    def update(self, chunk: dict) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        for node, value in chunk.items():
            if node == "__interrupt__":
                self.interrupts += [i.value if isinstance(i.value, dict) else {"question": str(i.value)}
                                    for i in value]
                continue
            out = value.get("messages", []) if isinstance(value, dict) else []
            out = out if isinstance(out, list) else [out]
            results = []
            for m in out:
                if isinstance(m, AIMessage):
                    self._model_message(m, counts=node not in ("limit", "structure"))
                elif isinstance(m, ToolMessage) and node != "limit":  # the answer says those did not run
                    results.append(m)
            if results:
                events.append(Thinking("\n".join(self._account(m) for m in results)))
        return events

    def _model_message(self, m: AIMessage, *, counts: bool) -> None:
        usage = m.usage_metadata or {}
        self.prompt_tokens += int(usage.get("input_tokens") or 0)
        self.eval_tokens += int(usage.get("output_tokens") or 0)
        if counts:  # a model call (the limit's note and the structured rewrite of an answer are not)
            self.steps += 1
        for c in m.tool_calls:
            self._calls[c.get("id") or ""] = (c["name"], c.get("args") or {})
        if not m.tool_calls:
            self.done_reason = str(m.response_metadata.get("done_reason") or "stop")

    def _account(self, m: ToolMessage) -> str:
        name, args = self._calls.get(m.tool_call_id, (m.name or "?", {}))
        args = m.additional_kwargs.get("arguments", args)  # the arguments it ran with (a person may edit them)
        if isinstance(m.artifact, dict):
            self.artifacts += [a for a in m.artifact.get("artifacts") or [] if isinstance(a, dict)]
        result = text_of(m.content).strip()
        if len(result) > RESULT_PREVIEW:
            result = result[:RESULT_PREVIEW] + "…"
        return f"{call_line(name, args)}\n← {result}"
