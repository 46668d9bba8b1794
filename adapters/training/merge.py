"""A GGUF LoRA merged into its base model's weights: one standalone GGUF (what llama.cpp's export-lora does).

Each base tensor is read (dequantized where it is quantized) and written again: 2-D weights as F16 (the
adapted ones with `W + alpha / r · B·A` added, the same sum llama.cpp computes at run time with the
adapter loaded), 1-D tensors (norms, biases) as F32, as llama.cpp's converter writes them. The metadata
is copied whole, the file type set to F16, so that create's `quantize` (q4_K_M, q8_0) can follow. The
file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import TrainingError

SKIPPED_KEYS = ("general.architecture", "general.file_type", "general.alignment")


def _array(tensor) -> np.ndarray:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    if tensor.tensor_type in (Q.F32, Q.F16):
        data = np.asarray(tensor.data, dtype=np.float32)
    else:
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    shape = tuple(int(x) for x in reversed(tensor.shape.tolist()))  # ggml dims are innermost first
    return data.reshape(shape)


def merge_into_gguf(base: Path, adapter: Path, out: Path, check: Callable[[], None] | None = None) -> None:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

    lora = GGUFReader(str(adapter))
    if str(lora.fields["general.type"].contents()) != "adapter":
        raise TrainingError("the file to merge is not a GGUF LoRA adapter")
    alpha = float(lora.fields["adapter.lora.alpha"].contents())
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for t in lora.tensors:
        target, _, part = t.name.rpartition(".")
        pairs.setdefault(target, {})[part] = _array(t)
    reader = GGUFReader(str(base))
    arch = str(reader.fields["general.architecture"].contents())
    tmp = out.with_name(".tmp-" + out.name)
    writer = GGUFWriter(str(tmp), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in SKIPPED_KEYS:
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    used = set()
    for t in reader.tensors:
        if check is not None:
            check()
        w = _array(t)
        pair = pairs.get(t.name)
        if pair is not None:
            a, b = pair["lora_a"], pair["lora_b"]  # [rank, in], [out, rank]
            if w.ndim != 2 or b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1]:
                raise TrainingError(f"the adapter's {t.name} does not fit the base tensor {list(w.shape)}")
            w = w + (alpha / a.shape[0]) * (b @ a)
            used.add(t.name)
        writer.add_tensor(t.name, w.astype(np.float16 if w.ndim >= 2 else np.float32))
    missing = set(pairs) - used
    if missing:
        raise TrainingError(f"the adapter adapts tensors the base does not have: {', '.join(sorted(missing))}")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
