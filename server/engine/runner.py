"""Continuous batching over one llama.cpp context.

One decode thread per loaded model. Each step it admits waiting jobs into free sequences,
packs one token of every generating sequence plus chunks of new prompts into a single
`llama_batch`, calls `llama_decode` once, samples each sequence with its own native chain
and posts every produced piece to the asyncio loop in one call. Each sequence has its own KV
stream; rows go in sequence order, and idle sequences between running ones may get a throwaway
token, so that llama.cpp computes a step in as few passes over the weights as it can (`_pads`).

A sequence keeps its tokens in the KV cache after its job ends; the next job is placed in
the idle sequence sharing the longest prefix with its prompt, and only the rest is computed.
Requests running at the same time share prefixes too (a system prompt, tool definitions): a
prompt copies the cells another sequence holds of it instead of computing them, and waits a step
for a prompt computing them right now (`_borrow`). A sequence also keeps the logits that followed
its last prompt: a request repeating that prompt exactly samples its first token from them, so it
computes nothing and gives the same text (computing the last token again, in a batch of another
shape, could give other numbers).

Reproducible jobs (`Job.alone`: a seeded request when the kernels are not batch-invariant) get the
numbers they would get on an idle server: they never reuse cells (cached, copied or kept logits)
computed in another batch, and each decodes in steps of its own, never beside other sequences' rows,
so its batches have the shape they have alone. They take turns with the other sequences, a few
steps each (`_turn`).

LoRA adapters: a job names an adapter set (files and scales, `Job.adapters`). With Corral's build of
llama.cpp each sequence has its own set (`set_adapters_lora_seq`): the graph adds the term of every
adapter in use to each matrix product, each token's share scaled by its own sequence's scale (zero
where it does not use it), so sequences on different sets share one decode and each gets the numbers
it gets alone. A llama.cpp without that patch applies one set to a whole `llama_decode`: then each
step decodes the sequences of one set, and the sets with work take turns. The prefix cache is keyed by
the set either way: cells computed under one set are never reused, copied or kept logits under
another. Adapters load on first use on this model's weights, once, and stay until `drop_adapter`.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import concurrent.futures
import ctypes
import logging
import threading
import time
from collections.abc import AsyncIterator

import llama_cpp.llama_cpp as C
import numpy as np

from .job import AdapterSet, Done, Event, Failed, Job, Piece
from .llama import LlamaModel, LoadError, context_params, default_threads, new_context, set_adapters_lora_seq
from .output import apply_stops, token_logprobs
from .sampling import Chain

log = logging.getLogger("corral.engine")


# a job without num_predict ends after this many contexts' worth of tokens (Ollama's bound), so that a
# model looping with context shift on cannot hold a sequence forever
OPEN_ENDED_LIMIT = 10

# a prompt waits for, or copies, another sequence's cells only when that spares computing at least
# this many of its tokens (gemma3:270m on 2 CPU cores: 16 prompt tokens take about 50 ms, a decode
# step of four streams about 41 ms, so waiting a step for them pays)
BORROW_MIN = 16
# ...and from a source holding at most this many times as many cells as are gained: llama.cpp copies
# a sequence's state whole (there: 0.4 ms for 22 cells, against 3 ms to compute one prompt token)
BORROW_SPAN = 8

# an idle sequence is given to a new prompt for what they share only when that is at least this many
# tokens or half the prompt; otherwise the prompt goes to the least recently used idle sequence, so
# that a sequence's cached prompt is not given up to spare one token (the BOS every prompt shares)
REUSE_MIN = 16

# steps a group of sequences (one reproducible job, or one adapter set on a llama.cpp without per-sequence
# adapters) decodes in a row while others wait: gemma3:270m on 2 CPU cores, a change of adapter set costs
# 4-8 ms against 17-25 ms for a one-row step
TURN_STEPS = 4


class ContextLengthError(ValueError):
    """The prompt does not fit the context and truncation was turned off."""


class _Seq:
    """One llama.cpp sequence: the tokens its KV cache holds and the job using it."""

    def __init__(self, seq_id: int):
        self.id = seq_id
        self.cache: list[int] = []  # tokens whose KV entries exist, position = index
        # (prompt, the logits that followed it, whether a reproducible job computed them: as on an idle server)
        self.saved: tuple[list[int], np.ndarray, bool] | None = None
        self.adapters: AdapterSet = ()  # the adapter set its cache was computed under
        self.last_used = 0.0
        self.reset_job()

    def reset_job(self) -> None:
        self.job: Job | None = None
        self.chain: Chain | None = None
        self.prompt: list[int] = []
        self.fed = 0  # prompt tokens placed in the cache so far
        self.next_token = -1  # sampled but not yet decoded
        self.generated: list[int] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # text held back because it may start a stop string
        self.out_row = -1  # batch row of this sequence's logits in the current step
        self.on_backend = False  # its chain runs inside llama_decode (backend sampling)
        self.cached = 0
        self.t_admit = 0
        self.t_first = 0

    def forget(self, start: int, stop: int | None = None) -> None:
        """Drop cache entries [start, stop); the kept logits go too once their prompt is cut."""
        del self.cache[start:stop]
        if self.saved is not None and start < len(self.saved[0]):
            self.saved = None

    @property
    def generating(self) -> bool:
        return self.job is not None and self.fed == len(self.prompt)


class Runner:
    """A loaded model serving up to `n_parallel` sequences of `n_ctx` tokens each."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_parallel: int = 4,
        n_batch: int = 512,
        n_threads: int = 0,
        flash_attention: bool = False,
        kv_cache_type: str = "f16",
        prefix_cache: bool = True,
        deterministic: bool = False,
        backend_sampling: bool = False,
    ):
        self.model = model
        self.backend_sampling = backend_sampling
        self.prefix_cache = prefix_cache
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.n_batch = max(n_batch, n_parallel)
        self.n_threads = n_threads or default_threads()
        params = context_params(
            n_ctx=n_ctx * n_parallel,
            n_batch=self.n_batch,
            n_seq_max=n_parallel,
            n_threads=self.n_threads,
            flash_attention=flash_attention,
            kv_cache_type=kv_cache_type,
            deterministic=deterministic,
        )
        try:
            self.ctx = new_context(model, params)
        except LoadError:
            if kv_cache_type == "f16":
                raise
            # e.g. a q8_0 cache needs head sizes divisible by 32: fall back to f16, as Ollama does
            log.warning("KV cache type %s is not supported by this model; using f16", kv_cache_type)
            params.type_k = params.type_v = C.GGML_TYPE_F16
            self.ctx = new_context(model, params)
        self.memory = C.llama_get_memory(self.ctx)
        self.can_shift = bool(C.llama_memory_can_shift(self.memory))
        # a recurrent state is the end of its sequence, not a prefix that can be cut and shared
        self.can_borrow = prefix_cache and n_parallel > 1 and not (
            C.llama_model_is_recurrent(model.ptr) or C.llama_model_is_hybrid(model.ptr))
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.seqs = [_Seq(i) for i in range(n_parallel)]
        self._pending: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._piece_buf = ctypes.create_string_buffer(256)
        self.active = 0  # jobs admitted or waiting: the scheduler never unloads a busy runner
        self.stats = {"prompt_tokens": 0, "generated_tokens": 0, "steps": 0, "padding_tokens": 0,
                      "adapter_switches": 0}
        self._loras: dict[str, int] = {}  # adapter file -> llama_adapter_lora pointer (decode thread only)
        self._applied: AdapterSet = ()  # the set llama.cpp applies to the next decode (one set per decode)
        # per-sequence adapter sets (Corral's llama.cpp): what llama.cpp holds for each sequence
        self.per_seq_adapters = set_adapters_lora_seq is not None
        self._seq_applied: dict[int, AdapterSet] = {}
        self._last_group: tuple | None = None  # the group the previous step decoded (whose turn is next)
        self._turn_steps = 0  # steps the current group has had in a row
        self._to_drop: set[str] = set()  # adapter files to free once no job uses them
        self._to_load: list[tuple[str, concurrent.futures.Future]] = []  # preloads asked for
        self.n_ubatch = C.llama_n_ubatch(self.ctx)
        self._thread = threading.Thread(target=self._loop, name="corral-decode", daemon=True)
        self._thread.start()

    # ---- public API (called from the asyncio loop) -------------------------------------

    def prompt_limit(self, num_predict: int) -> int:
        """The longest prompt a job may bring: room for num_predict tokens, but at least half the context."""
        if num_predict > 0:
            return max(self.n_ctx // 2, self.n_ctx - num_predict)
        return self.n_ctx - 1

    def fit(self, job: Job) -> None:
        """Make the prompt fit the context: truncate (keeping num_keep) or refuse."""
        limit = self.prompt_limit(job.num_predict)
        if len(job.tokens) <= limit:
            return
        if not job.truncate:
            raise ContextLengthError("the input length exceeds the context length")
        keep = min(max(job.num_keep, 0), limit // 2)
        drop = len(job.tokens) - limit
        job.tokens = job.tokens[:keep] + job.tokens[keep + drop:]
        job.truncated = drop
        log.warning("truncating input prompt: dropped %d tokens, kept %d", drop, len(job.tokens))

    async def generate(self, job: Job) -> AsyncIterator[Event]:
        """Run a job, yielding its events; leaving early cancels it."""
        if not job.tokens:
            raise ValueError("empty prompt")
        self.fit(job)
        job.loop = asyncio.get_running_loop()
        job.events = asyncio.Queue()
        with self._wake:
            self.active += 1
            self._pending.append(job)
            self._wake.notify()
        finished = False
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, (Done, Failed)):
                    finished = True
                yield event
                if finished:
                    return
        finally:
            if not finished:
                job.cancel()
                with self._wake:
                    # still waiting for a sequence: leave the queue now rather than at the next free
                    # sequence, so it no longer counts toward OLLAMA_MAX_QUEUE (_admit pops under
                    # the same lock: whichever sees the job first takes it out and counts it)
                    for i, waiting in enumerate(self._pending):
                        if waiting is job:
                            del self._pending[i]
                            self.active -= 1
                            break
                    self._wake.notify()

    def load_adapter(self, path: str) -> concurrent.futures.Future:
        """Load an adapter now rather than at its first job; the future ends with the load (or its error)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            if self._closing:
                future.set_exception(RuntimeError("model unloaded"))
                return future
            self._to_drop.discard(str(path))
            self._to_load.append((str(path), future))
            self._wake.notify()
        return future

    def drop_adapter(self, path: str) -> None:
        """Free a loaded adapter once no running job uses it (a later job naming it loads it again)."""
        with self._wake:
            self._to_drop.add(str(path))
            self._to_load = [(p, f) for p, f in self._to_load if p != str(path)]
            self._wake.notify()

    def loaded_adapters(self) -> list[str]:
        return list(self._loras)

    def close(self) -> None:
        """Stop the decode thread (failing what is left) and free the context; later calls do nothing."""
        with self._wake:
            if self._closing:
                return
            self._closing = True
            self._wake.notify()
        self._thread.join()
        for seq in self.seqs:
            if seq.chain:
                seq.chain.free()
        C.llama_batch_free(self.batch)
        C.llama_free(self.ctx)
        self.ctx = None
        for ptr in self._loras.values():  # after the context that applied them
            C.llama_adapter_lora_free(ptr)
        self._loras.clear()

    # ---- decode thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._pending and not any(s.job for s in self.seqs) \
                        and not self._to_drop and not self._to_load:
                    self._wake.wait()
                if self._closing:
                    break
            out: list[tuple[Job, Event]] = []
            try:
                self._adapter_requests()
                self._admit(out)
                self._step(out)
            except Exception as exc:  # never let the loop die: fail what was running
                log.exception("decode step failed")
                for seq in self.seqs:
                    if seq.job is not None:
                        self._finish_failed(seq, f"generation failed: {exc}", out)
            self._post(out)
        # fail whatever is still waiting
        out = []
        for seq in self.seqs:
            if seq.job is not None:
                self._finish_failed(seq, "model unloaded", out)
        with self._wake:  # generate() may be taking a cancelled job out at the same time
            for _, future in self._to_load:
                future.set_exception(RuntimeError("model unloaded"))
            self._to_load = []
            while self._pending:
                job = self._pending.popleft()
                out.append((job, Failed("model unloaded")))
                self.active -= 1
        self._post(out)

    def _post(self, out: list[tuple[Job, Event]]) -> None:
        """Hand a step's events to the loop(s) in one call per loop."""
        if not out:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, event in out:
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # loop closed
                pass

    def _admit(self, out: list[tuple[Job, Event]]) -> None:
        with self._wake:
            while self._pending:
                free = [s for s in self.seqs if s.job is None]
                if not free:
                    return
                job = self._pending.popleft()
                if job.cancelled.is_set():
                    self.active -= 1
                    continue
                try:
                    self._start(job, free, out)
                except Exception as exc:  # this job cannot start; the others go on
                    log.exception("could not start a job")
                    self.active -= 1
                    out.append((job, Failed(f"generation failed: {exc}")))

    def _start(self, job: Job, free: list[_Seq], out: list[tuple[Job, Event]]) -> None:
        if not self._load_adapters(job, out):
            return
        # the idle sequence sharing the longest prefix with this prompt, computed under the same
        # adapter set, if that prefix is worth keeping (REUSE_MIN); else the least recently used
        def shared(s: _Seq) -> int:
            return common_prefix(s.cache, job.tokens) if s.adapters == job.adapters else 0

        def worth(s: _Seq) -> int:
            n = shared(s)
            return n if n >= REUSE_MIN or 2 * n >= len(job.tokens) else 0

        best = max(free, key=lambda s: (worth(s), -s.last_used))
        keep = shared(best) if self.prefix_cache else 0
        if keep and C.llama_memory_seq_pos_min(self.memory, best.id) > 0:
            keep = 0  # its first cells are gone (a sliding-window cache reuses cells it masks): start over
        # all of it cached, and the logits that followed it kept: nothing to compute
        whole = keep == len(job.tokens) and best.saved is not None and best.saved[0] == job.tokens \
            and not self.backend_sampling
        if job.alone and not (whole and best.saved[2]):
            whole, keep = False, 0  # only an idle server's numbers: those of a reproducible job's own run
        if not whole:
            keep = min(keep, len(job.tokens) - 1)  # the last prompt token is computed: it gives the logits
        if keep < len(best.cache):
            if not C.llama_memory_seq_rm(self.memory, best.id, keep, -1):
                C.llama_memory_seq_rm(self.memory, best.id, -1, -1)
                keep = 0
            best.forget(keep)
        best.adapters = job.adapters
        try:
            chain = Chain(self.model.vocab, self.model.n_vocab, job.sampling)
        except ValueError as exc:
            self.active -= 1
            out.append((job, Failed(str(exc))))
            return
        chain.feed_history(job.tokens[-job.sampling.repeat_last_n:] if job.sampling.repeat_last_n > 0 else job.tokens)
        best.reset_job()
        best.job, best.chain, best.prompt = job, chain, job.tokens
        if self.backend_sampling and chain.backend_ok and job.logprobs < 0:
            best.on_backend = bool(C.llama_set_sampler(self.ctx, best.id, chain.ptr))
        best.fed = best.cached = keep
        best.t_admit = time.perf_counter_ns()
        if keep:
            log.info("prefix cache: reusing %d of %d prompt tokens (sequence %d)", keep, len(job.tokens), best.id)
        if whole:
            self._sampled(best, best.t_admit, out, logits=best.saved[1])

    def _step(self, out: list[tuple[Job, Event]]) -> None:
        for seq in self.seqs:
            if seq.job is not None and seq.job.cancelled.is_set():
                self._release(seq)
        turn = self._turn()
        # how many tokens each sequence computes: one for every generating sequence first (running
        # streams never wait on prompts), then prompt chunks, as much as the batch holds
        counts: dict[int, int] = {}
        room = self.n_batch
        for seq in self.seqs:
            if seq.job is not None and self._group(seq) == turn and seq.generating:
                if len(seq.cache) >= self.n_ctx and not self._shift(seq, out):
                    continue
                counts[seq.id] = 1
                room -= 1
        for seq in self.seqs:
            if seq.job is not None and self._group(seq) == turn and not seq.generating and room > 0 \
                    and not self._borrow(seq):
                counts[seq.id] = min(len(seq.prompt) - seq.fed, room)
                room -= counts[seq.id]
        if not counts:
            return
        pads = self._pads(counts, room)
        # rows in sequence order, each sequence's rows together: the order llama.cpp's split expects
        batch, n = self.batch, 0
        for seq in self.seqs:
            seq.out_row = -1
            if seq.id in pads:  # a throwaway token after its cache, removed again below
                n = self._add(seq, seq.cache[-1] if seq.cache else 0, n, logits=False, keep=False)
            elif seq.id in counts and seq.generating:
                n = self._add(seq, seq.next_token, n, logits=True)
            elif seq.id in counts:
                for _ in range(counts[seq.id]):
                    token = seq.prompt[seq.fed]
                    seq.fed += 1
                    n = self._add(seq, token, n, logits=seq.fed == len(seq.prompt))
        batch.n_tokens = n
        if self.per_seq_adapters:
            self._apply_per_seq()
        else:
            self._apply(turn[0])
        rc = C.llama_decode(self.ctx, batch)
        for i in pads:
            C.llama_memory_seq_rm(self.memory, i, len(self.seqs[i].cache), -1)
        self.stats["padding_tokens"] += len(pads)
        if rc != 0:
            for seq in self.seqs:
                if seq.id in counts:
                    C.llama_memory_seq_rm(self.memory, seq.id, -1, -1)
                    seq.forget(0)
                    if seq.job is not None:
                        self._finish_failed(seq, f"llama_decode failed with status {rc}", out)
            return
        self.stats["steps"] += 1
        now = time.perf_counter_ns()
        for seq in self.seqs:
            if seq.out_row >= 0 and seq.job is not None:
                self._sampled(seq, now, out)

    def _group(self, seq: _Seq) -> tuple:
        """Sequences decoded together: a reproducible job alone, and (without per-sequence adapters)
        one adapter set."""
        return () if self.per_seq_adapters else seq.adapters, (seq.id if seq.job is not None and seq.job.alone else -1)

    def _turn(self) -> tuple:
        """The group this step decodes: the groups of running jobs take turns, in a fixed order, each
        for up to TURN_STEPS steps while it has work (a change of adapter set costs llama.cpp a new
        graph reservation, 4-8 ms on the development CPU: a turn of several steps spreads it)."""
        groups = sorted({self._group(seq) for seq in self.seqs if seq.job is not None})
        if len(groups) <= 1:
            turn = groups[0] if groups else ((), -1)
        elif self._last_group in groups and self._turn_steps < TURN_STEPS:
            turn = self._last_group
        else:
            later = [g for g in groups if self._last_group is not None and g > self._last_group]
            turn = later[0] if later else groups[0]
        self._turn_steps = self._turn_steps + 1 if turn == self._last_group else 1
        self._last_group = turn
        return turn

    def _apply(self, adapters: AdapterSet) -> None:
        """Have llama.cpp apply this set from the next decode (a change re-plans its compute graph)."""
        if adapters == self._applied:
            return
        n = len(adapters)
        ptrs = (C.llama_adapter_lora_p_ctypes * max(n, 1))(*[self._loras[p] for p, _ in adapters])
        scales = (ctypes.c_float * max(n, 1))(*[s for _, s in adapters])
        C.llama_set_adapters_lora(self.ctx, ptrs if n else None, n, scales if n else None)
        self._applied = adapters
        self.stats["adapter_switches"] += 1

    def _apply_per_seq(self) -> None:
        """Give llama.cpp each running sequence's adapter set, and none to idle ones (every set in use
        costs each decode its terms). Most steps change nothing and cost one comparison per sequence."""
        wants = ((seq.id, seq.adapters if seq.job is not None else ()) for seq in self.seqs)
        changed = [(seq_id, want) for seq_id, want in wants if self._seq_applied.get(seq_id, ()) != want]
        if not changed:
            return
        before = {p for applied in self._seq_applied.values() for p, _ in applied}
        for seq_id, want in changed:
            n = len(want)
            ptrs = (C.llama_adapter_lora_p_ctypes * max(n, 1))(*[self._loras[p] for p, _ in want])
            scales = (ctypes.c_float * max(n, 1))(*[s for _, s in want])
            set_adapters_lora_seq(self.ctx, seq_id, ptrs if n else None, n, scales if n else None)
            self._seq_applied[seq_id] = want
        if {p for applied in self._seq_applied.values() for p, _ in applied} != before:
            self.stats["adapter_switches"] += 1  # the graph changes

    def _load_adapter(self, path: str) -> bool:
        if path not in self._loras:
            ptr = C.llama_adapter_lora_init(self.model.ptr, path.encode())
            if not ptr:
                return False
            self._loras[path] = ptr
            log.info("loaded LoRA adapter %s", path)
        return True

    def _load_adapters(self, job: Job, out: list[tuple[Job, Event]]) -> bool:
        """Load the job's adapters on this model's weights (once each); False: the job failed."""
        for path, _ in job.adapters:
            if not self._load_adapter(path):
                self.active -= 1
                out.append((job, Failed(f"unable to load LoRA adapter {path} on this model")))
                return False
        return True

    def _adapter_requests(self) -> None:
        """Do the preloads asked for; free the adapters asked to go that no running job uses (their
        cached cells go with them)."""
        with self._wake:
            loads, self._to_load = self._to_load, []
        for path, future in loads:
            if self._load_adapter(path):
                future.set_result(None)
            else:
                future.set_exception(ValueError(f"unable to load LoRA adapter {path} on this model"))
        with self._wake:
            wanted = self._to_drop
            in_use = {p for seq in self.seqs if seq.job is not None for p, _ in seq.job.adapters}
            in_use |= {p for job in self._pending for p, _ in job.adapters}
            drop = {p for p in wanted if p not in in_use}
            self._to_drop = wanted - drop
        for path in drop:
            ptr = self._loras.pop(path, None)
            if ptr is None:
                continue
            if any(p == path for p, _ in self._applied):
                self._apply(())
            if self.per_seq_adapters:
                self._apply_per_seq()  # no running job uses it: only idle sequences held it, and they let go
            for seq in self.seqs:
                if any(p == path for p, _ in seq.adapters):
                    C.llama_memory_seq_rm(self.memory, seq.id, -1, -1)
                    seq.forget(0)
                    seq.adapters = ()
            C.llama_adapter_lora_free(ptr)
            log.info("freed LoRA adapter %s", path)

    def _borrow(self, seq: _Seq) -> bool:
        """Spare computing prompt tokens another sequence has or is computing; True: wait this step.

        Another prompt ahead of this one (further in, or as far and a lower id: an order, so two
        never wait on each other) that has yet to compute a part of this prompt that this one
        lacks, of BORROW_MIN tokens or more, makes this one wait for it. Otherwise the sequence
        holding most of this prompt beyond what this one has, if that is BORROW_MIN tokens or more,
        lends its cells: llama.cpp writes out the source's state and reads it in here, and the
        cells past the shared part are dropped. The numbers are the source's, so deterministic
        mode stays exact.
        """
        if not self.can_borrow or seq.job.alone:
            return False
        last = len(seq.prompt) - 1  # the last prompt token is always computed: it gives the logits
        want = seq.fed + BORROW_MIN
        for other in self.seqs:
            if other is not seq and other.job is not None and not other.generating \
                    and other.adapters == seq.adapters and (other.fed, -other.id) > (seq.fed, -seq.id):
                shared = min(common_prefix(other.prompt, seq.prompt), last)
                if shared >= want and other.fed < shared:
                    return True
        source, gain = None, want - 1
        for other in self.seqs:
            if other is seq or len(other.cache) < want or other.adapters != seq.adapters:
                continue
            shared = min(common_prefix(other.cache, seq.prompt), last)
            if shared > gain and len(other.cache) <= BORROW_SPAN * (shared - seq.fed) \
                    and C.llama_memory_seq_pos_min(self.memory, other.id) == 0:  # none of its first cells gone
                source, gain = other, shared
        if source is not None:
            self._copy_prefix(source, seq, gain)
        return False

    def _copy_prefix(self, source: _Seq, seq: _Seq, n: int) -> None:
        """Give `seq` the first n cells of `source` in place of its own."""
        size = C.llama_state_seq_get_size_ext(self.ctx, source.id, 0)
        buf = np.empty(size, np.uint8)  # not zeroed: it can be large
        state = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        if C.llama_state_seq_get_data_ext(self.ctx, state, size, source.id, 0) != size:
            log.warning("could not read the cells of sequence %d", source.id)
            return
        seq.forget(0)  # reading a state in replaces the sequence's cells
        if C.llama_state_seq_set_data_ext(self.ctx, state, size, seq.id, 0) != size \
                or not C.llama_memory_seq_rm(self.memory, seq.id, n, -1):
            log.warning("could not copy cells from sequence %d to %d: computing the whole prompt", source.id, seq.id)
            C.llama_memory_seq_rm(self.memory, seq.id, -1, -1)
            seq.fed = seq.cached = 0
            return
        seq.cache = source.cache[:n]
        seq.cached += n - seq.fed
        log.info("prefix cache: copying %d of %d prompt tokens from sequence %d (sequence %d)",
                 n - seq.fed, len(seq.prompt), source.id, seq.id)
        seq.fed = n

    def _pads(self, counts: dict[int, int], room: int) -> set[int]:
        """Idle sequences to give a throwaway token so that the step needs fewer micro-batches.

        With a KV stream per sequence, llama.cpp cuts a batch into micro-batches of consecutive
        sequence ids that each contribute the same number of tokens, and every micro-batch is
        another pass over the weights: running sequences 0, 2 and 3 cost two passes, 0-3 one.
        On a GPU a pass costs far more than a token. On a CPU a token costs about as much as a
        pass (measured: 3 running with a hole, 10-15 % faster padded; 2 running with one or two
        holes, 0-20 % slower), so there pads are only added while they are fewer than half the
        sequences in the step. A pad attends over its own cache, and a micro-batch's attention
        spans its longest stream, so an idle sequence holding more than the running ones is not
        padded: a pad never costs more attention than a running sequence.
        """
        gaps = [i for i in range(min(counts), max(counts) + 1) if i not in counts]
        if not gaps:
            return set()
        span = max(len(self.seqs[i].cache) for i in counts)
        pads = {i for i in gaps if self.seqs[i].job is None and len(self.seqs[i].cache) <= span}
        on_gpu = self.model.n_gpu_layers > 0
        if not pads or len(pads) > room or (not on_gpu and 2 * len(pads) >= len(counts)):
            return set()
        padded = counts | dict.fromkeys(pads, 1)
        return pads if _micro_batches(padded, self.n_ubatch) < _micro_batches(counts, self.n_ubatch) else set()

    def _add(self, seq: _Seq, token: int, n: int, *, logits: bool, keep: bool = True) -> int:
        b = self.batch
        b.token[n] = token
        b.pos[n] = len(seq.cache)
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq.id
        b.logits[n] = logits
        if logits:
            seq.out_row = n
        if keep:
            seq.cache.append(token)
        return n + 1

    def _shift(self, seq: _Seq, out: list[tuple[Job, Event]]) -> bool:
        """The context is full: drop half of what follows num_keep, or end the job."""
        job = seq.job
        if not (job.shift and self.can_shift):
            self._finish(seq, "length", out)
            return False
        keep = min(job.num_keep, len(seq.cache) // 2)
        discard = (len(seq.cache) - keep) // 2
        C.llama_memory_seq_rm(self.memory, seq.id, keep, keep + discard)
        C.llama_memory_seq_add(self.memory, seq.id, keep + discard, -1, -discard)
        seq.forget(keep, keep + discard)
        return True

    def _sampled(self, seq: _Seq, now: int, out: list[tuple[Job, Event]], logits: np.ndarray | None = None) -> None:
        """Pick the next token from this step's output row (or from `logits` kept earlier)."""
        job = seq.job
        if seq.on_backend and logits is None:
            token = C.llama_get_sampled_token_ith(self.ctx, seq.out_row)
        else:
            token = seq.chain.sample(self.ctx, seq.out_row, logits)
        if not seq.generated and seq.t_first == 0:
            seq.t_first = now
            if logits is None and self.prefix_cache and not seq.on_backend:  # for an exact repeat
                seq.saved = (seq.prompt, self._row(seq.out_row).copy(), job.alone)
        if (self.model.is_eog(token) and not job.ignore_eos) or token in job.stop_tokens:
            self._finish(seq, "stop", out)
            return
        seq.generated.append(token)
        seq.next_token = token
        raw = self.model.piece(token, self._piece_buf)
        text = seq.decoder.decode(raw)
        logprob = top = None
        if job.logprobs >= 0:
            logprob, top = token_logprobs(self._row(seq.out_row) if logits is None else logits, token, job.logprobs,
                                          self.model.piece)
        stopped = False
        if job.stop:
            text, seq.held, stopped = apply_stops(seq.held, text, job.stop)
        out.append((job, Piece(text, token, logprob, top)))
        if stopped:
            self._finish(seq, "stop", out)
        elif 0 < job.num_predict <= len(seq.generated) or len(seq.generated) >= OPEN_ENDED_LIMIT * self.n_ctx:
            self._finish(seq, "length", out)

    def _row(self, row: int) -> np.ndarray:
        """This step's logits for batch row `row` (a view: valid until the next decode)."""
        return np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, row), shape=(self.model.n_vocab,))

    def _finish(self, seq: _Seq, reason: str, out: list[tuple[Job, Event]]) -> None:
        job = seq.job
        now = time.perf_counter_ns()
        tail = seq.held + seq.decoder.decode(b"", final=True)
        first = seq.t_first or now
        self.stats["prompt_tokens"] += len(seq.prompt) - seq.cached
        self.stats["generated_tokens"] += len(seq.generated)
        out.append(
            (
                job,
                Done(
                    reason=reason,
                    prompt_tokens=len(seq.prompt),
                    prompt_eval_count=len(seq.prompt) - seq.cached,
                    prompt_eval_ns=max(first - seq.t_admit, 1),
                    eval_count=len(seq.generated),
                    eval_ns=max(now - first, 1),
                    output_tokens=list(seq.generated),
                    text_tail=tail,
                ),
            )
        )
        self._release(seq)

    def _finish_failed(self, seq: _Seq, message: str, out: list[tuple[Job, Event]]) -> None:
        out.append((seq.job, Failed(message)))
        self._release(seq)

    def _release(self, seq: _Seq) -> None:
        """Free the sequence for the next job; its KV cache stays for prefix reuse."""
        if seq.on_backend:
            C.llama_set_sampler(self.ctx, seq.id, None)
        if seq.chain is not None:
            seq.chain.free()
        seq.last_used = time.monotonic()
        seq.reset_job()
        with self._wake:
            self.active -= 1


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share (list comparisons by halves: no Python loop per token)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _micro_batches(counts: dict[int, int], n_ubatch: int) -> int:
    """How many micro-batches llama.cpp's split over per-sequence KV streams (split_equal, sequential)
    cuts from a step computing counts[seq_id] tokens of each sequence, rows in sequence order: each
    takes the lowest remaining id and the ids following it without a gap, the same number of tokens
    from each (the fewest any of them has left), at most n_ubatch tokens in all."""
    left, n = dict(counts), 0
    while left:
        group = [min(left)]
        while group[-1] + 1 in left and len(group) < n_ubatch:
            group.append(group[-1] + 1)
        take = max(1, min(min(left[i] for i in group), n_ubatch // len(group)))
        for i in group:
            left[i] -= take
            if left[i] <= 0:
                del left[i]
        n += 1
    return n


def _deliver(items: list[tuple[Job, Event]]) -> None:
    for job, event in items:
        job.events.put_nowait(event)


__all__ = ["Runner", "ContextLengthError", "LoadError"]
