"""Scripted LangGraph graphs for the LangGraph API tests: no model, every answer fixed.

Compiled without a checkpointer, as graphs named in a `langgraph.json` are: the server attaches its
own. Each graph exercises one part of the protocol:

- `echo`: appends an AIMessage echoing the last human message and writes a custom stream event.
- `approval`: drafts an answer, then `interrupt()`s for approval; the resume value is recorded.
- `slow`: ticks `ticks` times, `delay` seconds apart, writing a custom event per tick (cancel, join,
  multitask tests).
- `failing`: its node raises, for `error` events and `__error__` results.
- `nested`: a parent graph whose node is the `echo` graph, for `stream_subgraphs`.

`InMemoryGraphs` serves them as a `GraphSource` (agents/runs.py) with an in-memory checkpointer, for
tests of the runs layer without a server.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from typing_extensions import TypedDict


def _last_human(state: MessagesState) -> str:
    for message in reversed(state["messages"]):
        if message.type == "human":
            return str(message.content)
    return ""


async def respond(state: MessagesState) -> dict:
    get_stream_writer()({"echoing": _last_human(state)})
    return {"messages": [AIMessage(content=f"echo: {_last_human(state)}")]}


echo = (StateGraph(MessagesState).add_node("respond", respond)
        .add_edge(START, "respond").add_edge("respond", END).compile())


class ApprovalState(MessagesState):
    approved: object


async def draft(state: ApprovalState) -> dict:
    return {"messages": [AIMessage(content=f"draft for: {_last_human(state)}")]}


async def approve(state: ApprovalState) -> dict:
    answer = interrupt({"question": "approve the draft?", "draft": state["messages"][-1].content})
    return {"approved": answer, "messages": [AIMessage(content=f"approved: {answer}")]}


approval = (StateGraph(ApprovalState).add_node("draft", draft).add_node("approve", approve)
            .add_edge(START, "draft").add_edge("draft", "approve").add_edge("approve", END).compile())


class SlowState(TypedDict, total=False):
    ticks: int
    delay: float
    done: Annotated[list[int], operator.add]


async def tick(state: SlowState) -> dict:
    write = get_stream_writer()
    done = []
    for i in range(state.get("ticks", 3)):
        write({"tick": i})
        await asyncio.sleep(state.get("delay", 0.2))
        done.append(i)
    return {"done": done}


slow = StateGraph(SlowState).add_node("tick", tick).add_edge(START, "tick").add_edge("tick", END).compile()


class FailState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


async def explode(state: FailState) -> dict:
    raise ValueError("scripted failure")


failing = (StateGraph(FailState).add_node("explode", explode)
           .add_edge(START, "explode").add_edge("explode", END).compile())


async def wrap_up(state: MessagesState) -> dict:
    return {"messages": [AIMessage(content="wrapped up")]}


nested = (StateGraph(MessagesState).add_node("inner", echo).add_node("wrap_up", wrap_up)
          .add_edge(START, "inner").add_edge("inner", "wrap_up").add_edge("wrap_up", END).compile())


class InMemoryGraphs:
    """A GraphSource of its own: the RunManager needs only `names()` and `graph(name)`."""

    def __init__(self):
        from langgraph.checkpoint.memory import InMemorySaver

        self.checkpointer = InMemorySaver()
        self._graphs = {name: graph.copy(update={"checkpointer": self.checkpointer})
                        for name, graph in (("echo", echo), ("approval", approval), ("slow", slow),
                                            ("failing", failing), ("nested", nested))}

    def names(self) -> list[str]:
        return list(self._graphs)

    async def graph(self, name: str):
        return self._graphs[name]
