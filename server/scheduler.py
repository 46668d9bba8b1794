"""Which models are loaded: load on first use, keep_alive expiry, LRU eviction, the queue limit.

The scheduler hands out a `Loaded` model for the length of one request (`async with
scheduler.use(...)`); when the last request on it ends, its keep_alive timer starts.

Models that share a base GGUF (a model and its LoRA variants: FROM the same weights, ADAPTER layers
of their own) share one loaded base: each is listed and expires on its own, but they hold one
`SharedBase` (weights and runner), whose memory is counted once, in the plan of the model that
accounts for it (`SharedBase.owner`); each variant's plan counts only its adapters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .config import FOREVER, Settings
from .engine.embedder import Embedder
from .engine.llama import LlamaModel, LoadError, batch_invariant_kernels, devices, supports_gpu
from .engine.memory import (InsufficientMemory, Plan, embedding_context, embedding_room, estimate, plan, split,
                            system_memory)
from .engine.runner import Runner
from .store.gguf import GGUFError, read_info
from .store.model import Model

log = logging.getLogger("corral.scheduler")

T = TypeVar("T")


class QueueFull(Exception):
    def __str__(self) -> str:
        return "server busy, please try again.  maximum pending requests exceeded"


class ModelLoadError(Exception):
    """The model cannot be loaded (corrupt file, not a model, out of memory)."""


@dataclass(frozen=True)
class RunnerOptions:
    """Options that shape the loaded context: changing one reloads the model (as in Ollama)."""

    num_ctx: int
    num_gpu: int = -1
    num_batch: int = 512
    num_thread: int = 0


@dataclass(eq=False)
class SharedBase:
    """Weights and runner that several loaded models use; closed with the last of them."""

    llama: LlamaModel
    runner: Runner
    plan: Plan  # the weights, KV cache and buffers
    holders: int = 1
    owner: "Loaded | None" = None  # the holder whose plan counts `plan`
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release(self) -> bool:
        """One holder less; True when it was the last (then the caller closes the base)."""
        with self._lock:
            self.holders -= 1
            return self.holders == 0


@dataclass
class Loaded:
    model: Model
    options: RunnerOptions
    llama: LlamaModel
    runner: Runner
    keep_alive: float
    loaded_at: float = field(default_factory=time.time)
    expires_at: float = FOREVER  # wall-clock seconds; FOREVER while in use or kept forever
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0
    plan: Plan = field(default_factory=lambda: Plan(0, 0, 0))
    embedder: Embedder | None = None
    base: SharedBase | None = None  # set by the scheduler
    timer: asyncio.TimerHandle | None = None
    busy_since: float = 0.0  # monotonic time the first of the current users arrived
    busy_seconds: float = 0.0  # time with at least one user, earlier spans (for the metrics)
    closing: asyncio.Future | None = None  # set by Scheduler._evict, on the loop, before it awaits anything
    # held for each embedding batch: requests on this model take turns, and those waiting hold no thread
    embed_turn: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # embedder creation and close

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def size(self) -> int:
        """Weights, KV cache and compute buffers, in bytes (the planner's estimate), a shared base's too."""
        return self.size_vram + self.plan.cpu_bytes + (self._base_share().cpu_bytes)

    @property
    def size_vram(self) -> int:
        return self.plan.gpu_bytes + self._base_share().gpu_bytes

    def _base_share(self) -> Plan:
        """The shared base's memory when another model's plan counts it (nothing otherwise)."""
        if self.base is None or self.base.owner is self:
            return Plan(0, 0, 0)
        return self.base.plan

    @property
    def adapters(self) -> list[str]:
        return [str(p) for p in self.model.adapter_paths]

    def embedder_for(self, n_threads: int, free: tuple[int, int] | None = None) -> Embedder:
        """The embedding context, created by the first caller (worker threads may ask at once).

        Its size is num_ctx (at most the model's trained context length); with `free` (GPU and system
        bytes not yet planned for, `Scheduler.free_memory()`), one that does not fit is refused
        (InsufficientMemory) before llama.cpp tries to allocate it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("model unloaded")
            if self.embedder is None:
                n_ctx = self.options.num_ctx
                if self.model.context_length:
                    n_ctx = min(n_ctx, self.model.context_length)
                if free is not None:
                    embedding_room(self.model.gguf, n_ctx=n_ctx, n_seq=Embedder.N_SEQ,
                                   gpu_layers=self.plan.gpu_layers, gpu_free=free[0], ram_free=free[1])
                self.embedder = Embedder(self.llama, n_ctx=n_ctx, n_threads=n_threads)
                self._count_embedder()
            return self.embedder

    def _count_embedder(self) -> None:
        """Grow the plan by the embedding context, on the devices its layers are on."""
        extra = embedding_context(self.model.gguf, n_ctx=self.embedder.n_ctx, n_seq=self.embedder.n_seq)
        on_gpu, on_cpu = split(extra, self.plan.gpu_layers)
        self.plan = dataclasses.replace(self.plan, gpu_bytes=self.plan.gpu_bytes + on_gpu,
                                        cpu_bytes=self.plan.cpu_bytes + on_cpu)

    def close(self) -> None:
        """Free the contexts and the weights (in a worker thread); later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.embedder is not None:
            self.embedder.close()  # waits for an embedding under way
        if self.base is None or self.base.release():
            self.runner.close()
            self.llama.close()
        else:  # others still use the base: free only what this model alone loaded
            for path in self.adapters:
                self.runner.drop_adapter(path)


class Scheduler:
    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.deterministic:
            batch_invariant_kernels()
        self.loaded: dict[str, Loaded] = {}  # by model digest
        self._locks: dict[str, asyncio.Lock] = {}
        # held from making room to registering the new model: one load at a time, so that the
        # OLLAMA_MAX_LOADED_MODELS count and the memory plan see every model (models already
        # loaded are handed out without it)
        self._load_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future] = set()  # expiries and late closes under way
        self._waiting = 0
        self.ram_budget = system_memory()
        self.gpu_budget = sum(d.free for d in devices() if d.kind in ("GPU", "iGPU")) if supports_gpu() else 0
        self.totals: dict[str, dict[str, int]] = {}  # runner stats of unloaded models, by name (metrics)
        # loads and closes run here, not in the event loop's default executor, which other work
        # (tokenizing, embeddings) can fill up
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="corral-load")
        # loaders of models llama.cpp does not serve (server/imaging/ adds diffusion pipelines): each has
        # serves(model), plan(model, options, gpu_free=, ram_free=) -> Plan (InsufficientMemory when it does
        # not fit) and load(model, options, plan) -> Loaded; the keep_alive, LRU and memory rules stay these
        self.loaders: list = []

    # ---- requests ----------------------------------------------------------------------

    def free_memory(self) -> tuple[int, int]:
        """(GPU, system) bytes of the budgets that no loaded model's plan takes (call on the event loop)."""
        loaded = list(self.loaded.values())
        return (max(0, self.gpu_budget - sum(l.plan.gpu_bytes for l in loaded)),
                max(0, self.ram_budget - sum(l.plan.cpu_bytes for l in loaded)))

    def check_queue(self) -> None:
        """Refuse a request when too many are already waiting for a free sequence."""
        queued = self._waiting + sum(len(l.runner._pending) for l in self.loaded.values())
        if queued >= self.settings.max_queue:
            raise QueueFull()

    @contextlib.asynccontextmanager
    async def use(self, model: Model, options: RunnerOptions, keep_alive: float | None) -> AsyncIterator[Loaded]:
        """Hold a loaded model for one request; afterwards its keep_alive starts counting."""
        self.check_queue()
        keep_alive = self.settings.keep_alive if keep_alive is None else keep_alive
        self._waiting += 1
        try:
            loaded = await self._acquire(model, options, keep_alive)
        finally:
            self._waiting -= 1
        loaded.users += 1
        if loaded.users == 1:
            loaded.busy_since = time.monotonic()
        loaded.keep_alive = keep_alive
        if loaded.timer:
            loaded.timer.cancel()
            loaded.timer = None
        loaded.expires_at = FOREVER
        try:
            yield loaded
        finally:
            loaded.users -= 1
            loaded.last_used = time.monotonic()
            if loaded.users == 0:
                loaded.busy_seconds += loaded.last_used - loaded.busy_since
                self._arm(loaded)

    async def load(self, model: Model, options: RunnerOptions, keep_alive: float | None) -> Loaded:
        """Load (or refresh) a model without running anything: the empty-prompt form."""
        async with self.use(model, options, keep_alive) as loaded:
            return loaded

    async def unload(self, digest: str) -> bool:
        """Unload a model (keep_alive 0, /api/delete): now when idle, else when its last request ends.

        As Ollama's expireRunner: requests running or waiting on it finish first; it stays listed
        with its expiry set to now meanwhile. A request arriving before then uses it too, and its
        own keep_alive then decides when the model goes (the last keep_alive given wins).
        """
        loaded = self.loaded.get(digest)
        if loaded is None:
            return False
        if loaded.users > 0:
            log.info("unloading %s once its %d request(s) end", loaded.name, loaded.users)
            loaded.keep_alive = 0  # use() arms the expiry when the last user leaves
            loaded.expires_at = time.time()
            return True
        await self._evict(loaded)
        return True

    def running(self) -> list[Loaded]:
        """Loaded models, longest-lived first (models already being closed are left out)."""
        alive = [l for l in self.loaded.values() if l.expires_at > 0]
        return sorted(alive, key=lambda l: l.expires_at, reverse=True)

    async def close(self) -> None:
        for loaded in list(self.loaded.values()):
            await self._evict(loaded)
        self._executor.shutdown(wait=False)  # a load still under way (given up on) ends with the process

    # ---- internals ---------------------------------------------------------------------

    def _arm(self, loaded: Loaded) -> None:
        if loaded.keep_alive == FOREVER:
            loaded.expires_at = FOREVER
            return
        loaded.expires_at = time.time() + loaded.keep_alive
        loop = asyncio.get_running_loop()
        loaded.timer = loop.call_later(loaded.keep_alive, lambda: self._spawn(self._expire(loaded)))

    def _in_executor(self, fn: Callable[..., T], *args) -> asyncio.Future[T]:
        """fn(*args) on the scheduler's own threads."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _spawn(self, aw) -> None:
        """Run a background coroutine or future, holding a reference until it ends."""
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, loaded: Loaded) -> None:
        if loaded.users == 0 and self.loaded.get(loaded.model.digest) is loaded:
            log.info("unloading %s (keep_alive expired)", loaded.name)
            await self._evict(loaded)

    async def _evict(self, loaded: Loaded) -> None:
        """Unregister a model and close it, once: a second caller waits for the first one's close."""
        if loaded.closing is None:  # no await before `closing` is set: two evictions cannot both start
            if self.loaded.get(loaded.model.digest) is loaded:
                del self.loaded[loaded.model.digest]
                totals = self.totals.setdefault(loaded.name, {})
                for key, value in loaded.runner.stats.items():
                    totals[key] = totals.get(key, 0) + value
            if loaded.timer:
                loaded.timer.cancel()
                loaded.timer = None
            loaded.expires_at = 0
            self._hand_over(loaded)
            loaded.closing = self._in_executor(loaded.close)
        await asyncio.shield(loaded.closing)

    def _hand_over(self, leaving: Loaded) -> None:
        """A model that accounts for a shared base is going while others still use the base: one of
        them accounts for it from now on."""
        base = leaving.base
        if base is None or base.owner is not leaving:
            return
        others = [l for l in self.loaded.values() if l.base is base and l is not leaving and l.closing is None]
        if not others:
            return
        heir = others[0]
        heir.plan = Plan(heir.plan.gpu_layers, heir.plan.gpu_bytes + base.plan.gpu_bytes,
                         heir.plan.cpu_bytes + base.plan.cpu_bytes)
        leaving.plan = Plan(leaving.plan.gpu_layers, max(0, leaving.plan.gpu_bytes - base.plan.gpu_bytes),
                            max(0, leaving.plan.cpu_bytes - base.plan.cpu_bytes))
        base.owner = heir

    def _sharable(self, model: Model, options: RunnerOptions) -> Loaded | None:
        """A loaded model on the same base weights with the same runner options, if any."""
        path = model.model_path
        for other in self.loaded.values():
            if other.base is not None and other.closing is None and other.options == options \
                    and other.model.model_path == path:
                return other
        return None

    def _share(self, model: Model, options: RunnerOptions, other: Loaded) -> Loaded:
        """`model` on the base `other` holds: only its adapters are new memory."""
        base = other.base
        with base._lock:
            base.holders += 1
        adapter_bytes = sum(p.stat().st_size for p in model.adapter_paths if p.is_file())
        on_gpu = base.plan.gpu_layers > 0
        own = Plan(base.plan.gpu_layers, adapter_bytes if on_gpu else 0, 0 if on_gpu else adapter_bytes)
        log.info("%s shares the loaded base of %s (adapters: %d bytes)", model.name, other.name, adapter_bytes)
        return Loaded(model=model, options=options, llama=base.llama, runner=base.runner,
                      keep_alive=self.settings.keep_alive, plan=own, base=base)

    async def _acquire(self, model: Model, options: RunnerOptions, keep_alive: float) -> Loaded:
        """The model loaded with these options, loading it first when needed.

        A request that goes away (its client disconnected) while its model loads does not stop the
        load: the model is registered and stays for that request's keep_alive, as in Ollama, so an
        editor that cancels request after request while the model loads still finds it loaded.
        A request that goes away before its load has started starts none.
        """
        gone = asyncio.Event()
        task = asyncio.ensure_future(self._acquire_locked(model, options, gone))
        try:
            loaded, _ = await asyncio.shield(task)
        except asyncio.CancelledError:
            gone.set()
            task.add_done_callback(lambda done: self._keep_unclaimed(done, keep_alive))
            raise
        assert loaded is not None
        return loaded

    async def _acquire_locked(self, model: Model, options: RunnerOptions,
                              gone: asyncio.Event) -> tuple[Loaded | None, bool]:
        """(the model, whether this call loaded it); (None, False) when the request left before a load began."""
        lock = self._locks.setdefault(model.digest, asyncio.Lock())
        async with lock:
            current = self.loaded.get(model.digest)
            if current is not None and current.options == options:
                return current, False
            if gone.is_set():
                return None, False
            if current is not None:  # other runner options: reload once it is idle
                await self._wait_idle(current)
                # meanwhile its keep_alive may have run out, or an unload or a make-room taken it
                if self.loaded.get(model.digest) is current:
                    await self._evict(current)
            async with self._load_lock:
                if gone.is_set():
                    return None, False
                other = self._sharable(model, options)
                if other is not None:
                    loaded = self._share(model, options, other)
                    self.loaded[model.digest] = loaded
                    return loaded, True
                await self._make_room()
                placement = await self._place(model, options)
                loaded = await self._load_in_thread(model, options, placement)
                self.loaded[model.digest] = loaded
                return loaded, True

    def _keep_unclaimed(self, task: asyncio.Future, keep_alive: float) -> None:
        """A load ended after its request went away: the model's keep_alive starts now."""
        if task.cancelled():
            return
        if task.exception() is not None:
            log.warning("loading failed after its request went away: %s", task.exception())
            return
        loaded, fresh = task.result()
        if not fresh or loaded.users > 0 or loaded.timer is not None or loaded.closing is not None:
            return  # a model loaded before, or one another request holds: use() arms its expiry
        loaded.keep_alive = keep_alive
        loaded.last_used = time.monotonic()
        log.info("loaded %s after its request went away; keeping it for its keep_alive", loaded.name)
        self._arm(loaded)

    async def _load_in_thread(self, model: Model, options: RunnerOptions, placement: Plan) -> Loaded:
        """`_load` in a worker thread, within OLLAMA_LOAD_TIMEOUT (0 or less: no limit).

        A thread cannot be stopped: when the load is given up (timeout, or the server shutting down),
        the model is closed as soon as the thread has loaded it, instead of being left loaded
        and unaccounted for.
        """
        limit = self.settings.load_timeout
        future = self._in_executor(self._load, model, options, placement)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=limit if 0 < limit < FOREVER else None)
        except BaseException as exc:
            if future.done() and (future.cancelled() or future.exception() is not None):
                raise  # the load itself failed: nothing was loaded
            future.add_done_callback(self._close_late_load)  # loading (or loaded): close what it gives
            if isinstance(exc, asyncio.TimeoutError):
                log.warning("loading %s took longer than %g s (OLLAMA_LOAD_TIMEOUT)", model.name, limit)
                raise ModelLoadError("timed out waiting for llama runner to start") from None
            raise

    def _close_late_load(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        loaded = future.result()
        log.info("closing %s: it finished loading after its request gave up", loaded.name)
        try:
            self._spawn(self._in_executor(loaded.close))
        except RuntimeError:  # the scheduler is closed: the process is ending, and its memory with it
            pass

    def _loader_for(self, model: Model):
        return next((x for x in self.loaders if x.serves(model)), None)

    async def _place(self, model: Model, options: RunnerOptions) -> Plan:
        """Plan where the model goes; unload idle models (least recently used first) until it fits."""
        other = self._loader_for(model)
        if other is not None:
            return await self._place_other(other, model, options)
        path = model.model_path
        if path is None or not path.is_file():
            raise ModelLoadError(f"model '{model.name}' has no model file")
        try:
            est = estimate(model.gguf, path.stat().st_size, cells=options.num_ctx * self.settings.num_parallel,
                           kv_type=self.settings.kv_cache_type, n_batch=options.num_batch,
                           n_seq=self.settings.num_parallel)
        except (GGUFError, ValueError) as exc:
            raise ModelLoadError(f"unable to load model {model.name}: {exc}") from exc
        while True:
            gpu_used = sum(l.plan.gpu_bytes for l in self.loaded.values())
            cpu_used = sum(l.plan.cpu_bytes for l in self.loaded.values())
            try:
                return plan(est, gpu_free=max(0, self.gpu_budget - gpu_used),
                            ram_free=max(0, self.ram_budget - cpu_used), num_gpu=options.num_gpu)
            except InsufficientMemory as exc:
                idle = [l for l in self.loaded.values() if l.users == 0]
                if not idle:
                    raise ModelLoadError(str(exc)) from exc
                victim = min(idle, key=lambda l: l.last_used)
                log.info("unloading %s to make room for %s", victim.name, model.name)
                await self._evict(victim)

    async def _place_other(self, other, model: Model, options: RunnerOptions) -> Plan:
        while True:
            gpu_free, ram_free = self.free_memory()
            try:
                return other.plan(model, options, gpu_free=gpu_free, ram_free=ram_free)
            except InsufficientMemory as exc:
                idle = [l for l in self.loaded.values() if l.users == 0]
                if not idle:
                    raise ModelLoadError(str(exc)) from exc
                await self._evict(min(idle, key=lambda l: l.last_used))

    async def _wait_idle(self, loaded: Loaded) -> None:
        while loaded.users > 0:
            await asyncio.sleep(0.05)

    async def _make_room(self) -> None:
        while len(self.loaded) >= self.settings.max_loaded_models:
            idle = [l for l in self.loaded.values() if l.users == 0]
            if idle:
                victim = min(idle, key=lambda l: l.last_used)
                log.info("unloading %s to make room", victim.name)
                await self._evict(victim)
            else:
                await asyncio.sleep(0.05)

    def _backend_sampling(self, llama: LlamaModel) -> bool:
        choice = self.settings.backend_sampling
        if choice == "auto":
            return llama.n_gpu_layers > 0 and not self.settings.deterministic
        return choice in ("1", "true", "on", "yes")

    def _load(self, model: Model, options: RunnerOptions, placement: Plan) -> Loaded:
        other = self._loader_for(model)
        if other is not None:
            return other.load(model, options, placement)
        path = model.model_path
        try:
            info = read_info(str(path))  # a clear error for files that are not GGUF models, before llama.cpp
            if path.stat().st_size < info.required_size:
                raise GGUFError(f"truncated file, {path.stat().st_size} bytes of {info.required_size}")
            llama = LlamaModel(path, n_gpu_layers=placement.gpu_layers, extra_bufts=not self.settings.deterministic)
        except (GGUFError, LoadError) as exc:
            raise ModelLoadError(f"unable to load model {model.name}: {exc}") from exc
        try:
            runner = Runner(
                llama,
                n_ctx=options.num_ctx,
                n_parallel=self.settings.num_parallel,
                n_batch=options.num_batch,
                n_threads=options.num_thread or self.settings.num_threads,
                flash_attention=self.settings.flash_attention,
                kv_cache_type=self.settings.kv_cache_type,
                prefix_cache=self.settings.prefix_cache,
                deterministic=self.settings.deterministic,
                backend_sampling=self._backend_sampling(llama),
            )
        except LoadError as exc:
            llama.close()
            raise ModelLoadError(f"unable to load model {model.name}: {exc}") from exc
        log.info(
            "loaded %s: num_ctx=%d parallel=%d gpu_layers=%d (%.2f GiB on GPU, %.2f GiB in system memory) threads=%d",
            model.name, options.num_ctx, self.settings.num_parallel, llama.n_gpu_layers,
            placement.gpu_bytes / 2**30, placement.cpu_bytes / 2**30, runner.n_threads,
        )
        loaded = Loaded(model=model, options=options, llama=llama, runner=runner, keep_alive=self.settings.keep_alive,
                        plan=placement)
        loaded.base = SharedBase(llama=llama, runner=runner, plan=placement, owner=loaded)
        return loaded
