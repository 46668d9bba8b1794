"""The training feature's errors (the rest are server.errors' BadRequest and NotFound).

`TrainingError` is a request that cannot be trained as asked (400, before anything runs); `TrainingUnavailable`
a package of the `adapters` extra that is missing (501, naming the extra). Inside a running job,
`JobCancelled` (DELETE /api/train/<id>) and `JobInterrupted` (the server is stopping: the job resumes from
its last checkpoint at the next start) end the work between two steps.
"""

from __future__ import annotations

import importlib
import importlib.util

from server.errors import BadRequest

EXTRA_HINT = "pip install 'corral[adapters]'"


class TrainingError(BadRequest):
    """A training request (or a dataset line) that cannot be used; the message is for the client."""


class TrainingUnavailable(BadRequest):
    """A package of the `adapters` extra is missing (501, naming the extra)."""

    def __init__(self, what: str, module: str = ""):
        missing = f" ({module} is not installed)" if module else ""
        super().__init__(f"{what} needs the adapters extra{missing}: {EXTRA_HINT}")


class JobCancelled(Exception):
    """The job was cancelled; raised between two steps."""


class JobInterrupted(Exception):
    """The server is stopping; the job stays queued and resumes from its last checkpoint."""


def require(module: str, what: str):
    """Import a module of the adapters extra, or TrainingUnavailable naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrainingUnavailable(what, module) from None


def check_installed(modules: tuple[str, ...], what: str) -> None:
    """TrainingUnavailable unless every module can be found (nothing is imported: cheap, for a request)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise TrainingUnavailable(what, module)
