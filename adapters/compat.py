"""Does a GGUF LoRA adapter fit a base GGUF model? Checked at create, so that a mismatch is a 400
with the reason then, never a failure at first use.

llama.cpp's own checks when it loads an adapter (llama-adapter.cpp), made here from the two headers
alone: the adapter is `general.type = adapter` with `adapter.type = lora`; its architecture is the
model's; every `<tensor>.lora_a` has its `.lora_b`; every adapted tensor exists in the model (a layer
the model lacks, or `output` on a model with tied embeddings, does not); shapes: lora_a is
[in, rank], lora_b [rank, out] (ggml order) for a model tensor [in, out].
"""

from __future__ import annotations

from pathlib import Path

from server.store.gguf import GGUFError, GGUFInfo, read_info

from .errors import AdapterError

_SUFFIXES = (".lora_a", ".lora_b")


def check_adapter_fits(adapter_gguf: Path, base_gguf: Path) -> None:
    """Raise AdapterError saying why the adapter cannot be applied to the base model."""
    adapter = _read(adapter_gguf, "the adapter")
    base = _read(base_gguf, "the base model")
    check_infos_fit(adapter, base)


def check_infos_fit(adapter: GGUFInfo, base: GGUFInfo) -> None:
    """check_adapter_fits on headers already read."""
    kind = str(adapter.kv.get("general.type", "")).lower()
    if kind != "adapter" or str(adapter.kv.get("adapter.type", "")).lower() != "lora":
        raise AdapterError("the adapter file is not a GGUF LoRA (general.type adapter, adapter.type lora)")
    if adapter.architecture != base.architecture:
        raise AdapterError(f"the adapter is for the {adapter.architecture or 'unknown'} architecture, "
                           f"the model is {base.architecture or 'unknown'}")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in adapter.tensor_shapes.items():
        if not name.endswith(_SUFFIXES):
            raise AdapterError(f"the adapter has a tensor {name!r} that is not a lora_a or lora_b")
        pairs.setdefault(name[:-7], {})[name[-1]] = shape
    if not pairs:
        raise AdapterError("the adapter holds no LoRA tensors")
    n_layers = base.arch_value("block_count")
    for target in sorted(pairs):
        halves = pairs[target]
        if set(halves) != {"a", "b"}:
            raise AdapterError(f"the adapter's {target}.lora_{'b' if 'a' in halves else 'a'} is missing")
        model = base.tensor_shapes.get(target)
        if model is None:
            raise AdapterError(_missing(target, n_layers))
        a, b = halves["a"], halves["b"]
        if len(a) != 2 or len(b) != 2 or len(model) != 2:
            raise AdapterError(f"the adapter's {target} is not a two-dimensional LoRA pair")
        if a[1] != b[0]:
            raise AdapterError(f"the adapter's {target}: lora_a has rank {a[1]}, lora_b {b[0]}")
        if a[0] != model[0] or b[1] != model[1]:
            raise AdapterError(f"the adapter's {target} is for a {b[1]}×{a[0]} weight, the model's is "
                               f"{model[1]}×{model[0]} (an adapter for a model of another size)")


def _missing(target: str, n_layers: object) -> str:
    if target.startswith("blk."):
        block = target.split(".")[1]
        if isinstance(n_layers, int) and block.isdigit() and int(block) >= n_layers:
            return f"the adapter has weights for layer {block}, the model has {n_layers} layers"
    if target == "output.weight":
        return "the adapter adapts output (lm_head), which the model does not have (its embeddings are tied)"
    return f"the adapter adapts {target}, which the model does not have"


def _read(path: Path, what: str) -> GGUFInfo:
    try:
        info = read_info(str(path))
    except GGUFError as exc:
        if "magic" in str(exc):
            raise AdapterError(f"{what} is not a GGUF file") from None
        raise AdapterError(f"{what} is not a valid GGUF file: {exc}") from None
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise AdapterError(f"cannot read {what}: {exc.strerror or exc}") from None
    if size < info.required_size:
        raise AdapterError(f"{what} is truncated: {size} bytes of {info.required_size}")
    return info
