"""Content-addressed blobs and manifests in Ollama's on-disk layout.

    $OLLAMA_MODELS/blobs/sha256-<hex>
    $OLLAMA_MODELS/manifests/<host>/<namespace>/<model>/<tag>

Every write goes to a temporary file in the same directory and is renamed into place only
when complete (blobs: after their sha256 is verified; manifests: after all their blobs
exist), so a crash never leaves a broken blob or model visible. The temporary files a crash
leaves behind are removed when a Store is opened (`clean_temp`), once they are old enough that no
writer can still own them; unfinished downloads (`*-partial` and their sidecars) are kept to resume.

Blobs are removed only as Ollama removes them: those of a manifest that was deleted or replaced
(`remove_unused`) that no manifest uses any more. An unreferenced blob that was never part of a
manifest (an /api/blobs upload awaiting its /api/create, a blob an in-flight pull has verified)
is never touched. Digests an operation in progress relies on can be pinned (`pin`) so that a
concurrent delete leaves them alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from .names import InvalidName, ModelName

DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
CHUNK = 1 << 20

log = logging.getLogger("corral.store")

# Temporary files in blobs/ (and `.tmp-*` in manifests/): write_blob/import_file and
# write_manifest (`.tmp-`), /api/blobs uploads (`.upload-`), quantize (`.quantize-`), the default
# model's assembly directory (`.assemble-`). A download's sidecar is replaced through `<sidecar>.tmp`.
TEMP_PREFIXES = (".tmp-", ".upload-", ".quantize-", ".assemble-")
# how old (newest mtime inside) a temporary file must be before a new Store removes it
TEMP_MAX_AGE = 10 * 60


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


def _noprune() -> bool:
    """OLLAMA_NOPRUNE, read as Ollama's envconfig.Bool does (set but unparsable counts as true)."""
    raw = os.environ.get("OLLAMA_NOPRUNE", "").strip().strip("\"'")
    if not raw:
        return False
    if raw in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    return True


class Store:
    def __init__(self, root: str | os.PathLike, *, clean_temp: bool = True):
        self.root = Path(root).expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pins: Counter[str] = Counter()
        # called with the digests `remove_unused` removed (server/imaging drops a pipeline's folder with its index)
        self.on_removed: list[Callable[[list[str]], None]] = []
        if clean_temp:
            self.remove_leftovers()

    @staticmethod
    def noprune() -> bool:
        """OLLAMA_NOPRUNE is set: replaced manifests' layers stay on disk."""
        return _noprune()

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
            try:
                return self._entry(wanted, exact)
            except (ValueError, OSError):
                return None  # unreadable: as absent (a pull or create writes it anew)
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
        with self._lock:  # under the lock: remove_unused cannot take a blob between check and write
            for digest in manifest.digests():
                if not self.has_blob(digest):
                    raise StoreError(f"blob {digest} is missing, manifest not written")
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
        """Ollama's CopyModel: the destination gets the source manifest's exact bytes (so the same
        digest, and any field Corral does not model)."""
        src = self.get(source)
        dest = ModelName.parse(destination)
        raw = src.path.read_bytes()
        return self.write_manifest(dest, mf.decode(raw), raw=raw)

    def delete(self, name: str) -> None:
        """Remove a manifest, then those of its blobs (config + layers) no other manifest uses."""
        with self._lock:
            entry = self.get(name)
            entry.path.unlink()
            parent = entry.path.parent
            while parent != self.manifests and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
            self.remove_unused(entry.manifest.digests())

    def used_digests(self) -> set[str]:
        """Every digest some manifest file names. Every file under manifests/ is read, also one whose
        name is not valid (any more): what it names is never removed."""
        used: set[str] = set()
        for path in self.manifests.rglob("*"):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                manifest = mf.decode(path.read_bytes())
            except Exception:  # not a manifest we can read: it protects nothing
                continue
            for digest in manifest.digests():
                with contextlib.suppress(InvalidDigest):
                    used.add(parse_digest(digest))
        return used

    def remove_unused(self, digests: Iterable[str]) -> list[str]:
        """Ollama's RemoveLayers: delete those of `digests` that no manifest uses and nothing pinned.
        Blobs not named here are never touched. Returns the digests removed."""
        wanted = set()
        for digest in digests:
            with contextlib.suppress(InvalidDigest):
                wanted.add(parse_digest(digest))
        if not wanted:
            return []
        with self._lock:
            wanted -= self.used_digests()
            removed = []
            for digest in sorted(wanted):
                if self._pins[digest] > 0:
                    continue
                path = self.blob_path(digest)
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(digest)
            for hook in self.on_removed if removed else ():
                try:
                    hook(removed)
                except Exception:
                    log.exception("after removing %d blob(s)", len(removed))
            return removed

    @contextlib.contextmanager
    def pin(self, digests: Iterable[str] = ()) -> Iterator["_Pins"]:
        """Keep these blobs (and any added to the yielded set) from `remove_unused` until the block
        ends: an operation that is about to reference them in a manifest pins them first."""
        pins = _Pins(self)
        try:
            pins.add(*digests)
            yield pins
        finally:
            pins.release()

    def _pin(self, digest: str, delta: int) -> None:
        with self._lock:
            self._pins[digest] += delta
            if self._pins[digest] <= 0:
                del self._pins[digest]

    def clean_temp(self, max_age: float = TEMP_MAX_AGE) -> list[Path]:
        """Remove temporary files a crashed writer left: in blobs/ those named `TEMP_PREFIXES` (and a
        download sidecar's `.tmp`), in manifests/ `.tmp-*`, when nothing in them changed for
        `max_age` seconds. Unfinished downloads (`*-partial`, their `.json` sidecars) stay."""
        now = time.time()
        removed: list[Path] = []

        def stale(path: Path) -> bool:
            newest = path.lstat().st_mtime
            if path.is_dir() and not path.is_symlink():
                for sub in path.rglob("*"):
                    with contextlib.suppress(OSError):
                        newest = max(newest, sub.lstat().st_mtime)
            return now - newest >= max_age

        candidates = [p for p in self.blobs.iterdir()
                      if p.name.startswith(TEMP_PREFIXES)
                      or (p.name.startswith(".sha256-") and p.name.endswith("-partial.json.tmp"))]
        candidates += [p for p in self.manifests.rglob(".tmp-*")]
        for path in candidates:
            try:
                if not stale(path):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove temporary file %s: %s", path, exc)
                continue
            removed.append(path)
        return removed

    def remove_leftovers(self) -> None:
        """`clean_temp`, logged: what it removed is an info line, a failure a warning (never an error:
        a store whose leftovers cannot go is still served)."""
        try:
            removed = self.clean_temp()
        except OSError as exc:
            log.warning("could not clean temporary files in %s: %s", self.root, exc)
            return
        if removed:
            log.info("removed %d stale temporary file(s) from %s", len(removed), self.root)

    def iter_blob(self, digest: str, start: int = 0) -> Iterator[bytes]:
        with open(self.blob_path(digest), "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                yield chunk


class _Pins:
    """The digests one operation has pinned in a Store (see `Store.pin`)."""

    def __init__(self, store: Store):
        self._store = store
        self._held: list[str] = []

    def add(self, *digests: str) -> None:
        for digest in digests:
            try:
                digest = parse_digest(digest)
            except InvalidDigest:
                continue
            self._store._pin(digest, +1)
            self._held.append(digest)

    def release(self) -> None:
        held, self._held = self._held, []
        for digest in held:
            self._store._pin(digest, -1)
