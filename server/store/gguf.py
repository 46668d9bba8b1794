"""Read a GGUF file's header and key/value metadata (not its tensors).

Small and strict on purpose: it is the first thing to touch a file a user hands us, so a
truncated or foreign file fails here with a clear message instead of inside llama.cpp.
Large arrays (the tokenizer's 100k+ tokens) are skipped unless asked for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC = b"GGUF"

# GGUF value types → struct format (scalars); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9

# general.file_type → the name Ollama prints as quantization_level
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


class GGUFError(ValueError):
    """The file is not a readable GGUF model."""


@dataclass
class GGUFInfo:
    version: int
    tensor_count: int
    kv: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)  # for arrays that were skipped
    parameter_count: int = 0  # sum of all tensors' element counts
    required_size: int = 0  # bytes the file must have: aligned data start + the furthest tensor's end
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name → ggml dims (ne0 first)

    @property
    def architecture(self) -> str:
        return str(self.kv.get("general.architecture", ""))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.kv.get(f"{self.architecture}.{suffix}", default)


def read_info(path: str, *, arrays_up_to: int = 64) -> GGUFInfo:
    """Parse the header and KV section. Arrays longer than `arrays_up_to` keep only their length."""
    try:
        with open(path, "rb") as f:
            return _read(f, arrays_up_to)
    except GGUFError:
        raise
    except (struct.error, UnicodeDecodeError, MemoryError, OverflowError) as exc:
        raise GGUFError(f"invalid GGUF file: {exc}") from exc
    except OSError as exc:
        raise GGUFError(f"cannot read model file: {exc}") from exc


def _read(f: BinaryIO, arrays_up_to: int) -> GGUFInfo:
    if f.read(4) != MAGIC:
        raise GGUFError("invalid file magic: not a GGUF model file")
    (version,) = _unpack(f, "<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    tensor_count, kv_count = _unpack(f, "<QQ")
    if kv_count > 1_000_000 or tensor_count > 10_000_000:
        raise GGUFError("invalid GGUF header: implausible counts")
    info = GGUFInfo(version=version, tensor_count=tensor_count)
    for _ in range(kv_count):
        key = _string(f)
        (vtype,) = _unpack(f, "<I")
        if vtype == ARRAY:
            (etype,), (count,) = _unpack(f, "<I"), _unpack(f, "<Q")
            if count <= arrays_up_to:
                info.kv[key] = [_value(f, etype) for _ in range(count)]
            else:
                _skip_array(f, etype, count)
                info.kv[key] = []
                info.array_lengths[key] = count
        else:
            info.kv[key] = _value(f, vtype)
    end = 0
    for _ in range(tensor_count):
        tensor_name = _string(f)
        (n_dims,) = _unpack(f, "<I")
        if n_dims > 8:
            raise GGUFError("invalid GGUF file: bad tensor header")
        dims = _unpack(f, "<" + "Q" * n_dims)
        ttype, offset = _unpack(f, "<IQ")
        info.tensor_shapes[tensor_name] = tuple(dims)
        count = 1
        for d in dims:
            count *= d
        info.parameter_count += count
        end = max(end, offset + _tensor_bytes(ttype, count))
    alignment = int(info.kv.get("general.alignment", 32) or 32)
    info.required_size = -(-f.tell() // alignment) * alignment + end
    return info


def _unpack(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("invalid GGUF file: truncated header")
    return struct.unpack(fmt, data)


def _string(f: BinaryIO) -> str:
    (n,) = _unpack(f, "<Q")
    if n > 1 << 28:
        raise GGUFError("invalid GGUF file: implausible string length")
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("invalid GGUF file: truncated header")
    return data.decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype == STRING:
        return _string(f)
    if vtype in _SCALARS:
        return _unpack(f, _SCALARS[vtype])[0]
    if vtype == ARRAY:
        (etype,), (count,) = _unpack(f, "<I"), _unpack(f, "<Q")
        return [_value(f, etype) for _ in range(count)]
    raise GGUFError(f"invalid GGUF file: unknown value type {vtype}")


def _skip_array(f: BinaryIO, etype: int, count: int) -> None:
    if etype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
    elif etype == STRING:
        for _ in range(count):
            (n,) = _unpack(f, "<Q")
            f.seek(n, 1)
    else:
        for _ in range(count):
            _value(f, etype)


def _tensor_bytes(ggml_type: int, count: int) -> int:
    """Size of a tensor's data; 0 for a type the gguf package doesn't know (only its start is checked)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return 0
    return count // block * type_size


def read_tokens(path: str) -> list[str]:
    """The vocabulary's token strings (for checking FIM/tool tokens); [] when absent."""
    info = read_info(path, arrays_up_to=1 << 30)
    return list(info.kv.get("tokenizer.ggml.tokens", []))
