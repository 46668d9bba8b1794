"""A small real registry speaking Ollama's (Docker v2) protocol, for pull/push tests on loopback.

    reg = RegistryServer(tmp_path / "registry").start()
    reg.publish(Store(models), "tiny", "library/tiny:latest")   # serve a local model
    ... pull f"{reg.host}/library/tiny" with insecure=True ...
    reg.stop()

Backed by a directory (`blobs/sha256-<hex>`, `manifests/<ns>/<model>/<tag>`). Blob GETs redirect to
`/files/<digest>` (like Ollama's registry sending clients to a CDN), which honours Range. Uploads:
POST …/blobs/uploads/ → Location, PATCH appends, PUT ?digest= finishes (with or without a body).
A manifest PUT is checked as registry:2 checks it (schemaVersion 2, mediaType, blobs present).

Fault switches:
    reg.drop[digest] = (times, after_bytes)  drop the connection after `after_bytes` of a GET, `times` times
    reg.corrupt.add(digest)                  serve the blob with one byte flipped
    reg.hidden.add("ns/model:tag")           answer 404 for that manifest
Every request is recorded in `reg.log` (method, path, range header, status, body bytes sent,
User-Agent).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

_MANIFEST = re.compile(r"^/v2/([^/]+)/([^/]+)/manifests/([^/]+)$")
_BLOB = re.compile(r"^/v2/([^/]+)/([^/]+)/blobs/(sha256:[0-9a-f]{64})$")
_UPLOADS = re.compile(r"^/v2/([^/]+)/([^/]+)/blobs/uploads/([^/]*)$")
_FILE = re.compile(r"^/files/(sha256:[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class LogEntry:
    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0
    user_agent: str | None = None


class RegistryServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.uploads = self.root / "uploads"
        for d in (self.blobs, self.manifests, self.uploads):
            d.mkdir(parents=True, exist_ok=True)
        self.log: list[LogEntry] = []
        self.drop: dict[str, tuple[int, int]] = {}
        self.corrupt: set[str] = set()
        self.hidden: set[str] = set()
        self.redirect = True
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> "RegistryServer":
        registry = self

        class Handler(_Handler):
            reg = registry

        self._httpd = _CountingServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every connection a client opened so far has been handled and logged.

        A client that gives up (a cancelled pull) may leave a connection in the accept queue whose
        request is logged later. One more request queues behind it; once that is answered every
        earlier connection has been accepted, and the count of handlers still running falls to 0."""
        assert self._httpd is not None
        with socket.create_connection(self._httpd.server_address, timeout=timeout) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.0\r\n\r\n")
            while sock.recv(65536):
                pass
        self._httpd.idle.wait_for(timeout)

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`: the host part of model names served here."""
        assert self._httpd is not None
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    # ---- content ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    def manifest_path(self, repo: str) -> Path:
        """`ns/model:tag` → its manifest file."""
        path, _, tag = repo.partition(":")
        ns, model = path.split("/")
        return self.manifests / ns / model / (tag or "latest")

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).write_bytes(data)
        return digest

    def add_manifest(self, repo: str, data: bytes) -> None:
        path = self.manifest_path(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def publish(self, store, name: str, repo: str) -> bytes:
        """Serve the local model `name` of a server.store.store.Store as `repo` (`ns/model:tag`)."""
        entry = store.get(name)
        for digest in entry.manifest.digests():
            dst = self.blob_path(digest)
            if not dst.exists():
                shutil.copyfile(store.blob_path(digest), dst)
        raw = entry.path.read_bytes()
        self.add_manifest(repo, raw)
        return raw

    def check_manifest(self, body: bytes, content_type: str) -> tuple[str, str] | None:
        """What distribution's registry:2 checks on a schema 2 manifest PUT: `schemaVersion` 2, a
        `mediaType` matching the Content-Type, and every blob it names already uploaded."""
        try:
            data = json.loads(body)
        except ValueError:
            return "MANIFEST_INVALID", "manifest invalid"
        if not isinstance(data, dict) or data.get("schemaVersion") != 2:
            return "MANIFEST_INVALID", "unexpected manifest schema version"
        if data.get("mediaType") != MANIFEST_TYPE or content_type.split(";")[0].strip() != MANIFEST_TYPE:
            got = data.get("mediaType")
            return "MANIFEST_INVALID", f"mediaType in manifest should be '{MANIFEST_TYPE}' not '{got}'"
        for layer in [data.get("config") or {}] + list(data.get("layers") or []):
            if not self.blob_path(str(layer.get("digest", ""))).is_file():
                return "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry"
        return None

    def requests(self, method: str | None = None, contains: str = "") -> list[LogEntry]:
        return [e for e in self.log if (method is None or e.method == method) and contains in e.path]


class _Running:
    """A count of request handlers still running, and a wait for it to fall to 0."""

    def __init__(self):
        self._n = 0
        self._cond = threading.Condition()

    def add(self, n: int) -> None:
        with self._cond:
            self._n += n
            self._cond.notify_all()

    def wait_for(self, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._n == 0, timeout):
                raise TimeoutError(f"{self._n} registry requests still running after {timeout} s")


class _CountingServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that counts its running handlers (counted at accept, in the serving thread)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle = _Running()

    def process_request(self, request, client_address):
        self.idle.add(1)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.idle.add(-1)


class _Handler(BaseHTTPRequestHandler):
    reg: RegistryServer
    protocol_version = "HTTP/1.0"  # one request per connection: a dropped blob can't poison the next

    def log_message(self, format, *args):  # quiet
        pass

    # ---- helpers ---------------------------------------------------------------------------

    def _entry(self) -> LogEntry:
        entry = LogEntry(self.command, urlsplit(self.path).path, self.headers.get("Range"),
                         user_agent=self.headers.get("User-Agent"))
        self.reg.log.append(entry)
        return entry

    def _send(self, entry: LogEntry, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        entry.status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)) if not head else (headers or {}).get("X-Length", "0"))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
            entry.sent = len(body)

    def _not_found(self, entry: LogEntry, code: str) -> None:
        body = ('{"errors":[{"code":"%s","message":"%s"}]}' % (code, code.lower().replace("_", " "))).encode()
        self._send(entry, 404, body, {"Content-Type": "application/json"})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        chunks, left = [], length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    # ---- verbs -----------------------------------------------------------------------------

    def do_HEAD(self):
        self._get(head=True)

    def do_GET(self):
        self._get(head=False)

    def _get(self, head: bool) -> None:
        entry = self._entry()
        path = entry.path
        if m := _MANIFEST.match(path):
            ns, model, tag = m.groups()
            repo = f"{ns}/{model}:{tag}"
            file = self.reg.manifests / ns / model / tag
            if repo in self.reg.hidden or not file.is_file():
                return self._not_found(entry, "MANIFEST_UNKNOWN")
            body = file.read_bytes()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            return self._send(entry, 200, body, {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": digest})
        if m := _BLOB.match(path):
            digest = m.group(3)
            file = self.reg.blob_path(digest)
            if not file.is_file():
                return self._not_found(entry, "BLOB_UNKNOWN")
            if head:
                return self._send(entry, 200, headers={"X-Length": str(file.stat().st_size)}, head=True)
            if self.reg.redirect:
                return self._send(entry, 307, headers={"Location": f"/files/{digest}"})
            return self._serve_blob(entry, digest)
        if m := _FILE.match(path):
            return self._serve_blob(entry, m.group(1))
        self._send(entry, 404, b"404 page not found")

    def _serve_blob(self, entry: LogEntry, digest: str) -> None:
        file = self.reg.blob_path(digest)
        if not file.is_file():
            return self._not_found(entry, "BLOB_UNKNOWN")
        data = file.read_bytes()
        if digest in self.reg.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        total = len(data)
        start, end, status = 0, total - 1, 200
        header = self.headers.get("Range")
        if header and (m := _RANGE.match(header.strip())):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else total - 1, total - 1)
            status = 206
            if start > end and total:
                return self._send(entry, 416, b"", {"Content-Range": f"bytes */{total}"})
        body = data[start:end + 1]
        entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        times, after = self.reg.drop.get(digest, (0, 0))
        if times > 0 and len(body) > after:
            self.reg.drop[digest] = (times - 1, after)
            self.wfile.write(body[:after])
            self.wfile.flush()
            entry.sent = after
            # end the response early: the client sees a body shorter than its Content-Length
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True
            return
        self.wfile.write(body)
        entry.sent = len(body)

    def do_POST(self):
        entry = self._entry()
        if m := _UPLOADS.match(entry.path):
            ns, model, _ = m.groups()
            self._read_body()
            upload = uuid.uuid4().hex
            (self.reg.uploads / upload).write_bytes(b"")
            return self._send(entry, 202, headers={"Location": f"/v2/{ns}/{model}/blobs/uploads/{upload}",
                                                    "Docker-Upload-UUID": upload, "Range": "0-0"})
        self._send(entry, 404, b"404 page not found")

    def do_PATCH(self):
        entry = self._entry()
        if (m := _UPLOADS.match(entry.path)) and m.group(3) and (self.reg.uploads / m.group(3)).is_file():
            file = self.reg.uploads / m.group(3)
            with open(file, "ab") as f:
                f.write(self._read_body())
            size = file.stat().st_size
            return self._send(entry, 202, headers={"Location": entry.path, "Range": f"0-{max(0, size - 1)}"})
        self._send(entry, 404, b"404 page not found")

    def do_PUT(self):
        entry = self._entry()
        url = urlsplit(self.path)
        if (m := _UPLOADS.match(entry.path)) and m.group(3) and (self.reg.uploads / m.group(3)).is_file():
            file = self.reg.uploads / m.group(3)
            with open(file, "ab") as f:
                f.write(self._read_body())
            digest = (parse_qs(url.query).get("digest") or [""])[0]
            actual = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
            if digest != actual:
                file.unlink()
                return self._send(entry, 400, b'{"errors":[{"code":"DIGEST_INVALID","message":"digest invalid"}]}',
                                  {"Content-Type": "application/json"})
            os.replace(file, self.reg.blob_path(digest))
            ns, model, _ = m.groups()
            return self._send(entry, 201, headers={"Location": f"/v2/{ns}/{model}/blobs/{digest}",
                                                    "Docker-Content-Digest": digest})
        if m := _MANIFEST.match(entry.path):
            ns, model, tag = m.groups()
            body = self._read_body()
            problem = self.reg.check_manifest(body, self.headers.get("Content-Type", ""))
            if problem:
                code, message = problem
                return self._send(entry, 400, json.dumps({"errors": [{"code": code, "message": message}]}).encode(),
                                  {"Content-Type": "application/json"})
            self.reg.add_manifest(f"{ns}/{model}:{tag}", body)
            return self._send(entry, 201, headers={"Docker-Content-Digest":
                                                    "sha256:" + hashlib.sha256(body).hexdigest()})
        self._send(entry, 404, b"404 page not found")
