"""Content-addressed blobs and manifests in Ollama's on-disk layout.

    $OLLAMA_MODELS/blobs/sha256-<hex>
    $OLLAMA_MODELS/manifests/<host>/<namespace>/<model>/<tag>

Every write goes to a temporary file in the same directory and is renamed into place only
when complete (blobs: after their sha256 is verified; manifests: after all their blobs
exist), so a crash never leaves a broken blob or model visible.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from .names import InvalidName, ModelName

DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation that cannot be done; the message is meant for the client."""


class InvalidDigest(StoreError, ValueError):
    pass


class DigestMismatch(StoreError, ValueError):
    pass


class ModelNotFound(StoreError, KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"model '{self.name}' not found"


def parse_digest(digest: str) -> str:
    """`sha256:<hex>` or `sha256-<hex>` → canonical `sha256:<hex>` (lowercase)."""
    m = DIGEST_RE.match(digest or "")
    if not m:
        raise InvalidDigest(f"invalid digest format: {digest!r}")
    return "sha256:" + m.group(1).lower()


@dataclass(frozen=True)
class Entry:
    """One model in the store."""

    name: ModelName
    manifest: mf.Manifest
    digest: str  # bare hex sha256 of the manifest file's bytes
    modified: float  # mtime of the manifest file
    path: Path


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # ---- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / parse_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        """Where an unfinished download of this blob is kept between attempts."""
        return self.blob_path(digest).with_name(self.blob_path(digest).name + "-partial")

    def write_blob(self, chunks: Iterable[bytes], expected: str | None = None) -> mf.Layer:
        """Stream bytes into a new blob; verify the digest (when given) before it becomes visible."""
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            return self._commit_blob(Path(tmp), "sha256:" + h.hexdigest(), size, expected)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_blob_bytes(self, data: bytes, media_type: str = "") -> mf.Layer:
        layer = self.write_blob([data])
        return mf.Layer(mediaType=media_type, digest=layer.digest, size=layer.size)

    def import_file(self, src: str | os.PathLike, expected: str | None = None, move: bool = False) -> mf.Layer:
        """Add a file on disk as a blob (hashing it); `move` renames instead of copying."""
        src = Path(src)
        h = hashlib.sha256()
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        if expected is not None and parse_digest(expected) != digest:
            raise DigestMismatch(f"digest mismatch, expected {expected!r}, got {digest!r}")
        size = src.stat().st_size
        if self.has_blob(digest):
            if move:
                src.unlink()
            return mf.Layer(mediaType="", digest=digest, size=size)
        if move and src.parent.resolve() == self.blobs.resolve():
            os.replace(src, self.blob_path(digest))
            return mf.Layer(mediaType="", digest=digest, size=size)
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            layer = self._commit_blob(Path(tmp), digest, size, None)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if move:
            src.unlink()
        return layer

    def _commit_blob(self, tmp: Path, digest: str, size: int, expected: str | None) -> mf.Layer:
        if expected is not None and parse_digest(expected) != digest:
            raise DigestMismatch(f"digest mismatch, expected {expected!r}, got {digest!r}")
        os.chmod(tmp, 0o644)
        dest = self.blob_path(digest)
        if not dest.exists():
            os.replace(tmp, dest)
        return mf.Layer(mediaType="", digest=digest, size=size)

    def commit_partial(self, digest: str) -> mf.Layer:
        """Verify a finished download (`partial_path`) and make it the blob; on a mismatch delete it."""
        digest = parse_digest(digest)
        partial = self.partial_path(digest)
        h = hashlib.sha256()
        with open(partial, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(f"digest mismatch, file must be downloaded again: want {digest}, got {actual}")
        size = partial.stat().st_size
        os.chmod(partial, 0o644)
        os.replace(partial, self.blob_path(digest))
        return mf.Layer(mediaType="", digest=digest, size=size)

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # ---- manifests ---------------------------------------------------------------------

    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts())

    def find(self, name: str | ModelName) -> Entry | None:
        """Look a model up by name, case-insensitively."""
        try:
            wanted = name if isinstance(name, ModelName) else ModelName.parse(name)
        except InvalidName:
            return None
        exact = self._manifest_path(wanted)
        if exact.is_file():
            return self._entry(wanted, exact)
        for entry in self.list():
            if entry.name.key == wanted.key:
                return entry
        return None

    def get(self, name: str | ModelName) -> Entry:
        entry = self.find(name)
        if entry is None:
            raise ModelNotFound(str(name))
        return entry

    def list(self) -> list[Entry]:
        out = []
        if not self.manifests.is_dir():
            return out
        for path in self.manifests.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, ns, model, tag = path.relative_to(self.manifests).parts
            try:
                name = ModelName(host, ns, model, tag)
                ModelName.parse(name.full)
                out.append(self._entry(name, path))
            except (InvalidName, ValueError, OSError):
                continue  # not a manifest we can read: leave it alone, don't list it
        return out

    def _entry(self, name: ModelName, path: Path) -> Entry:
        data = path.read_bytes()
        return Entry(
            name=name,
            manifest=mf.decode(data),
            digest=hashlib.sha256(data).hexdigest(),
            modified=path.stat().st_mtime,
            path=path,
        )

    def write_manifest(self, name: str | ModelName, manifest: mf.Manifest, raw: bytes | None = None) -> Entry:
        """Make a model visible; refuses while any of its blobs is missing.

        `raw`: the manifest's exact bytes (as a registry served them), written instead of re-encoding."""
        name = name if isinstance(name, ModelName) else ModelName.parse(name)
        for digest in manifest.digests():
            if not self.has_blob(digest):
                raise StoreError(f"blob {digest} is missing, manifest not written")
        with self._lock:
            existing = self.find(name)
            path = existing.path if existing is not None else self._manifest_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(raw if raw is not None else mf.encode(manifest))
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return self._entry(name, path)

    def copy(self, source: str, destination: str) -> Entry:
        src = self.get(source)
        return self.write_manifest(ModelName.parse(destination), src.manifest)

    def delete(self, name: str) -> None:
        """Remove a manifest, then every blob no other manifest refers to."""
        with self._lock:
            entry = self.get(name)
            entry.path.unlink()
            parent = entry.path.parent
            while parent != self.manifests and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
            self.prune()

    def prune(self) -> list[str]:
        """Delete blobs that no manifest references (but never an unfinished download)."""
        with self._lock:
            used = {d.replace(":", "-") for e in self.list() for d in e.manifest.digests()}
            removed = []
            for path in self.blobs.iterdir():
                if path.name.startswith("sha256-") and not path.name.endswith("-partial") and path.name not in used:
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
            return removed

    def iter_blob(self, digest: str, start: int = 0) -> Iterator[bytes]:
        with open(self.blob_path(digest), "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                yield chunk
