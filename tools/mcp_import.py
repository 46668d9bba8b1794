"""Tools of outside MCP servers, imported under a prefix through the official `mcp` SDK's client.

The servers are listed in a config file (`CORRAL_MCP_CONFIG`, default `<data dir>/mcp.json`), in the
shape Claude Desktop and Cursor use; only this file, which the operator writes, can start a program:

    {"mcpServers": {
        "files": {"command": "python", "args": ["fs_server.py"], "env": {"ROOT": "/srv"}, "cwd": "/srv"},
        "search": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer …"}}
    }}

Each server's tools are registered as `<prefix>_<tool>` (the prefix is the server's key unless it sets
`"prefix"`), with the server's own schema and description; a tool the server marks `readOnlyHint`
has no side effects, any other has. Each connection lives in a task of its own for the process's life
(the SDK's streams must be closed by the task that opened them). A server that cannot be reached is
logged and left out; Corral starts without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from .registry import ToolRegistry
from .results import ToolResult
from .tool import NAME_RULE, Tool, ToolContext, ToolError

log = logging.getLogger("corral.tools")

CONNECT_TIMEOUT = 30.0


class ConfigError(ValueError):
    pass


def read_config(path: Path) -> dict[str, dict]:
    """The `mcpServers` entries of the config file ({} when there is no file)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"MCP config {path}: {exc}") from exc
    servers = data.get("mcpServers", {}) if isinstance(data, dict) else None
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        raise ConfigError(f"MCP config {path}: expected {{\"mcpServers\": {{name: {{command|url …}}}}}}")
    for name, entry in servers.items():
        if ("command" in entry) == ("url" in entry):
            raise ConfigError(f"MCP config {path}: server {name!r} needs either a command or a url")
    return servers


class McpServer:
    """One outside server: its connection task and its session."""

    def __init__(self, name: str, entry: dict):
        self.name = name
        self.entry = entry
        self.prefix = entry.get("prefix", name)
        self.session: Any = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task | None = None

    async def connect(self) -> list[Any]:
        """Open the session and list the server's tools (mcp.types.Tool)."""
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"MCP server {self.name!r} did not answer in {CONNECT_TIMEOUT:g} s") from None
        if self._error is not None:
            raise ConnectionError(f"MCP server {self.name!r}: {self._error}") from self._error
        return (await self.session.list_tools()).tools

    async def _run(self) -> None:
        from mcp import ClientSession

        try:
            async with self._transport() as streams, ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # a server that fails to start, or dies: its tools answer with an error
            self._error = exc
            log.warning("MCP server %s: %s", self.name, exc)
        finally:
            self.session = None
            self._ready.set()

    def _transport(self):
        if "command" in self.entry:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(command=self.entry["command"], args=list(self.entry.get("args", [])),
                                           env=self.entry.get("env"), cwd=self.entry.get("cwd"))
            return stdio_client(params)
        return _http_transport(self.entry["url"], self.entry.get("headers") or {})

    async def call(self, tool: str, args: dict, ctx: ToolContext) -> ToolResult:
        if self.session is None:
            raise ToolError(f"MCP server {self.name!r} is not connected")

        async def progress(done: float, total: float | None, message: str | None) -> None:
            ctx.progress(done, total, message or "")

        # no read timeout of the SDK's own: the registry's (the entry's `timeout`) cancels this call, and a
        # cancelled call is cancelled at the server too
        session = self.session
        request_id = session._request_id  # the id call_tool is about to take (the SDK has no public accessor)
        try:
            result = await session.call_tool(tool, args, progress_callback=progress)
        except asyncio.CancelledError:
            await _cancel_remote(session, request_id)
            raise
        return _result(result, ctx, self.name)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)


async def _cancel_remote(session: Any, request_id: int) -> None:
    """Tell the server that a call was given up (its caller left, or it ran past its timeout), so that it
    stops the work instead of finishing it for nobody: the protocol's notifications/cancelled. A stateless
    HTTP server (Corral's own /mcp) cannot match it to the call and lets it run to its own timeout."""
    from mcp import types

    cancelled = types.CancelledNotification(params=types.CancelledNotificationParams(
        requestId=request_id, reason="the caller gave up"))
    with contextlib.suppress(Exception):  # the connection may be gone already
        async with asyncio.timeout(5):
            await session.send_notification(types.ClientNotification(cancelled))


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]):
    import httpx
    from mcp.client.streamable_http import streamable_http_client

    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as client:
        async with streamable_http_client(url, http_client=client) as (read, write, _):
            yield read, write


def _result(result: Any, ctx: ToolContext, server: str) -> ToolResult:
    texts, artifacts = [], []
    for item in result.content:
        if item.type == "text":
            texts.append(item.text)
        elif item.type in ("image", "audio"):
            try:
                data = base64.b64decode(item.data, validate=True)
            except (binascii.Error, ValueError):
                raise ToolError(f"MCP server {server!r} sent {item.type} content that is not base64") from None
            artifacts.append(ctx.artifacts.put(data, item.mimeType))
        elif item.type == "resource_link":
            texts.append(f"{item.name}: {item.uri}")
        elif item.type == "resource" and hasattr(item.resource, "text"):
            texts.append(item.resource.text)
    if result.isError:
        raise ToolError("\n".join(texts) or f"the tool of MCP server {server!r} failed")
    return ToolResult(text="\n".join(texts), json=result.structuredContent, artifacts=artifacts)


class McpImports:
    """The outside servers of the config file, connected at start and closed at shutdown."""

    def __init__(self, config: Path):
        self.config = config
        self.servers: list[McpServer] = []

    async def connect(self, registry: ToolRegistry) -> None:
        try:
            entries = read_config(self.config)
        except ConfigError as exc:
            log.error("%s; no outside MCP tools imported", exc)
            return
        for name, entry in entries.items():
            server = McpServer(name, entry)
            try:
                tools = await server.connect()
            except Exception as exc:
                log.warning("MCP server %s left out: %s", name, exc)
                continue
            self.servers.append(server)
            registry.add_all(t for t in (self._tool(server, info) for info in tools) if t is not None)
            log.info("MCP server %s: %d tools imported under prefix %r", name, len(tools), server.prefix)

    def _tool(self, server: McpServer, info: Any) -> Tool | None:
        name = f"{server.prefix}_{info.name}" if server.prefix else info.name
        if not NAME_RULE.match(name):
            log.warning("MCP tool %r of %s left out: %r is not a valid tool name", info.name, server.name, name)
            return None
        timeout = server.entry.get("timeout")
        remote = info.name

        async def handler(args: dict, ctx: ToolContext) -> ToolResult:
            return await server.call(remote, args, ctx)

        annotations = info.annotations
        read_only = bool(annotations and annotations.readOnlyHint)
        try:
            return Tool(name=name, description=info.description or "", handler=handler,
                        input_schema=dict(info.inputSchema or {"type": "object"}), timeout=timeout,
                        side_effects=not read_only, source=f"mcp:{server.name}")
        except Exception as exc:
            log.warning("MCP tool %r of %s left out: %s", info.name, server.name, exc)
            return None

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        self.servers.clear()
