"""Every Ollama wire type, documented once (after Ollama's api/types.go).

Requests are decoded strictly (wrong types are a 400) but leniently where real clients
need it: unknown fields are ignored, and the Go client's empty strings and nulls for unset
fields mean "absent". Responses omit the fields Ollama marks `omitempty`.
"""

from __future__ import annotations

from typing import Any

import msgspec

Json = Any  # an arbitrary JSON value


# ---- shared pieces -----------------------------------------------------------------------


class ToolCallFunction(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    index: int | None = None  # position among the calls of one message


class ToolCall(msgspec.Struct, omit_defaults=True):
    function: ToolCallFunction
    id: str | None = None  # "call_" + 8 random characters


class Message(msgspec.Struct, omit_defaults=True):
    role: str  # system | user | assistant | tool
    content: str = ""
    thinking: str | None = None  # the model's reasoning, when think is on
    images: list[str] | None = None  # base64
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None  # on role "tool": which function produced this result
    tool_call_id: str | None = None


class ResponseMessage(msgspec.Struct, omit_defaults=True):
    """The assistant message in chat responses: `content` is always present, the rest only when set."""

    role: str
    content: str
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class Tool(msgspec.Struct, omit_defaults=True):
    """A function the model may call: `{type: "function", function: {name, description, parameters}}`."""

    function: dict[str, Any]
    type: str = "function"


class Logprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list["TopLogprob"] | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ModelDetails(msgspec.Struct):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


# ---- /api/generate -----------------------------------------------------------------------


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    suffix: str = ""  # fill-in-the-middle: text after the cursor (needs capability "insert")
    system: str = ""  # overrides the model's system prompt
    template: str = ""  # overrides the model's template (Go text/template)
    context: list[int] | None = None  # tokens returned by a previous response, continues it
    stream: bool | None = None  # default true
    raw: bool = False  # send the prompt as is, no template
    format: Json = None  # "json" or a JSON schema
    keep_alive: float | int | str | None = None  # seconds or Go duration; <0 forever; 0 unload now
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None  # true/false or "low" | "medium" | "high"
    truncate: bool | None = None  # default true: cut the prompt to fit num_ctx
    shift: bool | None = None  # default true: shift the context when generation fills it
    logprobs: bool = False
    top_logprobs: int = 0  # 0-20
    _debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")
    # image models (server/api/ollama_images.py): the image's size (multiples of 8, at most 4096) and
    # denoising steps; `images[0]` is an edit's input image; Corral's image options go in `options`
    width: int | None = None
    height: int | None = None
    steps: int | None = None


class GenerateResponse(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str  # RFC3339 with timezone
    response: str
    done: bool
    thinking: str | None = None
    done_reason: str | None = None  # stop | length | load | unload
    context: list[int] | None = None
    total_duration: int | None = None  # nanoseconds, like every duration here
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    tool_calls: list[ToolCall] | None = None
    logprobs: list[Logprob] | None = None
    # image models: the base64 PNG (last line), steps done and to do (progress lines), and the seed the
    # image was made with (Corral's; with the settings in the PNG's text metadata)
    image: str | None = None
    completed: int | None = None
    total: int | None = None
    seed: int | None = None


# ---- /api/chat ---------------------------------------------------------------------------


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] | None = None
    tools: list[Tool] | None = None
    format: Json = None
    options: dict[str, Any] | None = None
    stream: bool | None = None
    keep_alive: float | int | str | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    tool_choice: Json = None  # Corral extension: "none" | "auto" | "required" | {"type":"function","function":{"name":…}}
    _debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class ChatResponse(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: ResponseMessage
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[Logprob] | None = None


class DebugRenderResponse(msgspec.Struct):
    """`_debug_render_only`: the prompt exactly as the model would receive it."""

    model: str
    created_at: str
    _debug_info: dict[str, Any] = msgspec.field(name="_debug_info")


# ---- /api/embed, /api/embeddings ---------------------------------------------------------


class EmbedRequest(msgspec.Struct):
    model: str = ""
    input: Json = None  # a string or a list of strings (else 400 "invalid input type"); "" embeds nothing
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | int | str | None = None


class EmbedResponse(msgspec.Struct, omit_defaults=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingRequest(msgspec.Struct):
    """Legacy /api/embeddings: one prompt, an unnormalised vector."""

    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | int | str | None = None


class EmbeddingResponse(msgspec.Struct):
    embedding: list[float]


# ---- models: tags, show, ps, copy, delete ------------------------------------------------


class ListModel(msgspec.Struct):
    name: str  # shortest form, e.g. "llama3.2:latest"
    model: str
    modified_at: str
    size: int  # bytes of all layers plus config
    digest: str  # 64 hex characters: sha256 of the manifest
    details: ModelDetails


class ListResponse(msgspec.Struct):
    models: list[ListModel]


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # legacy spelling of model
    verbose: bool = False
    system: str = ""
    template: str = ""
    options: dict[str, Any] | None = None


class ShowResponse(msgspec.Struct, omit_defaults=True):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]  # always present (ollama-python requires it)
    capabilities: list[str]
    modified_at: str
    license: str | None = None
    system: str | None = None
    messages: list[Message] | None = None


class ProcessModel(msgspec.Struct):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(msgspec.Struct):
    models: list[ProcessModel]


class CopyRequest(msgspec.Struct):
    source: str = ""
    destination: str = ""


class DeleteRequest(msgspec.Struct):
    model: str = ""
    name: str = ""


class VersionResponse(msgspec.Struct):
    version: str


class ErrorResponse(msgspec.Struct):
    error: str


# ---- model lifecycle: pull, push, create (server/api/models.py) --------------------------


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # legacy spelling of model
    insecure: bool = False  # plain http to the registry
    stream: bool | None = None
    username: str = ""  # sent by old clients; unused
    password: str = ""


class PushRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None
    username: str = ""
    password: str = ""


class CreateRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # legacy spelling of model
    from_: str = msgspec.field(default="", name="from")  # a model name, `@sha256:…` or a path on the server
    files: dict[str, str] | None = None  # {relative path: "sha256:…"} of uploaded blobs
    adapters: dict[str, str] | None = None
    template: str = ""
    system: str = ""
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str = ""  # q4_K_M | q8_0
    quantization: str = ""  # older spelling of quantize
    requires: str = ""  # the Ollama version the model needs (Modelfile REQUIRES), kept in its config
    stream: bool | None = None
    modelfile: str = ""  # legacy (≤ v0.5.4): the Modelfile text
    path: str = ""  # legacy: a Modelfile on the server's disk


class ProgressResponse(msgspec.Struct, omit_defaults=True):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


# ---- tools (Corral) ----------------------------------------------------------------------


class ToolFunction(msgspec.Struct):
    name: str
    description: str
    parameters: dict[str, Any]  # the JSON Schema of the arguments


class ToolInfo(msgspec.Struct):
    """A tool in OpenAI's function shape (what chat requests' `tools` take), with Corral's facts beside it."""

    type: str  # always "function"
    function: ToolFunction
    side_effects: bool  # agents ask for approval before calling a tool that has them
    timeout: float  # seconds the tool may run before it is cancelled
    source: str  # builtin, "entry point NAME (module:attr)", or "mcp:SERVER"


class ToolListResponse(msgspec.Struct):
    tools: list[ToolInfo]


class ToolCallRequest(msgspec.Struct):
    arguments: dict[str, Any] | None = None  # validated against the tool's schema
    stream: bool | None = None  # true: progress lines first, then the result line (NDJSON)


class ToolProgressResponse(msgspec.Struct, omit_defaults=True):
    status: str  # what the tool is doing
    completed: float | None = None
    total: float | None = None


class CitationInfo(msgspec.Struct):
    source: str
    location: str
    score: float | None
    quote: str


class ArtifactInfo(msgspec.Struct):
    digest: str  # sha256:<hex>
    media_type: str
    size: int
    name: str
    url: str  # GET it: /api/artifacts/<digest>


class ToolResultResponse(msgspec.Struct, omit_defaults=True):
    """A tool's result; also the last line of a streamed call."""

    status: str  # "success"
    tool: str
    content: str  # the result as text ("" when the tool gave only JSON or files)
    json: Any = msgspec.UNSET  # the tool's JSON value, if it gave one
    citations: list[CitationInfo] | None = None
    artifacts: list[ArtifactInfo] | None = None


# ---- agents (Corral) ---------------------------------------------------------------------


class AgentDefinition(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/agents: an agent served as a model (agents/spec.py checks every field)."""

    name: str
    model: str  # a chat model in the store
    system: str | None = None
    tools: list[str] | None = None  # registry names or globs (`files_*`)
    max_steps: int | None = None  # model calls in one turn (default 8)
    options: dict[str, Any] | None = None  # model options
    approve: list[str] | None = None  # tools whose calls wait for a person (default: those with side effects)
    output_schema: dict[str, Any] | None = None  # JSON Schema of the final answer
    description: str | None = None


class AgentInfo(msgspec.Struct, omit_defaults=True):
    name: str
    kind: str  # "agent" (a definition) or "graph" (a user's own LangGraph graph)
    model: str | None = None
    system: str | None = None
    tools: list[str] | None = None
    max_steps: int | None = None
    options: dict[str, Any] | None = None
    approve: list[str] | None = None
    output_schema: dict[str, Any] | None = None
    description: str | None = None
    digest: str | None = None  # sha256 of the definition


class AgentList(msgspec.Struct):
    agents: list[AgentInfo]


# ---- LoRA adapters (/api/adapters): Corral's own routes ------------------------------------------------


class AdapterInfo(msgspec.Struct):
    digest: str  # sha256:<hex> of the GGUF LoRA layer; also a name `options.adapters` accepts
    size: int  # bytes
    models: list[str]  # stored models whose ADAPTER layers include it (each a name `options.adapters` accepts)
    base: str | None  # digest of the base weights those models are FROM
    architecture: str  # the adapter's general.architecture
    alpha: float | None  # adapter.lora.alpha (effective scale = alpha / rank x the request's scale)
    loaded_in: list[str]  # loaded models whose runner holds it now


class AdapterList(msgspec.Struct):
    adapters: list[AdapterInfo]


class AdapterLoadRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/adapters/load and /api/adapters/unload."""

    model: str  # the base model to load the adapter on (loaded first when it is not)
    adapter: str  # a stored model with ADAPTER layers, or an adapter layer's sha256:<hex>
    keep_alive: Any = None  # for the base model, when this loads it (as on /api/generate)


class AdapterLoadResponse(msgspec.Struct):
    status: str  # "success"
    model: str
    adapters: list[str]  # the adapter layers' digests now loaded (load) or freed (unload)
