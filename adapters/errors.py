"""The adapters package's error: an adapter that cannot be converted or does not fit its base model.

A subclass of BadRequest, so that /api/create answers it as a 400 in the API's own shape."""

from __future__ import annotations

from server.errors import BadRequest


class AdapterError(BadRequest):
    """An adapter that cannot be used as asked; the message says why (it is shown to the client)."""
