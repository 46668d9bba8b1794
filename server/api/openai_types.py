"""Every OpenAI wire type the `/v1` layer speaks, documented once.

Requests are decoded strictly where a wrong type would otherwise be silently misread (a 400
names the field), and leniently everywhere else: unknown fields are ignored, so clients that
send newer or vendor-specific fields (`user`, `metadata`, `store`, `parallel_tool_calls`,
`logit_bias`, `service_tier`, …) still work. Fields whose JSON type varies (`prompt`, `input`,
`tool_choice`, schemas) are `Any` and checked by the route module, with messages that name them.

Corral extensions, accepted on every generation request: `options` (Ollama options such as
`num_ctx`, merged over the translated OpenAI fields) and `keep_alive`.

Responses omit optional fields that are unset, except where OpenAI's clients expect an explicit
`null` (`finish_reason`, `logprobs`, `content` next to tool calls).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

Json = Any  # an arbitrary JSON value
TokenLimit = Annotated[int, msgspec.Meta(ge=1)]  # a token budget: OpenAI refuses 0 and below (Ollama's -1 "no limit" is not OpenAI's)
KeepAlive = float | int | str | None  # seconds or a Go duration; < 0 forever; 0 unload after the request


# ---- errors ------------------------------------------------------------------------------


class Error(msgspec.Struct):
    message: str
    type: str  # invalid_request_error (400) | not_found_error (404) | api_error (anything else)
    param: str | None = None  # the offending request field, when one is to blame
    code: str | None = None


class ErrorResponse(msgspec.Struct):
    error: Error


# ---- shared pieces -----------------------------------------------------------------------


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache instead of computed


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0  # tokens of the answer's thinking (its reasoning), tags included


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = msgspec.field(default_factory=CompletionTokensDetails)


class StreamOptions(msgspec.Struct):
    include_usage: bool = False  # end the stream with a chunk carrying `usage` and `choices: []`


class FunctionCall(msgspec.Struct):
    name: str
    # a JSON object, serialised: OpenAI sends and expects a string. Corral always answers with a
    # string, and also accepts the object itself in requests (clients ported from Ollama's API send one).
    arguments: str | dict[str, Any] = ""


class ToolCall(msgspec.Struct):
    """A call the assistant made: in responses, and in assistant messages sent back as history."""

    function: FunctionCall
    id: str = ""  # "call_…"; tool results refer to it by tool_call_id
    type: str = "function"
    index: int | None = None  # position among the message's calls (always set in responses)


class ToolFunction(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None  # accepted and ignored


class Tool(msgspec.Struct):
    """`{type: "function", function: {name, description, parameters}}`: the same shape as Ollama's."""

    function: ToolFunction
    type: str = "function"


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]  # the `top_logprobs` most likely tokens at this position


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


# ---- /v1/chat/completions: request -------------------------------------------------------


class ImageURL(msgspec.Struct):
    url: str  # only data URIs are served: `data:image/png;base64,…` (or `data:;base64,…`)
    detail: str | None = None  # accepted and ignored


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageURL | str  # the object form, or the bare URL some clients send


class RefusalPart(msgspec.Struct, tag="refusal", tag_field="type"):
    """On an assistant message in the history: the model declined; its text goes in as content."""

    refusal: str


ContentPart = TextPart | ImagePart | RefusalPart


class ChatMessage(msgspec.Struct):
    """One message of the conversation sent to the model.

    `content` is a string or a list of parts (text parts are joined with newlines, image parts
    become the message's images); it may be null on an assistant message that only calls tools.
    """

    role: str  # system | developer (= system) | user | assistant | tool
    content: str | list[ContentPart] | None = None
    name: str | None = None  # on role "tool": the function's name (else found via tool_call_id)
    tool_calls: list[ToolCall] | None = None  # on role "assistant": calls it made earlier
    tool_call_id: str | None = None  # on role "tool": the call this message answers
    reasoning: str | None = None  # on role "assistant": its earlier thinking (Ollama's spelling)
    reasoning_content: str | None = None  # the same, as DeepSeek and vLLM spell it


class JSONSchemaFormat(msgspec.Struct):
    name: str = "response"
    schema: Json = None  # must be a JSON object of `type: "object"`
    description: str | None = None
    strict: bool | None = None  # accepted; the grammar always enforces the schema


class ResponseFormat(msgspec.Struct):
    type: str  # text | json_object (any JSON object) | json_schema (JSON matching the schema)
    json_schema: JSONSchemaFormat | None = None


class Reasoning(msgspec.Struct):
    effort: str | None = None  # as reasoning_effort
    summary: str | None = None  # Responses API only; accepted and echoed


class ChatCompletionRequest(msgspec.Struct):
    model: str = ""
    messages: list[ChatMessage] | None = None  # at least one
    stream: bool | None = None  # default false
    stream_options: StreamOptions | None = None
    max_tokens: TokenLimit | None = None  # → num_predict
    max_completion_tokens: TokenLimit | None = None  # → num_predict; wins over max_tokens
    temperature: float | None = None  # default 1.0 (OpenAI's; Ollama's own default is 0.8)
    top_p: float | None = None  # default 1.0 (OpenAI's; Ollama's own default is 0.9)
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None  # only 1 is served
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Json = None  # "none" | "auto" | "required" | {"type":"function","function":{"name":…}}
    reasoning_effort: str | None = None  # none | minimal | low | medium | high | max → think
    reasoning: Reasoning | None = None  # {effort}: another spelling of reasoning_effort
    logprobs: bool | None = None  # return the chosen tokens' log probabilities
    top_logprobs: int | None = None  # 0-20: with logprobs, this many alternatives per token
    # Corral extensions
    options: dict[str, Any] | None = None  # Ollama options, merged over the fields above
    keep_alive: KeepAlive = None
    think: bool | str | None = None  # Ollama's think; reasoning_effort wins when both are set
    _debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


# ---- /v1/chat/completions: response ------------------------------------------------------


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None  # null when the answer is only tool calls
    reasoning: str | None = None  # the model's thinking (Ollama's field name)
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None  # stop | length | tool_calls
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(msgspec.Struct, omit_defaults=True):
    id: str  # "chatcmpl-<n>"
    object: str  # "chat.completion"
    created: int  # unix seconds
    model: str  # as the request named it
    system_fingerprint: str  # always "fp_ollama"
    choices: list[Choice]  # exactly one
    usage: Usage | None = None
    _debug_info: dict[str, Any] | None = msgspec.field(default=None, name="_debug_info")


class ChunkDelta(msgspec.Struct, omit_defaults=True):
    """What a chunk adds: `role` only in the first, `{}` in the finishing chunk."""

    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None  # the same as DeepSeek and vLLM spell it (agents' steps carry both)
    tool_calls: list[ToolCall] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None  # set only in the finishing chunk
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    """One SSE `data:` event; with include_usage the last one has `choices: []` and `usage`."""

    id: str  # the same for every chunk of one completion
    object: str  # "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # only in the include_usage chunk


# ---- /v1/completions ---------------------------------------------------------------------


class CompletionRequest(msgspec.Struct):
    model: str = ""
    prompt: Json = ""  # a string (or a list holding one string); token arrays are refused
    suffix: str | None = None  # fill-in-the-middle: text after the insertion point (needs "insert")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: TokenLimit | None = None  # → num_predict; unset means the model's limit, not OpenAI's 16
    temperature: float | None = None  # default 1.0
    top_p: float | None = None  # default 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None  # only 1 is served
    best_of: int | None = None  # only 1 is served
    echo: bool | None = None  # only false is served
    logprobs: int | None = None  # 0-20: the chosen token's logprob plus this many alternatives
    # Corral extensions
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    raw: bool | None = None  # send the prompt as is, without the model's template (Ollama's raw)
    _debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class CompletionLogprobs(msgspec.Struct):
    """The legacy logprobs shape of /v1/completions: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]  # character offset of each token in the choice's text


class CompletionChoice(msgspec.Struct):
    text: str
    index: int
    finish_reason: str | None  # stop | length
    logprobs: CompletionLogprobs | None = None


class Completion(msgspec.Struct, omit_defaults=True):
    """The whole answer, or (streamed) one chunk of it: the same object either way."""

    id: str  # "cmpl-<n>"
    object: str  # "text_completion", for chunks too
    created: int
    model: str
    system_fingerprint: str  # always "fp_ollama"
    choices: list[CompletionChoice]
    usage: Usage | None = None  # not in content chunks
    _debug_info: dict[str, Any] | None = msgspec.field(default=None, name="_debug_info")


# ---- /v1/embeddings ----------------------------------------------------------------------


class EmbeddingRequest(msgspec.Struct):
    model: str = ""
    input: Json = None  # a string or a list of strings (token arrays are refused)
    encoding_format: str | None = None  # float (default) | base64 (little-endian float32)
    dimensions: int | None = None  # keep the first N components, then re-normalise
    user: str | None = None  # accepted and ignored
    # Corral extensions
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    truncate: bool | None = None  # default true: cut inputs to the context length


class Embedding(msgspec.Struct):
    embedding: list[float] | str  # L2-normalised; base64 of LE float32 with encoding_format=base64
    index: int
    object: str = "embedding"


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


# ---- /v1/models --------------------------------------------------------------------------


class Model(msgspec.Struct):
    id: str  # the name as listed (`llama3.2:latest`) or as asked for
    created: int  # unix seconds: when the model was last modified
    owned_by: str  # the name's namespace, as Ollama reports it ("library" for official models)
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"


# ---- /v1/responses (stateless) -----------------------------------------------------------


class ResponsesTool(msgspec.Struct):
    """A function tool in the Responses API's flat shape: `{type, name, description, parameters}`."""

    type: str = "function"  # only function tools are served
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesTextFormat(msgspec.Struct):
    """`text.format`: {type: text} | {type: json_object} | {type: json_schema, name, schema, strict}."""

    type: str = "text"
    name: str | None = None
    schema: Json = None
    description: str | None = None
    strict: bool | None = None


class ResponsesText(msgspec.Struct):
    format: ResponsesTextFormat | None = None


class ResponsesRequest(msgspec.Struct):
    """Stateless: the whole conversation comes in `input`; nothing is stored between requests.

    `input` is a string (one user message) or a list of items: messages `{role, content}`
    (`type: "message"` optional; content a string or input_text / output_text / input_image parts),
    `{type: "function_call", call_id, name, arguments}` (an earlier call, arguments a JSON string),
    `{type: "function_call_output", call_id, output}` (its result) and `{type: "reasoning", …}`
    (earlier thinking, attached to the next assistant turn).
    """

    model: str = ""
    input: Json = None
    instructions: str | None = None  # → a system message before the input
    tools: list[ResponsesTool] | None = None
    tool_choice: Json = None  # "none" | "auto" | "required" | {"type": "function", "name": …}
    stream: bool | None = None
    temperature: float | None = None  # default 1.0
    top_p: float | None = None  # default 1.0
    max_output_tokens: TokenLimit | None = None  # → num_predict; hitting it makes the response "incomplete"
    text: ResponsesText | None = None
    reasoning: Reasoning | None = None  # {effort} → think
    previous_response_id: str | None = None  # refused: nothing is stored
    truncation: str | None = None  # accepted and echoed
    parallel_tool_calls: bool | None = None  # accepted and echoed
    metadata: dict[str, Any] | None = None  # echoed
    store: bool | None = None  # accepted; nothing is ever stored
    # Corral extensions
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class OutputText(msgspec.Struct):
    text: str
    type: str = "output_text"
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class ReasoningSummary(msgspec.Struct):
    text: str
    type: str = "summary_text"


class OutputMessage(msgspec.Struct, tag="message", tag_field="type"):
    id: str  # "msg_…"
    status: str  # in_progress | completed | incomplete
    content: list[OutputText]
    role: str = "assistant"


class OutputFunctionCall(msgspec.Struct, tag="function_call", tag_field="type"):
    id: str  # "fc_…": the item's id
    call_id: str  # "call_…": what a function_call_output answers
    name: str
    arguments: str  # a JSON object, serialised
    status: str  # in_progress | completed


class OutputReasoning(msgspec.Struct, tag="reasoning", tag_field="type"):
    """The model's thinking. `encrypted_content` holds it in plain text (as Ollama does) so that
    clients which send reasoning items back verbatim give the model its earlier thinking."""

    id: str  # "rs_…"
    summary: list[ReasoningSummary]
    encrypted_content: str | None = None


OutputItem = OutputMessage | OutputFunctionCall | OutputReasoning


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponsesUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class ResponseError(msgspec.Struct):
    code: str  # server_error | invalid_prompt | …
    message: str


class IncompleteDetails(msgspec.Struct):
    reason: str  # max_output_tokens


class ResponseObject(msgspec.Struct):
    """The response: returned whole without stream, carried by the response.* lifecycle events."""

    id: str  # "resp_…"
    created_at: int  # unix seconds
    model: str
    status: str  # in_progress | completed | incomplete | failed
    output: list[OutputItem]
    usage: ResponsesUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    tools: list[ResponsesTool] = msgspec.field(default_factory=list)
    tool_choice: Json = "auto"
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool = True
    truncation: str = "disabled"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    previous_response_id: str | None = None
    completed_at: int | None = None
    store: bool = False
    background: bool = False
    object: str = "response"


# ---- /v1/responses: stream events --------------------------------------------------------
# Each is one SSE event, `event: <type>\ndata: <json>\n\n`; `type` repeats the event name and
# `sequence_number` counts the events of the stream from 0.


class ResponseEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    sequence_number: int = 0


class _Lifecycle(ResponseEvent, kw_only=True):
    response: ResponseObject


class ResponseCreated(_Lifecycle, tag="response.created"):
    """First event: the response, `status: "in_progress"`, no output yet."""


class ResponseInProgress(_Lifecycle, tag="response.in_progress"):
    pass


class ResponseCompleted(_Lifecycle, tag="response.completed"):
    """Last event of a successful stream: the whole response with output and usage."""


class ResponseIncomplete(_Lifecycle, tag="response.incomplete"):
    """Last event when max_output_tokens cut the answer short (`incomplete_details`)."""


class ResponseFailed(_Lifecycle, tag="response.failed"):
    """Last event when generation failed after the stream began (`error` says why)."""


class _ItemEvent(ResponseEvent, kw_only=True):
    output_index: int
    item: OutputItem


class OutputItemAdded(_ItemEvent, tag="response.output_item.added"):
    """An output item begins (`status: "in_progress"`)."""


class OutputItemDone(_ItemEvent, tag="response.output_item.done"):
    """An output item is complete, with all its content."""


class _PartEvent(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class ContentPartAdded(_PartEvent, tag="response.content_part.added"):
    pass


class ContentPartDone(_PartEvent, tag="response.content_part.done"):
    pass


class OutputTextDelta(ResponseEvent, tag="response.output_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(ResponseEvent, tag="response.output_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class FunctionCallArgumentsDelta(ResponseEvent, tag="response.function_call_arguments.delta", kw_only=True):
    item_id: str
    output_index: int
    delta: str  # a piece of the arguments' JSON text (Corral sends each call's arguments whole)


class FunctionCallArgumentsDone(ResponseEvent, tag="response.function_call_arguments.done", kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str


class _SummaryPartEvent(ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    part: ReasoningSummary


class ReasoningSummaryPartAdded(_SummaryPartEvent, tag="response.reasoning_summary_part.added"):
    pass


class ReasoningSummaryPartDone(_SummaryPartEvent, tag="response.reasoning_summary_part.done"):
    pass


class ReasoningSummaryTextDelta(ResponseEvent, tag="response.reasoning_summary_text.delta", kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    delta: str


class ReasoningSummaryTextDone(ResponseEvent, tag="response.reasoning_summary_text.done", kw_only=True):
    item_id: str
    output_index: int
    summary_index: int
    text: str
