"""The tool registry: every tool Corral serves, by name, and the one way to run one.

`run` validates the arguments, runs the handler under its timeout, forwards its progress, and turns
what it returns into a ToolResult. Cancelling the caller (its client left) cancels the handler, which
sees CancelledError (and `ctx.cancelled` set, for work in threads).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .artifacts import ArtifactStore
from .results import ToolResult
from .tool import Progress, Tool, ToolContext, ToolError, ToolFailed, ToolNotFound, ToolTimeout, call_handler

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger("corral.tools")

OnProgress = Callable[[Progress], Awaitable[None]]


class ToolRegistry:
    def __init__(self, artifacts: ArtifactStore, default_timeout: float = 300.0):
        self.artifacts = artifacts
        self.default_timeout = default_timeout
        self._tools: dict[str, Tool] = {}

    def add(self, tool: Tool, *, replace: bool = False) -> None:
        if tool.name in self._tools and not replace:
            raise ValueError(f"a tool named {tool.name!r} is registered already ({self._tools[tool.name].source})")
        self._tools[tool.name] = tool

    def add_all(self, tools: Iterable[Tool]) -> None:
        """Add what can be added; a name taken already is skipped with a warning (the first one stays)."""
        for t in tools:
            try:
                self.add(t)
            except ValueError as exc:
                log.warning("tool from %s not registered: %s", t.source, exc)

    def remove(self, name: str) -> None:
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFound(f"tool '{name}' not found") from None

    def list(self) -> list[Tool]:
        return sorted(self._tools.values(), key=lambda t: t.name)

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    async def run(self, name: str, arguments: Any, *, services: "Services | None" = None,
                  on_progress: OnProgress | None = None) -> ToolResult:
        tool = self.get(name)
        args = tool.validate(arguments)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Progress] = asyncio.Queue()

        def emit(p: Progress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, p)

        ctx = ToolContext(services, self.artifacts, emit, tool.name)
        timeout = tool.timeout if tool.timeout is not None else self.default_timeout
        task = asyncio.ensure_future(call_handler(tool, args, ctx, timeout))
        try:
            while not task.done():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    if on_progress is not None:
                        await on_progress(getter.result())
                else:
                    getter.cancel()
            while not queue.empty() and on_progress is not None:
                await on_progress(queue.get_nowait())
            return _result(tool, task)
        finally:
            if not task.done():  # the caller was cancelled: so is the tool
                ctx.cancelled.set()
                task.cancel()
                await asyncio.wait({task})


def _result(tool: Tool, task: asyncio.Future) -> ToolResult:
    try:
        return ToolResult.of(task.result())
    except (ToolError, ToolTimeout):
        raise
    except asyncio.CancelledError:  # the handler cancelled itself
        raise ToolFailed(f"tool '{tool.name}' was cancelled") from None
    except Exception as exc:
        log.exception("tool %s failed", tool.name)
        raise ToolFailed(f"tool '{tool.name}' failed: {type(exc).__name__}: {exc}") from exc
