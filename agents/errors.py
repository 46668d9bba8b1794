"""The agents' own error: the `agents` extra (LangGraph and its checkpointers) is not installed.

A BadRequest, so a layer that knows nothing of it still answers 400; the HTTP layer maps it to 501
(check it before BadRequest).
"""

from __future__ import annotations

from server.errors import BadRequest

MISSING_EXTRA = "agents need the 'agents' extra: pip install 'corral[agents]'"


class AgentsUnavailable(BadRequest):
    """LangGraph (the `agents` extra) is not installed (501)."""

    def __init__(self, message: str = MISSING_EXTRA):
        super().__init__(message)
