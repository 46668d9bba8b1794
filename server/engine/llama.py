"""The llama.cpp C API, as much of it as Corral needs, behind small Python types.

Everything here goes through `llama_cpp.llama_cpp` (ctypes); ctypes releases the GIL during
foreign calls, so a decode on one thread leaves the asyncio loop free.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp.llama_cpp as C

log = logging.getLogger("corral.engine")
llama_log = logging.getLogger("llama.cpp")

_init_lock = threading.Lock()
_initialised = False
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state = {"level": logging.DEBUG, "buf": ""}


@C.llama_log_callback
def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # GGML_LOG_LEVEL_CONT (5) continues the previous message; lines may arrive in pieces.
    if level != 5:
        _log_state["level"] = _LEVELS.get(level, logging.DEBUG)
    _log_state["buf"] += text.decode("utf-8", errors="replace")
    while "\n" in _log_state["buf"]:
        line, _log_state["buf"] = _log_state["buf"].split("\n", 1)
        if line.strip():
            llama_log.log(_log_state["level"], "%s", line)


def init_backend() -> None:
    """Load llama.cpp's backends once per process and route its logs into Python logging."""
    global _initialised
    with _init_lock:
        if _initialised:
            return
        C.llama_log_set(_on_log, ctypes.c_void_p(0))
        C.llama_backend_init()
        _initialised = True


def _bind_seq_adapters():
    """`llama_set_adapters_lora_seq(ctx, seq_id, adapters, n, scales)`: adapters chosen per sequence,
    so sequences on different adapter sets decode in one batch. It comes from Corral's patch to
    llama.cpp (scripts/llama-cpp-seq-lora.patch, applied by scripts/install.sh); None on a llama.cpp
    built without it, where each decode applies one set to all its rows."""
    fn = getattr(C._lib, "llama_set_adapters_lora_seq", None)
    if fn is not None:
        fn.argtypes = [C.llama_context_p_ctypes, C.llama_seq_id, ctypes.POINTER(C.llama_adapter_lora_p_ctypes),
                       ctypes.c_size_t, ctypes.POINTER(ctypes.c_float)]
        fn.restype = ctypes.c_int32
    return fn


set_adapters_lora_seq = _bind_seq_adapters()


def batch_invariant_kernels() -> None:
    """Keep ggml's CPU matrix products per-row for every batch size (deterministic serving).

    For K-quant weights ggml switches from a per-row dot product to a tiled kernel at 8 rows, so
    a running sequence gets other numbers in the step where another prompt joins it. Setting
    GGML_CPU_TILED_MM=0 keeps the per-row kernel; ggml reads it once, at the first matrix product
    of the process, so this must run before any model computes anything. It costs prompt speed.
    """
    os.environ["GGML_CPU_TILED_MM"] = "0"


def supports_gpu() -> bool:
    init_backend()
    return bool(C.llama_supports_gpu_offload())


_DEV_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator"}  # enum ggml_backend_dev_type


def _ggml(name: str, restype, *argtypes):
    """A ggml function the bindings do not wrap, from the library they loaded (it links libggml)."""
    return ctypes.CFUNCTYPE(restype, *argtypes)((name, C._lib))


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # CPU | GPU | iGPU | accelerator
    free: int  # bytes
    total: int


def devices() -> list[Device]:
    """The devices llama.cpp's backends see, with their memory (empty for builds without a registry)."""
    init_backend()
    try:
        count = _ggml("ggml_backend_dev_count", ctypes.c_size_t)
        get = _ggml("ggml_backend_dev_get", ctypes.c_void_p, ctypes.c_size_t)
        name = _ggml("ggml_backend_dev_name", ctypes.c_char_p, ctypes.c_void_p)
        description = _ggml("ggml_backend_dev_description", ctypes.c_char_p, ctypes.c_void_p)
        dev_type = _ggml("ggml_backend_dev_type", ctypes.c_int, ctypes.c_void_p)
        size_p = ctypes.POINTER(ctypes.c_size_t)
        memory = _ggml("ggml_backend_dev_memory", None, ctypes.c_void_p, size_p, size_p)
    except AttributeError:  # a build without the backend registry
        return []
    out = []
    for i in range(count()):
        dev = get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(Device((name(dev) or b"?").decode(), (description(dev) or b"").decode(errors="replace"),
                          _DEV_TYPES.get(dev_type(dev), "device"), free.value, total.value))
    return out


def describe_backends() -> list[str]:
    """One line per ggml device: "CUDA0: NVIDIA H100 80GB HBM3 (GPU, free 78.6 GiB / total 79.1 GiB)"."""
    return [f"{d.name}: {d.description} ({d.kind}, free {d.free / 2**30:.1f} GiB / total {d.total / 2**30:.1f} GiB)"
            for d in devices()]


def log_backends() -> None:
    """Log the devices llama.cpp sees and whether layers can be offloaded to a GPU."""
    for line in describe_backends():
        log.info("device %s", line)
    log.info("GPU offload: %s", "available" if supports_gpu() else "not available (CPU only)")
    from . import loaded_build

    build = loaded_build()
    log.info("llama.cpp build: %s", {"default": "default kernels (llamafile on)",
                                      "exact": "exact kernels (llamafile off, for deterministic mode)"}.get(build, build))
    if build == "default" and os.environ.get("CORRAL_DETERMINISTIC", "").strip().lower() in ("1", "true", "yes", "on"):
        log.warning("deterministic mode without the exact llama.cpp build (install with scripts/install.sh): "
                    "llamafile's kernels may still change numbers with the batch")


def default_threads() -> int:
    """The cores this process may run on: more threads than cores makes decode slower."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class LoadError(RuntimeError):
    """A model or context could not be created."""


FIM_NAMES = ("pre", "suf", "mid", "pad", "rep", "sep")
_fim_lock = threading.Lock()


@functools.lru_cache(maxsize=128)
def fim_token_ids(path: str) -> dict[str, int] | None:
    """The fill-in-the-middle tokens llama.cpp finds in this GGUF's vocabulary (ids, -1 where
    absent), from a vocabulary-only load: the same detection a full load does (metadata ids, then
    token texts of every family llama.cpp knows), so the `insert` capability agrees with the prompt
    `LlamaModel.fim` builds. None when llama.cpp cannot read the vocabulary. Cached per path: blobs
    are named by their digest, so one load serves every request."""
    init_backend()
    params = C.llama_model_default_params()
    params.vocab_only = True
    params.use_mmap = True
    params.n_gpu_layers = 0
    with _fim_lock:  # one load at a time: the first requests after a start may all ask at once
        ptr = C.llama_model_load_from_file(path.encode(), params)
        if not ptr:
            return None
        try:
            vocab = C.llama_model_get_vocab(ptr)
            return {name: int(getattr(C, f"llama_vocab_fim_{name}")(vocab)) for name in FIM_NAMES}
        finally:
            C.llama_model_free(ptr)


class LlamaModel:
    """Weights and vocabulary of one GGUF file."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int = -1, use_mmap: bool = True,
                 extra_bufts: bool = True):
        init_backend()
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers if n_gpu_layers >= 0 else (999 if supports_gpu() else 0)
        params.use_mmap = use_mmap
        # Repacked CPU weight layouts are faster but switch kernels with the batch size (gemv vs
        # gemm): deterministic serving turns them off.
        params.use_extra_bufts = extra_bufts
        self.path = str(path)
        self.n_gpu_layers = params.n_gpu_layers
        ptr = C.llama_model_load_from_file(self.path.encode(), params)
        if not ptr:
            raise LoadError(f"unable to load model: {self.path}")
        self.ptr = ptr
        self.vocab = C.llama_model_get_vocab(ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(ptr)
        self.n_embd = C.llama_model_n_embd(ptr)
        self.n_layer = C.llama_model_n_layer(ptr)
        self.size = C.llama_model_size(ptr)
        self.bos = C.llama_vocab_bos(self.vocab)
        self.eos = C.llama_vocab_eos(self.vocab)
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.vocab))
        self.has_encoder = bool(C.llama_model_has_encoder(ptr))
        self.has_decoder = bool(C.llama_model_has_decoder(ptr))
        self.fim = {name: getattr(C, f"llama_vocab_fim_{name}")(self.vocab) for name in FIM_NAMES}

    def close(self) -> None:
        if self.ptr:
            C.llama_model_free(self.ptr)
            self.ptr = None

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (C.llama_token * n_max)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (C.llama_token * n_max)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, buf: ctypes.Array | None = None, special: bool = True) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        buf = buf if buf is not None else ctypes.create_string_buffer(256)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        buf = ctypes.create_string_buffer(256)
        return b"".join(self.piece(t, buf, special) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        raw = C.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))


KV_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0, "q4_0": C.GGML_TYPE_Q4_0}


def context_params(
    *,
    n_ctx: int,
    n_batch: int,
    n_seq_max: int,
    n_threads: int,
    embeddings: bool = False,
    flash_attention: bool = False,
    kv_cache_type: str = "f16",
    deterministic: bool = False,
) -> "C.llama_context_params":
    """Context settings. `deterministic`: a sequence's numbers never depend on what runs beside it.

    With per-row matrix kernels (LlamaModel(extra_bufts=False) and batch_invariant_kernels()) that
    takes flash attention on a q8_0 cache: for an f16 cache llama.cpp's CPU kernel switches to
    tiled or split-KV variants by batch and cache size, and plain attention sums vector tails that
    move with the cache size. Each sequence has its own KV stream, so its cells stay in position
    order and the micro-batches llama.cpp cuts from a mixed batch do not matter.
    """
    params = C.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = min(n_batch, 512) if not embeddings else n_batch
    params.n_seq_max = n_seq_max
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.embeddings = embeddings
    params.kv_unified = embeddings
    params.swa_full = True  # keep whole sliding-window caches so prefixes can be reused
    params.no_perf = True
    quantized = kv_cache_type in ("q8_0", "q4_0")
    # -1 auto, 0 off, 1 on; a quantized V cache needs flash attention
    params.flash_attn_type = 1 if (flash_attention or quantized or deterministic) else -1
    params.type_k = KV_TYPES.get(kv_cache_type, C.GGML_TYPE_F16)
    params.type_v = KV_TYPES.get(kv_cache_type, C.GGML_TYPE_F16)
    if embeddings:
        params.pooling_type = C.LLAMA_POOLING_TYPE_UNSPECIFIED
    return params


def new_context(model: LlamaModel, params: "C.llama_context_params") -> ctypes.c_void_p:
    ctx = C.llama_init_from_model(model.ptr, params)
    if not ctx:
        raise LoadError("unable to create a llama.cpp context (out of memory for this num_ctx?)")
    return ctx
