"""Model lifecycle under concurrency: unloads, keep_alive expiry, reloads, concurrent loads, load
timeouts, embeddings and cancelled queued requests.

On the real Scheduler, Runner and Embedder with tiny random-weight models (and one real server).
Where a race is needed, the test holds one side at a known point (an event inside a wrapped
method) instead of sleeping; where the old behaviour would free memory twice or under a running
computation, the test stops short of that, so that a regression fails the test rather than
killing the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import httpx
import pytest

import server.scheduler as scheduler_module
from server.api.errors import status_for
from server.config import Settings
from server.engine.embedder import Embedder
from server.engine.job import Done, Job, Piece, Sampling
from server.engine.llama import LlamaModel
from server.scheduler import ModelLoadError, QueueFull, RunnerOptions, Scheduler
from server.store.model import Model
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import start_server
from tests.gguf_factory import write_random_llama

OPTS = RunnerOptions(num_ctx=256)
GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Model]:
    """Three different tiny models (different weights, so different digests)."""
    d = tmp_path_factory.mktemp("lifecycle")
    store = Store(d / "models")
    for i in range(3):
        path = write_random_llama(d / f"tiny{i}.gguf", n_layer=1, d=64, seed=i + 1)
        register_gguf(store, f"tiny{i}", path, template="{{ .Prompt }}")
    return [Model(store, store.find(f"tiny{i}")) for i in range(3)]


def scheduler(**settings) -> Scheduler:
    settings.setdefault("num_parallel", 2)
    settings.setdefault("num_threads", 1)
    return Scheduler(Settings(**settings))


async def until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for a state change the code under test makes by itself (bounded; never a pass condition)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def count_closes(loaded) -> tuple[list[str], threading.Event]:
    """Record calls of loaded.close(); only the first really frees (a second would crash the process)."""
    calls: list[str] = []
    done = threading.Event()
    real = loaded.close

    def close() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            real()
            done.set()

    loaded.close = close
    return calls, done


# ---- 1: a reload waiting for a model that its keep_alive unloads meanwhile ----------------------


def test_reload_closes_a_model_that_expired_meanwhile_only_once(models):
    """A request with other runner options waits for the model to go idle, then reloads it. If the
    model's keep_alive (here 0) unloads it in between, the reload must not close it a second time
    (that was a double free: the server process died)."""
    model = models[0]

    async def main():
        sched = scheduler()
        first = sched.use(model, OPTS, keep_alive=0)
        old = await first.__aenter__()
        calls, closed = count_closes(old)
        waiting, go_on = asyncio.Event(), asyncio.Event()
        wait_idle = sched._wait_idle

        async def held_wait_idle(loaded):
            waiting.set()
            await go_on.wait()
            await wait_idle(loaded)

        sched._wait_idle = held_wait_idle
        reload = asyncio.create_task(sched.load(model, RunnerOptions(num_ctx=512), None))
        await waiting.wait()  # the reload waits for the model to go idle
        await first.__aexit__(None, None, None)  # the last user leaves: keep_alive 0 unloads it
        await until(lambda: model.digest not in sched.loaded and closed.is_set(), what="the expiry")
        go_on.set()
        new = await reload
        try:
            assert len(calls) == 1, f"closed {len(calls)} times"
            assert sched.loaded[model.digest] is new and new.options.num_ctx == 512
            assert not new.closing
        finally:
            await sched.close()

    asyncio.run(main())


def test_close_is_idempotent(models):
    """Runner.close, Embedder.close and Loaded.close may be called again: nothing is freed twice."""

    async def main():
        sched = scheduler()
        loaded = await sched.load(models[0], OPTS, None)
        embedder = await asyncio.to_thread(loaded.embedder_for, 1)
        await sched.unload(models[0].digest)
        assert loaded.runner.ctx is None and loaded.llama.ptr is None and embedder.ctx is None
        loaded.close()
        loaded.runner.close()
        embedder.close()
        with pytest.raises(RuntimeError, match="model unloaded"):
            loaded.embedder_for(1)
        with pytest.raises(RuntimeError, match="model unloaded"):
            embedder.embed([[1, 2]])
        await sched._evict(loaded)  # a second eviction waits for the first one's close, closes nothing
        await sched.close()

    asyncio.run(main())


# ---- 2: unload while requests run ---------------------------------------------------------------


def test_unload_lets_running_requests_finish(models):
    """keep_alive 0 / /api/delete on a model in use: like Ollama's expireRunner, the running request
    finishes; the model stays listed (expiring now) and goes when its last request ends."""
    model = models[0]

    async def main():
        sched = scheduler()
        try:
            async with sched.use(model, OPTS, None) as loaded:
                events = loaded.runner.generate(Job(tokens=[1, 2, 3], sampling=GREEDY, num_predict=8, ignore_eos=True))
                first = await events.__anext__()  # it is running
                assert isinstance(first, Piece)
                assert await sched.unload(model.digest)
                assert sched.loaded.get(model.digest) is loaded, "unloaded under a running request"
                assert sched.running() == [loaded] and loaded.expires_at <= time.time()  # /api/ps: expiring now
                rest = [event async for event in events]
                assert isinstance(rest[-1], Done) and rest[-1].eval_count == 8
            await until(lambda: model.digest not in sched.loaded, what="the unload after the last request")
            await until(lambda: loaded.llama.ptr is None, what="the close")
            assert sched.running() == []
        finally:
            await sched.close()

    asyncio.run(main())


def test_request_arriving_while_unloading_uses_the_model(models):
    """A request arriving while an unload waits for running requests uses the same loaded model,
    and its keep_alive replaces the unload (Ollama: the last keep_alive given wins)."""
    model = models[0]

    async def main():
        sched = scheduler()
        try:
            async with sched.use(model, OPTS, None) as loaded:
                assert await sched.unload(model.digest)
                async with sched.use(model, OPTS, 60) as again:
                    assert again is loaded
                    events = [e async for e in again.runner.generate(Job(tokens=[5, 6], sampling=GREEDY, num_predict=2))]
                    assert isinstance(events[-1], Done)
            assert sched.loaded.get(model.digest) is loaded and loaded.expires_at > time.time() + 30
            # an unload of an idle model is immediate
            assert await sched.unload(model.digest)
            assert model.digest not in sched.loaded and loaded.llama.ptr is None
        finally:
            await sched.close()

    asyncio.run(main())


def test_unload_over_http_lets_the_running_stream_finish(fresh_store, tmp_path):
    """The empty-prompt unload (keep_alive 0) during a stream: the stream ends normally, the server
    lives, and the model is gone afterwards."""
    server = start_server(fresh_store, {"OLLAMA_NUM_PARALLEL": "1"}, log_dir=tmp_path)
    try:
        body = {"model": "tiny", "prompt": "go on", "options": {
            "num_predict": 1500, "ignore_eos": True, "temperature": 0, "num_ctx": 2048}}
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["done"] is False
            unload = httpx.post(server.url + "/api/generate", json={"model": "tiny", "keep_alive": 0}, timeout=60)
            assert unload.status_code == 200 and unload.json()["done_reason"] == "unload"
            rest = [json.loads(line) for line in lines if line]
        assert "error" not in rest[-1], rest[-1]
        assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 1500
        deadline = time.time() + 30
        while httpx.get(server.url + "/api/ps", timeout=10).json()["models"] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(server.url + "/api/ps", timeout=10).json()["models"] == []
        assert server.proc.poll() is None
    finally:
        server.stop()


# ---- 3: unload / close during an embedding ------------------------------------------------------


def _hold_embedding(embedder: Embedder):
    """Make the next embedding stop inside the embedder (holding its lock) until released."""
    inside, go_on, abort = threading.Event(), threading.Event(), threading.Event()
    real = embedder._run

    def run(group):
        inside.set()
        go_on.wait(60)
        if abort.is_set():  # the context was freed meanwhile: computing now would crash the process
            raise RuntimeError("context freed under the embedding")
        return real(group)

    embedder._run = run
    return inside, go_on, abort


def test_embedder_close_waits_for_a_running_embedding(models):
    llama = LlamaModel(models[0].model_path, n_gpu_layers=0)
    embedder = Embedder(llama, n_ctx=64, n_seq=2, n_threads=1)
    inside, go_on, abort = _hold_embedding(embedder)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(embedder.embed([[1, 2, 3]])))
    worker.start()
    assert inside.wait(30)
    closer = threading.Thread(target=embedder.close)
    closer.start()
    closer.join(1.0)  # with the lock it cannot finish while the embedding runs; without, it does at once
    freed_early = not closer.is_alive()
    if freed_early:
        abort.set()
    go_on.set()
    worker.join(30)
    closer.join(30)
    assert not freed_early, "Embedder.close freed the context under a running embedding"
    assert len(result) == 1 and len(result[0][0]) == 64
    assert embedder.ctx is None
    embedder.close()
    llama.close()


def test_unload_during_an_embedding_waits_for_it(models):
    """Unloading a model while one of its embeddings runs in a worker thread (was a segfault)."""
    model = models[0]

    async def main():
        sched = scheduler()
        try:
            async with sched.use(model, OPTS, None) as loaded:
                embedder = await asyncio.to_thread(loaded.embedder_for, 1)
                inside, go_on, abort = _hold_embedding(embedder)
                task = asyncio.ensure_future(asyncio.to_thread(embedder.embed, [[1, 2, 3], [4, 5]]))
                await asyncio.to_thread(inside.wait, 30)
                kept = False
                try:
                    assert await sched.unload(model.digest)
                    kept = sched.loaded.get(model.digest) is loaded and embedder.ctx is not None
                finally:
                    if not kept:
                        abort.set()
                    go_on.set()
                assert kept, "the model was closed under a running embedding"
                vectors = await task
                assert len(vectors) == 2 and all(len(v) == 64 for v in vectors)
            await until(lambda: model.digest not in sched.loaded and embedder.ctx is None, what="the unload")
        finally:
            await sched.close()

    asyncio.run(main())


# ---- 4: concurrent first embeddings -------------------------------------------------------------


def test_concurrent_first_embeddings_create_one_context(models, monkeypatch):
    made: list[int] = []
    all_in = threading.Event()
    n = 4

    def counting_embedder(*args, **kwargs):
        made.append(1)
        if len(made) == n:
            all_in.set()
        all_in.wait(1.0)  # unguarded, every caller gets here; guarded, the first waits alone
        return Embedder(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "Embedder", counting_embedder)

    async def main():
        sched = scheduler()
        try:
            async with sched.use(models[0], OPTS, None) as loaded:
                got = await asyncio.gather(*[asyncio.to_thread(loaded.embedder_for, 1) for _ in range(n)])
            assert len(made) == 1, f"{len(made)} embedding contexts created, {len(made) - 1} leaked"
            assert all(e is got[0] for e in got) and loaded.embedder is got[0]
        finally:
            await sched.close()

    asyncio.run(main())


def test_the_embedding_context_counts_in_the_models_size(models):
    """The embedding context is memory the model holds: its size (in /api/ps and in the plan the next
    load is placed against) grows by it once, when the first embedding creates it."""
    from server.engine.memory import embedding_context

    async def main():
        sched = scheduler()
        try:
            async with sched.use(models[0], OPTS, None) as loaded:
                before = loaded.size
                embedder = await asyncio.to_thread(loaded.embedder_for, 1)
                await asyncio.to_thread(loaded.embedder_for, 1)
            extra = embedding_context(models[0].gguf, n_ctx=embedder.n_ctx, n_seq=embedder.n_seq).total
            assert extra > 0 and loaded.size == before + extra
            assert loaded.plan.cpu_bytes == before + extra  # no GPU here: all of it in system memory
        finally:
            await sched.close()

    asyncio.run(main())


# ---- 5: OLLAMA_MAX_LOADED_MODELS and the memory plan under concurrent loads -----------------------


@pytest.mark.parametrize("limit", ["count", "memory"])
def test_concurrent_loads_respect_the_limits(models, limit):
    async def main():
        sched = scheduler(max_loaded_models=1 if limit == "count" else 3)
        sched.gpu_budget = 0
        try:
            if limit == "memory":  # room for one of the three (they are the same size)
                one = await sched.load(models[0], OPTS, None)
                sched.ram_budget = int(one.plan.cpu_bytes * 1.5)
                await sched.unload(models[0].digest)
            got = await asyncio.gather(*[sched.load(m, OPTS, None) for m in models])
            assert len({id(g) for g in got}) == 3
            assert len(sched.loaded) == 1, f"{len(sched.loaded)} models loaded"
            assert sum(l.plan.cpu_bytes for l in sched.loaded.values()) <= sched.ram_budget
            assert sum(1 for g in got if g.llama.ptr is None) == 2  # the two others were closed
        finally:
            await sched.close()

    asyncio.run(main())


def test_a_load_does_not_hold_up_requests_on_loaded_models(models):
    async def main():
        sched = scheduler()
        try:
            a = await sched.load(models[0], OPTS, None)
            loading, release = threading.Event(), threading.Event()
            real_load = sched._load

            def slow_load(model, options, placement):
                if model.digest == models[1].digest:
                    loading.set()
                    release.wait(60)
                return real_load(model, options, placement)

            sched._load = slow_load
            b = asyncio.ensure_future(sched.load(models[1], OPTS, None))
            try:
                await asyncio.to_thread(loading.wait, 30)

                async def use_a():
                    async with sched.use(models[0], OPTS, None) as again:
                        return again

                assert await asyncio.wait_for(use_a(), timeout=20) is a  # while models[1] is loading
            finally:
                release.set()
            await b
            assert set(sched.loaded) == {models[0].digest, models[1].digest}
        finally:
            await sched.close()

    asyncio.run(main())


# ---- 6: OLLAMA_LOAD_TIMEOUT ---------------------------------------------------------------------


def test_load_timeout_is_a_load_error_and_closes_the_late_model(models):
    model = models[0]

    async def main():
        sched = scheduler(load_timeout=0.05)
        gave_up, finished = threading.Event(), threading.Event()
        late: list = []
        real_load = sched._load

        def slow_load(*args):
            gave_up.wait(60)  # the load ends only after its request has given up
            try:
                late.append(real_load(*args))
                return late[-1]
            finally:
                finished.set()

        sched._load = slow_load
        try:
            with pytest.raises(Exception) as error:
                try:
                    await sched.load(model, OPTS, None)
                finally:
                    gave_up.set()
            await asyncio.to_thread(finished.wait, 60)
            assert late and model.digest not in sched.loaded
            await until(lambda: late[0].llama.ptr is None and late[0].runner.ctx is None, timeout=10,
                        what="the late model to be closed")
            assert isinstance(error.value, ModelLoadError), repr(error.value)
            assert status_for(error.value) == (500, "timed out waiting for llama runner to start")
            sched._load, sched.settings.load_timeout = real_load, 300  # the next request loads it
            loaded = await sched.load(model, OPTS, None)
            assert sched.loaded[model.digest] is loaded
        finally:
            await sched.close()

    asyncio.run(main())


# ---- 6b: a request that goes away while its model loads ------------------------------------------


def gated_load(sched: Scheduler) -> tuple[list, threading.Event, threading.Event]:
    """Wrap sched._load: each load starts, signals `started`, and waits for `release`."""
    calls: list = []
    started, release = threading.Event(), threading.Event()
    real_load = sched._load

    def load(*args):
        calls.append(args[0].name)
        started.set()
        release.wait(60)
        return real_load(*args)

    sched._load = load
    return calls, started, release


def test_a_load_outlives_the_request_that_left(models):
    """An editor cancels its request while the model loads (each keystroke sends a new one): the
    load goes on, the model stays for that request's keep_alive, and the next request uses it."""
    model = models[0]

    async def main():
        sched = scheduler()
        calls, started, release = gated_load(sched)
        try:
            first = asyncio.ensure_future(sched.load(model, OPTS, 60))
            await asyncio.to_thread(started.wait, 30)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            release.set()
            await until(lambda: model.digest in sched.loaded, what="the load to finish")
            loaded = sched.loaded[model.digest]
            assert loaded.llama.ptr is not None and loaded.runner.ctx is not None  # not closed
            assert loaded.users == 0 and loaded.timer is not None
            assert 50 < loaded.expires_at - time.time() <= 60  # the request's keep_alive
            again = await sched.load(model, OPTS, None)
            assert again is loaded and calls == [model.name]  # loaded once
        finally:
            release.set()
            await sched.close()

    asyncio.run(main())


def test_a_request_that_left_before_its_load_began_starts_none(models):
    """Requests queued behind another model's load and cancelled there load nothing."""

    async def main():
        sched = scheduler()
        calls, started, release = gated_load(sched)
        try:
            first = asyncio.ensure_future(sched.load(models[0], OPTS, None))
            await asyncio.to_thread(started.wait, 30)
            second = asyncio.ensure_future(sched.load(models[1], OPTS, None))
            await asyncio.sleep(0.1)  # waiting for the load lock
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            release.set()
            await first
            await asyncio.sleep(0.2)  # a load the cancelled request started would be under way now
            assert calls == [models[0].name] and set(sched.loaded) == {models[0].digest}
        finally:
            release.set()
            await sched.close()

    asyncio.run(main())


# ---- 7: a queued request whose client went away --------------------------------------------------


def test_cancelled_queued_request_leaves_the_queue(models):
    """A request waiting for a sequence and then cancelled (client gone) no longer counts toward
    OLLAMA_MAX_QUEUE, and the runner's count of active jobs stays right."""

    async def main():
        sched = scheduler(num_parallel=1, max_queue=1)
        try:
            async with sched.use(models[0], RunnerOptions(num_ctx=2048), None) as loaded:
                runner = loaded.runner
                long = runner.generate(Job(tokens=[1, 2, 3], sampling=GREEDY, ignore_eos=True))
                assert isinstance(await long.__anext__(), Piece)  # holds the only sequence
                queued = runner.generate(Job(tokens=[4, 5, 6], sampling=GREEDY, num_predict=2))
                waiter = asyncio.ensure_future(queued.__anext__())
                await until(lambda: len(runner._pending) == 1, what="the job to queue")
                with pytest.raises(QueueFull):
                    sched.check_queue()
                waiter.cancel()  # the client went away
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
                assert len(runner._pending) == 0 and runner.active == 1
                sched.check_queue()  # room again
                await long.aclose()
                await until(lambda: runner.active == 0, what="the long job to end")
                events = [e async for e in runner.generate(Job(tokens=[7, 8], sampling=GREEDY, num_predict=2))]
                assert isinstance(events[-1], Done)
                assert runner.active == 0 and not runner._pending
        finally:
            await sched.close()

    asyncio.run(main())


def test_sigterm_does_not_wait_for_long_generations(fresh_store, tmp_path):
    """A stream of 40,960 tokens does not hold the process past its 5 s grace period."""
    server = start_server(fresh_store, {"OLLAMA_NUM_PARALLEL": "1"}, log_dir=tmp_path)
    started = threading.Event()

    def stream() -> None:
        body = {"model": "tiny", "prompt": "go", "options": {"num_predict": -1, "ignore_eos": True}}
        with contextlib.suppress(httpx.HTTPError):
            with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
                for _ in r.iter_lines():
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    try:
        assert started.wait(30)
        server.proc.terminate()
        server.proc.wait(timeout=20)  # raises if it is still running
    finally:
        server.stop()
        t.join(30)


def test_a_second_server_on_a_taken_address_stops_before_doing_anything(fresh_store, tmp_path):
    """`corral serve` while another server holds the address: Ollama's error, exit status 1, no
    start-up work (its model directory is not even created), and the first server keeps serving."""
    import os
    import subprocess
    import sys

    first = start_server(fresh_store, log_dir=tmp_path)
    try:
        models = tmp_path / "second-models"
        env = dict(os.environ, OLLAMA_HOST=first.host, OLLAMA_MODELS=str(models))
        second = subprocess.run([sys.executable, "-m", "server", "serve"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip().endswith(f"Error: listen tcp {first.host}: bind: address already in use")
        assert not models.exists()
        assert httpx.get(first.url + "/api/version", timeout=10).status_code == 200
    finally:
        first.stop()


@pytest.mark.parametrize("value, expected", [
    (None, ("127.0.0.1", 11434)), ("0.0.0.0", ("0.0.0.0", 11434)), (":18460", ("0.0.0.0", 18460)),
    ("[::1]:9000", ("::1", 9000)), ("::1", ("::1", 11434)), ("localhost:abc", ("localhost", 11434)),
    ("127.0.0.1:99999", ("127.0.0.1", 11434)), ("http://example.com", ("example.com", 80)),
    ("https://example.com:8443/x", ("example.com", 8443)),
])
def test_ollama_host_is_read_as_ollama_reads_it(value, expected):
    from server.config import parse_host

    assert parse_host(value) == expected
