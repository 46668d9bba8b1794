"""Helpers every route module shares: decoding bodies, errors in Ollama's shape, NDJSON streams."""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from .types import ErrorResponse

T = TypeVar("T")

_encoder = msgspec.json.Encoder()

# How deeply a request body may nest (objects and arrays; the top-level value is level 1). Checked once,
# here, where every route decodes its body, so nothing after (schema-to-grammar conversion, templates,
# tool-call arguments, tool validation) ever sees deeper JSON. Real requests stay far below it (a
# structured-output schema or a tool's parameters nest 2 levels per object property). 64 keeps every
# recursive consumer well under Python's 1000-frame recursion limit, whatever stack it runs on: the
# hungriest, the grammar converter, takes about 4 frames a level (270 for the deepest schema a 64-level
# body can hold, an `items` chain; at 128 levels it would be some 550, over half the limit before the
# server's own stack is counted).
MAX_JSON_DEPTH = 64


class APIError(Exception):
    """An error for the client: an HTTP status, a message and, where one is to blame, the request
    field (OpenAI's `param`; Ollama's error shape has no place for it)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def now() -> str:
    """RFC3339 with a timezone, as Go's time.Time marshals it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def error(status: int, message: str) -> Response:
    return Response(content=_encoder.encode(ErrorResponse(error=message)), status_code=status,
                    media_type="application/json")


async def decode(request: Request, kind: type[T], *, allow_empty: bool = False) -> T:
    """Decode a JSON body strictly into a wire type; 400 with a clear message otherwise."""
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return kind()
        raise APIError(400, "missing request body")
    try:
        try:
            obj = msgspec.json.decode(body)
        except (UnicodeDecodeError, msgspec.DecodeError):  # msgspec >= 0.23 raises the latter for bad UTF-8
            if _is_utf8(body):
                raise
            # bytes that are not UTF-8 become U+FFFD, as Go's decoder (Ollama's) makes them
            obj = msgspec.json.decode(body.decode("utf-8", errors="replace"))
    except RecursionError:  # msgspec stops past Python's recursion limit: far deeper than allowed anyway
        raise APIError(400, _TOO_DEEP) from None
    except msgspec.DecodeError as exc:
        raise APIError(400, f"invalid JSON in request body: {exc}") from exc
    if _too_deep(obj, MAX_JSON_DEPTH):
        raise APIError(400, _TOO_DEEP)
    try:
        return msgspec.convert(_without_nulls(obj), type=kind)
    except msgspec.ValidationError as exc:
        path = _ERROR_PATH.search(str(exc))
        raise APIError(400, f"invalid request: {exc}", param=path[1] if path else None) from exc


_TOO_DEEP = f"request body nested too deeply: more than {MAX_JSON_DEPTH} levels of objects and arrays"


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests more than `limit` levels (iterative: no recursion here)."""
    stack = [(obj, 1)] if isinstance(obj, (dict, list)) else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        for child in (value.values() if isinstance(value, dict) else value):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _without_nulls(obj: Any) -> Any:
    """A field sent as null is a field not sent (Go leaves it at its zero value), at the top level and in
    `messages` (clients send `"content": null` beside tool calls). Free-form values (options, schemas,
    tool arguments) keep their nulls."""
    if not isinstance(obj, dict):
        return obj
    out = {k: v for k, v in obj.items() if v is not None}
    if isinstance(out.get("messages"), list):
        out["messages"] = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
                           for m in out["messages"]]
    return out


_ERROR_PATH = re.compile(r"- at `\$\.([^`]+)`$")  # the field msgspec blames: "… - at `$.messages[0].role`"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(content=_encoder.encode(obj), status_code=status, media_type="application/json")


def ndjson(first: Any, rest: AsyncIterator[Any], on_error: Callable[[Exception], Any]) -> Stream:
    """Stream objects as NDJSON lines; an error after the first byte becomes a final `{"error"}` line."""

    async def lines() -> AsyncIterator[bytes]:
        yield _encoder.encode(first) + b"\n"
        try:
            async for obj in rest:
                yield _encoder.encode(obj) + b"\n"
        except Exception as exc:  # status is already 200: report in-band, like Ollama
            yield _encoder.encode(on_error(exc)) + b"\n"

    return Stream(content=lines(), media_type="application/x-ndjson")


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


async def first_item(request: Request, it: AsyncIterator[Any], on_error: Callable[[Exception], Any]) -> Any:
    """Pull a generation's first item before answering, so early errors get a real status code.
    A client that leaves meanwhile (queued, its prompt being computed) cancels the generation."""
    task = asyncio.ensure_future(it.__anext__())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            await asyncio.wait({task})
            await it.aclose()
            raise APIError(499, "client disconnected")
        try:
            return task.result()
        except StopAsyncIteration:
            raise APIError(500, "no response from model") from None
        except APIError:
            raise
        except Exception as exc:
            on_error(exc)
            raise
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read already: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_complete(request: Request, work: Awaitable[T], it: AsyncIterator[Any] | None,
                         on_error: Callable[[Exception], Any]) -> T:
    """Await a non-streaming collection (or other work, such as an embedding); cancel it if the
    client goes away; always close the generation `it` that `work` reads, if any."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            raise APIError(499, "client disconnected")
        try:
            return task.result()
        except APIError:
            raise
        except Exception as exc:
            on_error(exc)
            raise
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.wait({task})  # the generator must be idle before it can be closed
        if it is not None:
            await it.aclose()
