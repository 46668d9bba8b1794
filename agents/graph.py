"""The built-in agent graph: model → tools → model … until an answer or the step limit.

    START → model ─┬─ calls, step < max_steps → tools → model
                   ├─ calls at max_steps       → limit → END   (done_reason "length")
                   ├─ answer, output_schema    → structure → END   (not for the JSON protocol)
                   └─ answer                   → END

State: `messages` (add_messages) and `steps`, the model calls of the current turn (counted from the
messages since the last user message, so a thread's new turn starts at 0 and an edited state stays
right). The system prompt is the spec's, put in front at each model call, never stored.

The tool node asks for every approval first, with `interrupt()`, and only then runs the step's calls,
all at once (`asyncio.gather`, each under its registry timeout): LangGraph re-runs a resumed node from
its start, so nothing may have run before the last answer is in. A call that fails comes back to the
model as a tool message with the error; the run goes on. Tool progress goes to the `custom` stream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph, add_messages
from langgraph.types import interrupt

from tools import InvalidArguments, Progress, ToolError, ToolFailed, ToolNotFound, ToolTimeout

from .chat_model import CorralChatModel
from .convert import text_of
from .spec import AgentSpec

TOOL_ERRORS = (ToolError, ToolFailed, ToolTimeout, InvalidArguments, ToolNotFound)
APPROVE_WORDS = {"approve", "approved", "yes", "y", "ok", "okay", "allow", "go", "sure", "true"}
REJECT_WORDS = {"reject", "rejected", "no", "n", "deny", "decline", "cancel", "stop", "false"}


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    steps: int


def build_graph(services: Any, spec: AgentSpec, *, model: BaseChatModel | None = None, checkpointer: Any = None):
    """The spec's graph, compiled with `checkpointer`. `model` replaces the engine (a scripted fake in tests)."""
    registry = services.tools
    names = spec.tool_names(registry)
    allowed = set(names)
    schemas = [registry.get(n).spec() for n in names]
    approve = {n for n in names if spec.needs_approval(registry.get(n))}
    base_options = {k: v for k, v in spec.options.items() if k != "tool_choice"}
    chat = model or CorralChatModel(services=services, model=spec.model, options=base_options,
                                    answer_schema=spec.output_schema)
    json_protocol = isinstance(chat, CorralChatModel) and bool(schemas) and chat.uses_json_fallback()

    def run_options(config: RunnableConfig) -> dict:
        return {**spec.options, **((config.get("configurable") or {}).get("options") or {})}

    async def model_node(state: AgentState, config: RunnableConfig) -> dict:
        steps = steps_in_turn(state["messages"])
        options = run_options(config)
        choice = options.pop("tool_choice", None)
        bound = chat.bind_tools(schemas, tool_choice=choice if steps == 0 else None) if schemas else chat
        reply = await bound.ainvoke(prompt(spec.system, state["messages"]), config, options=options)
        return {"messages": [reply], "steps": steps + 1}

    def after_model(state: AgentState) -> str:
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and last.tool_calls:
            return "tools" if state.get("steps", 0) < spec.max_steps else "limit"
        if structured:
            return "structure"
        return END

    async def tools_node(state: AgentState) -> dict:
        last = state["messages"][-1]
        calls = list(last.tool_calls) if isinstance(last, AIMessage) else []
        decisions = [decide(c) if c["name"] in approve else ("run", c.get("args") or {}) for c in calls]
        writer = get_stream_writer()
        results = await asyncio.gather(*(run_call(c, d, writer) for c, d in zip(calls, decisions)))
        return {"messages": list(results)}

    async def run_call(call: dict, decision: tuple[str, Any], writer: Any) -> ToolMessage:
        name, call_id = call["name"], call.get("id") or ""

        def message(text: str, **kw: Any) -> ToolMessage:  # the arguments used go along, for accounts of the step
            return ToolMessage(text, tool_call_id=call_id, name=name, additional_kwargs={"arguments": args}, **kw)

        args = decision[1] if decision[0] == "run" else call.get("args") or {}
        if decision[0] == "declined":
            return message(decision[1], status="error")
        if name not in allowed:
            return message(f"error: tool '{name}' is not available to this agent; its tools: "
                           f"{', '.join(names) or 'none'}", status="error")
        writer({"event": "tool_start", "tool": name, "call_id": call_id, "arguments": args})

        async def progress(p: Progress) -> None:
            writer({"event": "tool_progress", "tool": name, "call_id": call_id, "completed": p.completed,
                    "total": p.total, "status": p.status})

        try:
            result = await services.call_tool(name, args, on_progress=progress)
        except TOOL_ERRORS as exc:
            writer({"event": "tool_end", "tool": name, "call_id": call_id, "error": str(exc)})
            return message(f"error: {exc}", status="error")
        writer({"event": "tool_end", "tool": name, "call_id": call_id})
        return message(result.as_text() or "(no output)", artifact=result.to_dict())

    def limit_node(state: AgentState) -> dict:
        last = state["messages"][-1]
        skipped = [ToolMessage("not run: the step limit was reached", tool_call_id=c.get("id") or "",
                               name=c["name"], status="error") for c in last.tool_calls]
        answer = AIMessage(f"I stopped after {spec.max_steps} steps: the step limit (max_steps={spec.max_steps}) "
                           "was reached before I had an answer.", response_metadata={"done_reason": "length"})
        return {"messages": skipped + [answer]}

    async def structure_node(state: AgentState, config: RunnableConfig) -> dict:
        """The final answer again, written to the output schema by a grammar (tools and schema-constrained
        output cannot share one generation)."""
        last = state["messages"][-1]
        ask = HumanMessage("Write your final answer as JSON following this schema: "
                           + json.dumps(spec.output_schema, ensure_ascii=False))
        options = {k: v for k, v in run_options(config).items() if k != "tool_choice"}
        reply = await chat.ainvoke(prompt(spec.system, state["messages"]) + [ask], config, options=options,
                                   format=spec.output_schema)
        return {"messages": [AIMessage(text_of(reply.content), id=last.id, usage_metadata=reply.usage_metadata,
                                       response_metadata=reply.response_metadata)]}

    structured = spec.output_schema is not None and not json_protocol  # the JSON protocol's answer follows it already
    graph = StateGraph(AgentState)
    graph.add_node("model", model_node)
    graph.add_node("tools", tools_node)
    graph.add_node("limit", limit_node)
    if structured:
        graph.add_node("structure", structure_node)
        graph.add_edge("structure", END)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", after_model, ["tools", "limit", END] + (["structure"] if structured else []))
    graph.add_edge("tools", "model")
    graph.add_edge("limit", END)
    # two supersteps a step, plus the last node: past LangGraph's default of 25 for max_steps > 11
    return graph.compile(checkpointer=checkpointer, name=spec.name).with_config(
        recursion_limit=2 * spec.max_steps + 5)


def decide(call: dict) -> tuple[str, Any]:
    """Ask a person about one call (pauses the run) and read the answer: ("run", arguments) or
    ("declined", the tool message the model gets)."""
    args = call.get("args") or {}
    answer = interrupt({"tool": call["name"], "arguments": args,
                        "question": f"Run {call['name']}({json.dumps(args, ensure_ascii=False)})? "
                                    "Answer yes, no, or edited arguments."})
    return read_decision(answer, args)


def read_decision(answer: Any, args: dict) -> tuple[str, Any]:
    """"approve"/"yes"/True run the call; {"arguments": {...}} runs it with those; "reject"/"no"/False or
    anything else declines it (other text is passed on to the model as the person's reply)."""
    if answer is True or (isinstance(answer, str) and answer.strip().lower().rstrip(".!") in APPROVE_WORDS):
        return "run", args
    if isinstance(answer, dict):
        if isinstance(answer.get("arguments"), dict):
            return "run", answer["arguments"]
        if answer.get("approve") is True or answer.get("action") in ("approve", "yes"):
            return "run", args
        answer = answer.get("reason") or answer.get("message") or False
    said = ""
    if isinstance(answer, str) and answer.strip().lower().rstrip(".!") not in REJECT_WORDS:
        said = f" They said: {answer.strip()}"
    return "declined", f"The person declined this call; it was not run.{said}"


def steps_in_turn(messages: list[BaseMessage]) -> int:
    """Model answers since the last user message: the steps this turn has taken."""
    steps = 0
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            break
        if isinstance(m, AIMessage):
            steps += 1
    return steps


def prompt(system: str, messages: list[BaseMessage]) -> list[BaseMessage]:
    """The spec's system prompt first, merged with system messages the conversation starts with."""
    head = [text_of(m.content) for m in _leading_system(messages)]
    rest = messages[len(head):]
    text = "\n\n".join(t for t in [system, *head] if t)
    return ([SystemMessage(text)] if text else []) + list(rest)


def _leading_system(messages: list[BaseMessage]) -> list[BaseMessage]:
    out = []
    for m in messages:
        if not isinstance(m, SystemMessage):
            break
        out.append(m)
    return out
