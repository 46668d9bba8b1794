"""A strict reader of `.safetensors` files into float32 numpy arrays, without torch.

The format: an 8-byte little-endian header length, a JSON header `{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data. A PEFT adapter's file is read
whole (adapters are small); every entry is checked against the file before any byte is used, so a
truncated or foreign file is an AdapterError naming what is wrong, never an exception from numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .errors import AdapterError

MAX_HEADER = 100 << 20  # the header is JSON describing tensors; larger is not a safetensors file
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}


def read_safetensors(path: Path, source: str) -> dict[str, np.ndarray]:
    """Every tensor of the file as float32 (BF16, F16, F64 widened or narrowed); `source` names the
    file in errors."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AdapterError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) < 8:
        raise AdapterError(f"{source} is not a safetensors file: too short")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > MAX_HEADER or 8 + n > len(data):
        raise AdapterError(f"{source} is not a safetensors file: bad header length")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError):
        raise AdapterError(f"{source} is not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{source} is not a safetensors file: its header is not an object")
    body = memoryview(data)[8 + n:]
    out: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor(body, name, entry, source)
    return out


def _tensor(body: memoryview, name: str, entry: object, source: str) -> np.ndarray:
    def bad(why: str) -> AdapterError:
        return AdapterError(f"{source}: tensor {name!r} {why}")

    if not isinstance(entry, dict):
        raise bad("has no description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPES:
        raise bad(f"has dtype {dtype!r}; only F32, F16, BF16 and F64 adapters can be converted")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape) or len(shape) > 8):
        raise bad("has an invalid shape")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise bad("has invalid data offsets")
    begin, end = offsets
    itemsize = _DTYPES[dtype].itemsize
    if not 0 <= begin <= end <= len(body):
        raise bad("lies outside the file (truncated?)")
    if end - begin != math.prod(shape) * itemsize:
        raise bad("has a size that does not match its shape")
    raw = np.frombuffer(body[begin:end], dtype=_DTYPES[dtype])
    if dtype == "BF16":
        arr = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        arr = raw.astype(np.float32)
    arr = arr.reshape(shape)
    if not np.isfinite(arr).all():
        raise bad("holds NaN or infinite values")
    return arr
