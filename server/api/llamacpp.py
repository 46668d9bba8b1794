"""llama-server compatible routes, for editor plugins built on it (llama.vscode): /infill."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from ..inference import Final, Inference
from .errors import raise_for
from .wire import APIError, decode, encode, json_response


class ExtraChunk(msgspec.Struct):
    text: str = ""
    filename: str = ""


class InfillRequest(msgspec.Struct):
    """llama-server's /infill body (the fields editors send; sampling fields map to Ollama options)."""

    model: str = ""  # Corral extension: llama-server has one model, Corral picks by name
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] | None = None  # repo-level context: other files
    prompt: str = ""  # text already typed after the cursor's prefix (start of the middle)
    n_predict: int = -1
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    stream: bool = False
    options: dict[str, Any] | None = None  # any Ollama option
    keep_alive: float | int | str | None = None


class InfillResponse(msgspec.Struct, omit_defaults=True):
    content: str
    stop: bool
    model: str = ""
    tokens_predicted: int | None = None
    tokens_evaluated: int | None = None
    stop_type: str | None = None  # "eos" or "limit", as llama-server says it
    timings: dict[str, float] | None = None


def _options(req: InfillRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"num_predict": req.n_predict}
    for key, value in (("temperature", req.temperature), ("top_k", req.top_k), ("top_p", req.top_p),
                       ("seed", req.seed), ("stop", req.stop)):
        if value is not None:
            options[key] = value
    options.update(req.options or {})
    return options


def _final(req: InfillRequest, final: Final, content: str) -> InfillResponse:
    return InfillResponse(
        content=content, stop=True, model=req.model, tokens_predicted=final.eval_count,
        tokens_evaluated=final.prompt_eval_count, stop_type="limit" if final.done_reason == "length" else "eos",
        timings={"prompt_ms": final.prompt_eval_duration / 1e6, "predicted_ms": final.eval_duration / 1e6},
    )


@post("/infill", status_code=200)
async def infill(request: Request) -> Response | Stream:
    req = await decode(request, InfillRequest)
    inference: Inference = request.app.state.inference
    if not req.model:
        raise APIError(400, "model is required")
    extra = [(c.filename, c.text) for c in req.input_extra or []]
    it = inference.infill(req.model, req.input_prefix, req.input_suffix, extra=extra, middle=req.prompt,
                          options=_options(req), keep_alive=req.keep_alive)
    try:
        first = await it.__anext__()
    except Exception as exc:
        raise_for(exc)
    if not req.stream:
        parts, item = [], first
        while not isinstance(item, Final):
            parts.append(item.content)
            item = await it.__anext__()
        return json_response(_final(req, item, "".join(parts)))

    async def events():
        item = first
        try:
            while True:
                if isinstance(item, Final):
                    yield b"data: " + encode(_final(req, item, "")) + b"\n\n"
                    return
                if item.content:
                    yield b"data: " + encode(InfillResponse(content=item.content, stop=False)) + b"\n\n"
                item = await it.__anext__()
        finally:
            await it.aclose()

    return Stream(content=events(), media_type="text/event-stream")


ROUTES = [infill]
