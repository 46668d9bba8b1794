"""Tool calling for models without a tools template, through a grammar-constrained JSON reply.

An agent must not depend on its model's template knowing tools (the embedded gemma3:270m does not).
For such a model the tools are described in the system prompt and the reply is forced, by a JSON
Schema grammar, to be one of

    {"action": "answer", "answer": "…"}                          (the answer: a string, or output_schema)
    {"action": "call", "tool": "<name>", "arguments": {…}}      (one branch per tool, its own arguments)

so even a small model writes a call the registry can validate. The history is rewritten to match:
earlier calls become the assistant's JSON, tool results user messages (templates without tools often
drop the `tool` role).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from server.messages import Message

_ANSWER_OPENING = re.compile(r'^\s*\{\s*"action"\s*:\s*"answer"\s*,\s*"answer"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def reply_schema(tools: list[dict], choice: str = "auto", answer_schema: dict | None = None) -> dict:
    """The reply's JSON Schema. tools: OpenAI function dicts; choice: auto, none, required or a tool name."""
    answer = {"type": "object", "additionalProperties": False, "required": ["action", "answer"],
              "properties": {"action": {"const": "answer"}, "answer": answer_schema or {"type": "string"}}}
    calls = [{"type": "object", "additionalProperties": False, "required": ["action", "tool", "arguments"],
              "properties": {"action": {"const": "call"}, "tool": {"const": fn["name"]},
                             "arguments": _inline_refs(fn.get("parameters") or {"type": "object"})}}
             for fn in (t.get("function", t) for t in tools)
             if choice in ("auto", "required") or fn["name"] == choice]
    branches = ([answer] if choice in ("auto", "none") or not calls else []) + (calls if choice != "none" else [])
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def system_prompt(tools: list[dict], answer_schema: dict | None = None) -> str:
    lines = ["You can call tools. Reply with exactly one JSON object and nothing else:",
             '- to call a tool: {"action": "call", "tool": "<tool name>", "arguments": {…}} '
             "(its result comes back in the next message);",
             '- to answer: {"action": "answer", "answer": ' + ("<your answer as JSON, following the schema "
                                                              + json.dumps(answer_schema) + ">}"
                                                              if answer_schema else '"<your answer>"}'),
             "Tools:"]
    for fn in (t.get("function", t) for t in tools):
        lines.append(f"- {fn['name']}: {fn.get('description') or ''} Arguments (JSON Schema): "
                     f"{json.dumps(fn.get('parameters') or {}, ensure_ascii=False)}")
    return "\n".join(lines)


def rewrite_history(messages: list[Message], tools: list[dict], answer_schema: dict | None = None) -> list[Message]:
    """The conversation as a model without tools reads it, the tools' prompt merged into the system one."""
    prompt = system_prompt(tools, answer_schema)
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            text = "\n".join(json.dumps({"action": "call", "tool": c.name, "arguments": c.arguments},
                                        ensure_ascii=False) for c in m.tool_calls)
            out.append(Message("assistant", text))
        elif m.role == "assistant":
            out.append(Message("assistant", json.dumps({"action": "answer", "answer": _answer_value(m.content)},
                                                       ensure_ascii=False)))
        elif m.role == "tool":
            out.append(Message("user", f"Result of {m.tool_name or 'the tool'}:\n{m.content}"))
        else:
            out.append(m)
    if out and out[0].role == "system":
        return [Message("system", f"{out[0].content}\n\n{prompt}")] + out[1:]
    return [Message("system", prompt)] + out


def parse_reply(text: str) -> tuple[str, Any, dict] | None:
    """("answer", text, {}) or ("call", tool, arguments); None when the reply is not such JSON (cut short)."""
    try:
        reply = json.loads(text)
    except ValueError:
        return None
    if not isinstance(reply, dict):
        return None
    if reply.get("action") == "call" and isinstance(reply.get("tool"), str):
        args = reply.get("arguments")
        return "call", reply["tool"], args if isinstance(args, dict) else {}
    if reply.get("action") == "answer" and "answer" in reply:
        answer = reply["answer"]
        return "answer", answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False), {}
    return None


class AnswerStream:
    """Streams a string answer's text out of the JSON reply as it is generated.

    `feed(piece)` returns the answer text the piece completed: nothing until the reply is known to be
    `{"action": "answer", "answer": "`, then the string's characters, JSON escapes decoded, up to its
    closing quote. `streamed` says whether any of the answer went out this way.
    """

    def __init__(self) -> None:
        self.raw = ""
        self._pos = -1  # where the answer string's unread characters start; -1: not known to be an answer
        self._closed = False
        self.streamed = False

    def feed(self, piece: str) -> str:
        self.raw += piece
        if self._closed:
            return ""
        if self._pos < 0:
            m = _ANSWER_OPENING.match(self.raw)
            if not m:
                return ""
            self._pos = m.end()
        out, i, raw = [], self._pos, self.raw
        while i < len(raw):
            ch = raw[i]
            if ch == '"':
                self._closed = True
                break
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            if i + 1 >= len(raw):
                break  # the escape's second character has not come yet
            code = raw[i + 1]
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                i += 2
                continue
            if code != "u":
                i += 2  # not JSON (the grammar never writes it)
                continue
            decoded, used = _unicode_escape(raw, i)
            if used == 0:
                break
            out.append(decoded)
            i += used
        self._pos = i
        text = "".join(out)
        self.streamed = self.streamed or bool(text)
        return text


def _unicode_escape(raw: str, i: int) -> tuple[str, int]:
    """`\\uXXXX` (a surrogate pair as two) at raw[i]: (the character, characters used), or ("", 0) if incomplete."""
    if i + 6 > len(raw):
        return "", 0
    code = int(raw[i + 2:i + 6], 16)
    if 0xD800 <= code < 0xDC00:
        if i + 12 > len(raw):
            return "", 0
        low = int(raw[i + 8:i + 12], 16) if raw[i + 6:i + 8] == "\\u" else 0
        if 0xDC00 <= low < 0xE000:
            return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12
        return "\ufffd", 6
    return chr(code), 6


def _answer_value(content: str) -> Any:
    """An earlier answer as it goes into the JSON history (JSON answers stay JSON)."""
    try:
        value = json.loads(content)
        return value if isinstance(value, (dict, list)) else content
    except ValueError:
        return content


def _inline_refs(schema: dict) -> dict:
    """A tool's parameters with local `$ref`s to its `$defs` written out: the schema is moved under
    `arguments`, where those references would no longer resolve. Recursive definitions stop at depth 8."""
    schema = copy.deepcopy(schema)
    defs = {**schema.pop("definitions", {}), **schema.pop("$defs", {})}
    return _resolve(schema, defs, 0) if defs else schema


def _resolve(value: Any, defs: dict, depth: int) -> Any:
    if isinstance(value, list):
        return [_resolve(v, defs, depth) for v in value]
    if not isinstance(value, dict):
        return value
    ref = value.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and ref.split("/")[-1] in defs:
        if depth >= 8:
            return {}
        rest = {k: v for k, v in value.items() if k != "$ref"}
        return _resolve({**defs[ref.split("/")[-1]], **rest}, defs, depth + 1)
    return {k: _resolve(v, defs, depth) for k, v in value.items()}
