"""LoRA adapters over HTTP: `GET /api/adapters`, `POST /api/adapters/load`, `POST /api/adapters/unload`.

Only translates: wire types (server/api/types.py) in and out; adapters/catalog.py and adapters/runtime.py
do the work. A request applies adapters with `options.adapters` on the generation routes.
"""

from __future__ import annotations

from litestar import Request, Response, get, post

from adapters import runtime

from ..services import Services
from . import types as t
from .flow import service_call, service_errors
from .wire import decode, json_response


def services(request: Request) -> Services:
    return request.app.state.services


@get("/api/adapters")
async def list_adapters(request: Request) -> Response:
    inference = services(request).inference
    with service_errors():
        held = runtime.loaded_adapters(inference)
        stored = inference.adapters.stored()
    return json_response(t.AdapterList(adapters=[
        t.AdapterInfo(digest=a.digest, size=a.size, models=a.models, base=a.base, architecture=a.architecture,
                      alpha=a.alpha, loaded_in=held.get(a.digest, []))
        for a in stored
    ]))


@post("/api/adapters/load", status_code=200)
async def load_adapter(request: Request) -> Response:
    req = await decode(request, t.AdapterLoadRequest)
    inference = services(request).inference
    digests = await service_call(runtime.load_adapter(inference, req.model, req.adapter, req.keep_alive))
    return json_response(t.AdapterLoadResponse(status="success", model=req.model, adapters=digests))


@post("/api/adapters/unload", status_code=200)
async def unload_adapter(request: Request) -> Response:
    req = await decode(request, t.AdapterLoadRequest)
    with service_errors():
        digests = runtime.unload_adapter(services(request).inference, req.model, req.adapter)
    return json_response(t.AdapterLoadResponse(status="success", model=req.model, adapters=digests))


ROUTES = [list_adapters, load_adapter, unload_adapter]
