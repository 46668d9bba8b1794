"""The service's errors: what callers of the in-process API catch, and the API layer maps to statuses."""

from __future__ import annotations


class BadRequest(ValueError):
    """The request cannot be served as asked (400)."""


class NotFound(LookupError):
    """No such model, tool or artifact (404)."""


class EngineError(RuntimeError):
    """The engine failed while computing an answer (llama_decode failed, for one)."""
