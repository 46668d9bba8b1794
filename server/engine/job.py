"""What the engine is asked to do and what it hands back: no HTTP, no wire formats."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field


@dataclass
class Sampling:
    """Per-request sampler settings (Ollama's option names and defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    grammar: str | None = None  # GBNF, rooted at "root"


# LoRA adapter files and their scales, sorted by file, without zero scales (an adapter with scale 0
# adds nothing, so such a set computes exactly what the base computes). The runner gives llama.cpp each
# sequence's set, and keys its prefix cache by the set.
AdapterSet = tuple[tuple[str, float], ...]


def adapter_set(pairs) -> AdapterSet:
    """The canonical set for (file, scale) pairs: a file named twice gets the sum of its scales."""
    total: dict[str, float] = {}
    for path, scale in pairs:
        total[str(path)] = total.get(str(path), 0.0) + float(scale)
    return tuple(sorted((p, s) for p, s in total.items() if s != 0.0))


@dataclass
class Job:
    """One generation: a tokenised prompt, how to sample, when to stop."""

    tokens: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    num_predict: int = -1  # -1: until end of generation or the context is full
    stop: list[str] = field(default_factory=list)
    num_keep: int = 4  # tokens kept at the start when the context shifts or a prompt is truncated
    shift: bool = True
    truncate: bool = True
    stop_tokens: frozenset[int] = frozenset()  # extra end tokens (e.g. FIM file separators)
    ignore_eos: bool = False  # benchmarks: generate num_predict tokens whatever the model says
    logprobs: int = -1  # -1: none; 0..20: chosen token's logprob plus this many alternatives
    adapters: "AdapterSet" = ()  # LoRA adapters applied while computing this job (see adapter_set)
    alone: bool = False  # reproducible: computed as on an idle server (no reused cells, steps of its own)

    # filled by the engine
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    truncated: int = 0  # prompt tokens dropped to fit the context

    def cancel(self) -> None:
        """Ask the engine to stop this job; its sequence is freed at the next step."""
        self.cancelled.set()


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass
class Piece:
    """Text produced by one step (may be empty while a stop string or a UTF-8 character is pending)."""

    text: str
    token: int
    logprob: TokenLogprob | None = None
    top: list[TokenLogprob] | None = None


@dataclass
class Done:
    reason: str  # "stop" or "length"
    prompt_tokens: int  # prompt length after truncation
    prompt_eval_count: int  # prompt tokens evaluated (cached ones skipped)
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int
    output_tokens: list[int]
    text_tail: str = ""  # held-back text released at the end


@dataclass
class Failed:
    message: str


Event = Piece | Done | Failed
