"""OpenAI's API (`/v1/…`): translate OpenAI wire requests to the inference service and back.

No generation logic lives here: every route builds `ChatParams` / `GenerateParams`, runs
`Inference`, and turns its `Delta` / `Final` items into OpenAI's objects and SSE events.
Errors on these routes have OpenAI's shape, `{"error": {message, type, param, code}}`.

What differs from Ollama's own API, as Ollama's OpenAI layer does it: temperature and top_p
default to 1.0; tool call arguments travel as JSON strings; streams are SSE. Corral also takes
an `options` object (Ollama options, e.g. num_ctx) merged over the translated fields, and
honours tool_choice.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from agents.events import Approval, Content as AgentContent, Done as AgentDone, Thinking

from ..inference import MAX_EMBED_INPUTS, ChatParams, Delta, Final, GenerateParams, Inference
from ..messages import Message, ToolCall
from ..reply import call_id
from . import agents
from . import openai_types as o
from .errors import raise_for, status_for
from .flow import respond, service_call
from .wire import APIError, decode, encode, json_response, until_complete

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


# ---- /v1/chat/completions ----------------------------------------------------------------


def _parts(content: str | list[o.ContentPart] | None, param: str) -> tuple[str, list[str]]:
    """Message content → (text, base64 images). Text parts are joined with newlines."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for k, part in enumerate(content):
        if isinstance(part, o.TextPart):
            texts.append(part.text)
        elif isinstance(part, o.RefusalPart):
            texts.append(part.refusal)
        else:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            images.append(_image(url, f"{param}[{k}].image_url"))
    return "\n".join(texts), images


def _chat_messages(messages: list[o.ChatMessage]) -> list[dict]:
    """OpenAI messages → the service's (Ollama's) message dicts."""
    out: list[dict] = []
    names: dict[str, str] = {}  # tool call id → function name, to label tool results
    for i, m in enumerate(messages):
        role = m.role.lower()
        if role == "developer":
            role = "system"
        text, images = _parts(m.content, f"messages[{i}].content")
        msg: dict[str, Any] = {"role": role, "content": text}
        if images:
            msg["images"] = images
        thinking = m.reasoning or m.reasoning_content
        if thinking:
            msg["thinking"] = thinking
        if m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                args = _arguments(c.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
                calls.append({"id": c.id or None, "function": {"name": c.function.name, "arguments": args, "index": j}})
                if c.id:
                    names[c.id] = c.function.name
            msg["tool_calls"] = calls
        if role == "tool":
            if m.tool_call_id:
                msg["tool_call_id"] = m.tool_call_id
            name = m.name or names.get(m.tool_call_id or "")
            if name:
                msg["tool_name"] = name
        out.append(msg)
    _check_tool_results(out, "messages", one_per_message=True)
    return out


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


def _chat_tools(tools: list[o.Tool] | None) -> list[dict] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        _check_function_tool(tool.type, i)
        out.append(_function_tool(tool.function.name, tool.function.description, tool.function.parameters))
    return out


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


def _chat_params(req: o.ChatCompletionRequest) -> ChatParams:
    if not req.messages:
        raise bad("[] is too short - 'messages'", "messages")
    if req.n not in (None, 1):
        raise bad("n must be 1: one choice is generated per request", "n")
    fmt = None
    if req.response_format is not None:
        js = req.response_format.json_schema
        if req.response_format.type.strip().lower() == "json_schema" and js is None:
            raise bad("response_format.json_schema is required when type is json_schema", "response_format")
        fmt = _format(req.response_format.type, js.schema if js else None, js.name if js else None,
                      "response_format")
    effort = req.reasoning_effort or (req.reasoning.effort if req.reasoning else None)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return ChatParams(
        model=req.model,
        messages=_chat_messages(req.messages),
        tools=_chat_tools(req.tools),
        format=fmt,
        options=_options(temperature=req.temperature, top_p=req.top_p,
                         max_tokens=max_tokens,
                         stop=req.stop, seed=req.seed, frequency_penalty=req.frequency_penalty,
                         presence_penalty=req.presence_penalty, extra=req.options),
        keep_alive=req.keep_alive,
        think=_think(effort, req.think),
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
        tool_choice=req.tool_choice,
    )


@post("/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response | Stream:
    req = await decode(request, o.ChatCompletionRequest)
    inference = services(request)
    name = agents.agent_name(request.app.state.services, req.model)
    if name is not None:
        return await _agent_completion(request, req, name)
    params = _chat_params(req)
    cid, created = _new_id("chatcmpl-"), int(time.time())
    if req._debug_render_only:
        rendered = await service_call(inference.render_chat_only(params))
        return json_response(o.ChatCompletion(id=cid, object="chat.completion", created=created, model=req.model,
                                              system_fingerprint=FINGERPRINT, choices=[],
                                              _debug_info={"rendered_template": rendered}))

    it = inference.chat(params)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def collect(first: Delta | Final) -> o.ChatCompletion:
        text, thinking, calls, lps = [], [], [], []
        item = first
        while not isinstance(item, Final):
            text.append(item.content)
            thinking.append(item.thinking)
            calls.extend(_wire_calls(item.tool_calls, len(calls)))
            lps.extend(_token_logprobs(item))
            item = await it.__anext__()
        content = "".join(text)
        message = o.AssistantMessage(role="assistant", content=content if content or not calls else None,
                                     reasoning="".join(thinking) or None, tool_calls=calls or None)
        choice = o.Choice(index=0, message=message, finish_reason=_finish_reason(item, bool(calls)),
                          logprobs=o.ChoiceLogprobs(content=lps) if params.logprobs else None)
        return o.ChatCompletion(id=cid, object="chat.completion", created=created, model=req.model,
                                system_fingerprint=FINGERPRINT, choices=[choice], usage=_usage(item))

    return await respond(request, it, stream=bool(req.stream), gathered=collect, streamed=lambda first: _event_stream(
        _chat_stream(first, it, cid, created, req.model, include_usage)))


async def _chat_stream(first: Delta | Final, it: AsyncIterator[Delta | Final], cid: str, created: int, model: str,
                       include_usage: bool) -> AsyncIterator[bytes]:
    """SSE chunks: role first, then content / reasoning / tool call deltas, a finishing chunk with an
    empty delta, the usage chunk when asked for, and `[DONE]`. Closing this closes the generation."""

    def chunk(delta: o.ChunkDelta, finish: str | None = None, logprobs: list[o.TokenLogprob] | None = None) -> bytes:
        choice = o.ChunkChoice(index=0, delta=delta, finish_reason=finish,
                               logprobs=o.ChoiceLogprobs(content=logprobs) if logprobs else None)
        return _sse(o.ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=model,
                                          system_fingerprint=FINGERPRINT, choices=[choice]))

    calls = 0
    started = False
    try:
        item = first
        while True:
            if isinstance(item, Final):
                if not started:
                    yield chunk(o.ChunkDelta(role="assistant", content=""))
                yield chunk(o.ChunkDelta(), finish=_finish_reason(item, calls > 0))
                if include_usage:
                    yield _sse(o.ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created,
                                                     model=model, system_fingerprint=FINGERPRINT, choices=[],
                                                     usage=_usage(item)))
                yield DONE
                return
            tool_calls = _wire_calls(item.tool_calls, calls)
            calls += len(tool_calls)
            logprobs = _token_logprobs(item)
            delta = o.ChunkDelta(content=item.content or None, reasoning=item.thinking or None,
                                 tool_calls=tool_calls or None)
            if not started:
                started = True
                delta.role, delta.content = "assistant", item.content
                yield chunk(delta, logprobs=logprobs)
            elif delta.content or delta.reasoning or delta.tool_calls or logprobs:
                yield chunk(delta, logprobs=logprobs)
            item = await it.__anext__()
    except Exception as exc:  # the status is already 200: report in-band, as OpenAI does
        yield _stream_error(exc)
    finally:
        await it.aclose()


async def _agent_completion(request: Request, req: o.ChatCompletionRequest, name: str) -> Response | Stream:
    """An agent as a chat model (server/api/agents.py): its steps as reasoning (`reasoning` and
    `reasoning_content`), its answer as content; its tools run here, never as client tool calls."""
    messages = [Message.from_dict(m) for m in _chat_messages(req.messages or [])]
    if not messages:
        raise bad("messages must hold at least one message", "messages")
    cid, created = _new_id("chatcmpl-"), int(time.time())
    events = agents.run(request.app.state.services, name, messages, request, req.options)

    def usage(done: AgentDone) -> o.Usage:
        return o.Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.eval_tokens,
                       total_tokens=done.prompt_tokens + done.eval_tokens)

    def finish(done: AgentDone) -> str:
        return "length" if done.done_reason == "length" else "stop"

    def text(event: Any) -> tuple[str, str]:
        """(content, reasoning) of an event."""
        if isinstance(event, Thinking):
            return "", event.text + "\n"
        if isinstance(event, Approval):
            return agents.approval_text(event), ""
        return (event.text, "") if isinstance(event, AgentContent) else ("", "")

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: o.ChunkDelta, finish_reason: str | None = None) -> bytes:
        return _sse(o.ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=req.model,
                                          system_fingerprint=FINGERPRINT,
                                          choices=[o.ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)]))

    async def stream(first: Any) -> AsyncIterator[bytes]:
        try:
            yield chunk(o.ChunkDelta(role="assistant", content=""))
            event = first
            while not isinstance(event, AgentDone):
                content, reasoning = text(event)
                if content or reasoning:
                    yield chunk(o.ChunkDelta(content=content or None, reasoning=reasoning or None,
                                             reasoning_content=reasoning or None))
                event = await events.__anext__()
            yield chunk(o.ChunkDelta(), finish(event))
            if include_usage:
                yield _sse(o.ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created,
                                                 model=req.model, system_fingerprint=FINGERPRINT, choices=[],
                                                 usage=usage(event)))
            yield DONE
        except Exception as exc:  # the status is already 200: report in-band
            yield _stream_error(exc)
        finally:
            await events.aclose()

    async def whole(first: Any) -> o.ChatCompletion:
        contents, reasonings, event = [], [], first
        while not isinstance(event, AgentDone):
            content, reasoning = text(event)
            contents.append(content)
            reasonings.append(reasoning)
            event = await events.__anext__()
        message = o.AssistantMessage(role="assistant", content="".join(contents),
                                     reasoning="".join(reasonings) or None)
        return o.ChatCompletion(id=cid, object="chat.completion", created=created, model=req.model,
                                system_fingerprint=FINGERPRINT, usage=usage(event),
                                choices=[o.Choice(index=0, message=message, finish_reason=finish(event))])

    return await respond(request, events, stream=bool(req.stream), gathered=whole,
                         streamed=lambda first: _event_stream(stream(first)))


# ---- /v1/completions ---------------------------------------------------------------------


def _prompt(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        if len(value) > 1:
            raise bad("only one prompt per request is supported", "prompt")
        return value[0] if value else ""
    if isinstance(value, list):
        raise bad("token arrays are not supported as prompt: send text", "prompt")
    raise bad(f"prompt must be a string, got {_json_type(value)}", "prompt")


def _completion_logprobs(delta: Delta, offset: int) -> tuple[o.CompletionLogprobs, int]:
    lp = o.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for chosen, top in delta.logprobs or []:
        lp.tokens.append(chosen.token)
        lp.token_logprobs.append(chosen.logprob)
        lp.top_logprobs.append({x.token: x.logprob for x in top})
        lp.text_offset.append(offset)
        offset += len(chosen.token)
    return lp, offset


def _merge_logprobs(into: o.CompletionLogprobs, more: o.CompletionLogprobs) -> None:
    into.tokens += more.tokens
    into.token_logprobs += more.token_logprobs
    into.top_logprobs += more.top_logprobs
    into.text_offset += more.text_offset


@post("/completions", status_code=200)
async def completions(request: Request) -> Response | Stream:
    req = await decode(request, o.CompletionRequest)
    inference = services(request)
    prompt = _prompt(req.prompt)
    if req.n not in (None, 1) or req.best_of not in (None, 1):
        raise bad("n and best_of must be 1: one choice is generated per request", "n")
    if req.echo:
        raise bad("echo is not supported", "echo")
    if req.logprobs is not None and not 0 <= req.logprobs <= 20:
        raise bad("logprobs must be between 0 and 20", "logprobs")
    params = GenerateParams(
        model=req.model, prompt=prompt, suffix=req.suffix or "", raw=bool(req.raw),
        options=_options(temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens, stop=req.stop,
                         seed=req.seed, frequency_penalty=req.frequency_penalty,
                         presence_penalty=req.presence_penalty, extra=req.options),
        keep_alive=req.keep_alive, logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0,
    )
    cid, created = _new_id("cmpl-"), int(time.time())

    def completion(text: str, finish: str | None, logprobs: o.CompletionLogprobs | None = None,
                   usage: o.Usage | None = None, **extra: Any) -> o.Completion:
        return o.Completion(id=cid, object="text_completion", created=created, model=req.model,
                            system_fingerprint=FINGERPRINT, usage=usage,
                            choices=[o.CompletionChoice(text=text, index=0, finish_reason=finish, logprobs=logprobs)],
                            **extra)

    if req._debug_render_only:
        rendered = await service_call(inference.render_generate_only(params))
        return json_response(completion("", None, _debug_info={"rendered_template": rendered}))

    it = inference.generate(params)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events(first: Delta | Final) -> AsyncIterator[bytes]:
        offset = 0
        try:
            item = first
            while not isinstance(item, Final):
                logprobs = None
                if params.logprobs:
                    logprobs, offset = _completion_logprobs(item, offset)
                if item.content or logprobs:
                    yield _sse(completion(item.content, None, logprobs))
                item = await it.__anext__()
            yield _sse(completion("", _finish_reason(item, False)))
            if include_usage:
                yield _sse(o.Completion(id=cid, object="text_completion", created=created, model=req.model,
                                        system_fingerprint=FINGERPRINT, choices=[], usage=_usage(item)))
            yield DONE
        except Exception as exc:
            yield _stream_error(exc)
        finally:
            await it.aclose()

    async def collect(first: Delta | Final) -> o.Completion:
        text: list[str] = []
        logprobs = o.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        offset = 0
        item = first
        while not isinstance(item, Final):
            text.append(item.content)
            if params.logprobs:
                more, offset = _completion_logprobs(item, offset)
                _merge_logprobs(logprobs, more)
            item = await it.__anext__()
        return completion("".join(text), _finish_reason(item, False), logprobs if params.logprobs else None,
                          usage=_usage(item))

    return await respond(request, it, stream=bool(req.stream), gathered=collect,
                         streamed=lambda first: _event_stream(events(first)))


# ---- /v1/embeddings ----------------------------------------------------------------------


def _embed_inputs(value: Any) -> list[str]:
    if value is None:
        raise bad("input is required", "input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    if isinstance(value, list) and all(isinstance(x, (int, list)) and not isinstance(x, bool) for x in value):
        raise bad("token arrays are not supported as input: send a string or a list of strings", "input")
    raise bad("input must be a string or a list of strings", "input")


@post("/embeddings", status_code=200)
async def embeddings(request: Request) -> Response:
    req = await decode(request, o.EmbeddingRequest)
    inference = services(request)
    inputs = _embed_inputs(req.input)
    fmt = (req.encoding_format or "float").lower()
    if fmt not in ("float", "base64"):
        raise bad(f"invalid encoding_format {req.encoding_format!r}: expected float or base64", "encoding_format")
    if req.dimensions is not None and req.dimensions < 1:
        raise bad("dimensions must be greater than zero", "dimensions")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise bad(f"too many inputs: {len(inputs)}; at most {MAX_EMBED_INPUTS} in one request", "input")
    if not inputs:
        await service_call(inference.load(req.model, req.options, req.keep_alive))
        vectors, n_tokens = [], 0
    else:  # a client that goes away cancels the embedding (it stops after the batch under way)
        work = inference.embed(req.model, inputs, truncate=req.truncate is not False, options=req.options,
                               keep_alive=req.keep_alive, dimensions=req.dimensions)
        result = await until_complete(request, work, None, raise_for)
        vectors, n_tokens = result.vectors, result.prompt_tokens
    data = []
    for i, v in enumerate(vectors):
        value: list[float] | str = v
        if fmt == "base64":
            value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")
        data.append(o.Embedding(embedding=value, index=i))
    return json_response(o.EmbeddingList(data=data, model=req.model,
                                         usage=o.EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens)))


# ---- /v1/models --------------------------------------------------------------------------


@get("/models")
async def list_models(request: Request) -> Response:
    inference = services(request)
    entries = sorted(inference.store.list(), key=lambda e: e.modified, reverse=True)
    served = [o.Model(id=e.name.display, created=int(e.modified), owned_by=e.name.namespace) for e in entries]
    served += [o.Model(id=m.name, created=int(_rfc3339_seconds(m.modified_at)), owned_by="agent")
               for m in agents.tag_entries(request.app.state.services)]
    return json_response(o.ModelList(data=served))


def _rfc3339_seconds(stamp: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@get("/models/{model:path}")
async def retrieve_model(request: Request, model: Path) -> Response:
    inference = services(request)
    model_name = str(model).strip("/")  # names have slashes (namespace/model:tag); the path keeps them
    for m in agents.tag_entries(request.app.state.services):
        if m.name == model_name.removesuffix(":latest"):
            return json_response(o.Model(id=m.name, created=int(_rfc3339_seconds(m.modified_at)), owned_by="agent"))
    try:
        entry = inference.model(model_name).entry
    except Exception as exc:
        raise_for(exc)
    return json_response(o.Model(id=model_name, created=int(entry.modified), owned_by=entry.name.namespace))


# ---- /v1/responses -----------------------------------------------------------------------


def _responses_content(content: Any, param: str) -> tuple[str, list[str]]:
    """Responses content (a string or input_text / output_text / input_image parts) → (text, images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad("content must be a string or a list of content parts", param)
    texts, images = [], []
    for k, part in enumerate(content):
        where = f"{param}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise bad("text must be a string", f"{where}.text")
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if not isinstance(url, str):
                raise bad("input_image needs an image_url data URI (file_id is not supported)", where)
            images.append(_image(url, f"{where}.image_url"))
        elif kind == "input_file":
            raise bad("file inputs are not supported", where)
        else:
            raise bad(f"unknown content part type {kind!r}", f"{where}.type")
    return "\n".join(texts), images


def _reasoning_text(item: dict, param: str) -> str:
    if isinstance(item.get("encrypted_content"), str) and item["encrypted_content"]:
        return item["encrypted_content"]  # Corral (like Ollama) puts the plain thinking there
    parts = []
    for key in ("content", "summary"):
        value = item.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise bad(f"reasoning {key} must be a list of parts, got {_json_type(value)}", f"{param}.{key}")
        parts += [p.get("text", "") for p in value if isinstance(p, dict)]
    return "\n".join(p for p in parts if isinstance(p, str) and p)


def _call_id(item: dict, key: str, param: str) -> str | None:
    """An item's `call_id` (or `id`): a string when given, as at OpenAI."""
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise bad(f"{key} must be a string, got {_json_type(value)}", f"{param}.{key}")
    return value


def _responses_messages(value: Any) -> list[dict]:
    """`input` → the service's message dicts. Function calls join the assistant turn before them;
    reasoning items become the thinking of the assistant turn after them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value else []
    if not isinstance(value, list):
        raise bad("input must be a string or a list of input items", "input")
    out: list[dict] = []
    names: dict[str, str] = {}
    thinking = ""
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad("input items must be objects", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = str(item.get("role") or "").lower()
            role = "system" if role == "developer" else role
            if role not in ("user", "system", "assistant"):
                raise bad(f"invalid message role {item.get('role')!r}", f"{where}.role")
            text, images = _responses_content(item.get("content"), f"{where}.content")
            msg: dict[str, Any] = {"role": role, "content": text}
            if images:
                msg["images"] = images
            if role == "assistant" and thinking:
                msg["thinking"], thinking = thinking, ""
            out.append(msg)
        elif kind == "function_call":
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise bad("function_call needs a name", f"{where}.name")
            cid = _call_id(item, "call_id", where) or _call_id(item, "id", where) or call_id()
            names[cid] = name
            last = out[-1] if out else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                out.append(last)
            calls = last.setdefault("tool_calls", [])
            calls.append({"id": cid, "function": {
                "name": name, "arguments": _arguments(item.get("arguments"), f"{where}.arguments"),
                "index": len(calls)}})
            if thinking:
                last["thinking"], thinking = thinking, ""
        elif kind == "function_call_output":
            cid = _call_id(item, "call_id", where) or ""
            output = item.get("output")
            text, images = (output, []) if isinstance(output, str) else _responses_content(output, f"{where}.output")
            msg = {"role": "tool", "content": text, "tool_call_id": cid}
            if images:
                msg["images"] = images
            if names.get(cid):
                msg["tool_name"] = names[cid]
            out.append(msg)
        elif kind == "reasoning":
            thinking = _reasoning_text(item, where)
        elif kind == "item_reference":
            raise bad("item_reference needs stored responses: this Responses API is stateless, "
                      "send the items themselves", where)
        elif kind is None:
            raise bad("input item is missing its 'type'", f"{where}.type")
        else:
            raise bad(f"unknown input item type {kind!r}", f"{where}.type")
    _check_tool_results(out, "input", one_per_message=False)
    return out  # reasoning with no assistant turn after it is dropped


def _responses_tools(tools: list[o.ResponsesTool] | None) -> list[dict] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        _check_function_tool(tool.type, i)
        if not tool.name:
            raise bad("function tools need a name", f"tools[{i}].name")
        out.append(_function_tool(tool.name, tool.description, tool.parameters))
    return out


def _responses_tool_choice(choice: Any) -> Any:
    """`{"type": "function", "name": …}` (flat, Responses) → the nested form ChatParams takes."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _text_format_echo(fmt: o.ResponsesTextFormat | None) -> dict[str, Any]:
    if fmt is None:
        return {"format": {"type": "text"}}
    echo = {k: v for k, v in msgspec.structs.asdict(fmt).items() if v is not None}
    return {"format": echo}


class _ResponseBuilder:
    """Turns the service's items into the response's output items and, as it goes, the stream's events.

    The non-streaming route uses the same builder and ignores the events, so both forms agree.
    Event payloads are snapshots (fresh objects), never the items still being built.
    """

    def __init__(self, req: o.ResponsesRequest, rid: str, created: int):
        self.req = req
        self.rid = rid
        self.created = created
        self.seq = 0
        self.output: list[o.OutputItem] = []
        self.open: str | None = None  # "message" | "reasoning": the item being streamed into
        self.open_id = ""
        self.text: list[str] = []

    def _ev(self, event: o.ResponseEvent) -> o.ResponseEvent:
        event.sequence_number = self.seq
        self.seq += 1
        return event

    def response(self, status: str, output: list[o.OutputItem], final: Final | None = None,
                 error: o.ResponseError | None = None) -> o.ResponseObject:
        req = self.req
        usage = None
        if final is not None:
            usage = o.ResponsesUsage(
                input_tokens=final.prompt_tokens, output_tokens=final.eval_count,
                total_tokens=final.prompt_tokens + final.eval_count,
                input_tokens_details=o.InputTokensDetails(cached_tokens=_cached(final)),
                output_tokens_details=o.OutputTokensDetails(reasoning_tokens=final.reasoning_tokens))
        return o.ResponseObject(
            id=self.rid, created_at=self.created, model=req.model, status=status, output=list(output), usage=usage,
            error=error,
            incomplete_details=o.IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=req.instructions, max_output_tokens=req.max_output_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            tools=req.tools or [], tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
            text=_text_format_echo(req.text.format if req.text else None), reasoning=req.reasoning,
            parallel_tool_calls=req.parallel_tool_calls is not False, truncation=req.truncation or "disabled",
            metadata=req.metadata or {},
            completed_at=int(time.time()) if status in ("completed", "incomplete") else None,
        )

    def start(self) -> list[o.ResponseEvent]:
        return [self._ev(o.ResponseCreated(response=self.response("in_progress", []))),
                self._ev(o.ResponseInProgress(response=self.response("in_progress", [])))]

    def _index(self) -> int:
        return len(self.output)  # the open item is appended when it closes

    def _open_message(self) -> list[o.ResponseEvent]:
        self.open, self.open_id, self.text = "message", _item_id("msg"), []
        index = self._index()
        return [
            self._ev(o.OutputItemAdded(output_index=index, item=o.OutputMessage(id=self.open_id, status="in_progress",
                                                                                content=[]))),
            self._ev(o.ContentPartAdded(item_id=self.open_id, output_index=index, content_index=0,
                                        part=o.OutputText(text=""))),
        ]

    def _open_reasoning(self) -> list[o.ResponseEvent]:
        self.open, self.open_id, self.text = "reasoning", _item_id("rs"), []
        index = self._index()
        return [
            self._ev(o.OutputItemAdded(output_index=index, item=o.OutputReasoning(id=self.open_id, summary=[]))),
            self._ev(o.ReasoningSummaryPartAdded(item_id=self.open_id, output_index=index, summary_index=0,
                                                 part=o.ReasoningSummary(text=""))),
        ]

    def _close(self, status: str = "completed") -> list[o.ResponseEvent]:
        if self.open is None:
            return []
        text, index, item_id = "".join(self.text), self._index(), self.open_id
        if self.open == "message":
            item: o.OutputItem = o.OutputMessage(id=item_id, status=status, content=[o.OutputText(text=text)])
            events = [
                self._ev(o.OutputTextDone(item_id=item_id, output_index=index, content_index=0, text=text)),
                self._ev(o.ContentPartDone(item_id=item_id, output_index=index, content_index=0,
                                           part=o.OutputText(text=text))),
            ]
        else:
            item = o.OutputReasoning(id=item_id, summary=[o.ReasoningSummary(text=text)], encrypted_content=text)
            events = [
                self._ev(o.ReasoningSummaryTextDone(item_id=item_id, output_index=index, summary_index=0, text=text)),
                self._ev(o.ReasoningSummaryPartDone(item_id=item_id, output_index=index, summary_index=0,
                                                    part=o.ReasoningSummary(text=text))),
            ]
        events.append(self._ev(o.OutputItemDone(output_index=index, item=item)))
        self.output.append(item)
        self.open = None
        return events

    def feed(self, delta: Delta) -> list[o.ResponseEvent]:
        events: list[o.ResponseEvent] = []
        if delta.thinking:
            if self.open != "reasoning":
                events += self._close() + self._open_reasoning()
            self.text.append(delta.thinking)
            events.append(self._ev(o.ReasoningSummaryTextDelta(item_id=self.open_id, output_index=self._index(),
                                                               summary_index=0, delta=delta.thinking)))
        if delta.content:
            if self.open != "message":
                events += self._close() + self._open_message()
            self.text.append(delta.content)
            events.append(self._ev(o.OutputTextDelta(item_id=self.open_id, output_index=self._index(),
                                                     content_index=0, delta=delta.content)))
        for call in _wire_calls(delta.tool_calls, 0):
            events += self._close()
            index, item_id = self._index(), _item_id("fc")
            fn = call.function
            events.append(self._ev(o.OutputItemAdded(output_index=index, item=o.OutputFunctionCall(
                id=item_id, call_id=call.id, name=fn.name, arguments="", status="in_progress"))))
            events.append(self._ev(o.FunctionCallArgumentsDelta(item_id=item_id, output_index=index,
                                                                delta=fn.arguments)))
            events.append(self._ev(o.FunctionCallArgumentsDone(item_id=item_id, output_index=index, name=fn.name,
                                                               arguments=fn.arguments)))
            item = o.OutputFunctionCall(id=item_id, call_id=call.id, name=fn.name, arguments=fn.arguments,
                                        status="completed")
            events.append(self._ev(o.OutputItemDone(output_index=index, item=item)))
            self.output.append(item)
        return events

    def finish(self, final: Final) -> tuple[o.ResponseObject, list[o.ResponseEvent]]:
        status = "incomplete" if final.done_reason == "length" else "completed"
        events: list[o.ResponseEvent] = []
        if self.open is None and not any(isinstance(x, (o.OutputMessage, o.OutputFunctionCall)) for x in self.output):
            events += self._open_message()  # an empty answer is still a message
        events += self._close(status)
        response = self.response(status, self.output, final)
        end = o.ResponseIncomplete if status == "incomplete" else o.ResponseCompleted
        events.append(self._ev(end(response=response)))
        return response, events

    def fail(self, exc: Exception) -> list[o.ResponseEvent]:
        _, message = status_for(exc)
        error = o.ResponseError(code="server_error", message=message)
        return [self._ev(o.ResponseFailed(response=self.response("failed", self.output, error=error)))]


def _responses_params(req: o.ResponsesRequest) -> ChatParams:
    if req.previous_response_id:
        raise bad("previous_response_id is not supported: this Responses API is stateless, "
                  "send the whole conversation in input", "previous_response_id")
    messages = _responses_messages(req.input)
    if not messages:
        raise bad("input must not be empty", "input")
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    fmt = None
    if req.text is not None and req.text.format is not None:
        f = req.text.format
        fmt = _format(f.type, f.schema, f.name, "text.format")
    return ChatParams(
        model=req.model,
        messages=messages,
        tools=_responses_tools(req.tools),
        format=fmt,
        options=_options(temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_output_tokens,
                         extra=req.options),
        keep_alive=req.keep_alive,
        think=_think(req.reasoning.effort if req.reasoning else None, param="reasoning.effort"),
        tool_choice=_responses_tool_choice(req.tool_choice),
    )


def _event(event: o.ResponseEvent) -> bytes:
    tag = type(event).__struct_config__.tag
    return b"event: " + tag.encode() + b"\ndata: " + encode(event) + b"\n\n"


@post("/responses", status_code=200)
async def responses(request: Request) -> Response | Stream:
    req = await decode(request, o.ResponsesRequest)
    inference = services(request)
    params = _responses_params(req)
    builder = _ResponseBuilder(req, _item_id("resp"), int(time.time()))
    it = inference.chat(params)

    async def events(first: Delta | Final) -> AsyncIterator[bytes]:
        try:
            for event in builder.start():
                yield _event(event)
            item = first
            while not isinstance(item, Final):
                for event in builder.feed(item):
                    yield _event(event)
                item = await it.__anext__()
            for event in builder.finish(item)[1]:
                yield _event(event)
        except Exception as exc:  # the status is already 200: end with response.failed
            for event in builder.fail(exc):
                yield _event(event)
        finally:
            await it.aclose()

    async def collect(first: Delta | Final) -> o.ResponseObject:
        item = first
        while not isinstance(item, Final):
            builder.feed(item)
            item = await it.__anext__()
        return builder.finish(item)[0]

    return await respond(request, it, stream=bool(req.stream), gathered=collect,
                         streamed=lambda first: _event_stream(events(first)))


ROUTES = [
    Router(
        path="/v1",
        route_handlers=[chat_completions, completions, embeddings, list_models, retrieve_model, responses],
        exception_handlers={APIError: _on_api_error, HTTPException: http_error, Exception: _on_unexpected},
    )
]
