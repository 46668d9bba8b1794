"""Image generation on the wire: Ollama's `/api/generate` for image models and OpenAI's Images API.

Both translate to `ImageService` (server/imaging/service.py) and back; nothing here generates.

Ollama (`ollama_generate`, called by /api/generate when the model has capability `image`): `width`,
`height`, `steps`, `options.seed`, `images[0]` as an edit's input image; Corral's options in `options`
(`negative_prompt`, `guidance_scale`, `scheduler`, `strength`, `adapters`, `mask`). Streamed: progress
lines `{"completed": k, "total": n, "done": false}`, then `{"image": "<base64 PNG>", "seed", "done":
true, "done_reason": "stop"}`; an empty prompt loads the model (with keep_alive 0 unloads it).

OpenAI (`/v1/images/generations`, `/v1/images/edits`): see image_types.py; streamed as SSE events
`image_generation.partial_image` (`image_edit.…` for edits) and `….completed`, one completed event per image.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, Router, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from ..errors import BadRequest
from ..imaging.png import decode_b64
from ..imaging.request import ImageRequest, from_options, parse_adapters
from ..imaging.service import Done, GeneratedImage, ImageService, Partial, Progress
from . import image_types as it_
from . import types as t
from .flow import answer, respond, service_call
from .openai_common import _event_stream, _on_api_error, _on_unexpected, _sse, _stream_error, http_error
from .wire import APIError, decode, json_response, now

MAX_BODY = 96 << 20  # an edit's image and mask, base64 or multipart


def image_service(request: Request) -> ImageService:
    return request.app.state.services.images


# ---- Ollama: /api/generate with an image model ----------------------------------------------


async def ollama_generate(request: Request, req: t.GenerateRequest) -> Response | Stream:
    svc = image_service(request)
    if not req.prompt and not req.images:
        reason = await service_call(svc.load(req.model, req.keep_alive))
        return json_response(t.GenerateResponse(model=req.model, created_at=now(), response="", done=True,
                                                done_reason=reason))
    options = dict(req.options or {})
    with _bad_input():
        image = decode_b64(req.images[0], "images[0]") if req.images else None
        mask = decode_b64(options.pop("mask"), "options.mask") if options.get("mask") is not None else None
        ireq = from_options(req.model, req.prompt, options, width=req.width, height=req.height, steps=req.steps,
                            image=image, mask=mask, keep_alive=req.keep_alive)

    def item(x: Progress | Done) -> t.GenerateResponse:
        if isinstance(x, Done):
            img = x.images[0]
            return t.GenerateResponse(model=req.model, created_at=now(), response="", done=True, done_reason="stop",
                                      image=base64.b64encode(img.data).decode(), seed=img.seed,
                                      total_duration=x.total_duration, load_duration=x.load_duration)
        return t.GenerateResponse(model=req.model, created_at=now(), response="", done=False,
                                  completed=x.completed, total=x.total)

    async def last(items: AsyncIterator[Any], first: Any) -> Any:
        final = first
        async for x in items:
            final = x
        return final

    return await answer(request, _without_partials(svc.generate(ireq)), stream=req.stream is not False, item=item,
                        whole=item, error_line=lambda exc: t.ErrorResponse(error=str(exc)), gather=last)


async def _without_partials(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for x in items:
            if not isinstance(x, Partial):
                yield x
    finally:
        await items.aclose()


class _bad_input:
    """BadRequest raised while reading a request → the route's 400."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, BadRequest):
            raise APIError(400, str(exc)) from exc
        return False


# ---- OpenAI: /v1/images/… ------------------------------------------------------------------


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size.strip().lower() in ("", "auto"):
        return None, None
    w, sep, h = size.strip().lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise APIError(400, f"invalid size {size!r}: use WIDTHxHEIGHT (e.g. 512x512) or auto", "size")
    return int(w), int(h)


def _image_request(body: it_.ImageGenerationRequest, image: bytes | None, mask: bytes | None) -> ImageRequest:
    if not body.prompt:
        raise APIError(400, "prompt is required", "prompt")
    if not body.model:
        raise APIError(400, "model is required", "model")
    fmt = body.response_format or "b64_json"
    if fmt not in ("b64_json", "url"):
        raise APIError(400, f"response_format must be b64_json or url, got {fmt!r}", "response_format")
    width, height = _size(body.size)
    opts = dict(body.options or {})
    fields = {k: getattr(body, k) for k in ("negative_prompt", "guidance_scale", "steps", "seed", "scheduler",
                                            "strength") if getattr(body, k) is not None}
    adapters = body.adapters if body.adapters is not None else opts.pop("adapters", None)
    if isinstance(adapters, str):  # multipart: a JSON text
        try:
            adapters = json.loads(adapters)
        except ValueError:
            raise APIError(400, "adapters must be JSON: [{\"name\": …, \"scale\": …}]", "adapters") from None
    with _bad_input():
        req = from_options(body.model, body.prompt, opts, width=width, height=height, image=image, mask=mask,
                           keep_alive=body.keep_alive, output_format=body.output_format or "png",
                           output_compression=body.output_compression, n=body.n if body.n is not None else 1,
                           partial_images=body.partial_images or 0, adapters=parse_adapters(adapters), **fields)
        req.check()
    return req


def _truthy(value: bool | str | None) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"))


async def _images(request: Request, body: it_.ImageGenerationRequest, req: ImageRequest, kind: str) -> Response | Stream:
    svc = image_service(request)
    artifacts = request.app.state.services.artifacts
    as_url = body.response_format == "url"
    created = int(time.time())
    quality, background = body.quality or "auto", body.background or "auto"

    def data(img: GeneratedImage) -> it_.ImageData:
        if as_url:
            art = artifacts.put(img.data, img.media_type, name=f"image-{img.seed}.{img.format}")
            return it_.ImageData(url=f"{str(request.base_url).rstrip('/')}/api/artifacts/{art.digest}", seed=img.seed)
        return it_.ImageData(b64_json=base64.b64encode(img.data).decode(), seed=img.seed)

    def usage(done: Done) -> it_.ImageUsage:
        return it_.ImageUsage(input_tokens=done.input_tokens, total_tokens=done.input_tokens)

    def event(kind_: str, img: GeneratedImage, index: int | None, done: Done | None = None) -> bytes:
        ev = it_.ImageStreamEvent(type=f"{kind}.{kind_}", b64_json=base64.b64encode(img.data).decode(),
                                  created_at=int(time.time()), size=f"{img.width}x{img.height}",
                                  output_format=img.format, quality=quality, background=background,
                                  partial_image_index=index, seed=img.seed,
                                  usage=usage(done) if done is not None else None)
        return b"event: " + ev.type.encode() + b"\n" + _sse(ev)

    items = svc.generate(req)
    if _truthy(body.stream):
        async def events(first: Any) -> AsyncIterator[bytes]:
            try:
                x = first
                while True:
                    if isinstance(x, Partial):
                        for img in x.images:
                            yield event("partial_image", img, x.index)
                    elif isinstance(x, Done):
                        for img in x.images:
                            yield event("completed", img, None, x)
                    try:
                        x = await items.__anext__()
                    except StopAsyncIteration:
                        break
            except Exception as exc:
                yield _stream_error(exc)
            finally:
                await items.aclose()

        return await respond(request, items, stream=True, streamed=lambda first: _event_stream(events(first)),
                             gathered=None)  # type: ignore[arg-type]

    async def gathered(first: Any) -> it_.ImagesResponse:
        done = first
        async for x in items:
            done = x
        assert isinstance(done, Done)
        img = done.images[0]
        return it_.ImagesResponse(created=created, data=[data(i) for i in done.images], output_format=img.format,
                                  size=f"{img.width}x{img.height}", quality=body.quality, background=body.background,
                                  usage=usage(done))

    return await respond(request, items, stream=False, streamed=None, gathered=gathered)  # type: ignore[arg-type]


@post("/images/generations", status_code=200, request_max_body_size=MAX_BODY)
async def generations(request: Request) -> Response | Stream:
    body = await decode(request, it_.ImageGenerationRequest)
    if body.image is not None or body.mask is not None:
        raise APIError(400, "image and mask belong to /v1/images/edits", "image")
    return await _images(request, body, _image_request(body, None, None), "image_generation")


@post("/images/edits", status_code=200, request_max_body_size=MAX_BODY)
async def edits(request: Request) -> Response | Stream:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        body, image, mask = await _multipart(request)
    else:
        body = await decode(request, it_.ImageGenerationRequest)
        images = [body.image] if isinstance(body.image, str) else list(body.image or [])
        if not images:
            raise APIError(400, "image is required", "image")
        with _bad_input():
            image = decode_b64(images[0], "image")
            mask = decode_b64(body.mask, "mask") if body.mask is not None else None
    return await _images(request, body, _image_request(body, image, mask), "image_edit")


async def _multipart(request: Request) -> tuple[it_.ImageGenerationRequest, bytes, bytes | None]:
    try:
        form = await request.form()
    except Exception as exc:
        raise APIError(400, f"invalid multipart body: {exc}") from None
    files: dict[str, list[bytes]] = {}
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        name = key.removesuffix("[]")
        if hasattr(value, "read"):
            files.setdefault(name, []).append(await value.read())
        else:
            fields[name] = value
    if not files.get("image"):
        raise APIError(400, "image is required (a file part named image)", "image")
    known = set(it_.ImageGenerationRequest.__struct_fields__) - {"image", "mask", "options"}
    if "options" in fields:
        try:
            fields["options"] = json.loads(fields["options"])
        except ValueError:
            raise APIError(400, "options must be a JSON object", "options") from None
    try:
        import msgspec

        body = msgspec.convert({k: v for k, v in fields.items() if k in known or k == "options"},
                               it_.ImageGenerationRequest, strict=False)
    except msgspec.ValidationError as exc:
        raise APIError(400, f"invalid request: {exc}") from None
    mask = files.get("mask", [None])[0]
    return body, files["image"][0], mask


# ---- Corral: POST /api/images/export (an image model to ONNX, as a new model) ----------------------


@post("/api/images/export", status_code=200)
async def export(request: Request) -> Response | Stream:
    """Progress like /api/pull (`{"status"}` lines, `{"status": "success"}` last; `stream: false`: the
    last one); bad input before the first line: 400, an unknown model 404."""
    from .models import _progress

    body = await decode(request, it_.ImageExportRequest)
    if not body.from_:
        raise APIError(400, "from is required: the image model to export")
    with _bad_input():
        adapters = parse_adapters(body.adapters)
    return await _progress(image_service(request).export_onnx(body.from_, body.model, adapters), body.stream)


ROUTES = [
    export,
    Router(
        path="/v1",
        route_handlers=[generations, edits],
        exception_handlers={APIError: _on_api_error, HTTPException: http_error, Exception: _on_unexpected},
    )
]
