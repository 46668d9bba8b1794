"""Parse tool calls out of model output, incrementally (streaming-aware).

Pure Python, no engine coupling.

Formats (``fmt``):

* ``"hermes"``  (Hermes, Qwen 2.5/3):  ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``,
  several in a row.  A missing closing tag at the end of output is tolerated.
* ``"llama3"``  (Llama 3.x): ``{"name": .., "parameters": {..}}`` (``"arguments"`` too),
  optionally after ``<|python_tag|>``; several separated by ``;`` or newlines.
* ``"mistral"``: ``[TOOL_CALLS] [{"name": .., "arguments": {..}}, ...]`` and the newer
  ``[TOOL_CALLS]name[ARGS]{...}`` (optionally ``name[CALL_ID]id[ARGS]{...}``), repeated.
* ``"json"``: a JSON call object, or an array of them, at the start of the output.
* ``"tag:<TAG>"`` (see :func:`tag_format`): a tag taken from the model's Go template, as
  Ollama's ``tools/template.go`` does (Granite's ``<|tool_call|>``, Command-R's
  ``Action: ```json``), followed by a JSON call or array of calls; an optional closing
  text (Command-R's closing fence, Phi-4's ``<|/tool_call|>``) right after the calls is
  dropped too.
* ``None``: every marker above (but template tags) is recognised.

In every format a JSON call (object or array of call objects) at the very start of
the output -- or right after a previous call -- is recognised too.  A call object
names the tool with ``"name"`` or ``"tool_name"`` (or ``"function"`` as a string) and
carries its arguments in ``"arguments"`` or ``"parameters"`` (an object or a JSON
string); other keys (``"id"``, ``"thought"``, ...) are ignored -- though an object with
neither arguments nor only call keys (``{"answer": 42, "name": ..}``) is no call.  An
OpenAI-style ``{"type": "function", "function": {...}}`` wrapper and, as in Ollama, an
object keyed by a known tool name (``{"get_weather": {"city": ..}}``) are accepted.

Streaming contract (``ToolCallParser``):

* text that cannot be part of a call is returned as ``Content`` at once;
* text that could still turn into a call marker/call is held back only for as
  long as it still can; once it cannot, it is returned as ``Content``;
* a complete call is returned whole as ``ToolCall``;
* a call that fails to parse (bad JSON, unknown tool name, wrong shape) is
  returned verbatim as ``Content`` -- output is never dropped, except the
  whitespace that separates/follows tool calls.

Feeding the output in one piece or one character at a time gives the same
events once adjacent ``Content`` events are merged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Collection, Iterable, Union

from ..messages import ToolCall
from ..template import gotemplate as _gt

__all__ = [
    "Content",
    "Event",
    "ToolCallParser",
    "detect_format",
    "parse_tool_calls",
    "tag_format",
    "template_tool_tag",
    "FORMATS",
    "TAG_PREFIX",
]

FORMATS = ("hermes", "llama3", "mistral", "json")
TAG_PREFIX = "tag:"  # "tag:<TAG>" or "tag:<TAG>\x00<CLOSER>": see tag_format()
_TAG_SEP = "\x00"


@dataclass(frozen=True)
class Content:
    text: str


Event = Union[Content, ToolCall]

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_TAG = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"
MISTRAL_CALL_ID = "[CALL_ID]"

_MARKERS = {
    "hermes": (HERMES_OPEN,),
    "llama3": (PYTHON_TAG,),
    "mistral": (MISTRAL_TAG,),
    "json": (),
    None: (HERMES_OPEN, PYTHON_TAG, MISTRAL_TAG),
}

_NAME_KEYS = ("name", "tool_name")
_ARG_KEYS = ("arguments", "parameters")
_CALL_KEYS = frozenset({*_NAME_KEYS, *_ARG_KEYS, "function", "type", "id"})
_WS = " \t\r\n"
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.:\-]*")
_NAME_VALUE = re.compile(r'\{\s*"(?:name|tool_name)"\s*:\s*"((?:[^"\\]|\\.)*)(")?')

# results of the _try_* helpers
_NEED = "need"  # could still become a call: wait for more text
_BAD = "bad"  # not a call


def detect_format(template_text: str | None, vocab_tokens: Collection[str] | None = None) -> str | None:
    """Pick the tool-call format from a chat template (and optionally the vocabulary).

    ``<tool_call>`` -> hermes, ``[TOOL_CALLS]`` -> mistral, ``<|python_tag|>`` or the
    Llama 3 header tokens -> llama3; else, for a Go template, the tag its
    ``{{ if .ToolCalls }}`` block writes before the JSON (see :func:`template_tool_tag`)
    -> ``"tag:<TAG>"``; otherwise "json".  ``None`` only when there is neither a
    template nor a vocabulary hint.
    """
    text = template_text or ""
    if HERMES_OPEN in text:
        return "hermes"
    if MISTRAL_TAG in text:
        return "mistral"
    if PYTHON_TAG in text or "<|start_header_id|>" in text or "<|eot_id|>" in text:
        return "llama3"
    tagged = template_tool_tag(text) if text else None
    if tagged is not None:
        return tag_format(*tagged)
    if vocab_tokens:
        # no hint in the template: fall back on the vocabulary's special tokens
        if HERMES_OPEN in vocab_tokens:
            return "hermes"
        if MISTRAL_TAG in vocab_tokens:
            return "mistral"
        if PYTHON_TAG in vocab_tokens or "<|start_header_id|>" in vocab_tokens:
            return "llama3"
    if not text and not vocab_tokens:
        return None
    return "json"


def tag_format(tag: str, closer: str = "") -> str:
    """The format string for calls written after ``tag`` (and optionally closed by ``closer``)."""
    if not tag:
        raise ValueError("empty tool call tag")
    return TAG_PREFIX + tag + (_TAG_SEP + closer if closer else "")


def _split_tag_format(fmt: object) -> tuple[str, str] | None:
    if isinstance(fmt, str) and fmt.startswith(TAG_PREFIX):
        tag, _, closer = fmt[len(TAG_PREFIX):].partition(_TAG_SEP)
        if tag:
            return tag, closer
    return None


# -- the tag in a Go template (Ollama's tools/template.go parseTag) ------------------

def _mentions_tool_calls(pipe: _gt.PipeNode) -> bool:
    for cmd in pipe.cmds:
        for arg in cmd.args:
            if isinstance(arg, _gt.FieldNode) and "ToolCalls" in arg.idents:
                return True
            # beyond Ollama: `$msg.ToolCalls` too
            if isinstance(arg, _gt.VariableNode) and "ToolCalls" in arg.idents[1:]:
                return True
    return False


def _find_tool_call_node(nodes: list, kinds: tuple) -> _gt.BranchNode | None:
    """Depth-first, the first ``kinds`` node (if/range/with) whose pipeline names ``.ToolCalls``."""
    for node in nodes:
        if isinstance(node, _gt.ListNode):
            found = _find_tool_call_node(node.nodes, kinds)
        elif isinstance(node, _gt.BranchNode):
            if isinstance(node, kinds) and _mentions_tool_calls(node.pipe):
                return node
            found = _find_tool_call_node(node.list.nodes, kinds)
            if found is None and node.else_list is not None:
                found = _find_tool_call_node(node.else_list.nodes, kinds)
        else:
            continue
        if found is not None:
            return found
    return None


def _find_text(nodes: list, reverse: bool = False) -> str | None:
    """The first (last) non-blank text, stopping at any action, as Ollama's findTextNode."""
    for node in reversed(nodes) if reverse else nodes:
        if isinstance(node, _gt.TextNode):
            if node.text.strip():
                return node.text
        elif isinstance(node, _gt.ListNode):
            text = _find_text(node.nodes, reverse)
            if text is not None:
                return text
        elif isinstance(node, _gt.BranchNode):
            text = _find_text(node.list.nodes, reverse)
            if text is None and node.else_list is not None and not reverse:
                text = _find_text(node.else_list.nodes, reverse)
            return text
        elif isinstance(node, _gt.ActionNode):
            return None
    return None


@lru_cache(maxsize=64)
def template_tool_tag(template_text: str) -> tuple[str, str] | None:
    """``(tag, closer)`` for the tool calls a Go template writes, or None (plain JSON).

    As Ollama's ``parseTag``: the first non-blank text inside the first
    ``{{ if .ToolCalls }}`` (here also a ``range``/``with`` over them when there is no
    such ``if``), up to any ``{``, trimmed.  A trailing ``[`` opens the JSON array of
    calls rather than belonging to the tag (``<|tool_call|>[`` -> ``<|tool_call|>``).
    ``closer``: the last text of that block after the JSON's final ``]``/``}``
    (Command-R's closing fence), or "".
    """
    try:
        tmpl = _gt.parse(template_text, any_func=True)
    except _gt.TemplateError:
        return None  # not a Go template (a Jinja chat template, say)
    node = _find_tool_call_node(tmpl.root.nodes, (_gt.IfNode,))
    if node is None:
        node = _find_tool_call_node(tmpl.root.nodes, (_gt.RangeNode, _gt.WithNode))
    if node is None:
        return None
    text = _find_text(node.list.nodes)
    if text is None:
        return None
    tag = text.replace("\r\n", "\n").partition("{")[0].strip()
    while tag.endswith("["):
        tag = tag[:-1].rstrip()
    if not tag:
        return None
    closer = ""
    last = _find_text(node.list.nodes, reverse=True)
    if last is not None:
        cut = max(last.rfind("}"), last.rfind("]"))
        closer = last[cut + 1:].replace("\r\n", "\n").strip()
        if closer == tag or _TAG_SEP in closer:
            closer = ""
    return tag, closer


class _JsonScan:
    """Resumable scanner finding where a JSON value starting at ``start`` ends."""

    __slots__ = ("start", "pos", "stack", "in_str", "esc", "done", "error")

    def __init__(self, start: int) -> None:
        self.start = start
        self.pos = start
        self.stack: list[str] = []
        self.in_str = False
        self.esc = False
        self.done = False
        self.error = False

    def run(self, text: str) -> None:
        pos, stack, in_str, esc = self.pos, self.stack, self.in_str, self.esc
        n = len(text)
        while pos < n and not self.done and not self.error:
            ch = text[pos]
            pos += 1
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                    if not stack:
                        self.done = True
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                stack.append("}")
            elif ch == "[":
                stack.append("]")
            elif ch in "}]":
                if not stack or stack.pop() != ch:
                    self.error = True
                elif not stack:
                    self.done = True
            elif not stack:
                self.error = True  # only objects/arrays are scanned
        self.pos, self.in_str, self.esc = pos, in_str, esc


def _args_from(value) -> dict | None:
    """Call arguments: an object, a JSON string of one, or null/"" for none."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return None
    if value is None:
        value = {}
    return value if isinstance(value, dict) else None


def _call_from_obj(obj, tool_names: frozenset[str] | None) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict) and not any(k in obj for k in _NAME_KEYS):
        if obj.get("type", "function") != "function":
            return None
        obj = obj["function"]  # OpenAI-style wrapper; its other keys ("id", ...) are ignored
        if not isinstance(obj, dict):
            return None
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str) and obj[k]), None)
    if name is None and isinstance(obj.get("function"), str) and obj["function"]:
        name = obj["function"]
    if name is None:
        return _keyed_call(obj, tool_names)
    if tool_names is not None and name not in tool_names:
        return None
    key = next((k for k in _ARG_KEYS if k in obj), None)
    if key is None:
        # no arguments: a call only if nothing else is there ({"answer": 42, "name": ..} is not)
        return ToolCall(name, {}) if set(obj) <= _CALL_KEYS else None
    args = _args_from(obj[key])
    if args is None and key == "arguments" and "parameters" in obj:
        args = _args_from(obj["parameters"])
    return None if args is None else ToolCall(name, args)


def _keyed_call(obj: dict, tool_names: frozenset[str] | None) -> ToolCall | None:
    """``{"get_weather": {"city": ..}}``: an object keyed by a known tool name (as Ollama)."""
    if tool_names is None:
        return None
    keys = [k for k in obj if k in tool_names]
    if len(keys) != 1:
        return None
    value = obj[keys[0]]
    if not isinstance(value, (dict, str)) or value == "":  # an object, or the JSON text of one
        return None
    args = _args_from(value)
    return None if args is None else ToolCall(keys[0], args)


def _calls_from_json(text: str, tool_names: frozenset[str] | None) -> list[ToolCall] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        return None
    calls = []
    for item in items:
        call = _call_from_obj(item, tool_names)
        if call is None:
            return None
        calls.append(call)
    return calls


class ToolCallParser:
    """Incremental tool-call parser; see the module docstring for the contract."""

    def __init__(self, fmt: str | None, tool_names: Iterable[str] | None) -> None:
        tagged = _split_tag_format(fmt)
        if tagged is None and fmt not in _MARKERS:
            raise ValueError(f"unknown tool call format {fmt!r}; expected one of {FORMATS}, "
                             f"'{TAG_PREFIX}<TAG>' or None")
        self.fmt = fmt
        self.tool_names = None if tool_names is None else frozenset(tool_names)
        self._markers = (tagged[0],) if tagged else _MARKERS[fmt]
        self._closer = tagged[1] if tagged else ""  # optional text closing a tag's calls
        self._closer_ok = False  # the closer may come next
        self._head = max((len(m) for m in self._markers), default=1)
        self._name_prefixes = frozenset(t[:k] for t in self.tool_names or () for k in range(len(t) + 1))
        self._buf = ""
        self._json_ok = True  # a JSON call may start at the head of the buffer (after whitespace)
        self._after_call = False  # the last thing emitted was a tool call
        self._scan: _JsonScan | None = None
        self._finished = False
        self._emitted = False  # anything (content or call) emitted yet
        self._bad_end = 0  # set by the _try_* helpers when they return _BAD

    # -- public -------------------------------------------------------------
    def feed(self, text: str) -> list[Event]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not text:
            return []
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> list[Event]:
        if self._finished:
            return []
        events = self._drain(final=True)
        self._finished = True
        return events

    # -- internals ------------------------------------------------------------
    def _drain(self, final: bool) -> list[Event]:
        out: list[Event] = []
        while self._buf and self._step(final, out):
            pass
        if final and self._buf:
            self._content(self._buf, out)
            self._buf = ""
        # merge adjacent content
        merged: list[Event] = []
        for ev in out:
            if isinstance(ev, Content) and merged and isinstance(merged[-1], Content):
                merged[-1] = Content(merged[-1].text + ev.text)
            elif not (isinstance(ev, Content) and not ev.text):
                merged.append(ev)
        return merged

    def _hold_ws(self) -> bool:
        """Is whitespace at the head of the buffer possibly just padding around calls?"""
        return self._after_call or not self._emitted

    def _content(self, text: str, out: list[Event], before_call: bool = False) -> None:
        if not text:
            return
        if not text.strip(_WS) and (self._after_call or (before_call and not self._emitted)):
            return  # whitespace separating / around tool calls
        out.append(Content(text))
        self._emitted = True
        self._after_call = False
        self._json_ok = False

    def _consume(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._scan = None

    def _calls(self, calls: list[ToolCall], n: int, out: list[Event]) -> None:
        out.extend(calls)
        self._emitted = True
        self._consume(n)
        self._after_call = True
        self._json_ok = True
        self._closer_ok = bool(self._closer)

    def _step(self, final: bool, out: list[Event]) -> bool:
        """Make progress on the buffer; False when it must wait for more text."""
        buf = self._buf
        if self._closer_ok:  # right after a tag's calls: drop its closing text
            j = 0
            while j < len(buf) and buf[j] in _WS:
                j += 1
            if buf.startswith(self._closer, j):
                self._closer_ok = False
                self._consume(j + len(self._closer))
                return True
            if not final and self._closer.startswith(buf[j:]):
                return False  # blank, or a prefix of the closer: wait
            self._closer_ok = False
        if self._json_ok:
            j = 0
            while j < len(buf) and buf[j] in _WS:
                j += 1
            if j == len(buf):
                if final:
                    self._content(buf, out)
                    self._consume(len(buf))
                return False
            ch = buf[j]
            head = buf[j:j + self._head]
            at_marker = any(head.startswith(m) or m.startswith(head) for m in self._markers)
            if ch == ";" and self._after_call:
                self._consume(j + 1)
                return True
            if at_marker:
                pass  # e.g. "[TOOL_CALLS]" is not a JSON array: handled as a marker below
            elif ch in "{[":
                res = self._try_json(buf, j, final)
                if res == _NEED:
                    return False
                if res == _BAD:
                    self._json_ok = False
                    self._content(buf[:j], out)
                    self._content_verbatim(buf[j:self._bad_end], out)
                    self._consume(self._bad_end)
                    return True
                calls, end = res
                self._content(buf[:j], out, before_call=True)
                self._calls(calls, end, out)
                return True
            if not at_marker:
                self._json_ok = False
            # fall through: scan for markers

        # earliest complete marker, and earliest possible partial marker at the end
        best = -1
        marker = ""
        for m in self._markers:
            i = buf.find(m)
            if i >= 0 and (best < 0 or i < best):
                best, marker = i, m
        partial = self._partial_marker_start(buf)
        if best >= 0 and (partial < 0 or best <= partial):
            pre = buf[:best]
            res = self._try_marker(marker, buf, best, final)
            if res == _NEED:
                if pre and not (self._hold_ws() and not pre.strip(_WS)):
                    self._content(pre, out)
                    self._consume(best)
                return False
            if res == _BAD:
                self._content(pre, out)
                self._content_verbatim(buf[best:self._bad_end], out)
                self._consume(self._bad_end)
                return True
            calls, end = res
            self._content(pre, out, before_call=True)
            self._calls(calls, end, out)
            return True
        if partial >= 0 and not final:
            pre = buf[:partial]
            if pre and not (self._hold_ws() and not pre.strip(_WS)):
                self._content(pre, out)
                self._consume(partial)
            return False
        self._content(buf, out)
        self._consume(len(buf))
        return False

    def _content_verbatim(self, text: str, out: list[Event]) -> None:
        if text:
            out.append(Content(text))
            self._emitted = True
            self._after_call = False
            self._json_ok = False

    def _partial_marker_start(self, buf: str) -> int:
        """Start of the longest buffer suffix that is a proper prefix of a marker, or -1."""
        best = -1
        for m in self._markers:
            for k in range(min(len(m) - 1, len(buf)), 0, -1):
                if m.startswith(buf[len(buf) - k:]):
                    pos = len(buf) - k
                    if best < 0 or pos < best:
                        best = pos
                    break
        return best

    # -- candidate calls ----------------------------------------------------------
    # Each returns _NEED, _BAD (with self._bad_end: where the non-call text ends,
    # as an index into the buffer) or (calls, end).

    def _plausible(self, text: str) -> bool:
        """Could ``text`` (the start of a JSON value) still become a call?"""
        return self._implausible_at(text) is None

    def _implausible_at(self, text: str) -> int | None:
        """Length of the shortest prefix of ``text`` that can no longer start a call; None if none.

        Depends on the text only, never on how it was split into chunks, so that a
        rejected candidate ends at the same place however the output arrives.  Looks at
        the head only: ``[``, ``{``, the first key's opening quote (any first key will do:
        unknown keys such as "thought" are ignored in a call) and, when the first key is
        ``name``/``tool_name``, whether its value is (a prefix of) a tool name.
        """
        n, i = len(text), 0
        if text.startswith("["):
            i = 1
            while i < n and text[i] in _WS:
                i += 1
            if i == n:
                return None
            if text[i] != "{":
                return i + 1
        j = i + 1
        while j < n and text[j] in _WS:
            j += 1
        if j == n:
            return None
        if text[j] != '"':
            return j + 1
        if self.tool_names is None:
            return None
        m = _NAME_VALUE.match(text, i)
        if m is None:
            return None
        prefixes = self._name_prefixes
        k = m.start(1)
        while k < m.end(1):  # one character or escape at a time, as the chunks may end
            k += 2 if text[k] == "\\" else 1
            if text[m.start(1):k] not in prefixes:
                return k
        if m.group(2) and m.group(1) not in self.tool_names:
            return m.end(2)
        return None

    def _scan_json(self, buf: str, start: int) -> _JsonScan:
        if self._scan is None or self._scan.start != start:
            self._scan = _JsonScan(start)
        self._scan.run(buf)
        return self._scan

    def _try_json(self, buf: str, start: int, final: bool):
        """JSON call object / array of call objects starting at ``buf[start]``."""
        scan = self._scan_json(buf, start)
        bad = self._implausible_at(buf[start:scan.pos])
        if bad is not None:  # the text before the offending character is no call (that one may start a marker)
            self._bad_end = start + bad - 1
            return _BAD
        if scan.error:
            self._bad_end = scan.pos
            return _BAD
        if not scan.done:
            if not final:
                return _NEED
            self._bad_end = len(buf)
            return _BAD
        calls = _calls_from_json(buf[start:scan.pos], self.tool_names)
        if calls is None:
            self._bad_end = scan.pos
            return _BAD
        return calls, scan.pos

    def _try_marker(self, marker: str, buf: str, at: int, final: bool):
        body = at + len(marker)
        if marker == HERMES_OPEN:
            return self._try_hermes(buf, at, body, final)
        j = self._skip_ws(buf, body, final)
        if isinstance(j, str):  # _NEED or _BAD
            return j
        if buf[j] in "{[":
            res = self._try_json(buf, j, final)
            if res == _BAD:
                self._bad_end = body  # only the marker: the rest is scanned as text
            return res
        if marker == MISTRAL_TAG:
            return self._try_mistral_named(buf, at, j, final)
        self._bad_end = body
        return _BAD

    def _skip_ws(self, buf: str, at: int, final: bool) -> int | str:
        """The first non-blank position from `at`; none yet: _NEED, or _BAD at the end of the output."""
        j = at
        while j < len(buf) and buf[j] in _WS:
            j += 1
        if j < len(buf):
            return j
        if final:
            self._bad_end = len(buf)
            return _BAD
        return _NEED

    def _try_hermes(self, buf: str, at: int, body: int, final: bool):
        # The JSON is scanned (string-aware) before looking for the closing tag: a
        # "</tool_call>" inside an argument string does not end the call.
        j = self._skip_ws(buf, body, final)
        if isinstance(j, str):  # _NEED or _BAD
            return j
        if buf[j] not in "{[":
            self._bad_end = body
            return _BAD
        scan = self._scan_json(buf, j)
        if scan.error or not self._plausible(buf[j:scan.pos]):
            self._bad_end = body
            return _BAD
        if not scan.done:
            if final:
                self._bad_end = len(buf)
                return _BAD
            return _NEED
        k = scan.pos
        while k < len(buf) and buf[k] in _WS:
            k += 1
        if buf.startswith(HERMES_CLOSE, k):
            end = k + len(HERMES_CLOSE)
            calls = _calls_from_json(buf[j:scan.pos], self.tool_names)
            if calls is None:
                self._bad_end = end
                return _BAD
            return calls, end
        rest = buf[k:]
        if rest and not HERMES_CLOSE.startswith(rest):
            self._bad_end = body
            return _BAD
        if not final:
            return _NEED
        # closing tag missing (or cut short) at the end of output: accept the call
        calls = _calls_from_json(buf[j:scan.pos], self.tool_names)
        if calls is None:
            self._bad_end = len(buf)
            return _BAD
        return calls, len(buf)

    def _try_mistral_named(self, buf: str, at: int, j: int, final: bool):
        """``[TOOL_CALLS]name[ARGS]{...}`` (optionally ``name[CALL_ID]id[ARGS]{...}``)."""
        tag_end = at + len(MISTRAL_TAG)

        def bad():
            self._bad_end = tag_end
            return _BAD

        m = _NAME_CHARS.match(buf, j)
        name_end = m.end()
        name = buf[j:name_end]
        if name_end == len(buf):
            if final:
                return bad()
            if self.tool_names is not None and not any(t.startswith(name) for t in self.tool_names):
                return bad()
            return _NEED
        if not name or (self.tool_names is not None and name not in self.tool_names):
            return bad()
        k = name_end
        rest = buf[k:]
        if rest.startswith(MISTRAL_CALL_ID):
            m = _NAME_CHARS.match(buf, k + len(MISTRAL_CALL_ID))
            k = m.end()
            rest = buf[k:]
            if not rest:
                return bad() if final else _NEED
        elif MISTRAL_CALL_ID.startswith(rest):
            return bad() if final else _NEED
        if not rest.startswith(MISTRAL_ARGS):
            if MISTRAL_ARGS.startswith(rest) and not final:
                return _NEED
            return bad()
        a = k + len(MISTRAL_ARGS)
        while a < len(buf) and buf[a] in _WS:
            a += 1
        if a == len(buf):
            return bad() if final else _NEED
        if buf[a] != "{":
            return bad()
        scan = self._scan_json(buf, a)
        if scan.error:
            return bad()
        if not scan.done:
            return bad() if final else _NEED
        try:
            args = json.loads(buf[a:scan.pos])
        except ValueError:
            self._bad_end = scan.pos
            return _BAD
        if not isinstance(args, dict):
            self._bad_end = scan.pos
            return _BAD
        return [ToolCall(name, args)], scan.pos


def parse_tool_calls(text: str, fmt: str | None, tool_names: Iterable[str] | None) -> tuple[str, list[ToolCall]]:
    """Non-streaming convenience: (content text, tool calls) of a complete output."""
    parser = ToolCallParser(fmt, tool_names)
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls = [e for e in events if isinstance(e, ToolCall)]
    return content, calls
