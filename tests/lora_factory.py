"""Random-weight GGUF LoRA adapters for a given base GGUF, for serving tests.

    from tests.lora_factory import write_random_lora
    write_random_lora(base_gguf, tmp_path / "a.gguf", rank=8, seed=1)

The adapter is what llama.cpp's own converter writes (general.type=adapter, adapter.type=lora,
adapter.lora.alpha, tensors `<base tensor>.lora_a` with ggml shape [n_in, rank] and `.lora_b` with
[rank, n_out]), with both matrices random and non-zero, so that it changes the model's output. The
shapes come from the base file, so it fits the base exactly; `n_layers` fewer than the base's makes
one that does not cover every layer (still valid), and `wrong_width` one that llama.cpp refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter


def write_random_lora(base: Path, out: Path, *, rank: int = 8, alpha: float = 16.0, seed: int = 0,
                      targets: tuple[str, ...] = ("attn_q", "attn_v"), std: float = 0.05,
                      wrong_width: bool = False) -> Path:
    reader = GGUFReader(str(base))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for tensor in reader.tensors:
        name = tensor.name
        if not name.startswith("blk.") or name.split(".")[2] not in targets or not name.endswith(".weight"):
            continue
        n_in, n_out = int(tensor.shape[0]), int(tensor.shape[1])
        if wrong_width:
            n_in += 8
        a = rng.normal(0, std, size=(rank, n_in)).astype(np.float32)  # ggml [n_in, rank]
        b = rng.normal(0, std, size=(n_out, rank)).astype(np.float32)  # ggml [rank, n_out]
        writer.add_tensor(name + ".lora_a", a)
        writer.add_tensor(name + ".lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
