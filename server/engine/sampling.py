"""Native llama.cpp sampler chains built from a request's settings.

Without a grammar a sequence samples with one `llama_sampler_sample` call. With a grammar,
applying it to every candidate of a 100k+ vocabulary each step is slow, so (as llama-server
does) the token is first picked without the grammar and only checked against it; the full
grammar pass runs only when that token is rejected.

Most chains are decided by a few of the best logits: top-k keeps k, greedy one, and repeat
penalties can only lower the logits of the tokens in their window. For those chains the candidates
handed to llama.cpp are only the logits at or above a bound that at least `top` of them reach
(`_best`). The chain then does its usual work on a few dozen candidates instead of the whole
vocabulary (262,144 for Gemma 3), and picks the token it would have picked from all of them: every
token the chain could keep is among them, in the same order.
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
        self.top = _decisive(s)
        if self.n_vocab // _ROWS < 4 * self.top:
            self.top = 0  # a vocabulary too small to gain from it
        self._cand: np.ndarray | None = None  # candidates for sampling from numpy logits, grown on use
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
        if self.grammar is None and logits is None and not self.top:
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
        ids = None if with_grammar or not self.top else _best(logits, self.top)
        n = self.n_vocab if ids is None else len(ids)
        if self._cand is None or len(self._cand) < n:  # sized to what is asked of it: a few dozen, usually
            self._cand = np.zeros(n, dtype=_TOKEN_DATA)
        cand = self._cand[:n]  # the chain reorders it in place: refill it every time
        if ids is None:
            cand["id"] = np.arange(n, dtype=np.int32)
            cand["logit"] = logits
        else:
            cand["id"] = ids
            cand["logit"] = logits[ids]
        cand["p"] = 0.0
        arr = self._arr
        arr.data = cand.ctypes.data_as(ctypes.POINTER(C.llama_token_data))
        arr.size = n
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


_ROWS = 64  # the row is read as 64 rows of n_vocab/64 columns; a column's best logit is its peak


def _decisive(s: Sampling) -> int:
    """How many of the best logits decide this chain's token, or 0 when any candidate may matter."""
    if s.grammar:
        return 0
    penalised = 0  # tokens the penalties may push down, out of the best ones
    if s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0:
        if not 0 <= s.repeat_last_n <= 512:
            return 0
        penalised = s.repeat_last_n
    if s.temperature <= 0:
        return 1 + penalised
    return s.top_k + penalised if s.top_k > 0 else 0


def _best(logits: np.ndarray, top: int) -> np.ndarray | None:
    """Ids (ascending) of every logit at or above the `top`-th highest column peak.

    The peaks are `top` distinct logits at or above that bound, so the row's `top` best logits all
    reach it; a logit that reaches it lies in a column whose peak does, so only those columns are
    read. None where there are too few columns or a NaN among the logits."""
    cols = len(logits) // _ROWS
    if cols < 4 * top:
        return None
    n = cols * _ROWS
    peaks = logits[:n].reshape(_ROWS, cols).max(axis=0)
    ranked = np.partition(peaks, cols - top)
    if np.isnan(ranked[cols - top:]).any():  # NaNs sort above every number: all of them land here
        return None
    bound = ranked[cols - top]
    chosen = np.flatnonzero(peaks >= bound)
    ids = (np.arange(0, n, cols)[:, None] + chosen).ravel()
    ids = ids[logits[ids] >= bound]
    if n < len(logits):
        ids = np.concatenate([ids, n + np.flatnonzero(logits[n:] >= bound)])
    ids.sort()
    return ids.astype(np.int32, copy=False)
