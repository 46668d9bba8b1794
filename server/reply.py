"""Split a model's raw text stream into what clients see: content, thinking and tool calls.

Fed the text pieces the engine produces, in order; returns the parts that are certain.
Thinking is the text inside `<think>…</think>` (the prompt may already have opened the
tag). Tool calls are recognised by `toolcalls` in the model's own format; text that
only looked like a call is returned as content, never dropped.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field

from .messages import ToolCall
from .toolcalls import Content, ToolCallParser

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_ID_CHARS = string.ascii_lowercase + string.digits


def call_id() -> str:
    """Ollama's tool call ids: `call_` + 8 random characters."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


@dataclass
class Part:
    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


class ReplyParser:
    def __init__(self, *, think: bool, in_thinking: bool = False, tool_format: str | None = None,
                 tool_names: list[str] | None = None):
        self.think = think
        self.thinking = think and in_thinking
        self.seen_text = False
        self.pending = ""  # text that may be the start of a think tag
        self.strip = False  # drop whitespace right after a think tag opens or closes
        self.tools = ToolCallParser(tool_format, tool_names) if tool_names else None
        self.calls = 0

    def feed(self, text: str) -> Part:
        return self._process(text, final=False)

    def finish(self) -> Part:
        return self._process("", final=True)

    def _process(self, text: str, final: bool) -> Part:
        part = Part()
        content = self._split_thinking(text, part, final) if self.think else text
        if self.tools is None:
            part.content += content
            return part
        events = self.tools.feed(content) if content else []
        if final:
            events += self.tools.finish()
        for event in events:
            if isinstance(event, Content):
                part.content += event.text
            elif isinstance(event, ToolCall):
                part.tool_calls.append(ToolCall(event.name, event.arguments, id=call_id(), index=self.calls))
                self.calls += 1
        return part

    def _split_thinking(self, text: str, part: Part, final: bool) -> str:
        """Move thinking into `part.thinking`; return the rest (content)."""
        buf = self.pending + text
        self.pending = ""
        content = ""
        while buf:
            if self.strip:
                buf = buf.lstrip()
                if not buf:
                    break
                self.strip = False
            if self.thinking:
                end = buf.find(THINK_CLOSE)
                if end < 0:
                    keep = _partial_suffix(buf, THINK_CLOSE) if not final else 0
                    part.thinking += buf[: len(buf) - keep]
                    self.pending = buf[len(buf) - keep:]
                    return content
                part.thinking += buf[:end]
                buf = buf[end + len(THINK_CLOSE):]
                self.thinking = False
                self.seen_text = True
                self.strip = True
                continue
            if not self.seen_text:
                stripped = buf.lstrip()
                if not stripped:
                    if final:
                        content += buf
                    else:
                        self.pending = buf
                    return content
                if stripped.startswith(THINK_OPEN):
                    buf = stripped[len(THINK_OPEN):]
                    self.thinking = True
                    self.strip = True
                    continue
                if THINK_OPEN.startswith(stripped) and not final:
                    self.pending = buf
                    return content
                self.seen_text = True
            content += buf
            buf = ""
        return content


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


def prompt_opens_thinking(prompt: str) -> bool:
    """Templates such as Qwen 3's end the prompt inside an open <think> block (Ollama's test: the
    prompt ends with the tag; a <think> quoted earlier in the conversation opens nothing)."""
    return prompt.rstrip().endswith(THINK_OPEN)
