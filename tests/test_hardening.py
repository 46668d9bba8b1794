"""Issue 21, hardening: /api/create reads no file of the server's unless the operator allows its
directory (CORRAL_ALLOW_LOCAL_PATHS), `corral create` uploads instead, and a killed server leaves
nothing behind in the store. Against real `corral serve` processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from server.cli import remove_store_leftovers
from server.local_paths import not_a_modelfile, refused, unreadable
from server.store.store import TEMP_MAX_AGE, Store
from tests.conftest import ROOT, start_server


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_files(models: Path) -> set[str]:
    return {str(p.relative_to(models)) for p in models.rglob("*") if p.is_file() and not p.name.endswith(".log")}


def model_names(url: str) -> set[str]:
    return {m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]}


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    """A server with no CORRAL_ALLOW_LOCAL_PATHS (the default): no server-side path is read."""
    models = tmp_path_factory.mktemp("closed") / "models"
    Store(models)
    srv = start_server(models, {"CORRAL_ALLOW_LOCAL_PATHS": ""})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, model_files):
    """`allowed/` (what the open server may read) and `outside/`, each with a copy of the tiny GGUF
    and a Modelfile using it; links in allowed/ that lead outside."""
    root = tmp_path_factory.mktemp("paths")
    allowed, outside = root / "allowed", root / "outside"
    for d in (allowed, outside):
        d.mkdir()
        os.link(model_files["tiny"], d / "tiny.gguf")
        (d / "Modelfile").write_text("FROM ./tiny.gguf\nSYSTEM from a file on the server\n")
    (allowed / "escape-Modelfile").symlink_to(outside / "Modelfile")
    (allowed / "escape.gguf").symlink_to(outside / "tiny.gguf")
    return allowed, outside


@pytest.fixture(scope="module")
def opened(tmp_path_factory, dirs):
    models = tmp_path_factory.mktemp("opened") / "models"
    Store(models)
    srv = start_server(models, {"CORRAL_ALLOW_LOCAL_PATHS": f"relative/ignored::{dirs[0]}"})
    yield srv
    srv.stop()


# ---- no file read through the API --------------------------------------------------------------


def test_server_paths_are_refused_alike_whatever_is_there(closed, model_files):
    """/proc/self/environ and /etc/shadow (readable to a root server), a missing file and a real GGUF:
    one 400, naming only what the client sent; nothing is read, imported or written."""
    tiny = str(model_files["tiny"])
    cases = [
        ("/proc/self/environ", {"path": "/proc/self/environ"}),
        ("/etc/shadow", {"path": "/etc/shadow"}),
        ("/no/such/Modelfile", {"path": "/no/such/Modelfile"}),
        ("Modelfile", {"path": "Modelfile"}),  # relative to the server's working directory
        (tiny, {"from": tiny}),
        ("/no/such/model.gguf", {"from": "/no/such/model.gguf"}),
        ("./tiny.gguf", {"from": "./tiny.gguf"}),
        ("../../../etc/passwd", {"from": "../../../etc/passwd"}),
        ("~/.bashrc", {"from": "~/.bashrc"}),
        (tiny, {"modelfile": f"FROM {tiny}\n"}),
        ("/etc/hostname", {"from": "tiny", "adapters": {"lora.gguf": "/etc/hostname"}}),
        ("/etc/hostname", {"modelfile": "FROM tiny\nADAPTER /etc/hostname\n"}),
        # the legacy path beside the text is no base for relative paths unless it is allowed
        ("../outside/tiny.gguf", {"modelfile": "FROM ../outside/tiny.gguf\n", "path": "/srv/Modelfile"}),
    ]
    secrets = ["OLLAMA_MODELS", str(closed.models), "root:"]  # /proc/self/environ's, /etc/shadow's
    before = store_files(closed.models)
    shapes = set()
    for ref, body in cases:
        r = httpx.post(f"{closed.url}/api/create", json={"model": "leak", **body})
        assert r.status_code == 400, (body, r.text)
        assert r.json() == {"error": refused(ref)}, body
        shapes.add(r.json()["error"].replace(ref, "<ref>"))
        for secret in secrets:
            assert secret not in r.text, (body, secret)
    assert len(shapes) == 1 and "upload the file as a blob" in shapes.pop()
    assert store_files(closed.models) == before
    assert "leak:latest" not in model_names(closed.url)


def test_a_modelfile_in_an_allowed_dir_is_read(opened, dirs):
    allowed, _ = dirs
    r = httpx.post(f"{opened.url}/api/create", json={"model": "from-path", "path": str(allowed / "Modelfile"),
                                                     "stream": False}, timeout=120)
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    show = httpx.post(f"{opened.url}/api/show", json={"model": "from-path"}).json()
    assert show["system"] == "from a file on the server"
    # an absolute `from`, and a relative FROM in text sent with an allowed path
    r = httpx.post(f"{opened.url}/api/create", json={"model": "from-abs", "from": str(allowed / "tiny.gguf"),
                                                     "stream": False}, timeout=120)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{opened.url}/api/create", json={"model": "from-text", "modelfile": "FROM tiny.gguf\n",
                                                     "path": str(allowed / "Modelfile"), "stream": False}, timeout=120)
    assert r.status_code == 200, r.text
    assert {"from-path:latest", "from-abs:latest", "from-text:latest"} <= model_names(opened.url)


def test_paths_leading_out_of_the_allowed_dir_are_refused(opened, dirs):
    allowed, outside = dirs
    (allowed / "Modelfile-up").write_text("FROM ../outside/tiny.gguf\n")
    (allowed / "Modelfile-link").write_text("FROM escape.gguf\n")  # a plain name, a link leading outside
    cases = [
        (str(outside / "Modelfile"), {"path": str(outside / "Modelfile")}),
        (str(allowed / "escape-Modelfile"), {"path": str(allowed / "escape-Modelfile")}),
        (f"{allowed}/../outside/Modelfile", {"path": f"{allowed}/../outside/Modelfile"}),
        (str(outside / "tiny.gguf"), {"from": str(outside / "tiny.gguf")}),
        (str(allowed / "escape.gguf"), {"from": str(allowed / "escape.gguf")}),
        ("../outside/tiny.gguf", {"path": str(allowed / "Modelfile-up")}),
        ("escape.gguf", {"path": str(allowed / "Modelfile-link")}),
        ("/etc/passwd", {"from": "tiny", "adapters": {"lora.gguf": "/etc/passwd"}}),
    ]
    before = store_files(opened.models)
    for ref, body in cases:
        r = httpx.post(f"{opened.url}/api/create", json={"model": "escaped", **body})
        assert (r.status_code, r.json()) == (400, {"error": refused(ref)}), body
    assert store_files(opened.models) == before
    assert "escaped:latest" not in model_names(opened.url)


def test_allowed_files_are_never_quoted(opened, dirs):
    """A file that is not a Modelfile says so, without a word of it; a missing file and one that
    cannot be read (a directory, a FIFO, a file without read permission) get one message."""
    allowed, _ = dirs
    (allowed / "env").write_text("SECRET_TOKEN=hunter2\n")
    (allowed / "almost").write_text("FROM tiny\nSYSTEM fine\nhunter2 is the password\n")
    (allowed / "binary").write_bytes(b"\xff\xfehunter2\x00")
    for name in ("env", "almost", "binary"):
        ref = str(allowed / name)
        r = httpx.post(f"{opened.url}/api/create", json={"model": "quoted", "path": ref})
        assert (r.status_code, r.json()) == (400, {"error": not_a_modelfile(ref)}), name
        assert "hunter2" not in r.text and "SECRET" not in r.text

    (allowed / "a-dir").mkdir(exist_ok=True)
    if not (allowed / "fifo").exists():
        os.mkfifo(allowed / "fifo")
    unreadable_names = ["missing", "a-dir", "fifo"]
    if os.geteuid() != 0:  # root reads a file whatever its mode
        (allowed / "private").write_text("FROM tiny\n")
        (allowed / "private").chmod(0)
        unreadable_names.append("private")
    for name in unreadable_names:
        ref = str(allowed / name)
        for body in ({"path": ref}, {"from": ref}):
            r = httpx.post(f"{opened.url}/api/create", json={"model": "quoted", **body}, timeout=30)
            assert (r.status_code, r.json()) == (400, {"error": unreadable(ref)}), (name, body)
    assert "quoted:latest" not in model_names(opened.url)


# ---- `corral create` uploads ---------------------------------------------------------------------


def corral_create(server, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OLLAMA_HOST=server.host)
    return subprocess.run([sys.executable, "-m", "server", "create", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_corral_create_uploads_what_the_server_may_not_read(closed, tmp_path, model_files):
    os.link(model_files["tiny"], tmp_path / "x.gguf")
    (tmp_path / "weights").mkdir()
    os.link(model_files["tiny"], tmp_path / "weights" / "model.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./x.gguf\nSYSTEM uploaded\n")
    (tmp_path / "Dirfile").write_text("FROM weights\n")
    (tmp_path / "Missing").write_text("FROM ./nope.gguf\n")

    proc = corral_create(closed, "uploaded", "-f", str(tmp_path / "Modelfile"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    digest = sha(model_files["tiny"].read_bytes())
    assert f"copying file {digest} 100%" in lines and lines[-1] == "success"
    assert httpx.post(f"{closed.url}/api/show", json={"model": "uploaded"}).json()["system"] == "uploaded"
    assert (closed.models / "blobs" / digest.replace(":", "-")).is_file()

    # a directory: its GGUF files (the blob is there already: HEAD finds it, nothing is sent again)
    proc = corral_create(closed, "from-dir", "-f", str(tmp_path / "Dirfile"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from-dir:latest" in model_names(closed.url)

    proc = corral_create(closed, "missing", "-f", str(tmp_path / "Missing"))
    assert proc.returncode == 1 and "./nope.gguf: no such file" in proc.stderr


# ---- nothing left behind by a crash --------------------------------------------------------------


def plant(path: Path, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def slow_body(chunks: int, pause: float, started: threading.Event):
    for i in range(chunks):
        yield os.urandom(64 * 1024)
        started.set()
        time.sleep(pause)


def test_a_killed_upload_and_create_leave_nothing_after_a_restart(fresh_store):
    models = fresh_store
    srv = start_server(models)
    started = threading.Event()
    body = slow_body(1000, 0.05, started)

    def upload():
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.post(f"{srv.url}/api/blobs/{sha(b'never finished')}", content=body, timeout=30)

    t = threading.Thread(target=upload)
    t.start()
    try:
        assert started.wait(10)
        deadline = time.time() + 10
        while not list((models / "blobs").glob(".upload-*")) and time.time() < deadline:
            time.sleep(0.05)
        uploads = list((models / "blobs").glob(".upload-*"))
        assert uploads, "the upload's temporary file"
    finally:
        srv.proc.kill()  # kill -9: no cleanup of any kind
        srv.proc.wait()
        t.join()
    assert all(p.exists() for p in uploads)
    # what a killed create leaves, and what a kill long ago left (as old as the upload's, below)
    stale = uploads + [
        plant(models / "blobs" / ".tmp-create", 0),
        plant(models / "manifests" / "registry.ollama.ai" / "library" / "killed" / ".tmp-1234", 0),
        plant(models / "blobs" / ".quantize-99.gguf", 0),
    ]
    for path in stale:
        os.utime(path, (time.time() - 2 * TEMP_MAX_AGE,) * 2)
    fresh = plant(models / "blobs" / ".upload-live", 0)  # as a second server's live upload would be

    srv = start_server(models)
    try:
        for path in stale:
            assert not path.exists(), path
        assert fresh.exists()
        assert httpx.post(f"{srv.url}/api/show", json={"model": "tiny"}).status_code == 200
    finally:
        srv.stop()


def test_a_second_server_leaves_the_first_ones_upload_alone(fresh_store):
    models = fresh_store
    first = start_server(models)
    data = [os.urandom(64 * 1024) for _ in range(20)]
    digest = sha(b"".join(data))
    started, second_up = threading.Event(), threading.Event()
    result = {}

    def body():
        for i, chunk in enumerate(data):
            yield chunk
            if i == 4:  # a fifth of it sent: the rest once the second server has started
                started.set()
                second_up.wait(60)

    def upload():
        result["status"] = httpx.post(f"{first.url}/api/blobs/{digest}", content=body(), timeout=90).status_code

    t = threading.Thread(target=upload)
    t.start()
    second = None
    try:
        assert started.wait(10)
        deadline = time.time() + 10
        while not list((models / "blobs").glob(".upload-*")) and time.time() < deadline:
            time.sleep(0.05)
        assert list((models / "blobs").glob(".upload-*")), "the first server's upload in progress"
        second = start_server(models)  # it has cleaned the store once it answers
        second_up.set()
        t.join(60)
        assert result.get("status") == 201
        assert (models / "blobs" / digest.replace(":", "-")).is_file()
        assert not list((models / "blobs").glob(".upload-*"))
    finally:
        second_up.set()
        t.join(60)
        first.stop()
        if second is not None:
            second.stop()


def test_leftovers_too_fresh_at_start_go_one_pass_later(tmp_path):
    """A restart right after a crash: the leftovers are younger than TEMP_MAX_AGE at start; the
    second pass, TEMP_MAX_AGE after start, finds them old enough."""
    models = tmp_path / "models"
    Store(models)
    leftover = plant(models / "blobs" / ".upload-crashed", TEMP_MAX_AGE - 1.5)
    later = remove_store_leftovers(models)
    try:
        assert leftover.exists()
        assert later.daemon and later.interval >= TEMP_MAX_AGE
        time.sleep(2)
        later.function(*later.args, **later.kwargs)  # what the timer runs when its time comes
        assert not leftover.exists()
    finally:
        later.cancel()
