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
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from agents.events import Approval, Content as AgentContent, Done as AgentDone, Thinking

from ..inference import MAX_EMBED_INPUTS, ChatParams, Delta, Final, GenerateParams
from ..messages import Message
from . import agents
from . import openai_types as o
from .errors import raise_for
from .flow import respond, service_call
from .wire import APIError, decode, json_response, until_complete
from .openai_common import (
    _arguments, bad, _check_function_tool, _check_tool_results, DONE, _event_stream, FINGERPRINT, _finish_reason,
    _format, _function_tool, http_error, _image, _json_type, _new_id, _on_api_error, _on_unexpected, _options,
    services, _sse, _stream_error, _think, _token_logprobs, _usage, _wire_calls,
)
from .openai_responses import responses


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



def _chat_tools(tools: list[o.Tool] | None) -> list[dict] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        _check_function_tool(tool.type, i)
        out.append(_function_tool(tool.function.name, tool.function.description, tool.function.parameters))
    return out



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


ROUTES = [
    Router(
        path="/v1",
        route_handlers=[chat_completions, completions, embeddings, list_models, retrieve_model, responses],
        exception_handlers={APIError: _on_api_error, HTTPException: http_error, Exception: _on_unexpected},
    )
]
