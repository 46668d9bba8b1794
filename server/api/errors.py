"""One place that maps service exceptions to HTTP statuses and Ollama's `{"error": …}` body."""

from __future__ import annotations

import logging
from typing import NoReturn

from agents.errors import AgentsUnavailable
from tools import ToolError, ToolFailed, ToolTimeout

from ..errors import BadRequest, EngineError, NotFound
from ..imaging import ImagingUnavailable
from ..retrieval.errors import RetrievalUnavailable
from ..scheduler import ModelLoadError, QueueFull
from ..store.names import InvalidName
from ..store.store import DigestMismatch, InvalidDigest, ModelNotFound, StoreError
from .wire import APIError

log = logging.getLogger("corral.api")


def status_for(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, APIError):
        return exc.status, exc.message
    if isinstance(exc, (NotFound, ModelNotFound)):
        return 404, str(exc)
    if isinstance(exc, (AgentsUnavailable, RetrievalUnavailable, ImagingUnavailable)):  # BadRequests: checked first
        return 501, str(exc)
    if isinstance(exc, QueueFull):
        return 503, str(exc)
    if isinstance(exc, (BadRequest, InvalidName, InvalidDigest, DigestMismatch)):
        return 400, str(exc)
    if isinstance(exc, ToolError):
        return 422, str(exc)
    if isinstance(exc, ToolTimeout):
        return 504, str(exc)
    if isinstance(exc, (ModelLoadError, EngineError, ToolFailed)):
        return 500, str(exc)
    if isinstance(exc, StoreError):
        return 400, str(exc)
    log.exception("unexpected error", exc_info=exc)
    return 500, str(exc) or exc.__class__.__name__


def raise_for(exc: BaseException) -> NoReturn:
    status, message = status_for(exc)
    raise APIError(status, message) from exc
