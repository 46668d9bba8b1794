"""Reciprocal rank fusion (Cormack, Clarke & Büttcher 2009): score(d) = Σ 1 / (k + rank of d), over
the rankings that hold d, with rank counted from 1 and k = 60."""

from __future__ import annotations

from dataclasses import replace

from .records import Hit

RRF_K = 60


def reciprocal_rank_fusion(rankings: list[list[Hit]], limit: int, k: int = RRF_K) -> list[Hit]:
    scores: dict[int, float] = {}
    hits: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            hits.setdefault(hit.chunk_id, hit)
    best = sorted(scores, key=lambda i: (-scores[i], i))[:limit]
    return [replace(hits[i], score=scores[i]) for i in best]
