"""Native llama.cpp sampler chains built from a request's settings."""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as C

from .job import Sampling


class SamplingError(ValueError):
    """The settings cannot become a sampler (e.g. a grammar llama.cpp rejects)."""


class Chain:
    """A sampler chain plus direct access to its penalties stage (fed the prompt's tail)."""

    def __init__(self, vocab: ctypes.c_void_p, n_vocab: int, s: Sampling):
        params = C.llama_sampler_chain_default_params()
        params.no_perf = True
        self.ptr = C.llama_sampler_chain_init(params)
        self.penalties = None
        try:
            if s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0:
                last_n = s.repeat_last_n if s.repeat_last_n >= 0 else -1
                self.penalties = C.llama_sampler_init_penalties(
                    last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                )
                C.llama_sampler_chain_add(self.ptr, self.penalties)
            if s.grammar:
                grammar = C.llama_sampler_init_grammar(vocab, s.grammar.encode("utf-8"), b"root")
                if not grammar:
                    raise SamplingError("failed to parse grammar")
                C.llama_sampler_chain_add(self.ptr, grammar)
            if s.temperature <= 0:
                C.llama_sampler_chain_add(self.ptr, C.llama_sampler_init_greedy())
                return
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

    def feed_history(self, tokens: list[int]) -> None:
        """Let the repeat penalties see the prompt (never the grammar: it must start fresh)."""
        if self.penalties is not None:
            for t in tokens:
                C.llama_sampler_accept(self.penalties, t)

    def sample(self, ctx: ctypes.c_void_p, idx: int) -> int:
        """Pick the next token from output row `idx` and accept it into the chain."""
        return C.llama_sampler_sample(self.ptr, ctx, idx)

    def free(self) -> None:
        if self.ptr:
            C.llama_sampler_free(self.ptr)
            self.ptr = None
