"""Ollama's prompt rendering (``template/template.go``) on top of :mod:`.gotemplate`.

Three ways a template is executed, as in Ollama's ``Template.Execute``:

* a /api/generate request with both prompt and suffix: ``.Prompt .Suffix`` (fill-in-the-middle);
* templates that reference ``.Messages``: one pass over ``.System .Messages .Tools``;
* legacy templates: one pass per turn with ``.System .Prompt .Response``, concatenated, where the
  final pass is cut just after ``{{ .Response }}`` so the model continues the reply from there.

Templates are given Ollama's view of the request: the field names of its Go structs
(``.Role .Content .ToolCalls .Function.Arguments`` ...), and ``json``/printing of tools and
arguments yields the JSON that Go's ``encoding/json`` would.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from .gotemplate import (
    ActionNode, BranchNode, CommandNode, FieldNode, ListNode, Node, PipeNode, Struct, Template,
    VariableNode, BUILTINS, NilMap, NilSlice, go_json, parse,
)

__all__ = ["render_chat", "render_generate", "template_variables"]


# ---------------------------------------------------------------------------- Go-shaped values


class _JSONStringer:
    """A Go type whose ``String()`` method returns its JSON (Ollama's template* types)."""

    def __go_str__(self) -> str:
        return BUILTINS["json"](self)


class _JSONMap(_JSONStringer, dict):  # templateArgs, templateProperties
    pass


class _JSONList(_JSONStringer, list):  # templateTools
    pass


class _JSONStruct(_JSONStringer, Struct):  # templateTool (and, see below, its function/parameters)
    pass


class _OrderedMap(dict):
    """``*api.ToolPropertiesMap``: marshals in insertion order; a non-nil pointer is never empty."""

    def __go_json__(self) -> str:
        return "{" + ",".join(go_json(str(k)) + ":" + go_json(v) for k, v in self.items()) + "}"

    def __go_empty__(self) -> bool:
        return False


class _PropertyType(list):
    """``api.PropertyType``: one JSON-schema type marshals as a string, several as an array."""

    def __go_json__(self) -> str:
        return go_json(self[0] if len(self) == 1 else list(self))

    def __go_str__(self) -> str:
        return "" if not self else self[0] if len(self) == 1 else "[" + " ".join(self) + "]"


_PROPERTY_TAGS = {
    "AnyOf": "anyOf,omitempty", "Type": "type,omitempty", "Items": "items,omitempty",
    "Description": "description,omitempty", "Enum": "enum,omitempty",
    "Properties": "properties,omitempty", "Required": "required,omitempty",
}


def _property(p: Any) -> Struct:
    """A JSON-schema property as ``api.ToolProperty`` (unknown keywords are dropped, as Go does)."""
    p = p if isinstance(p, dict) else {}
    t = p.get("type")
    nested = p.get("properties")
    return Struct({
        "AnyOf": [_property(x) for x in p.get("anyOf") or []],
        "Type": _PropertyType([t] if isinstance(t, str) else list(t or [])),
        "Items": p.get("items"),
        "Description": p.get("description") or "",
        "Enum": list(p.get("enum") or []),
        "Properties": _OrderedMap({k: _property(v) for k, v in nested.items()}) if isinstance(nested, dict) else None,
        "Required": list(p.get("required") or []),
    }, _PROPERTY_TAGS)


def _tool(t: dict) -> Struct:
    """A request tool as Ollama's ``templateTool`` (``.Type .Function.Name .Function.Parameters`` ...)."""
    fn = t.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    return _JSONStruct({
        "Type": t.get("type") or "",
        "Items": t.get("items"),
        "Function": _JSONStruct({
            "Name": fn.get("name") or "",
            "Description": fn.get("description") or "",
            "Parameters": _JSONStruct({
                "Type": params.get("type") or "",
                "Defs": params.get("$defs"),
                "Items": params.get("items"),
                "Required": list(params.get("required") or []),
                "Properties": (_JSONMap({k: _property(v) for k, v in props.items()}) if isinstance(props, dict)
                               else NilMap("{}", "template.templateProperties")),
            }, {"Type": "type", "Defs": "$defs,omitempty", "Items": "items,omitempty",
                "Required": "required,omitempty", "Properties": "properties"}),
        }, {"Name": "name", "Description": "description", "Parameters": "parameters"}),
    }, {"Type": "type", "Items": "items,omitempty", "Function": "function"})


def _tool_call(tc: dict) -> Struct:
    fn = tc.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI-style JSON text
        try:
            args = json.loads(args)
        except ValueError:
            args = {}
    return Struct({
        "ID": tc.get("id") or "",
        "Function": Struct({
            "Index": fn.get("index") or 0,
            "Name": fn.get("name") or "",
            "Arguments": _JSONMap(args if isinstance(args, dict) else {}),
        }),
    })


def _message(m: dict) -> Struct:
    """A message as Ollama's ``templateMessage`` (no JSON tags: ``json`` shows Go field names)."""
    return Struct({
        "Role": m["role"],
        "Content": m.get("content") or "",
        "Thinking": m.get("thinking") or "",
        "Images": list(m.get("images") or []),
        "ToolCalls": [_tool_call(tc) for tc in m.get("tool_calls") or []],
        "ToolName": m.get("tool_name") or "",
        "ToolCallID": m.get("tool_call_id") or "",
    })


def _to_typescript_type(v: Any) -> str:
    """Ollama's ``toTypeScriptType`` for an ``api.ToolProperty``."""
    if not isinstance(v, Struct) or "AnyOf" not in v.fields:
        return "any"
    if v.fields["AnyOf"]:
        return " | ".join(_to_typescript_type(x) for x in v.fields["AnyOf"])
    names = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}
    return " | ".join(names.get(t, "any") for t in v.fields["Type"]) or "any"


_FUNCS = {"toTypeScriptType": _to_typescript_type}


# ---------------------------------------------------------------------------- template analysis


def _identifiers(node: Node | None) -> list[str]:
    """Ollama's ``Identifiers``: names in fields and variables (not in declarations or chains)."""
    if isinstance(node, ListNode):
        return [i for n in node.nodes for i in _identifiers(n)]
    if isinstance(node, ActionNode):
        return _identifiers(node.pipe)
    if isinstance(node, BranchNode):
        return _identifiers(node.pipe) + _identifiers(node.list) + _identifiers(node.else_list)
    if isinstance(node, PipeNode):
        return [i for c in node.cmds for a in c.args for i in _identifiers(a)]
    if isinstance(node, (FieldNode, VariableNode)):
        return list(node.idents)
    return []


def _cut_after_response(root: ListNode) -> ListNode:
    """Ollama's ``deleteNode`` pass: keep everything up to and including the first
    ``{{ .Response }}`` field (in document order, not looking into if/range/with conditions)
    and drop every node after it."""
    cut = False

    def gone(n: Node) -> bool:
        nonlocal cut
        if isinstance(n, FieldNode) and "Response" in n.idents:
            cut = True
            return False
        return cut

    def walk(n: Node) -> Node | None:
        if gone(n):
            return None
        if isinstance(n, ListNode):
            return ListNode(n.pos, [w for c in n.nodes if (w := walk(c)) is not None])
        if isinstance(n, BranchNode):
            lst = walk(n.list)
            # Go panics when the cut happens inside the if-branch of an if/else; we drop the else.
            els = walk(n.else_list) if n.else_list is not None else None
            return type(n)(n.pos, n.pipe, lst if isinstance(lst, ListNode) else ListNode(n.pos, []),
                           els if isinstance(els, ListNode) else None)
        if isinstance(n, ActionNode):
            pipe = walk(n.pipe)
            return ActionNode(n.pos, pipe) if isinstance(pipe, PipeNode) else None
        if isinstance(n, PipeNode):
            cmds = []
            for c in n.cmds:
                args = [w for a in c.args if (w := walk(a)) is not None]
                if not args:
                    return None
                cmds.append(CommandNode(c.pos, args))
            return PipeNode(n.pos, n.decl, n.is_assign, cmds) if cmds else None
        return n

    out = walk(root)
    return out if isinstance(out, ListNode) else ListNode(root.pos, [])


@lru_cache(maxsize=64)
def _prepare(text: str) -> tuple[Template, frozenset[str], Template]:
    """Parse like Ollama's ``template.Parse``: returns (template, Vars(), final-turn template)."""
    tmpl = parse(text, _FUNCS)
    names = {i.lower() for i in _identifiers(tmpl.root)}
    if "messages" not in names and "response" not in names:
        # Ollama appends {{ .Response }} so legacy templates end where the reply goes
        response = ActionNode(len(text), PipeNode(len(text), [], False, [CommandNode(len(text), [FieldNode(len(text), ["Response"])])]))
        tmpl = Template(ListNode(tmpl.root.pos, tmpl.root.nodes + [response]), text, tmpl.funcs)
        names.add("response")
    final = Template(_cut_after_response(tmpl.root), text, tmpl.funcs)
    return tmpl, frozenset(names), final


def template_variables(template_text: str) -> set[str]:
    """Ollama's ``Template.Vars()``: every field/variable name the template references,
    lower-cased, at any depth (``.Tools`` -> "tools", ``$.Messages`` -> "$", "messages",
    ``.Function.Name`` -> "function", "name"), plus "response" that Ollama's parse appends to
    templates lacking both ``.Messages`` and ``.Response``.  Capabilities follow Ollama:
    "tools" -> tools, "suffix" -> insert."""
    return set(_prepare(template_text)[1])


# ---------------------------------------------------------------------------- execution


def _think_values(think: bool | None, think_level: str | None) -> dict[str, Any]:
    """``.Think .ThinkLevel .IsThinkSet`` as Ollama derives them from the request's ``think``
    (``true`` means level "medium"; a level string means enabled at that level)."""
    if think is None and think_level is None:
        return {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if think is False or (think is None and not think_level):
        return {"Think": False, "ThinkLevel": "", "IsThinkSet": True}
    level = think_level or "medium"
    return {"Think": level in ("high", "medium", "low", "max"), "ThinkLevel": level, "IsThinkSet": True}


def _collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """Ollama's ``collate``: join all system contents; merge consecutive same-role messages
    (except tool results) with a blank line between contents."""
    system: list[str] = []
    out: list[dict] = []
    for raw in messages:
        m = {**raw, "role": str(raw.get("role") or "").lower(), "content": raw.get("content") or ""}
        if m["role"] == "system":
            system.append(m["content"])
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1]["content"] += "\n\n" + m["content"]
        else:
            out.append(m)
    return "\n\n".join(system), out


def _execute(
    template_text: str,
    messages: list[dict],
    tools: list[dict] | None,
    *,
    prompt: str = "",
    suffix: str = "",
    think: bool | None = None,
    think_level: str | None = None,
) -> str:
    tmpl, names, final = _prepare(template_text)
    tv = _think_values(think, think_level)
    if prompt and suffix:
        return tmpl.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **tv})
    system, msgs = _collate(messages)
    if "messages" in names:
        return tmpl.execute({
            "System": system,
            "Messages": [_message(m) for m in msgs],
            "Tools": NilSlice("null", "template.templateTools") if tools is None else _JSONList(_tool(t) for t in tools),
            "Response": "",
            **tv,
        })

    # legacy: one execution per (system, prompt, response) turn; tool messages are skipped
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl.execute({**turn, **tv}))
        turn.update(System="", Prompt="", Response="")

    for m in msgs:
        if m["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m["content"]
        elif m["role"] == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m["content"]
        elif m["role"] == "assistant":
            turn["Response"] = m["content"]
    out.append(final.execute({**turn, **tv}))
    return "".join(out)


def render_chat(
    template_text: str,
    messages: list[dict],
    tools: list[dict] | None = None,
    *,
    think: bool | None = None,
    think_level: str | None = None,
) -> str:
    """Render an /api/chat conversation with an Ollama Go template, as Ollama does.

    ``messages``: ``{"role", "content", "thinking"?, "tool_calls"?: [{"function": {"name",
    "arguments"}}], "tool_name"?, "tool_call_id"?, "images"?}``; ``tools``: /api/chat tool dicts.
    A trailing assistant message is a prefill: the output ends with its content.
    """
    return _execute(template_text, messages, tools, think=think, think_level=think_level)


def render_generate(
    template_text: str,
    *,
    prompt: str,
    system: str = "",
    suffix: str = "",
    response: str = "",
    history: list[dict] | None = None,
    think: bool | None = None,
    think_level: str | None = None,
) -> str:
    """Render an /api/generate prompt as Ollama does: with a suffix (and a prompt) the template
    sees ``.Prompt .Suffix``; otherwise the request is the conversation [system?, *history, user
    prompt] (``history``: the Modelfile's MESSAGEs; rendered with an empty, non-nil tool list),
    plus ``response`` as an assistant prefill."""
    if suffix:
        return _execute(template_text, [], None, prompt=prompt, suffix=suffix, think=think, think_level=think_level)
    messages = (([{"role": "system", "content": system}] if system else []) + list(history or [])
                + [{"role": "user", "content": prompt}])
    if response:
        messages.append({"role": "assistant", "content": response})
    return _execute(template_text, messages, [], think=think, think_level=think_level)
