"""Running exported models (onnx_export.py) on onnxruntime: sentence embeddings and cross-encoder scores.

The CUDA execution provider is used where `onnxruntime-gpu` finds a GPU, the CPU one otherwise.
Tokenizing uses the `tokenizers` library on the stored tokenizer.json, so serving needs neither torch
nor transformers. A loaded model is kept per blob digest (blobs are named by content).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import BadRequest
from server.store import manifest as mf
from server.store.store import Entry, Store

from .errors import require

BATCH = 32  # texts (or query-document pairs) per onnxruntime run


@dataclass
class Encoded:
    ids: np.ndarray  # int64 [batch, sequence]
    mask: np.ndarray
    types: np.ndarray
    tokens: int  # real (unpadded) tokens in the batch


class OnnxModel:
    """One exported model: an onnxruntime session, its tokenizer and its config."""

    def __init__(self, store: Store, entry: Entry, threads: int = 0):
        ort = require("onnxruntime", "ONNX models")
        tokenizers = require("tokenizers", "ONNX models")
        manifest = entry.manifest
        self.name = entry.name.display if isinstance(entry.name.display, str) else str(entry.name)
        self.config: dict[str, Any] = json.loads(store.read_blob(manifest.layer(mf.ONNX_CONFIG).digest))
        self.task: str = self.config["task"]
        self.max_length: int = int(self.config.get("max_length") or 512)
        self.dimensions: int = int(self.config.get("dimensions") or 0)
        self.tokenizer = tokenizers.Tokenizer.from_str(store.read_blob(manifest.layer(mf.ONNX_TOKENIZER).digest).decode())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # the same tokenizer cutting to max_length as transformers' truncation=True does (longest_first)
        self.truncating = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())
        self.truncating.enable_truncation(self.max_length)
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        path = str(store.blob_path(manifest.layer(mf.ONNX_MODEL).digest))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.inputs = [i.name for i in self.session.get_inputs()]
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad if pad is not None else 0

    # ---- tokens ------------------------------------------------------------------------------

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text without special tokens (what chunking measures)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _encode(self, items: list, truncate: bool) -> Encoded:
        if truncate:
            encodings = self.truncating.encode_batch(items)
        else:
            encodings = self.tokenizer.encode_batch(items)
            for i, e in enumerate(encodings):
                if len(e.ids) > self.max_length:
                    raise BadRequest(f"input {i} has {len(e.ids)} tokens, more than the model's {self.max_length}: "
                                     "the input length exceeds the context length")
        rows = [(e.ids, e.type_ids) for e in encodings]
        width = max(len(r[0]) for r in rows)
        out_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        out_types = np.zeros((len(rows), width), dtype=np.int64)
        for i, (ids, types) in enumerate(rows):
            out_ids[i, :len(ids)] = ids
            mask[i, :len(ids)] = 1
            out_types[i, :len(types)] = types
        return Encoded(out_ids, mask, out_types, int(mask.sum()))

    def _run(self, enc: Encoded) -> np.ndarray:
        feed = {"input_ids": enc.ids, "attention_mask": enc.mask, "token_type_ids": enc.types}
        return self.session.run(None, {name: feed[name] for name in self.inputs})[0]

    # ---- tasks -------------------------------------------------------------------------------

    def embed(self, texts: list[str], truncate: bool = True, stop: threading.Event | None = None
              ) -> tuple[np.ndarray, int]:
        """L2-normalised mean-pooled vectors [len(texts), dimensions] and the tokens read."""
        if self.task != "embedding":
            raise BadRequest(f"model '{self.name}' does not support embeddings")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        tokens = 0
        for start in range(0, len(order), BATCH):
            if stop is not None and stop.is_set():
                break
            rows = order[start:start + BATCH]
            enc = self._encode([texts[i] for i in rows], truncate)
            hidden = self._run(enc)
            mask = enc.mask[..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            tokens += enc.tokens
        return out, tokens

    def score(self, query: str, documents: list[str], stop: threading.Event | None = None) -> tuple[list[float], int]:
        """The cross-encoder's raw logit for each (query, document) pair, truncated to max_length."""
        if self.task != "rerank":
            raise BadRequest(f"model '{self.name}' is not a reranker")
        scores: list[float] = []
        tokens = 0
        for start in range(0, len(documents), BATCH):
            if stop is not None and stop.is_set():
                break
            enc = self._encode([(query, d) for d in documents[start:start + BATCH]], truncate=True)
            scores += [float(x) for x in self._run(enc).reshape(len(enc.ids), -1)[:, 0]]
            tokens += enc.tokens
        return scores, tokens


class OnnxModels:
    """Loaded ONNX models, one per graph blob, loaded on first use (thread-safe)."""

    def __init__(self, store: Store, threads: int = 0):
        self.store = store
        self.threads = threads
        self._loaded: dict[str, OnnxModel] = {}
        self._lock = threading.Lock()

    def get(self, entry: Entry) -> OnnxModel:
        key = entry.manifest.layer(mf.ONNX_MODEL).digest + entry.manifest.layer(mf.ONNX_CONFIG).digest
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                model = self._loaded[key] = OnnxModel(self.store, entry, self.threads)
            return model
