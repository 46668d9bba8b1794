"""What a tool is: a name, a description, an input schema, an async handler, a timeout, and whether it
has side effects (agents ask for approval before those).

A handler is `async def handler(args, ctx) -> ToolResult | str | dict | list`. `args` is an instance of
the tool's pydantic model when the tool was made from one, else the validated JSON object (a dict).
`ctx` (ToolContext) carries the service, a cancellation signal, a progress callback and the artifact
store. A handler raises `ToolError` for a failure its caller should read (a bad expression, an
unknown time zone); anything else it raises is reported as the tool having failed.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonschema
import pydantic

from server.errors import BadRequest, NotFound

from .artifacts import ArtifactStore

if TYPE_CHECKING:
    from server.services import Services

NAME_RULE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ToolError(Exception):
    """A failure the tool reports to its caller (422): the arguments were valid, the work could not be done."""


class ToolNotFound(NotFound):
    pass


class InvalidArguments(BadRequest):
    pass


class ToolTimeout(Exception):
    """The tool ran past its timeout and was cancelled (504)."""


class ToolFailed(Exception):
    """The tool raised something it did not mean for its caller (500); the server goes on serving."""


@dataclass
class Progress:
    completed: float
    total: float | None = None
    status: str = ""


class ToolContext:
    """What a running tool gets besides its arguments."""

    def __init__(self, services: "Services | None", artifacts: ArtifactStore, emit: Callable[[Progress], None],
                 tool: str):
        self.services = services
        self.artifacts = artifacts
        self.tool = tool
        self.cancelled = threading.Event()  # set when the call is cancelled: for work running in threads
        self._emit = emit

    def progress(self, completed: float, total: float | None = None, status: str = "") -> None:
        """Report progress; safe from any thread."""
        self._emit(Progress(completed, total, status))


Handler = Callable[[Any, ToolContext], Awaitable[Any]]


@dataclass
class Tool:
    name: str
    description: str
    handler: Handler
    input_schema: dict = field(default_factory=lambda: {"type": "object", "properties": {}})
    input_model: type[pydantic.BaseModel] | None = None
    timeout: float | None = None  # seconds; None: the server's CORRAL_TOOL_TIMEOUT
    side_effects: bool = False
    source: str = "builtin"  # builtin, a package's entry point, or mcp:<server>

    def __post_init__(self) -> None:
        if not NAME_RULE.match(self.name or ""):
            raise ValueError(f"invalid tool name {self.name!r}: it must match {NAME_RULE.pattern}")
        if not inspect.iscoroutinefunction(self.handler):
            raise TypeError(f"tool {self.name!r}: the handler must be an async function")
        if self.input_model is not None:
            self.input_schema = _model_schema(self.input_model)
        if not isinstance(self.input_schema, dict) or self.input_schema.get("type", "object") != "object":
            raise ValueError(f"tool {self.name!r}: the input schema must describe an object")
        jsonschema.validators.validator_for(self.input_schema).check_schema(self.input_schema)
        self._validator = jsonschema.validators.validator_for(self.input_schema)(self.input_schema)

    def validate(self, arguments: Any) -> Any:
        """The arguments as the handler takes them, or InvalidArguments naming the field and the rule."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidArguments(f"invalid arguments for tool '{self.name}': expected an object, "
                                   f"got {type(arguments).__name__}")
        if self.input_model is not None:
            try:
                return self.input_model.model_validate(arguments)
            except pydantic.ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(arguments)"
                raise InvalidArguments(f"invalid arguments for tool '{self.name}': at '{where}': {first['msg']} "
                                       f"(rule: {first['type']})") from None
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(arguments))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "(arguments)"
            raise InvalidArguments(f"invalid arguments for tool '{self.name}': at '{where}': {error.message} "
                                   f"(rule: {error.validator})")
        return arguments

    def spec(self) -> dict:
        """The tool in OpenAI's function shape, which chat requests' `tools` take."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.input_schema}}


def tool(name: str | None = None, *, description: str | None = None, input: type[pydantic.BaseModel] | dict | None = None,
         timeout: float | None = None, side_effects: bool = False) -> Callable[[Handler], Tool]:
    """Make a Tool of an async function: `@tool(input=Args)` over `async def my_tool(args: Args, ctx)`.
    The name defaults to the function's, the description to its docstring."""

    def make(fn: Handler) -> Tool:
        model = input if isinstance(input, type) and issubclass(input, pydantic.BaseModel) else None
        schema = input if isinstance(input, dict) else {"type": "object", "properties": {}}
        return Tool(name=name or fn.__name__, description=description or inspect.cleandoc(fn.__doc__ or ""),
                    handler=fn, input_schema=schema, input_model=model, timeout=timeout, side_effects=side_effects)

    return make


def _model_schema(model: type[pydantic.BaseModel]) -> dict:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


async def call_handler(tool: Tool, args: Any, ctx: ToolContext, timeout: float) -> Any:
    """Run the handler under its timeout, telling threads of a cancellation through ctx.cancelled."""
    try:
        async with asyncio.timeout(timeout):
            return await tool.handler(args, ctx)
    except TimeoutError:
        ctx.cancelled.set()
        raise ToolTimeout(f"tool '{tool.name}' timed out after {timeout:g} s and was cancelled") from None
    except asyncio.CancelledError:
        ctx.cancelled.set()
        raise
