"""Shared fixtures: real model files and a real `corral serve` process on a free port.

`corral_server` is one server for the whole session, with a store holding the real
gemma3:270m and a tiny random-weight Llama (`tiny`). Tests that need other settings start
their own with `start_server(tmp_path, env)`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.store.default_model import ensure_default_model
from server.store.register import register_gguf
from server.store.store import Store
from tests.gguf_factory import write_random_llama

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    host: str  # host:port, as OLLAMA_HOST takes it
    models: Path
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(models: Path, env: dict[str, str] | None = None, log_dir: Path | None = None) -> Server:
    port = free_port()
    log = (log_dir or models) / f"server-{port}.log"
    full_env = dict(os.environ)
    full_env.update({
        "OLLAMA_MODELS": str(models),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_KEEP_ALIVE": "5m",
        "CORRAL_NO_DEFAULT_MODEL": "1",  # fixtures register the models they need
    })
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=full_env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return Server(url=url, host=f"127.0.0.1:{port}", models=models, proc=proc, log=log)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in time")


TINY_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """GGUF files the tests use: the real Gemma 3 270M and a tiny random Llama."""
    d = tmp_path_factory.mktemp("gguf")
    tiny = write_random_llama(d / "tiny.gguf", chat_template=TINY_TEMPLATE, n_layer=2, d=64)
    return {"tiny": tiny}


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, model_files) -> Path:
    """A model store with gemma3:270m (real weights) and tiny (random weights)."""
    root = tmp_path_factory.mktemp("models")
    store = Store(root)
    ensure_default_model(store)
    register_gguf(store, "tiny", model_files["tiny"])
    return root


@pytest.fixture(scope="session")
def corral_server(store_dir, tmp_path_factory) -> Server:
    server = start_server(store_dir, {"OLLAMA_NUM_PARALLEL": "4"}, log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture
def fresh_store(tmp_path, model_files) -> Path:
    """An empty store of the test's own, with only the tiny model."""
    root = tmp_path / "models"
    register_gguf(Store(root), "tiny", model_files["tiny"])
    return root


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> Path:
    """tests/data/corral_test_tools installed by pip (into a folder of its own, put on PYTHONPATH), so that
    its `corral.tools` entry point is found as an installed package's is."""
    target = tmp_path_factory.mktemp("plugin")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(ROOT / "tests" / "data" / "corral_test_tools")], check=True)
    return target


@pytest.fixture(scope="session")
def tool_server(store_dir, plugin_path, tmp_path_factory) -> Server:
    """A server with the test package's tools, its own data directory, and a folder where tools mark
    that they saw their cancellation (`markers`)."""
    d = tmp_path_factory.mktemp("toolserver")
    (d / "markers").mkdir()
    server = start_server(store_dir, {
        "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "CORRAL_DATA_DIR": str(d / "data"),
        "CORRAL_TEST_MARKERS": str(d / "markers"),
    }, log_dir=d)
    server.markers = d / "markers"
    server.data = d / "data"
    yield server
    server.stop()
