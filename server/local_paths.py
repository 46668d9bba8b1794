"""Which files on the server's disk /api/create may read: CORRAL_ALLOW_LOCAL_PATHS.

A create request can name a file on the server (the legacy `path` field, a `from` or Modelfile
FROM/ADAPTER that is a path). Read without limits, that lets any client read the server's disk:
the Modelfile parser's error quoted the first line of /etc/shadow, other errors told whether a
file exists, and any GGUF on the machine could be imported. No client needs it: Ollama's CLI
(and `corral create`) uploads files to /api/blobs and names their digests. So such paths are
refused, with one message whatever is at the path, unless the operator lists directories that
may be read:

    CORRAL_ALLOW_LOCAL_PATHS=/srv/models:/home/me/modelfiles

Colon-separated absolute directories (`~` expanded; empty and relative entries ignored); a path
is allowed when its real path (symlinks and `..` resolved) lies under the real path of one of
them. Even there a file is only ever reported as unreadable (missing and forbidden alike) or as
not a valid Modelfile, never with its contents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

ENV = "CORRAL_ALLOW_LOCAL_PATHS"
MAX_MODELFILE = 16 << 20  # a Modelfile is text: a larger "Modelfile" is not one (and is not read into memory)

log = logging.getLogger("corral.create")


class LocalPathError(ValueError):
    """A server-side path a request may not use or that cannot be read; the message is for the client."""


def refused(ref: str) -> str:
    return (f"local paths are not accepted by this server ({ref}): upload the file as a blob "
            "(POST /api/blobs/sha256:<digest>) and name its digest in 'files' or 'adapters', "
            "as Ollama's CLI does")


def unreadable(ref: str) -> str:
    return f"cannot read {ref}: no such file or not readable"


def allowed_dirs() -> list[Path]:
    """The directories of CORRAL_ALLOW_LOCAL_PATHS, real paths; read at each request, so that the
    setting is whatever the server process was started with."""
    dirs = []
    for entry in os.environ.get(ENV, "").split(":"):
        path = Path(entry.strip()).expanduser() if entry.strip() else None
        if path is None:
            continue
        if not path.is_absolute():
            log.warning("%s: ignoring %r, not an absolute path", ENV, entry)
            continue
        dirs.append(Path(os.path.realpath(path)))
    return dirs


def _explicit(ref: str) -> bool:
    """Written as a path, not a model name: absolute, `~…`, or with a `.`/`..` segment."""
    return ref.startswith(("/", "~")) or any(part in (".", "..") for part in ref.split("/"))


def resolve(ref: str, base_dir: Path | None = None, *, is_path: bool = False) -> Path | None:
    """The real path of a server-side file `ref` names, checked to lie in an allowed directory.

    `ref` counts as a path when `is_path`, when it is written as one (`/…`, `~…`, `./…`, `../…`),
    or when `base_dir` (the directory of a Modelfile read from an allowed place) holds a file of
    that name; relative paths are taken from `base_dir`. None: `ref` is not a path (a model name).
    Raises LocalPathError (always `refused(ref)`) on where the path leads alone, before looking for
    a file there, so the answer is the same whether or not one exists."""
    explicit = is_path or _explicit(ref)
    if not explicit and base_dir is None:
        return None
    dirs = allowed_dirs()
    if not dirs:
        raise LocalPathError(refused(ref))
    try:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            if base_dir is None:
                raise ValueError
            path = base_dir / path
        real = Path(os.path.realpath(path))
    except (OSError, ValueError, RuntimeError):  # no base, a NUL byte, a symlink loop, `~nobody`
        raise LocalPathError(refused(ref)) from None
    if not any(real.is_relative_to(d) for d in dirs):
        raise LocalPathError(refused(ref))
    if explicit or real.is_file():
        return real
    return None


def check_readable(real: Path, ref: str) -> None:
    """A regular file this process can open; otherwise one message for every reason."""
    try:
        if not real.is_file():
            raise OSError
        with open(real, "rb"):
            pass
    except (OSError, ValueError):
        raise LocalPathError(unreadable(ref)) from None


def read_modelfile(ref: str) -> tuple[str, Path]:
    """The legacy `path` field: the Modelfile's text and its real path. A file too large for a
    Modelfile or not UTF-8 is refused without a word of what it holds."""
    real = resolve(ref, is_path=True)
    try:
        if not real.is_file():  # a directory, a FIFO (which would block): as missing
            raise OSError
        with open(real, "rb") as f:
            data = f.read(MAX_MODELFILE + 1)
    except (OSError, ValueError):
        raise LocalPathError(unreadable(ref)) from None
    try:
        if len(data) > MAX_MODELFILE:
            raise ValueError
        return data.decode("utf-8"), real
    except ValueError:
        raise LocalPathError(not_a_modelfile(ref)) from None


def not_a_modelfile(ref: str) -> str:
    return f"{ref} is not a valid Modelfile"
