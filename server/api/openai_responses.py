"""OpenAI's Responses API (`POST /v1/responses`, stateless): input items → a chat, the chat's items →
the response object and its SSE events (server/api/openai.py holds the rest of /v1)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from ..inference import ChatParams, Delta, Final
from ..reply import call_id
from . import openai_types as o
from .errors import status_for
from .flow import respond
from .wire import decode, encode
from .openai_common import (
    _arguments, bad, _cached, _check_function_tool, _check_tool_results, _event_stream, _format, _function_tool,
    _image, _item_id, _json_type, _options, services, _think, _wire_calls,
)


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
