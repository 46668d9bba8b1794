"""The tool registry over MCP (issue 13), against real `corral serve` processes.

- the `mcp` SDK's own client at `/mcp`: initialize, tools/list, tools/call with progress, images, errors and
  cancellation;
- langchain-mcp-adapters' MultiServerMCPClient, as an agent framework would connect;
- outside MCP servers imported through the config file: a stdio server (FastMCP) and Corral's own `/mcp`
  as a streamable-HTTP one (progress, images, errors, timeouts and cancellation passed through), and an entry
  whose command does not exist;
- the Host and Origin checks guarding `/mcp` as they guard every other route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Server, start_server

TEST_TOOLS = {"slow_steps", "hang", "wait_forever", "boom", "refuse", "echo", "make_image"}
BUILTIN = {"calculator", "current_time"}

# A JSON-RPC initialize, as any MCP client's first request: for the raw HTTP checks.
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": types.LATEST_PROTOCOL_VERSION, "capabilities": {},
    "clientInfo": {"name": "test", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def mcp_session(url: str) -> AsyncIterator[ClientSession]:
    """An initialized session of the SDK's client with the server's /mcp."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as http, \
            streamable_http_client(url + "/mcp", http_client=http) as (read, write, _), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


def texts(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def appears(path: Path, within: float = 10.0) -> bool:
    """Whether the file shows up in time (a tool writes it when it sees its cancellation)."""
    for _ in range(int(within / 0.1)):
        if path.exists():
            return True
        await asyncio.sleep(0.1)
    return path.exists()


# ---- the SDK's client against the test package's tools -------------------------------------------


async def test_initialize_and_list_tools(tool_server: Server):
    async with httpx.AsyncClient(timeout=30) as http, \
            streamable_http_client(tool_server.url + "/mcp", http_client=http) as (read, write, _), \
            ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.serverInfo.name == "corral"
        assert init.capabilities.tools is not None
        listed = {t.name: t for t in (await session.list_tools()).tools}
    assert TEST_TOOLS | BUILTIN <= set(listed)
    over_http = {x["function"]["name"]: x for x in httpx.get(tool_server.url + "/api/tools").json()["tools"]}
    assert set(listed) == set(over_http)
    for name, t in listed.items():  # the same schema as /api/tools, and read-only exactly when side-effect free
        assert t.inputSchema == over_http[name]["function"]["parameters"], name
        assert t.inputSchema["type"] == "object"
        assert t.description == over_http[name]["function"]["description"]
        assert t.annotations.readOnlyHint is (not over_http[name]["side_effects"]), name
    assert listed["echo"].annotations.readOnlyHint is False
    assert listed["calculator"].annotations.readOnlyHint is True
    assert "expression" in listed["calculator"].inputSchema["properties"]
    assert listed["calculator"].inputSchema["required"] == ["expression"]


async def test_call_calculator(tool_server: Server):
    async with mcp_session(tool_server.url) as session:
        result = await session.call_tool("calculator", {"expression": "6*7"})
        clock = await session.call_tool("current_time")  # no arguments at all: the defaults
    assert result.isError is False
    assert result.structuredContent == {"expression": "6*7", "result": 42}
    assert json.loads(texts(result)) == {"expression": "6*7", "result": 42}
    assert clock.isError is False and clock.structuredContent["timezone"] == "UTC"


async def test_progress_notifications_in_order(tool_server: Server):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with mcp_session(tool_server.url) as session:
        result = await session.call_tool("slow_steps", {"steps": 3, "delay": 0.02}, progress_callback=on_progress)
    assert not result.isError
    assert texts(result) == "counted to 3"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_concurrent_calls_keep_their_own_progress(tool_server: Server):
    seen: dict[int, list[float]] = {2: [], 4: []}

    def recorder(steps: int):
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            assert total == steps
            seen[steps].append(progress)
        return on_progress

    async with mcp_session(tool_server.url) as session:
        results = await asyncio.gather(*(
            session.call_tool("slow_steps", {"steps": n, "delay": 0.02}, progress_callback=recorder(n)) for n in seen))
    assert [texts(r) for r in results] == ["counted to 2", "counted to 4"]
    assert seen == {2: [1, 2], 4: [1, 2, 3, 4]}


async def test_image_content_is_the_artifact(tool_server: Server):
    async with mcp_session(tool_server.url) as session:
        result = await session.call_tool("make_image", {"red": 200})
    assert not result.isError
    assert texts(result) == "made a square"
    images = [c for c in result.content if isinstance(c, types.ImageContent)]
    assert len(images) == 1 and images[0].mimeType == "image/png"
    png = base64.b64decode(images[0].data, validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    async with httpx.AsyncClient(base_url=tool_server.url, timeout=30) as http:
        r = await http.post("/api/tools/make_image", json={"arguments": {"red": 200}})
        assert r.status_code == 200, r.text
        (artifact,) = r.json()["artifacts"]
        assert artifact["media_type"] == "image/png" and artifact["url"] == f"/api/artifacts/{artifact['digest']}"
        stored = await http.get(artifact["url"])
    assert stored.status_code == 200 and stored.headers["content-type"] == "image/png"
    assert stored.content == png
    assert artifact["size"] == len(png)


async def test_errors_are_results_and_the_server_goes_on(tool_server: Server):
    async with mcp_session(tool_server.url) as session:
        unknown = await session.call_tool("no_such_tool", {})
        assert unknown.isError is True
        assert texts(unknown) == "tool 'no_such_tool' not found"

        invalid = await session.call_tool("calculator", {"expr": "1+1"})
        assert invalid.isError is True
        assert "invalid arguments for tool 'calculator'" in texts(invalid)
        assert "'expression'" in texts(invalid)

        wrong_type = await session.call_tool("make_image", {"red": 999})
        assert wrong_type.isError is True and "'red'" in texts(wrong_type)

        refused = await session.call_tool("refuse", {"why": "not today"})
        assert refused.isError is True
        assert texts(refused) == "refused: not today"

        boom = await session.call_tool("boom", {})
        assert boom.isError is True
        assert texts(boom) == "tool 'boom' failed: RuntimeError: the test tool exploded"

        timed_out = await session.call_tool("hang", {"label": "mcp-timeout"})
        assert timed_out.isError is True and "timed out" in texts(timed_out)

        # the same session, and new ones, go on working
        after = await session.call_tool("echo", {"text": "still here"})
        assert not after.isError and texts(after).startswith("still here")
    async with mcp_session(tool_server.url) as session:
        again = await session.call_tool("calculator", {"expression": "1+2"})
    assert again.structuredContent["result"] == 3
    assert httpx.get(tool_server.url + "/api/version").status_code == 200


async def test_client_leaving_cancels_the_tool(tool_server: Server):
    async def call() -> None:
        async with mcp_session(tool_server.url) as session:
            await session.call_tool("wait_forever", {"label": "mcp-leave"})

    task = asyncio.ensure_future(call())
    await asyncio.sleep(1.0)
    assert not task.done()
    task.cancel()  # the connection closes with the session's HTTP client
    await asyncio.gather(task, return_exceptions=True)
    assert await appears(tool_server.markers / "cancelled-mcp-leave")


# ---- langchain-mcp-adapters -----------------------------------------------------------------------


async def test_langchain_mcp_adapters(tool_server: Server):
    from langchain_mcp_adapters.client import MultiServerMCPClient

    client = MultiServerMCPClient({"corral": {"url": tool_server.url + "/mcp", "transport": "streamable_http"}})
    tools = {t.name: t for t in await client.get_tools()}
    assert TEST_TOOLS | BUILTIN <= set(tools)
    assert "expression" in json.dumps(tools["calculator"].args_schema)
    result = await tools["calculator"].ainvoke({"expression": "2**10"})
    assert "1024" in str(result)


# ---- outside MCP servers imported through the config file ----------------------------------------

STDIO_SERVER = textwrap.dedent('''
    """A small outside MCP server over stdio, for the import tests."""
    import os
    import pathlib

    import anyio
    from mcp.server.fastmcp import FastMCP
    from mcp.types import ToolAnnotations

    mcp = FastMCP("ext")


    @mcp.tool()
    def shout(text: str) -> str:
        """Returns the text in capitals."""
        return text.upper()


    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def length(text: str) -> int:
        """Counts the characters of the text."""
        return len(text)


    @mcp.tool()
    def fail(text: str) -> str:
        """Always fails."""
        raise ValueError(f"cannot do {text}")


    @mcp.tool()
    async def nap(label: str) -> str:
        """Sleeps until cancelled, and leaves a file saying so in $MARKERS."""
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            pathlib.Path(os.environ["MARKERS"], f"cancelled-{label}").write_text("cancelled")
            raise
        return "woke up"


    if __name__ == "__main__":
        mcp.run()
''')


@pytest.fixture(scope="module")
def importing_server(tmp_path_factory, store_dir, tool_server) -> Server:
    """A server whose config file names a stdio server (`ext`, its calls limited to 3 s; its tools mark their
    cancellation in `markers`), a command that does not exist (`missing`), and the tool server's /mcp over
    streamable HTTP (`up`)."""
    d = tmp_path_factory.mktemp("mcpimport")
    (d / "markers").mkdir()
    script = d / "ext_server.py"
    script.write_text(STDIO_SERVER)
    config = d / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {
        "ext": {"command": sys.executable, "args": [str(script)], "env": {"MARKERS": str(d / "markers")},
                "timeout": 3},
        "missing": {"command": str(d / "no-such-program"), "args": []},
        "up": {"url": tool_server.url + "/mcp"},
    }}))
    server = start_server(store_dir, {"CORRAL_MCP_CONFIG": str(config), "CORRAL_DATA_DIR": str(d / "data")},
                          log_dir=d)
    server.markers = d / "markers"
    yield server
    server.stop()


def listed_tools(server: Server) -> dict[str, dict]:
    r = httpx.get(server.url + "/api/tools", timeout=30)
    assert r.status_code == 200, r.text
    return {x["function"]["name"]: x for x in r.json()["tools"]}


def test_stdio_server_tools_are_imported(importing_server: Server):
    tools = listed_tools(importing_server)
    assert tools["ext_shout"]["source"] == "mcp:ext"
    assert tools["ext_shout"]["function"]["description"] == "Returns the text in capitals."
    assert tools["ext_shout"]["function"]["parameters"]["properties"]["text"]["type"] == "string"
    assert tools["ext_shout"]["side_effects"] is True  # not marked read-only by its server
    assert tools["ext_length"]["side_effects"] is False  # readOnlyHint
    assert BUILTIN <= set(tools)

    r = httpx.post(importing_server.url + "/api/tools/ext_shout", json={"arguments": {"text": "hi"}}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "HI"
    assert r.json()["tool"] == "ext_shout"


def test_stdio_server_errors(importing_server: Server):
    url = importing_server.url + "/api/tools/"
    missing = httpx.post(url + "ext_shout", json={"arguments": {}}, timeout=30)
    assert missing.status_code == 400
    assert "'text'" in missing.json()["error"]  # validated here, against the imported schema
    failed = httpx.post(url + "ext_fail", json={"arguments": {"text": "that"}}, timeout=30)
    assert failed.status_code == 422
    assert "cannot do that" in failed.json()["error"]
    ok = httpx.post(url + "ext_shout", json={"arguments": {"text": "again"}}, timeout=30)
    assert ok.status_code == 200 and ok.json()["content"] == "AGAIN"


async def test_imported_tool_through_own_mcp(importing_server: Server):
    async with mcp_session(importing_server.url) as session:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert listed["ext_length"].annotations.readOnlyHint is True
        assert listed["ext_shout"].annotations.readOnlyHint is False
        result = await session.call_tool("ext_shout", {"text": "over mcp"})
    assert not result.isError
    assert texts(result).splitlines()[0] == "OVER MCP"


def test_streamable_http_server_tools_are_imported(importing_server: Server, tool_server: Server):
    tools = listed_tools(importing_server)
    assert {f"up_{name}" for name in TEST_TOOLS | BUILTIN} <= set(tools)
    assert tools["up_calculator"]["source"] == "mcp:up"
    assert tools["up_calculator"]["side_effects"] is False and tools["up_echo"]["side_effects"] is True

    r = httpx.post(importing_server.url + "/api/tools/up_calculator", json={"arguments": {"expression": "6*7"}},
                   timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["json"] == {"expression": "6*7", "result": 42}

    refused = httpx.post(importing_server.url + "/api/tools/up_refuse", json={"arguments": {"why": "upstream"}},
                         timeout=30)
    assert refused.status_code == 422 and refused.json()["error"] == "refused: upstream"


def test_streamable_http_import_streams_progress(importing_server: Server):
    with httpx.stream("POST", importing_server.url + "/api/tools/up_slow_steps",
                      json={"arguments": {"steps": 3, "delay": 0.02}, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[:-1] == [{"status": f"step {i}", "completed": i, "total": 3} for i in (1, 2, 3)]
    assert lines[-1] == {"status": "success", "tool": "up_slow_steps", "content": "counted to 3"}


def test_imported_image_becomes_an_artifact(importing_server: Server, tool_server: Server):
    r = httpx.post(importing_server.url + "/api/tools/up_make_image", json={"arguments": {"red": 7}}, timeout=30)
    assert r.status_code == 200, r.text
    (artifact,) = r.json()["artifacts"]
    here = httpx.get(importing_server.url + artifact["url"], timeout=30)
    assert here.status_code == 200 and here.content.startswith(b"\x89PNG")
    there = httpx.post(tool_server.url + "/api/tools/make_image", json={"arguments": {"red": 7}}, timeout=30)
    assert there.json()["artifacts"][0]["digest"] == artifact["digest"]  # the same bytes, the same address


async def test_leaving_an_imported_call_cancels_it_at_its_server(importing_server: Server):
    async with httpx.AsyncClient(timeout=30) as http:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up: Corral cancels the call, and tells ext
            await http.post(importing_server.url + "/api/tools/ext_nap", json={"arguments": {"label": "leave"}},
                            timeout=httpx.Timeout(30, read=1))
    assert await appears(importing_server.markers / "cancelled-leave")
    r = httpx.post(importing_server.url + "/api/tools/ext_shout", json={"arguments": {"text": "on"}}, timeout=30)
    assert r.status_code == 200 and r.json()["content"] == "ON"


async def test_imported_call_past_its_timeout(importing_server: Server):
    r = httpx.post(importing_server.url + "/api/tools/ext_nap", json={"arguments": {"label": "late"}}, timeout=30)
    assert r.status_code == 504, r.text
    assert r.json()["error"] == "tool 'ext_nap' timed out after 3 s and was cancelled"
    assert await appears(importing_server.markers / "cancelled-late")
    assert listed_tools(importing_server)["ext_nap"]["timeout"] == 3


def test_missing_command_is_left_out_with_a_warning(importing_server: Server):
    tools = listed_tools(importing_server)
    assert not any(name.startswith("missing_") for name in tools)
    assert "ext_shout" in tools and "up_calculator" in tools and "calculator" in tools
    log = importing_server.log_text()
    assert "missing" in log and "WARNING" in log.upper()
    assert any("missing" in line and "left out" in line for line in log.splitlines()), log


# ---- Host and Origin checks on /mcp ---------------------------------------------------------------


def test_mcp_host_and_origin_checks(tool_server: Server):
    url = tool_server.url + "/mcp"
    evil_host = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example"}, timeout=30)
    assert evil_host.status_code == 403
    evil_origin = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://evil.example"},
                             timeout=30)
    assert evil_origin.status_code == 403

    ok = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://localhost"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == "http://localhost"
    assert '"serverInfo"' in ok.text and '"corral"' in ok.text

    preflight = httpx.request("OPTIONS", url, headers={"Origin": "http://localhost",
                                                       "Access-Control-Request-Method": "POST"}, timeout=30)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost"



def test_deeply_nested_body_is_refused_before_the_sdk(tool_server):
    deep = "[" * 990 + "1" + "]" * 990
    body = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"calculator","arguments":'
            '{"expression":' + deep + '}}}')
    r = httpx.post(tool_server.url + "/mcp", content=body, timeout=30, headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700 and "nested" in r.json()["error"]["message"]
    assert httpx.get(tool_server.url + "/").status_code == 200
