"""Ollama's model-lifecycle API: pull, push, create, blobs (and the cloud sign-in stub).

Progress streams as NDJSON `{"status", "digest"?, "total"?, "completed"?}` objects; `stream:false`
answers with the last one. A request that is wrong fails before the first object with a proper
status; a failure after streaming began is a final `{"error": "..."}` line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post, route
from litestar.response import Stream

from .. import create as creating
from ..inference import Inference
from ..model_registry import Registry, RegistryError
from ..store.store import InvalidDigest, parse_digest
from . import types as t
from .errors import status_for
from .wire import APIError, decode, error, json_response, ndjson



def services(request: Request) -> Inference:
    return request.app.state.inference


def _status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, RegistryError):
        return 500, str(exc)
    return status_for(exc)


def _wire(item: dict[str, Any]) -> t.ProgressResponse:
    return t.ProgressResponse(status=item["status"], digest=item.get("digest"), total=item.get("total"),
                              completed=item.get("completed"))


async def _progress(it: AsyncIterator[dict], stream: bool | None) -> Response | Stream:
    """Serve a progress iterator: errors before the first object get a status code."""
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        raise APIError(500, "no progress") from None
    except APIError:
        raise
    except Exception as exc:
        status, message = _status(exc)
        raise APIError(status, message) from exc

    if stream is not False:
        async def rest() -> AsyncIterator[t.ProgressResponse]:
            try:
                async for item in it:
                    yield _wire(item)
            finally:
                await it.aclose()

        def on_error(exc: Exception) -> t.ErrorResponse:
            return t.ErrorResponse(error=_status(exc)[1])

        return ndjson(_wire(first), rest(), on_error)

    last = first
    try:
        async for item in it:
            last = item
    except Exception as exc:
        status, message = _status(exc)
        return error(status, message)
    finally:
        await it.aclose()
    return json_response(_wire(last))


@post("/api/pull", status_code=200)
async def pull(request: Request) -> Response | Stream:
    return await _transfer(request, t.PullRequest, Registry.pull)


@post("/api/push", status_code=200)
async def push(request: Request) -> Response | Stream:
    return await _transfer(request, t.PushRequest, Registry.push)


async def _transfer(request: Request, kind: type[t.PullRequest] | type[t.PushRequest], method) -> Response | Stream:
    """A pull or a push: the same request fields, the same progress stream."""
    req = await decode(request, kind)
    name = req.model or req.name
    if not name:
        raise APIError(400, "model is required")
    it = method(Registry(), services(request).store, name, insecure=req.insecure)
    return await _progress(it, req.stream)


@post("/api/create", status_code=200)
async def create(request: Request) -> Response | Stream:
    req = await decode(request, t.CreateRequest)
    spec = creating.CreateSpec(
        name=req.model or req.name, from_=req.from_, files=dict(req.files or {}), adapters=dict(req.adapters or {}),
        template=req.template, system=req.system, license=req.license, parameters=req.parameters,
        messages=[{"role": m.role, "content": m.content} for m in req.messages] if req.messages else None,
        quantize=req.quantize or req.quantization, requires=req.requires, modelfile=req.modelfile, path=req.path)
    inference = services(request)
    it = creating.create(inference.store, spec, threads=inference.settings.num_threads or None)
    return await _progress(it, req.stream)


# ---- blobs ---------------------------------------------------------------------------------


def _digest(digest: str) -> str:
    try:
        return parse_digest(digest)
    except InvalidDigest:
        raise APIError(400, "invalid digest format") from None


@route("/api/blobs/{digest:str}", http_method=["HEAD"])
async def head_blob(request: Request, digest: str) -> Response:
    canonical = _digest(digest)
    if not services(request).store.has_blob(canonical):
        return error(404, f'blob "{digest}" not found')
    return Response(content=b"", status_code=200)


@post("/api/blobs/{digest:str}", request_max_body_size=None)
async def create_blob(request: Request, digest: str) -> Response:
    """Stream the body to a temporary file in the blob directory, verify, then make it the blob."""
    canonical = _digest(digest)
    store = services(request).store
    if store.has_blob(canonical):
        return Response(content=b"", status_code=200)
    fd, tmp = tempfile.mkstemp(dir=store.blobs, prefix=".upload-")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                h.update(chunk)
                f.write(chunk)
        got = "sha256:" + h.hexdigest()
        if got != canonical:
            return error(400, f'digest mismatch, expected "{digest}", got "{got}"')
        # import_file hashes once more while it moves the file in: the store verifies what it shows
        await asyncio.to_thread(store.import_file, tmp, canonical, True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Response(content=b"", status_code=201)


# ---- cloud sign-in: a local server has no account ------------------------------------------


@post("/api/me", status_code=401)
async def me() -> Response:
    return error(401, "unauthorized")


ROUTES = [pull, push, create, head_blob, create_blob, me]
