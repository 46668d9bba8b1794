"""Grammars that force tool calls, in each template style, with arguments valid for each tool's schema.

Built on the JSON Schema converter (json_schema.py): one call rule per tool, then the style's framing.
"""

from __future__ import annotations

from typing import Any

from .gbnf import SchemaError, _group, _lit, _seq
from .json_schema import _Converter
from .keywords import _TYPES, _json_text


TOOL_CALL_STYLES = ("json", "hermes", "llama3", "mistral")


def _tool_function(tool: Any, index: int) -> tuple[str, Any]:
    if not isinstance(tool, dict):
        raise SchemaError(f"tool #{index}: must be an object")
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else None
    if fn is None:
        raise SchemaError(f"tool #{index}: unsupported tool type {tool.get('type')!r}")
    if not isinstance(fn, dict):
        raise SchemaError(f"tool #{index}: 'function' must be an object")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"tool #{index}: missing function name")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    return name, params


def _validate_tool_params(name: str, params: Any) -> None:
    if params is True or params == {}:
        return
    if not isinstance(params, dict):
        raise SchemaError(f"tool '{name}': parameters must be a JSON schema object")
    typ = params.get("type")
    if isinstance(typ, str) and typ not in _TYPES:
        return  # an unknown type allows any value: the arguments are an object
    if typ is not None and typ != "object" and not (isinstance(typ, list) and typ == ["object"]):
        raise SchemaError(f"tool '{name}': parameters must have type 'object', got {typ!r}")


def tool_call_grammar(tools: list[dict], *, name: str | None = None, style: str = "json",
                      parallel: bool = True) -> str:
    """Grammar forcing one or more tool calls.

    Each call is ``{"name": "<tool>", "arguments": {...}}`` (``"parameters"`` for
    the llama3 style) with arguments valid for that tool's parameter schema.

    Styles:
      * ``json``    one call object, or (``parallel``) a JSON array of call objects.
      * ``hermes``  ``<tool_call>\\n{...}\\n</tool_call>``, several joined by ``\\n``.
      * ``llama3``  ``{"name": ..., "parameters": ...}``, several joined by ``; ``.
      * ``mistral`` ``[TOOL_CALLS][{...}, ...]``.

    ``name`` restricts the calls to that one function.  ``parallel=False`` allows
    exactly one call.
    """
    if style not in TOOL_CALL_STYLES:
        raise ValueError(f"unknown tool call style {style!r}; expected one of {TOOL_CALL_STYLES}")
    if not isinstance(tools, list) or not tools:
        raise SchemaError("tools must be a non-empty list")
    fns: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        fname, params = _tool_function(tool, i)
        if fname in fns:
            raise SchemaError(f"tool '{fname}': duplicate tool name")
        _validate_tool_params(fname, params)
        fns[fname] = params
    if name is not None:
        if name not in fns:
            raise SchemaError(f"tool '{name}': not among the provided tools")
        fns = {name: fns[name]}

    conv = _Converter()
    ws = conv.prim("ws")
    args_key = "parameters" if style == "llama3" else "arguments"
    calls = []
    schemas: dict[str, Any] = {}
    for fname, params in fns.items():
        if params is True or params == {}:
            params = {"type": "object"}
        elif "type" not in params or (isinstance(params["type"], str) and params["type"] not in _TYPES):
            params = {**params, "type": "object"}
        schemas[fname] = params
        hint = f"{fname}-args"
        try:
            args = conv.visit(params, params, hint)
        except SchemaError as exc:
            raise SchemaError(f"tool '{fname}': {exc}") from exc
        body = _seq('"{"', ws, _lit('"name"'), ws, '":"', ws, _lit(_json_text(fname)), ws, '","', ws,
                    _lit(f'"{args_key}"'), ws, '":"', ws, args, ws, '"}"')
        calls.append(conv.add(f"{fname}-call", body))
    call = conv.add("tool-call", _group(calls)) if len(calls) > 1 else calls[0]

    if style == "json":
        root = f'{call} | "[" {ws} {call} {ws} ( "," {ws} {call} {ws} )* "]"' if parallel else call
    elif style == "hermes":
        tc = conv.add("tool-call-block", _seq(_lit("<tool_call>\n"), call, _lit("\n</tool_call>")))
        root = f'{tc} ( "\\n" {tc} )*' if parallel else tc
    elif style == "llama3":
        root = f'{call} ( "; " {call} )*' if parallel else call
    else:  # mistral
        more = f'( "," {ws} {call} {ws} )*' if parallel else ""
        root = _seq('"[TOOL_CALLS]"', '"["', ws, call, ws, more, '"]"')
    try:
        return conv.render(root)
    except SchemaError:  # a recursion that never ends: name the tool whose schema has it
        for fname, params in schemas.items():
            alone = _Converter()
            try:
                alone.check(alone.visit(params, params, "args"))
            except SchemaError as exc:
                raise SchemaError(f"tool '{fname}': {exc}") from exc
        raise
