"""Memory planning before a load: what a model will take, where its layers go, whether it fits.

The estimate comes from GGUF metadata: weights (the file's tensor data), KV cache
(layers x cells x KV heads x (key + value length) x bytes per element of the cache type) and
a compute buffer (activations of one micro-batch plus the logits of every sequence). Layers are
offloaded to the GPU while they fit (num_gpu -1, Ollama's "auto"); the rest stays in system
memory; a model that fits nowhere is refused with Ollama's message.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..store.gguf import GGUFInfo

GiB = 1 << 30
# bytes per KV element: f16; q8_0 and q4_0 blocks of 32 values with an f16 scale
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
GPU_RESERVE = 512 << 20  # left free on each GPU for the CUDA context and fragmentation


class InsufficientMemory(RuntimeError):
    pass


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int
    n_layer: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute

    @property
    def per_layer(self) -> int:
        """Weights and cache of one repeating layer (the output layer counts as one more)."""
        return (self.weights + self.kv) // (self.n_layer + 1)


@dataclass(frozen=True)
class Plan:
    gpu_layers: int  # layers offloaded (n_layer + 1 = all, output included)
    gpu_bytes: int
    cpu_bytes: int


def estimate(info: GGUFInfo, file_size: int, *, cells: int, kv_type: str, n_batch: int, n_seq: int,
             n_ubatch: int | None = None) -> Estimate:
    """Weights, cache and compute buffers; compute is sized for the micro-batch (`n_ubatch`, by
    default the runner's min(n_batch, 512))."""
    n_layer = int(info.arch_value("block_count", 0) or 0) or 1
    n_embd = int(info.arch_value("embedding_length", 0) or 0) or 1
    n_head = int(info.arch_value("attention.head_count", 0) or 0) or 1
    n_head_kv = info.arch_value("attention.head_count_kv", n_head)
    n_head_kv = max(n_head_kv) if isinstance(n_head_kv, list) and n_head_kv else int(n_head_kv or n_head)
    key = int(info.arch_value("attention.key_length", 0) or 0) or n_embd // n_head
    value = int(info.arch_value("attention.value_length", 0) or 0) or key
    n_vocab = _n_vocab(info)
    kv = int(n_layer * cells * n_head_kv * (key + value) * KV_BYTES.get(kv_type, 2.0))
    ff = int(info.arch_value("feed_forward_length", 0) or 0) or 4 * n_embd
    ubatch = min(n_batch, 512) if n_ubatch is None else n_ubatch
    compute = 4 * ubatch * (3 * n_embd + ff) + 4 * n_vocab * n_seq
    return Estimate(weights=file_size, kv=kv, compute=compute, n_layer=n_layer)


def _n_vocab(info: GGUFInfo) -> int:
    return int(info.arch_value("vocab_size", 0) or 0) or info.array_lengths.get("tokenizer.ggml.tokens", 32000)


def embedding_context(info: GGUFInfo, *, n_ctx: int, n_seq: int) -> Estimate:
    """The second context an embedding request creates beside the generation one (`Embedder`): an f16
    cache of n_ctx cells, compute buffers for one n_ctx-token batch, and that batch's outputs (no weights).
    With embeddings on, llama.cpp makes every token of a batch an output and computes the model's output
    layer for each: n_vocab floats a token, which is most of it for a large vocabulary (1 MiB a token
    for Gemma 3's 262k: measured 514.5 MiB of compute buffer at n_ctx 512, 2058 MiB at 2048)."""
    est = estimate(info, 0, cells=n_ctx, kv_type="f16", n_batch=n_ctx, n_ubatch=n_ctx, n_seq=n_seq)
    n_embd = int(info.arch_value("embedding_length", 0) or 0) or 1
    return dataclasses.replace(est, compute=est.compute + 4 * n_ctx * (_n_vocab(info) + n_embd))


def split(est: Estimate, gpu_layers: int) -> tuple[int, int]:
    """(GPU bytes, system bytes) of a context whose layers are where a model's `gpu_layers` are."""
    layers = est.n_layer + 1
    on_gpu = est.total * min(gpu_layers, layers) // layers
    return on_gpu, est.total - on_gpu


def embedding_room(info: GGUFInfo, *, n_ctx: int, n_seq: int, gpu_layers: int, gpu_free: int,
                   ram_free: int) -> None:
    """Refuse an embedding context that does not fit the memory left (InsufficientMemory, saying the
    largest num_ctx that would fit), before llama.cpp tries to allocate it."""

    def fits(n: int) -> bool:
        gpu, cpu = split(embedding_context(info, n_ctx=n, n_seq=n_seq), gpu_layers)
        return cpu <= ram_free and (gpu == 0 or gpu <= gpu_free)

    if fits(n_ctx):
        return
    lo, hi = 0, n_ctx  # the largest n that fits (0: none), in steps of llama.cpp's 256-cell padding
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    best = lo // 256 * 256
    gpu, cpu = split(embedding_context(info, n_ctx=n_ctx, n_seq=n_seq), gpu_layers)
    where = (f"{cpu / GiB:.1f} GiB of system memory ({ram_free / GiB:.1f} GiB available)" if cpu > ram_free
             else f"{gpu / GiB:.1f} GiB of GPU memory ({gpu_free / GiB:.1f} GiB available)")
    hint = f"at most num_ctx {best} fits" if best else "no embedding context fits in the memory left"
    raise InsufficientMemory(f"num_ctx {n_ctx} is too large for embeddings with this model: its embedding "
                             f"context needs {where}; {hint}")


def plan(est: Estimate, *, gpu_free: int, ram_free: int, num_gpu: int = -1) -> Plan:
    """Place the model: `num_gpu` layers on the GPU (-1: as many as fit), the rest in system memory."""
    layers = est.n_layer + 1
    if num_gpu < 0:
        room = max(0, gpu_free - GPU_RESERVE - est.compute)
        gpu_layers = min(layers, room // max(1, est.per_layer)) if gpu_free > 0 else 0
    else:
        gpu_layers = min(layers, num_gpu) if gpu_free > 0 else 0
    gpu_bytes = gpu_layers * est.per_layer + (est.compute if gpu_layers else 0)
    cpu_bytes = est.total - gpu_bytes
    if gpu_free > 0 and num_gpu >= 0 and gpu_bytes > gpu_free:
        raise InsufficientMemory(
            f"model requires more GPU memory ({gpu_bytes / GiB:.1f} GiB) than is available ({gpu_free / GiB:.1f} GiB)")
    if cpu_bytes > ram_free:
        raise InsufficientMemory(
            f"model requires more system memory ({cpu_bytes / GiB:.1f} GiB) than is available ({ram_free / GiB:.1f} GiB)")
    return Plan(gpu_layers=int(gpu_layers), gpu_bytes=int(gpu_bytes), cpu_bytes=int(cpu_bytes))


def parse_size(text: str) -> int:
    """`8GiB`, `512MiB`, `2G`, `1000000` → bytes."""
    text = text.strip().lower().replace(" ", "")
    for suffix, factor in (("gib", GiB), ("gb", 10**9), ("g", GiB), ("mib", 1 << 20), ("mb", 10**6), ("m", 1 << 20),
                           ("kib", 1 << 10), ("k", 1 << 10), ("b", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def system_memory() -> int:
    """Memory models may use: CORRAL_MEMORY_LIMIT when set, else MemTotal less 10 %."""
    limit = os.environ.get("CORRAL_MEMORY_LIMIT", "").strip()
    if limit:
        return parse_size(limit)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(int(line.split()[1]) * 1024 * 0.9)
    except OSError:
        pass
    return 1 << 62  # unknown: don't refuse
