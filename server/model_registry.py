"""Ollama's registry protocol: pull and push models over HTTP(S).

The protocol is Docker's registry API v2 carrying Ollama's media types:

    GET  /v2/<ns>/<model>/manifests/<tag>        Accept: application/vnd.docker.distribution.manifest.v2+json
    GET  /v2/<ns>/<model>/blobs/<digest>         may redirect (to a CDN); Range for parts and resume
    HEAD /v2/<ns>/<model>/blobs/<digest>         push: skip blobs the registry has
    POST /v2/<ns>/<model>/blobs/uploads/         push: → 202 + Location
    PUT  <Location>?digest=<digest>              push: the blob, in one request
    PUT  /v2/<ns>/<model>/manifests/<tag>        push: the manifest, last

The host is the name's host part, so `registry.ollama.ai/library/llama3.2`, `hf.co/<user>/<repo>:<quant>`
(Hugging Face serves the same API, the tag picking the GGUF quant) and `127.0.0.1:5000/ns/m` all work
the same way; `insecure` switches from https to http.

Store invariants kept here: bytes are downloaded into the store's partial file (`Store.partial_path`,
resumed with Range on the next attempt), a blob becomes visible only after its sha256 is verified
(`Store.commit_partial`), and the manifest is written only when every blob it names exists.

Progress is an async iterator of dicts shaped exactly like Ollama's ProgressResponse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from . import OLLAMA_API_VERSION, __version__
from .store import manifest as mf
from .store.names import ModelName
from .store.store import DigestMismatch, InvalidDigest, Store, parse_digest

PART_THRESHOLD = 64 << 20  # blobs larger than this download as several parallel ranged parts
PARTS = 4
ATTEMPTS = 4  # per part: the first try and three retries, each resuming where the last stopped
MAX_MANIFEST = 16 << 20
SAVE_EVERY = 16 << 20  # persist a download's progress this often (bytes)
PROGRESS_EVERY = 0.2  # seconds between progress objects while bytes flow
CHUNK = 1 << 20


def _user_agent() -> str:
    """Ollama's registry User-Agent, `ollama/<version> (<GOARCH> <GOOS>) Go/<go version>` (server/images.go),
    with the Ollama API version Corral implements and Corral's own product token where Go's would be."""
    import platform
    import sys

    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}.get(machine, machine or "unknown")
    goos = {"win32": "windows", "cygwin": "windows"}.get(sys.platform, sys.platform)
    return f"ollama/{OLLAMA_API_VERSION} ({arch} {goos}) corral/{__version__}"


USER_AGENT = _user_agent()


class RegistryError(Exception):
    """A pull or push that failed; the message is meant for the client (Ollama's wording)."""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


# ---- the partial download's state ---------------------------------------------------------


@dataclass
class Part:
    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size


@dataclass
class Download:
    """One blob being downloaded into the store's partial file, in one or more ranged parts.

    The layout (which byte ranges are done) lives in a hidden sidecar next to the partial file, so a
    later attempt resumes every part where it stopped. A partial file without a sidecar is a
    contiguous prefix (a single-part download), resumed from its size.
    """

    store: Store
    digest: str
    total: int
    parts: list[Part] = field(default_factory=list)

    @property
    def partial(self) -> Path:
        return self.store.partial_path(self.digest)

    @property
    def sidecar(self) -> Path:
        # hidden, and never named by a manifest: no store cleanup touches it
        return self.partial.with_name("." + self.partial.name + ".json")

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    @property
    def done(self) -> bool:
        return all(p.done for p in self.parts)

    @classmethod
    def resume(cls, store: Store, digest: str, total: int, threshold: int, nparts: int) -> "Download":
        d = cls(store, digest, total)
        partial, sidecar = d.partial, d.sidecar
        if sidecar.is_file() and partial.is_file():
            try:
                state = json.loads(sidecar.read_text())
                parts = [Part(int(p["offset"]), int(p["size"]), int(p["completed"])) for p in state["parts"]]
                if state.get("total") == total and sum(p.size for p in parts) == total and all(
                    0 <= p.completed <= p.size for p in parts
                ):
                    d.parts = parts
                    return d
            except (ValueError, KeyError, TypeError, OSError):
                pass
        d.parts = _plan(total, threshold, nparts)
        if partial.is_file():
            size = partial.stat().st_size
            if sidecar.is_file() or len(d.parts) != 1 or size > total:
                partial.unlink()  # a layout we cannot trust: start over
            else:
                d.parts[0].completed = size
        sidecar.unlink(missing_ok=True)
        return d

    def save(self) -> None:
        data = {"total": self.total, "parts": [p.__dict__ for p in self.parts]}
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.sidecar)

    def discard_state(self) -> None:
        self.sidecar.unlink(missing_ok=True)


def _plan(total: int, threshold: int, nparts: int) -> list[Part]:
    if total <= threshold or nparts <= 1:
        return [Part(0, total)]
    size = -(-total // nparts)
    return [Part(off, min(size, total - off)) for off in range(0, total, size)]


# One lock per blob being fetched into a store: two pulls sharing a blob never write the same
# partial file at once (the second waits, then finds the blob or a finished partial).
_locks: "weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock]" = weakref.WeakValueDictionary()


def _lock(store: Store, digest: str) -> asyncio.Lock:
    key = (str(store.blobs.resolve()), digest)
    lock = _locks.get(key)
    if lock is None:
        lock = asyncio.Lock()
        _locks[key] = lock
    return lock


class _Retry(Exception):
    """A part stopped early; try again from where it got to."""


# ---- the client ---------------------------------------------------------------------------


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class _Session:
    """An httpx client plus the bearer token a registry handed out (anonymous token flow)."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        self.token: str | None = None

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = dict(extra or {})
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    async def authenticate(self, challenge: str) -> bool:
        """Docker's token flow: `WWW-Authenticate: Bearer realm=…,service=…,scope=…` → GET realm."""
        if not challenge.lower().startswith("bearer"):
            return False
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        try:
            resp = await self.client.get(realm, params={k: v for k, v in params.items() if k in ("service", "scope")})
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
        try:
            body = resp.json()
        except ValueError:
            return False
        token = body.get("token") or body.get("access_token")
        if not token:
            return False
        self.token = token
        return True


class Registry:
    def __init__(self, *, part_threshold: int | None = None, parts: int | None = None, attempts: int | None = None,
                 backoff: float = 0.25, timeout: float = 60.0):
        self.part_threshold = part_threshold if part_threshold is not None else _int_env(
            "CORRAL_PULL_PART_THRESHOLD", PART_THRESHOLD)
        self.parts = max(1, parts if parts is not None else _int_env("CORRAL_PULL_PARTS", PARTS))
        self.attempts = max(1, attempts if attempts is not None else _int_env("CORRAL_PULL_ATTEMPTS", ATTEMPTS))
        self.backoff = backoff
        self.timeout = timeout

    # ---- plumbing --------------------------------------------------------------------------

    @staticmethod
    def base_url(name: ModelName, insecure: bool) -> str:
        return f"{'http' if insecure else 'https'}://{name.host}"

    def _repo_url(self, name: ModelName, insecure: bool) -> str:
        return f"{self.base_url(name, insecure)}/v2/{name.namespace}/{name.model}"

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[_Session]:
        timeout = httpx.Timeout(self.timeout, connect=min(30.0, self.timeout))
        async with httpx.AsyncClient(follow_redirects=True, timeout=timeout,
                                     headers={"User-Agent": USER_AGENT}) as client:
            yield _Session(client)

    async def _send(self, session: _Session, method: str, url: str, *, headers: dict[str, str] | None = None,
                    stream: bool = False, **kwargs) -> httpx.Response:
        """One request, answering a bearer challenge once. The caller closes a streamed response."""
        resp = None
        for attempt in range(2):
            req = session.client.build_request(method, url, headers=session.headers(headers), **kwargs)
            try:
                resp = await session.client.send(req, stream=stream)
            except httpx.HTTPError as exc:
                raise RegistryError(_transport_message(method, url, exc)) from exc
            # a streamed request body cannot be sent twice: by then HEAD/POST have fetched the token
            if resp.status_code == 401 and attempt == 0 and not isinstance(kwargs.get("content"), AsyncIterator):
                if await session.authenticate(resp.headers.get("www-authenticate", "")):
                    await resp.aclose()
                    continue
            return resp
        return resp

    # ---- pull ------------------------------------------------------------------------------

    async def pull(self, store: Store, name: str | ModelName, *, insecure: bool = False) -> AsyncIterator[dict]:
        """Download a model's manifest and blobs into `store`, yielding Ollama's progress objects.

        As Ollama's PullModel: an `http://` name needs `insecure`; once the new manifest is written,
        the layers of the one it replaced that no manifest uses any more are removed ("removing unused
        layers"), unless OLLAMA_NOPRUNE is set."""
        mname = name if isinstance(name, ModelName) else ModelName.parse(name)
        if mname.scheme == "http" and not insecure:
            raise RegistryError("insecure protocol http")
        yield {"status": "pulling manifest"}
        with store.pin() as pins:
            async with self._session() as session:
                try:
                    raw, manifest = await self._manifest(session, mname, insecure)
                except RegistryError as exc:
                    raise RegistryError(f"pull model manifest: {exc}") from exc
                layers = list(manifest.layers) + ([manifest.config] if manifest.config is not None else [])
                # a concurrent delete must not take a blob this pull finds present and counts on
                pins.add(*(layer.digest for layer in layers))
                seen: set[str] = set()
                fetched: list[str] = []
                for layer in layers:
                    digest = layer.digest
                    if digest in seen:
                        continue
                    seen.add(digest)
                    async for progress in self._download(session, store, mname, insecure, layer, fetched):
                        yield progress
            yield {"status": "verifying sha256 digest"}
            for digest in fetched:
                async with _lock(store, digest):
                    if store.has_blob(digest):
                        continue
                    try:
                        await asyncio.to_thread(store.commit_partial, digest)
                    except DigestMismatch as exc:
                        raise RegistryError(str(exc)) from exc
                    finally:
                        Download(store, digest, 0).discard_state()
            yield {"status": "writing manifest"}
            old = store.find(mname)
            store.write_manifest(mname, manifest, raw=raw)
        stale = set(old.manifest.digests()) - set(manifest.digests()) if old is not None else set()
        if stale and not store.noprune():
            yield {"status": "removing unused layers"}
            await asyncio.to_thread(store.remove_unused, stale)
        yield {"status": "success"}

    async def _manifest(self, session: _Session, name: ModelName, insecure: bool) -> tuple[bytes, mf.Manifest]:
        url = f"{self._repo_url(name, insecure)}/manifests/{name.tag}"
        resp = await self._send(session, "GET", url, headers={"Accept": mf.MANIFEST_MEDIA_TYPE}, stream=True)
        try:
            await _raise_for_status(resp)
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST:
                    raise RegistryError("manifest too large")
        except httpx.HTTPError as exc:
            raise RegistryError(_transport_message("GET", url, exc)) from exc
        finally:
            await resp.aclose()
        raw = bytes(body)
        try:
            manifest = mf.decode(raw)
        except msgspec.DecodeError as exc:
            raise RegistryError(f"invalid manifest: {exc}") from exc
        try:
            for layer in manifest.layers + ([manifest.config] if manifest.config else []):
                layer.digest = parse_digest(layer.digest)
                if layer.size < 0:
                    raise RegistryError(f"invalid manifest: negative size for {layer.digest}")
        except InvalidDigest as exc:
            raise RegistryError(f"invalid manifest: {exc}") from exc
        return raw, manifest

    async def _download(self, session: _Session, store: Store, name: ModelName, insecure: bool, layer: mf.Layer,
                        fetched: list[str]) -> AsyncIterator[dict]:
        digest = layer.digest
        status = f"pulling {digest[7:19]}"

        def progress(total: int, completed: int) -> dict:
            return {"status": status, "digest": digest, "total": total, "completed": completed}

        if store.has_blob(digest):
            size = store.blob_path(digest).stat().st_size
            yield progress(size, size)
            return
        async with _lock(store, digest):
            if store.has_blob(digest):
                size = store.blob_path(digest).stat().st_size
                yield progress(size, size)
                return
            dl = Download.resume(store, digest, layer.size, self.part_threshold, self.parts)
            yield progress(dl.total, dl.completed)
            if not dl.done:
                url = f"{self._repo_url(name, insecure)}/blobs/{digest}"
                task = asyncio.ensure_future(self._fetch(session, url, dl))
                try:
                    last = -1
                    while not task.done():
                        await asyncio.wait({task}, timeout=PROGRESS_EVERY)
                        if not task.done() and dl.completed != last:
                            last = dl.completed
                            yield progress(dl.total, last)
                    task.result()
                finally:
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
            else:
                dl.partial.touch()
            fetched.append(digest)
            yield progress(dl.total, dl.total)

    async def _fetch(self, session: _Session, url: str, dl: Download) -> None:
        fd = os.open(dl.partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if len(dl.parts) > 1:
                dl.save()
            try:
                async with asyncio.TaskGroup() as group:
                    for part in dl.parts:
                        if not part.done:
                            group.create_task(self._fetch_part(session, url, fd, dl, part))
            except BaseExceptionGroup as group_exc:
                first = group_exc.exceptions[0]
                raise first from None
        finally:
            os.close(fd)
            if len(dl.parts) > 1:
                dl.save()

    async def _fetch_part(self, session: _Session, url: str, fd: int, dl: Download, part: Part) -> None:
        error: Exception | None = None
        for attempt in range(self.attempts):
            if part.done:
                return
            if attempt:
                await asyncio.sleep(self.backoff * (2 ** (attempt - 1)))
            start, end = part.offset + part.completed, part.offset + part.size - 1
            try:
                resp = await self._send(session, "GET", url, stream=True,
                                        headers={"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"})
            except RegistryError as exc:
                error = exc
                continue
            try:
                if resp.status_code == 404:
                    raise RegistryError(f"blob {dl.digest}: file does not exist")
                await _raise_for_status(resp)
                if resp.status_code == 200 and start > 0:
                    # the registry ignored Range: only a whole single-part download can use this
                    if len(dl.parts) != 1:
                        raise RegistryError("registry does not support ranged downloads")
                    part.completed = 0
                saved = part.completed
                async for chunk in resp.aiter_raw():
                    room = part.size - part.completed
                    if room <= 0:
                        break
                    chunk = chunk[:room]
                    os.pwrite(fd, chunk, part.offset + part.completed)
                    part.completed += len(chunk)
                    if len(dl.parts) > 1 and part.completed - saved >= SAVE_EVERY:
                        saved = part.completed
                        dl.save()
                if not part.done:
                    raise _Retry(f"connection closed after {part.completed} of {part.size} bytes")
                return
            except RegistryError:
                raise
            except (httpx.HTTPError, _Retry, OSError) as exc:
                error = exc
            finally:
                await resp.aclose()
        raise RegistryError(f"max retries exceeded: {error}")

    # ---- push ------------------------------------------------------------------------------

    async def push(self, store: Store, name: str | ModelName, *, insecure: bool = False) -> AsyncIterator[dict]:
        """Upload a local model's blobs (skipping those the registry has) and then its manifest."""
        mname = name if isinstance(name, ModelName) else ModelName.parse(name)
        entry = store.get(mname)  # ModelNotFound before anything is streamed
        yield {"status": "retrieving manifest"}
        if mname.scheme == "http" and not insecure:
            raise RegistryError("insecure protocol http")
        raw = entry.path.read_bytes()
        manifest = entry.manifest
        if not _has_header(raw):
            # written by an older Corral without schemaVersion/mediaType: registries refuse that
            raw = mf.encode(manifest)
        layers = list(manifest.layers) + ([manifest.config] if manifest.config is not None else [])
        async with self._session() as session:
            seen: set[str] = set()
            for layer in layers:
                if layer.digest in seen:
                    continue
                seen.add(layer.digest)
                async for progress in self._upload(session, store, mname, insecure, layer.digest):
                    yield progress
            yield {"status": "pushing manifest"}
            url = f"{self._repo_url(mname, insecure)}/manifests/{mname.tag}"
            resp = await self._send(session, "PUT", url, content=raw,
                                    headers={"Content-Type": manifest.mediaType or mf.MANIFEST_MEDIA_TYPE})
            await _raise_for_status(resp)
        yield {"status": "success"}

    async def _upload(self, session: _Session, store: Store, name: ModelName, insecure: bool,
                      digest: str) -> AsyncIterator[dict]:
        digest = parse_digest(digest)
        path = store.blob_path(digest)
        total = path.stat().st_size
        status = f"pushing {digest[7:19]}"

        def progress(completed: int) -> dict:
            return {"status": status, "digest": digest, "total": total, "completed": completed}

        repo = self._repo_url(name, insecure)
        head = await self._send(session, "HEAD", f"{repo}/blobs/{digest}")
        if head.status_code == 200:
            yield progress(total)
            return
        start = await self._send(session, "POST", f"{repo}/blobs/uploads/")
        await _raise_for_status(start)
        location = start.headers.get("location")
        if not location:
            raise RegistryError("registry did not return an upload location")
        target = start.url.join(location)
        target = target.copy_merge_params({"digest": digest})
        sent = [0]

        async def body() -> AsyncIterator[bytes]:
            with open(path, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    sent[0] += len(chunk)
                    yield chunk

        yield progress(0)
        task = asyncio.ensure_future(self._send(
            session, "PUT", str(target), content=body(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)}))
        try:
            last = -1
            while not task.done():
                await asyncio.wait({task}, timeout=PROGRESS_EVERY)
                if not task.done() and sent[0] != last:
                    last = sent[0]
                    yield progress(last)
            resp = task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await _raise_for_status(resp)
        yield progress(total)


def _has_header(raw: bytes) -> bool:
    """The manifest JSON carries `schemaVersion` and `mediaType`."""
    try:
        data = json.loads(raw)
    except ValueError:
        return True  # not ours to fix: send it as it is
    return not isinstance(data, dict) or ("schemaVersion" in data and "mediaType" in data)


async def _raise_for_status(resp: httpx.Response) -> None:
    """Ollama's wording: 404 → "file does not exist", other failures "<code>: <body>"."""
    if resp.status_code < 400:
        return
    if resp.status_code == 404:
        raise RegistryError("file does not exist")
    try:
        body = (await resp.aread())[:2048].decode("utf-8", errors="replace").strip()
    except httpx.HTTPError:
        body = ""
    if resp.status_code == 401:
        raise RegistryError(f"unauthorized: {body}" if body else "unauthorized")
    raise RegistryError(f"{resp.status_code}: {body}")


def _transport_message(method: str, url: str, exc: Exception) -> str:
    detail = str(exc) or exc.__class__.__name__
    return f'{method.title()} "{url}": {detail}'


async def collect(progress: AsyncIterator[dict]) -> list[dict]:
    """Run a pull or push to the end (for in-process callers and tests)."""
    return [p async for p in progress]

