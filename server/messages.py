"""The chat types of the in-process text API: messages, tool definitions and tool calls.

They read the same going in as coming out: the assistant message an answer gives (`Answer.message`)
goes back into the next request as it is, and a tool result is a `Message.tool_result(call, text)`.
`to_dict()` gives the nested shape Ollama's wire format and chat templates use
(`{"id", "function": {"name", "arguments", "index"}}`); `from_dict()` takes that shape and the flat
`{"id", "name", "arguments"}` one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)
    id: str | None = None
    index: int | None = None  # position among the answer's calls, where the model numbered them

    def to_dict(self) -> dict:
        function: dict[str, Any] = {"name": self.name, "arguments": self.arguments}
        if self.index is not None:
            function["index"] = self.index
        out: dict[str, Any] = {"function": function}
        if self.id:
            out["id"] = self.id
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ToolCall":
        fn = d.get("function") if isinstance(d.get("function"), dict) else d
        return cls(name=fn.get("name") or "", arguments=fn.get("arguments") or {}, id=d.get("id"),
                   index=fn.get("index"))


@dataclass
class Message:
    role: str  # system, user, assistant or tool (templates may know others)
    content: str = ""
    thinking: str = ""
    images: list[str] | None = None  # base64
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_name: str = ""  # on a tool result: the tool that gave it
    tool_call_id: str = ""  # on a tool result: the call it answers

    @classmethod
    def tool_result(cls, call: ToolCall, content: str) -> "Message":
        return cls(role="tool", content=content, tool_name=call.name, tool_call_id=call.id or "")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.thinking:
            out["thinking"] = self.thinking
        if self.images:
            out["images"] = self.images
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_name:
            out["tool_name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Message":
        return cls(role=d.get("role") or "", content=d.get("content") or "", thinking=d.get("thinking") or "",
                   images=d.get("images") or None,
                   tool_calls=[ToolCall.from_dict(c) for c in d.get("tool_calls") or []],
                   tool_name=d.get("tool_name") or "", tool_call_id=d.get("tool_call_id") or "")


@dataclass
class ToolSpec:
    """A function the model may call: its name, what it does, and a JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_dict(self) -> dict:
        """OpenAI's function-tool shape, which Ollama's `tools` field takes too."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    @classmethod
    def from_dict(cls, d: dict) -> "ToolSpec":
        fn = d.get("function") if isinstance(d.get("function"), dict) else d
        return cls(name=fn.get("name") or "", description=fn.get("description") or "",
                   parameters=fn.get("parameters") or {})


def message_dict(m: Message | dict) -> dict:
    return m.to_dict() if isinstance(m, Message) else m


def tool_dict(t: ToolSpec | dict) -> dict:
    return t.to_dict() if isinstance(t, ToolSpec) else t
