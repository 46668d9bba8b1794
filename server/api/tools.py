"""The tool registry over HTTP: `GET /api/tools`, `POST /api/tools/{name}`, `GET /api/artifacts/{digest}`.

Only translates: wire types (server/api/types.py) in and out, the registry does the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import msgspec
from litestar import Request, Response, get, post, route
from litestar.response import File, Stream

from tools import Progress, ToolResult

from ..services import Services
from . import types as t
from .errors import raise_for, status_for
from .wire import decode, encode, json_response, until_complete


def services(request: Request) -> Services:
    return request.app.state.services


@get("/api/tools")
async def list_tools(request: Request) -> Response:
    registry = services(request).tools
    return json_response(t.ToolListResponse(tools=[
        t.ToolInfo(type="function", function=t.ToolFunction(name=x.name, description=x.description,
                                                            parameters=x.input_schema),
                   side_effects=x.side_effects, timeout=x.timeout or registry.default_timeout, source=x.source)
        for x in registry.list()
    ]))


@post("/api/tools/{name:str}", status_code=200)
async def call_tool(request: Request, name: str) -> Response | Stream:
    req = await decode(request, t.ToolCallRequest, allow_empty=True)
    svc = services(request)
    try:  # unknown tool, invalid arguments: a status code, before any line is streamed
        svc.tools.get(name).validate(req.arguments)
    except Exception as exc:
        raise_for(exc)
    if not req.stream:
        result = await until_complete(request, svc.call_tool(name, req.arguments), None, raise_for)
        return json_response(wire_result(name, result))
    return Stream(content=_streamed(svc, name, req.arguments), media_type="application/x-ndjson")


async def _streamed(svc: Services, name: str, arguments: Any) -> AsyncIterator[bytes]:
    """Progress lines as the tool reports them, then the result line (or an `{"error"}` line)."""
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def progress(p: Progress) -> None:
        lines.put_nowait(encode(t.ToolProgressResponse(status=p.status or "running", completed=p.completed,
                                                       total=p.total)) + b"\n")

    async def run() -> None:
        try:
            lines.put_nowait(encode(wire_result(name, await svc.call_tool(name, arguments, progress))) + b"\n")
        except Exception as exc:
            lines.put_nowait(encode(t.ErrorResponse(error=status_for(exc)[1])) + b"\n")
        finally:
            lines.put_nowait(None)

    task = asyncio.ensure_future(run())
    try:
        while (line := await lines.get()) is not None:
            yield line
    finally:  # the client left (the stream was cancelled): so is the tool
        task.cancel()
        await asyncio.wait({task})


def wire_result(name: str, result: ToolResult) -> t.ToolResultResponse:
    return t.ToolResultResponse(
        status="success", tool=name, content=result.text, json=result.json if result.json is not None else msgspec.UNSET,
        citations=[t.CitationInfo(**asdict(c)) for c in result.citations] or None,
        artifacts=[t.ArtifactInfo(**asdict(a), url=a.url) for a in result.artifacts] or None,
    )


@route("/api/artifacts/{digest:str}", http_method=["GET", "HEAD"])
async def artifact(request: Request, digest: str) -> File:
    try:
        path, media_type = services(request).artifacts.open(digest)
    except Exception as exc:
        raise_for(exc)
    return File(path=path, media_type=media_type, content_disposition_type="inline",
                headers={"Cache-Control": "public, max-age=31536000, immutable"})


ROUTES = [list_tools, call_tool, artifact]
