"""Settings from the environment, with Ollama's variable names and defaults."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 11434
FOREVER = float("inf")
MAX_DURATION = 9_223_372_036.0  # seconds: the longest Go time.Duration

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float | None, default: float | None = None) -> float | None:
    """keep_alive: a number of seconds or a Go duration string ("5m0s", "1h", "-1"); negative = forever.

    Returns seconds (float('inf') for forever) or `default` when value is None/"".
    Raises ValueError for anything else.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            pos, total = 0, 0.0
            for m in _DURATION_PART.finditer(body):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos != len(body) or not body:
                raise ValueError(f'time: invalid duration "{value}"') from None
            seconds = sign * total
    if math.isnan(seconds):
        raise ValueError(f'time: invalid duration "{value}"')
    # negative is forever, and so is anything past what Go's Duration holds (~292 years)
    return FOREVER if seconds < 0 or seconds > MAX_DURATION else seconds


def parse_host(value: str | None) -> tuple[str, int]:
    """OLLAMA_HOST → (host, port), read as Ollama reads it: `host`, `host:port`, `:port` (every
    interface), `[v6]:port`, a bare IPv6 address, `scheme://…` (http defaults to port 80, https to
    443); a port that is not a number from 0 to 65535 is replaced by the default, with a warning."""
    text = (value or "").strip()
    default_port = DEFAULT_PORT
    if "://" in text:
        scheme, text = text.split("://", 1)
        default_port = {"http": 80, "https": 443}.get(scheme, DEFAULT_PORT)
    text = text.split("/", 1)[0]
    host, port_text = _split_host_port(text)
    if host is None:  # no port: the whole text is the host (or an IP address in brackets or bare)
        host, port_text = (text.strip("[]") or "127.0.0.1"), ""
    elif not host:
        host = "0.0.0.0"  # ":port": every interface
    port = default_port
    if port_text:
        if port_text.isdigit() and int(port_text) <= 65535:
            port = int(port_text)
        else:
            logging.getLogger("corral").warning("invalid port %r in OLLAMA_HOST, using default %d", port_text,
                                                default_port)
    return host, port


def _split_host_port(text: str) -> tuple[str | None, str]:
    """Go's net.SplitHostPort: (host, port), or (None, "") when `text` has no port part."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return (host, rest[1:]) if rest.startswith(":") else (None, "")
    if text.count(":") != 1:  # no port, or a bare IPv6 address
        return None, ""
    host, _, port = text.partition(":")
    return host, port


def _bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


def _path(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: Path.home() / ".ollama" / "models")
    keep_alive: float = 300.0  # seconds; inf = forever
    num_parallel: int = 4
    max_loaded_models: int = 3
    max_queue: int = 512
    context_length: int = 4096
    origins: list[str] = field(default_factory=list)
    flash_attention: bool = False
    kv_cache_type: str = "f16"
    load_timeout: float = 300.0
    num_threads: int = 0  # 0 = the cores this process may run on
    embed_default_model: bool = True
    prefix_cache: bool = True
    deterministic: bool = False  # same text for a seeded request alone or under load (CPU)
    # a seeded request is computed as on an idle server (no reused cells, decode steps of its own), so
    # its text repeats alone and under load; off: seeded requests batch like the others
    seed_reproducible: bool = True
    backend_sampling: str = "auto"  # auto: where layers are offloaded to a GPU; "1" / "0" force it
    data_dir: Path = field(default_factory=lambda: Path.home() / ".corral")  # artifacts, databases, config
    mcp_config: Path | None = None  # outside MCP servers whose tools are imported; None: data_dir/mcp.json
    graphs_config: Path | None = None  # users' LangGraph graphs (langgraph.json-style); None: data_dir/langgraph.json
    tool_timeout: float = 300.0  # seconds a tool may run unless it sets its own timeout
    header_timeout: float = 10.0  # seconds for a request's headers to arrive, else the connection closes
    body_timeout: float = 60.0  # seconds between two pieces of a request body, else a 408
    keepalive_timeout: float = 30.0  # seconds an idle keep-alive connection stays open
    max_connections: int = 2048  # connections and requests served at once; beyond, a 503
    database_url: str = ""  # PostgreSQL (postgresql://…) for agent threads and other state; "": SQLite in data_dir
    image_batch: int = 4  # images one denoising run may hold (requests with the same settings batched)
    train_threads: int = 0  # PyTorch threads for training jobs; 0: half the cores

    @property
    def mcp_config_path(self) -> Path:
        return self.mcp_config or self.data_dir / "mcp.json"

    @property
    def graphs_config_path(self) -> Path:
        return self.graphs_config or self.data_dir / "langgraph.json"

    @classmethod
    def from_env(cls) -> "Settings":
        host, port = parse_host(os.environ.get("OLLAMA_HOST"))
        models = os.environ.get("OLLAMA_MODELS")
        origins = [o.strip() for o in os.environ.get("OLLAMA_ORIGINS", "").split(",") if o.strip()]
        return cls(
            host=host,
            port=port,
            models_dir=Path(models).expanduser() if models else Path.home() / ".ollama" / "models",
            keep_alive=parse_duration(os.environ.get("OLLAMA_KEEP_ALIVE"), 300.0),
            num_parallel=max(1, _int("OLLAMA_NUM_PARALLEL", 4)),
            max_loaded_models=max(1, _int("OLLAMA_MAX_LOADED_MODELS", 3)),
            max_queue=max(1, _int("OLLAMA_MAX_QUEUE", 512)),
            context_length=max(256, _int("OLLAMA_CONTEXT_LENGTH", 4096)),
            origins=origins,
            flash_attention=_bool("OLLAMA_FLASH_ATTENTION"),
            kv_cache_type=os.environ.get("OLLAMA_KV_CACHE_TYPE", "").strip().lower()
            or ("q8_0" if _bool("CORRAL_DETERMINISTIC") else "f16"),
            load_timeout=parse_duration(os.environ.get("OLLAMA_LOAD_TIMEOUT"), 300.0),
            num_threads=_int("CORRAL_NUM_THREADS", 0),
            embed_default_model=not _bool("CORRAL_NO_DEFAULT_MODEL"),
            prefix_cache=_bool("CORRAL_PREFIX_CACHE", True),
            deterministic=_bool("CORRAL_DETERMINISTIC"),
            seed_reproducible=_bool("CORRAL_SEED_REPRODUCIBLE", True),
            backend_sampling=os.environ.get("CORRAL_BACKEND_SAMPLING", "auto").strip().lower() or "auto",
            data_dir=_path("CORRAL_DATA_DIR") or Path.home() / ".corral",
            mcp_config=_path("CORRAL_MCP_CONFIG"),
            graphs_config=_path("CORRAL_GRAPHS_CONFIG"),
            tool_timeout=parse_duration(os.environ.get("CORRAL_TOOL_TIMEOUT"), 300.0),
            database_url=os.environ.get("CORRAL_DATABASE_URL", "").strip(),
            header_timeout=parse_duration(os.environ.get("CORRAL_HEADER_TIMEOUT"), 10.0),
            body_timeout=parse_duration(os.environ.get("CORRAL_BODY_TIMEOUT"), 60.0),
            keepalive_timeout=parse_duration(os.environ.get("CORRAL_KEEPALIVE_TIMEOUT"), 30.0),
            max_connections=max(1, _int("CORRAL_MAX_CONNECTIONS", 2048)),
            image_batch=max(1, _int("CORRAL_IMAGE_BATCH", 4)),
            train_threads=max(0, _int("CORRAL_TRAIN_THREADS", 0)),
        )
