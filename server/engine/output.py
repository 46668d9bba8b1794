"""What a sequence hands back with each token: text cut at stop strings, and log-probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .job import TokenLogprob


def apply_stops(held: str, text: str, stops: list[str]) -> tuple[str, str, bool]:
    """(text to send, text held back, stopped): the new text after what was held back, cut at the first
    stop string; a tail that may still become a stop string is held back."""
    held += text
    cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return held[:cut], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(held)), hold, -1):
            if s.startswith(held[-k:]):
                hold = k
                break
    return held[: len(held) - hold], held[len(held) - hold:] if hold else "", False


def token_logprobs(logits: np.ndarray, token: int, top_n: int,
                   piece: Callable[[int], bytes]) -> tuple[TokenLogprob, list[TokenLogprob]]:
    """The chosen token's log-probability under `logits`, and the `top_n` most likely tokens'."""
    m = float(logits.max())
    lse = m + math.log(float(np.exp(logits - m).sum()))

    def entry(t: int) -> TokenLogprob:
        text = piece(int(t))
        return TokenLogprob(text.decode("utf-8", errors="replace"), float(logits[t]) - lse, list(text))

    top: list[TokenLogprob] = []
    if top_n > 0:
        idx = np.argpartition(-logits, top_n)[:top_n]
        top = [entry(int(t)) for t in idx[np.argsort(-logits[idx])]]
    return entry(token), top
