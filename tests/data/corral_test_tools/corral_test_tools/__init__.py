"""Tools a test package adds through the `corral.tools` entry point: they exercise progress, timeouts,
cancellation, failures and artifacts against a real server.

`CORRAL_TEST_MARKERS` names a folder where a tool writes a file when it sees its cancellation, so a
test can tell that the handler (not just the HTTP response) was cancelled.
"""

import asyncio
import os
import struct
import zlib
from pathlib import Path

from pydantic import BaseModel, Field

from tools import ToolError, ToolResult, tool


class Steps(BaseModel):
    steps: int = Field(3, ge=1, le=20)
    delay: float = Field(0.05, ge=0, le=2)


@tool(input=Steps)
async def slow_steps(args: Steps, ctx) -> str:
    """Counts to `steps`, reporting progress after each step."""
    for i in range(args.steps):
        await asyncio.sleep(args.delay)
        ctx.progress(i + 1, args.steps, f"step {i + 1}")
    return f"counted to {args.steps}"


class Wait(BaseModel):
    label: str = Field(pattern=r"^[a-z0-9-]{1,40}$")


async def _wait_forever(args: Wait, ctx) -> str:
    folder = os.environ.get("CORRAL_TEST_MARKERS")
    if folder:  # tests wait for this before they leave, so that leaving finds the tool running
        Path(folder, f"started-{args.label}").write_text("started")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        if folder:
            Path(folder, f"cancelled-{args.label}").write_text("cancelled")
        raise
    return "never"


hang = tool("hang", input=Wait, timeout=1.0)(_wait_forever)
wait_forever = tool("wait_forever", input=Wait, timeout=120.0)(_wait_forever)


@tool(input={"type": "object", "properties": {}})
async def boom(args, ctx):
    """Always fails with an error it did not mean for its caller."""
    raise RuntimeError("the test tool exploded")


@tool(input={"type": "object", "properties": {"why": {"type": "string"}}, "required": ["why"]})
async def refuse(args, ctx):
    """Always refuses, with a message for its caller."""
    raise ToolError(f"refused: {args['why']}")


class Echo(BaseModel):
    text: str = Field(max_length=200)


@tool(input=Echo, side_effects=True)
async def echo(args: Echo, ctx) -> ToolResult:
    """Returns its text."""
    return ToolResult(text=args.text, json={"length": len(args.text)})


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG file of one colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


class Colour(BaseModel):
    red: int = Field(ge=0, le=255)


@tool(input=Colour)
async def make_image(args: Colour, ctx) -> ToolResult:
    """A 4x4 PNG of one colour, kept as an artifact."""
    artifact = ctx.artifacts.put(png(4, 4, (args.red, 0, 0)), "image/png", name="square.png")
    return ToolResult(text="made a square", artifacts=[artifact])


TOOLS = [slow_steps, hang, wait_forever, boom, refuse, echo, make_image]
