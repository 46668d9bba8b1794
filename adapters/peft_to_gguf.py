"""Corral's PEFT LoRA → GGUF LoRA converter (numpy and the `gguf` package; no torch).

A PEFT LoRA folder holds `adapter_config.json` and `adapter_model.safetensors`, whose tensors are
`base_model.model.<module>.lora_A.weight` (rank × in) and `….lora_B.weight` (out × rank). llama.cpp
reads a GGUF with `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (float32)
and, for each adapted base tensor `<name>.weight`, `<name>.weight.lora_a` (ggml [in, rank]) and
`<name>.weight.lora_b` (ggml [rank, out]). At run time it scales each pair by
`user scale × alpha / rank` (the rank read from that pair), which is PEFT's `lora_alpha / r`.

What is converted, facts taken from llama.cpp's convert_hf_to_gguf.py / convert_lora_to_gguf.py:

* module names for the GGUF architectures `llama` (Llama, Mistral, Mistral 3 text: all convert to
  `llama`), `qwen2`, `qwen3`, `gemma2`, `gemma3`: the attention and feed-forward projections of each
  layer and `lm_head` (`output`); multimodal prefixes (`model.language_model.`, `language_model.`) are
  dropped as llama.cpp's converter drops them;
* for `llama`, the rows of q_proj and k_proj are permuted as convert_hf_to_gguf permutes the base
  weights (Hugging Face's rotate-half rope → llama.cpp's interleaved rope); for a LoRA only lora_B
  has those rows;
* `use_rslora` (PEFT's scale alpha/√r): written as alpha·√r, so that alpha/r comes out right;
  `alpha_pattern` / `rank_pattern` (per-module alpha and rank): llama.cpp has one alpha per file,
  so where a module's PEFT scale differs from what llama.cpp will compute, its lora_B is multiplied
  by the ratio; the product B·A·scale, all that LoRA computes, is unchanged.

Refused with an AdapterError (a 400 at create), saying why: DoRA (`use_dora`, magnitude vectors:
llama.cpp has no DoRA), `modules_to_save` and full `embed_tokens`/`lm_head` weights (new tokens or
retrained embeddings: not a LoRA), trainable-token deltas, LoRA biases, LoRA on embeddings, other PEFT
types, pickled `adapter_model.bin`, and any module this mapping does not know.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AdapterError
from .safetensors_file import read_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# GGUF architecture → whether q/k rows are permuted (llama.cpp's LLAMA rope vs Hugging Face's)
ARCHITECTURES = {"llama": True, "qwen2": False, "qwen3": False, "gemma2": False, "gemma3": False}
ARCH_ALIASES = {"mistral": "llama"}  # Hugging Face names whose GGUF architecture is another's

_LAYER_MODULES = {
    ("self_attn", "q_proj"): "attn_q", ("self_attn", "k_proj"): "attn_k",
    ("self_attn", "v_proj"): "attn_v", ("self_attn", "o_proj"): "attn_output",
    ("mlp", "gate_proj"): "ffn_gate", ("mlp", "up_proj"): "ffn_up", ("mlp", "down_proj"): "ffn_down",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)")
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."), ("language_model.", ""))


@dataclass
class AdapterInfo:
    """What a conversion wrote."""

    arch: str  # the GGUF architecture the adapter is for
    rank: int  # the config's r (modules may differ through rank_pattern: see ranks)
    alpha: float  # the config's lora_alpha
    gguf_alpha: float  # adapter.lora.alpha as written (alpha·√r with rsLoRA)
    use_rslora: bool
    targets: list[str] = field(default_factory=list)  # adapted base tensors, e.g. blk.0.attn_q.weight
    ranks: dict[str, int] = field(default_factory=dict)  # target → its rank
    n_layers: int = 0  # highest adapted block + 1


def convert_peft_adapter(adapter_dir: Path, out: Path, *, base_arch: str, base_n_layers: int | None = None,
                         base_n_heads: int | None = None, base_n_kv_heads: int | None = None) -> AdapterInfo:
    """Convert the PEFT LoRA folder `adapter_dir` into a GGUF LoRA at `out` (written atomically).

    `base_arch` is the base model's GGUF architecture; `base_n_layers`, when given, bounds the layer
    indices; the head counts are needed for `llama` adapters of q_proj/k_proj (the row permutation).
    `convert_for_base` takes all of these from the base GGUF."""
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / WEIGHTS_FILE
    if not weights.is_file() and (adapter_dir / "adapter_model.bin").is_file():
        raise AdapterError("adapter_model.bin (a pickle) is not read: save the adapter as safetensors "
                           "(save_pretrained(..., safe_serialization=True))")
    return convert_peft_files(adapter_dir / CONFIG_FILE, weights, out, base_arch=base_arch,
                              base_n_layers=base_n_layers, base_n_heads=base_n_heads,
                              base_n_kv_heads=base_n_kv_heads)


def convert_for_base(adapter_dir: Path, out: Path, base_gguf: Path) -> AdapterInfo:
    """convert_peft_adapter with the architecture, layer and head counts read from the base GGUF."""
    return convert_peft_adapter(adapter_dir, out, **base_params(base_gguf))


def base_params(base_gguf: Path) -> dict[str, Any]:
    """The keyword arguments of convert_peft_adapter, from a base model's GGUF header."""
    from server.store.gguf import GGUFError, read_info

    try:
        info = read_info(str(base_gguf))
    except GGUFError as exc:
        raise AdapterError(f"cannot read the base model: {exc}") from None

    def count(suffix: str) -> int | None:
        value = info.arch_value(suffix)
        if isinstance(value, list):  # per-layer counts: the permutation needs one
            value = max(value) if value else None
        return int(value) if isinstance(value, (int, float)) else None

    return {"base_arch": info.architecture, "base_n_layers": count("block_count"),
            "base_n_heads": count("attention.head_count"), "base_n_kv_heads": count("attention.head_count_kv")}


def convert_peft_files(config_path: Path, weights_path: Path, out: Path, *, base_arch: str,
                       base_n_layers: int | None = None, base_n_heads: int | None = None,
                       base_n_kv_heads: int | None = None) -> AdapterInfo:
    """convert_peft_adapter on the two files wherever they are (at create: blobs in the store)."""
    arch = ARCH_ALIASES.get(base_arch, base_arch)
    if arch not in ARCHITECTURES:
        raise AdapterError(f"PEFT adapters for the {base_arch or 'unknown'} architecture cannot be converted "
                           f"(supported: {', '.join(ARCHITECTURES)}; Mistral models are llama)")
    config = _read_config(Path(config_path))
    tensors = read_safetensors(Path(weights_path), WEIGHTS_FILE)
    pairs = _lora_pairs(tensors)
    if not pairs:
        raise AdapterError(f"{WEIGHTS_FILE} holds no LoRA weights")

    rank = _positive_int(config.get("r", 8), "r")
    alpha = _number(config.get("lora_alpha", 8), "lora_alpha")
    rslora = bool(config.get("use_rslora", False))
    gguf_alpha = alpha * math.sqrt(rank) if rslora else alpha
    alpha_pattern = config.get("alpha_pattern") or {}
    if not isinstance(alpha_pattern, dict):
        raise AdapterError("adapter_config.json: alpha_pattern must be an object")

    info = AdapterInfo(arch=arch, rank=rank, alpha=alpha, gguf_alpha=gguf_alpha, use_rslora=rslora)
    written: list[tuple[str, np.ndarray, np.ndarray]] = []
    for module, (a, b) in pairs.items():
        target, block = _target(module)
        if base_n_layers is not None and block is not None and block >= base_n_layers:
            raise AdapterError(f"the adapter has LoRA weights for layer {block} ({module}), "
                               f"the base model has {base_n_layers} layers")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] == 0:
            raise AdapterError(f"{module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not a LoRA pair")
        r = a.shape[0]
        module_alpha = _number(_pattern_value(alpha_pattern, module, alpha), f"alpha_pattern[{module}]")
        wanted = module_alpha / (math.sqrt(r) if rslora else r)  # PEFT's scaling for this module
        computed = gguf_alpha / r if gguf_alpha else 1.0  # what llama.cpp will multiply by
        if not math.isclose(wanted, computed, rel_tol=1e-7, abs_tol=0.0):
            b = b * np.float32(wanted / computed)
        if ARCHITECTURES[arch] and target.endswith((".attn_q.weight", ".attn_k.weight")):
            b = _permute_rows(b, target, base_n_heads, base_n_kv_heads)
        written.append((target, a, b))
        info.ranks[target] = r
        if block is not None:
            info.n_layers = max(info.n_layers, block + 1)
    written.sort(key=lambda t: _order(t[0]))
    info.targets = [t for t, _, _ in written]
    _write(Path(out), arch, gguf_alpha, written)
    return info


# ---- reading and checking the PEFT files -----------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_bytes())
    except OSError:
        raise AdapterError(f"a PEFT adapter needs {CONFIG_FILE} beside {WEIGHTS_FILE}") from None
    except (UnicodeDecodeError, ValueError):
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} is not a JSON object")
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise AdapterError(f"only LoRA adapters can be converted, this one is {kind}")
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters (use_dora) cannot be converted: llama.cpp has no DoRA "
                           "magnitudes; train without use_dora or merge the adapter into the model")
    if config.get("modules_to_save"):
        raise AdapterError(f"the adapter saves whole modules ({_listing(config['modules_to_save'])}, "
                           "modules_to_save): these are retrained weights (often embeddings for new "
                           "tokens), not a LoRA; merge the adapter into the model instead")
    if config.get("trainable_token_indices"):
        raise AdapterError("the adapter trains token embeddings (trainable_token_indices: new tokens), "
                           "which a GGUF LoRA cannot hold; merge the adapter into the model instead")
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        raise AdapterError("LoRA adapters with trained biases (bias / lora_bias) cannot be converted")
    if config.get("fan_in_fan_out"):
        raise AdapterError("fan_in_fan_out adapters (Conv1D models such as GPT-2) cannot be converted")
    if config.get("layer_replication"):
        raise AdapterError("adapters with layer_replication cannot be converted")
    if config.get("target_parameters"):
        raise AdapterError("LoRA on parameters (target_parameters) cannot be converted")
    return config


def _lora_pairs(tensors: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module path: (lora_A, lora_B)}; every other tensor is refused with the reason."""
    halves: dict[str, dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        if "lora_magnitude_vector" in name:
            raise AdapterError("DoRA adapters (lora_magnitude_vector) cannot be converted: llama.cpp has "
                               "no DoRA magnitudes")
        if "lora_embedding_A" in name or "lora_embedding_B" in name:
            raise AdapterError("LoRA on the token embeddings (embed_tokens) cannot be converted")
        if "trainable_tokens" in name or "token_adapter" in name:
            raise AdapterError("the adapter trains token embeddings (new tokens), which a GGUF LoRA cannot hold")
        for suffix, half in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if name.endswith(suffix):
                halves.setdefault(_module(name[: -len(suffix)]), {})[half] = value
                break
        else:
            if name.endswith((".lora_A.bias", ".lora_B.bias", ".bias")):
                raise AdapterError(f"LoRA biases cannot be converted ({name})")
            if name.endswith(("embed_tokens.weight", "lm_head.weight", "wte.weight")):
                raise AdapterError(f"the adapter holds whole embedding weights ({name}): new tokens or "
                                   "modules_to_save, not a LoRA; merge the adapter into the model instead")
            raise AdapterError(f"{WEIGHTS_FILE}: unexpected tensor {name!r}, not a lora_A or lora_B weight")
    pairs = {}
    for module, h in halves.items():
        if "A" not in h or "B" not in h:
            raise AdapterError(f"{module}: lora_{'B' if 'A' in h else 'A'} is missing")
        pairs[module] = (h["A"], h["B"])
    return pairs


def _module(path: str) -> str:
    """A tensor's module path as the base model names it (PEFT's and multimodal prefixes dropped)."""
    path = path.removeprefix("base_model.model.")
    for prefix, replacement in _PREFIXES:
        if path.startswith(prefix):
            return replacement + path[len(prefix):]
    return path


def _target(module: str) -> tuple[str, int | None]:
    """The base GGUF tensor a module's LoRA applies to, and its block (None for lm_head)."""
    if module == "lm_head":
        return "output.weight", None
    m = _LAYER_RE.fullmatch(module)
    kind = _LAYER_MODULES.get((m.group(2), m.group(3))) if m else None
    if m is None or kind is None:
        raise AdapterError(f"LoRA on {module} cannot be converted: only the attention and feed-forward "
                           "projections (q/k/v/o_proj, gate/up/down_proj) and lm_head are mapped")
    return f"blk.{int(m.group(1))}.{kind}.weight", int(m.group(1))


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's alpha_pattern lookup: a key matches a module whose name ends with it (as a regex)."""
    for key, value in pattern.items():
        try:
            if key == module or re.fullmatch(rf"(?:.*\.)?(?:{key})", module):
                return value
        except re.error:
            if module.endswith("." + key):
                return value
    return default


def _permute_rows(b: np.ndarray, target: str, n_head: int | None, n_kv_head: int | None) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute on lora_B's rows (q: n_head groups, k: n_kv_head)."""
    heads = n_head if target.endswith(".attn_q.weight") else (n_kv_head or n_head)
    if not heads:
        raise AdapterError(f"{target}: the base model's head counts are needed to convert a llama q/k LoRA")
    rows = b.shape[0]
    if rows % (2 * heads):
        raise AdapterError(f"{target}: lora_B has {rows} rows, which {heads} heads do not divide "
                           "(the adapter is for a model of another size)")
    return b.reshape(heads, 2, rows // heads // 2, b.shape[1]).swapaxes(1, 2).reshape(b.shape)


def _order(target: str) -> tuple:
    m = re.match(r"blk\.(\d+)\.(.*)", target)
    return (0, int(m.group(1)), m.group(2)) if m else (1, 0, target)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AdapterError(f"adapter_config.json: {key} must be a positive integer, not {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError(f"adapter_config.json: {key} must be a number, not {value!r}")
    return float(value)


def _listing(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# ---- writing -------------------------------------------------------------------------------------


def _write(out: Path, arch: str, alpha: float, tensors: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """The GGUF LoRA, written to a temporary file beside `out` and renamed over it."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-adapter-", suffix=".gguf")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_name("corral LoRA adapter")
        for target, a, b in tensors:
            w.add_tensor(target + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
            w.add_tensor(target + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
