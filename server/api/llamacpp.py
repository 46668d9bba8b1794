"""llama-server compatible routes, for editor plugins built on it (llama.vscode): /infill."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from ..inference import Delta, Final, Inference
from .errors import raise_for
from .wire import APIError, decode, encode, first_item, json_response, until_complete


class ExtraChunk(msgspec.Struct):
    text: str = ""
    filename: str = ""


class InfillRequest(msgspec.Struct):
    """llama-server's /infill body (the fields editors send; sampling fields map to Ollama options)."""

    model: str = ""  # Corral extension; unset: the fill-in-the-middle model in use (`_default_model`)
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] | None = None  # repo-level context: other files
    prompt: str = ""  # text already typed after the cursor's prefix (start of the middle)
    n_predict: int = -1  # -1: no limit; 0: process the prompt only (editors warm the cache this way)
    t_max_predict_ms: int = 0  # > 0: stop at the first newline after this long generating
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
    # a prompt-only request samples one token and drops it: the engine always samples after a prompt
    options: dict[str, Any] = {"num_predict": 1 if req.n_predict == 0 else req.n_predict}
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


def _default_model(inference: Inference) -> str:
    """llama.vscode sends no model: the loaded model that can fill in the middle (most recently used),
    else the only stored one that can."""
    loaded = [l for l in inference.scheduler.running() if "insert" in inference.capabilities(l.model)]
    if loaded:
        return max(loaded, key=lambda l: l.last_used).model.name
    stored = []
    for entry in inference.store.list():
        try:
            if "insert" in inference.capabilities(inference.model(entry.name.display)):
                stored.append(entry.name.display)
        except Exception:  # a damaged model is no candidate
            continue
    if len(stored) == 1:
        return stored[0]
    raise APIError(400, "model is required" + (f": several models can fill in the middle ({', '.join(stored)})"
                                               if stored else ": no stored model can fill in the middle"))


async def _pieces(req: InfillRequest, it: AsyncIterator[Any]) -> AsyncIterator[Delta | Final | None]:
    """The generation's items; with `t_max_predict_ms`, a None in place of the Final when the time
    ran out after a newline (llama-server's rule); with n_predict 0, nothing of the sampled token."""
    started, text = None, ""
    async for item in it:
        if isinstance(item, Final):
            if req.n_predict == 0:
                item.eval_count, item.done_reason = 0, "length"
            yield item
            return
        if req.n_predict == 0:
            continue
        started = started or time.monotonic()
        text += item.content
        yield item
        if req.t_max_predict_ms > 0 and "\n" in text and (time.monotonic() - started) * 1000 > req.t_max_predict_ms:
            yield None
            return


@post("/infill", status_code=200)
async def infill(request: Request) -> Response | Stream:
    req = await decode(request, InfillRequest)
    inference: Inference = request.app.state.inference
    if not req.model:
        req.model = _default_model(inference)
    extra = [(c.filename, c.text) for c in req.input_extra or []]
    it = inference.infill(req.model, req.input_prefix, req.input_suffix, extra=extra, middle=req.prompt,
                          options=_options(req), keep_alive=req.keep_alive)
    items = _pieces(req, it)
    try:
        first = await first_item(request, items, raise_for)
    except BaseException:
        await it.aclose()
        raise

    def timed_out(count: int) -> InfillResponse:
        return InfillResponse(content="", stop=True, model=req.model, tokens_predicted=count, stop_type="limit")

    if not req.stream:
        async def collect() -> InfillResponse:
            parts, item = [], first
            while isinstance(item, Delta):
                parts.append(item.content)
                item = await items.__anext__()
            out = timed_out(len(parts)) if item is None else _final(req, item, "")
            out.content = "".join(parts)
            return out

        return json_response(await until_complete(request, collect(), it, raise_for))

    async def events():
        item, count = first, 0
        try:
            while True:
                if item is None or isinstance(item, Final):
                    yield b"data: " + encode(timed_out(count) if item is None else _final(req, item, "")) + b"\n\n"
                    return
                count += 1
                if item.content:
                    yield b"data: " + encode(InfillResponse(content=item.content, stop=False)) + b"\n\n"
                item = await items.__anext__()
        finally:
            await it.aclose()

    return Stream(content=events(), media_type="text/event-stream")


ROUTES = [infill]
