"""What the /v1 routes share: OpenAI's error shape, SSE framing, and the translation of OpenAI request
fields (sampling, reasoning effort, response formats, images, messages, tools) into the service's terms."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Stream

from ..inference import Delta, Final, Inference
from ..messages import ToolCall
from ..reply import call_id
from . import openai_types as o
from .errors import status_for
from .wire import APIError, encode

FINGERPRINT = "fp_ollama"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# reasoning_effort → Ollama's think value
EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                  "high": "high", "max": "max"}


def services(request: Request) -> Inference:
    return request.app.state.inference


# ---- errors --------------------------------------------------------------------------------


def bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def error_body(status: int, message: str, param: str | None = None) -> o.ErrorResponse:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return o.ErrorResponse(error=o.Error(message=message, type=kind, param=param))


def _error(status: int, message: str, param: str | None = None) -> Response:
    return Response(content=encode(error_body(status, message, param)), status_code=status,
                    media_type="application/json")


def _on_api_error(_: Request, exc: APIError) -> Response:
    return _error(exc.status, exc.message, exc.param)


def http_error(_: Request, exc: HTTPException) -> Response:
    message = "method not allowed" if exc.status_code == 405 else (exc.detail or "error")
    return _error(exc.status_code, message)


def _on_unexpected(_: Request, exc: Exception) -> Response:
    return _error(*status_for(exc))  # status_for logs what it does not recognise


# ---- shared translation ------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.randbelow(1_000_000)}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _options(*, temperature: float | None, top_p: float | None, max_tokens: int | None = None,
             stop: str | list[str] | None = None, seed: int | None = None, frequency_penalty: float | None = None,
             presence_penalty: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI's sampling fields as Ollama options (OpenAI's defaults), then `options` over them."""
    opts: dict[str, Any] = {
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
    }
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    if stop is not None:
        opts["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if seed is not None:
        opts["seed"] = seed
    if frequency_penalty is not None:
        opts["frequency_penalty"] = frequency_penalty
    if presence_penalty is not None:
        opts["presence_penalty"] = presence_penalty
    opts.update(extra or {})
    return opts


def _think(effort: str | None, fallback: bool | str | None = None,
           param: str = "reasoning_effort") -> bool | str | None:
    if not effort:
        return fallback
    if effort.lower() not in EFFORTS:
        raise bad(f"invalid reasoning value: {effort!r} (must be one of {', '.join(EFFORTS)})", param)
    return EFFORTS[effort.lower()]


def _schema_format(schema: Any, name: str | None, param: str) -> Any:
    """A JSON schema for structured output: the root must be an object, as OpenAI requires."""
    if schema is None:
        return "json"
    label = f"Invalid schema for response_format '{name or 'response'}'"
    if not isinstance(schema, dict):
        raise bad(f"{label}: the schema must be a JSON object, got {_json_type(schema)}", param)
    kind = schema.get("type")
    if kind is not None and kind != "object":
        raise bad(f"{label}: schema must be a JSON Schema of 'type: \"object\"', got 'type: {json.dumps(kind)}'",
                  param)
    return schema


def _json_type(value: Any) -> str:
    return {str: "a string", list: "an array", dict: "an object", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _format(kind: str, schema: Any, name: str | None, param: str) -> Any:
    kind = kind.strip().lower()
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return _schema_format(schema, name, param)
    raise bad(f"invalid response format type {kind!r}: expected text, json_object or json_schema", param)


def _image(url: str, param: str) -> str:
    """A data URI → the base64 the service takes. Remote URLs are not fetched."""
    if not url.startswith("data:"):
        raise bad("only data URIs are supported for images (data:image/png;base64,…); remote URLs are not fetched",
                  param)
    header, sep, data = url[5:].partition(",")
    mime, _, encoding = header.partition(";")
    if not sep or encoding.lower() != "base64" or (mime and not mime.lower().startswith("image/")):
        raise bad("invalid image data URI: expected data:image/<type>;base64,<data>", param)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad("invalid image data: not valid base64", param) from None
    return data


def _arguments(value: Any, param: str) -> dict[str, Any]:
    """Tool call arguments as clients send them (a JSON string) → the object the service takes."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if not isinstance(value, str):
        raise bad("tool call arguments must be a JSON string", param)
    try:
        args = json.loads(value)
    except ValueError as exc:
        raise bad(f"invalid tool call arguments: {exc}", param) from None
    if not isinstance(args, dict):
        raise bad(f"invalid tool call arguments: expected a JSON object, got {_json_type(args)}", param)
    return args


def _wire_calls(calls: list[ToolCall] | None, start: int) -> list[o.ToolCall]:
    """The service's tool calls → OpenAI's, arguments as a JSON string, indexed from `start`."""
    return [o.ToolCall(id=call.id or call_id(), index=start + k,
                       function=o.FunctionCall(name=call.name, arguments=json.dumps(call.arguments,
                                                                                     ensure_ascii=False,
                                                                                     separators=(",", ":"))))
            for k, call in enumerate(calls or [])]


def _finish_reason(final: Final, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if final.done_reason == "length" else "stop"


def _usage(final: Final) -> o.Usage:
    return o.Usage(prompt_tokens=final.prompt_tokens, completion_tokens=final.eval_count,
                   total_tokens=final.prompt_tokens + final.eval_count,
                   prompt_tokens_details=o.PromptTokensDetails(cached_tokens=_cached(final)),
                   completion_tokens_details=o.CompletionTokensDetails(reasoning_tokens=final.reasoning_tokens))


def _cached(final: Final) -> int:
    """Prompt tokens the prefix cache supplied (OpenAI's cached_tokens)."""
    return max(0, final.prompt_tokens - final.prompt_eval_count)


def _token_logprobs(delta: Delta) -> list[o.TokenLogprob]:
    return [
        o.TokenLogprob(token=lp.token, logprob=lp.logprob, bytes=lp.bytes,
                       top_logprobs=[o.TopLogprob(token=x.token, logprob=x.logprob, bytes=x.bytes) for x in top])
        for lp, top in delta.logprobs or []
    ]


def _sse(obj: Any) -> bytes:
    return b"data: " + encode(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _event_stream(events: AsyncIterator[bytes]) -> Stream:
    return Stream(content=events, media_type="text/event-stream", headers=SSE_HEADERS)


def _stream_error(exc: Exception) -> bytes:
    return _sse(error_body(*status_for(exc)))


def _check_tool_results(messages: list[dict], param: str, *, one_per_message: bool) -> None:
    """OpenAI's rule (Ollama's own API has none): a tool result answers a call made earlier.
    `one_per_message`: messages[i] came from param[i], so the error can point at it."""
    call_ids: set[str] = set()
    calls_seen = False
    for i, m in enumerate(messages):
        where = f"{param}[{i}]" if one_per_message else param
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls_seen = True
            call_ids.update(c["id"] for c in m["tool_calls"] if c.get("id"))
        elif m["role"] == "tool":
            if not calls_seen:
                raise bad("a tool message must follow an assistant message with tool_calls", where)
            if m.get("tool_call_id") and call_ids and m["tool_call_id"] not in call_ids:
                raise bad(f"tool message answers unknown tool_call_id {m['tool_call_id']!r}", where)


def _check_function_tool(kind: str, i: int) -> None:
    if kind != "function":
        raise bad(f"unsupported tool type {kind!r}: only function tools are supported", f"tools[{i}].type")


def _function_tool(name: str, description: str | None, parameters: Any) -> dict:
    """A function tool in the form ChatParams takes (Ollama's)."""
    fn: dict[str, Any] = {"name": name}
    if description is not None:
        fn["description"] = description
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}
