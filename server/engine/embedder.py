"""Embeddings through llama.cpp: one pooled vector per input."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import llama_cpp.llama_cpp as C

from .llama import LlamaModel, context_params, default_threads, new_context
from .runner import ContextLengthError


class Embedder:
    """A context with embeddings on, sharing the weights of a loaded model."""

    N_SEQ = 8  # inputs one batch may hold

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_seq: int = N_SEQ, n_threads: int = 0):
        self.model = model
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        # one batch holds at most n_ctx tokens of up to n_seq inputs and the cache is cleared before
        # each, so one unified pool of n_ctx cells holds them all
        params = context_params(
            n_ctx=n_ctx, n_batch=n_ctx, n_seq_max=n_seq, n_threads=n_threads or default_threads(), embeddings=True
        )
        self.ctx = new_context(model, params)
        if C.llama_pooling_type(self.ctx) == C.LLAMA_POOLING_TYPE_NONE:
            # a generative model: mean-pool its hidden states, as Ollama does
            C.llama_free(self.ctx)
            params.pooling_type = C.LLAMA_POOLING_TYPE_MEAN
            self.ctx = new_context(model, params)
        self.memory = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(n_ctx, 0, 1)
        self.lock = threading.Lock()

    def fit(self, tokens: list[int], truncate: bool) -> list[int]:
        if len(tokens) <= self.n_ctx:
            return tokens
        if not truncate:
            raise ContextLengthError("the input length exceeds the context length")
        return tokens[: self.n_ctx]

    def batches(self, inputs: list[list[int]]) -> Iterator[list[list[int]]]:
        """Inputs (each fitted) in groups that fit one batch, in order."""
        i = 0
        while i < len(inputs):
            group: list[list[int]] = []
            total = 0
            while i < len(inputs) and len(group) < self.n_seq and total + len(inputs[i]) <= self.n_ctx:
                group.append(inputs[i])
                total += len(inputs[i])
                i += 1
            if not group:  # one input alone larger than the batch cannot happen after fit()
                raise ContextLengthError("the input length exceeds the context length")
            yield group

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Raw pooled vectors, in input order (call from a worker thread)."""
        return [vector for group in self.batches(inputs) for vector in self.embed_batch(group)]

    def embed_batch(self, group: list[list[int]]) -> list[list[float]]:
        """The vectors of one group from `batches` (call from a worker thread). The context is held
        for one batch at a time: calls from several threads take turns, and close() waits at most
        for the batch under way."""
        with self.lock:
            if self.ctx is None:
                raise RuntimeError("model unloaded")
            return self._run(group)

    def _run(self, group: list[list[int]]) -> list[list[float]]:
        C.llama_memory_clear(self.memory, True)
        b, n = self.batch, 0
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, True
                b.seq_id[n][0] = seq
                n += 1
        b.n_tokens = n
        if self.model.has_encoder and not self.model.has_decoder:
            rc = C.llama_encode(self.ctx, b)
        else:
            rc = C.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"embedding failed with status {rc}")
        dim = C.llama_model_n_embd_out(self.model.ptr) if hasattr(C, "llama_model_n_embd_out") else self.model.n_embd
        if C.llama_pooling_type(self.ctx) == C.LLAMA_POOLING_TYPE_RANK:  # a reranker: n_cls_out scores
            dim = C.llama_model_n_cls_out(self.model.ptr)
        vectors = []
        for seq in range(len(group)):
            ptr = C.llama_get_embeddings_seq(self.ctx, seq)
            vectors.append([float(x) for x in ptr[:dim]])
        return vectors

    def close(self) -> None:
        """Free the context: after an embedding under way has finished; later calls do nothing."""
        with self.lock:
            if self.ctx is None:
                return
            C.llama_batch_free(self.batch)
            C.llama_free(self.ctx)
            self.ctx = None


def normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
