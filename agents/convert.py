"""Corral's chat types (server.messages) to LangChain's messages and back.

LangGraph keeps a thread's history as LangChain messages; the engine reads Corral's `Message`. A tool
call keeps its id both ways, so a tool result still answers the call it belongs to.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from server.messages import Message, ToolCall


def text_of(content: Any) -> str:
    """A message's text: LangChain content may be a list of blocks ({"type": "text", "text": …})."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
    return "".join(parts)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def to_corral(messages: list[BaseMessage]) -> list[Message]:
    out: list[Message] = []
    names: dict[str, str] = {}  # call id -> tool name, for tool results that do not carry the name
    for m in messages:
        text = text_of(m.content)
        if isinstance(m, SystemMessage):
            out.append(Message("system", text))
        elif isinstance(m, HumanMessage):
            out.append(Message("user", text))
        elif isinstance(m, AIMessage):
            calls = [ToolCall(c["name"], dict(c.get("args") or {}), id=c.get("id")) for c in m.tool_calls]
            names.update({c.id: c.name for c in calls if c.id})
            out.append(Message("assistant", text, thinking=str(m.additional_kwargs.get("reasoning_content") or ""),
                               tool_calls=calls))
        elif isinstance(m, ToolMessage):
            out.append(Message("tool", text, tool_name=m.name or names.get(m.tool_call_id, ""),
                               tool_call_id=m.tool_call_id or ""))
        else:  # ChatMessage and the like: the role as it is (templates may know it)
            out.append(Message(getattr(m, "role", None) or m.type, text))
    return out


def to_langchain(messages: list[Message | dict]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in messages:
        m = Message.from_dict(m) if isinstance(m, dict) else m
        role = (m.role or "").lower()
        if role in ("system", "developer"):
            out.append(SystemMessage(m.content))
        elif role == "assistant":
            calls = [{"name": c.name, "args": c.arguments if isinstance(c.arguments, dict) else {},
                      "id": c.id or new_call_id(), "type": "tool_call"} for c in m.tool_calls]
            extra = {"reasoning_content": m.thinking} if m.thinking else {}
            out.append(AIMessage(m.content, tool_calls=calls, additional_kwargs=extra))
        elif role == "tool":
            out.append(ToolMessage(m.content, tool_call_id=m.tool_call_id or "", name=m.tool_name or None))
        else:
            out.append(HumanMessage(m.content))
    return out


def call_line(name: str, args: Any) -> str:
    return f"→ {name}({json.dumps(args, ensure_ascii=False)})"
