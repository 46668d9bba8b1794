"""Registry tools as LangChain tools, for LangGraph code of one's own running in Corral's process
(`create_react_agent(CorralChatModel(...), corral_tools(services, ["calculator"]))`).

Each runs through `services.call_tool` (validation, timeout, cancellation, artifacts); a failure comes
back to the model as the tool message's text, as in Corral's own agent graph.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from .graph import TOOL_ERRORS


def corral_tools(services: Any, names: list[str]) -> list[BaseTool]:
    return [_wrap(services, services.tools.get(n)) for n in names]


def _wrap(services: Any, tool: Any) -> BaseTool:
    async def call(**arguments: Any) -> tuple[str, dict]:
        try:
            result = await services.call_tool(tool.name, arguments)
        except TOOL_ERRORS as exc:
            return f"error: {exc}", {"error": str(exc)}
        return result.as_text() or "(no output)", result.to_dict()

    def sync_call(**arguments: Any) -> Any:
        raise NotImplementedError("Corral's tools run on the server's event loop: use ainvoke")

    return StructuredTool.from_function(func=sync_call, coroutine=call, name=tool.name,
                                        description=tool.description or tool.name, args_schema=tool.input_schema,
                                        response_format="content_and_artifact")
