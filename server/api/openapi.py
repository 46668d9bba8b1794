"""An OpenAPI 3.1 description of every route: `GET /openapi.json`.

The handlers decode their bodies themselves (`decode(request, t.X)`), so Litestar's own generator
knows no request bodies (and the app keeps `openapi_config=None`). The document is built instead
from one table, `OPERATIONS`: each route's method, path, request wire type, response wire type(s)
and summary, with the JSON Schemas msgspec derives from those types (`msgspec.json.schema_components`,
the same types the routes decode and encode, so the two cannot drift apart). Errors have each API's
own shape: `{"error": "…"}` on Ollama's routes, `{"error": {"message", "type", "param", "code"}}`
on `/v1`. Streams are described by the shape of one NDJSON line or one SSE event's data.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

import msgspec
from litestar import Request, Response, get

from .. import __version__
from . import image_types as it_
from . import llamacpp
from . import openai_types as o
from . import retrieval_types as rt
from . import training_types as tt
from . import types as t
from .wire import MAX_JSON_DEPTH


@dataclass(frozen=True)
class Operation:
    method: str  # get | head | post | delete
    path: str  # OpenAPI's form: /api/tools/{name}
    summary: str
    tag: str
    request: Any = None  # the body's wire type (or its content map); None: no body
    response: Any = None  # the JSON answer's wire type (a tuple: one of them); None: see `content`
    stream: Any = None  # with `stream: true`: the type (a tuple: one of them) of an NDJSON line or SSE event
    sse: bool = False  # the stream is server-sent events (the /v1 and /infill routes), not NDJSON
    content: dict[str, Any] | None = None  # a success body that is not JSON (text, a file, nothing)
    status: str = "200"
    body_required: bool = True
    openai_errors: bool = False  # errors in OpenAI's shape
    description: str = ""
    parameters: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    examples: tuple[dict[str, Any], ...] = ()  # request bodies, as a client would send them


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_EMPTY: dict[str, Any] = {}
_DIGEST = _path_param("digest", "sha256:<64 hex digits>")
_STATUS = {"type": "object", "properties": {"cloud": {"type": "object", "properties": {
    "disabled": {"type": "boolean"}, "source": {"type": "string"}}}}}


def _subclasses(kind: type) -> list[type]:
    out = []
    for sub in kind.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


# every event of a streamed /v1/responses (a union msgspec can describe: the events are tagged by `type`)
_RESPONSE_EVENTS = Union[tuple(k for k in _subclasses(o.ResponseEvent) if not k.__name__.startswith("_"))]

_MODEL = "gemma3:270m"
_HI = [{"role": "user", "content": "Why is the sky blue?"}]
_ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
_CALL = [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                           "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]

OLLAMA, OPENAI, TOOLS, LLAMACPP, CORRAL, AGENTS = "Ollama", "OpenAI", "Tools", "llama-server", "Corral", "Agents"
ADAPTERS = "Adapters"
RETRIEVAL = "Retrieval"
_COLLECTION = {"name": "name", "in": "path", "required": True, "description": "the collection's name",
               "schema": {"type": "string"}}
_DOCUMENT = {"name": "document_id", "in": "path", "required": True,
             "description": "the document's id (the rest of the path: it may hold '/')", "schema": {"type": "string"}}

OPERATIONS: tuple[Operation, ...] = (
    # ---- Ollama: liveness, generation, embeddings
    Operation("get", "/", "Liveness: `Ollama is running`", OLLAMA, content=_TEXT),
    Operation("head", "/", "Liveness", OLLAMA, content=_EMPTY),
    Operation("get", "/api/version", "The server's version", OLLAMA, response=t.VersionResponse),
    Operation("head", "/api/version", "The server's version (headers only)", OLLAMA, content=_EMPTY),
    Operation("post", "/api/generate", "Complete a prompt (fill-in-the-middle with `suffix`)", OLLAMA,
              request=t.GenerateRequest, response=(t.GenerateResponse, t.DebugRenderResponse),
              stream=(t.GenerateResponse, t.ErrorResponse),
              examples=({"model": _MODEL, "prompt": "Why is the sky blue?", "stream": False},
                        {"model": _MODEL, "prompt": "The capital of France, as JSON:", "format": _ANSWER,
                         "options": {"temperature": 0, "num_predict": 32}},
                        {"model": _MODEL, "prompt": "def add(a, b):\n    ", "suffix": "\n", "stream": False},
                        {"model": _MODEL}),
              description="Streams NDJSON unless `stream` is false. An empty prompt loads the model "
                          "(`keep_alive: 0` unloads it); `_debug_render_only` answers with the rendered prompt."),
    Operation("post", "/api/chat", "Answer a chat, with tools, structured output and thinking", OLLAMA,
              request=t.ChatRequest, response=(t.ChatResponse, t.DebugRenderResponse),
              stream=(t.ChatResponse, t.ErrorResponse),
              examples=({"model": _MODEL, "messages": _HI, "stream": False},
                        {"model": _MODEL, "messages": _HI, "format": "json", "think": False},
                        {"model": _MODEL, "messages": _CALL, "tools": [_WEATHER], "tool_choice": "auto"},
                        {"model": _MODEL, "messages": _HI, "_debug_render_only": True}),
              description="Streams NDJSON unless `stream` is false. No messages loads the model."),
    Operation("post", "/api/embed", "L2-normalised embeddings of one or more inputs", OLLAMA,
              request=t.EmbedRequest, response=t.EmbedResponse,
              examples=({"model": _MODEL, "input": ["first text", "second text"], "dimensions": 128},
                        {"model": _MODEL, "input": "one text", "truncate": False})),
    Operation("post", "/api/embeddings", "Legacy: one unnormalised embedding", OLLAMA,
              request=t.EmbeddingRequest, response=t.EmbeddingResponse,
              examples=({"model": _MODEL, "prompt": "one text"},)),
    # ---- Ollama: models
    Operation("get", "/api/tags", "Stored models", OLLAMA, response=t.ListResponse),
    Operation("head", "/api/tags", "Stored models (headers only)", OLLAMA, content=_EMPTY),
    Operation("post", "/api/show", "A model's modelfile, parameters, template, details and capabilities",
              OLLAMA, request=t.ShowRequest, response=t.ShowResponse,
              examples=({"model": _MODEL}, {"model": _MODEL, "verbose": True})),
    Operation("get", "/api/ps", "Loaded models", OLLAMA, response=t.ProcessResponse),
    Operation("post", "/api/copy", "Copy a model under another name", OLLAMA, request=t.CopyRequest,
              content=_EMPTY, examples=({"source": _MODEL, "destination": "my-gemma"},)),
    Operation("delete", "/api/delete", "Delete a model", OLLAMA, request=t.DeleteRequest, content=_EMPTY,
              examples=({"model": "my-gemma"},)),
    Operation("post", "/api/pull", "Download a model from a registry", OLLAMA, request=t.PullRequest,
              response=t.ProgressResponse, stream=(t.ProgressResponse, t.ErrorResponse),
              examples=({"model": "qwen3:0.6b"},)),
    Operation("post", "/api/push", "Upload a model to a registry", OLLAMA, request=t.PushRequest,
              response=t.ProgressResponse, stream=(t.ProgressResponse, t.ErrorResponse),
              examples=({"model": "me/my-model"},)),
    Operation("post", "/api/create", "Create a model from a model, GGUF files or a Modelfile", OLLAMA,
              request=t.CreateRequest, response=t.ProgressResponse,
              stream=(t.ProgressResponse, t.ErrorResponse),
              examples=({"model": "brief", "from": _MODEL, "system": "Answer in one sentence.",
                         "parameters": {"temperature": 0.2}, "stream": False},)),
    Operation("head", "/api/blobs/{digest}", "Whether a blob is stored (404 if not)", OLLAMA, content=_EMPTY,
              parameters=(_DIGEST,)),
    Operation("post", "/api/blobs/{digest}", "Upload a blob (201; 200 when it was stored already)", OLLAMA,
              content=_EMPTY, status="201", parameters=(_DIGEST,),
              request={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
    Operation("get", "/api/status", "Cloud status (disabled: a local server)", OLLAMA,
              content={"application/json": {"schema": _STATUS}}),
    Operation("post", "/api/me", "Cloud sign-in: always 401 on a local server", OLLAMA, content=_EMPTY,
              status="401", body_required=False),
    # ---- agents
    Operation("get", "/api/agents", "Every agent and user graph", AGENTS, response=t.AgentList),
    Operation("post", "/api/agents", "Create (or replace) an agent", AGENTS, request=t.AgentDefinition,
              response=t.AgentInfo,
              examples=({"name": "calc-agent", "model": _MODEL, "tools": ["calculator"], "max_steps": 4},),
              description="An unknown model, a tool or glob that matches nothing, or an unknown field: 400 naming it. "
                          "Without the agents extra: 501."),
    Operation("get", "/api/agents/{name}", "One agent's definition", AGENTS, response=t.AgentInfo,
              parameters=(_path_param("name", "the agent's name"),)),
    Operation("delete", "/api/agents/{name}", "Delete an agent", AGENTS, content=_EMPTY,
              parameters=(_path_param("name", "the agent's name"),)),
    # ---- LoRA adapters
    Operation("get", "/api/adapters", "Stored LoRA adapters and the loaded models holding them", ADAPTERS,
              response=t.AdapterList),
    Operation("post", "/api/adapters/load", "Load an adapter on a model's weights now", ADAPTERS,
              request=t.AdapterLoadRequest, response=t.AdapterLoadResponse,
              examples=({"model": "gemma3:270m", "adapter": "my-lora"},),
              description="An unknown model or adapter 404; an adapter made for other weights 400."),
    Operation("post", "/api/adapters/unload", "Free an adapter from a loaded model", ADAPTERS,
              request=t.AdapterLoadRequest, response=t.AdapterLoadResponse,
              examples=({"model": "gemma3:270m", "adapter": "my-lora"},),
              description="A model that is not loaded, or an adapter it does not hold: 404."),
    # ---- training jobs and classifiers
    Operation("post", "/api/train", "Start a training job: a LoRA adapter ending in a model, or an ONNX classifier",
              "Training", request=tt.TrainRequest, response=tt.TrainJob, stream=tt.TrainProgress,
              examples=({"model": "gemma-tuned", "from": _MODEL, "dataset": "sha256:" + "0" * 64,
                         "lora": {"r": 16, "lora_alpha": 32}, "training": {"max_steps": 30, "learning_rate": 2e-4},
                         "stream": False},),
              description="Everything a request can get wrong (the name, the base, a dataset line, target modules) "
                          "is a 400 before the job exists; without the adapters extra 501. Streams the job's "
                          "progress as NDJSON until it ends unless `stream` is false (then the job at once); a "
                          "client that stops reading does not stop the job."),
    Operation("get", "/api/train", "Every training job, newest first", "Training", response=tt.TrainJobList),
    Operation("get", "/api/train/{job_id}", "Follow a training job's progress (its history, then live)", "Training",
              response=tt.TrainJob, stream=tt.TrainProgress,
              parameters=(_path_param("job_id", "the job's id (train-…)"),
                          {"name": "stream", "in": "query", "required": False,
                           "schema": {"type": "string", "enum": ["true", "false"]},
                           "description": "false: the job's record instead of its progress"}),
              description="NDJSON progress lines until the job ends; `?stream=false`: the job's record."),
    Operation("delete", "/api/train/{job_id}", "Cancel a training job (a finished one: remove its record)", "Training",
              response=tt.TrainJob, parameters=(_path_param("job_id", "the job's id (train-…)"),)),
    Operation("post", "/api/classify", "Labels of texts from a stored ONNX classifier", "Training",
              request=tt.ClassifyRequest, response=tt.ClassifyResponse,
              examples=({"model": "topics", "input": ["the match ended two to one", "shares fell sharply"]},),
              description="An unknown model 404, a model that is not a classifier 400."),
    # ---- retrieval (server/api/collections.py, server/api/rerank.py)
    Operation("get", "/api/collections", "Collections with their document and chunk counts", RETRIEVAL,
              response=rt.CollectionListResponse),
    Operation("post", "/api/collections", "Create a collection", RETRIEVAL, request=rt.CollectionCreateRequest,
              response=rt.Collection, examples=({"name": "handbook", "embedding_model": "all-minilm"},),
              description="An invalid name, chunk sizes or a model that is not an embedding model 400; an "
                          "existing name 400; an unknown model 404; without the retrieval extra 501."),
    Operation("get", "/api/collections/{name}", "A collection", RETRIEVAL, response=rt.Collection,
              parameters=(_COLLECTION,)),
    Operation("delete", "/api/collections/{name}", "Delete a collection and its documents", RETRIEVAL,
              content=_EMPTY, parameters=(_COLLECTION,)),
    Operation("post", "/api/collections/{name}/documents", "Add or replace documents", RETRIEVAL,
              request=rt.DocumentsAddRequest, response=rt.DocumentsAddResponse,
              stream=(t.ProgressResponse, rt.DocumentsAddResponse, t.ErrorResponse), parameters=(_COLLECTION,),
              examples=({"documents": [{"name": "notes.md", "text": "# Notes\n\nThe oven is hot."}]},),
              description="JSON (text or base64 data) or a multipart/form-data upload of files (with optional "
                          "`metadata` and `stream` fields). Formats: text, Markdown, HTML, PDF, JSONL. Each "
                          "document is written in one transaction."),
    Operation("get", "/api/collections/{name}/documents", "A collection's documents", RETRIEVAL,
              response=rt.DocumentListResponse, parameters=(_COLLECTION,)),
    Operation("get", "/api/collections/{name}/documents/{document_id}", "A document", RETRIEVAL,
              response=rt.Document, parameters=(_COLLECTION, _DOCUMENT)),
    Operation("delete", "/api/collections/{name}/documents/{document_id}", "Delete a document", RETRIEVAL,
              content=_EMPTY, parameters=(_COLLECTION, _DOCUMENT)),
    Operation("post", "/api/collections/{name}/search", "Hybrid, vector or keyword search", RETRIEVAL,
              request=rt.SearchRequest, response=rt.SearchResponse, parameters=(_COLLECTION,),
              examples=({"query": "how hot is the oven?", "k": 3},)),
    Operation("post", "/v1/rerank", "Rerank documents (llama-server's and Jina's shape)", RETRIEVAL,
              request=rt.RerankRequest, response=rt.RerankResponse, openai_errors=True,
              examples=({"model": "my-reranker", "query": "cats", "documents": ["cats purr", "dogs bark"]},),
              description="No documents, top_n < 1, or a model that is not a reranker 400. A body with "
                          "TEI's `texts` instead of `documents` is answered with TEI's bare array of "
                          "`{index, score, text?}`, as llama-server answers it."),
    Operation("post", "/rerank", "Rerank documents (llama-server's route)", RETRIEVAL,
              request=rt.RerankRequest, response=rt.RerankResponse, openai_errors=True,
              description="As /v1/rerank, TEI's `texts` form included."),
    Operation("post", "/v2/rerank", "Rerank documents (Cohere's v2 shape)", RETRIEVAL,
              request=rt.RerankRequest, response=rt.CohereRerankResponse, openai_errors=True,
              description="Errors carry Cohere's `message` beside OpenAI's `error` object."),
    # ---- tools
    Operation("get", "/api/tools", "Every tool in the registry", TOOLS, response=t.ToolListResponse),
    Operation("post", "/api/tools/{name}", "Run a tool", TOOLS, request=t.ToolCallRequest,
              response=t.ToolResultResponse, stream=(t.ToolProgressResponse, t.ToolResultResponse,
                                                          t.ErrorResponse),
              body_required=False, parameters=(_path_param("name", "the tool's name"),),
              examples=({"arguments": {"expression": "6 * 7"}}, {"arguments": {"timezone": "Europe/Paris"},
                                                                 "stream": True}),
              description="Unknown tool 404; arguments that do not validate 400; the tool refuses 422; "
                          "it fails 500; it runs past its timeout 504."),
    Operation("get", "/api/artifacts/{digest}", "An artifact a tool made, with its media type", TOOLS,
              content={"*/*": {"schema": {"type": "string", "format": "binary"}}}, parameters=(_DIGEST,)),
    Operation("head", "/api/artifacts/{digest}", "An artifact's headers", TOOLS, content=_EMPTY,
              parameters=(_DIGEST,)),
    Operation("post", "/mcp", "The tool registry over MCP (streamable HTTP, stateless)", TOOLS,
              request={"application/json": {"schema": {"description": "a JSON-RPC 2.0 message of the Model "
                                                                       "Context Protocol"}}},
              content={"application/json": {"schema": {}}, "text/event-stream": {"schema": {"type": "string"}}},
              examples=({"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "calculator", "arguments": {"expression": "2 + 2"}}}),
              description="Answered by the official `mcp` SDK: JSON-RPC in, JSON or SSE out; clients must "
                          "accept both (`Accept: application/json, text/event-stream`)."),
    # ---- OpenAI
    Operation("post", "/v1/chat/completions", "OpenAI chat completion", OPENAI, request=o.ChatCompletionRequest,
              response=o.ChatCompletion, stream=o.ChatCompletionChunk, sse=True, openai_errors=True,
              examples=({"model": _MODEL, "messages": _HI, "max_tokens": 32},
                        {"model": _MODEL, "messages": _HI, "stream": True, "stream_options": {"include_usage": True}},
                        {"model": _MODEL, "messages": _HI, "response_format": {
                            "type": "json_schema", "json_schema": {"name": "answer", "schema": _ANSWER}}},
                        {"model": _MODEL, "messages": _HI, "tools": [_WEATHER], "tool_choice": "required"},
                        {"model": _MODEL, "messages": _HI, "logprobs": True, "top_logprobs": 2}),
              description="With `stream: true`, SSE `data:` events, then `data: [DONE]`."),
    Operation("post", "/v1/completions", "OpenAI text completion (`suffix` for fill-in-the-middle)", OPENAI,
              request=o.CompletionRequest, response=o.Completion, stream=o.Completion, sse=True,
              openai_errors=True, examples=({"model": _MODEL, "prompt": "Once upon a time", "max_tokens": 16},
                                            {"model": _MODEL, "prompt": "def f(", "suffix": "):", "logprobs": 1})),
    Operation("post", "/v1/embeddings", "OpenAI embeddings", OPENAI, request=o.EmbeddingRequest,
              response=o.EmbeddingList, openai_errors=True,
              examples=({"model": _MODEL, "input": ["first text", "second text"]},
                        {"model": _MODEL, "input": "one text", "encoding_format": "base64", "dimensions": 64})),
    Operation("get", "/v1/models", "OpenAI model list", OPENAI, response=o.ModelList, openai_errors=True),
    Operation("get", "/v1/models/{model}", "One model", OPENAI, response=o.Model, openai_errors=True,
              parameters=(_path_param("model", "a model name (it may hold slashes)"),)),
    Operation("post", "/v1/responses", "OpenAI Responses API (stateless)", OPENAI, request=o.ResponsesRequest,
              response=o.ResponseObject, stream=_RESPONSE_EVENTS, sse=True, openai_errors=True,
              examples=({"model": _MODEL, "input": "Why is the sky blue?", "max_output_tokens": 32},
                        {"model": _MODEL, "instructions": "Be brief.", "stream": True, "input": [
                            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                             "arguments": "{\"city\": \"Paris\"}"},
                            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
                         "tools": [{"type": "function", "name": "get_weather",
                                    "parameters": _WEATHER["function"]["parameters"]}]}),
              description="With `stream: true`, SSE events `event: <type>` / `data: <event>`."),
    Operation("post", "/v1/images/generations", "OpenAI Images API: generate with an image model", OPENAI,
              request=it_.ImageGenerationRequest, response=it_.ImagesResponse, stream=it_.ImageStreamEvent, sse=True,
              openai_errors=True, examples=({"model": "tiny-sd", "prompt": "a red fox", "size": "512x512", "n": 1,
                                             "seed": 7, "steps": 20, "scheduler": "DPM++ 2M"},),
              description="Corral's options (negative_prompt, guidance_scale, steps, seed, scheduler, adapters) "
                          "are extra body fields. With `stream: true`, SSE events "
                          "`image_generation.partial_image` and `image_generation.completed`."),
    Operation("post", "/v1/images/edits", "OpenAI Images API: image-to-image and inpainting", OPENAI,
              request=it_.ImageGenerationRequest, response=it_.ImagesResponse, stream=it_.ImageStreamEvent, sse=True,
              openai_errors=True,
              examples=({"model": "tiny-sd", "prompt": "a red fox", "strength": 0.6,
                         "image": "data:image/png;base64,iVBORw0KGgo="},),
              description="multipart/form-data as the openai SDK sends it (`image` and `mask` files, other fields "
                          "as text), or JSON with `image`/`mask` as data URLs. Streams `image_edit.*` events."),
    Operation("post", "/api/images/export", "Export an image model to ONNX as a new model", CORRAL,
              request=it_.ImageExportRequest, response=t.ProgressResponse,
              stream=(t.ProgressResponse, t.ErrorResponse),
              examples=({"model": "tiny-sd-onnx", "from": "tiny-sd", "adapters": {"tiny-style": 0.8}},),
              description="Text encoder, UNet and VAE decoder through torch.onnx (LoRA adapters fused first), "
                          "stored as a model of format onnx served on onnxruntime. Progress like /api/pull. "
                          "An unknown model: 404; not a PyTorch image model, a taken name, a bad adapter: 400."),
    # ---- llama-server, Corral's own
    Operation("post", "/infill", "llama-server's fill-in-the-middle (llama.vscode)", LLAMACPP,
              request=llamacpp.InfillRequest, response=llamacpp.InfillResponse, stream=llamacpp.InfillResponse,
              sse=True, examples=({"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "n_predict": 16,
                                   "input_extra": [{"filename": "util.py", "text": "import math\n"}]},)),
    Operation("get", "/metrics", "Prometheus metrics", CORRAL,
              content={"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}}),
    Operation("get", "/openapi.json", "This document", CORRAL, content={"application/json": {"schema": {
        "type": "object"}}}),
)

# Fields a request must have although its wire type gives them a default (the route refuses it with a 400
# when they are missing or empty): the document says so, as the routes do.
_REQUIRED: dict[Any, tuple[str, ...]] = {
    t.GenerateRequest: ("model",), t.ChatRequest: ("model",), t.EmbedRequest: ("model",),
    t.EmbeddingRequest: ("model",), t.CopyRequest: ("source", "destination"),
    o.ChatCompletionRequest: ("model", "messages"), o.CompletionRequest: ("model",),
    o.EmbeddingRequest: ("model", "input"), o.ResponsesRequest: ("model", "input"),
    tt.TrainRequest: ("model", "dataset"), tt.ClassifyRequest: ("model", "input"),
}

_COMPONENT_PREFIXES = {"server.api.types.": "Ollama", "server.api.openai_types.": "OpenAI",
                       "server.api.llamacpp.": "LlamaServer"}


def _wire_types() -> list[Any]:
    kinds: list[Any] = [t.ErrorResponse, o.ErrorResponse]
    for op in OPERATIONS:
        for k in (op.request, op.response, op.stream):
            if isinstance(k, tuple):
                kinds += k
            elif k is not None and not isinstance(k, dict):
                kinds.append(k)
    return list(dict.fromkeys(kinds))


def _schema_of(kind: Any, schema: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    return {"anyOf": [schema[k] for k in kind]} if isinstance(kind, tuple) else schema[kind]


def _rename(doc: Any) -> Any:
    """msgspec names a component its module path when two modules have a type of one name
    (`server.api.types.ToolCall`): name it by its API instead (`OllamaToolCall`)."""
    text = json.dumps(doc)
    for prefix, api in _COMPONENT_PREFIXES.items():
        text = text.replace(f'"#/components/schemas/{prefix}', f'"#/components/schemas/{api}')
    out = json.loads(text)
    if isinstance(out, dict) and "components" in out:
        schemas = out["components"]["schemas"]
        for name in list(schemas):
            for prefix, api in _COMPONENT_PREFIXES.items():
                if name.startswith(prefix):
                    schemas[api + name[len(prefix):]] = schemas.pop(name)
    return out


def _operation(op: Operation, schema: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    error = schema[o.ErrorResponse if op.openai_errors else t.ErrorResponse]
    error_body = {"application/json": {"schema": error}}
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": _operation_id(op)}
    if op.description:
        out["description"] = op.description
    if op.parameters:
        out["parameters"] = list(op.parameters)
    if op.request is not None:
        content = op.request if isinstance(op.request, dict) else {"application/json": {"schema": schema[op.request]}}
        if op.examples:
            content = {k: ({**v, "examples": {f"example{i + 1}": {"value": e} for i, e in enumerate(op.examples)}}
                           if k == "application/json" else v) for k, v in content.items()}
        out["requestBody"] = {"required": op.body_required, "content": content}
    if op.content is not None:
        ok_content = op.content
    else:
        ok_content = {"application/json": {"schema": _schema_of(op.response, schema)}}
        if op.stream is not None:
            item = _schema_of(op.stream, schema)
            if op.sse:
                ok_content["text/event-stream"] = {"schema": {"type": "string", "description": (
                    "server-sent events; each event's `data` is one x-event-data object")}, "x-event-data": item}
            else:
                ok_content["application/x-ndjson"] = {"schema": {"type": "string", "description": (
                    "one JSON object a line, each an x-line object; an error after the stream began is a "
                    "last `{\"error\"}` line")}, "x-line": item}
    ok: dict[str, Any] = {"description": "success" if op.status != "401" else "unauthorized"}
    if ok_content:
        ok["content"] = ok_content
    responses: dict[str, Any] = {op.status: ok}
    if op.status == "401":
        responses[op.status]["content"] = error_body
    if op.method != "head":
        responses["4XX"] = {"description": "the request is wrong (400), names something unknown (404), …",
                            "content": error_body}
        responses["5XX"] = {"description": "the server or the model failed (500), the queue is full (503), …",
                            "content": error_body}
    else:
        responses["4XX"] = {"description": "not found, or a wrong request (no body: a HEAD request)"}
    out["responses"] = responses
    return out


def _operation_id(op: Operation) -> str:
    words = [w for w in op.path.replace("{", "").replace("}", "").replace(".", "_").split("/") if w]
    return op.method + "".join(w[:1].upper() + w[1:] for w in words) if words else op.method + "Root"


def app_routes(app: Any) -> frozenset[tuple[str, str]]:
    """(method, OpenAPI path) of every route of a Litestar app (OPTIONS, CORS preflight, left out;
    an ASGI route such as /mcp counted as POST)."""
    out = set()
    for route in app.routes:
        path = _PARAM.sub(r"{\1}", route.path)
        methods = {m.lower() for m in getattr(route, "methods", ())} - {"options"}
        out |= {(m, path) for m in methods or {"post"}}
    return frozenset(out)


_PARAM = re.compile(r"\{(\w+):\w+\}")


def _generic(method: str, path: str) -> dict[str, Any]:
    """A route the table does not describe yet (one added since): its method, path and parameters."""
    out: dict[str, Any] = {"summary": "(not described in server/api/openapi.py yet)", "tags": ["Other"],
                           "operationId": _operation_id(Operation(method, path, "", ""))}
    params = re.findall(r"\{(\w+)\}", path)
    if params:
        out["parameters"] = [_path_param(p, p) for p in params]
    if method in ("post", "put", "patch", "delete"):
        out["requestBody"] = {"required": False, "content": {"application/json": {"schema": {}}}}
    out["responses"] = {"200": {"description": "success"}, "default": {"description": "an error"}}
    return out


def document(routes: frozenset[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """The OpenAPI 3.1 document: every operation of the table, and of `routes` (an app's, see
    `app_routes`) those the table lacks, described by method, path and parameters only."""
    return _document(frozenset(routes))


@functools.cache
def _document(routes: frozenset[tuple[str, str]]) -> dict[str, Any]:
    kinds = _wire_types()
    refs, components = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    schema = dict(zip(kinds, refs))
    for kind, fields in _REQUIRED.items():
        component = components[schema[kind]["$ref"].rsplit("/", 1)[1]]
        component["required"] = sorted(set(component.get("required", [])) | set(fields))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schema)
    for method, path in sorted(routes):
        if method not in paths.get(path, {}):
            paths.setdefault(path, {})[method] = _generic(method, path)
    return _rename({
        "openapi": "3.1.0",
        "info": {
            "title": "Corral",
            "version": __version__,
            "description": "Ollama's API, OpenAI's API, llama-server's /infill and a tool registry over one "
                           "llama.cpp engine. Request bodies are JSON nested at most "
                           f"{MAX_JSON_DEPTH} levels deep (deeper: 400); unknown fields are ignored and a "
                           "field sent as null counts as not sent.",
        },
        "paths": paths,
        "components": {"schemas": components},
    })


@functools.cache
def _document_bytes(routes: frozenset[tuple[str, str]]) -> bytes:
    return json.dumps(document(routes), ensure_ascii=False).encode()


@get("/openapi.json", media_type="application/json")
async def openapi_json(request: Request) -> Response:
    return Response(content=_document_bytes(app_routes(request.app)), media_type="application/json")


ROUTES = [openapi_json]
