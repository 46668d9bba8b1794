"""The sampler chain given only the logits that can decide it picks what it picks from all of them.

server/engine/sampling.py hands llama.cpp's chain only the logits at or above a bound when the chain
is decided by a few of the best ones (top-k, greedy, repeat penalties). These tests run the same
settings and seed twice, once that way and once over the whole vocabulary, on the same rows, and
compare every token.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.job import Sampling
from server.engine.sampling import Chain, _best, _decisive

N_VOCAB = 262_144  # Gemma 3's vocabulary


def rows(seed: int, n: int) -> list[np.ndarray]:
    """Logit rows shaped like a language model's: a broad mass and a few strong tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        row = (rng.standard_normal(N_VOCAB) * 2.5).astype(np.float32)
        strong = rng.choice(N_VOCAB, size=8, replace=False)
        row[strong] += rng.uniform(4, 12, size=8).astype(np.float32)
        out.append(row)
    return out


def run(s: Sampling, logits: list[np.ndarray], *, whole: bool, history: list[int]) -> list[int]:
    chain = Chain(None, N_VOCAB, s)
    try:
        if whole:
            chain.top = 0
        else:
            assert chain.top > 0  # these settings take the short path
        chain.feed_history(history)
        return [chain.sample(None, 0, row) for row in logits]
    finally:
        chain.free()


SETTINGS = [
    Sampling(),  # Ollama's defaults: top_k 40, top_p 0.9, temperature 0.8
    Sampling(temperature=0.0),
    Sampling(temperature=1.5, top_k=5, top_p=1.0),
    Sampling(temperature=0.7, top_k=100, top_p=0.95, min_p=0.05),
    Sampling(temperature=0.9, top_k=40, typical_p=0.8),
    Sampling(temperature=0.8, repeat_penalty=1.5, repeat_last_n=64),
    Sampling(temperature=0.0, repeat_penalty=3.0, presence_penalty=1.0, repeat_last_n=32),
    Sampling(temperature=1.0, frequency_penalty=2.0, repeat_last_n=16, top_k=20),
]


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: repr(s)[9:60])
def test_the_short_path_picks_what_the_whole_vocabulary_picks(s):
    logits = rows(1, 60)
    # a history holding the best tokens of the first rows, so penalties move the winners
    history = [int(np.argmax(r)) for r in logits[:20]] + [int(t) for t in np.argsort(logits[0])[-30:]]
    for seed in (1, 2, 3):
        s.seed = seed
        short = run(s, logits, whole=False, history=history)
        whole = run(s, logits, whole=True, history=history)
        assert short == whole
    if s.temperature > 0:
        assert len(set(short)) > 1  # the seeds and rows really sample, not one token every time


def test_penalised_winners_are_replaced_by_tokens_that_were_in_the_candidates():
    """Penalties that push every strong token below the bound's own rank: the chain must still see the
    tokens that take their places."""
    rng = np.random.default_rng(7)
    row = (rng.standard_normal(N_VOCAB)).astype(np.float32)
    best = np.argsort(row)[-64:]
    row[best] += 20.0  # 64 far ahead of the rest
    s = Sampling(temperature=0.0, repeat_penalty=1e6, repeat_last_n=64, seed=1)
    short = run(s, [row], whole=False, history=[int(t) for t in best])
    whole = run(s, [row], whole=True, history=[int(t) for t in best])
    assert short == whole and short[0] not in set(best.tolist())


def test_the_bound_keeps_every_one_of_the_best_logits():
    for seed in range(20):
        row = rows(100 + seed, 1)[0]
        for top in (1, 40, 104):
            ids = _best(row, top)
            assert ids is not None and len(ids) >= top and len(ids) < N_VOCAB // 4
            assert set(np.argsort(row)[-top:].tolist()) <= set(ids.tolist())
            assert np.all(np.diff(ids) > 0)  # ascending ids: the whole row's order
    row = np.concatenate([rows(9, 1)[0], np.float32([50.0, -1.0, 49.0])])  # the best two past the columns
    ids = _best(row, 40)
    assert {N_VOCAB, N_VOCAB + 2} <= set(ids.tolist()) and N_VOCAB + 1 not in set(ids.tolist())
    assert set(np.argsort(row)[-40:].tolist()) <= set(ids.tolist())


def test_settings_any_logit_can_decide_take_the_whole_vocabulary():
    for s in (Sampling(top_k=0), Sampling(top_k=0, temperature=0.5, top_p=0.5),
              Sampling(repeat_penalty=1.2, repeat_last_n=-1), Sampling(grammar='root ::= "a"')):
        assert _decisive(s) == 0
    assert Chain(None, 4096, Sampling()).top == 0  # a vocabulary too small to gain from it
    row = rows(5, 1)[0]
    row[::64] = np.nan
    assert _best(row, 40) is None  # a NaN bound: the whole row
    row = rows(6, 1)[0]
    row[12345] = np.nan  # one NaN: the bound is a number, but the NaN's column would be left out
    assert _best(row, 40) is None
    assert _best(row[:1000], 40) is None  # a sample too small to bound


def test_a_row_with_masked_logits_and_ties_agrees_greedy():
    row = np.full(N_VOCAB, -np.inf, dtype=np.float32)
    row[1000:1010] = 3.0  # ten tied best tokens, the rest masked
    s = Sampling(temperature=0.0, seed=1)
    assert run(s, [row], whole=False, history=[]) == run(s, [row], whole=True, history=[]) == [1000]
