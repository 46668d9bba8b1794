"""The flow generation routes repeat: render only (debug), load on empty input, then stream or collect,
with the service's errors mapped to statuses in one place (`errors.raise_for`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from litestar import Request, Response
from litestar.response import Stream

from ..inference import collect
from .errors import raise_for
from .wire import first_item, json_response, ndjson, until_complete

T = TypeVar("T")


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """The service's errors raised inside, as the API's (status, message)."""
    try:
        yield
    except Exception as exc:
        raise_for(exc)


async def service_call(work: Awaitable[T]) -> T:
    """Await a service call, its errors as the API's (status, message)."""
    with service_errors():
        return await work


async def respond(request: Request, it: AsyncIterator[Any], *, stream: bool,
                  streamed: Callable[[Any], Response | Stream], gathered: Callable[[Any], Awaitable[Any]]
                  ) -> Response | Stream:
    """The flow of every generation route: await the first item before answering (so early errors get
    a real status; a client that leaves meanwhile cancels the generation), then either stream
    (`streamed(first)` makes the response, in the route's framing) or gather the rest into one JSON
    body (`gathered(first)`), cancelled if the client leaves; the generation is always closed."""
    first = await first_item(request, it, raise_for)
    if stream:
        return streamed(first)
    return json_response(await until_complete(request, gathered(first), it, raise_for))


async def answer(request: Request, it: AsyncIterator[Any], *, stream: bool, item: Callable[[Any], Any],
                 whole: Callable[[Any], Any], error_line: Callable[[Exception], Any],
                 gather: Callable[[AsyncIterator[Any], Any], Awaitable[Any]] = collect) -> Response | Stream:
    """`respond` in Ollama's NDJSON framing: `item` makes each line; not streamed, the items are
    gathered (by default into an Answer) and `whole` makes the body."""

    async def gathered(first: Any) -> Any:
        return whole(await gather(it, first))

    return await respond(request, it, stream=stream, gathered=gathered,
                         streamed=lambda first: ndjson(item(first), _mapped(it, item), error_line))


async def _mapped(it: AsyncIterator[Any], wire: Callable[[Any], Any]) -> AsyncIterator[Any]:
    try:
        async for x in it:
            yield wire(x)
    finally:
        await it.aclose()
