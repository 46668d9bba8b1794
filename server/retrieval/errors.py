"""The retrieval feature's own errors (the rest are server.errors' BadRequest and NotFound)."""

from __future__ import annotations

from server.errors import BadRequest

EXTRA_HINT = "pip install 'corral[retrieval]'"


class RetrievalUnavailable(BadRequest):
    """A package of the `retrieval` extra is missing (501, naming the extra)."""

    def __init__(self, what: str):
        super().__init__(f"{what} needs the retrieval extra, which is not installed: {EXTRA_HINT}")


def require(module: str, what: str):
    """Import a module of the retrieval extra, or RetrievalUnavailable naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RetrievalUnavailable(what) from None
