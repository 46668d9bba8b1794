"""Files tools make (images, exports), kept by content: `<data dir>/artifacts/sha256-<hex>`.

Writes are atomic (a temporary file in the same folder, then a rename), so a crash never leaves a
half-written artifact under its name; the media type is kept beside it in `sha256-<hex>.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from server.errors import BadRequest, NotFound

from .results import Artifact

DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, data: bytes, media_type: str, name: str = "") -> Artifact:
        hexdigest = hashlib.sha256(data).hexdigest()
        path = self.root / f"sha256-{hexdigest}"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(path.with_suffix(".json"), json.dumps({"media_type": media_type}).encode())
            _write_atomic(path, data)
        return Artifact(digest=f"sha256:{hexdigest}", media_type=self.media_type(hexdigest), size=len(data), name=name)

    def open(self, digest: str) -> tuple[Path, str]:
        """(path, media type) of a stored artifact. BadRequest for a malformed digest, NotFound if absent."""
        m = DIGEST.match(digest.strip().lower())
        if not m:
            raise BadRequest(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
        path = self.root / f"sha256-{m[1]}"
        if not path.is_file():
            raise NotFound(f"artifact {digest} not found")
        return path, self.media_type(m[1])

    def media_type(self, hexdigest: str) -> str:
        try:
            return json.loads((self.root / f"sha256-{hexdigest}.json").read_text())["media_type"]
        except (OSError, ValueError, KeyError, TypeError):
            return "application/octet-stream"

    def remove_leftovers(self, older_than: float = 600.0) -> None:
        """Temporary files a killed process left behind (a live write of another process sharing the
        folder is seconds old, and is left alone)."""
        now = time.time()
        for tmp in self.root.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > older_than:
                    tmp.unlink()
            except OSError:
                pass


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
