"""What the benchmarks share: finding a model's GGUF and running a Corral server to measure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from server.config import Settings
from server.store.default_model import NAME as DEFAULT_MODEL, ensure_default_model
from server.store.model import Model
from server.store.store import Store

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how transformers use attention, step by step, for a beginner.",
    "List ten creative uses for an old bicycle and explain each briefly.",
    "Describe the water cycle as if you were a raindrop telling your life story.",
]


def model_store(name: str) -> Path:
    """The store holding `name`: $OLLAMA_MODELS when it has it, else a temporary one with the default model."""
    settings = Settings.from_env()
    if Store(settings.models_dir).find(name) is not None:
        return settings.models_dir
    if name != DEFAULT_MODEL:
        raise SystemExit(f"model {name!r} is not in {settings.models_dir}")
    root = Path(tempfile.gettempdir()) / "corral-bench-models"
    ensure_default_model(Store(root))
    return root


def gguf_path(store_root: Path, name: str) -> Path:
    store = Store(store_root)
    return Model(store, store.get(name)).model_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompt_for(i: int) -> str:
    """The i-th request's prompt: one of PROMPTS with a variant number, as ../shared/gpu/loadgen.py makes them."""
    return PROMPTS[i % len(PROMPTS)] + f" (variant {i})"


class ServerProcess:
    """A server in a subprocess on a free port, ready once `health` answers 200; stopped on exit."""

    def __init__(self, cmd: list[str], port: int, health: str, *, timeout: float = 60, env: dict | None = None,
                 cwd: Path | None = None, log=subprocess.DEVNULL, what: str = "server"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"{what} did not start")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CorralProcess(ServerProcess):
    """`corral serve` in a subprocess, for measuring over real HTTP."""

    def __init__(self, store_root: Path, env: dict[str, str]):
        port = free_port()
        full = dict(os.environ, OLLAMA_MODELS=str(store_root), OLLAMA_HOST=f"127.0.0.1:{port}",
                    CORRAL_NO_DEFAULT_MODEL="1", **env)
        self.log = tempfile.NamedTemporaryFile(prefix="corral-bench-", suffix=".log", delete=False)
        super().__init__([sys.executable, "-m", "server", "serve"], port, "/", env=full, cwd=ROOT, log=self.log,
                         what=f"corral serve (log in {self.log.name})")
