"""The Litestar application: routes, errors in Ollama's shape, CORS and the Host check."""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import socket

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, NotFoundException
from litestar.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .api import adapters, agents, langgraph, llamacpp, metrics, models, ollama, openai, openapi, tools
from .api import collections, images, rerank
from .api import classify, train
from .api.mcp import mcp_endpoint
from .api.wire import APIError, error
from .config import Settings
from .engine.llama import log_backends
from .services import Services, build_services

log = logging.getLogger("corral")

DEFAULT_ORIGINS = [
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
]
ALLOWED_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, x-stainless-arch, "
    "x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, x-stainless-lang, "
    "x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, x-stainless-retry-count, "
    "x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout"
)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost",)


def host_allowed(host_header: str) -> bool:
    """Ollama's rule for a server bound to loopback: refuse Host names that could be DNS rebinding."""
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]").lower()
    if not host or host in ("localhost", socket.gethostname().lower()):
        return True
    if host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified or any(ip in net for net in PRIVATE_NETWORKS)


# Go's netip.Addr.IsPrivate (RFC 1918 and RFC 4193), which Ollama's check uses; Python's is_private
# also takes documentation, benchmarking, link-local and reserved ranges
PRIVATE_NETWORKS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def cors_and_host(settings: Settings):
    origins = DEFAULT_ORIGINS + settings.origins
    check_host = _is_loopback(settings.host)

    def allowed(origin: str) -> bool:
        return any(o == "*" or fnmatch.fnmatchcase(origin, o) for o in origins)

    # Corral's own version on every response (/api/version reports the Ollama API version it implements)
    version_header = (b"x-corral-version", __version__.encode())

    def with_version_header(send: Send) -> Send:
        async def send_with_version(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [version_header]
            await send(message)

        return send_with_version

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            send = with_version_header(send)
            if sum(1 for k, _ in scope["headers"] if k.lower() == b"host") > 1:
                # Go's net/http (Ollama's server) refuses these before any handler, in these words
                await _send_plain(send, 400, b"400 Bad Request: too many Host headers")
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if check_host and not host_allowed(headers.get("host", "")):
                await _send_plain(send, 403, b"")
                return
            origin = headers.get("origin")
            if origin is None:
                await app(scope, receive, send)
                return
            if not allowed(origin):
                await _send_plain(send, 403, b"")
                return
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
            ]
            if scope["method"] == "OPTIONS":
                await send({"type": "http.response.start", "status": 204, "headers": cors + [
                    (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
                    (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                    (b"access-control-max-age", b"43200"),
                ]})
                await send({"type": "http.response.body", "body": b""})
                return

            async def send_with_cors(message):
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = list(message.get("headers", [])) + cors
                await send(message)

            await app(scope, receive, send_with_cors)

        return handle

    return middleware


async def _send_plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _api_error(_: Request, exc: APIError) -> Response:
    return error(exc.status, exc.message)


def _http_error(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, NotFoundException) and exc.detail in ("Not Found", ""):
        return Response(content=b"404 page not found", status_code=404, media_type="text/plain")
    if request.url.path.startswith("/v1/"):  # routing errors (405) come before the /v1 router's handlers
        return openai.http_error(request, exc)
    status = exc.status_code
    message = exc.detail or "error"
    if status == 405:
        message = "method not allowed"
    return error(status, message)


def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error(500, str(exc) or exc.__class__.__name__)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Litestar:
    """The HTTP app over one Services (built here from `settings` when not given): it starts the
    services with the app and closes them after it."""
    services = services or build_services(settings)
    settings = services.settings
    mcp_route, mcp_lifespan = mcp_endpoint(services)

    async def startup(app: Litestar) -> None:
        log_backends()
        await services.start()

    async def shutdown(app: Litestar) -> None:
        await services.close()

    app = Litestar(
        route_handlers=[*ollama.ROUTES, *metrics.ROUTES, *models.ROUTES, *openai.ROUTES, *llamacpp.ROUTES,
                        *tools.ROUTES, *openapi.ROUTES, *langgraph.ROUTES, *agents.ROUTES, *adapters.ROUTES, mcp_route,
                        *collections.ROUTES, *rerank.ROUTES, *images.ROUTES, *train.ROUTES, *classify.ROUTES],
        middleware=[cors_and_host(settings)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        on_startup=[startup],
        on_shutdown=[shutdown],
        lifespan=[mcp_lifespan],
        openapi_config=None,
        debug=False,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.inference = services.inference
    return app
