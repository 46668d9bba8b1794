"""The tool registry over MCP at `/mcp` (streamable HTTP), through the official `mcp` SDK's server.

tools/list gives every registered tool with its schema (a tool without side effects is marked
`readOnlyHint`); tools/call runs it through the same registry as `/api/tools`, sends the tool's
progress as MCP progress notifications when the client asked for them (a progress token), and returns
text, the JSON value (also as `structuredContent`), citations, and image artifacts as image content
(other artifacts as a line naming `/api/artifacts/<digest>`). A tool's failure is a result with `isError`,
as the protocol wants. Stateless: no session lives between requests, so any replica can answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from tools import Progress, ToolResult

from .. import __version__
from ..services import Services
from .errors import status_for
from .wire import MAX_JSON_DEPTH


def mcp_endpoint(services: Services):
    """(the ASGI route handler for /mcp, the lifespan that runs the SDK's session manager)."""
    server: Server = Server("corral", version=__version__)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=x.name, description=x.description, inputSchema=x.input_schema,
                           annotations=types.ToolAnnotations(readOnlyHint=not x.side_effects))
                for x in services.tools.list()]

    @server.call_tool(validate_input=False)  # the registry validates, with its own messages
    async def call_tool(name: str, arguments: dict) -> types.CallToolResult:
        ctx = server.request_context
        token = ctx.meta.progressToken if ctx.meta else None

        async def progress(p: Progress) -> None:
            if token is not None:
                await ctx.session.send_progress_notification(token, p.completed, p.total, p.status or None,
                                                             related_request_id=ctx.request_id)

        try:
            result = await services.call_tool(name, arguments, on_progress=progress)
        except Exception as exc:
            return types.CallToolResult(content=[types.TextContent(type="text", text=status_for(exc)[1])],
                                        isError=True)
        return _result(services, result)

    manager = StreamableHTTPSessionManager(app=server, stateless=True)

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "POST":  # the SDK's json.loads recurses: deep bodies are refused first
            body, receive = await _buffered(receive)
            if _nested_deeper(body, MAX_JSON_DEPTH):
                await _send_json(send, 400, {"jsonrpc": "2.0", "id": None, "error": {
                    "code": -32700, "message": f"Parse error: request body nested deeper than {MAX_JSON_DEPTH} levels"}})
                return
        await manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return asgi("/mcp", is_mount=True, copy_scope=True)(handle), lifespan


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` that hands it over again (then passes through)."""
    parts, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), _replay([message], receive)
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(parts)
    return body, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list, receive: Receive) -> Receive:
    async def replayed():
        return messages.pop(0) if messages else await receive()

    return replayed


def _nested_deeper(body: bytes, limit: int) -> bool:
    """Whether JSON text opens more than `limit` objects/arrays inside each other (strings skipped)."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return False


async def _send_json(send: Send, status: int, obj: dict) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


def _result(services: Services, result: ToolResult) -> types.CallToolResult:
    content: list = []
    if result.text:
        content.append(types.TextContent(type="text", text=result.text))
    if result.json is not None:
        content.append(types.TextContent(type="text", text=json.dumps(result.json, ensure_ascii=False)))
    for i, c in enumerate(result.citations, 1):
        where = f" ({c.location})" if c.location else ""
        content.append(types.TextContent(type="text", text=f"[{i}] {c.source}{where}: {c.quote}"))
    for a in result.artifacts:
        if a.media_type.startswith("image/"):
            path, _ = services.artifacts.open(a.digest)
            content.append(types.ImageContent(type="image", data=base64.b64encode(path.read_bytes()).decode("ascii"),
                                              mimeType=a.media_type))
        else:
            content.append(types.TextContent(type="text", text=f"artifact {a.name or a.digest} ({a.media_type}, "
                                                               f"{a.size} bytes): {a.url}"))
    structured = result.json if isinstance(result.json, dict) else None
    return types.CallToolResult(content=content, structuredContent=structured)
