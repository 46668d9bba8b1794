"""The flow generation routes repeat: render only (debug), load on empty input, then stream or collect,
with the service's errors mapped to statuses in one place (`errors.raise_for`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request, Response
from litestar.response import Stream

from ..inference import collect
from .errors import raise_for
from .wire import first_item, json_response, ndjson, until_complete

T = TypeVar("T")


async def service_call(work: Awaitable[T]) -> T:
    """Await a service call, its errors as the API's (status, message)."""
    try:
        return await work
    except Exception as exc:
        raise_for(exc)


async def answer(request: Request, it: AsyncIterator[Any], *, stream: bool, item: Callable[[Any], Any],
                 whole: Callable[[Any], Any], error_line: Callable[[Exception], Any],
                 gather: Callable[[AsyncIterator[Any], Any], Awaitable[Any]] = collect) -> Response | Stream:
    """Stream a generation's items as NDJSON lines (`item` makes each line), or gather it (by default
    into an Answer) into one response (`whole`). The first item is awaited before answering, so early
    errors get a real status; a client that leaves cancels the generation; it is always closed."""
    first = await first_item(request, it, raise_for)
    if stream:
        return ndjson(item(first), _mapped(it, item), error_line)
    return json_response(whole(await until_complete(request, gather(it, first), it, raise_for)))


async def _mapped(it: AsyncIterator[Any], wire: Callable[[Any], Any]) -> AsyncIterator[Any]:
    try:
        async for x in it:
            yield wire(x)
    finally:
        await it.aclose()
