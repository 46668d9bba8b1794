"""Ollama's `options` object → engine settings, with its defaults and its type rules."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .engine.job import Sampling


# Every option Ollama knows, with the JSON type it must have. Unknown keys are ignored
# (clients still send removed ones); a known key with the wrong type is a 400.
OPTION_TYPES: dict[str, type] = {
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "ignore_eos": bool,  # Corral extension (as llama-server): keep generating past end-of-generation tokens
}


class OptionError(ValueError):
    pass


@dataclass
class Options:
    sampling: Sampling = field(default_factory=Sampling)
    num_predict: int = -1
    stop: list[str] = field(default_factory=list)
    num_keep: int = 4
    num_ctx: int = 0  # 0: the server default
    num_batch: int = 512
    num_gpu: int = -1
    num_thread: int = 0
    ignore_eos: bool = False


def _check(key: str, value: Any, kind: type) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {key!r} must be a number, got {type(value).__name__}")
        return float(value)
    if kind is int:
        if isinstance(value, float) and math.isfinite(value):
            return int(value)  # truncated, as Ollama's int64(float64) does
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"option {key!r} must be an integer, got {type(value).__name__}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise OptionError(f"option {key!r} must be a boolean, got {type(value).__name__}")
        return value
    if kind is list:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OptionError(f"option {key!r} must be a list of strings")
        return value
    return value


def parse_options(*layers: dict[str, Any] | None) -> Options:
    """Merge option dicts (model parameters first, the request's last) into engine settings."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            kind = OPTION_TYPES.get(key)
            if kind is None or value is None:
                continue  # unknown or removed option: ignored, as Ollama does
            merged[key] = _check(key, value, kind)
    opts = Options()
    s = opts.sampling
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "repeat_penalty",
                 "presence_penalty", "frequency_penalty", "seed"):
        if name in merged:
            setattr(s, name, merged[name])
    if "num_predict" in merged:
        n = merged["num_predict"]
        if n < -2:
            raise OptionError("num_predict must be -1 (no limit) or a positive number")
        opts.num_predict = -1 if n in (-1, -2) else n
    for name in ("num_keep", "num_ctx", "num_batch", "num_gpu", "num_thread", "ignore_eos"):
        if name in merged:
            setattr(opts, name, merged[name])
    if opts.num_ctx < 0 or (0 < opts.num_ctx < 16):
        raise OptionError("num_ctx must be at least 16")
    if s.top_k < 0:
        raise OptionError("top_k must not be negative")
    opts.stop = [x for x in merged.get("stop", []) if x]
    return opts
