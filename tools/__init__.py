"""Corral's tools: the registry that HTTP (`/api/tools`), MCP (`/mcp`) and agents all call.

Write a tool with `@tool(input=ArgsModel)` over `async def fn(args, ctx)`; ship it in a package with an
entry point in the group `corral.tools` (see tools/entry_points.py), or list an outside MCP server in
the MCP config file (tools/mcp_import.py).
"""

from .artifacts import ArtifactStore
from .registry import ToolRegistry
from .results import Artifact, Citation, ToolResult
from .tool import (InvalidArguments, Progress, Tool, ToolContext, ToolError, ToolFailed, ToolNotFound, ToolTimeout,
                   tool)

__all__ = ["Artifact", "ArtifactStore", "Citation", "InvalidArguments", "Progress", "Tool", "ToolContext",
           "ToolError", "ToolFailed", "ToolNotFound", "ToolRegistry", "ToolResult", "ToolTimeout", "tool"]
