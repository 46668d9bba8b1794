"""Hardening (issue 21): inputs that used to get a 500, the OpenAPI document, and a fuzz of every route.

The reproducers each send what once answered 500 and expect a 400 in the API's own error shape, then
check the server still serves. The fuzz runs schemathesis over the document `/openapi.json` serves
(`server/api/openapi.py`), against live servers, asserting no 5xx (`not_a_server_error`): the
document's examples, then schema-valid and schema-invalid requests, with generation capped (a few
tokens, small contexts) so that the CI run takes about 40 s on 2 cores. Pull and push are left out
(they would go out to a registry); create, copy, delete and blob uploads run against a throwaway store.
`CORRAL_FUZZ_EXAMPLES=N pytest -m slow tests/test_fuzz.py` runs N random examples per operation and
mode instead (the variable also sends N schemas through the grammar converter in its test).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os
import socket

import httpx
import hypothesis
import hypothesis.errors
import jsonschema
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from server.api import openapi
from server.api.wire import MAX_JSON_DEPTH
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import copy_store, start_server
from tests.gguf_factory import write_random_llama
from tests.test_tools_fim import write_tools_model


@pytest.fixture(scope="module")
def server(store_dir, model_files, tmp_path_factory):
    """gemma3:270m, tiny, `tooly` (a tiny model whose template takes tools) and `coder` (one with FIM
    tokens), in a store of its own (the fuzz may write to it), with its own data directory."""
    d = tmp_path_factory.mktemp("fuzz")
    root = copy_store(store_dir, d / "models")
    register_gguf(Store(root), "tooly", write_tools_model(d / "tooly.gguf"))
    coder = write_random_llama(d / "coder.gguf", seed=2, extra_tokens=(
        ("<|fim_prefix|>", "control"), ("<|fim_suffix|>", "control"), ("<|fim_middle|>", "control"),
        ("<|fim_pad|>", "control"), ("<|repo_name|>", "control"), ("<|file_sep|>", "control")))
    register_gguf(Store(root), "coder", coder)
    s = start_server(root, {"OLLAMA_NUM_PARALLEL": "2", "CORRAL_DATA_DIR": str(d / "data")}, log_dir=d)
    yield s
    s.stop()


def post(server, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else msgspec.json.encode(body)
    return httpx.post(server.url + path, content=content, timeout=120, **kw)


def ollama_error(r: httpx.Response, fragment: str, status: int = 400) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and fragment in body["error"], body


def openai_error(r: httpx.Response, fragment: str, param: str | None = None, status: int = 400) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"], error
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


def still_serving(server) -> None:
    r = post(server, "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                       "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"], r.text


# ---- a schema that refers to itself -------------------------------------------------------------


SELF = {"$ref": "#"}


def test_self_referencing_schemas_are_400(server):
    ollama_error(post(server, "/api/generate", {"model": "tiny", "prompt": "x", "format": SELF}), "recursive $ref")
    ollama_error(post(server, "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                            "format": {"$ref": "#", "type": "object"}}), "recursive $ref")
    # it requires itself inside itself: no finite value matches
    requires_itself = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
    ollama_error(post(server, "/api/generate", {"model": "tiny", "prompt": "x", "format": requires_itself}),
                 "no finite JSON value")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    for fmt in (SELF, {"allOf": [SELF]}, {"anyOf": [SELF]}):
        r = post(server, "/v1/chat/completions", {**chat, "response_format": {
            "type": "json_schema", "json_schema": {"name": "r", "schema": fmt}}})
        openai_error(r, "recursive $ref")
    r = post(server, "/v1/responses", {"model": "tiny", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "r", "schema": SELF}}})
    openai_error(r, "recursive $ref")
    # a tool whose parameters refer to themselves
    r = post(server, "/api/chat", {**chat, "model": "tooly", "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": SELF}, "required": ["a"]}}}]})
    ollama_error(r, "invalid tools: tool 'f': a recursive $ref")
    # a recursion that nests inside an object and may end is still served
    tree = {"type": "object", "properties": {"v": {"type": "integer"}, "next": SELF}, "required": ["v"]}
    r = post(server, "/api/generate", {"model": "tiny", "prompt": "x", "format": tree, "stream": False,
                                       "options": {"num_predict": 3}})
    assert r.status_code == 200, r.text
    still_serving(server)


def test_schema_recursion_bounds():
    """Recursions the converter used to follow until Python's stack ran out, and the grammar checks."""
    from server.grammar import SchemaError, schema_grammar, tool_call_grammar

    for schema in ({"$ref": "#", "type": "object"}, {"allOf": [SELF]}, {"anyOf": [SELF], "type": "object"},
                   {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}):
        with pytest.raises(SchemaError, match="recursive \\$ref that cannot be expanded finitely"):
            schema_grammar(schema)
    # a $ref with siblings inside its own target: one rule, referring to itself through the object
    node = {"$defs": {"n": {"type": "object", "properties": {
        "v": {"type": "integer"}, "child": {"$ref": "#/$defs/n", "required": ["v"]}}}}, "$ref": "#/$defs/n"}
    assert "root ::=" in schema_grammar(node)
    # $defs chained far deeper than any real schema: a clear error, not a RecursionError
    chain = {"$defs": {f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}}
                       for i in range(300)}, "$ref": "#/$defs/d0"}
    chain["$defs"]["d300"] = {"type": "integer"}
    with pytest.raises(SchemaError, match="nested too deeply"):
        schema_grammar(chain)
    # thousands of properties: the grammar's rules are made without one recursion level per property
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    assert schema_grammar(wide).count("-kv ::=") == 3000
    assert tool_call_grammar([{"type": "function", "function": {"name": "f", "parameters": wide}}])


_KEYWORDS = ["type", "enum", "const", "$ref", "allOf", "anyOf", "oneOf", "nullable", "$defs", "properties",
             "additionalProperties", "required", "patternProperties", "items", "prefixItems", "minItems", "maxItems",
             "minLength", "maxLength", "format", "pattern", "minimum", "maximum", "exclusiveMinimum", "not"]
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                    st.text(max_size=4), st.sampled_from(["object", "array", "string", "integer", "number", "null",
                                                          "#", "#/$defs/a", "#/properties/a", "^a+$", "[", "date"]))
_JSON = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(_KEYWORDS), st.sampled_from(["a", "b"])), inner, max_size=4)),
    max_leaves=25)


@hypothesis.settings(max_examples=int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "1000")), deadline=None,
                     database=None, derandomize=not os.environ.get("CORRAL_FUZZ_EXAMPLES"),
                     suppress_health_check=list(HealthCheck))
@hypothesis.given(schema=st.dictionaries(st.sampled_from(_KEYWORDS), _JSON, max_size=5),
                  kind=st.sampled_from(["format", "response_format", "tool"]))
def test_any_schema_converts_or_is_a_schema_error(schema, kind):
    """Whatever JSON a client sends as a schema, the converter gives a grammar or a SchemaError (a 400),
    never another exception (a 500): `{"format": []}`, `{"$ref": []}`, `{"enum": {}, "const": []}` and
    `{"allOf": [{"required": null}], "required": []}` once raised TypeErrors."""
    from server.grammar import SchemaError, object_schema_grammar, schema_grammar, tool_call_grammar

    try:
        if kind == "format":
            schema_grammar(schema)
        elif kind == "response_format":
            object_schema_grammar(schema)
        else:
            tool_call_grammar([{"type": "function", "function": {"name": "f", "parameters": schema}}], style="hermes")
    except SchemaError:
        pass


def test_num_thread_beyond_the_cores_is_lowered(server):
    """num_thread 100000 made llama.cpp start a pool of 100000 threads: the process died."""
    r = post(server, "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                       "options": {"num_predict": 2, "num_thread": 100000}})
    assert r.status_code == 200 and r.json()["done"], r.text
    assert "num_thread 100000 is more than the" in server.log_text()
    still_serving(server)


# ---- /v1/responses items of the wrong types ------------------------------------------------------


@pytest.mark.parametrize("item, param", [
    ({"type": "reasoning", "summary": 1}, "input[0].summary"),
    ({"type": "reasoning", "content": {"text": "x"}}, "input[0].content"),
    ({"type": "function_call", "call_id": {"a": 1}, "name": "f", "arguments": "{}"}, "input[0].call_id"),
    ({"type": "function_call", "id": [1], "name": "f", "arguments": "{}"}, "input[0].id"),
    ({"type": "function_call_output", "call_id": {"a": 1}, "output": "x"}, "input[0].call_id"),
])
def test_responses_items_of_wrong_types_are_400(server, item, param):
    r = post(server, "/v1/responses", {"model": "tiny", "input": [item, {"role": "user", "content": "x"}]})
    openai_error(r, "must be", param)


def test_responses_call_ids_still_pair(server):
    """The fix keeps what worked: string call_ids pair a function_call with its output."""
    r = post(server, "/v1/responses", {"model": "tiny", "max_output_tokens": 2, "input": [
        {"role": "user", "content": "weather?"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "let me look"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]})
    assert r.status_code == 200, r.text


# ---- tools whose parameters are not a schema object ----------------------------------------------


@pytest.mark.parametrize("function, fragment", [
    ({"name": "f", "parameters": True}, "parameters must be a JSON schema object"),
    ({"name": "f", "parameters": [1]}, "parameters must be a JSON schema object"),
    ({"name": "f", "parameters": {"type": "object", "required": "a"}}, "'required' must be an array of strings"),
    ({"name": "f", "parameters": {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}],
                                                                         "required": 5}}}},
     "'required' must be an array of strings"),
    ({"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "enum": "ab"}}}},
     "'enum' must be an array"),
    ({"name": 5}, "'name' must be a string"),
    ({"name": "f", "description": ["x"]}, "'description' must be a string"),
])
def test_tools_parameters_not_a_schema_are_400(server, function, fragment):
    messages = [{"role": "user", "content": "x"}]
    r = post(server, "/api/chat", {"model": "tooly", "messages": messages, "stream": False,
                                   "tools": [{"type": "function", "function": function}]})
    ollama_error(r, fragment)
    r = post(server, "/api/chat", {"model": "tooly", "messages": messages, "stream": False,
                                   "tools": [{"type": "function", "function": function}], "_debug_render_only": True})
    ollama_error(r, fragment)
    still_serving(server)


def test_tools_with_true_properties_still_render(server):
    """JSON Schema's `true` (anything) as a property's schema is still taken, and rendered."""
    r = post(server, "/api/chat", {"model": "tooly", "messages": [{"role": "user", "content": "x"}],
                                   "_debug_render_only": True, "tools": [{"type": "function", "function": {
                                       "name": "f", "parameters": {"type": "object", "properties": {"a": True}}}}]})
    assert r.status_code == 200 and '"name": "f"' in r.json()["_debug_info"]["rendered_template"], r.text


# ---- JSON nested too deeply -----------------------------------------------------------------------


def nested(depth: int, leaf=1) -> msgspec.Raw:
    """JSON `depth` levels of objects and arrays deep (alternating, innermost `leaf`), as text: deeper
    than Python's own encoder recurses."""
    opens = ['{"a":' if level % 2 == 0 else "[" for level in range(depth)]
    closes = ["}" if level % 2 == 0 else "]" for level in range(depth)]
    return msgspec.Raw("".join(reversed(opens)) + json.dumps(leaf) + "".join(closes))


def body_at_depth(depth: int) -> dict:
    """A /api/show body whose whole nesting is `depth` levels (the top-level object is one)."""
    return {"model": "tiny", "extra": nested(depth - 1)}


def test_nesting_limit_is_exact(server):
    assert post(server, "/api/show", body_at_depth(MAX_JSON_DEPTH)).status_code == 200
    ollama_error(post(server, "/api/show", body_at_depth(MAX_JSON_DEPTH + 1)), "nested too deeply")
    # past Python's own recursion limit the decoder stops: the same answer
    ollama_error(post(server, "/api/show", b"[" * 100_000 + b"]" * 100_000), "nested too deeply")


DEEP = 990
CHAT = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("path, body, openai", [
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": {"type": "object", "properties": {
        "a": nested(DEEP, {"type": "string"})}}}, False),
    ("/api/chat", {"model": "tooly", "messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": nested(DEEP)}}}]}, *CHAT]}, False),
    ("/api/chat", {"model": "tooly", "messages": CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": nested(DEEP, {})}}}}]}, False),
    ("/api/chat", {"model": "tiny", "messages": CHAT, "format": nested(490, {})}, False),
    ("/api/embed", {"model": "tiny", "input": nested(DEEP, "x")}, False),
    ("/api/show", {"model": "tiny", "options": nested(DEEP)}, False),
    ("/api/create", {"model": "x", "parameters": nested(DEEP)}, False),
    ("/api/copy", {"source": nested(DEEP)}, False),
    ("/api/tools/calculator", {"arguments": {"expression": nested(DEEP)}}, False),
    ("/infill", {"model": "tiny", "input_extra": nested(DEEP)}, False),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "r", "schema": nested(DEEP, {})}}}, True),
    ("/v1/chat/completions", {"model": "tooly", "messages": CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": nested(DEEP, {})}}}}]}, True),
    ("/v1/completions", {"model": "tiny", "prompt": nested(DEEP, "x")}, True),
    ("/v1/embeddings", {"model": "tiny", "input": nested(DEEP, "x")}, True),
    ("/v1/responses", {"model": "tiny", "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                                    "arguments": nested(DEEP)}]}, True),
])
def test_deep_json_is_400_on_every_route(server, path, body, openai):
    r = post(server, path, body)
    if openai:
        openai_error(r, "nested too deeply")
    else:
        ollama_error(r, "nested too deeply")


def test_deep_json_on_delete(server):
    r = httpx.request("DELETE", server.url + "/api/delete", content=msgspec.json.encode({"model": nested(DEEP)}),
                      timeout=30)
    ollama_error(r, "nested too deeply")
    still_serving(server)


# ---- an embedding context larger than memory --------------------------------------------------


@pytest.fixture(scope="module")
def small_server(store_dir, tmp_path_factory):
    """4 GiB of memory for models, one sequence: gemma3:270m at num_ctx 32768 (its trained length) loads,
    but its embedding context there would take 33 GiB (llama.cpp computes 262k logits a token)."""
    d = tmp_path_factory.mktemp("smallmem")
    s = start_server(store_dir, {"CORRAL_MEMORY_LIMIT": "4GiB", "OLLAMA_NUM_PARALLEL": "1"}, log_dir=d)
    yield s
    s.stop()


def test_embedding_context_is_bounded_by_memory(small_server):
    options = {"num_ctx": 32768}
    r = post(small_server, "/api/embed", {"model": "gemma3:270m", "input": "hello", "options": options})
    ollama_error(r, "num_ctx 32768 is too large for embeddings with this model")
    assert "at most num_ctx" in r.json()["error"]
    ollama_error(post(small_server, "/api/embeddings", {"model": "gemma3:270m", "prompt": "hello",
                                                        "options": options}), "too large for embeddings")
    openai_error(post(small_server, "/v1/embeddings", {"model": "gemma3:270m", "input": "hello",
                                                       "options": options}), "too large for embeddings")
    # beyond the trained length it is first lowered to it, as for generation
    ollama_error(post(small_server, "/api/embed", {"model": "gemma3:270m", "input": "hello",
                                                   "options": {"num_ctx": 10**6}}), "num_ctx 32768")
    # nothing was allocated: the same model serves a context that fits
    r = post(small_server, "/api/embed", {"model": "gemma3:270m", "input": "hello", "options": {"num_ctx": 512}})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 640, r.text
    assert "unable to create a llama.cpp context" not in small_server.log_text()


def test_embedding_context_estimate_matches_llama_cpp(store_dir):
    """The plan counts the logits llama.cpp computes for every token of an embedding batch (measured:
    538 MiB for gemma3:270m at n_ctx 512 against llama.cpp's 514.5 MiB compute + 8 MiB output + 9 MiB KV)."""
    from server.engine.memory import embedding_context
    from server.store.model import Model
    from server.store.names import ModelName

    store = Store(store_dir)
    model = Model(store, store.find(ModelName.parse("gemma3:270m")))
    for n_ctx, measured_mib in ((512, 514.5 + 8 + 9), (2048, 2058 + 8 + 36)):
        est = embedding_context(model.gguf, n_ctx=n_ctx, n_seq=8).total / 2**20
        assert measured_mib <= est <= measured_mib * 1.1, (n_ctx, est)


# ---- two Host headers ---------------------------------------------------------------------------


def raw_request(server, request: bytes) -> bytes:
    host, port = server.host.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # `Connection: close`: until the server closes
            data += chunk
    return data


def test_two_host_headers_are_refused(server):
    twice = (b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example.com\r\n"
             b"Connection: close\r\n\r\n")
    response = raw_request(server, twice)
    assert response.startswith(b"HTTP/1.1 400"), response
    assert b"400 Bad Request: too many Host headers" in response, response
    same = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    assert raw_request(server, same).startswith(b"HTTP/1.1 400")
    once = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    assert raw_request(server, once).startswith(b"HTTP/1.1 200")


# ---- the OpenAPI document -----------------------------------------------------------------------


COVERED = {"server.api." + m for m in ("ollama", "models", "openai", "llamacpp", "tools", "metrics", "openapi")}


def test_openapi_covers_every_route(server, tmp_path, monkeypatch):
    """Every route is in the document; those of the modules the table covers with their bodies and
    responses (a route added elsewhere since is listed by method, path and parameters until it has a row)."""
    from server.app import create_app

    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path / "data"))
    app = create_app()
    r = httpx.get(server.url + "/openapi.json", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert doc == json.loads(json.dumps(openapi.document(openapi.app_routes(app))))
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == openapi.app_routes(app)
    described = {(op.method, op.path) for op in openapi.OPERATIONS}
    for route in app.routes:
        handlers = getattr(route, "route_handlers", [])
        if route.path == "/mcp" or any(h.fn.__module__ in COVERED for h in handlers):
            keys = openapi.app_routes(type("App", (), {"routes": [route]}))
            assert keys <= described, keys - described


def test_openapi_is_valid(server):
    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    refs = {m for m in json.dumps(doc).split('"$ref": "')[1:]}
    for ref in refs:
        target = ref.split('"', 1)[0]
        assert target.startswith("#/components/schemas/") and target.rsplit("/", 1)[1] in doc["components"]["schemas"]
    examples = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"] and op["summary"], (method, path)
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            # the document's own examples are valid requests by its schemas
            validator = jsonschema.Draft202012Validator({**body["schema"], "components": doc["components"]})
            for example in body.get("examples", {}).values():
                validator.validate(example["value"])
                examples += 1
    assert examples > 20
    # error shapes: Ollama's on Ollama's routes, OpenAI's on /v1
    err = doc["paths"]["/api/chat"]["post"]["responses"]["4XX"]["content"]["application/json"]["schema"]
    assert err == {"$ref": "#/components/schemas/OllamaErrorResponse"}
    err = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["4XX"]["content"]["application/json"]["schema"]
    assert err == {"$ref": "#/components/schemas/OpenAIErrorResponse"}


def test_responses_validate_against_the_document(server):
    """What the server answers is what the document says (schemathesis' response check, on a few calls)."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    calls = [("GET", "/api/version", None), ("GET", "/api/tags", None), ("GET", "/api/ps", None),
             ("GET", "/api/tools", None), ("GET", "/v1/models", None),
             ("POST", "/api/show", {"model": "tiny"}),
             ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "stream": False,
                                        "options": {"num_predict": 2}}),
             ("POST", "/api/chat", {"model": "tiny", "messages": CHAT, "stream": False,
                                    "options": {"num_predict": 2}}),
             ("POST", "/api/embed", {"model": "tiny", "input": ["a", "b"]}),
             ("POST", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 2}),
             ("POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}),
             ("POST", "/v1/responses", {"model": "tiny", "input": "x", "max_output_tokens": 2}),
             ("POST", "/v1/embeddings", {"model": "tiny", "input": "x"}),
             ("POST", "/api/tools/{name}", {"arguments": {"expression": "6*7"}}),
             ("POST", "/api/generate", {"model": "nope", "prompt": "x"}),
             ("POST", "/v1/chat/completions", {"model": "nope", "messages": CHAT})]
    for method, path, body in calls:
        operation = schema[path][method]
        params = {"path_parameters": {"name": "calculator"}} if "{name}" in path else {}
        case = operation.Case(body=body, **params) if body is not None else operation.Case(**params)
        response = case.call(base_url=server.url, timeout=120)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                 content_type_conformance, response_schema_conformance])


# ---- the fuzz -------------------------------------------------------------------------------------


NETWORK = {"/api/pull", "/api/push"}  # would go out to a registry: not fuzzed (a refused connection is a 500)
LIFECYCLE = {"/api/create", "/api/copy", "/api/delete", "/api/blobs/{digest}"}  # write the store
MODELS = ("tiny", "tooly", "gemma3:270m", "coder")
TOOLS = ("calculator", "current_time")
MAX_TOKENS = 4
_turn = itertools.count()


def _cap(container: dict, key: str, hi: int) -> None:
    """A number at `key` lowered to `hi` (other types left: they are for the server to refuse)."""
    value = container.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > hi:
        container[key] = hi


def steer(case, models: tuple[str, ...] = MODELS) -> None:
    """Make a generated request one the server can run cheaply: most name a model (or tool) that exists,
    and generation is capped at a few tokens and small contexts. Everything else stays as generated."""
    k = next(_turn)
    params = case.path_parameters or {}
    if "name" in params and k % 3:
        params["name"] = TOOLS[k % 2]
    if "model" in params and k % 3:
        params["model"] = models[k % len(models)]
    body = case.body
    if "digest" in params and k % 3:  # a well-formed digest: of the body sent (an upload that verifies)
        data = body if isinstance(body, bytes) else os.urandom(8)
        params["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
    if not isinstance(body, dict) or case.path == "/mcp":
        return
    for key in ("model", "source", "from"):
        if isinstance(body.get(key), str) and k % 4:
            body[key] = models[k % len(models)]
    if "options" not in body or body["options"] is None:
        body["options"] = {}
    options = body["options"]
    if isinstance(options, dict):
        value = options.get("num_predict")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if value is None:
                options["num_predict"] = MAX_TOKENS
        elif not 0 <= value <= MAX_TOKENS:
            options["num_predict"] = MAX_TOKENS  # -1 and -2 mean "no limit"
        _cap(options, "num_ctx", 1024)  # larger contexts load for seconds (they are tested above)
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict"):
        _cap(body, key, MAX_TOKENS)


@functools.cache
def fuzz_schema():
    """The served document with its objects closed to unknown fields: the server ignores them (negative
    mode still sends some), and examples spent on them would not reach the fields that matter."""
    doc = copy.deepcopy(openapi.document())

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(doc["components"])
    return schemathesis.openapi.from_dict(doc)


def fuzz(url: str, method: str, path: str, examples: int, *, derandomize: bool,
         models: tuple[str, ...] = MODELS) -> None:
    operation = fuzz_schema()[path][method.upper()]
    for mode in ("examples", GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        if mode == "examples":  # the document's example requests first (capped like the rest)
            strategies = operation.get_strategies_from_examples()
            if not strategies:
                continue
            strategy = hypothesis.strategies.one_of(strategies)
        else:
            strategy = operation.as_strategy(generation_mode=mode)

        @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                             phases=[Phase.generate] if derandomize else [Phase.generate, Phase.shrink],
                             suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @hypothesis.given(case=strategy)
        def run(case):
            steer(case, models)
            headers = {"Accept": "application/json, text/event-stream"} if path == "/mcp" else None
            case.call_and_validate(base_url=url, headers=headers, checks=[not_a_server_error], timeout=120)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            if mode is not GenerationMode.NEGATIVE:
                raise
            # nothing can be made invalid here (any body, string path parameters only)


def _operations(lifecycle: bool) -> list[tuple[str, str]]:
    return [(op.method, op.path) for op in openapi.OPERATIONS
            if op.path not in NETWORK and (op.path in LIFECYCLE) == lifecycle]


@pytest.fixture(scope="module")
def lifecycle_server(model_files, tmp_path_factory):
    """A throwaway store with only the tiny model: create, copy, delete and blob uploads write to it."""
    d = tmp_path_factory.mktemp("fuzzlife")
    register_gguf(Store(d / "models"), "tiny", model_files["tiny"])
    s = start_server(d / "models", {"CORRAL_DATA_DIR": str(d / "data")}, log_dir=d)
    yield s
    s.stop()


EXAMPLES = int(os.environ.get("CORRAL_FUZZ_CI_EXAMPLES", "25"))  # per operation and mode: ~40 s in all on 2 cores


@pytest.mark.parametrize("method, path", _operations(lifecycle=False))
def test_fuzz(server, method, path):
    fuzz(server.url, method, path, EXAMPLES, derandomize=True)


@pytest.mark.parametrize("method, path", _operations(lifecycle=True))
def test_fuzz_model_lifecycle(lifecycle_server, method, path):
    fuzz(lifecycle_server.url, method, path, EXAMPLES, derandomize=True, models=("tiny",))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CORRAL_FUZZ_EXAMPLES"), reason="set CORRAL_FUZZ_EXAMPLES=N for a longer fuzz")
@pytest.mark.parametrize("method, path", _operations(lifecycle=False) + _operations(lifecycle=True))
def test_fuzz_long(server, lifecycle_server, method, path):
    """`CORRAL_FUZZ_EXAMPLES=200 pytest -m slow tests/test_fuzz.py`: random (not derandomized) examples,
    shrunk to a minimal failing request when one fails."""
    target = lifecycle_server if path in LIFECYCLE else server
    fuzz(target.url, method, path, int(os.environ["CORRAL_FUZZ_EXAMPLES"]), derandomize=False,
         models=("tiny",) if path in LIFECYCLE else MODELS)
