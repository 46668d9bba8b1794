"""Ollama's native API: translate wire requests to the inference service and back."""

from __future__ import annotations

import time
from copy import copy as shallow_copy
from typing import Any

from litestar import Request, Response, delete, get, post, route
from litestar.response import Stream

from .. import OLLAMA_API_VERSION, __version__, modelfile
from ..config import FOREVER, MAX_DURATION
from ..messages import Message, ToolCall
from ..inference import Answer, BadRequest, ChatParams, Delta, Final, GenerateParams, Inference
from ..store.gguf import read_info
from ..store.model import Model
from . import agents, images
from . import types as t
from .errors import raise_for
from .flow import answer, service_call, service_errors
from .wire import APIError, decode, json_response, now, rfc3339, until_complete



def services(request: Request) -> Inference:
    return request.app.state.inference


# ---- liveness ------------------------------------------------------------------------------


@route("/", http_method=["GET", "HEAD"], media_type="text/plain")
async def root() -> str:
    return "Ollama is running"


@route("/api/version", http_method=["GET", "HEAD"])
async def version() -> Response:
    # `version` is the Ollama API version Corral implements (clients gate features on it); `corral`
    # is Corral's own, an extra field Ollama's clients ignore
    return json_response({"version": OLLAMA_API_VERSION, "corral": __version__})


# ---- generate / chat -----------------------------------------------------------------------


def _logprobs(logprobs: list | None) -> list[t.Logprob] | None:
    if not logprobs:
        return None
    return [
        t.Logprob(
            token=lp.token, logprob=lp.logprob, bytes=lp.bytes,
            top_logprobs=[t.TopLogprob(token=x.token, logprob=x.logprob, bytes=x.bytes) for x in top] or None,
        )
        for lp, top in logprobs
    ]


def _tool_calls(calls: list[ToolCall] | None) -> list[t.ToolCall] | None:
    if not calls:
        return None
    return [t.ToolCall(id=c.id, function=t.ToolCallFunction(name=c.name, arguments=c.arguments, index=c.index))
            for c in calls]


def _stats(final: Final) -> dict[str, Any]:
    return dict(
        done_reason=final.done_reason,
        total_duration=final.total_duration,
        load_duration=final.load_duration,
        prompt_eval_count=final.prompt_eval_count,
        prompt_eval_duration=final.prompt_eval_duration,
        eval_count=final.eval_count,
        eval_duration=final.eval_duration,
    )


def _load_response(model: str, final: Final, chat: bool) -> Response:
    stamp = now()
    if chat:
        body = t.ChatResponse(model=model, created_at=stamp, message=t.ResponseMessage(role="assistant", content=""),
                              done=True, done_reason=final.done_reason)
    else:
        body = t.GenerateResponse(model=model, created_at=stamp, response="", done=True,
                                  done_reason=final.done_reason)
    return json_response(body)


def _refuse_think_on_load(inference: Inference, req: t.GenerateRequest | t.ChatRequest) -> None:
    """As Ollama: a load (not an unload) carrying think fails early on a model without thinking (the CLI's
    loadOrUnloadModel sends think so that `ollama run --think` fails before the first prompt)."""
    if req.think:
        with service_errors():
            if (inference.keep_alive(req.keep_alive) != 0
                    and "thinking" not in inference.capabilities(inference.model(req.model))):
                raise BadRequest(f'"{req.model}" does not support thinking')


@post("/api/generate", status_code=200)
async def generate(request: Request) -> Response | Stream:
    req = await decode(request, t.GenerateRequest)
    if request.app.state.services.images.is_image_model(req.model):
        return await images.ollama_generate(request, req)  # a diffusion pipeline (server/api/images.py)
    inference = services(request)
    params = GenerateParams(
        model=req.model, prompt=req.prompt, suffix=req.suffix, system=req.system or None,
        template=req.template or None, context=req.context, raw=req.raw, images=req.images, format=req.format,
        options=req.options, keep_alive=req.keep_alive, think=req.think,
        truncate=req.truncate is not False, shift=req.shift is not False,
        logprobs=req.logprobs, top_logprobs=req.top_logprobs,
    )
    if req._debug_render_only:
        rendered = await service_call(inference.render_generate_only(params))
        return json_response(t.DebugRenderResponse(model=req.model, created_at=now(),
                                                   _debug_info={"rendered_template": rendered}))
    if not req.prompt and not req.suffix and not req.images:
        _refuse_think_on_load(inference, req)
        final = await service_call(inference.load(req.model, req.options, req.keep_alive))
        return _load_response(req.model, final, chat=False)

    def item(x: Delta | Final) -> t.GenerateResponse:
        if isinstance(x, Final):
            return t.GenerateResponse(model=req.model, created_at=now(), response="", done=True,
                                      context=x.context, **_stats(x))
        return t.GenerateResponse(model=req.model, created_at=now(), response=x.content, done=False,
                                  thinking=x.thinking or None, tool_calls=_tool_calls(x.tool_calls),
                                  logprobs=_logprobs(x.logprobs))

    def whole(a: Answer) -> t.GenerateResponse:
        out = item(a.final)
        out.response, out.thinking = a.content, a.thinking or None
        out.tool_calls, out.logprobs = _tool_calls(a.tool_calls), _logprobs(a.logprobs)
        return out

    return await answer(request, inference.generate(params), stream=req.stream is not False, item=item,
                        whole=whole, error_line=_error_line)


@post("/api/chat", status_code=200)
async def chat(request: Request) -> Response | Stream:
    req = await decode(request, t.ChatRequest)
    inference = services(request)
    messages = [_message_dict(m) for m in (req.messages or [])]
    name = agents.agent_name(request.app.state.services, req.model)
    if name is not None:
        return await _agent_chat(request, req, name, messages)
    params = ChatParams(
        model=req.model, messages=messages, tools=[_tool_dict(x) for x in req.tools] if req.tools else None,
        format=req.format, options=req.options, keep_alive=req.keep_alive, think=req.think,
        truncate=req.truncate is not False, shift=req.shift is not False, logprobs=req.logprobs,
        top_logprobs=req.top_logprobs, tool_choice=req.tool_choice,
    )
    if req._debug_render_only:
        rendered = await service_call(inference.render_chat_only(params))
        return json_response(t.DebugRenderResponse(model=req.model, created_at=now(),
                                                   _debug_info={"rendered_template": rendered}))
    if not messages:
        _refuse_think_on_load(inference, req)
        final = await service_call(inference.load(req.model, req.options, req.keep_alive))
        return _load_response(req.model, final, chat=True)

    def item(x: Delta | Final) -> t.ChatResponse:
        if isinstance(x, Final):
            return t.ChatResponse(model=req.model, created_at=now(), done=True,
                                  message=t.ResponseMessage(role="assistant", content=""), **_stats(x))
        return t.ChatResponse(
            model=req.model, created_at=now(), done=False, logprobs=_logprobs(x.logprobs),
            message=t.ResponseMessage(role="assistant", content=x.content, thinking=x.thinking or None,
                                      tool_calls=_tool_calls(x.tool_calls)),
        )

    def whole(a: Answer) -> t.ChatResponse:
        out = item(a.final)
        out.message = t.ResponseMessage(role="assistant", content=a.content, thinking=a.thinking or None,
                                        tool_calls=_tool_calls(a.tool_calls))
        out.logprobs = _logprobs(a.logprobs)
        return out

    return await answer(request, inference.chat(params), stream=req.stream is not False, item=item,
                        whole=whole, error_line=_error_line)


async def _agent_chat(request: Request, req: t.ChatRequest, name: str, messages: list[dict]) -> Response | Stream:
    """/api/chat with an agent: its steps as thinking, its answer as content (server/api/agents.py)."""
    if not messages:
        return json_response(t.ChatResponse(model=req.model, created_at=now(), done=True, done_reason="load",
                                            message=t.ResponseMessage(role="assistant", content="")))
    lines = agents.chat_lines(request.app.state.services, name, req.model, [Message.from_dict(m) for m in messages],
                              request, req.options)
    return await answer(request, lines, stream=req.stream is not False, item=lambda x: x, whole=lambda x: x,
                        error_line=_error_line, gather=agents.gather_chat)


def _error_line(exc: Exception) -> t.ErrorResponse:
    return t.ErrorResponse(error=str(exc))


def _message_dict(m: t.Message) -> dict:
    role = m.role.lower()  # as Ollama's Message decoder does
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": m.content or ""}
    if m.thinking:
        out["thinking"] = m.thinking
    if m.images:
        out["images"] = m.images
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "function": {"name": c.function.name, "arguments": c.function.arguments, "index": c.function.index}}
            for c in m.tool_calls
        ]
    if m.tool_name:
        out["tool_name"] = m.tool_name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _tool_dict(tool: t.Tool) -> dict:
    return {"type": tool.type, "function": tool.function}


# ---- embeddings ----------------------------------------------------------------------------


@post("/api/embed", status_code=200)
async def embed(request: Request) -> Response:
    req = await decode(request, t.EmbedRequest)
    inference = services(request)
    if isinstance(req.input, str):
        inputs = [req.input] if req.input else []
    elif req.input is None or (isinstance(req.input, list) and all(isinstance(x, str) for x in req.input)):
        inputs = list(req.input or [])
    else:
        raise APIError(400, "invalid input type")
    start = time.perf_counter_ns()
    if not inputs:
        await service_call(inference.load(req.model, req.options, req.keep_alive))
        return json_response(t.EmbedResponse(model=req.model, embeddings=[]))
    # a client that goes away cancels the embedding (it stops after the batch under way)
    work = inference.embed(req.model, inputs, truncate=req.truncate is not False, options=req.options,
                           keep_alive=req.keep_alive, dimensions=req.dimensions)
    result = await until_complete(request, work, None, raise_for)
    return json_response(t.EmbedResponse(model=req.model, embeddings=result.vectors,
                                         total_duration=time.perf_counter_ns() - start,
                                         load_duration=result.load_duration, prompt_eval_count=result.prompt_tokens))


@post("/api/embeddings", status_code=200)
async def embeddings(request: Request) -> Response:
    req = await decode(request, t.EmbeddingRequest)
    inference = services(request)
    if not req.prompt:
        await service_call(inference.load(req.model, req.options, req.keep_alive))
        return json_response(t.EmbeddingResponse(embedding=[]))
    work = inference.embed(req.model, [req.prompt], options=req.options, keep_alive=req.keep_alive, normalized=False)
    result = await until_complete(request, work, None, raise_for)
    return json_response(t.EmbeddingResponse(embedding=result.vectors[0]))


# ---- models --------------------------------------------------------------------------------


def _details(model: Model) -> t.ModelDetails:
    return t.ModelDetails(**model.details())


@route("/api/tags", http_method=["GET", "HEAD"])
async def tags(request: Request) -> Response:
    inference = services(request)
    models = []
    for entry in sorted(inference.store.list(), key=lambda e: e.modified, reverse=True):
        model = Model(inference.store, entry)
        try:
            details = _details(model)
        except Exception:  # a model whose files are damaged still lists, without details
            details = t.ModelDetails()
        models.append(t.ListModel(name=entry.name.display, model=entry.name.display, modified_at=rfc3339(entry.modified),
                                  size=entry.manifest.size, digest=entry.digest, details=details))
    return json_response(t.ListResponse(models=models + agents.tag_entries(request.app.state.services)))


@post("/api/show", status_code=200)
async def show(request: Request) -> Response:
    req = await decode(request, t.ShowRequest)
    inference = services(request)
    name = agents.agent_name(request.app.state.services, req.model or req.name)
    if name is not None:
        return json_response(agents.show(request.app.state.services, name))
    try:
        model = inference.model(req.model or req.name)
    except Exception as exc:
        raise_for(exc)
    info = read_info(str(model.model_path), arrays_up_to=1 << 30 if req.verbose else 5) if model.model_path else None
    model_info: dict[str, Any] = {}
    if info is not None:
        # long arrays were skipped (and are shown empty) unless verbose
        model_info = {k: ([] if k in info.array_lengths else v) for k, v in info.kv.items()
                      if not k.startswith("tokenizer.chat_template")}
        model_info["general.parameter_count"] = info.parameter_count
    template = model.template or model.chat_template or ""
    if "insert" in model.capabilities() and not model.template:
        # FIM from vocabulary tokens: Continue and other editors look for .Suffix in the template
        template = (template or "{{ .Prompt }}") + "{{- if .Suffix }}{{ .Suffix }}{{ end }}"
    messages = [t.Message(role=m.get("role", "user"), content=m.get("content", "")) for m in model.messages]
    shown = model
    if req.system or req.options:
        # as Ollama's GetModelInfo: the request's system replaces the model's, and its options are merged
        # into the Modelfile (not into `parameters`); the interactive CLI's /show sends its session's
        shown = shallow_copy(model)
        if req.system:
            shown.system = req.system
        if req.options:
            shown.parameters = {**model.parameters, **req.options}
    return json_response(
        t.ShowResponse(
            modelfile=modelfile.render(shown),
            parameters=modelfile.parameters_text(model.parameters),
            template=template,
            details=_details(model),
            model_info=model_info,
            capabilities=model.capabilities(),
            modified_at=rfc3339(model.entry.modified),
            license="\n".join(model.license) or None,
            system=shown.system or None,
            messages=messages or None,
        )
    )


@get("/api/ps")
async def ps(request: Request) -> Response:
    inference = services(request)
    models = []
    for loaded in inference.scheduler.running():
        expires = loaded.expires_at
        models.append(
            t.ProcessModel(
                name=loaded.model.name, model=loaded.model.name, size=loaded.size, digest=loaded.model.digest,
                details=_details(loaded.model),
                expires_at=rfc3339(time.time() + MAX_DURATION if expires == FOREVER else expires),
                size_vram=loaded.size_vram, context_length=loaded.options.num_ctx,
            )
        )
    return json_response(t.ProcessResponse(models=models))


@post("/api/copy", status_code=200)
async def copy(request: Request) -> Response:
    req = await decode(request, t.CopyRequest)
    inference = services(request)
    if not req.source or not req.destination:
        raise APIError(400, "source and destination are required")
    try:
        inference.model(req.source)
        inference.store.copy(req.source, req.destination)
    except Exception as exc:
        raise_for(exc)
    return Response(content=b"", status_code=200)


@delete("/api/delete", status_code=200)
async def delete_model(request: Request) -> Response:
    req = await decode(request, t.DeleteRequest)
    inference = services(request)
    name = req.model or req.name
    try:
        model = inference.model(name)
        await inference.scheduler.unload(model.digest)
        inference.store.delete(name)
    except Exception as exc:
        raise_for(exc)
    return Response(content=b"", status_code=200)


@get("/api/status")
async def status() -> Response:
    return json_response({"cloud": {"disabled": True, "source": "corral"}})


ROUTES = [root, version, generate, chat, embed, embeddings, tags, show, ps, copy, delete_model, status]
