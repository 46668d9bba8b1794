"""A GGUF's copy without its vocabulary arrays, which transformers loads in seconds.

transformers reads a GGUF through the `gguf` package's reader, which makes Python objects of every
array element: a vocabulary of 128k tokens and 280k merges takes it some 14 s per open (and loading a
model opens the file several times), though only the weights and the model's own settings are needed.
This copies the file byte for byte except the `tokenizer.ggml.*` arrays (and adds
`<arch>.vocab_size`, which transformers otherwise counts from the tokens). The tensor descriptions keep
their offsets, which count from the start of the data section; the data section is copied unchanged.
The tokenizer is read from the original file once per model and kept (see lm.py).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type → bytes
STRING, ARRAY, UINT32 = 8, 9, 4
DROPPED = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def _u(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _skip_string(f: BinaryIO) -> None:
    f.seek(_u(f, "<Q"), 1)


def _skip_value(f: BinaryIO, vtype: int) -> int:
    """Skip one value; the number of elements when it is an array (else 0)."""
    if vtype == STRING:
        _skip_string(f)
        return 0
    if vtype in _SCALARS:
        f.seek(_SCALARS[vtype], 1)
        return 0
    if vtype == ARRAY:
        etype, count = _u(f, "<I"), _u(f, "<Q")
        if etype in _SCALARS:
            f.seek(_SCALARS[etype] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, etype)
        return count
    raise ValueError(f"unknown GGUF value type {vtype}")


def _string_bytes(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_light_copy(src: Path, dst: Path) -> None:
    """Write `src` without its vocabulary arrays to `dst` (through a temporary file, renamed into place)."""
    tmp = dst.with_name(".tmp-" + dst.name)
    with open(src, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        version, n_tensors, n_kv = _u(f, "<I"), _u(f, "<Q"), _u(f, "<Q")
        kept: list[bytes] = []
        arch, vocab, has_vocab_size = "", 0, False
        for _ in range(n_kv):
            start = f.tell()
            key_len = _u(f, "<Q")
            key = f.read(key_len).decode("utf-8", errors="replace")
            vtype = _u(f, "<I")
            value_at = f.tell()
            count = _skip_value(f, vtype)
            end = f.tell()
            if key == "general.architecture" and vtype == STRING:
                f.seek(value_at)
                arch = f.read(_u(f, "<Q")).decode()
                f.seek(end)
            if key.endswith(".vocab_size"):
                has_vocab_size = True
            if key == "tokenizer.ggml.tokens":
                vocab = count
            if key in DROPPED:
                continue
            f.seek(start)
            kept.append(f.read(end - start))
        if arch and vocab and not has_vocab_size:
            kept.append(_string_bytes(f"{arch}.vocab_size") + struct.pack("<I", UINT32) + struct.pack("<I", vocab))
        infos_at = f.tell()
        alignment = 32
        for _ in range(n_tensors):
            _skip_string(f)
            n_dims = _u(f, "<I")
            f.seek(8 * n_dims + 4 + 8, 1)
        infos = (infos_at, f.tell())
        for entry in kept:  # general.alignment, when the file sets its own
            if entry[8:8 + len(b"general.alignment")] == b"general.alignment":
                alignment = struct.unpack("<I", entry[-4:])[0]
        data_at = -(-infos[1] // alignment) * alignment
        with open(tmp, "wb") as out:
            out.write(b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kept)))
            for entry in kept:
                out.write(entry)
            f.seek(infos[0])
            out.write(f.read(infos[1] - infos[0]))
            out.write(b"\0" * (-out.tell() % alignment))
            f.seek(data_at)
            shutil.copyfileobj(f, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, dst)
