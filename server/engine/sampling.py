"""Native llama.cpp sampler chains built from a request's settings.

Without a grammar a sequence samples with one `llama_sampler_sample` call. With a grammar,
applying it to every candidate of a 100k+ vocabulary each step is slow, so (as llama-server
does) the token is first picked without the grammar and only checked against it; the full
grammar pass runs only when that token is rejected.
"""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as C
import numpy as np

from .job import Sampling

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class SamplingError(ValueError):
    """The settings cannot become a sampler (e.g. a grammar llama.cpp rejects)."""


class Chain:
    """A sampler chain for one sequence, plus its grammar and penalties stages."""

    def __init__(self, vocab: ctypes.c_void_p, n_vocab: int, s: Sampling):
        params = C.llama_sampler_chain_default_params()
        params.no_perf = True
        self.ptr = C.llama_sampler_chain_init(params)
        self.n_vocab = n_vocab
        self.penalties = None
        self.grammar = None
        # llama.cpp can run top-k/top-p/min-p/temperature/dist/greedy chains on the backend (GPU)
        self.backend_ok = not s.grammar and s.repeat_penalty == 1.0 and s.presence_penalty == 0.0 \
            and s.frequency_penalty == 0.0 and not (0 < s.typical_p < 1)
        try:
            if s.grammar:
                self.grammar = C.llama_sampler_init_grammar(vocab, s.grammar.encode("utf-8"), b"root")
                if not self.grammar:
                    raise SamplingError("failed to parse grammar")
            if s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0:
                last_n = s.repeat_last_n if s.repeat_last_n >= 0 else -1
                self.penalties = C.llama_sampler_init_penalties(
                    n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                )
                C.llama_sampler_chain_add(self.ptr, self.penalties)
            if s.temperature <= 0:
                C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_greedy())
            else:
                if s.top_k > 0:
                    C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_top_k(s.top_k))
                if 0 < s.typical_p < 1:
                    C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_typical(s.typical_p, 1))
                if 0 < s.top_p < 1:
                    C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_top_p(s.top_p, 1))
                if s.min_p > 0:
                    C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_min_p(s.min_p, 1))
                C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_temp(s.temperature))
                seed = s.seed if s.seed >= 0 else C.LLAMA_DEFAULT_SEED
                C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            self.free()
            raise
        self._cand: np.ndarray | None = None  # candidates for sampling from numpy logits, made on first use
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._arr = C.llama_token_data_array()
        self._one_arr = C.llama_token_data_array()

    def feed_history(self, tokens: list[int]) -> None:
        """Let the repeat penalties see the prompt (never the grammar: it must start fresh)."""
        if self.penalties is not None:
            for t in tokens:
                C.llama_sampler_accept(self.penalties, t)

    def sample(self, ctx: ctypes.c_void_p, idx: int, logits: np.ndarray | None = None) -> int:
        """Pick the next token from output row `idx` (or from `logits`, kept from an earlier step)
        and accept it into the chain (and grammar)."""
        if self.grammar is None and logits is None:
            return C.llama_sampler_sample(self.ptr, ctx, idx)
        if logits is None:
            logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        token = self._pick(logits, with_grammar=False)  # what llama_sampler_sample does, on these logits
        if self.grammar is not None:
            if not self._allowed(token):
                token = self._pick(logits, with_grammar=True)
            C.llama_sampler_accept(self.grammar, token)
        C.llama_sampler_accept(self.ptr, token)
        return token

    def _pick(self, logits: np.ndarray, *, with_grammar: bool) -> int:
        if self._cand is None:
            self._cand = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(self.n_vocab, dtype=np.int32)
        cand = self._cand  # the chain reorders it in place: refill it every time
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = self._arr
        arr.data = cand.ctypes.data_as(ctypes.POINTER(C.llama_token_data))
        arr.size = self.n_vocab
        arr.selected = -1
        arr.sorted = False
        if with_grammar:
            C.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        C.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        return int(cand["id"][arr.selected])

    def _allowed(self, token: int) -> bool:
        one = self._one
        one["id"], one["logit"], one["p"] = token, 1.0, 0.0
        arr = self._one_arr
        arr.data = one.ctypes.data_as(ctypes.POINTER(C.llama_token_data))
        arr.size, arr.selected, arr.sorted = 1, -1, False
        C.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return bool(np.isfinite(one["logit"][0]))

    def free(self) -> None:
        if self.ptr:
            C.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar:
            C.llama_sampler_free(self.grammar)
            self.grammar = None
